import Checkpoint
import Comm
import Corpus
import Foundation
import Kernels
import Model
import Optim
import Parallel
import Settings
import Tracing

// MARK: - Checkpointer

/// Saves and restores the full training state across ranks.
///
/// Every rank compresses its equal share of the flat vectors into its own file; the sizes and
/// checksums meet on rank 0 through one all-reduce; rank 0 writes the manifest and commits.
/// With `--async-save` the share is copied to memory and written on a background thread;
/// each later step asks (one small all-reduce) whether every rank has finished, and then
/// commits, so the save costs training only the copy and the commit.
final class Checkpointer {
    let comm: Communicator
    let store: CheckpointStore
    let level: Int32
    let keepLast: Int
    let async: Bool
    let log: (String) -> Void
    /// Seconds the training loop spent blocked in saves (for the stall figure).
    private(set) var stallSeconds: [Double] = []

    private final class Job: @unchecked Sendable {
        let manifest: Manifest
        let snapshot: [FloatBuffer]
        let pieces: [StatePiece]
        var entry: ShardFileEntry?
        var error: String?
        var writeSeconds = 0.0
        let done = NSCondition()
        var finished = false
        init(manifest: Manifest, snapshot: [FloatBuffer], pieces: [StatePiece]) {
            self.manifest = manifest; self.snapshot = snapshot; self.pieces = pieces
        }
    }
    private var pending: Job?

    /// Testing aid: seconds the background writer waits before writing.
    var slowWriteSeconds = 0.0

    init(comm: Communicator, runDirectory: String, level: Int, keepLast: Int, async: Bool, log: @escaping (String) -> Void) {
        self.comm = comm
        store = CheckpointStore(runDirectory: runDirectory)
        self.level = Int32(level); self.keepLast = keepLast; self.async = async; self.log = log
    }

    // MARK: Save

    /// Saves the training state after `step` completed optimizer steps: the strategy's
    /// vectors, and a manifest of everything else a resume needs.
    /// `pieces` replaces the strategy's own (local SGD adds vectors the strategy does not know).
    func save(step: Int, config: TrainConfig, model: GPTConfig, layout: ParameterLayout, tokenizer: Tokenizer?,
              scaler: DynamicLossScaler?, skippedSteps: Int, strategy: TrainingStrategy, pieces: [StatePiece]? = nil) throws {
        let cfg = try JSONDecoder().decode([String: JSONValue].self, from: JSONEncoder().encode(config))
        let shape: [String: JSONValue] = [
            "nLayer": .unsigned(UInt64(model.nLayer)), "nHead": .unsigned(UInt64(model.nHead)),
            "nEmbd": .unsigned(UInt64(model.nEmbd)), "blockSize": .unsigned(UInt64(model.blockSize)),
            "vocabSize": .unsigned(UInt64(model.vocabSize)), "bias": .bool(model.bias),
        ]
        let tensors = layout.tensors.map { TensorEntry(name: $0.name, shape: $0.shape, dtype: "f32", offset: $0.offset) }
        var manifest = Manifest(
            formatVersion: Manifest.currentVersion, step: step, config: cfg, model: shape,
            worldSize: comm.size, zeroStage: strategy.stage.rawValue, precision: config.precision.rawValue,
            parameterCount: layout.count, dataPosition: step, seed: config.seed, scheduleStep: step,
            adamStep: step - skippedSteps,
            lossScale: scaler?.scale, lossScaleGoodSteps: scaler?.goodSteps, skippedSteps: skippedSteps,
            compressionLevel: config.ckptLevel, tensors: tensors, files: [])
        let enc = JSONEncoder(); enc.outputFormatting = [.sortedKeys]
        manifest.tokenizer = try tokenizer.map { String(decoding: try enc.encode($0), as: UTF8.self) }
        try save(manifest: manifest, pieces: pieces ?? strategy.statePieces())
    }

    /// Starts (async) or performs (sync) a save of `pieces` described by `manifest`.
    private func save(manifest: Manifest, pieces: [StatePiece]) throws {
        let t0 = MPIClock.now()
        do { try performSave(manifest: manifest, pieces: pieces) } catch let e as CommError { throw e } catch {
            throw SaveFailure(underlying: error)
        }
        log(String(format: "checkpoint: step %d: training blocked %.0f ms by the save (%@)", manifest.step,
                   (MPIClock.now() - t0) * 1000, async ? "async: snapshot only" : "sync"))
    }

    private func performSave(manifest: Manifest, pieces: [StatePiece]) throws {
        let t0 = MPIClock.now()
        try performFinish(wait: true)
        let partial = store.partialDirectory(step: manifest.step)
        if comm.rank == 0 {
            try? FileManager.default.removeItem(at: partial)
            do { try FileManager.default.createDirectory(at: partial, withIntermediateDirectories: true) } catch {
                throw CheckpointError(partial.path, "cannot be created (\(error.localizedDescription))",
                                      "check permissions and free space; the previous checkpoint is intact")
            }
        }
        try comm.barrier(label: "barrier before checkpoint write")
        var pieces = pieces
        var snapshot: [FloatBuffer] = []
        if async {
            // Copy the shard now; training may change the live buffers from the next step.
            for (i, p) in pieces.enumerated() {
                let b = FloatBuffer(count: p.count)
                b.pointer.update(from: p.pointer, count: p.count)
                snapshot.append(b)
                pieces[i].pointer = UnsafePointer(b.pointer)
            }
        }
        let job = Job(manifest: manifest, snapshot: snapshot, pieces: pieces)
        if async {
            pending = job
            let (rank, size, level, wait) = (comm.rank, comm.size, level, slowWriteSeconds)
            Thread {
                Trace.nameThread("checkpoint writer")
                if wait > 0 { Thread.sleep(forTimeInterval: wait) }
                Checkpointer.write(job, into: partial, rank: rank, world: size, level: level)
            }.start()
        } else {
            Checkpointer.write(job, into: partial, rank: comm.rank, world: comm.size, level: level)
            try commit(job)
        }
        stallSeconds.append(MPIClock.now() - t0)
    }

    private static func write(_ job: Job, into dir: URL, rank: Int, world: Int, level: Int32) {
        let t0 = MPIClock.now(), span = Trace.begin()
        defer {
            job.writeSeconds = MPIClock.now() - t0
            Trace.end(span, .checkpoint, "checkpoint write", args: ["step": .int(job.manifest.step)])
        }
        do {
            job.entry = try CheckpointWriter.writeRankFile(
                directory: dir, rank: rank, world: world,
                pieces: job.pieces.map { VectorPiece(vector: $0.vector, start: $0.start, count: $0.count, pointer: $0.pointer) },
                level: level)
        } catch {
            job.error = "\(error)"
        }
        job.done.lock(); job.finished = true; job.done.signal(); job.done.unlock()
    }

    /// For async saves: commits once every rank's file is written. `wait` blocks for this
    /// rank's writer first (before the next save and at the end of training).
    func finishPending(wait: Bool) throws {
        do { try performFinish(wait: wait) } catch let e as CommError { throw e } catch let e as SaveFailure { throw e } catch {
            throw SaveFailure(underlying: error)
        }
    }

    private func performFinish(wait: Bool) throws {
        guard let job = pending else { return }
        let t0 = MPIClock.now()
        if wait {
            job.done.lock(); while !job.finished { job.done.wait() }; job.done.unlock()
        }
        job.done.lock(); let mine = job.finished ? 1.0 : 0.0; job.done.unlock()
        var all = [mine]
        try comm.allReduce(&all, label: "all-reduce of checkpoint progress")
        guard Int(all[0]) == comm.size else { return }
        pending = nil
        try commit(job)
        stallSeconds.append(MPIClock.now() - t0)
    }

    /// Gathers every rank's file record; rank 0 writes the manifest and publishes it.
    ///
    /// Each rank's file holds its range of each vector (its shard, or all Ψ of a local
    /// vector), each cut into frames of `CheckpointWriter.frameElements` (at least one), so
    /// rank 0 needs only each file's size, CRC, ranges and frame lengths.
    private func commit(_ job: Job) throws {
        let n = comm.size
        func frameRanges(_ range: Range<Int>) -> [Range<Int>] {
            let step = CheckpointWriter.frameElements
            return range.isEmpty ? [range] : stride(from: range.lowerBound, to: range.upperBound, by: step).map { $0..<min($0 + step, range.upperBound) }
        }
        // Every rank wrote the same vectors in the same order, each a range of its own.
        let vectors = job.pieces.map(\.vector)
        let mine = job.pieces.map { $0.start..<($0.start + $0.count) }
        var most = [Double(mine.reduce(0) { $0 + frameRanges($1).count })]
        try comm.allReduce(&most, op: .max, label: "all-reduce of checkpoint frame counts")
        let head = 3 + 2 * vectors.count, k = head + Int(most[0])
        var records = [Double](repeating: 0, count: n * k)
        if let e = job.entry {
            records[comm.rank * k] = Double(e.bytes)
            records[comm.rank * k + 1] = Double(e.crc32)
            for (i, r) in mine.enumerated() {
                records[comm.rank * k + 3 + 2 * i] = Double(r.lowerBound)
                records[comm.rank * k + 4 + 2 * i] = Double(r.count)
            }
            for (i, f) in e.frames.enumerated() { records[comm.rank * k + head + i] = Double(f.length) }
        } else {
            records[comm.rank * k + 2] = 1
        }
        try comm.allReduce(&records, label: "all-reduce of checkpoint file records")
        let failed = (0..<n).filter { records[$0 * k + 2] != 0 }
        let partial = store.partialDirectory(step: job.manifest.step)
        if !failed.isEmpty {
            if comm.rank == 0 { try? FileManager.default.removeItem(at: partial) }
            throw CheckpointError(partial.path,
                                  "save of step \(job.manifest.step) failed on rank(s) \(failed.map(String.init).joined(separator: ", "))"
                                    + (job.error.map { ": \($0)" } ?? ""),
                                  "free disk space or fix permissions; the previous checkpoint is intact")
        }
        guard comm.rank == 0 else { return }
        var manifest = job.manifest
        manifest.files = (0..<n).map { r in
            var offset = 0, i = 0
            var frames: [Frame] = []
            for (v, vector) in vectors.enumerated() {
                let start = Int(records[r * k + 3 + 2 * v]), count = Int(records[r * k + 4 + 2 * v])
                for range in frameRanges(start..<(start + count)) {
                    let len = Int(records[r * k + head + i])
                    frames.append(Frame(vector: vector.rawValue, start: range.lowerBound, count: range.count, offset: offset, length: len))
                    offset += len; i += 1
                }
            }
            return ShardFileEntry(file: CheckpointStore.fileName(rank: r, world: n), rank: r,
                                  bytes: Int(records[r * k]), crc32: UInt32(records[r * k + 1]), frames: frames)
        }
        let dir = try CheckpointWriter.commit(manifest: manifest, store: store, keepLast: keepLast)
        let raw = 3 * 4 * manifest.parameterCount
        let stored = manifest.files.reduce(0) { $0 + $1.bytes }
        let perRank = Double(raw) / Double(n) / 1e6
        log(String(format: "checkpoint: step %d -> %@ (%.2f MB, %.2f× of raw %.2f MB; rank 0 wrote %.0f MB/s of raw state)",
                   manifest.step, dir.path, Double(stored) / 1e6, Double(stored) / Double(raw), Double(raw) / 1e6,
                   perRank / max(job.writeSeconds, 1e-9)))
    }

    // MARK: Load

    /// Loads the state of a verified checkpoint into `strategy`; returns the reader (whose
    /// files are verified) for anything else the resume reads.
    @discardableResult
    static func load(directory: URL, manifest: Manifest, layout: ParameterLayout,
                     strategy: TrainingStrategy) throws -> CheckpointReader.VectorReader {
        guard manifest.parameterCount == layout.count else {
            throw CheckpointError(directory.appendingPathComponent("manifest.json").path,
                                  "holds \(manifest.parameterCount) parameters but the model has \(layout.count) (mismatched model config)",
                                  "resume with the checkpoint's model flags")
        }
        let reader = CheckpointReader.VectorReader(directory: directory, manifest: manifest)
        try strategy.loadState { vector, range, dest in try reader.read(vector, range: range, into: dest) }
        return reader
    }
}

/// A checkpoint could not be written (disk full, permissions). The previous checkpoint is
/// untouched; the job stops with status 1.
public struct SaveFailure: Error, CustomStringConvertible {
    public let underlying: Error
    public var description: String { "\(underlying)" }
}

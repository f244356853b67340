import Foundation
import Settings

// MARK: - Writing

/// A flat state vector piece to save: `count` floats starting at element `start`.
public struct VectorPiece: @unchecked Sendable {
    public var vector: StateVector, start: Int, count: Int
    public var pointer: UnsafePointer<Float>
    public init(vector: StateVector, start: Int, count: Int, pointer: UnsafePointer<Float>) {
        self.vector = vector; self.start = start; self.count = count; self.pointer = pointer
    }
}

public enum CheckpointWriter {
    /// Elements per compressed frame: what a write or a read holds at once (twice, shuffled
    /// and compressed), whatever the size of the shard.
    public static let frameElements = 1 << 22

    /// Compresses `pieces` into this rank's data file inside `directory` (temporary name,
    /// fsync, rename) and returns its manifest entry. Each piece is cut into frames of at
    /// most `frameElements`, compressed and written one at a time.
    public static func writeRankFile(directory: URL, rank: Int, world: Int, pieces: [VectorPiece],
                                     level: Int32) throws -> ShardFileEntry {
        let name = CheckpointStore.fileName(rank: rank, world: world)
        let final = directory.appendingPathComponent(name)
        let tmp = directory.appendingPathComponent(name + ".tmp")
        let file = try Durable.Writer(path: tmp.path)
        var frames: [Frame] = []
        var crc = CRC32(), offset = 0
        for p in pieces {
            for lo in stride(from: 0, to: max(p.count, 1), by: frameElements) {
                let n = min(frameElements, p.count - lo)
                let c = try FloatCodec.compress(UnsafeRawPointer(p.pointer + lo), count: n, width: 4, level: level)
                try c.withUnsafeBytes { bytes in
                    try file.append(bytes)
                    crc.update(bytes)
                }
                frames.append(Frame(vector: p.vector.rawValue, start: p.start + lo, count: n, offset: offset, length: c.count))
                offset += c.count
            }
        }
        try file.finish()
        guard rename(tmp.path, final.path) == 0 else {
            throw CheckpointError(final.path, "rename failed (\(String(cString: strerror(errno))))", "check permissions")
        }
        return ShardFileEntry(file: name, rank: rank, bytes: offset, crc32: crc.value, frames: frames)
    }

    /// Rank 0's commit: manifest last inside the partial directory, then the directory is
    /// renamed into place and `latest` replaced; older checkpoints beyond `keepLast` go.
    public static func commit(manifest: Manifest, store: CheckpointStore, keepLast: Int) throws -> URL {
        let partial = store.partialDirectory(step: manifest.step)
        let final = store.directory(step: manifest.step)
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        var sealed = manifest
        sealed.formatVersion = Manifest.currentVersion
        sealed.checksum = "crc32:" + ManifestSeal.placeholder
        let data = ManifestSeal.seal(try enc.encode(sealed))
        let tmp = partial.appendingPathComponent("manifest.json.tmp")
        try data.withUnsafeBytes { try Durable.write($0, to: tmp.path) }
        guard rename(tmp.path, partial.appendingPathComponent("manifest.json").path) == 0 else {
            throw CheckpointError(partial.path, "manifest rename failed", "check permissions")
        }
        try Durable.fsync(path: partial.path)
        let fm = FileManager.default
        // A directory for this step may exist already: a run that fell back past a damaged
        // checkpoint retrains and saves that step again, and must replace it, never keep it.
        // The old copy is moved aside before the new one is renamed in; a crash between the
        // two renames leaves the older checkpoints, which `latest` then falls back to.
        let replaced = store.root.appendingPathComponent("." + CheckpointStore.stepName(manifest.step) + ".replaced")
        try? fm.removeItem(at: replaced)
        if fm.fileExists(atPath: final.path) {
            guard rename(final.path, replaced.path) == 0 else {
                throw CheckpointError(final.path, "could not be moved aside for replacement (\(String(cString: strerror(errno))))",
                                      "check permissions")
            }
        }
        guard rename(partial.path, final.path) == 0 else {
            throw CheckpointError(final.path, "directory rename failed (\(String(cString: strerror(errno))))", "check permissions")
        }
        try? fm.removeItem(at: replaced)
        try Durable.fsync(path: store.root.path)
        try store.pointLatest(at: manifest.step)
        store.prune(keep: keepLast)
        return final
    }
}

// MARK: - Reading

public enum CheckpointReader {
    /// Parses a directory's manifest (without reading data files).
    public static func manifest(directory: URL) throws -> Manifest {
        let url = directory.appendingPathComponent("manifest.json")
        guard FileManager.default.fileExists(atPath: directory.path) else {
            throw CheckpointError(directory.path, "directory does not exist", "pass RUN/checkpoints/step-N, a run directory or 'latest'")
        }
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw CheckpointError(url.path, "manifest is missing (the save never committed)", "resume from another checkpoint")
        }
        let m: Manifest
        do { m = try JSONDecoder().decode(Manifest.self, from: data) } catch {
            if let v = (try? JSONSerialization.jsonObject(with: data) as? [String: Any])?["formatVersion"] as? Int,
               v > Manifest.currentVersion {
                throw CheckpointError(url.path, "has format version \(v), newer than this build's \(Manifest.currentVersion)",
                                      "use a newer tessera to read it")
            }
            throw CheckpointError(url.path, "manifest is not valid (\(error))", "resume from another checkpoint")
        }
        guard m.formatVersion <= Manifest.currentVersion else {
            throw CheckpointError(url.path, "has format version \(m.formatVersion), newer than this build's \(Manifest.currentVersion)",
                                  "use a newer tessera to read it")
        }
        let seal = ManifestSeal.check(data)
        if m.formatVersion >= 2 || seal.sealed {
            guard seal.sealed && seal.valid else {
                throw CheckpointError(url.path, seal.sealed ? "manifest checksum does not match its contents (edited or corrupted)"
                                                            : "manifest has no checksum (edited or corrupted)",
                                      "resume from another checkpoint")
            }
        }
        try m.validate(path: url.path)
        return m
    }

    /// Manifest plus a full check of every data file: present, the recorded size, the
    /// recorded CRC-32, and vectors fully covered.
    public static func verify(directory: URL) throws -> Manifest {
        let m = try manifest(directory: directory)
        for f in m.files { try verify(directory: directory, entry: f) }
        for v in StateVector.allCases {
            let covered = m.files.flatMap(\.frames).filter { $0.vector == v.rawValue }.reduce(0) { $0 + $1.count }
            // Optional vectors are absent or complete; a local one once per rank file.
            let needed = v.isLocal ? m.worldSize * m.parameterCount : m.parameterCount
            guard covered == needed || (covered == 0 && !StateVector.required.contains(v)) else {
                throw CheckpointError(directory.path, "vector \(v.rawValue) covers \(covered) of \(needed) elements",
                                      "the checkpoint is incomplete; resume from another one")
            }
        }
        return m
    }

    /// Reads and checks one data file.
    /// Checks a data file's size and CRC-32 against its manifest entry, reading it in pieces.
    static func verify(directory: URL, entry: ShardFileEntry) throws {
        let path = directory.appendingPathComponent(entry.file).path
        guard let h = FileHandle(forReadingAtPath: path) else {
            throw CheckpointError(path, "data file is missing", "restore the file or resume from another checkpoint")
        }
        defer { try? h.close() }
        var crc = CRC32(), size = 0
        while let chunk = try? h.read(upToCount: 1 << 24), !chunk.isEmpty {
            chunk.withUnsafeBytes { crc.update($0) }
            size += chunk.count
        }
        guard size == entry.bytes else {
            throw CheckpointError(path, "data file has \(size) bytes but the manifest records \(entry.bytes) (truncated?)",
                                  "resume from another checkpoint")
        }
        guard crc.value == entry.crc32 else {
            throw CheckpointError(path, "data file checksum \(String(crc.value, radix: 16)) does not match the manifest's \(String(entry.crc32, radix: 16)) (corrupted)",
                                  "resume from another checkpoint")
        }
    }

    /// Reads elements `range` of a vector into `dest`, from whichever files hold them: each
    /// file is verified once (streamed), then only the frames that overlap are read, one at
    /// a time, so memory holds one frame whatever the checkpoint's size.
    public final class VectorReader {
        let directory: URL
        public let manifest: Manifest
        private var verified: Set<String> = []

        public init(directory: URL, manifest: Manifest) { self.directory = directory; self.manifest = manifest }

        /// Whether the checkpoint holds `state` at all (optional vectors may be absent).
        public func holds(_ state: StateVector) -> Bool {
            manifest.files.contains { $0.frames.contains { $0.vector == state.rawValue } }
        }

        /// `rank` picks whose copy of a local vector to read (required for those).
        public func read(_ state: StateVector, range: Range<Int>, into dest: UnsafeMutablePointer<Float>, rank: Int? = nil) throws {
            let vector = state.rawValue
            precondition(!state.isLocal || rank != nil, "a local vector is read from one rank's file")
            var filled = 0
            for entry in manifest.files where !state.isLocal || entry.rank == rank {
                for f in entry.frames where f.vector == vector {
                    let lo = max(f.start, range.lowerBound), hi = min(f.start + f.count, range.upperBound)
                    guard lo < hi else { continue }
                    let path = directory.appendingPathComponent(entry.file).path
                    if !verified.contains(entry.file) { try CheckpointReader.verify(directory: directory, entry: entry); verified.insert(entry.file) }
                    guard f.offset >= 0, f.length >= 0, f.offset <= entry.bytes, f.length <= entry.bytes - f.offset else {
                        throw CheckpointError(path, "frame lies outside the file", "resume from another checkpoint")
                    }
                    let compressed = try Durable.read(path: path, offset: f.offset, count: f.length)
                    let tmp = UnsafeMutablePointer<Float>.allocate(capacity: max(f.count, 1))
                    defer { tmp.deallocate() }
                    do {
                        try compressed.withUnsafeBytes { raw in
                            try FloatCodec.decompress(raw, count: f.count, width: 4, into: tmp)
                        }
                    } catch {
                        throw CheckpointError(path, "frame of \(vector) cannot be decompressed (\(error))",
                                              "resume from another checkpoint")
                    }
                    (dest + (lo - range.lowerBound)).update(from: tmp + (lo - f.start), count: hi - lo)
                    filled += hi - lo
                }
            }
            guard filled == range.count else {
                throw CheckpointError(directory.path, "vector \(vector) is missing elements \(range) (\(filled) found)",
                                      "a shard is missing; resume from another checkpoint")
            }
        }
    }
}

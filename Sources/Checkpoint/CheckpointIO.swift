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
    /// Compresses `pieces` into this rank's data file inside `directory` (temporary name,
    /// fsync, rename) and returns its manifest entry.
    public static func writeRankFile(directory: URL, rank: Int, world: Int, pieces: [VectorPiece],
                                     level: Int32) throws -> ShardFileEntry {
        var body: [UInt8] = []
        var frames: [Frame] = []
        for p in pieces {
            let c = try FloatCodec.compress(UnsafeRawPointer(p.pointer), count: p.count, width: 4, level: level)
            frames.append(Frame(vector: p.vector.rawValue, start: p.start, count: p.count, offset: body.count, length: c.count))
            body += c
        }
        let name = CheckpointStore.fileName(rank: rank, world: world)
        let final = directory.appendingPathComponent(name)
        let tmp = directory.appendingPathComponent(name + ".tmp")
        try body.withUnsafeBytes { try Durable.write($0, to: tmp.path) }
        guard rename(tmp.path, final.path) == 0 else {
            throw CheckpointError(final.path, "rename failed (\(String(cString: strerror(errno))))", "check permissions")
        }
        let crc = body.withUnsafeBytes { CRC32.checksum($0) }
        return ShardFileEntry(file: name, rank: rank, bytes: body.count, crc32: crc, frames: frames)
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
        for f in m.files { _ = try load(directory: directory, entry: f) }
        for v in StateVector.allCases.map(\.rawValue) {
            let covered = m.files.flatMap(\.frames).filter { $0.vector == v }.reduce(0) { $0 + $1.count }
            guard covered == m.parameterCount else {
                throw CheckpointError(directory.path, "vector \(v) covers \(covered) of \(m.parameterCount) elements",
                                      "the checkpoint is incomplete; resume from another one")
            }
        }
        return m
    }

    /// Reads and checks one data file.
    static func load(directory: URL, entry: ShardFileEntry) throws -> Data {
        let path = directory.appendingPathComponent(entry.file).path
        guard let d = FileManager.default.contents(atPath: path) else {
            throw CheckpointError(path, "data file is missing", "restore the file or resume from another checkpoint")
        }
        guard d.count == entry.bytes else {
            throw CheckpointError(path, "data file has \(d.count) bytes but the manifest records \(entry.bytes) (truncated?)",
                                  "resume from another checkpoint")
        }
        let crc = d.withUnsafeBytes { CRC32.checksum($0) }
        guard crc == entry.crc32 else {
            throw CheckpointError(path, "data file checksum \(String(crc, radix: 16)) does not match the manifest's \(String(entry.crc32, radix: 16)) (corrupted)",
                                  "resume from another checkpoint")
        }
        return d
    }

    /// Reads elements `range` of a vector into `dest`, from whichever files hold them.
    public final class VectorReader {
        let directory: URL
        let manifest: Manifest
        private var files: [String: Data] = [:]

        public init(directory: URL, manifest: Manifest) { self.directory = directory; self.manifest = manifest }

        public func read(_ state: StateVector, range: Range<Int>, into dest: UnsafeMutablePointer<Float>) throws {
            let vector = state.rawValue
            var filled = 0
            for entry in manifest.files {
                for f in entry.frames where f.vector == vector {
                    let lo = max(f.start, range.lowerBound), hi = min(f.start + f.count, range.upperBound)
                    guard lo < hi else { continue }
                    if files[entry.file] == nil { files[entry.file] = try CheckpointReader.load(directory: directory, entry: entry) }
                    let data = files[entry.file]!
                    guard f.offset + f.length <= data.count else {
                        throw CheckpointError(directory.appendingPathComponent(entry.file).path, "frame lies outside the file", "resume from another checkpoint")
                    }
                    let tmp = UnsafeMutablePointer<Float>.allocate(capacity: max(f.count, 1))
                    defer { tmp.deallocate() }
                    do {
                        try data.withUnsafeBytes { raw in
                            try FloatCodec.decompress(UnsafeRawBufferPointer(rebasing: raw[f.offset..<(f.offset + f.length)]),
                                                      count: f.count, width: 4, into: tmp)
                        }
                    } catch {
                        throw CheckpointError(directory.appendingPathComponent(entry.file).path, "frame of \(vector) cannot be decompressed (\(error))",
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

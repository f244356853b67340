import Foundation

// MARK: - Checkpoint directory layout
//
//   RUN/checkpoints/step-00000123/manifest.json
//   RUN/checkpoints/step-00000123/rank-00000-of-00002.bin
//   RUN/checkpoints/latest                      (holds "step-00000123", replaced by rename)
//
// A save writes into `.step-00000123.partial/`: data files under temporary names, fsync,
// rename; the manifest last; then the directory is renamed into place and `latest` is
// replaced. A crash at any point leaves every committed checkpoint as it was.

/// A checkpoint problem; every message names the file and what is wrong.
public struct CheckpointError: Error, CustomStringConvertible, Equatable {
    public let path: String, problem: String, fix: String
    public init(_ path: String, _ problem: String, _ fix: String) { self.path = path; self.problem = problem; self.fix = fix }
    public var description: String { "error: checkpoint \(problem) (\(path)): \(fix)" }
}

/// Paths and directory operations of a run's checkpoints.
public struct CheckpointStore: Sendable {
    /// `RUN/checkpoints`.
    public let root: URL

    public init(runDirectory: String) {
        root = URL(fileURLWithPath: runDirectory).appendingPathComponent("checkpoints")
    }

    public static func stepName(_ step: Int) -> String { "step-" + String(format: "%08d", step) }
    /// The step a directory named by `stepName` holds (nil for any other name).
    public static func step(named name: String) -> Int? {
        name.hasPrefix("step-") ? Int(name.dropFirst("step-".count)) : nil
    }
    public static func fileName(rank: Int, world: Int) -> String {
        "rank-" + String(format: "%05d", rank) + "-of-" + String(format: "%05d", world) + ".bin"
    }

    public func directory(step: Int) -> URL { root.appendingPathComponent(Self.stepName(step)) }
    public func partialDirectory(step: Int) -> URL { root.appendingPathComponent("." + Self.stepName(step) + ".partial") }
    public var latestPointer: URL { root.appendingPathComponent("latest") }

    /// Committed step directories (with a manifest), newest first.
    public func committed() -> [URL] {
        let fm = FileManager.default
        guard let names = try? fm.contentsOfDirectory(atPath: root.path) else { return [] }
        return names.filter { $0.hasPrefix("step-") }.sorted(by: >)
            .map { root.appendingPathComponent($0) }
            .filter { fm.fileExists(atPath: $0.appendingPathComponent("manifest.json").path) }
    }

    /// Replaces `latest` atomically.
    public func pointLatest(at step: Int) throws {
        let tmp = root.appendingPathComponent(".latest.tmp-\(getpid())")
        try Data((Self.stepName(step) + "\n").utf8).write(to: tmp)
        try Durable.fsync(path: tmp.path)
        guard rename(tmp.path, latestPointer.path) == 0 else {
            throw CheckpointError(latestPointer.path, "pointer could not be replaced (\(String(cString: strerror(errno))))",
                                  "check permissions and free space")
        }
        try Durable.fsync(path: root.path)
    }

    /// Renames damaged step directories to `damaged-step-N-<unix time>` beside them.
    func quarantine(_ dirs: [URL], warn: (String) -> Void) throws {
        let stamp = Int(Date().timeIntervalSince1970)
        for dir in dirs where FileManager.default.fileExists(atPath: dir.path) {
            let aside = root.appendingPathComponent("damaged-\(dir.lastPathComponent)-\(stamp)")
            guard rename(dir.path, aside.path) == 0 else {
                throw CheckpointError(dir.path, "damaged checkpoint could not be moved aside (\(String(cString: strerror(errno))))",
                                      "check permissions, or move it away by hand")
            }
            warn("warning: moved the damaged checkpoint \(dir.path) to \(aside.path) (kept for inspection)")
        }
    }

    /// Deletes committed checkpoints beyond the newest `keep` (never the one `latest` names).
    public func prune(keep: Int) {
        guard keep > 0 else { return }
        let latest = (try? String(contentsOf: latestPointer, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        for dir in committed().dropFirst(keep) where dir.lastPathComponent != latest {
            try? FileManager.default.removeItem(at: dir)
        }
    }

    /// Resolves `--resume` values: "latest", a step directory, a checkpoints directory or a run
    /// directory. With "latest", falls back to the newest valid checkpoint, calling `warn`.
    ///
    /// With `repair` (the resuming job's coordinator), a fallback also moves every damaged
    /// checkpoint it passed over aside, to `damaged-step-N-<time>` (kept, not deleted: it may
    /// hold the only copy of something), and points `latest` at the checkpoint it resumes from,
    /// so `latest` always names a checkpoint that verifies and a later save of the same step
    /// is a fresh directory.
    public func resolve(_ spec: String, repair: Bool = false, warn: (String) -> Void) throws -> (URL, Manifest) {
        if spec == "latest" {
            var candidates = committed()
            if let name = (try? String(contentsOf: latestPointer, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) {
                let named = root.appendingPathComponent(name)
                candidates.removeAll { $0 == named }
                candidates.insert(named, at: 0)
            }
            guard !candidates.isEmpty else {
                throw CheckpointError(root.path, "directory has no checkpoint to resume", "train without --resume first, or pass a checkpoint path")
            }
            var firstError: Error?
            var damaged: [URL] = []
            for dir in candidates {
                do {
                    let m = try CheckpointReader.verify(directory: dir)
                    if let e = firstError {
                        warn("warning: \(e); resuming from the newest valid checkpoint, \(dir.path)")
                        if repair { try quarantine(damaged, warn: warn); try pointLatest(at: m.step) }
                    }
                    return (dir, m)
                } catch {
                    if firstError == nil { firstError = error }
                    damaged.append(dir)
                }
            }
            throw firstError!
        }
        var dir = URL(fileURLWithPath: spec)
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: dir.path, isDirectory: &isDir), !isDir.boolValue,
           let name = try? String(contentsOf: dir, encoding: .utf8) {
            // A `latest` pointer file.
            dir = dir.deletingLastPathComponent().appendingPathComponent(name.trimmingCharacters(in: .whitespacesAndNewlines))
        } else if !fm.fileExists(atPath: dir.appendingPathComponent("manifest.json").path) {
            for sub in ["latest", "checkpoints/latest"] {
                let p = dir.appendingPathComponent(sub)
                if let name = try? String(contentsOf: p, encoding: .utf8) {
                    dir = p.deletingLastPathComponent().appendingPathComponent(name.trimmingCharacters(in: .whitespacesAndNewlines))
                    break
                }
            }
        }
        return (dir, try CheckpointReader.verify(directory: dir))
    }
}

/// fsync helpers: data must be on disk before the rename that publishes it.
public enum Durable {
    /// Writes a new file piece by piece with POSIX calls; `finish` fsyncs and closes it.
    public final class Writer {
        let path: String
        private let fd: Int32

        public init(path: String) throws {
            self.path = path
            fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            guard fd >= 0 else {
                throw CheckpointError(path, "cannot be created (\(String(cString: strerror(errno))))", "check permissions and free space")
            }
        }

        deinit { close(fd) }

        public func append(_ bytes: UnsafeRawBufferPointer) throws {
            var done = 0
            while done < bytes.count {
                let n = Foundation.write(fd, bytes.baseAddress! + done, bytes.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw CheckpointError(path, "write failed (\(String(cString: strerror(errno))))",
                                          "free disk space or choose another --out; the previous checkpoint is intact")
                }
                done += n
            }
        }

        public func finish() throws {
            guard Foundation.fsync(fd) == 0 else {
                throw CheckpointError(path, "fsync failed (\(String(cString: strerror(errno))))",
                                      "free disk space or choose another --out; the previous checkpoint is intact")
            }
        }
    }

    /// `count` bytes of a file from `offset`.
    public static func read(path: String, offset: Int, count: Int) throws -> [UInt8] {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw CheckpointError(path, "data file is missing", "restore the file or resume from another checkpoint") }
        defer { close(fd) }
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset + done)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw CheckpointError(path, "data file ends inside a frame (truncated?)", "resume from another checkpoint") }
            done += n
        }
        return out
    }

    public static func fsync(path: String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw CheckpointError(path, "cannot be opened for fsync", "check permissions") }
        defer { close(fd) }
        guard Foundation.fsync(fd) == 0 else {
            throw CheckpointError(path, "fsync failed (\(String(cString: strerror(errno))))", "check the disk")
        }
    }

    /// Writes bytes to a new file with POSIX calls, so a full disk or a permission problem is
    /// reported (Foundation's `write(to:)` alone would not fsync).
    public static func write(_ bytes: UnsafeRawBufferPointer, to path: String) throws {
        let file = try Writer(path: path)
        try file.append(bytes)
        try file.finish()
    }
}

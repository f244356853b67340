import Checkpoint
import Foundation
import Settings
import XCTest

// MARK: - Running the built executable
// These tests run the release binary, as a user would (swift-argument-parser's style).
// `make test` builds it first.

enum Repo {
    /// The package root, from this file's location.
    static let root: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    static var binary: URL { root.appendingPathComponent(".build/release/tessera") }
    static var launcher: URL { root.appendingPathComponent("launch/local.sh") }

    nonisolated(unsafe) private static var prepared: String?
    nonisolated(unsafe) private static var corpusFile: URL?
    private static let lock = NSLock()

    /// Text for tests: the English prose of Debian's `fortunes` package, which `make setup`
    /// installs, concatenated by `launch/default-data.sh` (made once per test process). Tests
    /// never need anything beside the repository.
    static var corpus: URL {
        get throws {
            lock.lock(); defer { lock.unlock() }
            if let c = corpusFile { return c }
            let dir = try temporaryDirectory("corpus")
            let file = URL(fileURLWithPath: dir).appendingPathComponent("corpus.txt")
            let r = try runProcess(root.appendingPathComponent("launch/default-data.sh"), [file.path])
            guard r.status == 0 else { throw NSError(domain: "default data: \(r.stderr)", code: 1) }
            corpusFile = file
            return file
        }
    }

    /// A prepared data directory (made once per test process).
    static func dataDirectory() throws -> String {
        let text = try corpus
        lock.lock(); defer { lock.unlock() }
        if let p = prepared { return p }
        let dir = try temporaryDirectory("data")
        let r = try tessera(["prepare", "--input", text.path, "--out", dir])
        guard r.status == 0 else { throw NSError(domain: "prepare failed: \(r.stderr)", code: 1) }
        prepared = dir
        return dir
    }

    static func temporaryDirectory(_ tag: String) throws -> String {
        let u = scratch.appendingPathComponent("\(tag)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: u, withIntermediateDirectories: true)
        return u.path
    }

    /// This test process's scratch directory (runs, data, captured output): removed when the
    /// tests end, so repeated `make test` runs do not fill the disk (a full run writes
    /// gigabytes). `TESSERA_KEEP_TEST_DIRS=1` keeps it for a look after a failure.
    static let scratch: URL = {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-tests-\(ProcessInfo.processInfo.processIdentifier)")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        if ProcessInfo.processInfo.environment["TESSERA_KEEP_TEST_DIRS"] != "1" {
            XCTestObservationCenter.shared.addTestObserver(ScratchCleaner(dir))
        } else {
            print("test files are kept in \(dir.path)")
        }
        return dir
    }()
}

/// Removes the scratch directory when the test bundle finishes.
private final class ScratchCleaner: NSObject, XCTestObservation, @unchecked Sendable {
    let dir: URL
    init(_ dir: URL) { self.dir = dir }
    func testBundleDidFinish(_ testBundle: Bundle) { try? FileManager.default.removeItem(at: dir) }
}

struct RunResult {
    var status: Int32
    var stdout: String
    var stderr: String
    var seconds: Double
}

/// Runs a command to completion (at most `timeout` seconds), capturing output.
func runProcess(_ exe: URL, _ args: [String], environment: [String: String] = [:], timeout: Double = 600) throws -> RunResult {
    let p = try start(exe, args, environment: environment)
    return p.finish(timeout: timeout)
}

/// `cluster/netns/harness.sh`, brought up with `hosts` namespace hosts of `slots` rank slots;
/// skips (fails under CI=true) where namespaces cannot be made. Callers take it down.
func namespaceHarness(hosts: Int, slots: Int = 1) throws -> URL {
    let harness = Repo.root.appendingPathComponent("cluster/netns/harness.sh")
    let up = try runProcess(harness, ["up", "\(hosts)", "\(slots)"])
    guard up.status == 0 else {
        _ = try? runProcess(harness, ["down"])
        try requireEnvironment(false, "cannot create network namespaces here (\(up.stderr.trimmingCharacters(in: .whitespacesAndNewlines)))")
        return harness
    }
    return harness
}

/// Skips a test whose environment lacks a facility (a tmpfs, network namespaces), saying
/// why; under CI (`CI=true`) that is a failure instead, so CI cannot pass by skipping.
func requireEnvironment(_ available: Bool, _ reason: @autoclosure () -> String) throws {
    guard !available else { return }
    if ProcessInfo.processInfo.environment["CI"] == "true" {
        throw NSError(domain: "CI=true and the environment cannot run this test: \(reason())", code: 1)
    }
    throw XCTSkip("SKIPPED: \(reason())")
}

/// Runs the tessera binary.
func tessera(_ args: [String]) throws -> RunResult {
    guard FileManager.default.isExecutableFile(atPath: Repo.binary.path) else {
        throw NSError(domain: "\(Repo.binary.path) is missing: run `make build` (make test does)", code: 1)
    }
    return try runProcess(Repo.binary, args)
}

/// Runs tessera under mpirun through launch/local.sh.
func mpirun(_ n: Int, _ args: [String]) throws -> RunResult {
    try runProcess(Repo.launcher, ["-n", "\(n)", "--"] + args)
}

/// A started process whose output is collected to temporary files.
final class Running {
    let process: Process
    let out: URL, err: URL
    let started = Date()

    init(process: Process, out: URL, err: URL) { self.process = process; self.out = out; self.err = err }

    /// Waits for the process; one still running after `timeout` seconds is killed (SIGTERM,
    /// which mpirun forwards to its ranks, then SIGKILL) and the test fails: a broken
    /// watchdog must fail the suite, not hang it.
    func finish(timeout: Double = 600, file: StaticString = #filePath, line: UInt = #line) -> RunResult {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            XCTFail("\(process.executableURL?.lastPathComponent ?? "process") \(process.arguments ?? []) did not finish "
                    + "within \(Int(timeout)) s: killed", file: file, line: line)
            kill(process.processIdentifier, SIGTERM)
            let grace = Date().addingTimeInterval(10)
            while process.isRunning && Date() < grace { usleep(50_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
        process.waitUntilExit()
        let o = (try? String(contentsOf: out, encoding: .utf8)) ?? ""
        let e = (try? String(contentsOf: err, encoding: .utf8)) ?? ""
        try? FileManager.default.removeItem(at: out); try? FileManager.default.removeItem(at: err)
        return RunResult(status: process.terminationStatus, stdout: o, stderr: e, seconds: Date().timeIntervalSince(started))
    }
}

func start(_ exe: URL, _ args: [String], environment: [String: String] = [:]) throws -> Running {
    let p = Process()
    p.executableURL = exe
    p.arguments = args
    var env = ProcessInfo.processInfo.environment
    for (k, v) in environment { env[k] = v }
    p.environment = env
    let out = Repo.scratch.appendingPathComponent("out-\(UUID().uuidString)")
    let err = Repo.scratch.appendingPathComponent("err-\(UUID().uuidString)")
    _ = FileManager.default.createFile(atPath: out.path, contents: nil)
    _ = FileManager.default.createFile(atPath: err.path, contents: nil)
    p.standardOutput = try FileHandle(forWritingTo: out)
    p.standardError = try FileHandle(forWritingTo: err)
    p.standardInput = FileHandle.nullDevice
    try p.run()
    return Running(process: p, out: out, err: err)
}

/// Losses (and val losses) per step from a run's metrics.jsonl.
func metrics(_ runDir: String) throws -> [[String: Any]] {
    let text = try String(contentsOfFile: runDir + "/metrics.jsonl", encoding: .utf8)
    return text.split(separator: "\n").compactMap {
        try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
    }
}

/// A run's memory.json (rank 0's bytes by kind).
func memoryFile(_ runDir: String) throws -> [String: Any] {
    try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: runDir + "/memory.json"))) as! [String: Any]
}

func losses(_ runDir: String) throws -> [Double] { try metrics(runDir).map { $0["loss"] as! Double } }

/// The fp32 parameters of a run's model.bin (after the header).
func modelParameters(_ runDir: String) throws -> [Float] {
    let d = try Data(contentsOf: URL(fileURLWithPath: runDir + "/model.bin"))
    let h = d.subdata(in: 8..<16).withUnsafeBytes { Int($0.loadUnaligned(as: UInt64.self)) }
    // The weights end where the 16-byte CRC trailer ("TSRACRC\0", CRC-32, 4 zero bytes) starts.
    let end = d.suffix(16).prefix(8) == Data("TSRACRC".utf8) + [0] ? d.count - 16 : d.count
    let body = d.subdata(in: (16 + h)..<end)
    return body.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
}

/// The tiny nanoGPT CPU-recipe model for fast runs.
func tinyArgs(data: String, out: String, steps: Int = 20) -> [String] {
    ["train", "--data", data, "--out", out, "--n-layer", "4", "--n-head", "4", "--n-embd", "128",
     "--block-size", "64", "--batch-size", "12", "--max-steps", "\(steps)", "--eval-every", "0",
     "--eval-steps", "2", "--no-bias", "--log-every", "1000"]
}

/// Process ids of tessera ranks (by OMPI_COMM_WORLD_RANK) that descend from this test process
/// (another test run on the machine has ranks of its own, which must not be the ones killed).
func rankPIDs() -> [Int: Int32] {
    var out: [Int: Int32] = [:]
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return out }
    for e in entries {
        guard let pid = Int32(e), descendsFromThisProcess(pid),
              let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(e)/exe"),
              exe.hasSuffix("/tessera"),
              let env = FileManager.default.contents(atPath: "/proc/\(e)/environ") else { continue }
        for kv in env.split(separator: 0) {
            let s = String(decoding: kv, as: UTF8.self)
            if s.hasPrefix("OMPI_COMM_WORLD_RANK="), let r = Int(s.dropFirst("OMPI_COMM_WORLD_RANK=".count)) { out[r] = pid }
        }
    }
    return out
}

/// Whether `pid`'s chain of parents (from /proc/<pid>/stat) reaches this process.
func descendsFromThisProcess(_ pid: Int32) -> Bool {
    let me = getpid()
    var current = pid
    for _ in 0..<64 {
        guard current > 1, let stat = try? String(contentsOfFile: "/proc/\(current)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        // After "pid (comm)": state, then the parent's pid.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 1, let parent = Int32(fields[1]) else { return false }
        if parent == me { return true }
        current = parent
    }
    return false
}

/// The tokens and vocabulary size of a prepared split's first shard (`train_000000.bin` or
/// `val_000000.bin`), read by llm.c's layout (256 int32 of header: magic, version, count,
/// vocabulary; then uint16 tokens).
func shardTokens(_ dataDir: String, _ split: String) throws -> (tokens: [UInt16], vocab: Int) {
    let d = try Data(contentsOf: URL(fileURLWithPath: dataDir + "/\(split)_000000.bin"))
    let vocab = d.subdata(in: 12..<16).withUnsafeBytes { Int($0.loadUnaligned(as: Int32.self)) }
    let tokens = d.subdata(in: 1024..<d.count).withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)) }
    return (tokens, vocab)
}

/// A shard in llm.c's format, built by hand from the documented layout.
func llmcShard(_ tokens: [UInt16], vocab: Int32 = 0, magic: Int32 = 20_240_520, version: Int32 = 1) -> Data {
    var header = [Int32](repeating: 0, count: 256)
    header[0] = magic; header[1] = version; header[2] = Int32(tokens.count); header[3] = vocab
    return header.withUnsafeBytes { Data($0) } + tokens.withUnsafeBytes { Data($0) }
}

/// Entropy in nats of the token frequencies of `tokens`: the loss of the best model that
/// ignores context.
func unigramEntropy(_ tokens: [UInt16]) -> Double {
    var counts: [UInt16: Int] = [:]
    for t in tokens { counts[t, default: 0] += 1 }
    let n = Double(tokens.count)
    return counts.values.reduce(0) { $0 - Double($1) / n * log(Double($1) / n) }
}

/// Every state vector of a checkpoint (a step directory, or a run's latest), by name.
func checkpointVectors(_ dir: String) throws -> [String: [Float]] {
    let (url, m) = try CheckpointStore(runDirectory: dir).resolve(dir) { _ in }
    let reader = CheckpointReader.VectorReader(directory: url, manifest: m)
    var out: [String: [Float]] = [:]
    for vector in StateVector.allCases where reader.holds(vector) {
        // A local vector once per rank ("local.adam.m@1"), the others once.
        for rank in vector.isLocal ? Array(0..<m.worldSize) : [-1] {
            var buf = [Float](repeating: 0, count: m.parameterCount)
            try buf.withUnsafeMutableBufferPointer {
                try reader.read(vector, range: 0..<m.parameterCount, into: $0.baseAddress!, rank: rank >= 0 ? rank : nil)
            }
            out[vector.rawValue + (rank >= 0 ? "@\(rank)" : "")] = buf
        }
    }
    return out
}

/// Compares two runs step by step (or their last `lastSteps`): the same steps, then every step's loss and
/// gradient norm within `tolerance` (relative), then the final parameters within
/// `tolerance` (absolute). Returns the largest differences seen, for calibration.
@discardableResult
func assertSameTrajectory(_ run: String, _ reference: String, tolerance: Double, _ label: String, lastSteps: Int? = nil,
                          file: StaticString = #filePath, line: UInt = #line) throws -> (loss: Double, norm: Double, parameter: Double) {
    var a = try metrics(run), b = try metrics(reference)
    if let k = lastSteps {
        XCTAssertGreaterThanOrEqual(min(a.count, b.count), k, "\(label): steps to compare", file: file, line: line)
        a = Array(a.suffix(k)); b = Array(b.suffix(k))
        XCTAssertEqual(a.map { $0["step"] as? Int }, b.map { $0["step"] as? Int }, "\(label): the same steps", file: file, line: line)
    }
    XCTAssertEqual(a.count, b.count, "\(label): step counts", file: file, line: line)
    guard a.count == b.count, !a.isEmpty else { return (.infinity, .infinity, .infinity) }
    var worst = (loss: 0.0, norm: 0.0, parameter: 0.0)
    for (i, (x, y)) in zip(a, b).enumerated() {
        let l = abs((x["loss"] as! Double) - (y["loss"] as! Double)) / (y["loss"] as! Double)
        let gx = x["grad_norm"] as! Double, gy = y["grad_norm"] as! Double
        let g = abs(gx - gy) / max(gy, 1e-12)
        worst.loss = max(worst.loss, l); worst.norm = max(worst.norm, g)
        XCTAssertLessThan(l, tolerance, "\(label): loss of step \(i + 1)", file: file, line: line)
        XCTAssertLessThan(g, tolerance, "\(label): gradient norm of step \(i + 1) (\(gx) vs \(gy))", file: file, line: line)
    }
    let p = try modelParameters(run), q = try modelParameters(reference)
    XCTAssertEqual(p.count, q.count, "\(label): parameter counts", file: file, line: line)
    for (x, y) in zip(p, q) { worst.parameter = max(worst.parameter, Double(abs(x - y))) }
    XCTAssertLessThan(worst.parameter, tolerance, "\(label): largest parameter difference", file: file, line: line)
    return worst
}

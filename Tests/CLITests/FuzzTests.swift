import Foundation
import XCTest

/// Mutated inputs never crash or hang tessera, and never pass where they must not: checkpoint
/// manifests and rank files (sealed and checksummed: every change must be refused), token
/// shards (a changed header must be refused; changed tokens may be valid data), model files,
/// tokenizer
/// files and config JSON (a change may still be valid). A refusal is exit 1 or 2 with an
/// `error:` line; anything else (a signal, a Swift trap, a timeout) fails the test.
///
/// `make test` tries a few hundred mutations (`TESSERA_FUZZ_SCALE=1`); `make fuzz` runs the
/// same mutator for much longer.
final class FuzzTests: XCTestCase {
    struct Tally { var accepted = 0, refused = 0 }
    var tallies: [String: Tally] = [:]
    var rng = Mutator(seed: UInt64(ProcessInfo.processInfo.environment["TESSERA_FUZZ_SEED"] ?? "") ?? 20261126)
    let scale = Int(ProcessInfo.processInfo.environment["TESSERA_FUZZ_SCALE"] ?? "") ?? 1

    /// Runs tessera on a mutated file and classifies the outcome; `mayAccept` says whether
    /// exit 0 is legitimate for this mutation.
    func attempt(_ format: String, file: String, original: Data, mutated: Data, mayAccept: Bool, _ args: [String]) throws {
        try mutated.write(to: URL(fileURLWithPath: file))
        defer { try? original.write(to: URL(fileURLWithPath: file)) }
        let r = try runProcess(Repo.binary, args, timeout: 60)
        switch r.status {
        case 0:
            XCTAssertTrue(mayAccept, "\(format): a mutation was accepted silently (\(mutated.count) bytes): \(r.stdout.suffix(300))")
            tallies[format, default: Tally()].accepted += 1
        case 1, 2:
            XCTAssertTrue(r.stderr.contains("error:"), "\(format): exit \(r.status) without an error line: \(r.stderr.suffix(500))")
            tallies[format, default: Tally()].refused += 1
        default:
            XCTFail("\(format): exit \(r.status) (crash or signal): \(r.stderr.suffix(800))")
            let keep = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-fuzz-crash-\(format)-\(UUID().uuidString)")
            try? mutated.write(to: keep)
            print("fuzz: crashing input kept at \(keep.path)")
        }
    }

    func testMutatedInputsAreRefusedCleanly() throws {
        let data = try Repo.temporaryDirectory("fuzzdata"), run = try Repo.temporaryDirectory("fuzzrun")
        XCTAssertEqual(try tessera(["prepare", "--input", (try Repo.corpus).path, "--out", data]).status, 0)
        let small = ["--n-layer", "1", "--n-head", "1", "--n-embd", "8", "--block-size", "8", "--batch-size", "1",
                     "--eval-steps", "1", "--max-steps", "1", "--log-every", "1000"]
        XCTAssertEqual(try tessera(["train", "--data", data, "--out", run] + small).status, 0)
        func train() throws -> [String] { ["train", "--data", data, "--out", try Repo.temporaryDirectory("f")] + small }
        let ckpt = run + "/checkpoints/step-00000001"

        // Checkpoint manifest: sealed, so every change is refused.
        let manifest = ckpt + "/manifest.json"
        let m = try Data(contentsOf: URL(fileURLWithPath: manifest))
        for _ in 0..<(80 * scale) {
            try attempt("manifest", file: manifest, original: m, mutated: rng.mutate(m, text: true), mayAccept: false,
                        ["ckpt", "verify", ckpt])
        }
        // Checkpoint rank file: CRC-32 in the manifest, so every change is refused.
        let rank = ckpt + "/rank-00000-of-00001.bin"
        let rb = try Data(contentsOf: URL(fileURLWithPath: rank))
        for _ in 0..<(40 * scale) {
            try attempt("rank file", file: rank, original: rb, mutated: rng.mutate(rb, text: false), mayAccept: false,
                        ["ckpt", "verify", ckpt])
        }
        // Token shards: a change to the 16 meaningful header bytes (magic, version, count,
        // vocabulary) must be refused; the rest of llm.c's header is unused, and tokens may
        // change into other valid tokens.
        let shard = data + "/val_000000.bin"
        let sb = try Data(contentsOf: URL(fileURLWithPath: shard))
        for i in 0..<(80 * scale) {
            let mutated = i % 2 == 0 ? rng.mutateHeader(sb, bytes: 16) : rng.mutate(sb, text: false)
            // A vocabulary field of 0 means "not declared" (llm.c writes 0), which is valid.
            let undeclared = mutated.count >= 1024 && mutated.prefix(12) == sb.prefix(12) && mutated[12..<16].allSatisfy { $0 == 0 }
            let headerIntact = mutated.count >= 1024 && (mutated.prefix(16) == sb.prefix(16) || undeclared)
            let sameLength = mutated.count == sb.count
            try attempt("token shard", file: shard, original: sb, mutated: mutated, mayAccept: headerIntact && sameLength, try train())
        }
        // Tokenizer file and config JSON: a change may still describe something valid.
        let tok = data + "/tokenizer.json"
        let tb = try Data(contentsOf: URL(fileURLWithPath: tok))
        for _ in 0..<(50 * scale) {
            try attempt("tokenizer", file: tok, original: tb, mutated: rng.mutate(tb, text: true), mayAccept: true, try train())
        }
        let config = run + "/config.json"
        let cb = try Data(contentsOf: URL(fileURLWithPath: config))
        for _ in 0..<(50 * scale) {
            try attempt("config", file: config, original: cb, mutated: rng.mutate(cb, text: true), mayAccept: true,
                        ["train", "--config", config, "--data", data, "--out", try Repo.temporaryDirectory("c"), "--max-steps", "1"])
        }
        // model.bin ends with a CRC-32 of everything before it: every change is refused.
        let model = run + "/model.bin"
        let mb = try Data(contentsOf: URL(fileURLWithPath: model))
        let headerEnd = 16 + mb.subdata(in: 8..<16).withUnsafeBytes { Int($0.loadUnaligned(as: UInt64.self)) }
        for i in 0..<(40 * scale) {
            let mutated = i % 2 == 0 ? rng.mutateHeader(mb, bytes: headerEnd) : rng.mutate(mb, text: false)
            try attempt("model.bin", file: model, original: mb, mutated: mutated, mayAccept: false,
                        ["generate", "--model", model, "--max-new-tokens", "2"])
        }
        for (format, t) in tallies.sorted(by: { $0.key < $1.key }) {
            print("fuzz: \(format): \(t.accepted + t.refused) mutations, \(t.refused) refused (exit 1/2 with error:), "
                  + "\(t.accepted) accepted as valid")
        }
    }
}

/// A deterministic mutator: bit flips, interesting bytes, truncation, deletion, insertion,
/// duplication and, for JSON text, replacing values with hostile ones. Every mutation
/// changes the input.
struct Mutator {
    var state: UInt64
    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(n, 1))) }

    static let hostileValues = ["-1", "0", "1e308", "-1e308", "99999999999999999999", "1.5", "\"../x\"", "\"\"", "null",
                                "true", "[]", "{}", "4294967296", "-9223372036854775808", "\"" + String(repeating: "A", count: 5000) + "\""]

    mutating func mutate(_ d: Data, text: Bool) -> Data {
        while true {
            var out = d
            switch below(text ? 8 : 6) {
            case 0: let i = below(out.count); out[i] ^= UInt8(1) << UInt8(below(8))
            case 1: let i = below(out.count); out[i] = [0, 0xFF, 0x7F, 0x80, 0x30, 0x22][below(6)]
            case 2: out = out.prefix(below(out.count))
            case 3: let i = below(out.count), n = 1 + below(64); out.removeSubrange(i..<min(out.count, i + n))
            case 4: let i = below(out.count + 1); out.insert(contentsOf: (0..<(1 + below(16))).map { _ in UInt8(truncatingIfNeeded: next()) }, at: i)
            case 5: let i = below(out.count), n = 1 + below(256); let chunk = out[i..<min(out.count, i + n)]; out.insert(contentsOf: chunk, at: i)
            default: out = replaceJSONValue(out)
            }
            if out != d { return out }
        }
    }

    /// Changes one or more of the first `bytes` bytes.
    mutating func mutateHeader(_ d: Data, bytes: Int) -> Data {
        var out = d
        repeat {
            let i = below(bytes)
            if below(2) == 0 { out[i] ^= UInt8(1) << UInt8(below(8)) } else { out[i] = UInt8(truncatingIfNeeded: next()) }
        } while out == d
        return out
    }

    /// Replaces one JSON value (after a colon) with a hostile one.
    mutating func replaceJSONValue(_ d: Data) -> Data {
        let text = String(decoding: d, as: UTF8.self)
        let colons = text.indices.filter { text[$0] == ":" }
        guard !colons.isEmpty else { return d }
        let c = colons[below(colons.count)]
        var end = text.index(after: c)
        var depth = 0, inString = false
        while end < text.endIndex {
            let ch = text[end]
            if inString { if ch == "\"" { inString = false } }
            else if ch == "\"" { inString = true }
            else if ch == "[" || ch == "{" { depth += 1 }
            else if ch == "]" || ch == "}" { if depth == 0 { break }; depth -= 1 }
            else if ch == "," && depth == 0 { break }
            end = text.index(after: end)
        }
        var out = text
        out.replaceSubrange(text.index(after: c)..<end, with: " " + Self.hostileValues[below(Self.hostileValues.count)])
        return Data(out.utf8)
    }
}

import Corpus
import Foundation
import XCTest

/// `prepare --format prompt-completion`: examples packed whole into rows with a loss mask
/// that counts only completions; training and eval read it; bad input refused.
final class InstructionDataTests: XCTestCase {
    /// Small arithmetic-like examples, written as JSON Lines.
    func examples(_ n: Int, dir: String, long: Bool = false) throws -> (path: String, items: [(String, String)]) {
        var rng = SplitMix64Like(seed: 7)
        let words = ["alpha", "beta", "gamma", "delta", "echo", "fox", "golf"]
        var items: [(String, String)] = []
        for i in 0..<n {
            let w = (0..<(1 + rng.next() % 4)).map { _ in words[rng.next() % words.count] }
            let prompt = (long && i == 5 ? String(repeating: "alpha beta ", count: 40) : "") + "reverse: " + w.joined(separator: " ") + "\n"
            items.append((prompt, w.reversed().joined(separator: " ")))
        }
        let path = dir + "/examples.jsonl"
        let lines = try items.map { p, c in
            String(decoding: try JSONSerialization.data(withJSONObject: ["question": p, "answer": c]), as: UTF8.self)
        }
        try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return (path, items)
    }

    struct SplitMix64Like { var s: UInt64; init(seed: UInt64) { s = seed }
        mutating func next() -> Int { s &+= 0x9E37_79B9_7F4A_7C15; var z = s; z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB; return Int((z ^ (z >> 31)) >> 1) } }

    func prepare(_ jsonl: String, out: String, T: Int, extra: [String] = []) throws -> RunResult {
        try tessera(["prepare", "--format", "prompt-completion", "--input", jsonl, "--prompt-field", "question",
                     "--completion-field", "answer", "--block-size", "\(T)", "--tokenizer", "bpe", "--vocab-size", "300",
                     "--val-fraction", "0.1", "--out", out] + extra)
    }

    /// Every example appears whole, in order, in one row; the mask counts exactly its
    /// completion and closing separator; rows are padded with masked separators.
    func testRowsHoldWholeExamplesAndMaskCountsCompletionsOnly() throws {
        let dir = try Repo.temporaryDirectory("sft"), T = 48
        let (jsonl, items) = try examples(200, dir: dir)
        let r = try prepare(jsonl, out: dir + "/data", T: T)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("200 example(s) packed"), r.stdout)
        let data = try Dataset.open(dir + "/data")
        let packing = try XCTUnwrap(data.packing)
        XCTAssertEqual(packing.blockSize, T)
        let tokenizer = try XCTUnwrap(data.tokenizer)
        let sep = UInt32(packing.separator)
        // Walk train and val rows; examples i with i % 10 == 9 went to val.
        var expected: [String: [(ids: [UInt32], mask: [UInt8])]] = ["train": [], "val": []]
        var counted = 0
        for (i, (p, c)) in items.enumerated() {
            let pi = try tokenizer.encodeWide(p), ci = try tokenizer.encodeWide(c)
            var mask = [UInt8](repeating: 0, count: pi.count) + [UInt8](repeating: 1, count: ci.count + 1)
            mask[0] = 0
            counted += ci.count + 1
            expected[i % 10 == 9 ? "val" : "train"]!.append((pi + ci + [sep], mask))
        }
        XCTAssertEqual(packing.countedTargets, counted)
        for (name, split) in [("train", data.train), ("val", data.val)] {
            let shard = split.shards[0]
            XCTAssertEqual(shard.count % T, 1, "rows of T plus one trailing pad")
            let mask = try XCTUnwrap(shard.lossMask)
            var queue = expected[name]![...]
            for row in 0..<(shard.count / T) {
                var at = row * T
                while let next = queue.first, at - row * T + next.ids.count <= T {
                    for (k, id) in next.ids.enumerated() {
                        XCTAssertEqual(shard[at + k], id, "\(name) row \(row)")
                        XCTAssertEqual(mask[at + k], next.mask[k], "\(name) row \(row) mask")
                    }
                    at += next.ids.count
                    queue.removeFirst()
                }
                XCTAssertGreaterThan(at, row * T, "\(name) row \(row) holds an example")
                for k in at..<((row + 1) * T) { XCTAssertEqual(shard[k], sep); XCTAssertEqual(mask[k], 0, "padding is masked") }
            }
            XCTAssertTrue(queue.isEmpty, "\(name): every example placed")
            // The trainer's windows: targets are −1 exactly where the mask is 0.
            for mode in Sampling.allCases {
                let sampler = BatchSampler(seed: 1, blockSize: T, batchSize: 4, mode: mode, rowAligned: true)
                var x = [Int32](repeating: 0, count: 4 * T), y = x
                try x.withUnsafeMutableBufferPointer { xb in try y.withUnsafeMutableBufferPointer { yb in
                    try sampler.fill(x: xb.baseAddress!, y: yb.baseAddress!, split: split, which: .train, batch: 3,
                                     indices: 0..<4, vocabSize: data.vocabSize)
                } }
                for r in 0..<4 {
                    let (_, start) = sampler.window(in: split, which: .train, batch: 3, index: r)
                    XCTAssertEqual(start % T, 0, "\(mode): windows start at rows")
                    for t in 0..<T {
                        let m = mask[start + t + 1]
                        XCTAssertEqual(y[r * T + t], m == 0 ? -1 : Int32(shard[start + t + 1]), "\(mode) row \(r) t \(t)")
                    }
                }
            }
        }
    }

    /// Training learns the completions (loss over completion tokens only, well below the
    /// data's entropy per token); eval agrees; bad input is refused with the fix.
    func testTrainEvalAndBadInput() throws {
        let dir = try Repo.temporaryDirectory("sfttrain"), T = 48
        let (jsonl, _) = try examples(600, dir: dir)
        XCTAssertEqual(try prepare(jsonl, out: dir + "/data", T: T).status, 0)
        let run = dir + "/run"
        let r = try tessera(["train", "--data", dir + "/data", "--out", run, "--n-layer", "2", "--n-head", "2", "--n-embd", "48",
                             "--block-size", "\(T)", "--batch-size", "16", "--max-steps", "150", "--lr", "3e-3", "--warmup-steps", "10",
                             "--eval-every", "0", "--eval-steps", "4", "--no-tensorboard", "--sampling", "sequential"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let m = try metrics(run)
        XCTAssertLessThan(m.last!["val_loss"] as! Double, 0.5, "reversing words is learnt")
        XCTAssertGreaterThan(m.first!["loss"] as! Double, 3, "from chance")
        XCTAssertNotNil(m.last!["epoch"])
        let e = try tessera(["eval", "--checkpoint", run, "--json"])
        XCTAssertEqual(e.status, 0, e.stderr)
        let result = try JSONSerialization.jsonObject(with: Data(e.stdout.utf8)) as! [String: Any]
        let packing = try Dataset.open(dir + "/data").packing!
        XCTAssertLessThan(result["tokens"] as! Int, packing.countedTargets, "eval counts completion targets only")
        XCTAssertLessThan(result["loss"] as! Double, 0.5)

        let mismatch = try tessera(["train", "--data", dir + "/data", "--out", dir + "/bad", "--block-size", "32", "--max-steps", "1"])
        XCTAssertEqual(mismatch.status, 2)
        XCTAssertTrue(mismatch.stderr.contains("packed in rows of 48"), mismatch.stderr)

        let (longJSONL, _) = try examples(20, dir: try Repo.temporaryDirectory("sftlong"), long: true)
        let long = try prepare(longJSONL, out: dir + "/long", T: T)
        XCTAssertEqual(long.status, 2)
        XCTAssertTrue(long.stderr.contains("examples.jsonl:6") && long.stderr.contains("raise --block-size"), long.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/long"))
        let char = try tessera(["prepare", "--format", "prompt-completion", "--input", jsonl, "--block-size", "48", "--out", dir + "/c"])
        XCTAssertEqual(char.status, 2)
        XCTAssertTrue(char.stderr.contains("<|endoftext|>"), char.stderr)
        let fields = try prepare(jsonl, out: dir + "/f", T: T, extra: ["--prompt-field", "prompt"])
        XCTAssertEqual(fields.status, 2)
        XCTAssertTrue(fields.stderr.contains("--prompt-field"), fields.stderr)
    }
}

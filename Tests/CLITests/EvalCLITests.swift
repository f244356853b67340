import Corpus
import Foundation
import Kernels
import Model
import Training
import XCTest

/// `tessera eval`: the whole split, every token predicted once, the same number on any
/// number of ranks; `--as-trainer` reproduces the trainer's validation loss; bits per byte
/// from the tokenizer's byte lengths.
final class EvalCLITests: XCTestCase {
    struct Result: Decodable {
        var loss: Double, perplexity: Double, bitsPerByte: Double?, tokens: Int, bytes: Int?, windows: Int, ranks: Int, mode: String
    }

    func decode(_ r: RunResult) throws -> Result {
        XCTAssertEqual(r.status, 0, r.stderr)
        return try JSONDecoder().decode(Result.self, from: Data(r.stdout.utf8))
    }

    func testWholeSplitOnOneAndTwoRanksAndAsTheTrainerSawIt() throws {
        // ASCII text, so every character token is one byte: bits per byte = loss / ln 2.
        let dir = try Repo.temporaryDirectory("eval"), text = dir + "/text.txt", data = dir + "/data", run = dir + "/run"
        var rng = SystemRandomNumberGenerator()
        let words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "home"]
        let body = (0..<6000).map { _ in words.randomElement(using: &rng)! }.joined(separator: " ")
        try body.write(toFile: text, atomically: true, encoding: .utf8)
        XCTAssertEqual(try tessera(["prepare", "--input", text, "--out", data]).status, 0)
        let train = try tessera(tinyArgs(data: data, out: run, steps: 6) + ["--eval-steps", "3"])
        XCTAssertEqual(train.status, 0, train.stderr)

        let one = try decode(try tessera(["eval", "--checkpoint", run, "--json"]))
        let two = try decode(try mpirun(2, ["eval", "--checkpoint", run, "--json", "--batch-size", "3"]))
        XCTAssertEqual(one.mode, "whole"); XCTAssertEqual(two.ranks, 2)
        XCTAssertEqual(one.loss, two.loss, accuracy: 1e-6 * one.loss, "1 rank vs 2 ranks")
        XCTAssertEqual(one.tokens, two.tokens)
        // Every val token after the shard's first is a target once.
        let valTokens = try shardTokenCount(data + "/val_000000.bin")
        XCTAssertEqual(one.tokens, valTokens - 1)
        XCTAssertEqual(one.windows, (valTokens - 1 + 63) / 64)
        XCTAssertEqual(one.bytes, one.tokens)
        XCTAssertEqual(one.bitsPerByte!, one.loss / log(2), accuracy: 1e-9)
        XCTAssertEqual(one.perplexity, exp(one.loss), accuracy: 1e-9 * one.perplexity)
        XCTAssertLessThan(one.loss, log(Double(13 + 1)), "trained a little: better than uniform over the few characters")

        // The trainer's final validation loss, recomputed from the checkpoint on 1 and 2 ranks.
        let metrics = try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        let last = try JSONSerialization.jsonObject(with: Data(metrics.last!.utf8)) as! [String: Any]
        let trainerVal = last["val_loss"] as! Double
        for n in [1, 2] {
            let r = n == 1 ? try tessera(["eval", "--checkpoint", run, "--as-trainer", "--json"])
                           : try mpirun(2, ["eval", "--checkpoint", run, "--as-trainer", "--json"])
            let e = try decode(r)
            XCTAssertEqual(e.mode, "trainer")
            XCTAssertEqual(e.loss, trainerVal, accuracy: 1e-6 * trainerVal, "\(n) rank(s) against train's val loss")
        }
        // model.bin gives the same number as the checkpoint it was saved with.
        let viaModel = try decode(try tessera(["eval", "--model", run + "/model.bin", "--data", data, "--json"]))
        XCTAssertEqual(viaModel.loss, one.loss)
        // In bf16: bf16's rounding of the same number.
        let bf16 = try decode(try tessera(["eval", "--model", run + "/model.bin", "--data", data, "--json", "--precision", "bf16"]))
        XCTAssertEqual(bf16.loss, one.loss, accuracy: 1e-2 * one.loss)
        XCTAssertNotEqual(bf16.loss, one.loss)
        XCTAssertEqual(bf16.tokens, one.tokens)
    }

    /// `--stride`: every target once whatever the stride; at the block size the old windows
    /// exactly; at stride 1 each token predicted from the `block_size` tokens before it (or all
    /// before it), computed here one forward pass per token; the same on 2 ranks.
    func testSlidingWindows() throws {
        let dir = try Repo.temporaryDirectory("stride"), text = dir + "/text.txt", data = dir + "/data", run = dir + "/run"
        var rng = SplitMix64(seed: 11)
        let words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "home"]
        try (0..<600).map { _ in words[rng.next(below: words.count)] }.joined(separator: " ").write(toFile: text, atomically: true, encoding: .utf8)
        XCTAssertEqual(try tessera(["prepare", "--input", text, "--out", data, "--val-fraction", "0.1"]).status, 0)
        XCTAssertEqual(try tessera(tinyArgs(data: data, out: run, steps: 6) + ["--block-size", "32"]).status, 0)
        let model = run + "/model.bin"
        func eval(_ extra: [String], ranks: Int = 1) throws -> Result {
            let args = ["eval", "--model", model, "--data", data, "--json"] + extra
            return try decode(ranks == 1 ? try tessera(args) : try mpirun(ranks, args))
        }
        let plain = try eval([]), full = try eval(["--stride", "32"])
        XCTAssertEqual(full.loss, plain.loss); XCTAssertEqual(full.windows, plain.windows)
        let one = try eval(["--stride", "1"]), eight = try eval(["--stride", "8"]), eightOnTwo = try eval(["--stride", "8"], ranks: 2)
        for r in [one, eight, eightOnTwo] { XCTAssertEqual(r.tokens, plain.tokens, "every target once") }
        XCTAssertEqual(eightOnTwo.loss, eight.loss, accuracy: 1e-6 * eight.loss)
        XCTAssertGreaterThan(eight.windows, 3 * plain.windows)

        // Stride 1 by hand: token j from tokens max(0, j − 32)..<j.
        let file = try ModelFile.read(from: model)
        let shard = try Dataset.open(data).val.shards[0]
        let tokens = (0..<shard.count).map { Int32(shard[$0]) }
        let gpt = GPT(config: file.config), none = FloatBuffer(count: 0)
        let flat = FlatParameters(layout: gpt.layout, parameters: file.parameters.pointer, gradients: none.pointer)
        var nats = 0.0
        for j in 1..<tokens.count {
            let context = Array(tokens[max(0, j - 32)..<j])
            gpt.forward(tokens: context, targets: nil, B: 1, T: context.count, params: flat, logitRows: [context.count - 1])
            let row = UnsafeBufferPointer(start: gpt.logitsRow(index: 0), count: file.config.vocabSize).map(Double.init)
            let top = row.max()!
            nats += top + log(row.map { exp($0 - top) }.reduce(0, +)) - row[Int(tokens[j])]
        }
        XCTAssertEqual(one.loss, nats / Double(tokens.count - 1), accuracy: 1e-5 * one.loss)
        let big = try tessera(["eval", "--model", model, "--data", data, "--stride", "33"])
        XCTAssertEqual(big.status, 2)
        XCTAssertTrue(big.stderr.contains("--stride is 33, longer than the model's context of 32"), big.stderr)
    }

    func testBadInputIsAClearError() throws {
        let data = try Repo.dataDirectory(), run = try Repo.temporaryDirectory("eval-bad")
        XCTAssertEqual(try tessera(tinyArgs(data: data, out: run, steps: 1)).status, 0)
        let split = try tessera(["eval", "--checkpoint", run, "--split", "test"])
        XCTAssertEqual(split.status, 64, split.stderr)
        XCTAssertTrue(split.stderr.contains("--split must be val or train"), split.stderr)
        let none = try tessera(["eval", "--checkpoint", run + "/nowhere"])
        XCTAssertNotEqual(none.status, 0)
        XCTAssertTrue(none.stderr.contains("error"), none.stderr)
        let both = try tessera(["eval", "--checkpoint", run, "--model", run + "/model.bin"])
        XCTAssertTrue(both.stderr.contains("exactly one of --checkpoint and --model"), both.stderr)
    }

    /// Tokens in an llm.c-format shard (its header's third int32).
    func shardTokenCount(_ path: String) throws -> Int {
        let d = try Data(contentsOf: URL(fileURLWithPath: path))
        return Int(d.withUnsafeBytes { $0.load(fromByteOffset: 8, as: Int32.self) })
    }
}

import Foundation
import XCTest

/// Single-process behaviour of `tessera train` and `tessera prepare`, through the binary.
final class TrainCLITests: XCTestCase {
    func testSameSeedGivesIdenticalLossTrajectory() throws {
        let data = try Repo.dataDirectory()
        let a = try Repo.temporaryDirectory("run"), b = try Repo.temporaryDirectory("run")
        XCTAssertEqual(try tessera(tinyArgs(data: data, out: a)).status, 0)
        XCTAssertEqual(try tessera(tinyArgs(data: data, out: b)).status, 0)
        let la = try losses(a), lb = try losses(b)
        XCTAssertEqual(la.count, 20)
        XCTAssertEqual(la, lb, "bit-identical losses for the same seed")
        XCTAssertEqual(try modelParameters(a), try modelParameters(b))
        let c = try Repo.temporaryDirectory("run")
        XCTAssertEqual(try tessera(tinyArgs(data: data, out: c) + ["--seed", "7"]).status, 0)
        XCTAssertNotEqual(try losses(c), la, "a different seed changes the run")
    }

    /// Without mpirun the binary trains on one process and prints nothing on stderr.
    func testRunsWithoutMPIAndWritesRunFiles() throws {
        let data = try Repo.dataDirectory()
        let out = try Repo.temporaryDirectory("run")
        let r = try tessera(tinyArgs(data: data, out: out, steps: 5))
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stderr, "", "no MPI (or other) warnings without mpirun")
        XCTAssertTrue(r.stdout.contains("1 rank(s)"))
        XCTAssertTrue(r.stdout.contains("model written to"))
        for f in ["config.json", "metrics.jsonl", "model.bin"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/" + f), f)
        }
        let m = try metrics(out)
        XCTAssertEqual(m.count, 5)
        for key in ["step", "loss", "lr", "grad_norm", "tokens_per_s", "ms_per_step"] { XCTAssertNotNil(m[0][key], key) }
        XCTAssertNotNil(m[4]["val_loss"], "the last step is evaluated")
        let vocab = try shardTokens(data, "train").vocab
        XCTAssertEqual(m[0]["loss"] as! Double, log(Double(vocab)), accuracy: 0.15, "starts near ln(vocab)")
    }

    /// A short run of the nanoGPT CPU recipe must already use context: its validation loss
    /// falls clearly below the unigram entropy of the text (the best any model without
    /// context can do).
    func testShortRecipeLearns() throws {
        let data = try Repo.dataDirectory()
        let out = try Repo.temporaryDirectory("run")
        let args = ["train", "--data", data, "--out", out, "--n-layer", "4", "--n-head", "4", "--n-embd", "128",
                    "--block-size", "64", "--batch-size", "12", "--max-steps", "250", "--lr", "1e-3", "--min-lr", "1e-4",
                    "--warmup-steps", "100", "--beta2", "0.99", "--weight-decay", "0.1", "--grad-clip", "1.0",
                    "--no-bias", "--eval-every", "0", "--eval-steps", "10", "--log-every", "1000"]
        let r = try tessera(args)
        XCTAssertEqual(r.status, 0, r.stderr)
        let val = try metrics(out).last!["val_loss"] as! Double
        let unigram = unigramEntropy(try shardTokens(data, "val").tokens)
        XCTAssertLessThan(val, unigram - 0.25, "val loss after 250 steps vs the unigram entropy \(unigram)")
    }

    func testConfigFileAndFlagsOverride() throws {
        let data = try Repo.dataDirectory()
        let out = try Repo.temporaryDirectory("run")
        let cfg = out + "/in.json"
        try #"{"nLayer":1,"nHead":2,"nEmbd":32,"blockSize":16,"batchSize":4,"maxSteps":3,"evalEvery":0,"evalSteps":1}"#
            .write(toFile: cfg, atomically: true, encoding: .utf8)
        let r = try tessera(["train", "--config", cfg, "--data", data, "--out", out, "--max-steps", "2"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let written = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/config.json"))) as! [String: Any]
        XCTAssertEqual(written["nEmbd"] as? Int, 32)
        XCTAssertEqual(written["maxSteps"] as? Int, 2, "flags override the file")
        try #"{"nLayers":2}"#.write(toFile: cfg, atomically: true, encoding: .utf8)
        try assertFails(["train", "--config", cfg, "--data", data, "--out", out], status: 2, mentions: ["unknown key 'nLayers'"])
    }

    // MARK: Bad input: one clear line, non-zero exit

    func assertFails(_ args: [String], status: Int32, mentions: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try tessera(args)
        XCTAssertEqual(r.status, status, "stderr: \(r.stderr)", file: file, line: line)
        for m in mentions { XCTAssertTrue(r.stderr.contains(m), "expected '\(m)' in: \(r.stderr)", file: file, line: line) }
    }

    func testBadInputGetsClearErrors() throws {
        let data = try Repo.dataDirectory()
        let out = try Repo.temporaryDirectory("run")
        try assertFails(["train", "--data", "/nonexistent/dir", "--out", out], status: 2, mentions: ["error:", "tessera prepare"])
        try assertFails(["train", "--data", data, "--out", out, "--n-embd", "130", "--n-head", "4"], status: 2,
                        mentions: ["--n-embd", "not divisible by n_head"])
        try assertFails(["train", "--data", data, "--out", out, "--zero", "7"], status: 64, mentions: ["--zero", "0", "3"])
        try assertFails(["train", "--data", data, "--out", out, "--bucket-mb", "0"], status: 2, mentions: ["--bucket-mb"])
        try assertFails(["train", "--data", data, "--out", out, "--lr=-1"], status: 2, mentions: ["--lr"])
        try assertFails(["train", "--data", data, "--bogus-flag"], status: 64, mentions: ["bogus-flag"])
        try assertFails(["train", "--data", data, "--n-layer", "two"], status: 64, mentions: ["n-layer"])
        try assertFails(["prepare", "--input", "/nonexistent.txt", "--out", out], status: 2, mentions: ["--input"])
        try assertFails(["prepare", "--input", (try Repo.corpus).path, "--out", out, "--tokenizer", "wordpiece"], status: 64,
                        mentions: ["tokenizer"])
        // Six characters: enough tokens, but 10% leaves the validation split one; the error says so.
        let six = try Repo.temporaryDirectory("six") + "/six.txt"
        try Data("abcdef".utf8).write(to: URL(fileURLWithPath: six))
        try assertFails(["prepare", "--input", six, "--out", out + "/six"], status: 2,
                        mentions: ["the train split 5 and the validation split 1 of its 6 tokens", "--val-fraction"])
        XCTAssertEqual(try tessera(["prepare", "--input", six, "--out", out + "/six", "--val-fraction", "0.4"]).status, 0)
    }

    /// Bad data, each refused with a one-line error naming the file and the fix, exit 2.
    func testMalformedDataIsRefused() throws {
        let out = try Repo.temporaryDirectory("run")
        func refused(_ files: [String: Data], extra: [String] = [], _ words: [String]) throws {
            let dir = try Repo.temporaryDirectory("bad")
            for (name, data) in files { try data.write(to: URL(fileURLWithPath: dir + "/" + name)) }
            try assertFails(["train", "--data", dir, "--out", out, "--block-size", "8"] + extra, status: 2, mentions: words)
            let r = try tessera(["train", "--data", dir, "--out", out, "--block-size", "8"] + extra)
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "one line: \(r.stderr)")
        }
        let good = (0..<200).map { UInt16($0 % 10) }
        // An id at or above the vocabulary the header declares (found when a window reads it)
        // and one above --vocab-size for shards that declare none (found at start).
        try refused(["train_000000.bin": llmcShard(good, vocab: 4), "val_000000.bin": llmcShard(good, vocab: 4)],
                    ["outside the vocabulary of 4"])
        try refused(["x_train_1.bin": llmcShard(good), "x_val_1.bin": llmcShard(good)], extra: ["--vocab-size", "9"],
                    ["x_train_1.bin", "id 9", "--vocab-size"])
        let truncated = llmcShard(good, vocab: 10)
        try refused(["train_000000.bin": truncated, "val_000000.bin": truncated.prefix(truncated.count - 3)],
                    ["val_000000.bin", "truncated"])
        try refused(["train_000000.bin": llmcShard(good, magic: 12345), "val_000000.bin": llmcShard(good)],
                    ["train_000000.bin", "magic 12345"])
        try refused(["train_000000.bin": llmcShard(good, version: 3), "val_000000.bin": llmcShard(good)],
                    ["train_000000.bin", "version 3"])
        try refused(["train_000000.bin": llmcShard(good, vocab: 10), "val_000000.bin": llmcShard(good, vocab: 11)],
                    ["val_000000.bin", "vocabulary 11", "one tokenizer"])
        try refused([:], ["empty", "tessera prepare"])
    }

    /// `prepare`'s bad input: a .jsonl line that is not JSON (its line number named), GPT-2
    /// files missing; exit 2, and a previous dataset in --out is left as it was.
    func testBadPrepareInputLeavesThePreviousDataset() throws {
        let dir = try Repo.temporaryDirectory("prep"), data = dir + "/data"
        XCTAssertEqual(try tessera(["prepare", "--input", (try Repo.corpus).path, "--out", data]).status, 0)
        let before = try FileManager.default.contentsOfDirectory(atPath: data).sorted()
        let shard = try Data(contentsOf: URL(fileURLWithPath: data + "/train_000000.bin"))
        try "{\"text\": \"one\"}\n{\"text\": \"two\"}\n{\"text\": three}\n".write(toFile: dir + "/c.jsonl", atomically: true, encoding: .utf8)
        try assertFails(["prepare", "--input", dir + "/c.jsonl", "--out", data, "--tokenizer", "byte"], status: 2,
                        mentions: ["c.jsonl:3", "line 3 is not a JSON object"])
        try assertFails(["prepare", "--input", dir + "/c.jsonl", "--out", data, "--tokenizer", "gpt2",
                         "--vocab", dir + "/none.json", "--merges", dir + "/none.bpe"], status: 2, mentions: ["none.json", "--vocab"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: data).sorted(), before)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: data + "/train_000000.bin")), shard)
    }

    func testGenerateFromTrainedModel() throws {
        let data = try Repo.dataDirectory()
        let out = try Repo.temporaryDirectory("run")
        XCTAssertEqual(try tessera(tinyArgs(data: data, out: out, steps: 3)).status, 0)
        let g1 = try tessera(["generate", "--model", out + "/model.bin", "--prompt", "KING", "--max-new-tokens", "40", "--seed", "5"])
        XCTAssertEqual(g1.status, 0, g1.stderr)
        XCTAssertTrue(g1.stdout.hasPrefix("KING"))
        XCTAssertEqual(g1.stdout.count, "KING".count + 40 + 1, "prompt, 40 characters, newline")
        let g2 = try tessera(["generate", "--model", out + "/model.bin", "--prompt", "KING", "--max-new-tokens", "40", "--seed", "5"])
        XCTAssertEqual(g1.stdout, g2.stdout, "same seed, same sample")
        // Several samples: sample k is the one --seed (seed + k) draws alone; a prompt from a file.
        try Data("KING".utf8).write(to: URL(fileURLWithPath: out + "/prompt.txt"))
        let three = try tessera(["generate", "--model", out + "/model.bin", "--prompt-file", out + "/prompt.txt",
                                 "--max-new-tokens", "40", "--seed", "4", "--num-samples", "3"])
        XCTAssertEqual(three.status, 0, three.stderr)
        let samples = three.stdout.components(separatedBy: "---------------\n")
        XCTAssertEqual(samples.count, 4, "three samples, each followed by the separator")
        XCTAssertEqual(samples[1], g1.stdout, "the second sample is seed 5's")
        XCTAssertNotEqual(samples[0], samples[1])
        XCTAssertEqual(try tessera(["generate", "--model", out + "/model.bin", "--prompt", "A", "--prompt-file", out + "/prompt.txt"]).status, 64)
        let noEOT = try tessera(["generate", "--model", out + "/model.bin", "--stop-at-eot"])
        XCTAssertEqual(noEOT.status, 2)
        XCTAssertTrue(noEOT.stderr.contains("--stop-at-eot needs a vocabulary with <|endoftext|>"), noEOT.stderr)
        let bad = try tessera(["generate", "--model", out + "/missing.bin"])
        XCTAssertEqual(bad.status, 2)
        // model.bin ends with a CRC-32 of everything before it: a changed weight is refused.
        var file = try Data(contentsOf: URL(fileURLWithPath: out + "/model.bin"))
        XCTAssertEqual(Array(file.suffix(16).prefix(8)), Array("TSRACRC".utf8) + [0])
        file[file.count - 100] ^= 0x01
        try file.write(to: URL(fileURLWithPath: out + "/flipped.bin"))
        let flipped = try tessera(["generate", "--model", out + "/flipped.bin", "--prompt", "KING"])
        XCTAssertEqual(flipped.status, 2)
        XCTAssertTrue(flipped.stderr.contains("checksum") && flipped.stderr.contains("flipped.bin"), flipped.stderr)
    }
}

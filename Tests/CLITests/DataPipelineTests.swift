import Foundation
import XCTest

/// Data formats, sampling and memory through the binary: llm.c's and nanoGPT's files, sequential
/// sampling resumed across shard boundaries and world sizes, and resident memory that does not
/// grow with the dataset.
final class DataPipelineTests: XCTestCase {
    let small = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
                 "--eval-steps", "1", "--eval-every", "0", "--log-every", "1000", "--no-bias"]

    /// nanoGPT's headerless train.bin/val.bin holding a prepared dataset's tokens train exactly
    /// as the prepared directory does; llm.c's shards (written by llm.c's writer) train too.
    func testNanoGPTAndLlmcFilesTrain() throws {
        let data = try Repo.dataDirectory()
        let nano = try Repo.temporaryDirectory("nano")
        let (train, vocab) = try shardTokens(data, "train"), val = try shardTokens(data, "val").tokens
        try train.withUnsafeBytes { try Data($0).write(to: URL(fileURLWithPath: nano + "/train.bin")) }
        try val.withUnsafeBytes { try Data($0).write(to: URL(fileURLWithPath: nano + "/val.bin")) }
        let a = try Repo.temporaryDirectory("prepared"), b = try Repo.temporaryDirectory("nanorun")
        XCTAssertEqual(try tessera(["train", "--data", data, "--out", a, "--max-steps", "4"] + small).status, 0)
        let refused = try tessera(["train", "--data", nano, "--out", b, "--max-steps", "4"] + small)
        XCTAssertEqual(refused.status, 2)
        XCTAssertTrue(refused.stderr.contains("--vocab-size"), refused.stderr)
        let r = try tessera(["train", "--data", nano, "--out", b, "--max-steps", "4", "--vocab-size", "\(vocab)"] + small)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try losses(b), try losses(a), "same tokens, same vocabulary: the same run")

        let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../CorpusTests/Fixtures/llmc").standardized.path
        let c = try Repo.temporaryDirectory("llmcrun")
        let l = try tessera(["train", "--data", fixture + "/*_train.bin", "--vocab-size", "50257", "--out", c,
                             "--max-steps", "2"] + small)
        XCTAssertEqual(l.status, 0, l.stderr)
        XCTAssertEqual(try losses(c).count, 2)
        XCTAssertEqual(try losses(c)[0], log(50257), accuracy: 0.5, "a fresh model over GPT-2's vocabulary")
    }

    /// Sequential sampling over many small shards: stopped and resumed on one rank, the same
    /// losses bit for bit; resumed on two ranks, the same data (losses equal to fp32 rounding).
    func testSequentialSamplingResumesAcrossShardsAndWorldSizes() throws {
        let dir = try Repo.temporaryDirectory("seqdata"), data = dir + "/d"
        // 1,000-token shards, 256 tokens a step: a shard boundary every four steps.
        XCTAssertEqual(try tessera(["prepare", "--input", (try Repo.corpus).path, "--out", data, "--shard-tokens", "1000"]).status, 0)
        let args = ["--data", data, "--sampling", "sequential", "--save-every", "5"] + small
        let full = try Repo.temporaryDirectory("seqfull"), part = try Repo.temporaryDirectory("seqpart")
        XCTAssertEqual(try tessera(["train", "--out", full, "--max-steps", "12"] + args).status, 0)
        XCTAssertEqual(try tessera(["train", "--out", part, "--max-steps", "5"] + args).status, 0)
        let r = try tessera(["train", "--out", part, "--resume", "latest", "--max-steps", "12"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try losses(part), try losses(full))
        XCTAssertEqual(try modelParameters(part), try modelParameters(full))
        let two = try Repo.temporaryDirectory("seqtwo")
        let m = try mpirun(2, ["train", "--out", two, "--resume", full + "/checkpoints/step-00000005", "--max-steps", "12"])
        XCTAssertEqual(m.status, 0, m.stderr)
        let a = try losses(full).suffix(7), b = try losses(two).suffix(7)
        XCTAssertEqual(b.count, 7)
        for (x, y) in zip(a, b) { XCTAssertEqual(x, y, accuracy: 1e-4) }
        // Random windows would differ: the check above can tell the two orders apart.
        let rnd = try Repo.temporaryDirectory("seqrandom")
        XCTAssertEqual(try tessera(["train", "--out", rnd, "--max-steps", "12", "--data", data] + small).status, 0)
        XCTAssertNotEqual(try losses(rnd), try losses(full))
    }

    /// A 2 GiB dataset (1.07 billion tokens in eight llm.c shards that declare no vocabulary,
    /// so every token is also scanned at start): 20 steps on 2 ranks hold no more memory than
    /// on a 10 MB dataset.
    func testResidentMemoryDoesNotGrowWithTheDataset() throws {
        func dataset(_ name: String, shards: Int, tokens: Int) throws -> String {
            let dir = try Repo.temporaryDirectory(name)
            var state: UInt64 = 0x9E37_79B9_7F4A_7C15
            for (split, count) in [("train", shards), ("val", 1)] {
                for s in 0..<count {
                    let url = URL(fileURLWithPath: dir + String(format: "/big_%@_%06d.bin", split, s))
                    _ = FileManager.default.createFile(atPath: url.path, contents: nil)
                    let h = try FileHandle(forWritingTo: url)
                    try h.write(contentsOf: llmcShard([]).prefix(1024).withHeaderCount(tokens))
                    var chunk = [UInt64](repeating: 0, count: 1 << 20)   // 4M tokens per write
                    var left = tokens
                    while left > 0 {
                        let n = min(left, 4 * chunk.count)
                        for i in 0..<((n + 3) / 4) {   // xorshift; tokens are its bytes (ids < 256)
                            state ^= state << 13; state ^= state >> 7; state ^= state << 17
                            chunk[i] = state & 0x00FF_00FF_00FF_00FF
                        }
                        try chunk.withUnsafeBytes { try h.write(contentsOf: Data($0.prefix(2 * n))) }
                        left -= n
                    }
                    try h.close()
                }
            }
            return dir
        }
        let big = try dataset("bigdata", shards: 8, tokens: 134_217_728)
        defer { try? FileManager.default.removeItem(atPath: big) }
        let tiny = try dataset("tinydata", shards: 1, tokens: 5_000_000)
        var peaks: [Int] = []
        for data in [tiny, big] {
            let out = try Repo.temporaryDirectory("rss")
            let r = try mpirun(2, ["train", "--data", data, "--vocab-size", "256", "--out", out, "--max-steps", "20",
                                   "--n-layer", "2", "--n-head", "2", "--n-embd", "64", "--block-size", "128", "--batch-size", "8",
                                   "--eval-steps", "2", "--eval-every", "10", "--log-every", "1000", "--sampling", "random"])
            XCTAssertEqual(r.status, 0, r.stderr)
            peaks.append(try XCTUnwrap(try memoryFile(out)["measured_peak_rss"] as? Int))
        }
        print("peak RSS (highest rank): 10 MB dataset \(peaks[0] >> 20) MiB, 2 GiB dataset \(peaks[1] >> 20) MiB")
        XCTAssertLessThan(abs(peaks[1] - peaks[0]), 100 << 20)
    }
}

private extension Data {
    /// An llm.c header with its token count set.
    func withHeaderCount(_ n: Int) -> Data {
        var d = self
        Swift.withUnsafeBytes(of: Int32(n).littleEndian) { d.replaceSubrange(8..<12, with: $0) }
        return d
    }
}

import Corpus
import Foundation
import XCTest

final class DataTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-data-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

    func tokens(_ split: TokenSplit) -> [UInt32] { split.shards.flatMap { s in (0..<s.count).map { s[$0] } } }

    // MARK: Tokenizers

    func testCharTokenizerIsSortedAndRoundTrips() throws {
        let t = Tokenizer.char(corpus: "hello world\n")
        XCTAssertEqual(t.symbols, ["\n", " ", "d", "e", "h", "l", "o", "r", "w"])
        let ids = try t.encode("hello")
        XCTAssertEqual(ids, [4, 3, 5, 5, 6])
        XCTAssertEqual(t.decode(ids.map(Int.init)), "hello")
        XCTAssertThrowsError(try t.encode("z"))
    }

    /// A learned BPE: deterministic, the most frequent pair merged first, every text
    /// round-trips, and its JSON form rebuilds the same encoder.
    func testBPETrainerLearnsFrequentPairsDeterministically() throws {
        let corpus = String(repeating: "low lower lowest newer newest wider ", count: 50) + "ünïcode 😀 123"
        func learn() -> BytePairEncoder {
            var t = BPETrainer(vocabSize: 280)
            t.count([Array(corpus.utf8)], threads: 2)
            return t.train()
        }
        let a = learn(), b = learn()
        XCTAssertEqual(a.vocabSize, 280)
        XCTAssertEqual(a.endOfText, 279)
        XCTAssertEqual(a.merges.map { [$0.0, $0.1] }, b.merges.map { [$0.0, $0.1] })
        // "we" occurs 200 times (lower, lowest, newer, newest), more than any other pair.
        let first = a.merges[0]
        XCTAssertEqual(String(decoding: a.tokens[first.0] + a.tokens[first.1], as: UTF8.self), "we")
        for text in [corpus, "unseen words ✓ and \t tabs", ""] { XCTAssertEqual(a.decode(a.encode(text)), text) }
        XCTAssertLessThan(a.encode(corpus).count, corpus.utf8.count / 3)
        let tok = Tokenizer(kind: .bpe, bpe: a)
        let back = try JSONDecoder().decode(Tokenizer.self, from: JSONEncoder().encode(tok))
        XCTAssertEqual(back, tok)
        XCTAssertEqual(back.bpe!.encode(corpus), a.encode(corpus))
    }

    // MARK: Shards

    /// llm.c's layout byte for byte: 256 int32 (magic, version, count, vocabulary), uint16 tokens.
    func testShardIsLlmcFormat() throws {
        try TokenShard.write([1, 2, 65_535, 0], vocabSize: 65_536, to: dir.appendingPathComponent("a.bin"))
        let bytes = try Data(contentsOf: dir.appendingPathComponent("a.bin"))
        XCTAssertEqual(bytes.count, 1024 + 8)
        let ints = bytes.withUnsafeBytes { raw in (0..<5).map { raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self) } }
        XCTAssertEqual(ints, [20_240_520, 1, 4, 65_536, 0])
        XCTAssertEqual(Array(bytes.suffix(8)), [1, 0, 2, 0, 0xFF, 0xFF, 0, 0])
        let s = try TokenShard.open(path("a.bin"))
        XCTAssertEqual((0..<4).map { s[$0] }, [1, 2, 65_535, 0])
        XCTAssertEqual(s.declaredVocab, 65_536)
        // Above 65,536 ids: version 2, uint32 tokens.
        try TokenShard.write([70_000, 3], vocabSize: 100_000, to: dir.appendingPathComponent("w.bin"))
        let w = try TokenShard.open(path("w.bin"))
        XCTAssertEqual(w.width, 4)
        XCTAssertEqual([w[0], w[1]], [70_000, 3])
        XCTAssertEqual(try Data(contentsOf: dir.appendingPathComponent("w.bin")).count, 1024 + 8)
    }

    func testTruncatedAndForeignShardsAreRejectedWithTheProblem() throws {
        try TokenShard.write([1, 2, 3], vocabSize: 4, to: dir.appendingPathComponent("ok.bin"))
        let good = try Data(contentsOf: dir.appendingPathComponent("ok.bin"))
        func refused(_ data: Data, _ words: [String]) throws {
            try data.write(to: dir.appendingPathComponent("bad.bin"))
            XCTAssertThrowsError(try TokenShard.open(path("bad.bin"))) { e in
                for w in words { XCTAssertTrue("\(e)".contains(w), "\(e) lacks \(w)") }
                XCTAssertTrue("\(e)".contains("bad.bin"))
            }
        }
        try refused(good.prefix(good.count - 1), ["truncated"])
        try refused(good.prefix(10), ["header"])
        var magic = good; magic[0] = 0x41
        try refused(magic, ["magic", "--vocab-size"])
        var version = good; version[4] = 9
        try refused(version, ["version 9"])
    }

    // MARK: Prepare

    func testPrepareOneDocumentSplitsNinetyTen() throws {
        try String(repeating: "abcdefghij", count: 100).write(to: dir.appendingPathComponent("in.txt"), atomically: true, encoding: .utf8)
        var o = PrepareOptions(inputs: [path("in.txt")], output: path("d"))
        o.shardTokens = 333
        let s = try Prepare.run(o)
        XCTAssertEqual(s.trainTokens, 900)
        XCTAssertEqual(s.valTokens, 100)
        XCTAssertEqual(s.shards, 4, "900 train tokens in shards of 333, and one val shard")
        let d = try Dataset.open(path("d"))
        XCTAssertEqual(d.vocabSize, 10)
        XCTAssertEqual(d.train.shards.map(\.count), [333, 333, 234])
        XCTAssertEqual(tokens(d.train), (0..<900).map { UInt32($0 % 10) })
        XCTAssertEqual(tokens(d.val), (0..<100).map { UInt32($0 % 10) })
    }

    /// JSON Lines: a document per line, each opened by <|endoftext|>; every 4th document
    /// (val fraction 0.25) held out whole; pieces encoded on several threads in order.
    func testPrepareJSONLinesHoldsOutWholeDocuments() throws {
        let docs = (0..<12).map { "document number \($0) says \(String(repeating: "x", count: $0))" }
        let lines = docs.map { "{\"text\": \(String(data: try! JSONSerialization.data(withJSONObject: $0, options: .fragmentsAllowed), encoding: .utf8)!), \"id\": 1}" }
        try (lines.joined(separator: "\n") + "\n\n").write(to: dir.appendingPathComponent("c.jsonl"), atomically: true, encoding: .utf8)
        var o = PrepareOptions(inputs: [path("c.jsonl")], output: path("j"))
        o.kind = .bpe; o.vocabSize = 300; o.valFraction = 0.25; o.threads = 3
        let s = try Prepare.run(o)
        XCTAssertEqual(s.documents, 12)
        let d = try Dataset.open(path("j"))
        let bpe = d.tokenizer!.bpe!, eot = UInt32(bpe.endOfText!)
        func expected(_ keep: (Int) -> Bool) -> [UInt32] {
            docs.indices.filter(keep).flatMap { [eot] + bpe.encode(docs[$0]).map(UInt32.init) }
        }
        XCTAssertEqual(tokens(d.train), expected { $0 % 4 != 3 })
        XCTAssertEqual(tokens(d.val), expected { $0 % 4 == 3 })
        XCTAssertTrue(FileManager.default.fileExists(atPath: path("j/vocab.json")))
        XCTAssertTrue(FileManager.default.fileExists(atPath: path("j/merges.txt")))
    }

    /// Bad input names the problem and leaves a previous dataset untouched.
    func testBadJSONLineIsNamedAndNothingIsWritten() throws {
        try String(repeating: "abcdefghij", count: 100).write(to: dir.appendingPathComponent("in.txt"), atomically: true, encoding: .utf8)
        _ = try Prepare.run(PrepareOptions(inputs: [path("in.txt")], output: path("d")))
        let before = try FileManager.default.contentsOfDirectory(atPath: path("d")).sorted()
        let shard = try Data(contentsOf: dir.appendingPathComponent("d/train_000000.bin"))
        try "{\"text\": \"fine\"}\n{\"text\": \"also fine\"}\nnot json\n".write(to: dir.appendingPathComponent("b.jsonl"), atomically: true, encoding: .utf8)
        var o = PrepareOptions(inputs: [path("b.jsonl")], output: path("d"))
        o.kind = .byte
        XCTAssertThrowsError(try Prepare.run(o)) { e in XCTAssertTrue("\(e)".contains("line 3"), "\(e)") }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: path("d")).sorted(), before)
        XCTAssertEqual(try Data(contentsOf: dir.appendingPathComponent("d/train_000000.bin")), shard)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.contains("prepare") }, [],
                       "no staging directory left behind")
    }

    // MARK: Opening datasets

    func testDatasetsOfEveryFormatOpenAndBadOnesAreRefused() throws {
        // llm.c shards (no tokenizer.json, no declared vocabulary): --vocab-size required.
        let l = dir.appendingPathComponent("llmc")
        try FileManager.default.createDirectory(at: l, withIntermediateDirectories: true)
        for (i, name) in ["fw_train_000001.bin", "fw_train_000002.bin", "fw_val_000000.bin"].enumerated() {
            try TokenShard.write((0..<50).map { UInt32(($0 + i) % 7) }, vocabSize: 0, to: l.appendingPathComponent(name))
        }
        XCTAssertThrowsError(try Dataset.open(l.path)) { e in XCTAssertTrue("\(e)".contains("--vocab-size"), "\(e)") }
        let d = try Dataset.open(l.path, vocabSize: 7)
        XCTAssertEqual(d.train.shards.count, 2)
        XCTAssertNil(d.tokenizer)
        XCTAssertThrowsError(try Dataset.open(l.path, vocabSize: 6)) { e in XCTAssertTrue("\(e)".contains("id 6"), "\(e)") }
        XCTAssertEqual(try Dataset.open(l.path + "/fw_train_*.bin", vocabSize: 7).train.shards.count, 2)
        // nanoGPT: headerless uint16 train.bin/val.bin.
        let n = dir.appendingPathComponent("nano")
        try FileManager.default.createDirectory(at: n, withIntermediateDirectories: true)
        let raw = Data((0..<100).flatMap { [UInt8($0 % 9), 0] })
        try raw.write(to: n.appendingPathComponent("train.bin")); try raw.write(to: n.appendingPathComponent("val.bin"))
        XCTAssertThrowsError(try Dataset.open(n.path)) { e in XCTAssertTrue("\(e)".contains("--vocab-size"), "\(e)") }
        XCTAssertEqual(tokens(try Dataset.open(n.path, vocabSize: 9).train), (0..<100).map { UInt32($0 % 9) })
        // Shards written with different vocabularies.
        let m = dir.appendingPathComponent("mixed")
        try FileManager.default.createDirectory(at: m, withIntermediateDirectories: true)
        try TokenShard.write([1, 2, 3], vocabSize: 10, to: m.appendingPathComponent("train_000000.bin"))
        try TokenShard.write([1, 2, 3], vocabSize: 12, to: m.appendingPathComponent("val_000000.bin"))
        XCTAssertThrowsError(try Dataset.open(m.path)) { e in XCTAssertTrue("\(e)".contains("vocabulary 12"), "\(e)") }
        // Empty directory, missing directory.
        let e = dir.appendingPathComponent("empty")
        try FileManager.default.createDirectory(at: e, withIntermediateDirectories: true)
        XCTAssertThrowsError(try Dataset.open(e.path)) { e in XCTAssertTrue("\(e)".contains("empty"), "\(e)") }
        XCTAssertThrowsError(try Dataset.open(path("nope"))) { e in XCTAssertTrue("\(e)".contains("tessera prepare"), "\(e)") }
    }

    // MARK: Sampling

    func twoShards() throws -> TokenSplit {
        TokenSplit([TokenShard(tokens: (0..<100).map { UInt16($0) }, vocabSize: 300),
                    TokenShard(tokens: (100..<237).map { UInt16($0) }, vocabSize: 300)])
    }

    /// Row i of batch k is the same window whichever rank draws it, in both modes.
    func testSamplersAreIndependentOfWorldSize() throws {
        let split = try twoShards()
        for mode in Sampling.allCases {
            let s = BatchSampler(seed: 42, blockSize: 8, batchSize: 12, mode: mode)
            let all = UnsafeMutablePointer<Int32>.allocate(capacity: 12 * 8), ally = UnsafeMutablePointer<Int32>.allocate(capacity: 12 * 8)
            let part = UnsafeMutablePointer<Int32>.allocate(capacity: 4 * 8), party = UnsafeMutablePointer<Int32>.allocate(capacity: 4 * 8)
            defer { all.deallocate(); ally.deallocate(); part.deallocate(); party.deallocate() }
            try s.fill(x: all, y: ally, split: split, which: .train, batch: 5, indices: 0..<12, vocabSize: 300)
            try s.fill(x: part, y: party, split: split, which: .train, batch: 5, indices: Array(stride(from: 1, to: 12, by: 3)), vocabSize: 300)
            for (row, i) in stride(from: 1, to: 12, by: 3).enumerated() {
                for t in 0..<8 {
                    XCTAssertEqual(part[row * 8 + t], all[i * 8 + t])
                    XCTAssertEqual(party[row * 8 + t], ally[i * 8 + t])
                    XCTAssertEqual(ally[i * 8 + t], all[i * 8 + t] + 1, "\(mode): targets are the next tokens, within one shard")
                }
            }
        }
    }

    /// Sequential: consecutive non-overlapping windows, shard after shard, then again.
    func testSequentialSamplingWalksTheShardsInOrder() throws {
        let split = try twoShards()
        let s = BatchSampler(seed: 1, blockSize: 10, batchSize: 4, mode: .sequential)
        // 99/10 = 9 windows in the first shard, 136/10 = 13 in the second: 22 in all.
        XCTAssertEqual(s.windows(in: split), 22)
        let starts = (0..<6).flatMap { b in (0..<4).map { i -> UInt32 in
            let (shard, o) = s.window(in: split, which: .train, batch: b, index: i); return shard[o] } }
        XCTAssertEqual(Array(starts.prefix(11)), [0, 10, 20, 30, 40, 50, 60, 70, 80, 100, 110])
        XCTAssertEqual(Array(starts[22...23]), [0, 10], "epoch 2 starts over")
        XCTAssertEqual(s.epoch(batch: 11, split: split), 2.0)
        let r = BatchSampler(seed: 1, blockSize: 10, batchSize: 4, mode: .random)
        XCTAssertEqual(r.windows(in: split), 90 + 127)
    }

    func testIdOutsideTheVocabularyIsRefusedWhenRead() throws {
        let split = TokenSplit([TokenShard(tokens: [1, 2, 3, 9, 4, 5], vocabSize: 0, path: "odd.bin")])
        let s = BatchSampler(seed: 1, blockSize: 5, batchSize: 1, mode: .sequential)
        let x = UnsafeMutablePointer<Int32>.allocate(capacity: 5), y = UnsafeMutablePointer<Int32>.allocate(capacity: 5)
        defer { x.deallocate(); y.deallocate() }
        XCTAssertThrowsError(try s.fill(x: x, y: y, split: split, which: .train, batch: 0, indices: [0], vocabSize: 8)) { e in
            XCTAssertTrue("\(e)".contains("odd.bin") && "\(e)".contains("id 9"), "\(e)")
        }
    }
}

/// How the two conventions of `ChoiceRules` turn a question into tokens, where a word runs
/// across the context's end and BPE merges it: llm.c encodes the continuation alone;
/// lm-evaluation-harness encodes context + continuation and keeps what follows the context's
/// own token count (its `_encode_pair`), moving trailing spaces to the continuation.
final class ChoiceTaskTests: XCTestCase {
    func testContinuationEncodingPerConvention() throws {
        var trainer = BPETrainer(vocabSize: 300)
        trainer.count([Array(String(repeating: "the cat sat on the mat ", count: 40).utf8)], threads: 1)
        let tok = Tokenizer(kind: .bpe, bpe: trainer.train())
        func ids(_ s: String) throws -> [Int32] { try tok.encodeWide(s).map { Int32($0) } }
        XCTAssertEqual(try ids("the cat sat").count, 3, "whole words are single tokens")
        XCTAssertGreaterThan(try ids("the cat sa").count + (try ids("t on")).count, (try ids("the cat sat on")).count,
                             "the split word merges when encoded whole")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("choicetask-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("q.jsonl").path
        try #"{"context": "the ca", "choices": ["t sat on", "t sat the mat"], "label": 0}"# .write(toFile: file, atomically: true, encoding: .utf8)
        let llmc = try ChoiceTask.load(file, tokenizer: tok, rules: .llmc)[0]
        XCTAssertEqual(llmc.context, try ids("the ca"))
        XCTAssertEqual(llmc.choices, [try ids("t sat on"), try ids("t sat the mat")])
        XCTAssertEqual(llmc.normalizers, [Double(try ids("t sat on").count), Double(try ids("t sat the mat").count)])
        let harness = try ChoiceTask.load(file, tokenizer: tok, rules: .harness)[0]
        let k = try ids("the ca").count
        XCTAssertEqual(harness.context, try ids("the ca"))
        XCTAssertEqual(harness.choices, [Array(try ids("the cat sat on").dropFirst(k)), Array(try ids("the cat sat the mat").dropFirst(k))])
        XCTAssertNotEqual(harness.choices, llmc.choices, "the merged word changes the continuation's tokens")
        XCTAssertEqual(harness.normalizers, [8, 13], "characters of the choices")
        // A context's trailing spaces travel with the continuation.
        try #"{"context": "the cat ", "choices": ["sat", "on"], "label": 0}"# .write(toFile: file, atomically: true, encoding: .utf8)
        let spaced = try ChoiceTask.load(file, tokenizer: tok, rules: .harness)[0]
        XCTAssertEqual(spaced.context, try ids("the cat"))
        XCTAssertEqual(spaced.choices[0], Array(try ids("the cat sat").dropFirst(try ids("the cat").count)))
    }

    /// lm-evaluation-harness's HellaSwag `preprocess` and Python's `capitalize`.
    func testHarnessTextCleaning() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("choicetask-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("q.jsonl").path
        let line = #"{"activity_label": "Knots", "ctx_a": "[header] How to tie [title] Hold", "ctx_b": "tHE rope.  [step] then", "#
            + #""ctx": "x", "endings": [" loop it [substeps] once. ", "cut [a\nb] it"], "label": 1}"#
        try line.write(toFile: file, atomically: true, encoding: .utf8)
        let q = try ChoiceTask.load(file, tokenizer: .byte, rules: .harness)[0]
        func text(_ ids: [Int32]) -> String { String(decoding: ids.map { UInt8($0) }, as: UTF8.self) }
        // What lm-evaluation-harness 0.4.13's preprocess gives (three spaces become two).
        XCTAssertEqual(text(q.context), "Knots: How to tie. Hold The rope.  then")
        XCTAssertEqual(q.choices.map(text), [" loop it once.", " cut [a\nb] it"], "no tag across a newline")
        XCTAssertEqual(q.normalizers, [13, 12])
    }
}

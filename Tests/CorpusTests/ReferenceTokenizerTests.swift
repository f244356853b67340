import Corpus
import Foundation
import XCTest

/// GPT-2's BPE against tiktoken's ids (fixture from `Fixtures/make_gpt2_fixture.py`). The
/// vocabulary files are GPT-2's, read from `../shared/data/gpt2`; without them these tests
/// skip and say why.
final class GPT2TokenizerTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
    static let shared = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../../shared/data").standardized

    struct Reference: Decodable {
        struct Summary: Decodable { let count: Int; let fnv1a64: String; let first: [Int] }
        let torture: [Int]; let hello: [Int]; let tinyshakespeare: Summary
    }

    func gpt2() throws -> BytePairEncoder {
        let dir = Self.shared.appendingPathComponent("gpt2")
        guard FileManager.default.fileExists(atPath: dir.appendingPathComponent("encoder.json").path) else {
            throw XCTSkip("GPT-2's encoder.json/vocab.bpe are not at \(dir.path) (../shared is beside CI's checkout only)")
        }
        return try BytePairEncoder.load(vocab: dir.appendingPathComponent("encoder.json").path,
                                        merges: dir.appendingPathComponent("vocab.bpe").path)
    }

    func reference() throws -> Reference {
        try JSONDecoder().decode(Reference.self, from: Data(contentsOf: Self.fixtures.appendingPathComponent("gpt2-reference.json")))
    }

    func testTortureFileMatchesTiktoken() throws {
        let enc = try gpt2(), ref = try reference()
        XCTAssertEqual(enc.vocabSize, 50257)
        XCTAssertEqual(enc.endOfText, 50256)
        XCTAssertEqual(enc.encode("Hello world"), ref.hello)
        let text = try String(contentsOf: Self.fixtures.appendingPathComponent("gpt2-torture.txt"), encoding: .utf8)
        let ids = enc.encode(text)
        XCTAssertEqual(ids.count, ref.torture.count)
        if let i = zip(ids, ref.torture).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
            XCTFail("first difference at id \(i): tessera \(ids[i..<min(ids.count, i + 8)]) tiktoken \(ref.torture[i..<min(ref.torture.count, i + 8)])")
        }
        XCTAssertEqual(enc.decode(ids), text, "decoding inverts encoding")
    }

    func testTinyShakespeareMatchesTiktoken() throws {
        let enc = try gpt2(), ref = try reference().tinyshakespeare
        let file = Self.shared.appendingPathComponent("tinyshakespeare.txt")
        guard let text = try? String(contentsOf: file, encoding: .utf8) else {
            throw XCTSkip("\(file.path) is absent (../shared is beside CI's checkout only)")
        }
        let ids = enc.encode(text)
        XCTAssertEqual(ids.count, ref.count)
        XCTAssertEqual(Array(ids.prefix(64)), ref.first)
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for id in ids { for k in 0..<4 { h = (h ^ UInt64((id >> (8 * k)) & 0xFF)) &* 0x100_0000_01b3 } }
        XCTAssertEqual(String(h), ref.fnv1a64)
    }

    /// Text cut at any place `PreTokenizer.safeCut` offers encodes to the same ids as the
    /// whole, which is what lets `prepare` encode one huge document on many threads.
    func testCutPiecesEncodeLikeTheWhole() throws {
        let enc = try gpt2()
        let text = try String(contentsOf: Self.fixtures.appendingPathComponent("gpt2-torture.txt"), encoding: .utf8)
            + "end?\n\nThird line\n \nx\n\tz"
        let bytes = Array(text.utf8), whole = enc.encode(text)
        var cuts = Set<Int>()
        for hi in 2..<bytes.count {
            if let k = bytes.withUnsafeBufferPointer({ PreTokenizer.safeCut($0, below: hi, above: 0) }) { cuts.insert(k) }
        }
        XCTAssertGreaterThan(cuts.count, 10)
        for k in cuts.sorted() {
            let parts = enc.encode(String(decoding: bytes[..<k], as: UTF8.self)) + enc.encode(String(decoding: bytes[k...], as: UTF8.self))
            XCTAssertEqual(parts, whole, "cut at byte \(k)")
        }
    }

    func testVocabAndMergesThatDisagreeAreRefused() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("bpe-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        var vocab: [String: Int] = [:]
        for (b, c) in ByteLevel.characters.enumerated() { vocab[String(c)] = b }
        vocab["ab"] = 256
        try JSONSerialization.data(withJSONObject: vocab).write(to: dir.appendingPathComponent("vocab.json"))
        try "#version: 0.2\na b\nab c\n".write(to: dir.appendingPathComponent("merges.txt"), atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try BytePairEncoder.load(vocab: dir.appendingPathComponent("vocab.json").path,
                                                      merges: dir.appendingPathComponent("merges.txt").path)) { e in
            XCTAssertTrue("\(e)".contains("line 3"), "\(e)")
            XCTAssertTrue("\(e)".contains("abc"), "\(e)")
        }
        try "#version: 0.2\na b\n".write(to: dir.appendingPathComponent("merges.txt"), atomically: true, encoding: .utf8)
        let enc = try BytePairEncoder.load(vocab: dir.appendingPathComponent("vocab.json").path,
                                           merges: dir.appendingPathComponent("merges.txt").path)
        XCTAssertEqual(enc.encode("abab c"), [256, 256, Int(vocab["Ġ"]!), 99])
    }
}

/// Shards written by llm.c's own Python writer (`Fixtures/llmc/make_llmc_fixture.py`).
final class LlmcShardTests: XCTestCase {
    func testShardsWrittenByLlmcAreRead() throws {
        let dir = GPT2TokenizerTests.fixtures.appendingPathComponent("llmc").path
        XCTAssertThrowsError(try Dataset.open(dir)) { e in XCTAssertTrue("\(e)".contains("--vocab-size 50257") || "\(e)".contains("50257"), "\(e)") }
        let d = try Dataset.open(dir, vocabSize: 50257)
        XCTAssertEqual(d.train.shards.map(\.path), [dir + "/tiny_train.bin"])
        XCTAssertEqual(d.val.shards.map(\.path), [dir + "/tiny_val.bin"])
        let train = d.train.shards[0], val = d.val.shards[0]
        XCTAssertEqual((0..<train.count).map { Int(train[$0]) }, (0..<1000).map { $0 * 7919 % 50257 })
        XCTAssertEqual((0..<val.count).map { Int(val[$0]) }, (1000..<1300).map { $0 * 7919 % 50257 })
        XCTAssertEqual(train.declaredVocab, 0, "llm.c leaves the vocabulary field 0")
        XCTAssertEqual(try Dataset.open(dir + "/*_train.bin", vocabSize: 50257).val.shards.count, 1, "a glob finds the val shards")
    }
}

/// A vocabulary tessera learns, as Hugging Face `tokenizers` encodes with it
/// (`Fixtures/check_bpe_with_hf.py --write-fixture`).
final class LearnedBPEReferenceTests: XCTestCase {
    func testLearnedVocabularyEncodesAsHuggingFaceDoes() throws {
        struct Reference: Decodable { let vocabSize: Int; let ids: [Int] }
        let fixtures = GPT2TokenizerTests.fixtures
        let ref = try JSONDecoder().decode(Reference.self, from: Data(contentsOf: fixtures.appendingPathComponent("bpe-hf-reference.json")))
        let text = try String(contentsOf: fixtures.appendingPathComponent("gpt2-torture.txt"), encoding: .utf8)
        var trainer = BPETrainer(vocabSize: ref.vocabSize)
        trainer.count([Array(text.utf8)], threads: 2)
        let enc = trainer.train()
        XCTAssertEqual(enc.encode(text), ref.ids)
    }
}

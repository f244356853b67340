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

    func testCharTokenizerIsSortedAndRoundTrips() throws {
        let t = Tokenizer.char(corpus: "hello world\n")
        XCTAssertEqual(t.symbols, ["\n", " ", "d", "e", "h", "l", "o", "r", "w"])
        let ids = try t.encode("hello")
        XCTAssertEqual(ids, [4, 3, 5, 5, 6])
        XCTAssertEqual(t.decode(ids.map(Int.init)), "hello")
        XCTAssertThrowsError(try t.encode("z"))
    }

    func testShardRoundTripAndHeader() throws {
        let shard = TokenShard(tokens: [1, 2, 65_535, 0], vocabSize: 65_536)
        let bytes = shard.encoded()
        XCTAssertEqual(bytes.count, 32 + 8)
        XCTAssertEqual(Array(bytes.prefix(8)), Array("TSRATOK".utf8) + [0])
        let back = try TokenShard.decode(bytes, path: "x")
        XCTAssertEqual(back.tokens, shard.tokens)
        XCTAssertEqual(back.vocabSize, 65_536)
    }

    func testTruncatedAndForeignShardsAreRejectedWithTheProblem() {
        let bytes = TokenShard(tokens: [1, 2, 3], vocabSize: 4).encoded()
        XCTAssertThrowsError(try TokenShard.decode(bytes.prefix(bytes.count - 1), path: "t.bin")) { e in
            XCTAssertTrue("\(e)".contains("truncated"), "\(e)")
            XCTAssertTrue("\(e)".contains("t.bin"))
        }
        var foreign = bytes
        foreign[0] = 0x41
        XCTAssertThrowsError(try TokenShard.decode(foreign, path: "f.bin")) { e in XCTAssertTrue("\(e)".contains("magic")) }
        XCTAssertThrowsError(try TokenShard.decode(bytes.prefix(10), path: "s.bin"))
    }

    func testPrepareSplitsNinetyTen() throws {
        let input = dir.appendingPathComponent("in.txt")
        try String(repeating: "abcdefghij", count: 100).write(to: input, atomically: true, encoding: .utf8)
        let out = dir.appendingPathComponent("d").path
        let s = try Prepare.run(input: input.path, output: out, kind: .char, valFraction: 0.1)
        XCTAssertEqual(s.trainTokens, 900)
        XCTAssertEqual(s.valTokens, 100)
        let d = try Dataset.load(directory: out)
        XCTAssertEqual(d.tokenizer.vocabSize, 10)
        XCTAssertEqual(d.train.tokens.prefix(3), [0, 1, 2])
    }

    func testMissingDirectoryNamesTheFix() {
        XCTAssertThrowsError(try Dataset.load(directory: dir.appendingPathComponent("nope").path)) { e in
            XCTAssertTrue("\(e)".contains("tessera prepare"), "\(e)")
        }
    }

    /// Sample i of batch k is the same window whichever rank draws it.
    func testSamplerIsIndependentOfWorldSize() {
        let shard = TokenShard(tokens: (0..<1000).map { UInt16($0 % 500) }, vocabSize: 500)
        let s = BatchSampler(seed: 42, blockSize: 8)
        let all = UnsafeMutablePointer<Int32>.allocate(capacity: 12 * 8), ally = UnsafeMutablePointer<Int32>.allocate(capacity: 12 * 8)
        let part = UnsafeMutablePointer<Int32>.allocate(capacity: 4 * 8), party = UnsafeMutablePointer<Int32>.allocate(capacity: 4 * 8)
        defer { all.deallocate(); ally.deallocate(); part.deallocate(); party.deallocate() }
        s.fill(x: all, y: ally, shard: shard, split: .train, batch: 5, indices: 0..<12)
        s.fill(x: part, y: party, shard: shard, split: .train, batch: 5, indices: Array(stride(from: 1, to: 12, by: 3)))
        for (row, i) in stride(from: 1, to: 12, by: 3).enumerated() {
            for t in 0..<8 {
                XCTAssertEqual(part[row * 8 + t], all[i * 8 + t])
                XCTAssertEqual(party[row * 8 + t], ally[i * 8 + t])
            }
            XCTAssertEqual(party[row * 8], part[row * 8 + 1], "targets are inputs shifted by one")
        }
        let starts = Set((0..<12).map { s.start(split: .train, batch: 5, index: $0, tokens: 1000) })
        XCTAssertGreaterThan(starts.count, 10, "windows are spread out")
    }
}

import Corpus
import XCTest

/// Mixtures: the blend gives each source its weight's share of every cycle, spread evenly,
/// as a pure function of the sample's number; the sampler draws each sample from its source.
final class BlendTests: XCTestCase {
    func testSharesAreExactPerCycleAndEvenWithinIt() throws {
        for weights in [[0.7, 0.3], [1, 1, 1], [5, 1, 0.25], [0.999, 0.001]] {
            let blend = try XCTUnwrap(Blend(weights: weights))
            let total = weights.reduce(0, +)
            XCTAssertEqual(blend.counts.reduce(0, +), Blend.cycle)
            var seen = [Int](repeating: 0, count: weights.count)
            for n in 0..<(3 * Blend.cycle + 17) {
                let (i, k) = blend.source(of: n)
                XCTAssertEqual(k, seen[i], "sample \(n) is source \(i)'s next")
                XCTAssertEqual(blend.samples(of: i, before: n), k)
                seen[i] += 1
                // Smooth weighted round-robin: every prefix within one sample of the exact share.
                for j in weights.indices {
                    let exact = Double(n + 1) * Double(blend.counts[j]) / Double(Blend.cycle)
                    XCTAssertLessThan(abs(Double(seen[j]) - exact), 1.0 + 1e-9, "\(weights): source \(j) after \(n + 1)")
                }
            }
            for j in weights.indices {
                XCTAssertEqual(Double(blend.counts[j]) / Double(Blend.cycle), weights[j] / total, accuracy: 1 / Double(Blend.cycle))
            }
        }
        XCTAssertEqual(try XCTUnwrap(Blend(weights: [1, 1, 1])).counts, [334, 333, 333], "largest remainders, ties to the first")
        XCTAssertNil(Blend(weights: [1, 1e-5]), "a share that rounds to no sample per cycle")
        XCTAssertNil(Blend(weights: [1, 0]))
        XCTAssertNil(Blend(weights: [1, -1]))
    }

    func testMixtureSpecs() throws {
        XCTAssertNil(try MixtureSpec.parse("data/web"))
        XCTAssertNil(try MixtureSpec.parse("shards/*_train_*.bin"))
        XCTAssertEqual(try MixtureSpec.parse("0.7:data/web,0.3:/abs/code"), MixtureSpec(weights: [0.7, 0.3], paths: ["data/web", "/abs/code"]))
        XCTAssertEqual(try MixtureSpec.parse("2:data/only"), MixtureSpec(weights: [2], paths: ["data/only"]))
        XCTAssertEqual(try MixtureSpec.parse("1:data/web,1:/x/code")?.names, ["web", "code"])
        XCTAssertEqual(try MixtureSpec.parse("1:a/web,1:b/web")?.names, ["a/web", "b/web"], "the same last component: whole paths")
        for bad in ["data/a,data/b", "0:data/a,1:data/b", "1:data/a,", "x:data/a,1:data/b", "1:,1:data/b", "-1:data/a,2:data/b",
                    "1:data/a,2:data/a"] {
            XCTAssertThrowsError(try MixtureSpec.parse(bad), bad) { e in XCTAssertTrue("\(e)".contains("WEIGHT:DATA"), "\(bad): \(e)") }
        }
    }

    /// Two sources with tokens 0..<200 and 1000..<1300: a quarter and three quarters of every
    /// cycle's samples; random windows uniform within the source; sequential ones each
    /// source's next in order, each source starting over at its own end.
    func testSamplerDrawsEachSampleFromItsSource() throws {
        let a = TokenSplit([TokenShard(tokens: (0..<200).map { UInt16($0) }, vocabSize: 2000)])
        let b = TokenSplit([TokenShard(tokens: (1000..<1150).map { UInt16($0) }, vocabSize: 2000),
                            TokenShard(tokens: (1150..<1300).map { UInt16($0) }, vocabSize: 2000)])
        let blend = try XCTUnwrap(Blend(weights: [1, 3]))
        let mix = TokenSplit(sources: [a, b], blend: blend)
        XCTAssertEqual(mix.shards.count, 3)
        let batch = 8
        let random = BatchSampler(seed: 3, blockSize: 10, batchSize: batch, mode: .random)
        var fromA = 0, startsA = Set<UInt32>()
        for step in 0..<500 {
            for i in 0..<batch {
                let (shard, start) = random.window(in: mix, which: .train, batch: step, index: i)
                let first = shard[start], n = step * batch + i
                XCTAssertEqual(first < 1000, blend.source(of: n).source == 0, "sample \(n)")
                if first < 1000 { fromA += 1; startsA.insert(first) }
                XCTAssertLessThanOrEqual(start + 10, shard.count - 1, "inside its shard")
            }
        }
        XCTAssertEqual(fromA, 1000, "a quarter of 4000 samples")
        XCTAssertGreaterThan(startsA.count, 180, "source A's 190 starts drawn about uniformly (1000 draws)")
        XCTAssertLessThan(startsA.max()!, 190)
        let sequential = BatchSampler(seed: 3, blockSize: 10, batchSize: batch, mode: .sequential)
        var nextA = 0, nextB = 0
        // A: 19 windows; B: 14 + 14.
        for n in 0..<200 {
            let (shard, start) = sequential.window(in: mix, which: .train, batch: n / batch, index: n % batch)
            if blend.source(of: n).source == 0 {
                XCTAssertEqual(shard[start], UInt32((nextA % 19) * 10)); nextA += 1
            } else {
                let w = nextB % 28
                XCTAssertEqual(shard[start], UInt32(w < 14 ? 1000 + w * 10 : 1150 + (w - 14) * 10)); nextB += 1
            }
        }
        XCTAssertEqual(sequential.epoch(batch: 25, split: mix), Double(blend.samples(of: 1, before: 200)) / 28, accuracy: 1e-12,
                       "the most repeated source's passes: B's 150 samples over 28 windows")
        XCTAssertGreaterThan(Double(blend.samples(of: 1, before: 200)) / 28, Double(blend.samples(of: 0, before: 200)) / 19)
    }
}

import Kernels
import Model
import Settings
import XCTest

/// Generation's key/value-cached path gives the logits of a full forward over the same
/// context, whether tokens arrive as one prompt or one at a time, with and without biases,
/// across attention's 128-position blocks and up to a full `block_size`.
final class IncrementalDecoderTests: XCTestCase {
    func testLogitsMatchAFullForwardAtEveryPosition() {
        for bias in [true, false] {
            let config = GPTConfig(nLayer: 3, nHead: 4, nEmbd: 32, blockSize: 200, vocabSize: 23, bias: bias)
            let h = Harness(config)
            GPT.initialize(h.params.pointer, layout: h.model.layout, config: config, seed: 5)
            var rng = SplitMix64(seed: 9)
            // Weights well away from initialisation, so attention is far from uniform.
            for i in 0..<h.params.count { h.params[i] += Float(rng.nextNormal() * 0.3) }
            let tokens = (0..<config.blockSize).map { _ in Int32(rng.next(below: config.vocabSize)) }
            h.model.forward(tokens: tokens, targets: nil, B: 1, T: tokens.count, params: h.flat)
            let V = config.vocabSize
            func full(_ t: Int) -> [Double] {
                Array(UnsafeBufferPointer(start: h.model.logitsRow(b: 0, t: t), count: V)).map(Double.init)
            }
            let decoder = IncrementalDecoder(config: config, parameters: h.params.pointer)
            // A 70-token prompt in one call, then single tokens to the end of the context.
            let prompt = 70
            var worst = relativeError(Array(UnsafeBufferPointer(start: decoder.append(Array(tokens[0..<prompt])), count: V)),
                                      full(prompt - 1))
            for t in prompt..<config.blockSize {
                let got = Array(UnsafeBufferPointer(start: decoder.append([tokens[t]]), count: V))
                worst = max(worst, relativeError(got, full(t)))
            }
            XCTAssertEqual(decoder.length, config.blockSize)
            XCTAssertLessThan(worst, 1e-5, "bias \(bias): cached logits vs the full forward's")
            // The causal prefix: the logits at a position do not depend on later tokens, so a
            // restarted decoder given the first 100 tokens agrees with the same full forward.
            decoder.reset()
            let again = Array(UnsafeBufferPointer(start: decoder.append(Array(tokens[0..<100])), count: V))
            XCTAssertLessThan(relativeError(again, full(99)), 1e-5, "bias \(bias): after reset")
        }
    }
}

/// Several contexts grown together: after a shared prompt and different tokens per
/// sequence, each sequence's logits are those of a decoder holding that context alone (the
/// same kernels; rows differ only in how many the products have) and of a full forward.
final class BatchedDecoderTests: XCTestCase {
    func testEachSequenceIsItsOwnContext() {
        let config = GPTConfig(nLayer: 2, nHead: 4, nEmbd: 32, blockSize: 40, vocabSize: 29, bias: true)
        let h = Harness(config)
        GPT.initialize(h.params.pointer, layout: h.model.layout, config: config, seed: 6)
        var rng = SplitMix64(seed: 10)
        for i in 0..<h.params.count { h.params[i] += Float(rng.nextNormal() * 0.3) }
        let S = 3, V = config.vocabSize
        let prompt = (0..<7).map { _ in Int32(rng.next(below: V)) }
        let tails = (0..<S).map { _ in (0..<25).map { _ in Int32(rng.next(below: V)) } }
        let batched = IncrementalDecoder(config: config, parameters: h.params.pointer, sequences: S)
        var rows = Array(UnsafeBufferPointer(start: batched.append(prompt), count: S * V))
        let alone = IncrementalDecoder(config: config, parameters: h.params.pointer)
        let first = Array(UnsafeBufferPointer(start: alone.append(prompt), count: V))
        for s in 0..<S { XCTAssertEqual(Array(rows[(s * V)..<((s + 1) * V)]), first, "the prompt's logits in every row") }
        for t in 0..<25 { rows = Array(UnsafeBufferPointer(start: batched.step(tails.map { $0[t] }), count: S * V)) }
        XCTAssertEqual(batched.length, 32)
        for s in 0..<S {
            alone.reset()
            _ = alone.append(prompt)
            var last: [Float] = []
            for t in 0..<25 { last = Array(UnsafeBufferPointer(start: alone.append([tails[s][t]]), count: V)) }
            let mine = Array(rows[(s * V)..<((s + 1) * V)])
            XCTAssertLessThan(relativeError(mine, last.map(Double.init)), 1e-6, "sequence \(s) against a decoder of its own")
            let context = prompt + tails[s]
            h.model.forward(tokens: context, targets: nil, B: 1, T: context.count, params: h.flat)
            let full = Array(UnsafeBufferPointer(start: h.model.logitsRow(b: 0, t: context.count - 1), count: V))
            XCTAssertLessThan(relativeError(mine, full.map(Double.init)), 1e-5, "sequence \(s) against a full forward")
        }
        XCTAssertGreaterThan(relativeError(Array(rows[0..<V]), rows[V..<(2 * V)].map(Double.init)), 1e-2, "the sequences differ")
    }
}

/// A forward asked for a few positions' logits (`logitRows`) gives those rows of the full
/// forward's logits, in every compute format.
final class LogitRowsTests: XCTestCase {
    func testSelectedRowsAreTheFullForwardsRows() {
        let config = GPTConfig(nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 24, vocabSize: 37, bias: true)
        for precision in Precision.allCases {
            let h = Harness(config, precision: precision)
            GPT.initialize(h.params.pointer, layout: h.model.layout, config: config, seed: 3)
            var rng = SplitMix64(seed: 4)
            for i in 0..<h.params.count { h.params[i] += Float(rng.nextNormal() * 0.3) }
            let B = 3, T = 20, V = config.vocabSize
            let tokens = (0..<B * T).map { _ in Int32(rng.next(below: V)) }
            h.model.forward(tokens: tokens, targets: nil, B: B, T: T, params: h.flat)
            let full = (0..<B * T).map { Array(UnsafeBufferPointer(start: h.model.logitsRow(b: $0 / T, t: $0 % T), count: V)) }
            // The first and last positions, a run in the middle row, and a lone one.
            let rows = [0, 5, 21, 22, 23, 24, 39, 47, B * T - 1]
            h.model.forward(tokens: tokens, targets: nil, B: B, T: T, params: h.flat, logitRows: rows)
            var worst = 0.0
            for (i, r) in rows.enumerated() {
                let got = Array(UnsafeBufferPointer(start: h.model.logitsRow(index: i), count: V))
                worst = max(worst, relativeError(got, full[r].map(Double.init)))
            }
            XCTAssertLessThan(worst, 1e-6, "\(precision): selected rows vs the full forward's")
            XCTAssertGreaterThan(full.joined().map(abs).max()!, 1, "logits are not all near zero")
        }
    }
}

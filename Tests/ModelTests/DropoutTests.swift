import Kernels
import Model
import Settings
import XCTest

/// Dropout: masks of the right rate and scale, gradients that are those of the masked
/// function (finite differences with the same keys), masks that depend only on each
/// sequence's key (not on batching or recomputation), and no dropout without keys (eval).
final class DropoutTests: XCTestCase {
    final class Model {
        let gpt: GPT, params: FloatBuffer, grads: FloatBuffer, flat: FlatParameters
        init(_ c: GPTConfig, p: Float, precision: Precision = .fp32, recompute: Recompute = .none, seed: UInt64 = 7, jitter: Double = 0) {
            gpt = GPT(config: c, precision: precision, recompute: recompute, dropout: p)
            params = FloatBuffer(count: gpt.layout.count); grads = FloatBuffer(count: gpt.layout.count)
            GPT.initialize(params.pointer, layout: gpt.layout, config: c, seed: seed)
            var rng = SplitMix64(seed: 99)
            if jitter > 0 { for i in 0..<params.count { params[i] += Float(rng.nextNormal() * jitter) } }
            flat = FlatParameters(layout: gpt.layout, parameters: params.pointer, gradients: grads.pointer)
        }
        func loss(_ tokens: [Int32], _ targets: [Int32], B: Int, T: Int, keys: [UInt64]?) -> Double {
            let r = keys.map { k in gpt.forward(tokens: tokens, targets: targets, B: B, T: T, params: flat, sequenceKeys: k) }
                ?? gpt.forward(tokens: tokens, targets: targets, B: B, T: T, params: flat)
            return r.sum / Double(r.count)
        }
        func gradients(_ tokens: [Int32], _ targets: [Int32], B: Int, T: Int, keys: [UInt64]) -> Double {
            grads.zero()
            let r = gpt.forward(tokens: tokens, targets: targets, B: B, T: T, params: flat, sequenceKeys: keys)
            gpt.backward(lossScale: Float(1.0 / Double(r.count)), params: flat)
            return r.sum / Double(r.count)
        }
    }

    func batch(_ c: GPTConfig, B: Int, T: Int, seed: UInt64 = 3) -> ([Int32], [Int32], [UInt64]) {
        var rng = SplitMix64(seed: seed)
        let tokens = (0..<(B * T)).map { _ in Int32(rng.next(below: c.vocabSize)) }
        let targets = (0..<(B * T)).map { _ in Int32(rng.next(below: c.vocabSize)) }
        let keys = (0..<B).map { Dropout.sequenceKey(seed: 1337, step: 5, sample: $0) }
        return (tokens, targets, keys)
    }

    func testMaskRateAndScale() {
        let B = 4, T = 64, C = 256, n = B * T * C
        let x = FloatBuffer(count: n)
        for i in 0..<n { x[i] = 1 }
        let keys = (0..<B).map { Dropout.sequenceKey(seed: 1, step: 0, sample: $0) }
        keys.withUnsafeBufferPointer { k in
            Dropout(p: 0.2).apply(x.pointer, B: B, T: T, C: C, keys: k.baseAddress!, site: .mlpOutput, layer: 3)
        }
        let values = x.toArray()
        let zeros = values.filter { $0 == 0 }.count
        XCTAssertEqual(Double(zeros) / Double(n), 0.2, accuracy: 0.005, "dropped fraction")
        XCTAssertTrue(values.allSatisfy { $0 == 0 || $0 == 1.25 }, "kept elements scaled by 1/(1 − p)")
        // Different sequences get different masks.
        XCTAssertNotEqual(Array(values[0..<(T * C)]), Array(values[(T * C)..<(2 * T * C)]))
    }

    /// The gradient of the masked function, against central differences with the same keys:
    /// every tensor, at a length inside one attention block and one spanning two.
    func testGradientsMatchFiniteDifferences() {
        for (T, perTensor) in [(6, 4), (FusedAttention.block + 8, 1)] {
            let c = GPTConfig(nLayer: 2, nHead: 2, nEmbd: 8, blockSize: T, vocabSize: 7, bias: true)
            let m = Model(c, p: 0.2, jitter: 0.3)
            let (tokens, targets, keys) = batch(c, B: 2, T: T)
            _ = m.gradients(tokens, targets, B: 2, T: T, keys: keys)
            let analytic = m.grads.toArray()
            var rng = SplitMix64(seed: 5)
            for spec in m.gpt.layout.tensors {
                let idx = (0..<spec.count).sorted { abs(analytic[spec.offset + $0]) > abs(analytic[spec.offset + $1]) }
                for k in Array(idx.prefix(perTensor)) + [rng.next(below: spec.count)] {
                    let i = spec.offset + k, saved = m.params[i], eps: Float = 1e-2
                    m.params[i] = saved + eps
                    let up = m.loss(tokens, targets, B: 2, T: T, keys: keys)
                    m.params[i] = saved - eps
                    let down = m.loss(tokens, targets, B: 2, T: T, keys: keys)
                    m.params[i] = saved
                    let numeric = (up - down) / Double(2 * eps), a = Double(analytic[i]), scale = max(abs(a), abs(numeric))
                    if scale > 1e-3 {
                        XCTAssertLessThan(abs(a - numeric) / scale, 1e-2, "T=\(T) \(spec.name)[\(k)]: \(a) vs \(numeric)")
                    } else {
                        XCTAssertLessThan(abs(a - numeric), 2e-5, "T=\(T) \(spec.name)[\(k)]: \(a) vs \(numeric)")
                    }
                }
            }
        }
    }

    func testMasksDependOnlyOnTheSequenceKey() {
        let c = GPTConfig(nLayer: 2, nHead: 2, nEmbd: 16, blockSize: 20, vocabSize: 11, bias: true)
        let m = Model(c, p: 0.2)
        let (tokens, targets, keys) = batch(c, B: 2, T: 20)
        let both = m.loss(tokens, targets, B: 2, T: 20, keys: keys)
        XCTAssertEqual(m.loss(tokens, targets, B: 2, T: 20, keys: keys), both, "the same keys give the same bits")
        // Each sequence alone, with its own key: the same per-sequence losses as in the pair.
        let first = m.loss(Array(tokens[0..<20]), Array(targets[0..<20]), B: 1, T: 20, keys: [keys[0]])
        let second = m.loss(Array(tokens[20...]), Array(targets[20...]), B: 1, T: 20, keys: [keys[1]])
        XCTAssertEqual((first + second) / 2, both, accuracy: 1e-6 * both)
        // Other keys, other masks; no keys (evaluation), no dropout at all.
        let other = m.loss(tokens, targets, B: 2, T: 20, keys: keys.map { $0 &+ 1 })
        XCTAssertNotEqual(other, both)
        let plain = Model(c, p: 0)
        XCTAssertEqual(m.loss(tokens, targets, B: 2, T: 20, keys: nil), plain.loss(tokens, targets, B: 2, T: 20, keys: nil))
        XCTAssertNotEqual(m.loss(tokens, targets, B: 2, T: 20, keys: nil), both)
    }

    /// Recomputation regenerates forward's masks: gradients bit-identical in every mode and format.
    func testRecomputationReproducesTheMasks() {
        let T = FusedAttention.block + 16
        let c = GPTConfig(nLayer: 2, nHead: 2, nEmbd: 32, blockSize: T, vocabSize: 30, bias: true)
        let (tokens, targets, keys) = batch(c, B: 2, T: T)
        for precision in Precision.allCases {
            var reference: [UInt32]?
            for mode in Recompute.allCases {
                let m = Model(c, p: 0.2, precision: precision, recompute: mode)
                _ = m.gradients(tokens, targets, B: 2, T: T, keys: keys)
                let bits = m.grads.toArray().map(\.bitPattern)
                if let reference { XCTAssertEqual(bits, reference, "\(precision) \(mode)") } else { reference = bits }
            }
        }
    }
}

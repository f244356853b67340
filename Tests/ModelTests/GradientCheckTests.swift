import Kernels
import Model
import Settings
import XCTest

/// Analytic gradients of every parameter tensor against central finite differences.
final class GradientCheckTests: XCTestCase {
    func check(bias: Bool) {
        let config = GPTConfig(nLayer: 2, nHead: 2, nEmbd: 8, blockSize: 6, vocabSize: 7, bias: bias)
        let h = Harness(config)
        GPT.initialize(h.params.pointer, layout: h.model.layout, config: config, seed: 7)
        // Larger weights than GPT-2's 0.02 so every gradient is well above float32 noise.
        var rng = SplitMix64(seed: 99)
        for i in 0..<h.params.count { h.params[i] += Float(rng.nextNormal() * 0.3) }
        let B = 2, T = 6
        let tokens: [Int32] = (0..<(B * T)).map { _ in Int32(rng.next(below: 7)) }
        var targets: [Int32] = (0..<(B * T)).map { _ in Int32(rng.next(below: 7)) }
        targets[4] = -1
        _ = h.lossAndGradients(tokens, targets, B: B, T: T)
        let analytic = h.grads.toArray()

        var checked = 0
        for spec in h.model.layout.tensors {
            // The two largest-magnitude entries and two random ones of every tensor.
            let idx = (0..<spec.count).sorted { abs(analytic[spec.offset + $0]) > abs(analytic[spec.offset + $1]) }
            let picks = Array(idx.prefix(2)) + [rng.next(below: spec.count), rng.next(below: spec.count)]
            for k in picks {
                checkElement(h.params, spec.offset + k, analytic: analytic[spec.offset + k], "\(spec.name)[\(k)]") {
                    h.loss(tokens, targets, B: B, T: T)
                }
                checked += 1
            }
        }
        XCTAssertEqual(checked, 4 * h.model.layout.tensors.count)
    }

    /// At every kernel level this CPU runs (as `TESSERA_ISA` would force them).
    func testGradientsWithBias() { atEveryISA { _ in check(bias: true) } }
    func testGradientsWithoutBias() { atEveryISA { _ in check(bias: false) } }
}

import Kernels
import Model
import Settings
import XCTest

/// Activation recomputation repeats the forward's arithmetic on the same inputs, so the loss
/// and every gradient are bit-identical to keeping everything, in every precision.
final class RecomputeTests: XCTestCase {
    func gradients(_ c: GPTConfig, precision: Precision, recompute: Recompute, attention: AttentionKernel,
                   B: Int, T: Int) -> (Double, [UInt32]) {
        let model = GPT(config: c, precision: precision, recompute: recompute, attention: attention)
        let params = FloatBuffer(count: model.layout.count), grads = FloatBuffer(count: model.layout.count)
        GPT.initialize(params.pointer, layout: model.layout, config: c, seed: 7)
        let flat = FlatParameters(layout: model.layout, parameters: params.pointer, gradients: grads.pointer)
        var rng = SplitMix64(seed: 3)
        let tokens = (0..<(B * T)).map { _ in Int32(rng.next(below: c.vocabSize)) }
        let targets = (0..<(B * T)).map { _ in Int32(rng.next(below: c.vocabSize)) }
        var loss = 0.0
        for _ in 0..<2 {   // two micro-batches: gradients accumulate
            let r = model.forward(tokens: tokens, targets: targets, B: B, T: T, params: flat)
            model.backward(lossScale: 0.01, params: flat)
            loss += r.sum
        }
        return (loss, (0..<grads.count).map { grads.pointer[$0].bitPattern })
    }

    func testGradientsAreBitIdenticalInEveryMode() {
        // Two query blocks of the fused kernel.
        let T = FusedAttention.block + 16
        let c = GPTConfig(nLayer: 3, nHead: 2, nEmbd: 32, blockSize: T, vocabSize: 50, bias: true)
        for precision in Precision.allCases {
            for kernel in AttentionKernel.allCases {
                let (loss, reference) = gradients(c, precision: precision, recompute: .none, attention: kernel, B: 2, T: T)
                XCTAssertTrue(reference.contains { $0 != 0 })
                for mode in [Recompute.selective, .full] {
                    let (l, g) = gradients(c, precision: precision, recompute: mode, attention: kernel, B: 2, T: T)
                    XCTAssertEqual(l, loss, "\(precision) \(kernel) \(mode) loss")
                    let first = zip(g, reference).enumerated().first { $0.element.0 != $0.element.1 }?.offset
                    XCTAssertNil(first, "\(precision) \(kernel) \(mode): gradient \(first ?? -1) differs from --recompute none")
                }
            }
        }
    }

    /// Recomputation keeps less: full only each block's input, selective drops the attention
    /// probabilities, LayerNorm outputs and GELU output of all but one layer.
    func testRecomputationKeepsLess() {
        let c = GPTConfig(nLayer: 6, nHead: 6, nEmbd: 384, blockSize: 256, vocabSize: 65, bias: false)
        let kept = Recompute.allCases.map {
            Activations<FP32>.bytes(config: c, maxB: 64, maxT: 256, workers: 2, recompute: $0, attention: .unfused).saved
        }
        XCTAssertLessThan(Double(kept[1]) / Double(kept[0]), 0.6, "selective")
        XCTAssertLessThan(Double(kept[2]) / Double(kept[0]), 0.25, "full")
    }
}

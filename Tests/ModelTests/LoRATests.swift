import Kernels
import Model
import Settings
import XCTest

/// LoRA adapters on a frozen base: gradients against finite differences, the base untouched,
/// B = 0 starting as the base, and merged weights computing what the adapted model does.
final class LoRATests: XCTestCase {
    /// A model with adapters, its base and adapter buffers (and a base gradient buffer that
    /// must stay untouched).
    final class LoRAHarness {
        let config: GPTConfig
        let lora: LoRAConfig
        let model: GPT
        let base: FloatBuffer, baseGrads: FloatBuffer
        let adapters: FloatBuffer, adapterGrads: FloatBuffer
        let baseProvider: FlatParameters, adapterProvider: FlatParameters

        init(_ config: GPTConfig, _ lora: LoRAConfig, precision: Precision = .fp32, seed: UInt64 = 7) {
            self.config = config; self.lora = lora
            model = GPT(config: config, precision: precision, lora: lora)
            base = FloatBuffer(count: model.layout.count); baseGrads = FloatBuffer(count: model.layout.count)
            let al = model.adapterLayout!
            adapters = FloatBuffer(count: al.count); adapterGrads = FloatBuffer(count: al.count)
            baseProvider = FlatParameters(layout: model.layout, parameters: base.pointer, gradients: baseGrads.pointer)
            adapterProvider = FlatParameters(layout: al, parameters: adapters.pointer, gradients: adapterGrads.pointer)
            GPT.initialize(base.pointer, layout: model.layout, config: config, seed: seed)
            lora.initialize(adapters.pointer, elements: 0..<al.count, layout: al, seed: seed)
        }

        func loss(_ tokens: [Int32], _ targets: [Int32], B: Int, T: Int) -> Double {
            let r = tokens.withUnsafeBufferPointer { tk in targets.withUnsafeBufferPointer { tg in
                model.forward(tokens: tk.baseAddress!, targets: tg.baseAddress!, B: B, T: T, params: baseProvider,
                              adapters: adapterProvider)
            } }
            return r.sum / Double(r.count)
        }

        func lossAndGradients(_ tokens: [Int32], _ targets: [Int32], B: Int, T: Int) -> Double {
            adapterGrads.zero()
            let l = loss(tokens, targets, B: B, T: T)
            let counted = targets.filter { $0 >= 0 }.count
            model.backward(lossScale: Float(1.0 / Double(counted)), params: baseProvider)
            return l
        }

        /// Logits of every position (forward without targets).
        func logits(_ tokens: [Int32], B: Int, T: Int, params: ParameterProvider, adapters: ParameterProvider?,
                    on model: GPT) -> [Float] {
            tokens.withUnsafeBufferPointer { tk in
                _ = model.forward(tokens: tk.baseAddress!, targets: nil, B: B, T: T, params: params, adapters: adapters)
            }
            var out: [Float] = []
            for b in 0..<B { for t in 0..<T { out += Array(UnsafeBufferPointer(start: model.logitsRow(b: b, t: t), count: config.vocabSize)) } }
            return out
        }
    }

    let shape = GPTConfig(nLayer: 2, nHead: 2, nEmbd: 8, blockSize: 6, vocabSize: 7, bias: true)
    let every = LoRAConfig(rank: 2, alpha: 3, targets: LoRATarget.allCases)

    func testAdapterGradientsMatchFiniteDifferences() {
        atEveryISA { _ in
            let h = LoRAHarness(shape, every)
            var rng = SplitMix64(seed: 5)
            // Larger values than the defaults (and B ≠ 0) so every gradient is well above noise.
            for i in 0..<h.base.count { h.base[i] += Float(rng.nextNormal() * 0.3) }
            for i in 0..<h.adapters.count { h.adapters[i] = Float(rng.nextNormal() * 0.5) }
            let B = 2, T = 6
            let tokens: [Int32] = (0..<(B * T)).map { _ in Int32(rng.next(below: 7)) }
            var targets: [Int32] = (0..<(B * T)).map { _ in Int32(rng.next(below: 7)) }
            targets[3] = -1
            _ = h.lossAndGradients(tokens, targets, B: B, T: T)
            let analytic = h.adapterGrads.toArray()
            XCTAssertEqual(h.baseGrads.toArray().filter { $0 != 0 }.count, 0, "the frozen base gets no gradient")
            var checked = 0
            for spec in h.model.adapterLayout!.tensors {
                let idx = (0..<spec.count).sorted { abs(analytic[spec.offset + $0]) > abs(analytic[spec.offset + $1]) }
                for k in Array(idx.prefix(2)) + [rng.next(below: spec.count)] {
                    checkElement(h.adapters, spec.offset + k, analytic: analytic[spec.offset + k], "\(spec.name)[\(k)]") {
                        h.loss(tokens, targets, B: B, T: T)
                    }
                    checked += 1
                }
            }
            XCTAssertEqual(checked, 3 * 2 * 2 * 4, "A and B of 4 targets in 2 layers")
        }
    }

    /// The input gradient through the frozen base plus the adapters is what full training
    /// computes for the same weights: merge the adapters, train the merged model, and the
    /// gradient of a merged weight W = W0 + s·B·A gives dB = s·dW·Aᵀ and dA = s·Bᵀ·dW.
    func testAdapterGradientsFollowFromMergedWeightGradient() {
        let h = LoRAHarness(shape, every)
        var rng = SplitMix64(seed: 11)
        for i in 0..<h.adapters.count { h.adapters[i] = Float(rng.nextNormal() * 0.3) }
        let B = 2, T = 6
        let tokens: [Int32] = (0..<(B * T)).map { _ in Int32(rng.next(below: 7)) }
        let targets: [Int32] = (0..<(B * T)).map { _ in Int32(rng.next(below: 7)) }
        _ = h.lossAndGradients(tokens, targets, B: B, T: T)

        let full = GPT(config: shape)
        let merged = FloatBuffer(count: full.layout.count), dW = FloatBuffer(count: full.layout.count)
        merged.pointer.update(from: h.base.pointer, count: merged.count)
        every.merge(h.adapters.pointer, into: merged.pointer, model: shape)
        let flat = FlatParameters(layout: full.layout, parameters: merged.pointer, gradients: dW.pointer)
        let r = tokens.withUnsafeBufferPointer { tk in targets.withUnsafeBufferPointer { tg in
            full.forward(tokens: tk.baseAddress!, targets: tg.baseAddress!, B: B, T: T, params: flat)
        } }
        full.backward(lossScale: Float(1.0 / Double(r.count)), params: flat)

        let al = h.model.adapterLayout!, s = Double(every.scale), r8 = every.rank
        var worst = 0.0
        for l in 0..<shape.nLayer {
            for t in every.targets {
                let p = "h.\(l).\(t.module).", (I, O) = t.shape(C: shape.nEmbd)
                let w = full.layout.tensor(named: p + "weight")!
                let a = al.tensor(named: p + "lora_A.weight")!, b = al.tensor(named: p + "lora_B.weight")!
                for o in 0..<O { for k in 0..<r8 {      // dB[o,k] = s Σ_i dW[o,i] A[k,i]
                    var e = 0.0
                    for i in 0..<I { e += Double(dW[w.offset + o * I + i]) * Double(h.adapters[a.offset + k * I + i]) }
                    worst = max(worst, abs(Double(h.adapterGrads[b.offset + o * r8 + k]) - s * e))
                } }
                for k in 0..<r8 { for i in 0..<I {      // dA[k,i] = s Σ_o B[o,k] dW[o,i]
                    var e = 0.0
                    for o in 0..<O { e += Double(h.adapters[b.offset + o * r8 + k]) * Double(dW[w.offset + o * I + i]) }
                    worst = max(worst, abs(Double(h.adapterGrads[a.offset + k * I + i]) - s * e))
                } }
            }
        }
        XCTAssertLessThan(worst, 1e-5, "adapter gradients vs the merged model's weight gradients")
    }

    /// With B = 0 (the initialisation) the adapted model is the base; merging then changes
    /// nothing; with trained-looking adapters the merged model computes the adapted one's logits.
    func testInitialAdaptersAreIdentityAndMergeMatchesAdaptedLogits() {
        for precision in [Precision.fp32, .bf16] {
            let h = LoRAHarness(shape, LoRAConfig(rank: 2, alpha: 4, targets: [.attn, .mlpProj]), precision: precision)
            let plain = GPT(config: shape, precision: precision)
            let none = FloatBuffer(count: plain.layout.count)
            let baseFlat = FlatParameters(layout: plain.layout, parameters: h.base.pointer, gradients: none.pointer)
            let tokens: [Int32] = [1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5]
            XCTAssertEqual(h.logits(tokens, B: 2, T: 6, params: h.baseProvider, adapters: h.adapterProvider, on: h.model),
                           h.logits(tokens, B: 2, T: 6, params: baseFlat, adapters: nil, on: plain), "\(precision): B = 0 is the base")
            var rng = SplitMix64(seed: 3)
            for i in 0..<h.adapters.count { h.adapters[i] = Float(rng.nextNormal() * 0.3) }
            let adapted = h.logits(tokens, B: 2, T: 6, params: h.baseProvider, adapters: h.adapterProvider, on: h.model)
            let merged = FloatBuffer(count: plain.layout.count)
            merged.pointer.update(from: h.base.pointer, count: merged.count)
            h.lora.merge(h.adapters.pointer, into: merged.pointer, model: shape)
            let mergedFlat = FlatParameters(layout: plain.layout, parameters: merged.pointer, gradients: none.pointer)
            let viaMerge = h.logits(tokens, B: 2, T: 6, params: mergedFlat, adapters: nil, on: plain)
            let base = h.logits(tokens, B: 2, T: 6, params: baseFlat, adapters: nil, on: plain)
            let diff = zip(adapted, viaMerge).map { abs($0 - $1) }.max()!
            let moved = zip(adapted, base).map { abs($0 - $1) }.max()!
            // bf16 rounds the merged weights, not the adapters' separate terms: a few ulps of bf16.
            XCTAssertLessThan(diff, precision == .fp32 ? 1e-5 : 3e-2, "\(precision): merged vs adapted logits")
            XCTAssertGreaterThan(moved, 10 * diff, "\(precision): the adapters change the logits well beyond that")
        }
    }

    func testLayoutNamesShapesAndCounts() {
        let c = GPTConfig(nLayer: 12, nHead: 12, nEmbd: 768, blockSize: 1024, vocabSize: 50257)
        let lora = LoRAConfig(rank: 8, alpha: 16, targets: [.attn, .attnProj])
        let l = lora.layout(for: c)
        XCTAssertEqual(l.units.count, ParameterLayout(c).units.count, "unit for unit with the base")
        XCTAssertTrue(l.units[0].isEmpty && l.units[l.finalUnit].isEmpty)
        XCTAssertEqual(l.tensor(named: "h.3.attn.c_attn.lora_A.weight")?.shape, [8, 768])
        XCTAssertEqual(l.tensor(named: "h.3.attn.c_attn.lora_B.weight")?.shape, [2304, 8])
        XCTAssertEqual(l.tensor(named: "h.11.attn.c_proj.lora_B.weight")?.shape, [768, 8])
        XCTAssertEqual(l.count, 12 * 8 * ((768 + 2304) + (768 + 768)))
        XCTAssertEqual(l.count, lora.parameterCount(for: c))
        XCTAssertEqual(try LoRATarget.list("mlp-proj, attn"), [.attn, .mlpProj])
        XCTAssertThrowsError(try LoRATarget.list("attn,qkv"))
        XCTAssertThrowsError(try LoRAConfig(rank: 0, alpha: 8, targets: [.attn]).validate(for: c))
        XCTAssertThrowsError(try LoRAConfig(rank: 769, alpha: 8, targets: [.attn]).validate(for: c))
    }
}

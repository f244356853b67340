import Kernels
import Model
import Settings
import XCTest

/// The fused (blocked, online-softmax) attention kernel against the unfused one, which keeps
/// whole T×T probabilities: same outputs and gradients, at every dispatch level, in every
/// format, at lengths that are and are not multiples of the block; and O(T) memory.
final class FusedAttentionTests: XCTestCase {
    struct Case { var B: Int, T: Int, C: Int, NH: Int }

    /// (out, dqkv) of both kernels on the same random qkv and output gradient, all in fp32.
    func run<F: ComputeFormat>(_: F.Type, _ c: Case, seed: UInt64) -> (fused: [Float], unfused: [Float],
                                                                    dFused: [Float], dUnfused: [Float]) {
        let (B, T, C, NH) = (c.B, c.T, c.C, c.NH)
        let workers = ParallelFor.threads, hs = C / NH
        var rng = SplitMix64(seed: seed)
        let qkv32 = FloatBuffer(count: B * T * 3 * C), dout32 = FloatBuffer(count: B * T * C)
        for i in 0..<qkv32.count { qkv32[i] = Float(rng.nextUniform() * 4 - 2) }
        for i in 0..<dout32.count { dout32[i] = Float(rng.nextUniform() * 2 - 1) }
        let qkv = AlignedBuffer<F.Element>(count: qkv32.count), dout = AlignedBuffer<F.Element>(count: dout32.count)
        F.commit(qkv32.pointer, into: qkv.pointer, qkv32.count)
        F.commit(dout32.pointer, into: dout.pointer, dout32.count)

        // Fused: output committed to the format, as the model keeps it for backward.
        let out = FloatBuffer(count: B * T * C), kept = AlignedBuffer<F.Element>(count: B * T * C)
        let lse = FloatBuffer(count: B * NH * T)
        let scratch = FloatBuffer(count: FusedAttention.scratchFloats(F.self, T: T, hs: hs) * workers)
        let dqkv = FloatBuffer(count: B * T * 3 * C)
        FusedAttention.forward(F.self, out: out.pointer, lse: lse.pointer, qkv: qkv.pointer, scratch: scratch.pointer,
                               B: B, T: T, C: C, NH: NH, workers: workers)
        F.commit(out.pointer, into: kept.pointer, out.count)
        FusedAttention.backward(F.self, dqkv: dqkv.pointer, dout: dout.pointer, out: kept.pointer, lse: lse.pointer,
                                qkv: qkv.pointer, scratch: scratch.pointer, B: B, T: T, C: C, NH: NH, workers: workers)
        let fused = Array(UnsafeBufferPointer(start: out.pointer, count: out.count))
        let dFused = Array(UnsafeBufferPointer(start: dqkv.pointer, count: dqkv.count))

        let att = AlignedBuffer<F.Element>(count: B * NH * T * T), scores = FloatBuffer(count: T * T * workers)
        Layers.attentionForward(F.self, out: out.pointer, att: att.pointer, qkv: qkv.pointer, scores: scores.pointer,
                                B: B, T: T, C: C, NH: NH, workers: workers)
        let unfused = Array(UnsafeBufferPointer(start: out.pointer, count: out.count))
        let probs = FloatBuffer(count: F.isLow ? T * T * workers : 0), low = AlignedBuffer<F.Element>(count: F.isLow ? T * T * workers : 0)
        Layers.attentionBackward(F.self, dqkv: dqkv.pointer, dout: dout.pointer, qkv: qkv.pointer, att: att.pointer,
                                 scratch: .init(scores: scores.pointer, probs: probs.pointer, gradient: low.pointer),
                                 B: B, T: T, C: C, NH: NH, workers: workers)
        let dUnfused = Array(UnsafeBufferPointer(start: dqkv.pointer, count: dqkv.count))
        return (fused, unfused, dFused, dUnfused)
    }

    /// Two and a bit blocks, exactly one block, less than one.
    let cases = [Case(B: 2, T: 2 * FusedAttention.block + 22, C: 64, NH: 4), Case(B: 1, T: FusedAttention.block, C: 96, NH: 2),
                 Case(B: 3, T: 7, C: 32, NH: 2)]

    /// ‖a − b‖∞ / ‖b‖∞.
    func maxRelative(_ a: [Float], _ b: [Float]) -> Double {
        relativeError(a, b.map(Double.init))
    }

    func testFP32MatchesUnfusedAtEveryISA() {
        atEveryISA { level in
            for c in cases {
                let r = run(FP32.self, c, seed: 11)
                XCTAssertLessThan(maxRelative(r.fused, r.unfused), 1e-5, "\(level) \(c) output")
                XCTAssertLessThan(maxRelative(r.dFused, r.dUnfused), 1e-5, "\(level) \(c) dqkv")
                // Every part of dqkv is exercised (dQ, dK and dV of every head are non-zero).
                XCTAssertGreaterThan(r.dFused.map(abs).max()!, 0.01)
            }
        }
    }

    /// 16-bit, at every dispatch level: both kernels read the same rounded Q, K, V, dO and
    /// round the probabilities and dS to 16 bits for their products where they run on native
    /// bf16 dot products; elsewhere the fused kernel keeps them in fp32. Either way they differ
    /// by about one rounding (bf16: 2⁻⁹ relative; fp16: 2⁻¹²); measured at most 3.1e-3 (bf16).
    func testHalfFormatsMatchUnfusedWithinRounding() {
        atEveryISA { level in
            for c in cases {
                let b = run(BF16.self, c, seed: 5)
                XCTAssertLessThan(maxRelative(b.fused, b.unfused), 6e-3, "\(level) bf16 \(c) output")
                XCTAssertLessThan(maxRelative(b.dFused, b.dUnfused), 6e-3, "\(level) bf16 \(c) dqkv")
                let h = run(FP16.self, c, seed: 5)
                XCTAssertLessThan(maxRelative(h.fused, h.unfused), 2e-3, "\(level) fp16 \(c) output")
                XCTAssertLessThan(maxRelative(h.dFused, h.dUnfused), 4e-3, "\(level) fp16 \(c) dqkv")
            }
        }
    }

    /// Where the CPU has AVX512-BF16, bf16 block products run on it (P and dS rounded to bf16:
    /// other bits than the fp32 products on widened blocks one level down give) and stay within
    /// rounding of the fp32-product path.
    func testBF16UsesNativeDotProductsWhereTheCPUHasThem() throws {
        guard CPU.runnableLevels.contains(.avx512bf16) else {
            throw XCTSkip("this CPU has no AVX512-BF16 (\(CPU.isa)); the fp32-product path is checked above")
        }
        defer { CPU.use(nil) }
        let c = cases[0]
        CPU.use(.avx512bf16)
        XCTAssertTrue(Gemm.bf16IsNative)
        XCTAssertTrue(BF16.gemmIsReentrant)
        let native = run(BF16.self, c, seed: 5)
        // One level down the same process multiplies widened operands in fp32 (on the packing
        // GEMM, whose per-thread panels let attention tasks run it at once).
        CPU.use(.avx512)
        XCTAssertFalse(Gemm.bf16IsNative)
        XCTAssertTrue(Gemm.packsWhileWidening && BF16.gemmIsReentrant)
        let widened = run(BF16.self, c, seed: 5)
        XCTAssertTrue(native.fused != widened.fused, "the native path was not taken")
        XCTAssertLessThan(maxRelative(native.fused, widened.fused), 6e-3)
        XCTAssertLessThan(maxRelative(native.dFused, widened.dFused), 6e-3)
        // With AMX the blocks run on oneDNN's matmul (its tiles sum in another order).
        guard CPU.runnableLevels.contains(.amx) else { return }
        CPU.use(.amx)
        XCTAssertTrue(Gemm.bf16OnAMX && BF16.gemmIsReentrant)
        let amx = run(BF16.self, c, seed: 5)
        XCTAssertTrue(amx.fused != native.fused || amx.dFused != native.dFused, "the AMX path was not taken")
        XCTAssertLessThan(maxRelative(amx.fused, widened.fused), 6e-3)
        XCTAssertLessThan(maxRelative(amx.dFused, widened.dFused), 6e-3)
    }

    /// With `rounded` the kernel stores its output, and dQKV besides the fp32 one, rounded to the
    /// 16-bit format as it finishes each row or head: the bits of the fp32 results rounded
    /// afterwards (the model's 16-bit operands, on either path).
    func testRoundedOutputsAreTheFP32OnesRounded() {
        let c = cases[0], (B, T, C, NH) = (c.B, c.T, c.C, c.NH), workers = ParallelFor.threads
        var rng = SplitMix64(seed: 21)
        let qkv = FloatBuffer(count: B * T * 3 * C), dout = FloatBuffer(count: B * T * C)
        for i in 0..<qkv.count { qkv[i] = Float(rng.nextUniform() * 4 - 2) }
        for i in 0..<dout.count { dout[i] = Float(rng.nextUniform() * 2 - 1) }
        let lse = FloatBuffer(count: B * NH * T), scratch = FloatBuffer(count: FusedAttention.scratchFloats(FP32.self, T: T, hs: C / NH) * workers)
        let out = FloatBuffer(count: B * T * C), dqkv = FloatBuffer(count: B * T * 3 * C), dqkvAgain = FloatBuffer(count: dqkv.count)
        FusedAttention.forward(FP32.self, out: out.pointer, lse: lse.pointer, qkv: qkv.pointer, scratch: scratch.pointer,
                               B: B, T: T, C: C, NH: NH, workers: workers)
        FusedAttention.backward(FP32.self, dqkv: dqkv.pointer, dout: dout.pointer, out: out.pointer, lse: lse.pointer,
                                qkv: qkv.pointer, scratch: scratch.pointer, B: B, T: T, C: C, NH: NH, workers: workers)
        for p in [Precision.bf16, .fp16] {
            var outLow = [UInt16](repeating: 0xABCD, count: out.count), expected = outLow
            p.narrow(out.pointer, into: &expected, out.count)
            outLow.withUnsafeMutableBufferPointer { o in
                FusedAttention.forward(FP32.self, out: out.pointer, rounded: (o.baseAddress!, p), lse: lse.pointer,
                                       qkv: qkv.pointer, scratch: scratch.pointer, B: B, T: T, C: C, NH: NH, workers: workers)
            }
            XCTAssertEqual(outLow, expected, "\(p) output")
            var dLow = [UInt16](repeating: 0xABCD, count: dqkv.count), dExpected = dLow
            p.narrow(dqkv.pointer, into: &dExpected, dqkv.count)
            dLow.withUnsafeMutableBufferPointer { d in
                FusedAttention.backward(FP32.self, dqkv: dqkvAgain.pointer, rounded: (d.baseAddress!, p), dout: dout.pointer,
                                        out: out.pointer, lse: lse.pointer, qkv: qkv.pointer, scratch: scratch.pointer,
                                        B: B, T: T, C: C, NH: NH, workers: workers)
            }
            XCTAssertEqual(dLow, dExpected, "\(p) dqkv")
            XCTAssertEqual(Array(UnsafeBufferPointer(start: dqkvAgain.pointer, count: dqkv.count)),
                           Array(UnsafeBufferPointer(start: dqkv.pointer, count: dqkv.count)), "\(p): the fp32 dqkv too")
            XCTAssertGreaterThan(Set(dLow).count, 1000, "a real gradient")
        }
    }

    /// The whole model: loss and every gradient within 1e-5 of the unfused model in fp32.
    func testModelGradientsMatchUnfused() {
        let T = FusedAttention.block + 40
        let c = GPTConfig(nLayer: 2, nHead: 2, nEmbd: 32, blockSize: T, vocabSize: 40, bias: true)
        var results: [(Double, [Float])] = []
        for kernel in AttentionKernel.allCases {
            let model = GPT(config: c, attention: kernel)
            let params = FloatBuffer(count: model.layout.count), grads = FloatBuffer(count: model.layout.count)
            GPT.initialize(params.pointer, layout: model.layout, config: c, seed: 3)
            let flat = FlatParameters(layout: model.layout, parameters: params.pointer, gradients: grads.pointer)
            var rng = SplitMix64(seed: 9)
            let tokens = (0..<(2 * T)).map { _ in Int32(rng.next(below: 40)) }
            let targets = (0..<(2 * T)).map { _ in Int32(rng.next(below: 40)) }
            let r = model.forward(tokens: tokens, targets: targets, B: 2, T: T, params: flat)
            model.backward(lossScale: Float(1.0 / Double(r.count)), params: flat)
            results.append((r.sum / Double(r.count), Array(UnsafeBufferPointer(start: grads.pointer, count: grads.count))))
        }
        XCTAssertEqual(results[0].0, results[1].0, accuracy: 1e-5 * results[1].0)
        XCTAssertLessThan(maxRelative(results[0].1, results[1].1), 1e-5)
    }

    /// A sequence's outputs and gradients are the same bits whatever else is in the batch
    /// (every task reads only its own sequence and head), in fp32 and in 16 bits (fp16 widens
    /// its blocks at every level, and forward's workers keep a head's widened keys between
    /// tasks: which worker ran what must not matter).
    func testSequencesDoNotDependOnTheBatch() {
        func check<F: ComputeFormat>(_: F.Type) {
            let T = 2 * FusedAttention.block + 20, C = 64, NH = 4, hs = 16
            var rng = SplitMix64(seed: 1)
            let qkv32 = FloatBuffer(count: 5 * T * 3 * C), dout32 = FloatBuffer(count: 5 * T * C)
            for i in 0..<qkv32.count { qkv32[i] = Float(rng.nextUniform() * 2 - 1) }
            for i in 0..<dout32.count { dout32[i] = Float(rng.nextUniform() * 2 - 1) }
            let qkv = AlignedBuffer<F.Element>(count: qkv32.count), dout = AlignedBuffer<F.Element>(count: dout32.count)
            F.commit(qkv32.pointer, into: qkv.pointer, qkv32.count)
            F.commit(dout32.pointer, into: dout.pointer, dout32.count)
            var outs: [[UInt32]] = [], grads: [[UInt32]] = []
            for B in [5, 2] {
                let out = FloatBuffer(count: B * T * C), lse = FloatBuffer(count: B * NH * T), dqkv = FloatBuffer(count: B * T * 3 * C)
                let kept = AlignedBuffer<F.Element>(count: out.count)
                let scratch = FloatBuffer(count: FusedAttention.scratchFloats(F.self, T: T, hs: hs) * ParallelFor.threads)
                FusedAttention.forward(F.self, out: out.pointer, lse: lse.pointer, qkv: qkv.pointer, scratch: scratch.pointer,
                                       B: B, T: T, C: C, NH: NH, workers: ParallelFor.threads)
                F.commit(out.pointer, into: kept.pointer, out.count)
                FusedAttention.backward(F.self, dqkv: dqkv.pointer, dout: dout.pointer, out: kept.pointer, lse: lse.pointer,
                                        qkv: qkv.pointer, scratch: scratch.pointer, B: B, T: T, C: C, NH: NH,
                                        workers: ParallelFor.threads)
                outs.append(out.toArray().prefix(2 * T * C).map(\.bitPattern))
                grads.append(dqkv.toArray().prefix(2 * T * 3 * C).map(\.bitPattern))
            }
            XCTAssertEqual(outs[0], outs[1], "\(F.precision) forward")
            XCTAssertEqual(grads[0], grads[1], "\(F.precision) backward")
        }
        check(FP32.self)
        check(BF16.self)
        check(FP16.self)
    }

    /// Saved activations: the fused kernel keeps one fp32 log-sum-exp per (head, position)
    /// where the unfused one keeps T² probabilities; at T = 1024 that is the gap between
    /// 4 KiB and 4 MiB per head per layer. Allocated buffers equal the formula.
    func testAttentionMemoryIsLinearInT() {
        let c = GPTConfig(nLayer: 12, nHead: 12, nEmbd: 768, blockSize: 1024, vocabSize: 50257, bias: true)
        func saved(_ k: AttentionKernel, T: Int) -> Int {
            Activations<FP32>.bytes(config: c, maxB: 1, maxT: T, workers: 2, attention: k).saved
        }
        for T in [256, 1024] {
            let perHead = c.nLayer * c.nHead
            XCTAssertEqual(saved(.unfused, T: T) - saved(.fused, T: T), perHead * 4 * (T * T - T), "T=\(T)")
        }
        // Doubling T doubles the fused model's saved bytes (everything is per position).
        XCTAssertEqual(saved(.fused, T: 1024), 2 * saved(.fused, T: 512))
        let small = GPTConfig(nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 200, vocabSize: 40, bias: true)
        for k in AttentionKernel.allCases {
            let a = Activations<BF16>(config: small, maxB: 2, maxT: 200, attention: k)
            let f = Activations<BF16>.bytes(config: small, maxB: 2, maxT: 200, workers: ParallelFor.threads, attention: k)
            XCTAssertEqual(a.savedBytes, f.saved, "\(k)")
            XCTAssertEqual(a.totalBytes, f.total, "\(k)")
        }
    }
}

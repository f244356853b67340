import CKernels
import Kernels

// MARK: - Low-precision layers
// The matmul layers with 16-bit operands (fp32 accumulation) that a bf16/fp16 model uses;
// everything else (LayerNorm, softmax, GELU, the loss) runs in fp32 from `Layers`.

extension Layers {
    /// `db += Σ_rows dout` for an N×OC gradient.
    public static func biasBackward(_ dbias: UnsafeMutablePointer<Float>?, dout: UnsafePointer<Float>, N: Int, OC: Int) {
        guard let dbias else { return }
        for r in 0..<N {
            let d = dout + r * OC
            for j in 0..<OC { dbias[j] += d[j] }
        }
    }

    /// `out (N×OC) = inp·Wᵀ + b` from 16-bit operands.
    public static func lowLinearForward(_ p: Precision, out: UnsafeMutablePointer<Float>, inp: UnsafePointer<UInt16>,
                                        weight: UnsafePointer<UInt16>, bias: UnsafePointer<Float>?, N: Int, IC: Int, OC: Int) {
        Gemm.lowGemm(p, .none, .transpose, m: N, n: OC, k: IC, a: inp, lda: IC, b: weight, ldb: IC, c: out, ldc: OC)
        if let bias { addBias(out, bias, N: N, OC: OC) }
    }

    /// `dinp = dout·W` (written) and `dW += doutᵀ·inp`, with `dout` already narrowed to
    /// `doutLow`; the bias gradient comes from the fp32 `dout`.
    public static func lowLinearBackward(_ p: Precision, dinp: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>,
                                         dbias: UnsafeMutablePointer<Float>?, dout: UnsafePointer<Float>,
                                         doutLow: UnsafePointer<UInt16>, inp: UnsafePointer<UInt16>,
                                         weight: UnsafePointer<UInt16>, N: Int, IC: Int, OC: Int) {
        Gemm.lowGemm(p, .none, .none, m: N, n: IC, k: OC, a: doutLow, lda: OC, b: weight, ldb: IC, c: dinp, ldc: IC)
        Gemm.lowGemm(p, .transpose, .none, m: OC, n: IC, k: N, a: doutLow, lda: OC, b: inp, ldb: IC, beta: 1,
                     c: dweight, ldc: IC)
        biasBackward(dbias, dout: dout, N: N, OC: OC)
    }

    /// Causal attention from a 16-bit QKV: scores and softmax in fp32 (`scores`, T×T per
    /// worker), the probabilities stored in 16 bits for backward, the output in fp32. Heads
    /// run as independent tasks over `workers` threads when the GEMM allows it (native bf16).
    public static func lowAttentionForward(_ p: Precision, out: UnsafeMutablePointer<Float>, att: UnsafeMutablePointer<UInt16>,
                                           qkv: UnsafePointer<UInt16>, scores: UnsafeMutablePointer<Float>,
                                           B: Int, T: Int, C: Int, NH: Int, workers: Int) {
        let hs = C / NH
        let scale = 1 / Float(hs).squareRoot()
        ParallelFor.tasks(B * NH, workers: Gemm.lowGemmIsReentrant(p) ? workers : 1) { task, worker in
            let b = task / NH, h = task % NH
            let s = scores + worker * T * T
            let q = qkv + b * T * 3 * C + h * hs
            let probs = att + task * T * T
            Gemm.lowGemm(p, .none, .transpose, m: T, n: T, k: hs, a: q, lda: 3 * C, b: q + C, ldb: 3 * C, c: s, ldc: T)
            Vector.scale(s, T * T, by: scale)
            causalSoftmaxRows(s, T)
            p.narrow(s, into: probs, T * T)
            Gemm.lowGemm(p, .none, .none, m: T, n: hs, k: T, a: probs, lda: T, b: q + 2 * C, ldb: 3 * C,
                         c: out + b * T * C + h * hs, ldc: C)
        }
    }

    /// Writes `dqkv` (fp32, B×T×3C) from `doutLow` (the narrowed output gradient); heads run
    /// as tasks as in the forward pass, with T×T scratch per worker in `scores`, `probs32`
    /// and `scoresLow`.
    public static func lowAttentionBackward(_ p: Precision, dqkv: UnsafeMutablePointer<Float>, doutLow: UnsafePointer<UInt16>,
                                            qkv: UnsafePointer<UInt16>, att: UnsafePointer<UInt16>,
                                            scores: UnsafeMutablePointer<Float>, probs32: UnsafeMutablePointer<Float>,
                                            scoresLow: UnsafeMutablePointer<UInt16>, B: Int, T: Int, C: Int, NH: Int,
                                            workers: Int) {
        let hs = C / NH
        let scale = 1 / Float(hs).squareRoot()
        ParallelFor.tasks(B * NH, workers: Gemm.lowGemmIsReentrant(p) ? workers : 1) { task, worker in
            let b = task / NH, h = task % NH
            let s = scores + worker * T * T, p32 = probs32 + worker * T * T, sLow = scoresLow + worker * T * T
            let q = qkv + b * T * 3 * C + h * hs
            let k = q + C, v = q + 2 * C
            let dq = dqkv + b * T * 3 * C + h * hs
            let probs = att + task * T * T
            let dy = doutLow + b * T * C + h * hs
            Gemm.lowGemm(p, .none, .transpose, m: T, n: T, k: hs, a: dy, lda: C, b: v, ldb: 3 * C, c: s, ldc: T)
            Gemm.lowGemm(p, .transpose, .none, m: T, n: hs, k: T, a: probs, lda: T, b: dy, ldb: C, c: dq + 2 * C, ldc: 3 * C)
            p.widen(probs, into: p32, T * T)
            causalSoftmaxBackwardRows(probs: p32, grad: s, T, scale: scale)
            p.narrow(s, into: sLow, T * T)
            Gemm.lowGemm(p, .none, .none, m: T, n: hs, k: T, a: sLow, lda: T, b: k, ldb: 3 * C, c: dq, ldc: 3 * C)
            Gemm.lowGemm(p, .transpose, .none, m: T, n: hs, k: T, a: sLow, lda: T, b: q, ldb: 3 * C, c: dq + C, ldc: 3 * C)
        }
    }
}

extension Layers {
    /// GELU of a 16-bit model: stores the rounded pre-activation `inp` in `pre` (backward
    /// reads it), and GELU of that rounded value, rounded, in `out`; one pass.
    public static func lowGeluForward(_ p: Precision, pre: UnsafeMutablePointer<UInt16>, out: UnsafeMutablePointer<UInt16>,
                                      inp: UnsafePointer<Float>, n: Int) {
        let bf = p == .bf16 ? Int32(1) : 0
        ParallelFor.chunks(n) { lo, hi in tessera_gelu_forward_low(bf, pre + lo, out + lo, inp + lo, Int64(hi - lo)) }
    }

    /// `dinp = dout · gelu'(pre)` from the stored 16-bit pre-activation, in fp32 and rounded
    /// into `dinpLow` (the next matmul's operand); `dinp` may alias `dout`.
    public static func lowGeluBackward(_ p: Precision, dinp: UnsafeMutablePointer<Float>, dinpLow: UnsafeMutablePointer<UInt16>,
                                       pre: UnsafePointer<UInt16>, dout: UnsafePointer<Float>, n: Int) {
        let bf = p == .bf16 ? Int32(1) : 0
        ParallelFor.chunks(n) { lo, hi in
            tessera_gelu_backward_low(bf, dinp + lo, dinpLow + lo, pre + lo, dout + lo, Int64(hi - lo))
        }
    }

    /// `out[b,t] = wte[token] + wpe[t]` from the 16-bit compute copy of the embeddings.
    public static func lowEmbeddingForward(_ p: Precision, out: UnsafeMutablePointer<Float>, tokens: UnsafePointer<Int32>,
                                           wte: UnsafePointer<UInt16>, wpe: UnsafePointer<UInt16>, B: Int, T: Int, C: Int) {
        withUnsafeTemporaryAllocation(of: Float.self, capacity: C) { row in
            let position = row.baseAddress!
            for t in 0..<T {
                p.widen(wpe + t * C, into: position, C)
                for b in 0..<B {
                    let o = out + (b * T + t) * C
                    p.widen(wte + Int(tokens[b * T + t]) * C, into: o, C)
                    for i in 0..<C { o[i] += position[i] }
                }
            }
        }
    }
}

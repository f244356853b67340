import CKernels
import Kernels

// MARK: - Layers
// Each layer is a forward/backward pair over raw pointers, shapes passed explicitly.
// Backward functions *accumulate* into parameter gradients (so micro-batches add up) and into
// input gradients where the input feeds a residual; they never allocate.

/// Forward and backward passes of the GPT building blocks.
public enum Layers {
    /// Variance epsilon of every LayerNorm (PyTorch's default).
    public static let layerNormEps: Float = 1e-5

    // MARK: Embedding

    /// `out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]`.
    public static func embeddingForward(out: UnsafeMutablePointer<Float>, tokens: UnsafePointer<Int32>,
                                        wte: UnsafePointer<Float>, wpe: UnsafePointer<Float>,
                                        B: Int, T: Int, C: Int) {
        for b in 0..<B {
            for t in 0..<T {
                let o = out + (b * T + t) * C
                let e = wte + Int(tokens[b * T + t]) * C
                let p = wpe + t * C
                for i in 0..<C { o[i] = e[i] + p[i] }
            }
        }
    }

    /// Scatters `dout` into the token and position embedding gradients.
    public static func embeddingBackward(dwte: UnsafeMutablePointer<Float>, dwpe: UnsafeMutablePointer<Float>,
                                         dout: UnsafePointer<Float>, tokens: UnsafePointer<Int32>,
                                         B: Int, T: Int, C: Int) {
        for b in 0..<B {
            for t in 0..<T {
                let d = dout + (b * T + t) * C
                let e = dwte + Int(tokens[b * T + t]) * C
                let p = dwpe + t * C
                for i in 0..<C { e[i] += d[i]; p[i] += d[i] }
            }
        }
    }

    // MARK: LayerNorm

    /// Normalises each of the `N` rows of width `C`; saves mean and 1/std for backward.
    public static func layerNormForward(out: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>,
                                        rstd: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>,
                                        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                                        N: Int, C: Int) {
        ParallelFor.chunks(N, minimum: max(1, 32_768 / C)) { lo, hi in
        for r in lo..<hi {
            let x = inp + r * C
            var m: Float = 0
            for i in 0..<C { m += x[i] }
            m /= Float(C)
            var v: Float = 0
            for i in 0..<C { let d = x[i] - m; v += d * d }
            v /= Float(C)
            let s = 1 / (v + layerNormEps).squareRoot()
            let o = out + r * C
            if let bias {
                for i in 0..<C { o[i] = (x[i] - m) * s * weight[i] + bias[i] }
            } else {
                for i in 0..<C { o[i] = (x[i] - m) * s * weight[i] }
            }
            mean[r] = m
            rstd[r] = s
        }
        }
    }

    /// Accumulates into `dinp`, `dweight` and `dbias` (when present).
    public static func layerNormBackward(dinp: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>,
                                         dbias: UnsafeMutablePointer<Float>?, dout: UnsafePointer<Float>,
                                         inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                                         mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
                                         N: Int, C: Int) {
        // Rows are independent for dinp; the weight and bias gradients sum over rows, so each
        // fixed block of rows sums into its own partial and the partials are added in order.
        let blockRows = 256
        let blocks = ParallelFor.blockCount(N, size: blockRows)
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * blocks * C) { partial in
            let pw = partial.baseAddress!, pb = pw + blocks * C
            pw.initialize(repeating: 0, count: 2 * blocks * C)
            ParallelFor.blocks(N, size: blockRows) { lo, hi, block in
                let dw = pw + block * C, db = pb + block * C
                for r in lo..<hi {
                    let x = inp + r * C, dy = dout + r * C, dx = dinp + r * C
                    let m = mean[r], s = rstd[r]
                    var dnormMean: Float = 0
                    var dnormNormMean: Float = 0
                    for i in 0..<C {
                        let norm = (x[i] - m) * s
                        let dnorm = weight[i] * dy[i]
                        dnormMean += dnorm
                        dnormNormMean += dnorm * norm
                    }
                    dnormMean /= Float(C)
                    dnormNormMean /= Float(C)
                    for i in 0..<C {
                        let norm = (x[i] - m) * s
                        let dnorm = weight[i] * dy[i]
                        dx[i] += (dnorm - dnormMean - norm * dnormNormMean) * s
                        dw[i] += norm * dy[i]
                    }
                    if dbias != nil { for i in 0..<C { db[i] += dy[i] } }
                }
            }
            for block in 0..<blocks {
                Vector.add(pw + block * C, into: dweight, C)
                if let dbias { Vector.add(pb + block * C, into: dbias, C) }
            }
        }
    }

    // MARK: Linear

    /// `out (N×OC) = inp (N×IC) · Wᵀ + b`, with `W` stored (OC×IC) as in `nn.Linear`.
    public static func linearForward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>,
                                     weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                                     N: Int, IC: Int, OC: Int) {
        Gemm.sgemm(.none, .transpose, m: N, n: OC, k: IC, a: inp, lda: IC, b: weight, ldb: IC,
                   beta: 0, c: out, ldc: OC)
        if let bias { addBias(out, bias, N: N, OC: OC) }
    }

    /// `out[r, :] += bias` for every row.
    public static func addBias(_ out: UnsafeMutablePointer<Float>, _ bias: UnsafePointer<Float>, N: Int, OC: Int) {
        ParallelFor.chunks(N, minimum: max(1, 32_768 / OC)) { lo, hi in
            for r in lo..<hi {
                let o = out + r * OC
                for j in 0..<OC { o[j] += bias[j] }
            }
        }
    }

    /// Writes (or with `accumulateInput` adds) `dinp = dout · W`; accumulates `dW += doutᵀ · inp`
    /// and `db += Σ_rows dout`.
    public static func linearBackward(dinp: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>,
                                      dbias: UnsafeMutablePointer<Float>?, dout: UnsafePointer<Float>,
                                      inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                                      N: Int, IC: Int, OC: Int, accumulateInput: Bool = false) {
        Gemm.sgemm(.none, .none, m: N, n: IC, k: OC, a: dout, lda: OC, b: weight, ldb: IC,
                   beta: accumulateInput ? 1 : 0, c: dinp, ldc: IC)
        Gemm.sgemm(.transpose, .none, m: OC, n: IC, k: N, a: dout, lda: OC, b: inp, ldb: IC,
                   beta: 1, c: dweight, ldc: IC)
        if let dbias {
            for r in 0..<N {
                let d = dout + r * OC
                for j in 0..<OC { dbias[j] += d[j] }
            }
        }
    }

    // MARK: GELU (tanh approximation)

    /// `out = 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))`.
    public static func geluForward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, n: Int) {
        ParallelFor.chunks(n) { lo, hi in tessera_gelu_forward(out + lo, inp + lo, Int64(hi - lo)) }
    }

    /// Writes `dinp = dout · gelu'(inp)`.
    public static func geluBackward(dinp: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>,
                                    dout: UnsafePointer<Float>, n: Int) {
        ParallelFor.chunks(n) { lo, hi in tessera_gelu_backward(dinp + lo, inp + lo, dout + lo, Int64(hi - lo)) }
    }

    // MARK: Causal self-attention

    /// Multi-head causal attention over a packed `qkv` (B, T, 3C) tensor.
    ///
    /// Per (batch, head): scores = Q·Kᵀ/√hs by GEMM on strided views, causal softmax in place,
    /// `out` = P·V. `att` (B, NH, T, T) keeps the probabilities for backward; entries above the
    /// diagonal are zero.
    public static func attentionForward(out: UnsafeMutablePointer<Float>, att: UnsafeMutablePointer<Float>,
                                        qkv: UnsafePointer<Float>, B: Int, T: Int, C: Int, NH: Int, workers: Int) {
        let hs = C / NH
        let scale = 1 / Float(hs).squareRoot()
        ParallelFor.tasks(B * NH, workers: Gemm.sgemmIsReentrant ? workers : 1) { task, _ in
            let b = task / NH, h = task % NH
            let q = qkv + b * T * 3 * C + h * hs
            let k = q + C, v = q + 2 * C
            let p = att + task * T * T
            Gemm.sgemm(.none, .transpose, m: T, n: T, k: hs, alpha: scale, a: q, lda: 3 * C,
                       b: k, ldb: 3 * C, beta: 0, c: p, ldc: T)
            causalSoftmaxRows(p, T)
            Gemm.sgemm(.none, .none, m: T, n: hs, k: T, a: p, lda: T, b: v, ldb: 3 * C,
                       beta: 0, c: out + b * T * C + h * hs, ldc: C)
        }
    }

    /// Softmax of row t over columns 0...t; columns above the diagonal become 0.
    @inlinable static func causalSoftmaxRows(_ p: UnsafeMutablePointer<Float>, _ T: Int) {
        for t in 0..<T {
            let row = p + t * T
            var mx = -Float.infinity
            for j in 0...t where row[j] > mx { mx = row[j] }
            let sum = tessera_exp_shift_sum(row, Int64(t + 1), mx)
            let inv = 1 / sum
            for j in 0...t { row[j] *= inv }
            for j in (t + 1)..<max(T, t + 1) { row[j] = 0 }
        }
    }

    /// Causal softmax backward in place over a T×T block: `grad` holds dP on entry and
    /// `scale · P ⊙ (dP − rowsum(P ⊙ dP))` on exit, zero above the diagonal.
    @inlinable static func causalSoftmaxBackwardRows(probs: UnsafePointer<Float>, grad: UnsafeMutablePointer<Float>,
                                                     _ T: Int, scale: Float) {
        for t in 0..<T {
            let pr = probs + t * T, dr = grad + t * T
            var dot: Float = 0
            for j in 0...t { dot += pr[j] * dr[j] }
            for j in 0...t { dr[j] = pr[j] * (dr[j] - dot) * scale }
            for j in (t + 1)..<max(T, t + 1) { dr[j] = 0 }
        }
    }

    /// Writes `dqkv` (B, T, 3C) from `dout` (B, T, C); heads run as tasks over `workers`
    /// threads, and `scratch` holds T×T floats per worker.
    public static func attentionBackward(dqkv: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
                                         qkv: UnsafePointer<Float>, att: UnsafePointer<Float>,
                                         scratch: UnsafeMutablePointer<Float>,
                                         B: Int, T: Int, C: Int, NH: Int, workers: Int) {
        let hs = C / NH
        let scale = 1 / Float(hs).squareRoot()
        ParallelFor.tasks(B * NH, workers: Gemm.sgemmIsReentrant ? workers : 1) { task, worker in
            let b = task / NH, h = task % NH
            let ds = scratch + worker * T * T
            let q = qkv + b * T * 3 * C + h * hs
            let k = q + C, v = q + 2 * C
            let dq = dqkv + b * T * 3 * C + h * hs
            let dk = dq + C, dv = dq + 2 * C
            let p = att + task * T * T
            let dy = dout + b * T * C + h * hs
            // dP = dY · Vᵀ ; dV = Pᵀ · dY
            Gemm.sgemm(.none, .transpose, m: T, n: T, k: hs, a: dy, lda: C, b: v, ldb: 3 * C,
                       beta: 0, c: ds, ldc: T)
            Gemm.sgemm(.transpose, .none, m: T, n: hs, k: T, a: p, lda: T, b: dy, ldb: C,
                       beta: 0, c: dv, ldc: 3 * C)
            causalSoftmaxBackwardRows(probs: p, grad: ds, T, scale: 1)
            // dQ = dS · K · scale ; dK = dSᵀ · Q · scale
            Gemm.sgemm(.none, .none, m: T, n: hs, k: T, alpha: scale, a: ds, lda: T,
                       b: k, ldb: 3 * C, beta: 0, c: dq, ldc: 3 * C)
            Gemm.sgemm(.transpose, .none, m: T, n: hs, k: T, alpha: scale, a: ds, lda: T,
                       b: q, ldb: 3 * C, beta: 0, c: dk, ldc: 3 * C)
        }
    }

    // MARK: Cross-entropy

    /// Turns `logits` (N×V) into probabilities in place and returns the summed loss and the
    /// number of counted rows; rows whose target is negative (padding) are ignored.
    public static func softmaxCrossEntropyForward(logits: UnsafeMutablePointer<Float>,
                                                  targets: UnsafePointer<Int32>,
                                                  N: Int, V: Int) -> (sum: Double, count: Int) {
        // Rows in parallel; the loss sums per fixed block of rows, then in block order.
        let blockRows = 64
        let blocks = ParallelFor.blockCount(N, size: blockRows)
        return withUnsafeTemporaryAllocation(of: (Double, Int).self, capacity: blocks) { partial in
            let sums = partial.baseAddress!
            sums.initialize(repeating: (0, 0), count: blocks)
            ParallelFor.blocks(N, size: blockRows) { lo, hi, block in
                var total = 0.0, counted = 0
                for r in lo..<hi {
                    let row = logits + r * V
                    var mx = -Float.infinity
                    for j in 0..<V where row[j] > mx { mx = row[j] }
                    let sum = tessera_exp_shift_sum(row, Int64(V), mx)
                    let inv = 1 / sum
                    for j in 0..<V { row[j] *= inv }
                    let tgt = Int(targets[r])
                    if tgt >= 0 {
                        total -= Double(flog(max(row[tgt], Float.leastNormalMagnitude)))
                        counted += 1
                    }
                }
                sums[block] = (total, counted)
            }
            var total = 0.0, counted = 0
            for b in 0..<blocks { total += sums[b].0; counted += sums[b].1 }
            return (total, counted)
        }
    }

    /// Overwrites the probabilities with `dlogits = (p − onehot)·scale`; ignored rows get 0.
    public static func softmaxCrossEntropyBackward(probs: UnsafeMutablePointer<Float>,
                                                   targets: UnsafePointer<Int32>,
                                                   N: Int, V: Int, scale: Float) {
        ParallelFor.chunks(N, minimum: max(1, 32_768 / V)) { lo, hi in
            for r in lo..<hi {
                let row = probs + r * V
                let tgt = Int(targets[r])
                if tgt < 0 {
                    row.update(repeating: 0, count: V)
                    continue
                }
                for j in 0..<V { row[j] *= scale }
                row[tgt] -= scale
            }
        }
    }
}

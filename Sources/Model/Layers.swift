import Kernels
import Settings

// MARK: - Layers
// Each layer is a forward/backward pair over raw pointers, shapes passed explicitly.
// Backward functions *accumulate* into parameter gradients (so micro-batches add up) and into
// input gradients where the input feeds a residual; they never allocate.

/// Forward and backward passes of the GPT building blocks.
public enum Layers {
    /// Variance epsilon of every LayerNorm (PyTorch's default).
    public static let layerNormEps: Float = 1e-5

    // MARK: Embedding

    /// `out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]`, reading the tables in the compute format.
    public static func embeddingForward<F: ComputeFormat>(_: F.Type, out: UnsafeMutablePointer<Float>,
                                                          tokens: UnsafePointer<Int32>,
                                                          wte: UnsafePointer<F.Element>, wpe: UnsafePointer<F.Element>,
                                                          B: Int, T: Int, C: Int, starts: UnsafePointer<Int32>? = nil) {
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * C) { rows in
            let scratch = rows.baseAddress!
            if let starts {   // packed documents: positions restart at each document
                for r in 0..<(B * T) {
                    let position = F.widened(wpe + (r % T - Int(starts[r])) * C, scratch: scratch, C)
                    let token = F.widened(wte + Int(tokens[r]) * C, scratch: scratch + C, C)
                    let o = out + r * C
                    for i in 0..<C { o[i] = token[i] + position[i] }
                }
                return
            }
            for t in 0..<T {
                let position = F.widened(wpe + t * C, scratch: scratch, C)
                for b in 0..<B {
                    let o = out + (b * T + t) * C
                    let token = F.widened(wte + Int(tokens[b * T + t]) * C, scratch: scratch + C, C)
                    for i in 0..<C { o[i] = token[i] + position[i] }
                }
            }
        }
    }

    /// Scatters `dout` into the token and position embedding gradients.
    public static func embeddingBackward(dwte: UnsafeMutablePointer<Float>, dwpe: UnsafeMutablePointer<Float>,
                                         dout: UnsafePointer<Float>, tokens: UnsafePointer<Int32>,
                                         B: Int, T: Int, C: Int, starts: UnsafePointer<Int32>? = nil) {
        for b in 0..<B {
            for t in 0..<T {
                let d = dout + (b * T + t) * C
                let e = dwte + Int(tokens[b * T + t]) * C
                let p = dwpe + (t - Int(starts?[b * T + t] ?? 0)) * C
                for i in 0..<C { e[i] += d[i]; p[i] += d[i] }
            }
        }
    }

    // MARK: LayerNorm

    /// Normalises each of the `N` rows of width `C` into `out` in the compute format (a 16-bit
    /// row is rounded as it is computed, never written in fp32); saves mean and 1/std for
    /// backward.
    ///
    /// A row's sums run in 16 lanes (lane j takes elements j, j + 16, …; the lanes are added,
    /// then the last C mod 16 elements): a fixed order for a given C, so results are
    /// reproducible, without one add waiting on the previous for each of C elements.
    public static func layerNormForward<F: ComputeFormat>(_: F.Type, out: UnsafeMutablePointer<F.Element>,
                                                          mean: UnsafeMutablePointer<Float>,
                                                          rstd: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>,
                                                          weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                                                          N: Int, C: Int) {
        ParallelFor.chunks(N, minimum: max(1, 32_768 / C)) { lo, hi in
            LayerNormRows.forward(out: UnsafeMutableRawPointer(out + lo * C), precision: F.precision, mean: mean + lo,
                                  rstd: rstd + lo, inp: inp + lo * C, weight: weight, bias: bias, rows: hi - lo, C: C,
                                  eps: layerNormEps)
        }
    }

    /// `layerNormForward` of the residual sum `sum + addend`, which is stored into `sum` row
    /// by row as it is formed: the bits of adding first and normalising after, in one pass.
    public static func layerNormForward<F: ComputeFormat>(_: F.Type, out: UnsafeMutablePointer<F.Element>,
                                                          mean: UnsafeMutablePointer<Float>,
                                                          rstd: UnsafeMutablePointer<Float>, sum: UnsafeMutablePointer<Float>,
                                                          adding addend: UnsafePointer<Float>,
                                                          weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                                                          N: Int, C: Int) {
        ParallelFor.chunks(N, minimum: max(1, 32_768 / C)) { lo, hi in
            LayerNormRows.forward(out: UnsafeMutableRawPointer(out + lo * C), precision: F.precision, mean: mean + lo,
                                  rstd: rstd + lo, sum: sum + lo * C, adding: addend + lo * C, weight: weight, bias: bias,
                                  rows: hi - lo, C: C, eps: layerNormEps)
        }
    }

    /// Accumulates into `dinp`, `dweight` and `dbias` (when present: a frozen LayerNorm has
    /// neither). With `rounded`, also stores each row of `dinp` once accumulated rounded to
    /// that 16-bit format in `rounded.into` (the next product's operand, while the row is in
    /// cache).
    public static func layerNormBackward(dinp: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>?,
                                         dbias: UnsafeMutablePointer<Float>?, dout: UnsafePointer<Float>,
                                         inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                                         mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
                                         N: Int, C: Int,
                                         rounded: (into: UnsafeMutablePointer<UInt16>, precision: Precision)? = nil) {
        // Rows are independent for dinp; the weight and bias gradients sum over rows, so each
        // fixed block of rows sums into its own partial and the partials are added in order.
        let blockRows = 256
        let blocks = ParallelFor.blockCount(N, size: blockRows)
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * blocks * C) { partial in
            let pw = partial.baseAddress!, pb = pw + blocks * C
            pw.initialize(repeating: 0, count: 2 * blocks * C)
            ParallelFor.blocks(N, size: blockRows) { lo, hi, block in
                LayerNormRows.backward(dinp: dinp + lo * C, dweight: pw + block * C, dbias: dbias == nil ? nil : pb + block * C,
                                       dout: dout + lo * C, inp: inp + lo * C, weight: weight, mean: mean + lo,
                                       rstd: rstd + lo, rows: hi - lo, C: C,
                                       rounded: rounded.map { (into: $0.into + lo * C, precision: $0.precision) })
            }
            for block in 0..<blocks {
                if let dweight { Vector.add(pw + block * C, into: dweight, C) }
                if let dbias { Vector.add(pb + block * C, into: dbias, C) }
            }
        }
    }

    // MARK: Linear

    /// `out (N×OC) = inp (N×IC) · Wᵀ + b`, with `W` stored (OC×IC) as in `nn.Linear`; operands
    /// in the compute format, output and bias fp32.
    public static func linearForward<F: ComputeFormat>(_: F.Type, out: UnsafeMutablePointer<Float>,
                                                       inp: UnsafePointer<F.Element>, weight: UnsafePointer<F.Element>,
                                                       bias: UnsafePointer<Float>?, N: Int, IC: Int, OC: Int) {
        F.gemm(.none, .transpose, m: N, n: OC, k: IC, alpha: 1, a: inp, lda: IC, b: weight, ldb: IC,
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

    /// Writes `dinp = dout · W` and accumulates `dW += doutᵀ · inp` from `doutOperand` (the
    /// fp32 gradient `dout` as a compute-format operand), and `db += Σ_rows dout` in fp32;
    /// a frozen map (no `dweight`) gets `dinp` only, and without `dinp` (the caller computed it
    /// another way) only the parameters' gradients are computed.
    public static func linearBackward<F: ComputeFormat>(_: F.Type, dinp: UnsafeMutablePointer<Float>?,
                                                        dweight: UnsafeMutablePointer<Float>?,
                                                        dbias: UnsafeMutablePointer<Float>?, dout: UnsafePointer<Float>,
                                                        doutOperand: UnsafePointer<F.Element>,
                                                        inp: UnsafePointer<F.Element>, weight: UnsafePointer<F.Element>,
                                                        N: Int, IC: Int, OC: Int) {
        // Both products read the output gradient: where 16-bit operands are widened, once.
        Gemm.reusingWidenedOperands {
            if let dinp {
                F.gemm(.none, .none, m: N, n: IC, k: OC, alpha: 1, a: doutOperand, lda: OC, b: weight, ldb: IC,
                       beta: 0, c: dinp, ldc: IC)
            }
            if let dweight {
                F.gemm(.transpose, .none, m: OC, n: IC, k: N, alpha: 1, a: doutOperand, lda: OC, b: inp, ldb: IC,
                       beta: 1, c: dweight, ldc: IC)
            }
        }
        guard dweight != nil, let dbias else { return }
        // Split over columns, each summed over the rows in order: the bits of one thread.
        ParallelFor.chunks(OC, minimum: max(16, 32_768 / max(N, 1))) { lo, hi in
            Vector.addColumnSums(dout + lo, rows: N, cols: hi - lo, ld: OC, into: dbias + lo)
        }
    }

    // MARK: Causal self-attention

    /// Multi-head causal attention over a packed `qkv` (B, T, 3C) tensor.
    ///
    /// Per (batch, head), as a task on one of `workers` threads: scores = Q·Kᵀ/√hs by GEMM on
    /// strided views, causal softmax in fp32, `out` = P·V. `att` (B, NH, T, T) keeps the
    /// probabilities for backward, zero above the diagonal; `scores` is T×T fp32 per worker
    /// (16-bit formats compute there before rounding into `att`).
    public static func attentionForward<F: ComputeFormat>(_: F.Type, out: UnsafeMutablePointer<Float>,
                                                          att: UnsafeMutablePointer<F.Element>,
                                                          qkv: UnsafePointer<F.Element>, scores: UnsafeMutablePointer<Float>,
                                                          B: Int, T: Int, C: Int, NH: Int, workers: Int) {
        let hs = C / NH
        let scale = 1 / Float(hs).squareRoot()
        ParallelFor.tasks(B * NH, workers: F.gemmIsReentrant ? workers : 1) { task, worker in
            let b = task / NH, h = task % NH
            let q = qkv + b * T * 3 * C + h * hs
            let probs = att + task * T * T
            let s = F.workspace(for: probs, scratch: scores + worker * T * T)
            F.gemm(.none, .transpose, m: T, n: T, k: hs, alpha: scale, a: q, lda: 3 * C, b: q + C, ldb: 3 * C,
                   beta: 0, c: s, ldc: T)
            causalSoftmaxRows(s, T)
            F.commit(s, into: probs, T * T)
            F.gemm(.none, .none, m: T, n: hs, k: T, alpha: 1, a: probs, lda: T, b: q + 2 * C, ldb: 3 * C,
                   beta: 0, c: out + b * T * C + h * hs, ldc: C)
        }
    }

    /// Softmax of row t over columns 0...t; columns above the diagonal become 0.
    @inlinable static func causalSoftmaxRows(_ p: UnsafeMutablePointer<Float>, _ T: Int) {
        for t in 0..<T {
            let row = p + t * T
            let mx = Vector.maxValue(row, t + 1, startingAt: -.infinity)
            let sum = Vector.expShiftSum(row, t + 1, shift: mx)
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

    /// Per-worker T×T scratch of attention's backward: fp32 scores, and for 16-bit formats the
    /// widened probabilities and the rounded dS.
    public struct AttentionScratch<F: ComputeFormat> {
        public var scores: UnsafeMutablePointer<Float>
        public var probs: UnsafeMutablePointer<Float>
        public var gradient: UnsafeMutablePointer<F.Element>
        public init(scores: UnsafeMutablePointer<Float>, probs: UnsafeMutablePointer<Float>,
                    gradient: UnsafeMutablePointer<F.Element>) {
            self.scores = scores; self.probs = probs; self.gradient = gradient
        }
    }

    /// Writes `dqkv` (fp32, B×T×3C) from `dout` (the output gradient as an operand); heads run
    /// as tasks as in the forward pass.
    public static func attentionBackward<F: ComputeFormat>(_: F.Type, dqkv: UnsafeMutablePointer<Float>,
                                                           dout: UnsafePointer<F.Element>,
                                                           qkv: UnsafePointer<F.Element>, att: UnsafePointer<F.Element>,
                                                           scratch: AttentionScratch<F>,
                                                           B: Int, T: Int, C: Int, NH: Int, workers: Int) {
        let hs = C / NH
        let (softmaxScale, gemmScale) = F.attentionGradientScale(1 / Float(hs).squareRoot())
        ParallelFor.tasks(B * NH, workers: F.gemmIsReentrant ? workers : 1) { task, worker in
            let b = task / NH, h = task % NH
            let ds = scratch.scores + worker * T * T
            let q = qkv + b * T * 3 * C + h * hs
            let k = q + C, v = q + 2 * C
            let dq = dqkv + b * T * 3 * C + h * hs
            let dk = dq + C, dv = dq + 2 * C
            let p = att + task * T * T
            let dy = dout + b * T * C + h * hs
            // dP = dY · Vᵀ ; dV = Pᵀ · dY
            F.gemm(.none, .transpose, m: T, n: T, k: hs, alpha: 1, a: dy, lda: C, b: v, ldb: 3 * C,
                   beta: 0, c: ds, ldc: T)
            F.gemm(.transpose, .none, m: T, n: hs, k: T, alpha: 1, a: p, lda: T, b: dy, ldb: C,
                   beta: 0, c: dv, ldc: 3 * C)
            let p32 = F.widened(p, scratch: scratch.probs + worker * T * T, T * T)
            causalSoftmaxBackwardRows(probs: p32, grad: ds, T, scale: softmaxScale)
            let dsOperand = F.operand(ds, scratch: scratch.gradient + worker * T * T, T * T)
            // dQ = dS · K ; dK = dSᵀ · Q (each times the factor the format left for the GEMM)
            F.gemm(.none, .none, m: T, n: hs, k: T, alpha: gemmScale, a: dsOperand, lda: T,
                   b: k, ldb: 3 * C, beta: 0, c: dq, ldc: 3 * C)
            F.gemm(.transpose, .none, m: T, n: hs, k: T, alpha: gemmScale, a: dsOperand, lda: T,
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
                    let mx = Vector.maxValue(row, V, startingAt: -.infinity)   // a sequential scan's bits, in lanes
                    let sum = Vector.expShiftSum(row, V, shift: mx)
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
    /// With `rounded` (a 16-bit model, whose LM head reads only the gradient's operand) the
    /// probabilities stay and `dlogits` goes there instead, rounded: the same fp32 arithmetic
    /// then rounding, in one pass over the logits (gpt2's 51M per micro-batch) instead of two.
    public static func softmaxCrossEntropyBackward(probs: UnsafeMutablePointer<Float>,
                                                   targets: UnsafePointer<Int32>, N: Int, V: Int, scale: Float,
                                                   rounded: (into: UnsafeMutablePointer<UInt16>, precision: Precision)? = nil) {
        ParallelFor.chunks(N, minimum: max(1, 32_768 / V)) { lo, hi in
            for r in lo..<hi {
                let row = probs + r * V
                let tgt = Int(targets[r])
                if let rounded {
                    let out = rounded.into + r * V
                    if tgt < 0 { out.update(repeating: 0, count: V); continue }
                    rounded.precision.narrowScaled(row, by: scale, into: out, V)
                    var g = row[tgt] * scale
                    g -= scale
                    rounded.precision.narrowSerial(&g, into: out + tgt, 1)
                    continue
                }
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

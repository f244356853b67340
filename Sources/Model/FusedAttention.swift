import Kernels
import Settings

// MARK: - Fused causal attention

/// Causal attention block by block with an online softmax (FlashAttention-2's algorithm, on
/// CPU threads instead of GPU thread blocks).
///
/// Forward runs one task per (batch, head, query block): for each key block at or below the
/// diagonal, scores S = Q·Kᵀ/√hs by a small GEMM, the running row maximum and sum are updated
/// and the accumulated output rescaled, then O += P·V. Blocks above the diagonal are never
/// computed, no T×T tensor exists, and forward keeps only each row's log-sum-exp
/// `lse = max + log(sum)`. Backward runs one task per (batch, head), over key blocks then the
/// query blocks that see them: P = exp(S − lse) is recomputed, dV += Pᵀ·dO, dP = dO·Vᵀ,
/// dS = P ⊙ (dP − D) with D = rowsum(dO ⊙ O), dQ += dS·K, dK += dSᵀ·Q; the task owns its head's
/// columns of dQ, dK and dV, and the products add into them where they lie.
///
/// Products run single-threaded in their task on tessera's register tiles (`Gemm.taskBF16Gemm`,
/// `Gemm.taskSgemm`: without oneDNN's cost per call, and with its bits where they say so; fp32
/// ones below AVX-512 on oneDNN's sgemm, which beat an AVX2 tile), whatever backend the large
/// GEMMs use. bf16 where the CPU has bf16 dot products (AVX512-BF16)
/// multiplies Q, K, V and dO as stored and rounds P and dS to bf16 for their products, as
/// FlashAttention does on GPUs (about 1.7× the fp32 rate on these block shapes); elsewhere the
/// products run in fp32 on fp32 values, P and dS kept in fp32. A 16-bit model without bf16 dot
/// products (`widens`) has its stored Q, K, V, O and dO widened into the worker's scratch,
/// each value once per task: backward widens its head's Q and dO whole and each key block's K
/// and V as it starts it; forward a query block's Q, and its head's K and V as far as the
/// block sees, which the worker keeps for its next task of the same head (a head's tasks come
/// one after another). Widening each block as a product needed it had widened every Q and dO
/// block again for every key block (gpt2-1k bf16 capped at AVX2: 220 against 235 tokens/s
/// for fp32 copies of whole tensors made before the kernel, which this replaces). Each task's
/// arithmetic does not depend on which thread runs it, so results are reproducible and
/// recomputation gives the same bits.
///
/// With `starts` (packed documents: the first position of the document each position is in)
/// a query also ignores keys before its document's start: key blocks wholly before every
/// query's document are skipped, as blocks above the diagonal are.
public enum FusedAttention {
    /// Rows per query block and per key block (equal, so the diagonal falls inside one pair).
    public static let block = 128

    /// fp32 scratch per worker thread for sequence length `T` and head size `hs` in format `F`:
    /// a 16-bit format whose products run in fp32 (`widens`) adds room for a head's widened
    /// Q and dO (backward) or K and V (forward), and a block of each of the others.
    public static func scratchFloats<F: ComputeFormat>(_: F.Type, T: Int, hs: Int) -> Int {
        // Backward's P, dP and D, forward's S, output block and row statistics; the last block²
        // holds two bf16 blocks.
        let base = 3 * block * block + 2 * block * hs + T
        return base + (widens(F.self) ? 2 * T * hs + 2 * block * hs : 0)
    }

    /// Whether `F`'s block products run on native bf16 dot products here.
    static func nativeBF16<F: ComputeFormat>(_: F.Type) -> Bool { F.precision == .bf16 && Gemm.bf16IsNative }

    /// Whether a model computing in `F` keeps 16-bit Q, K, V, O and dO whose block products run
    /// in fp32 here (fp16, and bf16 without bf16 dot products): the kernel widens them into its
    /// scratch, each value once per task.
    public static func widens<F: ComputeFormat>(_: F.Type) -> Bool { F.isLow && !nativeBF16(F.self) }

    /// Stored fp32 values at `p` (the fp32-product path).
    @inline(__always)
    static func floats(_ p: UnsafeRawPointer) -> UnsafePointer<Float> { p.assumingMemoryBound(to: Float.self) }

    /// A 16-bit format's stored values at `p` as the bits they are.
    @inline(__always)
    static func bits(_ p: UnsafeRawPointer) -> UnsafePointer<UInt16> { p.assumingMemoryBound(to: UInt16.self) }

    /// The two bf16 blocks at the end of a worker's scratch, bound to `UInt16` for `body`.
    @inline(__always)
    static func withLowBlocks<R>(_ workerScratch: UnsafeMutablePointer<Float>, per: Int,
                                 _ body: (UnsafeMutablePointer<UInt16>, UnsafeMutablePointer<UInt16>) -> R) -> R {
        (workerScratch + per - block * block).withMemoryRebound(to: UInt16.self, capacity: 2 * block * block) {
            body($0, $0 + block * block)
        }
    }

    /// The scores S = Q·Kᵀ/√hs of a block pair into `s` (row stride `block`), part by part,
    /// from `queries` and `keys` (rows `ld` apart): fp32 products on fp32 values, or bf16 dot
    /// products on bf16 ones (`native`). Forward and backward both call this, so the
    /// probabilities backward recomputes are the bits forward used.
    static func scores(into s: UnsafeMutablePointer<Float>, pair: BlockPair, queries: UnsafeRawPointer,
                       keys: UnsafeRawPointer, ld: Int, hs: Int, scale: Float, native: Bool) {
        for part in 0..<pair.parts {
            let (r0, rows, seen) = pair.rows(part)
            if native {
                Gemm.taskBF16Gemm(.none, .transpose, m: rows, n: seen, k: hs, a: bits(queries) + r0 * ld, lda: ld,
                                  b: bits(keys), ldb: ld, c: s + r0 * block, ldc: block)
                for i in r0..<(r0 + rows) { Vector.scale(s + i * block, seen, by: scale) }
            } else {
                Gemm.taskSgemm(.none, .transpose, m: rows, n: seen, k: hs, alpha: scale, a: floats(queries) + r0 * ld, lda: ld,
                               b: floats(keys), ldb: ld, beta: 0, c: s + r0 * block, ldc: block)
            }
        }
    }

    /// Query/key blocks covering `T` positions.
    static func blocks(_ T: Int) -> Int { (T + block - 1) / block }

    /// One head's rows of a stored tensor as the block products read them: row r at
    /// `base + r·ld·size` bytes.
    struct HeadRows {
        let base: UnsafeRawPointer, ld: Int, size: Int
        @inline(__always) func row(_ r: Int) -> UnsafeRawPointer { base + r * ld * size }
        /// The rows from `r` on.
        @inline(__always) func from(_ r: Int) -> HeadRows { HeadRows(base: row(r), ld: ld, size: size) }
    }

    /// One head's part of a stored tensor (`head`: its row 0, rows `ld` apart) as the products
    /// read it: as stored, or, where the format `widens`, in `into` (rows `hs` apart), rows
    /// `first..<first+count` widened now (the rest already were, or are not read).
    @inline(__always)
    static func rows<E>(_ head: UnsafePointer<E>, ld: Int, first: Int = 0, count: Int, hs: Int, widen: Precision?,
                        into: UnsafeMutablePointer<Float>) -> HeadRows {
        guard let widen else { return HeadRows(base: UnsafeRawPointer(head), ld: ld, size: MemoryLayout<E>.stride) }
        if count > 0 {
            widen.widenRows(bits(head + first * ld), ld: ld, rows: count, cols: hs, into: into + first * hs, dstLD: hs)
        }
        return HeadRows(base: UnsafeRawPointer(into), ld: hs, size: MemoryLayout<Float>.stride)
    }

    // MARK: Forward

    /// Writes the attention output `out` (fp32, B×T×C) and the row log-sum-exps `lse`
    /// (B×NH×T) from a packed `qkv` (B×T×3C). With `rounded` (a 16-bit model's) the output goes
    /// there instead, rounded to that format as each row is finished: the bits of `out` rounded
    /// afterwards, without the fp32 tensor.
    public static func forward<F: ComputeFormat>(_: F.Type, out: UnsafeMutablePointer<Float>,
                                                 rounded: (into: UnsafeMutablePointer<UInt16>, precision: Precision)? = nil,
                                                 lse: UnsafeMutablePointer<Float>,
                                                 qkv: UnsafePointer<F.Element>, scratch: UnsafeMutablePointer<Float>,
                                                 B: Int, T: Int, C: Int, NH: Int, workers: Int,
                                                 dropout: DropoutPass? = nil, layer: Int = 0,
                                                 starts: UnsafePointer<Int32>? = nil) {
        let hs = C / NH, nb = blocks(T), per = scratchFloats(F.self, T: T, hs: hs)
        let scale = 1 / Float(hs).squareRoot(), native = nativeBF16(F.self)
        let widen = widens(F.self) ? F.precision : nil
        // Widened: which head's keys and values each worker holds, and how many rows of them.
        // A head's tasks come one after another, longest first, so a worker that takes several
        // widens that head's keys and values once rather than once per query block.
        let held = UnsafeMutablePointer<(head: Int, rows: Int)>.allocate(capacity: workers)
        held.initialize(repeating: (-1, 0), count: workers)
        defer { held.deallocate() }
        ParallelFor.tasks(B * NH * nb, workers: workers) { task, worker in
            let qb = nb - 1 - task % nb   // the longest rows first, so the queue ends evenly
            let bh = task / nb, b = bh / NH, h = bh % NH
            let s = scratch + worker * per, o = s + block * block
            let rowMax = o + block * hs, rowSum = rowMax + block
            let wq = rowSum + block, wk = wq + block * hs, wv = wk + T * hs   // widened Q block, K, V
            let t0 = qb * block, nq = min(block, T - t0)
            let head = qkv + b * T * 3 * C + h * hs
            let queryRows = rows(head + t0 * 3 * C, ld: 3 * C, count: nq, hs: hs, widen: widen, into: wq)
            let needed = t0 + nq   // keys this block's queries may see
            if held[worker].head != bh { held[worker] = (bh, 0) }
            let have = held[worker].rows, more = widen == nil ? 0 : max(0, needed - have)
            let keyRows = rows(head + C, ld: 3 * C, first: have, count: more, hs: hs, widen: widen, into: wk)
            let valueRows = rows(head + 2 * C, ld: 3 * C, first: have, count: more, hs: hs, widen: widen, into: wv)
            held[worker].rows = have + more
            let stream = dropout.map { Dropout.streamKey($0.keys[b], .attention, layer: layer, head: h) }
            rowMax.update(repeating: -.infinity, count: nq)
            rowSum.update(repeating: 0, count: nq)
            o.update(repeating: 0, count: nq * hs)
            // Starts only grow along a row: the block's first query has the earliest.
            let rowStarts = starts.map { $0 + b * T + t0 }
            let firstBlock = rowStarts.map { Int($0[0]) / block } ?? 0
            for kb in firstBlock...qb {
                let s0 = kb * block, nk = min(block, T - s0)
                let pair = BlockPair(nq: nq, nk: nk, diagonal: kb == qb)
                scores(into: s, pair: pair, queries: queryRows.base, keys: keyRows.row(s0), ld: queryRows.ld, hs: hs,
                       scale: scale, native: native)
                for i in 0..<nq {
                    let row = s + i * block
                    let seen = kb == qb ? i + 1 : nk   // keys this query may attend to: lo..<seen
                    let lo = rowStarts.map { max(0, Int($0[i]) - s0) } ?? 0
                    if lo >= seen { row.update(repeating: 0, count: nk); continue }   // all before its document
                    let mx = Vector.maxValue(row + lo, seen - lo, startingAt: rowMax[i])
                    let sum = Vector.expShiftSum(row + lo, seen - lo, shift: mx)
                    if lo > 0 { row.update(repeating: 0, count: lo) }
                    if seen < nk { (row + seen).update(repeating: 0, count: nk - seen) }
                    let correction = fexp(rowMax[i] - mx)   // 0 on the first block (max was −∞)
                    rowSum[i] = rowSum[i] * correction + sum
                    rowMax[i] = mx
                    if correction != 1 { Vector.scale(o + i * hs, hs, by: correction) }
                    // Dropout acts on the probabilities after normalisation; the sum above
                    // (the normaliser) is of the undropped ones.
                    if let d = dropout?.dropout, let stream {
                        let index = (t0 + i) * T + s0
                        for j in 0..<seen { row[j] *= d.factor(stream, index + j) }
                    }
                }
                if !native {
                    for part in 0..<pair.parts {
                        let (r0, rows, keys) = pair.rows(part)
                        Gemm.taskSgemm(.none, .none, m: rows, n: hs, k: keys, alpha: 1, a: s + r0 * block, lda: block,
                                       b: floats(valueRows.row(s0)), ldb: valueRows.ld, beta: 1, c: o + r0 * hs, ldc: hs)
                    }
                } else {
                    withLowBlocks(s, per: per) { p16, _ in
                        Precision.bf16.narrowSerial(s, into: p16, nq * block)
                        for part in 0..<pair.parts {
                            let (r0, rows, keys) = pair.rows(part)
                            Gemm.taskBF16Gemm(.none, .none, m: rows, n: hs, k: keys, a: p16 + r0 * block, lda: block,
                                              b: bits(valueRows.row(s0)), ldb: valueRows.ld, beta: 1, c: o + r0 * hs, ldc: hs)
                        }
                    }
                }
            }
            let first = b * T * C + t0 * C + h * hs, rowLSE = lse + bh * T + t0
            for i in 0..<nq {
                let inv = 1 / rowSum[i]
                if rounded != nil {
                    Vector.scale(o + i * hs, hs, by: inv)
                } else {
                    for d in 0..<hs { out[first + i * C + d] = o[i * hs + d] * inv }
                }
                rowLSE[i] = rowMax[i] + flog(rowSum[i])
            }
            if let rounded { rounded.precision.narrowRows(o, ld: hs, rows: nq, cols: hs, into: rounded.into + first, dstLD: C) }
        }
    }

    // MARK: Backward

    /// Writes `dqkv` (fp32, B×T×3C) from `dout` (the output gradient as an operand), the kept
    /// output `out` and log-sum-exps `lse`, and `qkv`; with `rounded` (a 16-bit model's) also
    /// `dqkv` rounded to that format, as the next product's operand, while each head's part is
    /// still in cache.
    public static func backward<F: ComputeFormat>(_: F.Type, dqkv: UnsafeMutablePointer<Float>,
                                                  rounded: (into: UnsafeMutablePointer<UInt16>, precision: Precision)? = nil,
                                                  dout: UnsafePointer<F.Element>,
                                                  out: UnsafePointer<F.Element>, lse: UnsafePointer<Float>,
                                                  qkv: UnsafePointer<F.Element>, scratch: UnsafeMutablePointer<Float>,
                                                  B: Int, T: Int, C: Int, NH: Int, workers: Int,
                                                  dropout: DropoutPass? = nil, layer: Int = 0,
                                                  starts: UnsafePointer<Int32>? = nil) {
        let hs = C / NH, nb = blocks(T), per = scratchFloats(F.self, T: T, hs: hs)
        let scale = 1 / Float(hs).squareRoot(), native = nativeBF16(F.self)
        let widen = widens(F.self) ? F.precision : nil
        ParallelFor.tasks(B * NH, workers: workers) { bh, worker in
            let b = bh / NH, h = bh % NH
            let p = scratch + worker * per, dp = p + block * block
            let delta = dp + block * block   // T values
            // Widened (16-bit, fp32 products): the head's Q and dO, once, and a block of K and V.
            let wq = delta + T, wdo = wq + T * hs, wk = wdo + T * hs, wv = wk + block * hs
            let head = qkv + b * T * 3 * C + h * hs, dhead = dqkv + b * T * 3 * C + h * hs
            let dy = dout + b * T * C + h * hs, y = out + b * T * C + h * hs
            let queryRows = rows(head, ld: 3 * C, count: T, hs: hs, widen: widen, into: wq)
            let gradientRows = rows(dy, ld: C, count: T, hs: hs, widen: widen, into: wdo)
            let rowLSE = lse + bh * T
            let stream = dropout.map { Dropout.streamKey($0.keys[b], .attention, layer: layer, head: h) }
            // D = rowsum(dO ⊙ O) = rowsum(P ⊙ dP), and this head's dQ, which key blocks add to
            // (with bf16 products a query block's first key block writes it instead: below).
            Vector.rowDots(F.self, into: delta, dy, ldg: C, y, ldo: C, rows: T, n: hs)
            if !native { for t in 0..<T { (dhead + t * 3 * C).update(repeating: 0, count: hs) } }
            for kb in 0..<nb {
                let s0 = kb * block, nk = min(block, T - s0)
                let keyRows = rows(head + C + s0 * 3 * C, ld: 3 * C, count: nk, hs: hs, widen: widen, into: wk)
                let valueRows = rows(head + 2 * C + s0 * 3 * C, ld: 3 * C, count: nk, hs: hs, widen: widen, into: wv)
                // dK and dV of the key block add up in place (each product adds into C once,
                // so from zero the bits of summing elsewhere and copying). With bf16 products
                // the diagonal pair, always the key block's first (no document starts after
                // its first query), writes them instead: its parts cover disjoint keys, and a
                // tile's sums start at +0 and so are never −0, so writing is adding to zero.
                let dk = dhead + s0 * 3 * C + C, dv = dk + C
                if !native {
                    for j in 0..<nk {
                        (dk + j * 3 * C).update(repeating: 0, count: hs)
                        (dv + j * 3 * C).update(repeating: 0, count: hs)
                    }
                }
                for qb in kb..<nb {
                    let t0 = qb * block, nq = min(block, T - t0)
                    let rowStarts = starts.map { $0 + b * T + t0 }
                    if let rowStarts, Int(rowStarts[0]) >= s0 + nk { continue }   // every query's document starts later
                    // The key block holding this block's first document start: the first one it
                    // meets (those before are skipped just above). With bf16 products that pair
                    // writes dQ's rows instead of adding to zeroed ones, as the diagonal pair does
                    // for dK and dV.
                    let firstKeyBlock = rowStarts.map { Int($0[0]) / block } ?? 0
                    let queryBlock = queryRows.from(t0), gradientBlock = gradientRows.from(t0)
                    let pair = BlockPair(nq: nq, nk: nk, diagonal: kb == qb)
                    scores(into: p, pair: pair, queries: queryBlock.base, keys: keyRows.base, ld: queryBlock.ld, hs: hs, scale: scale,
                           native: native)
                    for i in 0..<nq {
                        let row = p + i * block
                        let seen = kb == qb ? i + 1 : nk
                        let lo = min(seen, rowStarts.map { max(0, Int($0[i]) - s0) } ?? 0)
                        _ = Vector.expShiftSum(row + lo, seen - lo, shift: rowLSE[t0 + i])
                        if lo > 0 { row.update(repeating: 0, count: lo) }
                        if seen < nk { (row + seen).update(repeating: 0, count: nk - seen) }
                    }
                    // dP = dO·Vᵀ ; dS = P ⊙ (dP − D)/√hs (zero where P is: above the diagonal).
                    // With dropout the output used P̃ = P ⊙ M: dO·Vᵀ is dP̃, dP = dP̃ ⊙ M, and
                    // P becomes P̃ for dV (D = rowsum(dO ⊙ O) already is rowsum(P ⊙ dP)).
                    for part in 0..<pair.parts {
                        let (r0, rows, keys) = pair.rows(part)
                        if native {
                            Gemm.taskBF16Gemm(.none, .transpose, m: rows, n: keys, k: hs, a: bits(gradientBlock.row(r0)),
                                              lda: gradientBlock.ld, b: bits(valueRows.base), ldb: valueRows.ld, c: dp + r0 * block,
                                              ldc: block)
                        } else {
                            Gemm.taskSgemm(.none, .transpose, m: rows, n: keys, k: hs, alpha: 1, a: floats(gradientBlock.row(r0)),
                                           lda: gradientBlock.ld, b: floats(valueRows.base), ldb: valueRows.ld, beta: 0,
                                           c: dp + r0 * block, ldc: block)
                        }
                    }
                    // With bf16 products and no dropout, one kernel takes dS and both roundings
                    // below; otherwise this loop, then the conversions.
                    let fused = native && dropout == nil
                    for i in 0..<nq where !fused {
                        let pr = p + i * block, dr = dp + i * block, d = delta[t0 + i], keys = pair.keys(row: i)
                        if let drop = dropout?.dropout, let stream {
                            let index = (t0 + i) * T + s0
                            for j in 0..<keys {
                                let m = drop.factor(stream, index + j)
                                dr[j] = pr[j] * (dr[j] * m - d) * scale
                                pr[j] *= m
                            }
                        } else {
                            for j in 0..<keys { dr[j] = pr[j] * (dr[j] - d) * scale }
                        }
                    }
                    // dV += P̃ᵀ·dO and dK += dSᵀ·Q over each group of keys and the queries that
                    // see them; dQ += dS·K over each group of queries and the keys they see.
                    if !native {
                        for part in 0..<pair.parts {
                            let (c0, keys, q0, queries) = pair.keys(part)
                            Gemm.taskSgemm(.transpose, .none, m: keys, n: hs, k: queries, alpha: 1, a: p + q0 * block + c0,
                                           lda: block, b: floats(gradientBlock.row(q0)), ldb: gradientBlock.ld, beta: 1, c: dv + c0 * 3 * C,
                                           ldc: 3 * C)
                            Gemm.taskSgemm(.transpose, .none, m: keys, n: hs, k: queries, alpha: 1, a: dp + q0 * block + c0,
                                           lda: block, b: floats(queryBlock.row(q0)), ldb: queryBlock.ld, beta: 1, c: dk + c0 * 3 * C,
                                           ldc: 3 * C)
                            let (r0, rows, seen) = pair.rows(part)
                            Gemm.taskSgemm(.none, .none, m: rows, n: hs, k: seen, alpha: 1, a: dp + r0 * block, lda: block,
                                           b: floats(keyRows.base), ldb: keyRows.ld, beta: 1, c: dhead + (t0 + r0) * 3 * C,
                                           ldc: 3 * C)
                        }
                    } else {
                        withLowBlocks(p, per: per) { p16, ds16 in
                            if fused {
                                Vector.softmaxGradientBF16(p: p, dp: dp, ld: block, rows: nq, half: pair.half, keys: nk,
                                                           delta: delta + t0, scale: scale, p16: p16, ds16: ds16)
                            } else {
                                Precision.bf16.narrowSerial(p, into: p16, nq * block)
                                Precision.bf16.narrowSerial(dp, into: ds16, nq * block)
                            }
                            for part in 0..<pair.parts {
                                let (c0, keys, q0, queries) = pair.keys(part)
                                let first: Float = qb == kb ? 0 : 1, firstForQueries: Float = kb == firstKeyBlock ? 0 : 1
                                Gemm.taskBF16Gemm(.transpose, .none, m: keys, n: hs, k: queries, a: p16 + q0 * block + c0,
                                                  lda: block, b: bits(gradientBlock.row(q0)), ldb: gradientBlock.ld, beta: first,
                                                  c: dv + c0 * 3 * C, ldc: 3 * C)
                                Gemm.taskBF16Gemm(.transpose, .none, m: keys, n: hs, k: queries, a: ds16 + q0 * block + c0,
                                                  lda: block, b: bits(queryBlock.row(q0)), ldb: queryBlock.ld, beta: first,
                                                  c: dk + c0 * 3 * C, ldc: 3 * C)
                                let (r0, rows, seen) = pair.rows(part)
                                Gemm.taskBF16Gemm(.none, .none, m: rows, n: hs, k: seen, a: ds16 + r0 * block, lda: block,
                                                  b: bits(keyRows.base), ldb: keyRows.ld, beta: firstForQueries,
                                                  c: dhead + (t0 + r0) * 3 * C, ldc: 3 * C)
                            }
                        }
                    }
                }
            }
            if let rounded {
                for part in 0..<3 {
                    let at = b * T * 3 * C + part * C + h * hs
                    rounded.precision.narrowRows(dqkv + at, ld: 3 * C, rows: T, cols: hs, into: rounded.into + at, dstLD: 3 * C)
                }
            }
        }
    }
}

// MARK: - The diagonal's triangle

/// How a query block meets a key block in the products: whole, or on the diagonal (where
/// query i sees keys up to i only) in two parts, the first half of the queries against the
/// first half of the keys and the rest against all of them, so the masked quarter is skipped
/// (a sixth of the work at T = 256, where two of the three block pairs are diagonal).
struct BlockPair {
    let nq: Int, nk: Int
    /// Queries in the first part on the diagonal; 0 when the pair is one part.
    let half: Int

    init(nq: Int, nk: Int, diagonal: Bool) {
        self.nq = nq
        self.nk = nk
        half = diagonal && nq >= 32 ? nq / 2 : 0   // shorter blocks are not worth two products
    }

    /// Parts the products run in: 1 or 2.
    var parts: Int { half == 0 ? 1 : 2 }

    /// Part `i` as (first query, queries, keys 0..<keys they see).
    func rows(_ i: Int) -> (first: Int, count: Int, keys: Int) {
        half == 0 ? (0, nq, nk) : i == 0 ? (0, half, half) : (half, nq - half, nk)
    }

    /// Part `i` by keys, for products summing over queries (dV, dK): (first key, keys, first
    /// query that sees them, queries from there).
    func keys(_ i: Int) -> (first: Int, count: Int, firstQuery: Int, queries: Int) {
        half == 0 ? (0, nk, 0, nq) : i == 0 ? (0, half, 0, nq) : (half, nk - half, half, nq - half)
    }

    /// Keys computed for query `i` (the row's scores beyond are not written).
    func keys(row i: Int) -> Int { half == 0 || i >= half ? nk : half }
}

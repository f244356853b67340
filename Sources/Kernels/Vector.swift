import CKernels
import Settings

// MARK: - Vector helpers
// Small loops shared by several layers and the optimizer. Double accumulators where a sum
// over many elements feeds a decision (norms), so results do not drift with length.

/// Element-wise helpers over raw `Float` pointers.
public enum Vector {
    /// Sum of squares of `n` elements, accumulated in Double.
    @inlinable
    public static func sumOfSquares(_ x: UnsafePointer<Float>, _ n: Int) -> Double {
        tessera_sum_of_squares(x, Int64(n))
    }

    /// `x *= s` over `n` elements (in C at the CPU's level: one rounding each, the same bits at
    /// any width).
    @inlinable
    public static func scale(_ x: UnsafeMutablePointer<Float>, _ n: Int, by s: Float) {
        tessera_scale(x, Int64(n), s)
    }

    /// `sums[j] += Σ_r x[r·ld + j]` for `j < cols`, each column summed over the rows in order
    /// from its own value (on the calling thread; split the columns to share it out).
    @inlinable
    public static func addColumnSums(_ x: UnsafePointer<Float>, rows: Int, cols: Int, ld: Int,
                                     into sums: UnsafeMutablePointer<Float>) {
        tessera_column_sums(sums, x, Int64(rows), Int64(cols), Int64(ld))
    }

    /// `y += x` over `n` elements.
    @inlinable
    public static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, _ n: Int) {
        ParallelFor.chunks(n) { lo, hi in for i in lo..<hi { y[i] += x[i] } }
    }
}

// MARK: - Element-wise math (vectorised in C)

extension Vector {
    /// The largest of `initial` and `x[0..<n]` (NaN elements are skipped), in independent lanes.
    @inlinable
    public static func maxValue(_ x: UnsafePointer<Float>, _ n: Int, startingAt initial: Float) -> Float {
        tessera_max_value(x, Int64(n), initial)
    }

    /// Attention backward's softmax gradient where the block products take bf16, for `rows`
    /// rows `ld` apart, on row i's first `half` columns (rows before `half`) or `keys` (the
    /// rest): `dS = P·(dP − delta[i])·scale` written over `dp`, and P and dS rounded to bf16
    /// into `p16` and `ds16` (the same layout), in one pass: the bits of the loop and two
    /// conversions after it.
    @inlinable
    public static func softmaxGradientBF16(p: UnsafePointer<Float>, dp: UnsafeMutablePointer<Float>, ld: Int, rows: Int,
                                           half: Int, keys: Int, delta: UnsafePointer<Float>, scale: Float,
                                           p16: UnsafeMutablePointer<UInt16>, ds16: UnsafeMutablePointer<UInt16>) {
        tessera_softmax_gradient_bf16(p, dp, Int64(ld), Int64(rows), Int64(half), Int64(keys), delta, scale, p16, ds16)
    }

    /// `out[i] = Σ_c g[i·ldg + c]·o[i·ldo + c]` for `rows` rows of `n` values stored in `F`, each
    /// sum from +0 in column order, product then add (attention backward's D = rowsum(dO ⊙ O)).
    @inlinable
    public static func rowDots<F: ComputeFormat>(_: F.Type, into out: UnsafeMutablePointer<Float>,
                                                 _ g: UnsafePointer<F.Element>, ldg: Int, _ o: UnsafePointer<F.Element>,
                                                 ldo: Int, rows: Int, n: Int) {
        let format: Int32 = !F.isLow ? 0 : F.precision == .bf16 ? 1 : 2
        tessera_row_dots(format, out, g, Int64(ldg), o, Int64(ldo), Int64(rows), Int64(n))
    }

    /// In place `x[i] = e^(x[i] − shift)` over `n` elements; returns their sum (softmax numerators).
    @inlinable
    public static func expShiftSum(_ x: UnsafeMutablePointer<Float>, _ n: Int, shift: Float) -> Float {
        tessera_exp_shift_sum(x, Int64(n), shift)
    }

    /// One AdamW update over `n` elements in PyTorch's formula, from the gradients `grad[i]·gradScale`
    /// (clipping's factor, applied as each is read: the bits of scaling them first, without
    /// that pass): `stepSize` = lr / (1 − β1ᵗ),
    /// `invBias2Sqrt` = 1 / √(1 − β2ᵗ), `shrink` = 1 − lr·decay; with `rounded`, each updated
    /// parameter is also stored there in that 16-bit format (the bits `Precision.narrow`
    /// gives). Split over the rank's threads (each element's update is its own, so the split
    /// changes no bits): it moves 28 bytes per parameter, more than one thread moves at the
    /// memory's rate.
    @inlinable
    public static func adamW(param: UnsafeMutablePointer<Float>, grad: UnsafePointer<Float>, gradScale: Float = 1,
                             m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, _ n: Int,
                             beta1: Float, beta2: Float, stepSize: Float, invBias2Sqrt: Float, eps: Float, shrink: Float,
                             rounded: (into: UnsafeMutablePointer<UInt16>, precision: Precision)? = nil) {
        precondition(rounded.map { $0.precision.isLow } ?? true, "fp32 has no 16-bit form")
        let bf = rounded?.precision == .bf16 ? Int32(1) : 0
        ParallelFor.chunks(n) { lo, hi in
            tessera_adamw(param + lo, grad + lo, gradScale, m + lo, v + lo, Int64(hi - lo), beta1, beta2, stepSize, invBias2Sqrt,
                          eps, shrink, rounded.map { $0.into + lo }, bf)
        }
    }
}

/// GELU, tanh approximation: `0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))`.
public enum GELU {
    /// `out = gelu(inp)` over `n` elements, split over the rank's threads.
    public static func forward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, n: Int) {
        ParallelFor.chunks(n) { lo, hi in tessera_gelu_forward(out + lo, inp + lo, Int64(hi - lo)) }
    }

    /// `dinp = dout · gelu'(inp)`; `dinp` may alias `dout`.
    public static func backward(dinp: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>,
                                dout: UnsafePointer<Float>, n: Int) {
        ParallelFor.chunks(n) { lo, hi in tessera_gelu_backward(dinp + lo, inp + lo, dout + lo, Int64(hi - lo)) }
    }

    /// GELU of a 16-bit model in one pass: `pre = round(inp)` (backward reads it) and
    /// `out = round(gelu(pre))`.
    public static func forward(_ p: Precision, pre: UnsafeMutablePointer<UInt16>, out: UnsafeMutablePointer<UInt16>,
                               inp: UnsafePointer<Float>, n: Int) {
        let bf = p == .bf16 ? Int32(1) : 0
        ParallelFor.chunks(n) { lo, hi in tessera_gelu_forward_low(bf, pre + lo, out + lo, inp + lo, Int64(hi - lo)) }
    }

    /// `out = round(gelu(pre))` from a pre-activation already stored in 16 bits (a GEMM that
    /// rounds as it stores wrote it, or selective recomputation re-reads it).
    public static func forward(_ p: Precision, storedPre pre: UnsafePointer<UInt16>, out: UnsafeMutablePointer<UInt16>,
                               n: Int) {
        let bf = p == .bf16 ? Int32(1) : 0
        ParallelFor.chunks(n) { lo, hi in tessera_gelu_forward_stored(bf, pre + lo, out + lo, Int64(hi - lo)) }
    }

    /// `dinp = dout · gelu'(pre)` from the stored 16-bit pre-activation, in fp32 and rounded
    /// into `dinpLow` (the next matmul's operand); `dinp` may alias `dout`, or be nil where no
    /// one reads the fp32 values (saving their store).
    public static func backward(_ p: Precision, dinp: UnsafeMutablePointer<Float>?, dinpLow: UnsafeMutablePointer<UInt16>,
                                pre: UnsafePointer<UInt16>, dout: UnsafePointer<Float>, n: Int) {
        let bf = p == .bf16 ? Int32(1) : 0
        ParallelFor.chunks(n) { lo, hi in
            tessera_gelu_backward_low(bf, dinp.map { $0 + lo }, dinpLow + lo, pre + lo, dout + lo, Int64(hi - lo))
        }
    }
}

// MARK: - Checksums

/// A 64-bit FNV-1a over 8-byte words (bytes past a multiple of 8 are folded in one by one):
/// cheap enough to compare replicas of every tensor across ranks.
public enum Checksum {
    public static func fnv1a(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        let words = bytes.count / 8
        for i in 0..<words { h = (h ^ bytes.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self)) &* 0x100_0000_01b3 }
        for i in (8 * words)..<bytes.count { h = (h ^ UInt64(bytes[i])) &* 0x100_0000_01b3 }
        return h
    }
}

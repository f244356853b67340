import CKernels
import Settings

/// LayerNorm's per-row work in C, vectorised at the CPU's level (the threading and the
/// partial sums of the parameters' gradients stay with the caller). The bits are the same at
/// every level: each row's sums run in 16 lanes added in order, nothing fused.
public enum LayerNormRows {
    /// For `rows` rows of `C` values: `mean`, `rstd = 1/√(var + eps)` and
    /// `(x − mean)·rstd·weight (+ bias)` into `out`, which holds elements of `precision`
    /// (rounded to nearest even in 16 bits).
    @inlinable
    public static func forward(out: UnsafeMutableRawPointer, precision: Precision, mean: UnsafeMutablePointer<Float>,
                               rstd: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>,
                               weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?, rows: Int, C: Int,
                               eps: Float) {
        let (out32, out16) = destinations(out, precision)
        tessera_layernorm_forward(out32, out16, precision == .bf16 ? 1 : 0, mean, rstd, inp, weight, bias, Int64(rows),
                                  Int64(C), eps)
    }

    /// `forward` of the residual sum `sum[i] + addend[i]`, stored into `sum` as each row is
    /// read (one pass over the rows instead of an addition's pass and then LayerNorm's).
    @inlinable
    public static func forward(out: UnsafeMutableRawPointer, precision: Precision, mean: UnsafeMutablePointer<Float>,
                               rstd: UnsafeMutablePointer<Float>, sum: UnsafeMutablePointer<Float>,
                               adding addend: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                               bias: UnsafePointer<Float>?, rows: Int, C: Int, eps: Float) {
        let (out32, out16) = destinations(out, precision)
        tessera_layernorm_forward_sum(out32, out16, precision == .bf16 ? 1 : 0, mean, rstd, sum, addend, weight, bias,
                                      Int64(rows), Int64(C), eps)
    }

    /// `out` as fp32 values, or as 16-bit ones.
    @inlinable
    static func destinations(_ out: UnsafeMutableRawPointer,
                             _ precision: Precision) -> (UnsafeMutablePointer<Float>?, UnsafeMutablePointer<UInt16>?) {
        precision.isLow ? (nil, out.assumingMemoryBound(to: UInt16.self)) : (out.assumingMemoryBound(to: Float.self), nil)
    }

    /// For `rows` rows: accumulates the input gradient into `dinp`, and each row's terms of
    /// the weight (and bias) gradients into `dweight` (`dbias`) in row order; with `rounded`,
    /// also stores each finished row of `dinp` rounded to that format.
    @inlinable
    public static func backward(dinp: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>,
                                dbias: UnsafeMutablePointer<Float>?, dout: UnsafePointer<Float>,
                                inp: UnsafePointer<Float>, weight: UnsafePointer<Float>, mean: UnsafePointer<Float>,
                                rstd: UnsafePointer<Float>, rows: Int, C: Int,
                                rounded: (into: UnsafeMutablePointer<UInt16>, precision: Precision)?) {
        tessera_layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, Int64(rows), Int64(C),
                                   rounded?.into, rounded?.precision == .bf16 ? 1 : 0)
    }
}

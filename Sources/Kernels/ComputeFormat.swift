import Settings

// MARK: - ComputeFormat

/// The storage format of a model's matrix-multiply operands and saved activations: the Swift
/// form of llm.c's `floatX`. The model is written once, generic over it; this protocol holds
/// the few operations that differ between fp32 and the 16-bit formats.
///
/// Layers produce fp32 results (GEMMs accumulate in fp32, LayerNorm and softmax run in fp32).
/// A result that is kept, or fed to the next GEMM, is *committed* to the format: in fp32 the
/// layer wrote it in place and committing does nothing; in 16 bits it was written to fp32
/// scratch and is rounded into its 16-bit home.
public protocol ComputeFormat {
    /// One stored value: `Float`, or the bit pattern of a bf16/fp16 value.
    associatedtype Element: BitwiseCopyable

    /// The format as a setting.
    static var precision: Precision { get }

    /// `c = alpha·op(a)·op(b) + beta·c`, operands in this format, fp32 accumulation and output.
    static func gemm(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int, alpha: Float,
                     a: UnsafePointer<Element>, lda: Int, b: UnsafePointer<Element>, ldb: Int,
                     beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int)

    /// Whether `gemm` may run from several `ParallelFor.tasks` at once.
    static var gemmIsReentrant: Bool { get }

    /// Where a layer should write an fp32 result that will be kept in `destination`: the
    /// destination itself in fp32, else `scratch`.
    static func workspace(for destination: UnsafeMutablePointer<Element>,
                          scratch: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float>

    /// Stores `n` fp32 values from `workspace(for: destination, …)` into `destination`.
    static func commit(_ values: UnsafePointer<Float>, into destination: UnsafeMutablePointer<Element>, _ n: Int)

    /// `destination (N×OC) = inp (N×IC) · Wᵀ + bias` (`W` stored OC×IC) where this format's GEMM
    /// can round its own output as it stores it: the bits of `gemm` into `workspace(for:…)`, the
    /// bias added, then `commit`, without the fp32 pass over memory. `scratch` is
    /// `workspace(for:…)`'s scratch (N×OC floats), which the packing GEMM may use for partial
    /// sums. Returns false where it cannot (fp32, which writes in place anyway; the baseline
    /// level without bf16 dot products), and the caller takes that way instead.
    static func linearRounded(into destination: UnsafeMutablePointer<Element>, inp: UnsafePointer<Element>,
                              weight: UnsafePointer<Element>, bias: UnsafePointer<Float>?, N: Int, IC: Int, OC: Int,
                              scratch: UnsafeMutablePointer<Float>) -> Bool

    /// `destination (N×IC) = dout (N×OC) · W` (`W` stored OC×IC; a linear map's input
    /// gradient) where this format's GEMM can round its own output: the bits of `gemm` into
    /// fp32 and then `operand`, for the next product to read, without the fp32 tensor. Returns
    /// false where it cannot, as `linearRounded` does.
    static func inputGradientRounded(into destination: UnsafeMutablePointer<Element>, dout: UnsafePointer<Element>,
                                     weight: UnsafePointer<Element>, N: Int, IC: Int, OC: Int) -> Bool

    /// `n` fp32 values as a GEMM operand: themselves in fp32, else rounded into `scratch`.
    static func operand(_ values: UnsafePointer<Float>, scratch: UnsafeMutablePointer<Element>,
                        _ n: Int) -> UnsafePointer<Element>

    /// `n` stored values as fp32: themselves in fp32, else widened into `scratch`.
    static func widened(_ values: UnsafePointer<Element>, scratch: UnsafeMutablePointer<Float>,
                        _ n: Int) -> UnsafePointer<Float>

    /// GELU of the fp32 pre-activation `inp` (which is `workspace(for: pre, …)`): keeps the
    /// pre-activation in `pre` (rounded, so backward sees what forward used) and `gelu` of it in
    /// `out`.
    static func geluForward(pre: UnsafeMutablePointer<Element>, out: UnsafeMutablePointer<Element>,
                            inp: UnsafePointer<Float>, n: Int)

    /// `gelu(pre)` into `out` from a pre-activation already stored in the format: the `out` that
    /// `geluForward(pre:out:inp:n:)` writes when `inp` holds the same values.
    static func geluForward(storedPre pre: UnsafePointer<Element>, out: UnsafeMutablePointer<Element>, n: Int)

    /// `dinp = dout · gelu'(pre)` in fp32 (`dinp` may alias `dout`); returns it as the next
    /// GEMM's operand (rounded into `scratch` in 16 bits, in the same pass). A 16-bit format
    /// writes only the operand unless `keepFP32` (the fp32 values feed a bias gradient).
    static func geluBackward(dinp: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Element>,
                             pre: UnsafePointer<Element>, dout: UnsafePointer<Float>, n: Int,
                             keepFP32: Bool) -> UnsafePointer<Element>

    /// Where attention's backward applies the 1/√head-size factor: fp32 folds it into the
    /// dQ/dK GEMMs (alpha), the 16-bit formats into the softmax gradient before it is rounded
    /// to an operand (their GEMM has no alpha of its own). Returns (softmax factor, GEMM alpha).
    static func attentionGradientScale(_ scale: Float) -> (softmax: Float, gemm: Float)
}

extension ComputeFormat {
    /// Whether values are held in 16 bits (and need conversion scratch).
    @inlinable public static var isLow: Bool { precision.isLow }

    /// `pointer` seen as this format's elements (for 16-bit copies handed over as `UInt16`).
    @inlinable public static func elements<T>(_ pointer: UnsafeMutablePointer<T>) -> UnsafeMutablePointer<Element> {
        precondition(MemoryLayout<T>.stride == MemoryLayout<Element>.stride, "\(T.self) is not \(precision)")
        return UnsafeMutableRawPointer(pointer).assumingMemoryBound(to: Element.self)
    }
}

// MARK: - fp32

/// fp32 operands: results are written in place, nothing is converted.
public enum FP32: ComputeFormat {
    public typealias Element = Float
    public static let precision = Precision.fp32

    @inlinable
    public static func gemm(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int, alpha: Float,
                            a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                            beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        Gemm.sgemm(transA, transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
    }

    public static var gemmIsReentrant: Bool { Gemm.sgemmIsReentrant }

    @inlinable
    public static func workspace(for destination: UnsafeMutablePointer<Float>,
                                 scratch: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float> { destination }

    @inlinable
    public static func commit(_ values: UnsafePointer<Float>, into destination: UnsafeMutablePointer<Float>, _ n: Int) {
        if values != UnsafePointer(destination) { destination.update(from: values, count: n) }
    }

    public static func linearRounded(into destination: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>,
                                     weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                                     N: Int, IC: Int, OC: Int, scratch: UnsafeMutablePointer<Float>) -> Bool { false }

    public static func inputGradientRounded(into destination: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
                                            weight: UnsafePointer<Float>, N: Int, IC: Int, OC: Int) -> Bool { false }

    @inlinable
    public static func operand(_ values: UnsafePointer<Float>, scratch: UnsafeMutablePointer<Float>,
                               _ n: Int) -> UnsafePointer<Float> { values }

    @inlinable
    public static func widened(_ values: UnsafePointer<Float>, scratch: UnsafeMutablePointer<Float>,
                               _ n: Int) -> UnsafePointer<Float> { values }

    public static func geluForward(pre: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>,
                                   inp: UnsafePointer<Float>, n: Int) {
        GELU.forward(out: out, inp: inp, n: n)
    }

    public static func geluForward(storedPre pre: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, n: Int) {
        GELU.forward(out: out, inp: pre, n: n)
    }

    public static func geluBackward(dinp: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>,
                                    pre: UnsafePointer<Float>, dout: UnsafePointer<Float>, n: Int,
                                    keepFP32: Bool) -> UnsafePointer<Float> {
        GELU.backward(dinp: dinp, inp: pre, dout: dout, n: n)
        return UnsafePointer(dinp)
    }

    @inlinable
    public static func attentionGradientScale(_ scale: Float) -> (softmax: Float, gemm: Float) { (1, scale) }
}

// MARK: - bf16 and fp16

/// A 16-bit format: results go through fp32 scratch and are rounded to nearest even.
public protocol HalfFormat: ComputeFormat where Element == UInt16 {}

extension HalfFormat {
    /// bf16 runs on oneDNN's matmul where the CPU allows; otherwise the operands are widened
    /// (exactly) and multiplied in fp32. `alpha` scales the result after the product.
    @inlinable
    public static func gemm(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int, alpha: Float,
                            a: UnsafePointer<UInt16>, lda: Int, b: UnsafePointer<UInt16>, ldb: Int,
                            beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        Gemm.lowGemm(precision, transA, transB, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
        if alpha != 1 {
            precondition(beta == 0, "a 16-bit GEMM scales by alpha only a freshly written result")
            for r in 0..<m { Vector.scale(c + r * ldc, n, by: alpha) }
        }
    }

    public static var gemmIsReentrant: Bool { Gemm.lowGemmIsReentrant(precision) }

    @inlinable
    public static func workspace(for destination: UnsafeMutablePointer<UInt16>,
                                 scratch: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float> { scratch }

    @inlinable
    public static func commit(_ values: UnsafePointer<Float>, into destination: UnsafeMutablePointer<UInt16>, _ n: Int) {
        precision.narrow(values, into: destination, n)
    }

    public static func linearRounded(into destination: UnsafeMutablePointer<UInt16>, inp: UnsafePointer<UInt16>,
                                     weight: UnsafePointer<UInt16>, bias: UnsafePointer<Float>?,
                                     N: Int, IC: Int, OC: Int, scratch: UnsafeMutablePointer<Float>) -> Bool {
        if precision == .bf16 && Gemm.bf16IsNative {
            return Gemm.bf16RoundedGemm(.none, .transpose, m: N, n: OC, k: IC, a: inp, lda: IC, b: weight, ldb: IC,
                                        bias: bias, c: destination, ldc: OC)
        }
        return Gemm.packedRoundedGemm(precision, .none, .transpose, m: N, n: OC, k: IC, a: inp, lda: IC, b: weight,
                                      ldb: IC, bias: bias, c: destination, ldc: OC, partial: scratch)
    }

    public static func inputGradientRounded(into destination: UnsafeMutablePointer<UInt16>, dout: UnsafePointer<UInt16>,
                                            weight: UnsafePointer<UInt16>, N: Int, IC: Int, OC: Int) -> Bool {
        precision == .bf16 && Gemm.bf16RoundedGemm(.none, .none, m: N, n: IC, k: OC, a: dout, lda: OC, b: weight,
                                                    ldb: IC, bias: nil, c: destination, ldc: IC)
    }

    @inlinable
    public static func operand(_ values: UnsafePointer<Float>, scratch: UnsafeMutablePointer<UInt16>,
                               _ n: Int) -> UnsafePointer<UInt16> {
        precision.narrow(values, into: scratch, n)
        return UnsafePointer(scratch)
    }

    @inlinable
    public static func widened(_ values: UnsafePointer<UInt16>, scratch: UnsafeMutablePointer<Float>,
                               _ n: Int) -> UnsafePointer<Float> {
        precision.widen(values, into: scratch, n)
        return UnsafePointer(scratch)
    }

    public static func geluForward(pre: UnsafeMutablePointer<UInt16>, out: UnsafeMutablePointer<UInt16>,
                                   inp: UnsafePointer<Float>, n: Int) {
        GELU.forward(precision, pre: pre, out: out, inp: inp, n: n)
    }

    public static func geluForward(storedPre pre: UnsafePointer<UInt16>, out: UnsafeMutablePointer<UInt16>, n: Int) {
        GELU.forward(precision, storedPre: pre, out: out, n: n)
    }

    public static func geluBackward(dinp: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<UInt16>,
                                    pre: UnsafePointer<UInt16>, dout: UnsafePointer<Float>, n: Int,
                                    keepFP32: Bool) -> UnsafePointer<UInt16> {
        GELU.backward(precision, dinp: keepFP32 ? dinp : nil, dinpLow: scratch, pre: pre, dout: dout, n: n)
        return UnsafePointer(scratch)
    }

    @inlinable
    public static func attentionGradientScale(_ scale: Float) -> (softmax: Float, gemm: Float) { (scale, 1) }
}

/// bfloat16 operands (8-bit exponent, 8-bit significand).
public enum BF16: HalfFormat {
    public static let precision = Precision.bf16
}

/// IEEE binary16 operands (5-bit exponent, 11-bit significand).
public enum FP16: HalfFormat {
    public static let precision = Precision.fp16
}

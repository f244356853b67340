import CBLAS

// MARK: - GEMM

/// Whether a GEMM operand is used as stored or transposed.
public enum Transpose: Sendable {
    case none, transpose

    @usableFromInline var cblas: CBLAS_TRANSPOSE { self == .none ? CblasNoTrans : CblasTrans }
}

/// The matrix-multiply interface every layer uses. All matrices are row-major.
///
/// Computes `C = alpha * op(A) * op(B) + beta * C` with `op(A)` of shape m×k and `op(B)` of
/// shape k×n. Backed by OpenBLAS's `cblas_sgemm`; faster backends plug in here.
public enum Gemm {
    /// Single-precision GEMM, row-major, with explicit leading dimensions so callers can
    /// address strided sub-matrices (one attention head inside a packed QKV tensor).
    @inlinable
    public static func sgemm(_ transA: Transpose, _ transB: Transpose,
                             m: Int, n: Int, k: Int, alpha: Float = 1,
                             a: UnsafePointer<Float>, lda: Int,
                             b: UnsafePointer<Float>, ldb: Int,
                             beta: Float = 0,
                             c: UnsafeMutablePointer<Float>, ldc: Int) {
        cblas_sgemm(CblasRowMajor, transA.cblas, transB.cblas,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb),
                    beta, c, Int32(ldc))
    }

    /// Sets how many threads the BLAS backend may use (one rank's share of the cores).
    public static func setThreads(_ n: Int) {
        openblas_set_num_threads(Int32(max(1, n)))
    }

    /// Threads the BLAS backend currently uses.
    public static var threads: Int { Int(openblas_get_num_threads()) }
}

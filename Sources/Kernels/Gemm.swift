import CBLAS
import CKernels

// MARK: - GEMM

/// Whether a GEMM operand is used as stored or transposed.
public enum Transpose: Sendable {
    case none, transpose

    @usableFromInline var cblas: CBLAS_TRANSPOSE { self == .none ? CblasNoTrans : CblasTrans }
    @usableFromInline var flag: Int32 { self == .none ? 0 : 1 }
}

/// Which library runs fp32 matrix multiplies.
public enum GemmBackend: String, Codable, CaseIterable, Sendable {
    /// oneDNN's `dnnl_sgemm`: AVX-512 kernels, about twice OpenBLAS's Haswell kernel here,
    /// and far faster on the small per-head attention products.
    case onednn
    /// OpenBLAS `cblas_sgemm`.
    case openblas
}

/// The matrix-multiply interface every layer uses. All matrices are row-major.
///
/// Computes `C = alpha * op(A) * op(B) + beta * C` with `op(A)` of shape m×k and `op(B)` of
/// shape k×n. The backend is oneDNN unless `TESSERA_GEMM=openblas` is set.
public enum Gemm {
    /// The backend of the large products: `TESSERA_GEMM` if set, else oneDNN until a run
    /// chooses by measurement (`GemmChoice`).
    public nonisolated(unsafe) static var backend: GemmBackend = forced ?? .onednn

    /// The backend `TESSERA_GEMM` names, if it is set.
    public static var forced: GemmBackend? { getenv("TESSERA_GEMM").flatMap { GemmBackend(rawValue: String(cString: $0)) } }

    /// Why `TESSERA_GEMM` cannot be honoured (a name that is not a backend), or nil.
    public static var forcedBackendError: String? {
        guard let raw = getenv("TESSERA_GEMM"), forced == nil else { return nil }
        return "error: TESSERA_GEMM=\(String(cString: raw)) is not a GEMM backend: use onednn or openblas "
            + "(or unset it to choose by measurement)"
    }

    /// Single-precision GEMM, row-major, with explicit leading dimensions so callers can
    /// address strided sub-matrices (one attention head inside a packed QKV tensor).
    @inlinable
    public static func sgemm(_ transA: Transpose, _ transB: Transpose,
                             m: Int, n: Int, k: Int, alpha: Float = 1,
                             a: UnsafePointer<Float>, lda: Int,
                             b: UnsafePointer<Float>, ldb: Int,
                             beta: Float = 0,
                             c: UnsafeMutablePointer<Float>, ldc: Int) {
        if backend == .onednn {
            let rc = tessera_sgemm(transA.flag, transB.flag, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda),
                                   b, Int64(ldb), beta, c, Int64(ldc))
            precondition(rc == 0, "oneDNN sgemm failed for \(m)×\(n)×\(k)")
        } else {
            cblas_sgemm(CblasRowMajor, transA.cblas, transB.cblas,
                        Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb),
                        beta, c, Int32(ldc))
        }
    }

    /// Whether `sgemm` may run from several `ParallelFor.tasks` at once: oneDNN's does (it
    /// keeps no per-call state and runs single-threaded inside the task); OpenBLAS would
    /// start threads of its own in every task.
    public static var sgemmIsReentrant: Bool { backend == .onednn }

    /// A small product inside a `ParallelFor.tasks` task (an attention block), single-threaded
    /// on the task's thread whatever `backend` the large GEMMs use: on tessera's register tile
    /// (`blockSgemm`), or on oneDNN's sgemm should the tile decline.
    @inlinable
    public static func taskSgemm(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int, alpha: Float = 1,
                                 a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                                 beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        if blockSgemm(transA, transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta,
                      c: c, ldc: ldc) {
            return
        }
        onednnSgemm(transA, transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta,
                    c: c, ldc: ldc)
    }

    /// `C = alpha·op(A)·op(B) + beta·C` in fp32 on an AVX-512 register tile: each element's
    /// products fused-multiply-added along the depth in order, then scaled and added to C,
    /// without oneDNN's cost per call (on one Zen 5 thread a 32×32×32 product took its sgemm
    /// 0.74 µs and the tile 0.40; 128×64×128 8.9 and 8.2). With alpha a power of two these are
    /// the bits of oneDNN's sgemm (`onednnSgemm`) on attention's block shapes; other alphas
    /// (head sizes 32 and 128), which oneDNN applies before summing on some shapes, give
    /// results within a rounding of its. False, with C untouched, where it declines: below
    /// AVX-512 (an AVX2 tile was slower than oneDNN's AVX2 sgemm), or for a beta other than 0
    /// and 1.
    @inlinable
    public static func blockSgemm(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int, alpha: Float = 1,
                                  a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                                  beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) -> Bool {
        tessera_block_sgemm(transA.flag, transB.flag, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda),
                            b, Int64(ldb), beta, c, Int64(ldc)) == 0
    }

    /// `C = alpha·op(A)·op(B) + beta·C` on oneDNN's sgemm, single-threaded inside a task.
    @inlinable
    public static func onednnSgemm(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int, alpha: Float = 1,
                                   a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                                   beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        let rc = tessera_sgemm(transA.flag, transB.flag, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda),
                               b, Int64(ldb), beta, c, Int64(ldc))
        precondition(rc == 0, "oneDNN sgemm failed for \(m)×\(n)×\(k)")
    }

    /// Sets how many threads the GEMM backends may use (one rank's share of the cores).
    public static func setThreads(_ n: Int) {
        _ = tessera_cpu_level()   // settles TESSERA_ISA (and oneDNN's cap) before the first GEMM
        openblas_set_num_threads(Int32(max(1, n)))
        tessera_set_threads(Int32(max(1, n)))
        ParallelFor.threads = max(1, n)
    }

    /// Threads the GEMM backend currently uses.
    public static var threads: Int { backend == .onednn ? Int(tessera_get_threads()) : Int(openblas_get_num_threads()) }
}

#if canImport(Glibc)
import Glibc
#endif

import Comm
import Kernels
import Model
import Settings

// MARK: - PowerSGD

/// Low-rank gradient compression for DDP (Vogels et al., "PowerSGD", NeurIPS 2019), as
/// PyTorch's `powerSGD_hook` does it: each weight matrix M (n×m) of the gradient travels as
/// two thin factors instead of n·m values.
///
/// One power-iteration step per optimizer step, warm-started from the last step's Q (m×r,
/// the same on every rank):
///
///     M ← M + e                    (error feedback: what earlier steps failed to send)
///     P = Σᵣ M·Q,   orthonormalise P's columns         (all-reduce of n·r values)
///     Q = Σᵣ Mᵀ·P                                        (all-reduce of m·r values)
///     M̂ = P·Qᵀ,     e ← M − M̂/N                        (the rank's share of the residual)
///
/// Rank r's M is its contribution to the summed gradient, so M̂ approximates the sum (the
/// projection of the full gradient onto span P). Matrices whose factors would not be at
/// least `minimumCompression` times smaller, and every vector (biases, LayerNorm), travel
/// uncompressed in one all-reduce. All factors of a step travel in one all-reduce each.
public final class PowerSGD {
    /// A compressed tensor: where it lives in the flat buffer and its factors' offsets.
    struct Matrix { let offset: Int, rows: Int, cols: Int, p: Int, q: Int }

    public let rank: Int
    /// Steps that all-reduce uncompressed first (PyTorch's `start_powerSGD_iter`): early
    /// gradients change too fast for a warm-started low-rank estimate.
    public let startStep: Int
    /// Steps this compressor has seen (the trainer sets it on resume).
    public var step = 0
    let comm: Communicator
    let matrices: [Matrix]
    /// Tensors sent whole.
    let uncompressed: [Range<Int>]
    /// The factors of every matrix, one after another; the uncompressed values' staging.
    let p: FloatBuffer, q: FloatBuffer, rest: FloatBuffer
    /// Error feedback, in the gradient's layout (zero outside compressed matrices): this rank's own.
    public let error: FloatBuffer

    /// Compression pays only at this ratio or more (PyTorch's `min_compression_rate`).
    public static let minimumCompression = 2.0

    /// A compressor of `layout`'s gradients at `rank`, compressing from step `startStep`.
    /// Q starts from a seeded normal draw, identical on every rank.
    public init(layout: ParameterLayout, comm: Communicator, rank: Int, startStep: Int, seed: UInt64 = 0x5057_5347_4400) {
        self.rank = rank; self.startStep = startStep; self.comm = comm
        var matrices: [Matrix] = [], uncompressed: [Range<Int>] = []
        var pCount = 0, qCount = 0
        for t in layout.tensors {
            let range = t.offset..<(t.offset + t.count)
            guard let (n, m) = Self.compressedShape(t.shape, rank: rank) else { uncompressed.append(range); continue }
            matrices.append(Matrix(offset: t.offset, rows: n, cols: m, p: pCount, q: qCount))
            pCount += n * rank; qCount += m * rank
        }
        self.matrices = matrices; self.uncompressed = uncompressed
        p = FloatBuffer(count: pCount); q = FloatBuffer(count: qCount)
        rest = FloatBuffer(count: uncompressed.reduce(0) { $0 + $1.count })
        error = FloatBuffer(count: layout.count)
        error.zero()
        var rng = SplitMix64(seed: seed)
        for i in 0..<qCount { q[i] = Float(rng.nextNormal()) }
    }

    /// (rows, columns) of a tensor worth compressing at `rank`, or nil: a matrix whose n·m
    /// values are at least `minimumCompression` times its (n + m)·r factor values.
    static func compressedShape(_ shape: [Int], rank: Int) -> (Int, Int)? {
        guard shape.count == 2, rank > 0 else { return nil }
        let n = shape[0], m = shape[1]
        return Double(n * m) >= minimumCompression * Double((n + m) * rank) ? (n, m) : nil
    }

    /// Whether this step compresses.
    public var compresses: Bool { step >= startStep }

    /// Bytes of the compressor's own buffers.
    public var bytes: Int { p.byteCount + q.byteCount + rest.byteCount + error.byteCount }
    public static let workingName = "PowerSGD factors, error feedback, uncompressed staging"

    /// The sizes of a compressor of `layout` at `rank`, from the layout alone: the elements
    /// of its three all-reduces (P, Q, uncompressed) and its bytes (what `bytes` will be).
    public static func plan(layout: ParameterLayout, rank: Int) -> (p: Int, q: Int, rest: Int, bytes: Int) {
        var p = 0, q = 0, rest = 0
        for t in layout.tensors {
            if let (n, m) = compressedShape(t.shape, rank: rank) { p += n * rank; q += m * rank } else { rest += t.count }
        }
        return (p, q, rest, 4 * (p + q + rest + layout.count))
    }

    /// Elements one rank sends in a compressed step on `ranks` ranks (ring all-reduces).
    public static func sentElements(layout: ParameterLayout, rank: Int, ranks: Int) -> Int {
        let c = plan(layout: layout, rank: rank)
        return [c.p, c.q, c.rest].reduce(0) { $0 + RingTraffic.allReduce(count: $1, ranks: ranks) }
    }

    // MARK: One step

    /// Replaces this rank's gradient contributions `grads` (summing over ranks to the
    /// gradient) by the compressed estimate of their sum, identical on every rank.
    public func reduce(_ grads: UnsafeMutablePointer<Float>) throws(CommError) {
        let r = rank, inverseRanks = 1 / Float(comm.size)
        // The uncompressed tensors start first, and travel while the factors are computed.
        var o = 0
        for range in uncompressed { (rest.pointer + o).update(from: grads + range.lowerBound, count: range.count); o += range.count }
        let restRequest = comm.startAllReduce(UnsafeMutableRawPointer(rest.pointer), count: rest.count, dtype: .float32, op: .sum,
                                              label: "all-reduce of uncompressed gradients (PowerSGD)")
        for x in matrices {
            let mat = grads + x.offset
            Vector.add(error.pointer + x.offset, into: mat, x.rows * x.cols)
            Gemm.sgemm(.none, .none, m: x.rows, n: r, k: x.cols, a: mat, lda: x.cols, b: q.pointer + x.q, ldb: r,
                       c: p.pointer + x.p, ldc: r)
        }
        try comm.wait(comm.startAllReduce(UnsafeMutableRawPointer(p.pointer), count: p.count, dtype: .float32, op: .sum,
                                          label: "all-reduce of PowerSGD factors P"))
        for x in matrices {
            Self.orthonormalizeColumns(p.pointer + x.p, rows: x.rows, cols: r)
            Gemm.sgemm(.transpose, .none, m: x.cols, n: r, k: x.rows, a: grads + x.offset, lda: x.cols, b: p.pointer + x.p, ldb: r,
                       c: q.pointer + x.q, ldc: r)
        }
        try comm.wait(comm.startAllReduce(UnsafeMutableRawPointer(q.pointer), count: q.count, dtype: .float32, op: .sum,
                                          label: "all-reduce of PowerSGD factors Q"))
        for x in matrices {
            let mat = grads + x.offset, e = error.pointer + x.offset, count = x.rows * x.cols
            e.update(from: mat, count: count)
            Gemm.sgemm(.none, .transpose, m: x.rows, n: x.cols, k: r, a: p.pointer + x.p, lda: r, b: q.pointer + x.q, ldb: r,
                       c: mat, ldc: x.cols)
            // e = M − M̂/N: this rank's share of what the estimate left out.
            ParallelFor.chunks(count) { lo, hi in for i in lo..<hi { e[i] -= mat[i] * inverseRanks } }
        }
        try comm.wait(restRequest)
        o = 0
        for range in uncompressed { (grads + range.lowerBound).update(from: rest.pointer + o, count: range.count); o += range.count }
    }

    /// Gram–Schmidt on the columns of a row-major rows×cols matrix (PyTorch's
    /// `_orthogonalize_gram_schmidt`), wholly in double and rounded once at the end: when the
    /// gradient's rank is below r, a column is the rounding left after removing the others,
    /// and rounding each subtraction to fp32 would leave it far from orthogonal.
    static func orthonormalizeColumns(_ a: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
        var w = [Double](repeating: 0, count: rows * cols)
        for i in 0..<(rows * cols) { w[i] = Double(a[i]) }
        for i in 0..<cols {
            var norm = 0.0
            for k in 0..<rows { norm += w[k * cols + i] * w[k * cols + i] }
            let s = 1 / (norm.squareRoot() + 1e-30)
            for k in 0..<rows { w[k * cols + i] *= s }
            for j in (i + 1)..<max(i + 1, cols) {
                var dot = 0.0
                for k in 0..<rows { dot += w[k * cols + i] * w[k * cols + j] }
                for k in 0..<rows { w[k * cols + j] -= dot * w[k * cols + i] }
            }
        }
        for i in 0..<(rows * cols) { a[i] = Float(w[i]) }
    }

    // MARK: Checkpoint state

    /// Q of every matrix, written at the matrix's own offset of a Ψ-sized vector (m·r ≤ n·m
    /// values fit; zeros elsewhere compress to nothing): elements `range` of it.
    public func packedQ(range: Range<Int>, into out: UnsafeMutablePointer<Float>) {
        out.update(repeating: 0, count: range.count)
        for x in matrices {
            let lo = max(range.lowerBound, x.offset), hi = min(range.upperBound, x.offset + x.cols * rank)
            if lo < hi { (out + (lo - range.lowerBound)).update(from: q.pointer + x.q + (lo - x.offset), count: hi - lo) }
        }
    }

    /// Restores Q from its packed vector: `read(range, dest)` fills each matrix's elements of it.
    public func loadQ(_ read: (Range<Int>, UnsafeMutablePointer<Float>) throws -> Void) rethrows {
        for x in matrices { try read(x.offset..<(x.offset + x.cols * rank), q.pointer + x.q) }
    }
}

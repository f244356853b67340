import Kernels

// MARK: - Activations

/// Everything forward keeps for backward, plus backward's scratch, sized for a maximum
/// micro-batch `B`×`T`; smaller batches or shorter sequences use a prefix of each buffer.
///
/// Tensors that are only ever matmul operands (LayerNorm outputs, QKV, attention
/// probabilities and output, MLP hidden states) are kept in the compute format `F`. The
/// residual stream, LayerNorm statistics and logits stay fp32, because LayerNorm's backward
/// and the loss need full precision.
public final class Activations<F: ComputeFormat> {
    /// Capacity in sequences and positions.
    public let maxB: Int, maxT: Int

    let residual: [FloatBuffer]   // nLayer + 1 of (B,T,C): input of each block, then output
    let res2: [FloatBuffer]       // the residual after each block's attention
    let ln1Mean: [FloatBuffer], ln1Rstd: [FloatBuffer], ln2Mean: [FloatBuffer], ln2Rstd: [FloatBuffer]
    let ln1: [AlignedBuffer<F.Element>], qkv: [AlignedBuffer<F.Element>], att: [AlignedBuffer<F.Element>]
    let atty: [AlignedBuffer<F.Element>], ln2: [AlignedBuffer<F.Element>]
    let fch: [AlignedBuffer<F.Element>], fcg: [AlignedBuffer<F.Element>]
    let lnf: AlignedBuffer<F.Element>, lnfMean: FloatBuffer, lnfRstd: FloatBuffer
    let logits: FloatBuffer

    // MARK: Scratch, reused by every layer
    let dres: FloatBuffer, dln: FloatBuffer, dqkv: FloatBuffer
    /// BT×4C: the MLP hidden gradient.
    let dfc: FloatBuffer
    /// T×T fp32 per attention worker (heads run as parallel tasks).
    let scores: FloatBuffer
    let attentionWorkers: Int
    // 16-bit formats only (empty in fp32): fp32 results before rounding, rounded gradients
    // as GEMM operands, and attention's per-worker widened probabilities and rounded dS.
    let wide: FloatBuffer
    let narrow: AlignedBuffer<F.Element>
    let probs: FloatBuffer
    let scoresLow: AlignedBuffer<F.Element>

    /// Allocates for a configuration and a maximum micro-batch.
    public init(config c: GPTConfig, maxB: Int, maxT: Int) {
        self.maxB = maxB; self.maxT = maxT
        let BT = maxB * maxT, C = c.nEmbd, L = c.nLayer
        func f(_ n: Int, _ size: Int) -> [FloatBuffer] { (0..<n).map { _ in FloatBuffer(count: size) } }
        func e(_ n: Int, _ size: Int) -> [AlignedBuffer<F.Element>] { (0..<n).map { _ in AlignedBuffer(count: size) } }
        residual = f(L + 1, BT * C); res2 = f(L, BT * C)
        ln1Mean = f(L, BT); ln1Rstd = f(L, BT); ln2Mean = f(L, BT); ln2Rstd = f(L, BT)
        ln1 = e(L, BT * C); qkv = e(L, BT * 3 * C); att = e(L, maxB * c.nHead * maxT * maxT); atty = e(L, BT * C)
        ln2 = e(L, BT * C); fch = e(L, BT * 4 * C); fcg = e(L, BT * 4 * C)
        lnf = AlignedBuffer(count: BT * C); lnfMean = FloatBuffer(count: BT); lnfRstd = FloatBuffer(count: BT)
        logits = FloatBuffer(count: BT * c.vocabSize)
        dres = FloatBuffer(count: BT * C); dln = FloatBuffer(count: BT * C); dqkv = FloatBuffer(count: BT * 3 * C)
        dfc = FloatBuffer(count: BT * 4 * C)
        attentionWorkers = max(1, ParallelFor.threads)
        let square = maxT * maxT * attentionWorkers
        scores = FloatBuffer(count: square)
        let low = F.isLow
        wide = FloatBuffer(count: low ? BT * 4 * C : 0)
        narrow = AlignedBuffer(count: low ? max(BT * 4 * C, BT * c.vocabSize) : 0)
        probs = FloatBuffer(count: low ? square : 0)
        scoresLow = AlignedBuffer(count: low ? square : 0)
    }

    /// What `savedBytes` and `totalBytes` will be for these arguments, without allocating
    /// (memory plans); `workers` is the attention worker count (`ParallelFor.threads`).
    public static func bytes(config c: GPTConfig, maxB: Int, maxT: Int, workers: Int) -> (saved: Int, total: Int) {
        let BT = maxB * maxT, C = c.nEmbd, L = c.nLayer, V = c.vocabSize
        let e = MemoryLayout<F.Element>.stride, square = maxT * maxT * max(1, workers)
        let fp32Kept = 4 * ((L + 1) * BT * C + L * BT * C + 4 * L * BT + 2 * BT + BT * V)
        let formatKept = e * (L * (14 * BT * C + maxB * c.nHead * maxT * maxT) + BT * C)
        let scratch = 4 * (9 * BT * C + square)
        let lowScratch = F.isLow ? 4 * 4 * BT * C + e * max(4 * BT * C, BT * V) + 4 * square + e * square : 0
        let saved = fp32Kept + formatKept
        return (saved, saved + scratch + lowScratch)
    }

    /// Bytes kept for backward (not counting scratch).
    public var savedBytes: Int {
        let wide = [residual, res2, ln1Mean, ln1Rstd, ln2Mean, ln2Rstd].joined().reduce(0) { $0 + $1.byteCount }
        let kept = [ln1, qkv, att, atty, ln2, fch, fcg].joined().reduce(0) { $0 + $1.byteCount }
        return wide + kept + lnf.byteCount + lnfMean.byteCount + lnfRstd.byteCount + logits.byteCount
    }

    /// Bytes of all buffers including scratch.
    public var totalBytes: Int {
        savedBytes + dres.byteCount + dln.byteCount + dqkv.byteCount + dfc.byteCount + scores.byteCount
            + wide.byteCount + narrow.byteCount + probs.byteCount + scoresLow.byteCount
    }
}

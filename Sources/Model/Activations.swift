import Kernels
import Settings

// MARK: - Activations

/// Everything forward keeps for backward, plus backward's scratch, sized for a maximum
/// micro-batch `B`×`T`; smaller batches or shorter sequences use a prefix of each buffer.
///
/// Tensors that are only ever matmul operands (LayerNorm outputs, QKV, attention
/// probabilities and output, MLP hidden states) are kept in the compute format `F`. The
/// residual stream, LayerNorm statistics and logits stay fp32, because LayerNorm's backward
/// and the loss need full precision.
///
/// Under recomputation a tensor backward recomputes is one buffer shared by every layer
/// (`PerLayer` with `shared`): the forward of each layer overwrites it, and the backward of
/// layer l refills it for layer l before reading it.
public final class Activations<F: ComputeFormat> {
    /// Capacity in sequences and positions.
    public let maxB: Int, maxT: Int
    /// What backward recomputes.
    public let recompute: Recompute
    /// How attention is computed (what it keeps: T×T probabilities, or row log-sum-exps).
    public let attention: AttentionKernel

    let residual: [FloatBuffer]   // nLayer + 1 of (B,T,C): input of each block, then output
    let res2: PerLayer<FloatBuffer>   // the residual after each block's attention
    let ln1Mean: PerLayer<FloatBuffer>, ln1Rstd: PerLayer<FloatBuffer>
    let ln2Mean: PerLayer<FloatBuffer>, ln2Rstd: PerLayer<FloatBuffer>
    let ln1: PerLayer<AlignedBuffer<F.Element>>, qkv: PerLayer<AlignedBuffer<F.Element>>
    let att: PerLayer<AlignedBuffer<F.Element>>, atty: PerLayer<AlignedBuffer<F.Element>>
    /// Fused attention's row log-sum-exps (B·heads·T per layer); empty when unfused.
    let lse: PerLayer<FloatBuffer>
    let ln2: PerLayer<AlignedBuffer<F.Element>>
    let fch: PerLayer<AlignedBuffer<F.Element>>, fcg: PerLayer<AlignedBuffer<F.Element>>
    let lnf: AlignedBuffer<F.Element>, lnfMean: FloatBuffer, lnfRstd: FloatBuffer
    let logits: FloatBuffer

    // MARK: Scratch, reused by every layer
    let dres: FloatBuffer, dln: FloatBuffer, dqkv: FloatBuffer
    /// BT×4C: the MLP hidden gradient.
    let dfc: FloatBuffer
    /// Per attention worker: T×T fp32 (unfused), or the fused kernel's block scratch.
    let scores: FloatBuffer
    let attentionWorkers: Int
    // 16-bit formats only (empty in fp32): fp32 results before rounding (or the packing GEMM's
    // partial sums where it rounds its own output), rounded gradients as GEMM operands, and
    // unfused attention's per-worker widened probabilities and rounded dS.
    let wide: FloatBuffer
    let narrow: AlignedBuffer<F.Element>
    let probs: FloatBuffer
    let scoresLow: AlignedBuffer<F.Element>

    /// Allocates for a configuration and a maximum micro-batch.
    public init(config c: GPTConfig, maxB: Int, maxT: Int, recompute: Recompute = .none,
                attention: AttentionKernel = .fused) {
        self.maxB = maxB; self.maxT = maxT; self.recompute = recompute; self.attention = attention
        let BT = maxB * maxT, C = c.nEmbd, L = c.nLayer, fused = attention == .fused
        let gemm = recompute.keepsGEMMOutputs, all = recompute.keepsAll
        func f(_ keep: Bool, _ size: Int) -> PerLayer<FloatBuffer> { PerLayer(L, shared: !keep) { FloatBuffer(count: size) } }
        func e(_ keep: Bool, _ size: Int) -> PerLayer<AlignedBuffer<F.Element>> {
            PerLayer(L, shared: !keep) { AlignedBuffer(count: size) }
        }
        residual = (0...L).map { _ in FloatBuffer(count: BT * C) }
        res2 = f(gemm, BT * C)
        ln1Mean = f(gemm, BT); ln1Rstd = f(gemm, BT); ln2Mean = f(gemm, BT); ln2Rstd = f(gemm, BT)
        ln1 = e(all, BT * C); qkv = e(gemm, BT * 3 * C); att = e(all, fused ? 0 : maxB * c.nHead * maxT * maxT)
        lse = f(gemm, fused ? maxB * c.nHead * maxT : 0)
        atty = e(gemm, BT * C); ln2 = e(all, BT * C); fch = e(gemm, BT * 4 * C); fcg = e(all, BT * 4 * C)
        lnf = AlignedBuffer(count: BT * C); lnfMean = FloatBuffer(count: BT); lnfRstd = FloatBuffer(count: BT)
        logits = FloatBuffer(count: BT * c.vocabSize)
        dres = FloatBuffer(count: BT * C); dln = FloatBuffer(count: BT * C); dqkv = FloatBuffer(count: BT * 3 * C)
        dfc = FloatBuffer(count: BT * 4 * C)
        attentionWorkers = max(1, ParallelFor.threads)
        let square = fused ? 0 : maxT * maxT * attentionWorkers
        scores = FloatBuffer(count: fused ? FusedAttention.scratchFloats(F.self, T: maxT, hs: c.headSize) * attentionWorkers : square)
        let low = F.isLow
        wide = FloatBuffer(count: low ? BT * 4 * C : 0)
        narrow = AlignedBuffer(count: low ? max(BT * 4 * C, BT * c.vocabSize) : 0)
        probs = FloatBuffer(count: low ? square : 0)
        scoresLow = AlignedBuffer(count: low ? square : 0)
    }

    /// What `savedBytes` and `totalBytes` will be for these arguments, without allocating
    /// (memory plans); `workers` is the attention worker count (`ParallelFor.threads`).
    public static func bytes(config c: GPTConfig, maxB: Int, maxT: Int, workers: Int,
                             recompute: Recompute = .none, attention: AttentionKernel = .fused) -> (saved: Int, total: Int) {
        let BT = maxB * maxT, C = c.nEmbd, L = c.nLayer, V = c.vocabSize, fused = attention == .fused
        let e = MemoryLayout<F.Element>.stride, square = fused ? 0 : maxT * maxT * max(1, workers)
        // Layers whose copy of a tensor exists: all of them, or the one shared buffer.
        let gemm = recompute.keepsGEMMOutputs ? L : 1, all = recompute.keepsAll ? L : 1
        let lse = fused ? gemm * maxB * c.nHead * maxT : 0
        let fp32Kept = 4 * ((L + 1) * BT * C + gemm * BT * C + 4 * gemm * BT + 2 * BT + BT * V + lse)
        let probabilities = fused ? 0 : maxB * c.nHead * maxT * maxT
        let formatKept = e * (gemm * 8 * BT * C + all * (6 * BT * C + probabilities) + BT * C)
        let blockScratch = fused ? FusedAttention.scratchFloats(F.self, T: maxT, hs: c.headSize) * max(1, workers) : square
        let scratch = 4 * (9 * BT * C + blockScratch)
        let lowScratch = F.isLow ? 4 * 4 * BT * C + e * max(4 * BT * C, BT * V) + 4 * square + e * square : 0
        let saved = fp32Kept + formatKept
        return (saved, saved + scratch + lowScratch)
    }

    /// Bytes of activation buffers (saved for backward, or shared and refilled by it), not
    /// counting scratch.
    public var savedBytes: Int {
        let wide = residual.reduce(0) { $0 + $1.byteCount }
            + [res2, ln1Mean, ln1Rstd, ln2Mean, ln2Rstd, lse].reduce(0) { $0 + $1.byteCount }
        let kept = [ln1, qkv, att, atty, ln2, fch, fcg].reduce(0) { $0 + $1.byteCount }
        return wide + kept + lnf.byteCount + lnfMean.byteCount + lnfRstd.byteCount + logits.byteCount
    }

    /// Bytes of all buffers including scratch.
    public var totalBytes: Int {
        savedBytes + dres.byteCount + dln.byteCount + dqkv.byteCount + dfc.byteCount + scores.byteCount
            + wide.byteCount + narrow.byteCount + probs.byteCount + scoresLow.byteCount
    }
}

/// One buffer per layer, or one buffer every layer shares (a tensor backward recomputes).
struct PerLayer<Buffer: ByteCounted> {
    private let buffers: [Buffer]
    let shared: Bool

    init(_ layers: Int, shared: Bool, make: () -> Buffer) {
        self.shared = shared
        buffers = (0..<(shared ? 1 : layers)).map { _ in make() }
    }

    subscript(layer: Int) -> Buffer { buffers[shared ? 0 : layer] }
    var byteCount: Int { buffers.reduce(0) { $0 + $1.byteCount } }
}

/// A buffer that knows its size in bytes.
protocol ByteCounted { var byteCount: Int { get } }
extension AlignedBuffer: ByteCounted {}

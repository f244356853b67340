import Kernels

// MARK: - Low-precision activations

/// What a bf16/fp16 forward keeps for backward. Every tensor that is only ever a matmul
/// operand (LayerNorm outputs, QKV, attention probabilities and output, MLP hidden states)
/// is kept in 16 bits; the residual stream, LayerNorm statistics and logits stay fp32,
/// because LayerNorm's backward and the loss need full precision.
public final class LowPrecisionActivations {
    public let maxB: Int, maxT: Int
    let residual: [FloatBuffer]
    let res2: [FloatBuffer]
    let ln1Mean: [FloatBuffer], ln1Rstd: [FloatBuffer], ln2Mean: [FloatBuffer], ln2Rstd: [FloatBuffer]
    let ln1: [HalfBuffer], qkv: [HalfBuffer], att: [HalfBuffer], atty: [HalfBuffer]
    let ln2: [HalfBuffer], fch: [HalfBuffer], fcg: [HalfBuffer]
    let lnf: HalfBuffer, lnfMean: FloatBuffer, lnfRstd: FloatBuffer
    let logits: FloatBuffer
    // Scratch shared by all layers.
    let wide: FloatBuffer          // BT×4C fp32 (conversions, GELU input/output, QKV before narrowing)
    let wide2: FloatBuffer         // BT×4C fp32 (backward: dfc)
    let narrow: HalfBuffer         // max(BT×4C, BT×V) 16-bit (gradients narrowed for matmuls)
    let scores: FloatBuffer, scores2: FloatBuffer   // T×T fp32 per attention worker
    let scoresHalf: HalfBuffer     // T×T 16-bit per attention worker
    /// Threads attention heads are spread over (each has its own T×T scratch).
    let attentionWorkers: Int
    let dres: FloatBuffer, dln: FloatBuffer, dqkv: FloatBuffer

    public init(config c: GPTConfig, maxB: Int, maxT: Int) {
        self.maxB = maxB; self.maxT = maxT
        let BT = maxB * maxT, C = c.nEmbd, L = c.nLayer
        func f(_ n: Int, _ size: Int) -> [FloatBuffer] { (0..<n).map { _ in FloatBuffer(count: size) } }
        func h(_ n: Int, _ size: Int) -> [HalfBuffer] { (0..<n).map { _ in HalfBuffer(count: size) } }
        residual = f(L + 1, BT * C); res2 = f(L, BT * C)
        ln1Mean = f(L, BT); ln1Rstd = f(L, BT); ln2Mean = f(L, BT); ln2Rstd = f(L, BT)
        ln1 = h(L, BT * C); qkv = h(L, BT * 3 * C); att = h(L, maxB * c.nHead * maxT * maxT); atty = h(L, BT * C)
        ln2 = h(L, BT * C); fch = h(L, BT * 4 * C); fcg = h(L, BT * 4 * C)
        lnf = HalfBuffer(count: BT * C); lnfMean = FloatBuffer(count: BT); lnfRstd = FloatBuffer(count: BT)
        logits = FloatBuffer(count: BT * c.vocabSize)
        wide = FloatBuffer(count: BT * 4 * C); wide2 = FloatBuffer(count: BT * 4 * C)
        narrow = HalfBuffer(count: max(BT * 4 * C, BT * c.vocabSize))
        attentionWorkers = max(1, ParallelFor.threads)
        let square = maxT * maxT * attentionWorkers
        scores = FloatBuffer(count: square); scores2 = FloatBuffer(count: square)
        scoresHalf = HalfBuffer(count: square)
        dres = FloatBuffer(count: BT * C); dln = FloatBuffer(count: BT * C); dqkv = FloatBuffer(count: BT * 3 * C)
    }

    /// Bytes kept for backward.
    public var savedBytes: Int {
        let f = [residual, res2, ln1Mean, ln1Rstd, ln2Mean, ln2Rstd].joined().reduce(0) { $0 + $1.byteCount }
        let h = [ln1, qkv, att, atty, ln2, fch, fcg].joined().reduce(0) { $0 + $1.byteCount }
        return f + h + lnf.byteCount + lnfMean.byteCount + lnfRstd.byteCount + logits.byteCount
    }

    /// Bytes including scratch.
    public var totalBytes: Int {
        savedBytes + wide.byteCount + wide2.byteCount + narrow.byteCount + scores.byteCount + scores2.byteCount
            + scoresHalf.byteCount + dres.byteCount + dln.byteCount + dqkv.byteCount
    }
}

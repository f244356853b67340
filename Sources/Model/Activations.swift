import Kernels

// MARK: - Activations

/// Everything forward keeps for backward, plus backward's scratch, sized for a maximum
/// micro-batch `B`×`T`. Smaller batches or shorter sequences use a prefix of each buffer.
public final class Activations {
    /// Capacity in sequences and positions.
    public let maxB: Int, maxT: Int

    let residual: [FloatBuffer]   // nLayer + 1 of (B,T,C): input of each block, then output
    let ln1: [FloatBuffer], ln1Mean: [FloatBuffer], ln1Rstd: [FloatBuffer]
    let qkv: [FloatBuffer], atty: [FloatBuffer], att: [FloatBuffer]
    let res2: [FloatBuffer]
    let ln2: [FloatBuffer], ln2Mean: [FloatBuffer], ln2Rstd: [FloatBuffer]
    let fch: [FloatBuffer], fcg: [FloatBuffer]
    let lnf: FloatBuffer, lnfMean: FloatBuffer, lnfRstd: FloatBuffer
    let logits: FloatBuffer
    // Backward scratch, reused by every layer.
    let dres: FloatBuffer, dln: FloatBuffer, dqkv: FloatBuffer, dfc: FloatBuffer
    /// T×T per attention worker (heads run as parallel tasks).
    let dattScratch: FloatBuffer
    let attentionWorkers: Int

    /// Allocates for a configuration and a maximum micro-batch.
    public init(config c: GPTConfig, maxB: Int, maxT: Int) {
        self.maxB = maxB; self.maxT = maxT
        let BT = maxB * maxT, C = c.nEmbd, L = c.nLayer
        func many(_ n: Int, _ size: Int) -> [FloatBuffer] { (0..<n).map { _ in FloatBuffer(count: size) } }
        residual = many(L + 1, BT * C)
        ln1 = many(L, BT * C); ln1Mean = many(L, BT); ln1Rstd = many(L, BT)
        qkv = many(L, BT * 3 * C); atty = many(L, BT * C)
        att = many(L, maxB * c.nHead * maxT * maxT)
        res2 = many(L, BT * C)
        ln2 = many(L, BT * C); ln2Mean = many(L, BT); ln2Rstd = many(L, BT)
        fch = many(L, BT * 4 * C); fcg = many(L, BT * 4 * C)
        lnf = FloatBuffer(count: BT * C); lnfMean = FloatBuffer(count: BT); lnfRstd = FloatBuffer(count: BT)
        logits = FloatBuffer(count: BT * c.vocabSize)
        dres = FloatBuffer(count: BT * C); dln = FloatBuffer(count: BT * C)
        dqkv = FloatBuffer(count: BT * 3 * C); dfc = FloatBuffer(count: BT * 4 * C)
        attentionWorkers = max(1, ParallelFor.threads)
        dattScratch = FloatBuffer(count: maxT * maxT * attentionWorkers)
    }

    /// Bytes held by activations kept for backward (not counting backward scratch).
    public var savedBytes: Int {
        let lists = [residual, ln1, ln1Mean, ln1Rstd, qkv, atty, att, res2, ln2, ln2Mean, ln2Rstd, fch, fcg]
        return lists.joined().reduce(0) { $0 + $1.byteCount }
            + lnf.byteCount + lnfMean.byteCount + lnfRstd.byteCount + logits.byteCount
    }

    /// Bytes of all buffers including backward scratch.
    public var totalBytes: Int {
        savedBytes + dres.byteCount + dln.byteCount + dqkv.byteCount + dfc.byteCount + dattScratch.byteCount
    }
}

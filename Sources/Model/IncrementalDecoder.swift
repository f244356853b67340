import Kernels

// MARK: - IncrementalDecoder

/// Generation with a key/value cache (fp32): tokens are appended to a context whose keys and
/// values every layer keeps, so a new token costs one row through each layer (products with
/// one row, reading each weight once) instead of the whole context again, which is what
/// `GPT.forward` over the cropped context costs (nanoGPT's and llm.c's sampling).
///
/// The layers are `Layers`' and `Vector`'s kernels, in `Transformer.forward`'s order; only
/// attention differs, one query row against the cached keys. The logits equal a full forward
/// over the same context up to rounding (the order of attention's sums differs). Positions
/// are absolute (GPT-2's learned `wpe`), so once the context is `blockSize` long a cropped
/// context has every position shifted: the caller starts again with `reset` (`Sampler` does).
public final class IncrementalDecoder {
    public let config: GPTConfig
    /// Tokens in the context (the cache's rows).
    public private(set) var length = 0
    private let parameters: UnsafePointer<Float>
    private let layout: ParameterLayout
    private let at: GPTOffsets
    /// Per layer, `blockSize` rows of keys and of values (C wide, heads side by side).
    private let keys: FloatBuffer, values: FloatBuffer
    /// Rows being appended: residual, LayerNorm output, qkv, attention output, MLP hidden.
    private let x: FloatBuffer, normed: FloatBuffer, qkv: FloatBuffer, att: FloatBuffer, hidden: FloatBuffer
    private let branch: FloatBuffer, mean: FloatBuffer, rstd: FloatBuffer
    private let scores: FloatBuffer, logits: FloatBuffer
    /// Threads attention's (row, head) tasks spread over, each with its own scores row.
    private let workers: Int

    /// A decoder over fp32 parameters laid out as `ParameterLayout(config)`; `parameters`
    /// must outlive it.
    public init(config: GPTConfig, parameters: UnsafePointer<Float>) {
        self.config = config
        self.parameters = parameters
        layout = ParameterLayout(config)
        at = GPTOffsets(layout)
        let T = config.blockSize, C = config.nEmbd
        keys = FloatBuffer(count: config.nLayer * T * C)
        values = FloatBuffer(count: config.nLayer * T * C)
        x = FloatBuffer(count: T * C); normed = FloatBuffer(count: T * C); qkv = FloatBuffer(count: T * 3 * C)
        att = FloatBuffer(count: T * C); hidden = FloatBuffer(count: T * 4 * C); branch = FloatBuffer(count: T * C)
        mean = FloatBuffer(count: T); rstd = FloatBuffer(count: T)
        workers = max(1, ParallelFor.threads)
        scores = FloatBuffer(count: workers * T)
        logits = FloatBuffer(count: config.vocabSize)
    }

    /// Empties the context.
    public func reset() { length = 0 }

    /// Appends `tokens` at positions `length`, `length + 1`, … and returns the logits that
    /// follow the last of them (valid until the next call).
    public func append(_ tokens: [Int32]) -> UnsafePointer<Float> {
        let n = tokens.count, C = config.nEmbd, V = config.vocabSize
        precondition(n >= 1 && length + n <= config.blockSize,
                     "context of \(length + n) tokens exceeds block_size \(config.blockSize): reset and append the cropped context")
        precondition(tokens.allSatisfy { $0 >= 0 && Int($0) < V }, "token id outside the vocabulary")
        let embedding = parameters + layout.units[0].lowerBound
        tokens.withUnsafeBufferPointer { ids in
            let wpe = embedding + at.wpe + length * C
            Layers.embeddingForward(FP32.self, out: x.pointer, tokens: ids.baseAddress!, wte: embedding, wpe: wpe,
                                    B: 1, T: n, C: C)
        }
        for l in 0..<config.nLayer {
            block(l, parameters + layout.units[layout.blockUnit(l)].lowerBound, rows: n)
        }
        length += n
        // Only the last row's logits: the final LayerNorm and the tied head for one row.
        let last = x.pointer + (n - 1) * C
        let final = parameters + layout.units[layout.finalUnit].lowerBound
        Layers.layerNormForward(FP32.self, out: normed.pointer, mean: mean.pointer, rstd: rstd.pointer, inp: last,
                                weight: final + at.lnfw, bias: at.lnfb.map { final + $0 }, N: 1, C: C)
        Layers.linearForward(FP32.self, out: logits.pointer, inp: normed.pointer, weight: embedding, bias: nil,
                             N: 1, IC: C, OC: V)
        return UnsafePointer(logits.pointer)
    }

    /// Block `l` on `rows` new rows of `x`, in place, caching their keys and values.
    private func block(_ l: Int, _ w: UnsafePointer<Float>, rows n: Int) {
        let C = config.nEmbd
        func bias(_ offset: Int?) -> UnsafePointer<Float>? { offset.map { w + $0 } }
        Layers.layerNormForward(FP32.self, out: normed.pointer, mean: mean.pointer, rstd: rstd.pointer, inp: x.pointer,
                                weight: w + at.ln1w, bias: bias(at.ln1b), N: n, C: C)
        Layers.linearForward(FP32.self, out: qkv.pointer, inp: normed.pointer, weight: w + at.qkvw, bias: bias(at.qkvb),
                             N: n, IC: C, OC: 3 * C)
        let k = keys.pointer + (l * config.blockSize + length) * C, v = values.pointer + (l * config.blockSize + length) * C
        for r in 0..<n {
            (k + r * C).update(from: qkv.pointer + r * 3 * C + C, count: C)
            (v + r * C).update(from: qkv.pointer + r * 3 * C + 2 * C, count: C)
        }
        attend(layer: l, rows: n)
        Layers.linearForward(FP32.self, out: branch.pointer, inp: att.pointer, weight: w + at.projw, bias: bias(at.projb),
                             N: n, IC: C, OC: C)
        Vector.add(branch.pointer, into: x.pointer, n * C)
        Layers.layerNormForward(FP32.self, out: normed.pointer, mean: mean.pointer, rstd: rstd.pointer, inp: x.pointer,
                                weight: w + at.ln2w, bias: bias(at.ln2b), N: n, C: C)
        Layers.linearForward(FP32.self, out: hidden.pointer, inp: normed.pointer, weight: w + at.fcw, bias: bias(at.fcb),
                             N: n, IC: C, OC: 4 * C)
        GELU.forward(out: hidden.pointer, inp: hidden.pointer, n: n * 4 * C)
        Layers.linearForward(FP32.self, out: branch.pointer, inp: hidden.pointer, weight: w + at.fcprojw,
                             bias: bias(at.fcprojb), N: n, IC: 4 * C, OC: C)
        Vector.add(branch.pointer, into: x.pointer, n * C)
    }

    /// Causal attention of the `rows` new queries (in `qkv`) against the layer's cached keys
    /// and values, into `att`: query r, at position `length + r`, sees positions 0 … itself.
    private func attend(layer l: Int, rows n: Int) {
        let C = config.nEmbd, NH = config.nHead, hs = C / NH, T = config.blockSize
        let scale = 1 / Float(hs).squareRoot()
        let k0 = keys.pointer + l * T * C, v0 = values.pointer + l * T * C
        ParallelFor.tasks(n * NH, workers: workers) { task, worker in
            let r = task / NH, h = task % NH, seen = length + r + 1
            let q = qkv.pointer + r * 3 * C + h * hs
            let s = scores.pointer + worker * T
            // q · k_j for every cached key (q repeated: a row stride of 0).
            Vector.rowDots(FP32.self, into: s, q, ldg: 0, k0 + h * hs, ldo: C, rows: seen, n: hs)
            Vector.scale(s, seen, by: scale)
            let top = Vector.maxValue(s, seen, startingAt: -.infinity)
            let inverse = 1 / Vector.expShiftSum(s, seen, shift: top)
            let o = att.pointer + r * C + h * hs
            o.update(repeating: 0, count: hs)
            for j in 0..<seen {
                let p = s[j] * inverse, vj = v0 + j * C + h * hs
                for i in 0..<hs { o[i] += p * vj[i] }
            }
        }
    }
}

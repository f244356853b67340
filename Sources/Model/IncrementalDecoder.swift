import Kernels

// MARK: - IncrementalDecoder

/// Generation with a key/value cache (fp32): tokens are appended to a context whose keys and
/// values every layer keeps, so a new token costs one row through each layer (products with
/// one row, reading each weight once) instead of the whole context again, which is what
/// `GPT.forward` over the cropped context costs (nanoGPT's and llm.c's sampling).
///
/// It holds `sequences` contexts that grow in step (samples of one prompt): a step appends
/// one token to each, so each weight is read once for all of them, the products having one
/// row per sequence.
///
/// The layers are `Layers`' and `Vector`'s kernels, in `Transformer.forward`'s order; only
/// attention differs, one query row against the cached keys. The logits equal a full forward
/// over the same context up to rounding (the order of attention's sums differs). Positions
/// are absolute (GPT-2's learned `wpe`), so once the context is `blockSize` long a cropped
/// context has every position shifted: the caller starts again with `reset` (`Sampler` does).
public final class IncrementalDecoder {
    public let config: GPTConfig
    /// Contexts held, growing in step.
    public let sequences: Int
    /// Tokens in each context (the cache's rows per sequence).
    public private(set) var length = 0
    private let parameters: UnsafePointer<Float>
    private let layout: ParameterLayout
    private let at: GPTOffsets
    /// Per sequence and layer, `blockSize` rows of keys and of values (C wide, heads side by side).
    private let keys: FloatBuffer, values: FloatBuffer
    /// Rows being appended: residual, LayerNorm output, qkv, attention output, MLP hidden.
    private let x: FloatBuffer, normed: FloatBuffer, qkv: FloatBuffer, att: FloatBuffer, hidden: FloatBuffer
    private let branch: FloatBuffer, mean: FloatBuffer, rstd: FloatBuffer
    private let scores: FloatBuffer, logits: FloatBuffer
    /// Threads attention's (row, head) tasks spread over, each with its own scores row.
    private let workers: Int

    /// A decoder of `sequences` contexts over fp32 parameters laid out as
    /// `ParameterLayout(config)`; `parameters` must outlive it.
    public init(config: GPTConfig, parameters: UnsafePointer<Float>, sequences: Int = 1) {
        precondition(sequences >= 1)
        self.config = config
        self.sequences = sequences
        self.parameters = parameters
        layout = ParameterLayout(config)
        at = GPTOffsets(layout)
        let T = config.blockSize, C = config.nEmbd, rows = max(T, sequences)
        keys = FloatBuffer(count: sequences * config.nLayer * T * C)
        values = FloatBuffer(count: sequences * config.nLayer * T * C)
        x = FloatBuffer(count: rows * C); normed = FloatBuffer(count: rows * C); qkv = FloatBuffer(count: rows * 3 * C)
        att = FloatBuffer(count: rows * C); hidden = FloatBuffer(count: rows * 4 * C); branch = FloatBuffer(count: rows * C)
        mean = FloatBuffer(count: rows); rstd = FloatBuffer(count: rows)
        workers = max(1, ParallelFor.threads)
        scores = FloatBuffer(count: workers * T)
        logits = FloatBuffer(count: sequences * config.vocabSize)
    }

    /// Where sequence `s`'s keys (and values) of layer `l` start: `blockSize` rows of C each.
    private func cache(sequence s: Int, layer l: Int) -> Int { (s * config.nLayer + l) * config.blockSize * config.nEmbd }

    /// Empties the contexts.
    public func reset() { length = 0 }

    /// Appends `tokens` to every context (one prompt for all sequences: computed once, its
    /// keys and values copied) and returns the logits that follow its last token, the same
    /// for every sequence: `sequences` rows of `vocabSize` (valid until the next call).
    public func append(_ tokens: [Int32]) -> UnsafePointer<Float> {
        let C = config.nEmbd, V = config.vocabSize, n = tokens.count
        let start = length
        run(tokens, active: 1)
        for s in 1..<sequences {
            for l in 0..<config.nLayer {
                let from = cache(sequence: 0, layer: l) + start * C, to = cache(sequence: s, layer: l) + start * C
                (keys.pointer + to).update(from: keys.pointer + from, count: n * C)
                (values.pointer + to).update(from: values.pointer + from, count: n * C)
            }
            (logits.pointer + s * V).update(from: logits.pointer, count: V)
        }
        return UnsafePointer(logits.pointer)
    }

    /// Appends token `next[s]` to context `s` for every sequence and returns the logits that
    /// follow each: row `s` of `sequences` rows of `vocabSize`.
    public func step(_ next: [Int32]) -> UnsafePointer<Float> {
        precondition(next.count == sequences, "one token per sequence")
        run(next, active: sequences)
        return UnsafePointer(logits.pointer)
    }

    /// Runs `tokens` (the first `active` sequences' rows, `tokens.count / active` each, at
    /// positions `length`…) through the model, leaving each sequence's logits after its last row.
    private func run(_ tokens: [Int32], active m: Int) {
        let C = config.nEmbd, V = config.vocabSize, n = tokens.count / m
        precondition(n >= 1 && n * m == tokens.count && length + n <= config.blockSize,
                     "context of \(length + n) tokens exceeds block_size \(config.blockSize): reset and append the cropped context")
        precondition(tokens.allSatisfy { $0 >= 0 && Int($0) < V }, "token id outside the vocabulary")
        let embedding = parameters + layout.units[0].lowerBound
        tokens.withUnsafeBufferPointer { ids in
            let wpe = embedding + at.wpe + length * C
            Layers.embeddingForward(FP32.self, out: x.pointer, tokens: ids.baseAddress!, wte: embedding, wpe: wpe,
                                    B: m, T: n, C: C)
        }
        for l in 0..<config.nLayer {
            block(l, parameters + layout.units[layout.blockUnit(l)].lowerBound, sequences: m, rows: n)
        }
        length += n
        // Only each sequence's last row's logits: the final LayerNorm and the tied head for
        // those rows, moved together first.
        for s in 0..<m where n > 1 { (x.pointer + s * C).update(from: x.pointer + (s * n + n - 1) * C, count: C) }
        let final = parameters + layout.units[layout.finalUnit].lowerBound
        Layers.layerNormForward(FP32.self, out: normed.pointer, mean: mean.pointer, rstd: rstd.pointer, inp: x.pointer,
                                weight: final + at.lnfw, bias: at.lnfb.map { final + $0 }, N: m, C: C)
        Layers.linearForward(FP32.self, out: logits.pointer, inp: normed.pointer, weight: embedding, bias: nil,
                             N: m, IC: C, OC: V)
    }

    /// Block `l` on `rows` new rows of each of the first `m` sequences (in `x`, sequence
    /// after sequence), in place, caching their keys and values.
    private func block(_ l: Int, _ w: UnsafePointer<Float>, sequences m: Int, rows n: Int) {
        let C = config.nEmbd, N = m * n
        func bias(_ offset: Int?) -> UnsafePointer<Float>? { offset.map { w + $0 } }
        Layers.layerNormForward(FP32.self, out: normed.pointer, mean: mean.pointer, rstd: rstd.pointer, inp: x.pointer,
                                weight: w + at.ln1w, bias: bias(at.ln1b), N: N, C: C)
        Layers.linearForward(FP32.self, out: qkv.pointer, inp: normed.pointer, weight: w + at.qkvw, bias: bias(at.qkvb),
                             N: N, IC: C, OC: 3 * C)
        for s in 0..<m {
            let offset = cache(sequence: s, layer: l) + length * C
            let k = keys.pointer + offset, v = values.pointer + offset
            for r in 0..<n {
                let row = qkv.pointer + (s * n + r) * 3 * C
                (k + r * C).update(from: row + C, count: C)
                (v + r * C).update(from: row + 2 * C, count: C)
            }
        }
        attend(layer: l, sequences: m, rows: n)
        Layers.linearForward(FP32.self, out: branch.pointer, inp: att.pointer, weight: w + at.projw, bias: bias(at.projb),
                             N: N, IC: C, OC: C)
        Vector.add(branch.pointer, into: x.pointer, N * C)
        Layers.layerNormForward(FP32.self, out: normed.pointer, mean: mean.pointer, rstd: rstd.pointer, inp: x.pointer,
                                weight: w + at.ln2w, bias: bias(at.ln2b), N: N, C: C)
        Layers.linearForward(FP32.self, out: hidden.pointer, inp: normed.pointer, weight: w + at.fcw, bias: bias(at.fcb),
                             N: N, IC: C, OC: 4 * C)
        GELU.forward(out: hidden.pointer, inp: hidden.pointer, n: N * 4 * C)
        Layers.linearForward(FP32.self, out: branch.pointer, inp: hidden.pointer, weight: w + at.fcprojw,
                             bias: bias(at.fcprojb), N: N, IC: 4 * C, OC: C)
        Vector.add(branch.pointer, into: x.pointer, N * C)
    }

    /// Causal attention of each sequence's `rows` new queries (in `qkv`) against its cached
    /// keys and values, into `att`: query r, at position `length + r`, sees positions 0 … itself.
    private func attend(layer l: Int, sequences m: Int, rows n: Int) {
        let C = config.nEmbd, NH = config.nHead, hs = C / NH, T = config.blockSize
        let scale = 1 / Float(hs).squareRoot()
        ParallelFor.tasks(m * n * NH, workers: workers) { task, worker in
            let row = task / NH, h = task % NH, s = row / n, r = row % n, seen = length + r + 1
            let k0 = keys.pointer + cache(sequence: s, layer: l), v0 = values.pointer + cache(sequence: s, layer: l)
            let q = qkv.pointer + row * 3 * C + h * hs
            let scores = scores.pointer + worker * T
            // q · k_j for every cached key (q repeated: a row stride of 0).
            Vector.rowDots(FP32.self, into: scores, q, ldg: 0, k0 + h * hs, ldo: C, rows: seen, n: hs)
            Vector.scale(scores, seen, by: scale)
            let top = Vector.maxValue(scores, seen, startingAt: -.infinity)
            let inverse = 1 / Vector.expShiftSum(scores, seen, shift: top)
            let o = att.pointer + row * C + h * hs
            o.update(repeating: 0, count: hs)
            for j in 0..<seen {
                let p = scores[j] * inverse, vj = v0 + j * C + h * hs
                for i in 0..<hs { o[i] += p * vj[i] }
            }
        }
    }
}

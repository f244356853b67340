import Corpus
import Kernels
import Model

// MARK: - Sampler

/// Autoregressive sampling from trained weights, as nanoGPT's `generate`: crop the context
/// to `block_size`, take the last position's logits, divide by temperature, keep the top-k
/// and the top-p nucleus, and draw (greedy argmax when temperature is 0).
public final class Sampler {
    /// Sampling controls.
    public struct Options: Sendable {
        public var temperature: Double, topK: Int, topP: Double, seed: UInt64
        public init(temperature: Double, topK: Int, topP: Double, seed: UInt64) {
            self.temperature = temperature; self.topK = topK; self.topP = topP; self.seed = seed
        }
    }

    let file: ModelFile
    let model: GPT
    let flat: FlatParameters
    let grads: FloatBuffer
    /// The key/value-cached path for contexts up to `block_size`, for the number of samples
    /// drawn together last: one at a time, so only one set of caches is held (the memory
    /// `tessera generate` sizes its groups by).
    private var decoder: IncrementalDecoder?
    /// Sampling's scratch: the kept tokens' unnormalised probabilities.
    private var probs: [Double]
    /// Several samples' logits past `block_size`, gathered from the forward passes.
    private var pastLogits = FloatBuffer(count: 0)

    /// Prepares a model for inference.
    public init(file: ModelFile) {
        self.file = file
        model = GPT(config: file.config)
        grads = FloatBuffer(count: 0)
        flat = FlatParameters(layout: model.layout, parameters: file.parameters.pointer, gradients: grads.pointer)
        probs = [Double](repeating: 0, count: file.config.vocabSize)
    }

    /// Generates `maxNewTokens` tokens after `prompt` and returns them decoded.
    ///
    /// While the context fits in `block_size`, each token costs one row through the model
    /// (`IncrementalDecoder`'s key/value cache); once it is full, every step runs the whole
    /// cropped context again, since each position then moves and GPT-2's position embeddings
    /// are absolute.
    /// `onToken`, if given, sees the generated ids so far after each one (for streaming).
    /// Drawing `stop` (a fine-tuned model's `<|endoftext|>`) ends the sample without it.
    public func generate(prompt: String, maxNewTokens: Int, options: Options, stop: Int? = nil,
                         onToken: (([Int]) -> Void)? = nil) throws -> String {
        try generate(prompt: prompt, samples: 1, maxNewTokens: maxNewTokens, options: options, stop: stop, onToken: onToken)[0]
    }

    /// Draws `samples` continuations of `prompt` together, sample k with seed `options.seed + k`
    /// (so each is the one `generate` draws alone with that seed, unless two candidates'
    /// probabilities lie within the rounding that differs between one row and several).
    /// Every step appends one token to each unfinished sample, reading each weight once for
    /// all of them. `onToken` sees sample 0's ids as they grow.
    public func generate(prompt: String, samples: Int, maxNewTokens: Int, options: Options, stop: Int? = nil,
                         onToken: (([Int]) -> Void)? = nil) throws -> [String] {
        precondition(samples >= 1)
        var context = try encode(prompt)
        if context.isEmpty { context = [0] }
        guard maxNewTokens > 0 else { return Array(repeating: "", count: samples) }
        let T = file.config.blockSize, V = file.config.vocabSize
        var rngs = (0..<samples).map { SplitMix64(seed: options.seed &+ UInt64($0)) }
        var ids = Array(repeating: context, count: samples)
        var out = Array(repeating: [Int](), count: samples)
        var done = Array(repeating: false, count: samples)
        if decoder?.sequences != samples {
            decoder = nil   // its caches go before the new ones are allocated
            decoder = IncrementalDecoder(config: file.config, parameters: file.parameters.pointer, sequences: samples)
        }
        let decoder = decoder!
        decoder.reset()
        var logits = decoder.append(Array(context.suffix(T)))
        for produced in 1...maxNewTokens {
            var next = [Int32](repeating: 0, count: samples)
            for k in 0..<samples where !done[k] {
                let token = pick(logits + k * V, options, &rngs[k])
                if token == stop { done[k] = true; continue }
                next[k] = Int32(token)
                out[k].append(token)
                if k == 0 { onToken?(out[0]) }
            }
            if produced == maxNewTokens || !done.contains(false) { break }
            // A finished sample rides along, repeating its last token, so every context keeps
            // the same length (its logits are not read).
            for k in 0..<samples {
                if done[k] { next[k] = ids[k].last! }
                ids[k].append(next[k])
            }
            if decoder.length < T {
                logits = decoder.step(next)
            } else {
                logits = fullForward(ids.map { Array($0.suffix(T)) })
            }
        }
        return out.map(decode)
    }

    /// Text of generated ids: the tokenizer's, or the ids themselves for a model without one.
    public func decode(_ ids: [Int]) -> String {
        file.tokenizer?.decode(ids) ?? ids.map(String.init).joined(separator: " ")
    }

    /// Logits after the last token of each of `contexts` (of equal length), from forward
    /// passes over all of them, one row of `vocabSize` per context. A pass takes as many
    /// contexts as fit in `tokensPerPass` (at least one): the forward keeps every
    /// layer's activations, so all of GPT-2's 1024-token contexts of 8 samples at once would
    /// hold gigabytes, while at that length one context already makes large products.
    func fullForward(_ contexts: [[Int32]]) -> UnsafePointer<Float> {
        let S = contexts.count, T = contexts[0].count, V = file.config.vocabSize
        let perPass = max(1, tokensPerPass / T)
        // In one pass the model's own logit rows are the answer; several are gathered here.
        if S > perPass && pastLogits.count < S * V { pastLogits = FloatBuffer(count: S * V) }
        for first in stride(from: 0, to: S, by: perPass) {
            let B = min(perPass, S - first)
            let tokens = contexts[first..<(first + B)].flatMap { $0 }
            _ = tokens.withUnsafeBufferPointer {
                model.forward(tokens: $0.baseAddress!, targets: nil, B: B, T: T, params: flat, logitRows: (0..<B).map { $0 * T + T - 1 })
            }
            if S <= perPass { return model.logitsRow(index: 0) }
            (pastLogits.pointer + first * V).update(from: model.logitsRow(index: 0), count: B * V)
        }
        return UnsafePointer(pastLogits.pointer)
    }

    /// Positions one full forward of several samples' contexts takes at most.
    public var tokensPerPass = 2048

    /// The next token from `logits`: greedy at temperature 0, else drawn from the top-k and
    /// top-p nucleus of the tempered distribution (nanoGPT's order of the two cuts).
    private func pick(_ logits: UnsafePointer<Float>, _ options: Options, _ rng: inout SplitMix64) -> Int {
        let V = file.config.vocabSize
        if options.temperature == 0 {
            var best = 0
            for j in 1..<V where logits[j] > logits[best] { best = j }
            return best
        }
        let keep = options.topK > 0 ? min(options.topK, V) : V
        let order = Self.descending(logits, count: V, keep: keep)
        let mx = Double(logits[order[0]])
        var total = 0.0
        for r in 0..<keep { let p = _exp((Double(logits[order[r]]) - mx) / options.temperature); probs[r] = p; total += p }
        var cum = 0.0, cut = keep
        for r in 0..<keep {
            cum += probs[r] / total
            if cum >= options.topP { cut = r + 1; break }
        }
        let mass = probs[0..<cut].reduce(0, +)
        var u = rng.nextUniform() * mass
        var pick = cut - 1
        for r in 0..<cut { u -= probs[r]; if u <= 0 { pick = r; break } }
        return order[pick]
    }

    /// The `keep` ids of the largest logits, largest first. Below the whole vocabulary
    /// (top-k) they are selected with a heap before sorting: a full sort of GPT-2's 50,257
    /// logits took about 5 ms a token, a third of a cached decoding step.
    public static func descending(_ logits: UnsafePointer<Float>, count V: Int, keep: Int) -> [Int] {
        guard keep * 4 < V else {
            // Sorting (logit, id) pairs compares the same values in the same sequence as
            // sorting ids by their logits, so the order is the same; the values sit beside
            // their ids rather than a random access away.
            var pairs = (0..<V).map { (value: logits[$0], id: Int32($0)) }
            pairs.sort { $0.value > $1.value }
            return pairs.map { Int($0.id) }
        }
        // A min-heap of the best `keep` so far: its root is the smallest kept logit.
        var heap = Array(0..<keep)
        func less(_ a: Int, _ b: Int) -> Bool { logits[heap[a]] < logits[heap[b]] }
        func siftDown(_ start: Int) {
            var i = start
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < keep && less(l, m) { m = l }
                if r < keep && less(r, m) { m = r }
                if m == i { return }
                heap.swapAt(i, m)
                i = m
            }
        }
        for i in stride(from: keep / 2 - 1, through: 0, by: -1) { siftDown(i) }
        for j in keep..<V where logits[j] > logits[heap[0]] {
            heap[0] = j
            siftDown(0)
        }
        heap.sort { logits[$0] > logits[$1] }
        return heap
    }

    /// The prompt's ids: encoded, or (a model trained on shards without a tokenizer) read as
    /// space-separated ids.
    private func encode(_ prompt: String) throws -> [Int32] {
        if let tokenizer = file.tokenizer { return try tokenizer.encodeWide(prompt).map { Int32(bitPattern: $0) } }
        guard let ids = Optional(prompt.split(separator: " ").compactMap { Int32($0) }),
              ids.count == prompt.split(separator: " ").count, ids.allSatisfy({ $0 >= 0 && Int($0) < file.config.vocabSize }) else {
            throw DataError.invalid(path: "--prompt", problem: "this model has no tokenizer (its data had no tokenizer.json), so the prompt must be token ids",
                                    fix: "pass space-separated ids below \(file.config.vocabSize)")
        }
        return ids
    }
}

#if canImport(Glibc)
import Glibc
#endif
@inline(__always) private func _exp(_ x: Double) -> Double { exp(x) }

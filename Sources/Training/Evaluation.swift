import Checkpoint
import Comm
import Corpus
import Foundation
import Kernels
import Model
import Settings

// MARK: - Evaluation

/// What `tessera eval` measured over a split.
public struct EvalResult: Codable, Sendable {
    public var split: String
    /// Mean cross-entropy per predicted token, in nats, and its exponential.
    public var loss: Double, perplexity: Double
    /// Nats summed over predicted tokens, in bits, per UTF-8 byte those tokens stand for
    /// (nil without a tokenizer).
    public var bitsPerByte: Double?
    public var tokens: Int, bytes: Int?
    /// Windows evaluated (sequences of at most `blockSize` predictions), how far apart they
    /// start, and how.
    public var windows: Int, blockSize: Int, stride: Int, ranks: Int
    /// "whole" (every token once) or "trainer" (the batches `train`'s validation drew).
    public var mode: String
    /// The forward passes' compute format.
    public var precision = Precision.fp32
    /// The weights evaluated (the checkpoint or model file given), when known.
    public var source: String?
    /// A mixture's datasets: each one's loss over its own split, by the dataset as `--data`
    /// names it.
    public var lossByData: [String: Double]?
}

/// Loss of trained weights on a dataset split, on any number of ranks.
public enum Evaluation {
    /// One stretch of a shard: inputs `start..<start+length`, targets one token later, of
    /// which those from `scoredFrom` on count (the earlier ones were scored by the window before).
    struct Window { let shard: TokenShard, start: Int, length: Int, scoredFrom: Int }

    /// Every token of a shard after its first, predicted once, by windows of up to
    /// `blockSize` predictions starting every `stride` tokens; each window scores the targets
    /// past the previous window's end (Hugging Face's sliding-window perplexity). With
    /// `stride == blockSize` the windows are consecutive and each prediction sees only the
    /// context inside its own window, as the trainer's validation does; a smaller stride gives
    /// every prediction after the first window at least `blockSize − stride` tokens of context,
    /// for `blockSize / stride` times the passes.
    static func windows(of split: TokenSplit, blockSize T: Int, stride S: Int) -> [Window] {
        split.shards.flatMap { shard -> [Window] in
            let targets = shard.count - 1
            var out: [Window] = [], scoredEnd = 0, start = 0
            while scoredEnd < targets {
                let end = min(start + T, targets)
                out.append(Window(shard: shard, start: start, length: end - start, scoredFrom: scoredEnd - start))
                scoredEnd = end
                start += S
            }
            return out
        }
    }

    /// Mean loss over the whole split, its windows spread over the ranks (window i on rank
    /// i mod N), `batch` windows per forward pass. Every rank must hold the same weights.
    public static func whole(model file: ModelFile, split: TokenSplit, name: String, batch: Int, comm: Communicator,
                             separator: Int32? = nil, precision: Precision = .fp32, stride: Int? = nil) throws -> EvalResult {
        let T = file.config.blockSize, V = file.config.vocabSize, S = stride ?? T
        precondition((1...T).contains(S), "stride \(S) outside 1...\(T)")
        let all = windows(of: split, blockSize: T, stride: S)
        guard !all.isEmpty else {
            throw DataError.tooShort(path: split.shards.first?.path ?? name, tokens: split.tokenCount, needed: 2)
        }
        let mine = Swift.stride(from: comm.rank, to: all.count, by: comm.size).map { all[$0] }
        let lengths = file.tokenizer?.byteLengths(vocabSize: V)
        let runner = Runner(file: file, rows: batch, T: T, separator: separator, precision: precision)
        var nats = 0.0, counted = 0, bytes = 0
        // Full windows in batches; a shard's shorter last window alone.
        var i = 0
        while i < mine.count {
            var rows = 1
            if mine[i].length == T { while rows < batch, i + rows < mine.count, mine[i + rows].length == T { rows += 1 } }
            let group = mine[i..<(i + rows)]
            let len = group.first!.length
            for (r, w) in group.enumerated() {
                let top = max(w.shard.copy(from: w.start, count: len, into: runner.x + r * len),
                              w.shard.copy(from: w.start + 1, count: len, into: runner.y + r * len))
                w.shard.release(from: w.start, count: len + 1)
                guard Int(top) < V else {
                    throw DataError.invalid(path: w.shard.path, problem: "a window at token \(w.start) holds id \(top), outside the model's vocabulary of \(V)",
                                            fix: "evaluate on data prepared with the model's tokenizer")
                }
                for t in 0..<w.scoredFrom { runner.y[r * len + t] = -1 }
                w.shard.maskTargets(runner.y + r * len, first: w.start + 1, count: len)
                if let lengths { for t in 0..<len where runner.y[r * len + t] >= 0 { bytes += lengths[Int(runner.y[r * len + t])] } }
            }
            // Overlapping windows score a part of each: only that part goes through the LM head.
            let (sum, count) = S < T ? runner.scoredLoss(B: rows, T: len) : runner.loss(B: rows, T: len)
            nats += sum; counted += count
            i += rows
        }
        var totals = [nats, Double(counted), Double(bytes)]
        try comm.allReduce(&totals, label: "all-reduce of evaluation sums")
        let loss = totals[0] / totals[1]
        return EvalResult(split: name, loss: loss, perplexity: exp(loss),
                          bitsPerByte: lengths == nil || totals[2] == 0 ? nil : totals[0] / log(2) / totals[2],
                          tokens: Int(totals[1]), bytes: lengths == nil ? nil : Int(totals[2]),
                          windows: all.count, blockSize: T, stride: S, ranks: comm.size, mode: "whole", precision: precision)
    }

    /// A mixture's whole split: each dataset's split alone, then their sums together (the
    /// loss per predicted token over all of them, and per dataset).
    public static func whole(model file: ModelFile, mixture split: TokenSplit, names: [String], name: String, batch: Int,
                             comm: Communicator, precision: Precision = .fp32, stride: Int? = nil) throws -> EvalResult {
        let sources = split.parts
        precondition(sources.count == names.count)
        let parts = try sources.map { try whole(model: file, split: $0, name: name, batch: batch, comm: comm, precision: precision, stride: stride) }
        var out = parts[0]
        let nats = parts.reduce(0.0) { $0 + $1.loss * Double($1.tokens) }
        out.tokens = parts.reduce(0) { $0 + $1.tokens }
        out.windows = parts.reduce(0) { $0 + $1.windows }
        out.loss = nats / Double(max(out.tokens, 1))
        out.perplexity = exp(out.loss)
        let bytes = parts.compactMap(\.bytes)
        out.bytes = bytes.count == parts.count ? bytes.reduce(0, +) : nil
        out.bitsPerByte = out.bytes.map { nats / log(2) / Double(max($0, 1)) }
        out.lossByData = Dictionary(uniqueKeysWithValues: zip(names, parts.map(\.loss)))
        return out
    }

    /// The number `train` reports as its validation loss: `batches` global batches drawn by
    /// `sampler` from `split` (sample i of each on rank i mod N), `micro` rows per pass.
    public static func asTrainer(model file: ModelFile, split: TokenSplit, name: String, sampler: BatchSampler, batches: Int,
                                 micro: Int, comm: Communicator, separator: Int32? = nil, precision: Precision = .fp32) throws -> EvalResult {
        let T = sampler.blockSize
        let indices = Array(stride(from: comm.rank, to: sampler.batchSize, by: comm.size))
        let runner = Runner(file: file, rows: micro, T: T, separator: separator, precision: precision)
        var nats = 0.0, counted = 0
        for j in 0..<batches {
            for lo in stride(from: 0, to: indices.count, by: micro) {
                let chunk = indices[lo..<min(indices.count, lo + micro)]
                try sampler.fill(x: runner.x, y: runner.y, split: split, which: name == "train" ? .train : .val, batch: j,
                                 indices: chunk, vocabSize: file.config.vocabSize)
                let f = runner.loss(B: chunk.count, T: T)
                nats += f.sum
                counted += f.count
            }
        }
        var total = [nats, Double(counted)]
        try comm.allReduce(&total, label: "all-reduce of evaluation sums")
        let tokens = Int(total[1])
        let loss = total[0] / max(total[1], 1)
        return EvalResult(split: name, loss: loss, perplexity: exp(loss), bitsPerByte: nil, tokens: tokens, bytes: nil,
                          windows: batches * sampler.batchSize, blockSize: T, stride: T, ranks: comm.size, mode: "trainer", precision: precision)
    }

    /// A model over read-only weights with token buffers for `rows`×`T`, computing in
    /// `precision` (16-bit: each unit's weights narrowed as the pass reaches it).
    final class Runner {
        let model: GPT, flat: FlatParameters, noGradients = FloatBuffer(count: 0)
        let x: UnsafeMutablePointer<Int32>, y: UnsafeMutablePointer<Int32>

        init(file: ModelFile, rows: Int, T: Int, separator: Int32?, precision: Precision = .fp32) {
            model = GPT(config: file.config, precision: precision)
            model.documentSeparator = separator
            flat = FlatParameters(layout: model.layout, parameters: file.parameters.pointer, gradients: noGradients.pointer)
            x = .allocate(capacity: rows * T); y = .allocate(capacity: rows * T)
        }
        /// One row of logits, for `scoredLoss`'s softmax (allocated on first use).
        private lazy var scratch = FloatBuffer(count: model.config.vocabSize)
        deinit { x.deallocate(); y.deallocate() }

        func loss(B: Int, T: Int) -> (sum: Double, count: Int) {
            model.forward(tokens: x, targets: y, B: B, T: T, params: flat)
        }

        /// The same sum, computing logits only where a target counts.
        func scoredLoss(B: Int, T: Int) -> (sum: Double, count: Int) {
            let rows = (0..<B * T).filter { y[$0] >= 0 }
            guard !rows.isEmpty else { return (0, 0) }
            model.forward(tokens: x, targets: nil, B: B, T: T, params: flat, logitRows: rows)
            let V = model.config.vocabSize
            var sum = 0.0
            for (i, r) in rows.enumerated() { sum += Evaluation.crossEntropy(model.logitsRow(index: i), V, target: Int(y[r]), scratch: scratch.pointer) }
            return (sum, rows.count)
        }
    }

    /// `log Σ exp(x) − x[target]` over one row of `V` logits (the exponentials summed in fp32
    /// lanes, the rest in double).
    static func crossEntropy(_ x: UnsafePointer<Float>, _ V: Int, target: Int, scratch: UnsafeMutablePointer<Float>) -> Double {
        scratch.update(from: x, count: V)
        let top = Vector.maxValue(scratch, V, startingAt: -.infinity)
        let sum = Vector.expShiftSum(scratch, V, shift: top)
        return Double(top) + log(Double(sum)) - Double(x[target])
    }
}

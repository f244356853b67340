import Foundation

// MARK: - Instruction data

/// How a prepared directory of prompt–completion examples was packed (`packing.json`): every
/// shard holds rows of exactly `blockSize` tokens plus one trailing pad, each example whole in
/// one row, and a loss mask beside it (`train_NNNNNN.mask`, one byte per token: 1 where the
/// token is a target that counts — completion tokens and the closing `<|endoftext|>`).
public struct Packing: Codable, Equatable, Sendable {
    /// "prompt-completion".
    public var format: String
    /// Tokens per row: training must use this `--block-size`.
    public var blockSize: Int
    /// The `<|endoftext|>` id that ends every example and pads rows; a new document (and
    /// position 0) starts after each.
    public var separator: Int
    /// Examples written, and how many had their completion cut to fit a row.
    public var examples: Int, truncated: Int
    /// Target tokens that count, and all tokens (rows × blockSize), over both splits.
    public var countedTargets: Int, tokens: Int

    /// File name inside a prepared directory.
    public static let file = "packing.json"
}

/// `prepare --format prompt-completion`: JSON Lines examples with a prompt and a completion
/// become packed rows whose loss counts only the completions (supervised fine-tuning, as
/// TRL's `SFTTrainer` with `completion_only_loss` and packing).
///
/// An example is prompt + completion + `<|endoftext|>`. Examples are placed whole, in input
/// order, into rows of `blockSize` tokens; a row that cannot take the next example is padded
/// with `<|endoftext|>` (masked). The model sees each example as its own document: attention
/// stops at the `<|endoftext|>` before it and positions restart (see `GPT.documentSeparator`),
/// so packing changes no example's computation. A completion too long for a row is cut; a
/// prompt that leaves no room for one completion token is an error.
enum InstructionData {
    struct Example { let prompt: String; let completion: String; let line: String }

    static func prepare(_ o: PrepareOptions, files: [String], into dir: URL) throws(DataError) -> (PrepareSummary, Packing, Tokenizer) {
        guard let T = o.blockSize else {
            throw DataError.invalid(path: "--format prompt-completion", problem: "needs the rows' length",
                                    fix: "pass --block-size, the context length you will train with")
        }
        guard o.kind == .gpt2 || o.kind == .bpe else {
            throw DataError.invalid(path: "--tokenizer \(o.kind.rawValue)", problem: "has no <|endoftext|> to end examples with",
                                    fix: "use --tokenizer gpt2 (the base model's) or bpe")
        }
        let t0 = Date()
        let examples = try read(files, prompt: o.promptField, completion: o.completionField)
        let tokenizer = try makeTokenizer(o, examples)
        guard let eot = tokenizer.documentSeparator else {
            throw DataError.invalid(path: "--tokenizer \(o.kind.rawValue)", problem: "has no <|endoftext|> to end examples with",
                                    fix: "use --tokenizer gpt2 (the base model's) or bpe")
        }
        let every = max(2, Int((1 / o.valFraction).rounded()))
        let perShard = max(1, min(o.shardTokens, ShardWriter.maxTokens - 1) / T) * T
        let train = PackedSplit(dir: dir, split: "train", vocab: tokenizer.vocabSize, rowsPerShard: perShard / T, T: T, pad: UInt32(eot))
        let val = PackedSplit(dir: dir, split: "val", vocab: tokenizer.vocabSize, rowsPerShard: perShard / T, T: T, pad: UInt32(eot))
        var truncated = 0, bytes = 0
        for (i, e) in examples.enumerated() {
            let p = try tokenizer.encodeWide(e.prompt), c = try tokenizer.encodeWide(e.completion)
            bytes += e.prompt.utf8.count + e.completion.utf8.count
            guard p.count + 1 < T else {
                throw DataError.invalid(path: e.line, problem: "has a prompt of \(p.count) tokens, which leaves no room for its completion in a block of \(T)",
                                        fix: "raise --block-size above \(p.count + 1), or shorten or drop that example")
            }
            var ids = p + c + [UInt32(eot)]
            // The first token has no context in its own document: never a counted target.
            var mask = [UInt8](repeating: 0, count: p.count) + [UInt8](repeating: 1, count: c.count + 1)
            mask[0] = 0
            if ids.count > T { ids.removeLast(ids.count - T); mask.removeLast(mask.count - T); truncated += 1 }
            try (i % every == every - 1 ? val : train).add(ids, mask)
        }
        try train.finish(); try val.finish()
        guard train.rows > 0, val.rows > 0 else {
            throw DataError.tooShort(path: o.inputs.joined(separator: " "), tokens: (train.rows + val.rows) * T, needed: 2 * T)
        }
        let packing = Packing(format: "prompt-completion", blockSize: T, separator: eot, examples: examples.count,
                              truncated: truncated, countedTargets: train.counted + val.counted, tokens: (train.rows + val.rows) * T)
        do {
            let enc = JSONEncoder(); enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            try enc.encode(packing).write(to: dir.appendingPathComponent(Packing.file))
        } catch { throw DataError.unwritable(dir.path, error) }
        let summary = PrepareSummary(vocabSize: tokenizer.vocabSize, trainTokens: train.rows * T, valTokens: val.rows * T,
                                     documents: examples.count, shards: train.files + val.files, bytes: bytes,
                                     encodeSeconds: Date().timeIntervalSince(t0))
        return (summary, packing, tokenizer)
    }

    /// Every line of every file as an example; errors name the file and line.
    static func read(_ files: [String], prompt: String, completion: String) throws(DataError) -> [Example] {
        var out: [Example] = []
        for file in files {
            let data: Data
            if file == "-" { data = FileHandle.standardInput.readDataToEndOfFile() } else {
                guard let d = FileManager.default.contents(atPath: file) else {
                    throw DataError.missing(path: file, fix: "pass an existing JSON Lines file")
                }
                data = d
            }
            for (n, line) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let where_ = "\(file):\(n + 1)"
                guard !line.allSatisfy(\.isWhitespace) else { continue }
                guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                    throw DataError.invalid(path: where_, problem: "is not a JSON object", fix: "write one {\"\(prompt)\": …, \"\(completion)\": …} object per line")
                }
                guard let p = object[prompt] as? String, let c = object[completion] as? String else {
                    throw DataError.invalid(path: where_, problem: "lacks a string \"\(prompt)\" or \"\(completion)\" (keys: \(object.keys.sorted().joined(separator: ", ")))",
                                            fix: "name the fields with --prompt-field and --completion-field")
                }
                out.append(Example(prompt: p, completion: c, line: where_))
            }
        }
        guard !out.isEmpty else {
            throw DataError.invalid(path: files.joined(separator: " "), problem: "holds no examples", fix: "pass JSON Lines with one example per line")
        }
        return out
    }

    /// The tokenizer: GPT-2's or bytes as given; a BPE learned from the examples' text.
    static func makeTokenizer(_ o: PrepareOptions, _ examples: [Example]) throws(DataError) -> Tokenizer {
        switch o.kind {
        case .gpt2: return try Prepare.gpt2Tokenizer(o)
        case .bpe:
            var trainer = BPETrainer(vocabSize: o.vocabSize ?? 4096)
            trainer.count(examples.flatMap { [Array($0.prompt.utf8), Array($0.completion.utf8)] }, threads: o.threads)
            return Tokenizer(kind: .bpe, bpe: trainer.train())
        case .char, .byte:
            preconditionFailure("checked by prepare")
        }
    }
}

/// One split of packed rows: shards of whole rows plus one trailing pad (so the last row has
/// its extra target), each with its mask file.
final class PackedSplit {
    let dir: URL, split: String, vocab: Int, rowsPerShard: Int, T: Int, pad: UInt32
    private(set) var rows = 0, counted = 0, files = 0
    private var row: [UInt32] = [], rowMask: [UInt8] = []
    private var shard: [UInt32] = [], shardMask: [UInt8] = []

    init(dir: URL, split: String, vocab: Int, rowsPerShard: Int, T: Int, pad: UInt32) {
        self.dir = dir; self.split = split; self.vocab = vocab; self.rowsPerShard = rowsPerShard; self.T = T; self.pad = pad
    }

    /// Adds an example (at most T tokens) to the current row, closing the row first when it
    /// cannot take it whole.
    func add(_ ids: [UInt32], _ mask: [UInt8]) throws(DataError) {
        if row.count + ids.count > T { try closeRow() }
        row += ids; rowMask += mask
        counted += mask.reduce(0) { $0 + Int($1) }
    }

    private func closeRow() throws(DataError) {
        guard !row.isEmpty else { return }
        row += [UInt32](repeating: pad, count: T - row.count)
        rowMask += [UInt8](repeating: 0, count: T - rowMask.count)
        shard += row; shardMask += rowMask
        row = []; rowMask = []
        rows += 1
        if shard.count == rowsPerShard * T { try writeShard() }
    }

    private func writeShard() throws(DataError) {
        guard !shard.isEmpty else { return }
        let name = String(format: "%@_%06d", split, files)
        do {
            let w = try ShardWriter(url: dir.appendingPathComponent(name + ".bin"), vocabSize: vocab)
            try (shard + [pad]).withUnsafeBufferPointer { try w.append($0) }
            try w.finish()
            try Data(shardMask + [0]).write(to: dir.appendingPathComponent(name + ".mask"))
        } catch let e as DataError { throw e } catch { throw DataError.unwritable(dir.path, error) }
        files += 1
        shard = []; shardMask = []
    }

    func finish() throws(DataError) {
        try closeRow()
        try writeShard()
    }
}

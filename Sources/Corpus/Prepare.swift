import Foundation

// MARK: - Preparing a corpus

/// What `prepare` does: inputs, tokenizer and output layout.
public struct PrepareOptions: Sendable {
    /// Files, directories or `-` (stdin).
    public var inputs: [String]
    /// Directory to write shards and `tokenizer.json` into.
    public var output: String
    public var kind: Tokenizer.Kind = .char
    /// `gpt2`: the vocabulary (encoder.json / vocab.json) and merges (vocab.bpe / merges.txt).
    public var vocabPath: String?
    public var mergesPath: String?
    /// `bpe`: ids to learn, `<|endoftext|>` included.
    public var vocabSize: Int?
    public var valFraction = 0.1
    /// Tokens per shard file.
    public var shardTokens = 100_000_000
    public var format: InputFormat = .auto
    public var textField = "text"
    public var splitOn: String?
    /// `prompt-completion`: the JSON fields of an example, and the rows' length.
    public var promptField = "prompt", completionField = "completion"
    public var blockSize: Int?
    public var threads = ProcessInfo.processInfo.activeProcessorCount

    public init(inputs: [String], output: String) { self.inputs = inputs; self.output = output }
}

/// Summary of a `prepare` run.
public struct PrepareSummary: Sendable {
    public let vocabSize: Int
    public let trainTokens: Int
    public let valTokens: Int
    public let documents: Int
    public let shards: Int
    public let bytes: Int
    /// Seconds spent reading and encoding (after any vocabulary was built).
    public let encodeSeconds: Double
}

/// Turns text into a data directory of shards, streaming: memory holds a few pieces of text
/// at a time whatever the input's size, and pieces are encoded on all threads.
///
/// Each document starts with `<|endoftext|>` when the vocabulary has it (as llm.c's
/// `fineweb.py`). Validation takes whole documents (every k-th, k = 1/valFraction); when there
/// are too few documents for that (one text file), it takes the last `valFraction` of the
/// tokens instead, as nanoGPT's `prepare.py`. Everything is written to a staging directory
/// first: a failure leaves the output directory as it was.
public enum Prepare {
    /// Runs `prepare`.
    public static func run(_ o: PrepareOptions) throws(DataError) -> PrepareSummary {
        var reader = DocumentReader(inputs: o.inputs)
        reader.format = o.format
        reader.textField = o.textField
        if let pattern = o.splitOn {
            guard let re = try? NSRegularExpression(pattern: pattern, options: [.anchorsMatchLines]) else {
                throw DataError.invalid(path: "--split-on", problem: "\(pattern.debugDescription) is not a valid regular expression",
                                        fix: "pass an ICU regular expression, e.g. '\\n\\n\\n'")
            }
            reader.splitOn = re
        }
        let files = try reader.files()
        if o.format == .promptCompletion { return try prepareInstructions(o, files: files).0 }
        let tokenizer = try makeTokenizer(o, reader: reader, files: files)
        guard tokenizer.vocabSize <= Int(Int32.max) else { throw DataError.vocabTooLarge(vocab: tokenizer.vocabSize) }

        return try staged(o.output) { staging throws(DataError) in
            let summary = try encode(o, reader: reader, tokenizer: tokenizer, into: staging)
            try writeTokenizer(tokenizer, into: staging)
            return summary
        }
    }

    /// `--format prompt-completion` (see `InstructionData`), staged like any dataset.
    public static func prepareInstructions(_ o: PrepareOptions, files: [String]) throws(DataError) -> (PrepareSummary, Packing) {
        try staged(o.output) { staging throws(DataError) in
            let (summary, packing, tokenizer) = try InstructionData.prepare(o, files: files, into: staging)
            try writeTokenizer(tokenizer, into: staging)
            return (summary, packing)
        }
    }

    /// Runs `body` on a staging directory beside `output`, then installs what it wrote there
    /// as the dataset: a failure leaves the output directory as it was.
    private static func staged<T>(_ output: String, _ body: (URL) throws(DataError) -> T) throws(DataError) -> T {
        let out = URL(fileURLWithPath: output)
        try checkOutput(out)
        let staging = out.deletingLastPathComponent()
            .appendingPathComponent(".\(out.lastPathComponent).prepare-\(ProcessInfo.processInfo.processIdentifier)")
        try? FileManager.default.removeItem(at: staging)
        do { try FileManager.default.createDirectory(at: staging, withIntermediateDirectories: true) } catch {
            throw DataError.missing(path: staging.path, fix: "make the output's parent directory writable")
        }
        do {
            let result = try body(staging)
            try install(staging, at: out)
            return result
        } catch {
            try? FileManager.default.removeItem(at: staging)
            throw error
        }
    }

    // MARK: Tokenizer

    private static func makeTokenizer(_ o: PrepareOptions, reader: DocumentReader, files: [String]) throws(DataError) -> Tokenizer {
        switch o.kind {
        case .byte: return .byte
        case .gpt2: return try gpt2Tokenizer(o)
        case .char, .bpe:
            guard !files.contains("-") else {
                throw DataError.invalid(path: "-", problem: "the \(o.kind.rawValue) tokenizer reads the corpus twice (once to build its vocabulary), and stdin can be read once",
                                        fix: "save the text to a file, or use --tokenizer gpt2 or byte")
            }
            if o.kind == .char {
                var scalars = Set<UInt32>()
                try reader.forEachPiece { p in
                    for u in String(decoding: p.bytes, as: UTF8.self).unicodeScalars { scalars.insert(u.value) }
                }
                return .char(scalars: scalars)
            }
            var trainer = BPETrainer(vocabSize: o.vocabSize ?? 4096)
            var batch: [[UInt8]] = [], held = 0
            try reader.forEachPiece { p in
                batch.append(p.bytes); held += p.bytes.count
                if held >= 64 << 20 { trainer.count(batch, threads: o.threads); batch = []; held = 0 }
            }
            trainer.count(batch, threads: o.threads)
            return Tokenizer(kind: .bpe, bpe: trainer.train())
        }
    }

    /// GPT-2's BPE from `--vocab` and `--merges`.
    static func gpt2Tokenizer(_ o: PrepareOptions) throws(DataError) -> Tokenizer {
        guard let v = o.vocabPath, let m = o.mergesPath else {
            throw DataError.invalid(path: "--tokenizer gpt2", problem: "needs GPT-2's vocabulary files",
                                    fix: "pass --vocab encoder.json --merges vocab.bpe (or vocab.json and merges.txt)")
        }
        return Tokenizer(kind: .gpt2, bpe: try BytePairEncoder.load(vocab: v, merges: m))
    }

    // MARK: Encoding

    private static func encode(_ o: PrepareOptions, reader: DocumentReader, tokenizer: Tokenizer,
                               into dir: URL) throws(DataError) -> PrepareSummary {
        let every = max(2, Int((1 / o.valFraction).rounded()))
        let train = ShardSet(dir: dir, split: "train", vocab: tokenizer.vocabSize, perShard: o.shardTokens)
        let val = ShardSet(dir: dir, split: "val", vocab: tokenizer.vocabSize, perShard: o.shardTokens)
        let separator = tokenizer.documentSeparator.map { UInt32($0) }
        let threads = max(1, o.threads)
        let encoders = (0..<threads).map { _ in tokenizer.makeEncoder() }
        var round: [TextPiece] = [], held = 0, documents = 0, bytes = 0
        let roundBytes = threads * 4 << 20
        let t0 = Date()

        func flush() throws(DataError) {
            var outputs = [[UInt32]](repeating: [], count: round.count)
            var failures = [DataError?](repeating: nil, count: threads)
            let pieces = round
            outputs.withUnsafeMutableBufferPointer { outBuf in
                failures.withUnsafeMutableBufferPointer { failBuf in
                    let out = UncheckedBox(outBuf), fail = UncheckedBox(failBuf), encs = UncheckedBox(encoders)
                    DispatchQueue.concurrentPerform(iterations: threads) { t in
                        for i in stride(from: t, to: pieces.count, by: threads) {
                            pieces[i].bytes.withUnsafeBufferPointer { text in
                                do throws(DataError) { try encs.value[t].encode(text, into: &out.value[i]) } catch { fail.value[t] = error }
                            }
                            if fail.value[t] != nil { return }
                        }
                    }
                }
            }
            if let failure = failures.compactMap({ $0 }).first { throw failure }
            for (piece, ids) in zip(round, outputs) {
                let target = piece.document % every == every - 1 ? val : train
                if piece.startsDocument, let separator { try target.append([separator]) }
                try target.append(ids)
            }
            round.removeAll(keepingCapacity: true); held = 0
        }
        try reader.forEachPiece { p throws(DataError) in
            if p.startsDocument { documents = max(documents, p.document + 1) }
            bytes += p.bytes.count
            round.append(p); held += p.bytes.count
            if held >= roundBytes { try flush() }
        }
        try flush()
        let seconds = Date().timeIntervalSince(t0)
        if val.count == 0 {
            // Too few documents to hold some out whole: the last fraction of the tokens.
            let n = Int((Double(train.count) * o.valFraction).rounded())
            try train.moveTail(n, to: val)
        }
        try train.finish(); try val.finish()
        guard train.count >= 2, val.count >= 2 else {
            let total = train.count + val.count, inputs = o.inputs.joined(separator: " ")
            guard total >= 4 else { throw DataError.tooShort(path: inputs, tokens: total, needed: 4) }
            // Enough tokens, split unevenly: say which split came out short, and why.
            throw DataError.invalid(path: inputs, problem: "gives the train split \(train.count) and the validation split "
                                        + "\(val.count) of its \(total) tokens (--val-fraction \(o.valFraction)), and each needs at least 2",
                                    fix: "use more text, or a --val-fraction that leaves 2 tokens in each split")
        }
        return PrepareSummary(vocabSize: tokenizer.vocabSize, trainTokens: train.count, valTokens: val.count,
                              documents: documents, shards: train.files.count + val.files.count, bytes: bytes,
                              encodeSeconds: seconds)
    }

    // MARK: Output

    /// Files a data directory may hold; an output directory with anything else is refused.
    static func isDatasetFile(_ name: String) -> Bool {
        name == Dataset.tokenizerFile || name == "vocab.json" || name == "merges.txt" || name == "train.bin" || name == "val.bin"
            || name == Packing.file
            || ((name.hasPrefix("train_") || name.hasPrefix("val_")) && (name.hasSuffix(".bin") || name.hasSuffix(".mask")))
    }

    private static func checkOutput(_ out: URL) throws(DataError) {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: out.path, isDirectory: &isDir) else { return }
        guard isDir.boolValue else {
            throw DataError.invalid(path: out.path, problem: "exists and is not a directory", fix: "choose another --out")
        }
        let others = ((try? FileManager.default.contentsOfDirectory(atPath: out.path)) ?? []).filter { !isDatasetFile($0) && !$0.hasPrefix(".") }
        guard others.isEmpty else {
            throw DataError.invalid(path: out.path, problem: "holds files that are not a dataset's (\(others.prefix(3).joined(separator: ", ")))",
                                    fix: "choose an empty or new --out; prepare replaces only a previous dataset")
        }
    }

    private static func writeTokenizer(_ tokenizer: Tokenizer, into dir: URL) throws(DataError) {
        do {
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys]
            try enc.encode(tokenizer).write(to: dir.appendingPathComponent(Dataset.tokenizerFile))
            if let bpe = tokenizer.bpe {   // Hugging Face's files, for `tokenizers` and transformers
                try bpe.vocabJSON().write(to: dir.appendingPathComponent("vocab.json"))
                try Data(bpe.mergesText().utf8).write(to: dir.appendingPathComponent("merges.txt"))
            }
        } catch { throw DataError.unwritable(dir.path, error) }
    }

    /// Replaces a previous dataset in `out` (if any) with the staged one.
    private static func install(_ staging: URL, at out: URL) throws(DataError) {
        let fm = FileManager.default
        do {
            try fm.createDirectory(at: out, withIntermediateDirectories: true)
            for name in (try? fm.contentsOfDirectory(atPath: out.path)) ?? [] where isDatasetFile(name) {
                try fm.removeItem(at: out.appendingPathComponent(name))
            }
            for name in try fm.contentsOfDirectory(atPath: staging.path) {
                try fm.moveItem(at: staging.appendingPathComponent(name), to: out.appendingPathComponent(name))
            }
            try fm.removeItem(at: staging)
        } catch { throw DataError.unwritable(out.path, error) }
    }
}

// MARK: - Shards of one split

/// Writes one split as numbered shards of at most `perShard` tokens.
final class ShardSet {
    let dir: URL, split: String, vocab: Int, perShard: Int
    private(set) var files: [URL] = []
    private(set) var count = 0
    private var writer: ShardWriter?

    init(dir: URL, split: String, vocab: Int, perShard: Int) {
        self.dir = dir; self.split = split; self.vocab = vocab; self.perShard = min(perShard, ShardWriter.maxTokens)
    }

    func append(_ ids: [UInt32]) throws(DataError) {
        var from = 0
        do {
            while from < ids.count {
                if writer == nil || writer!.count == perShard {
                    try writer?.finish()
                    let url = dir.appendingPathComponent(String(format: "%@_%06d.bin", split, files.count))
                    writer = try ShardWriter(url: url, vocabSize: vocab)
                    files.append(url)
                }
                let n = min(ids.count - from, perShard - writer!.count)
                try ids[from..<(from + n)].withUnsafeBufferPointer { try writer!.append($0) }
                from += n; count += n
            }
        } catch let e as DataError { throw e } catch {
            throw DataError.unwritable(dir.path, error)
        }
    }

    func finish() throws(DataError) {
        do { try writer?.finish(); writer = nil } catch {
            throw DataError.unwritable(dir.path, error)
        }
    }

    /// Moves the last `n` tokens to `other` (streaming through memory-mapped shards), then
    /// shortens this split to match.
    func moveTail(_ n: Int, to other: ShardSet) throws(DataError) {
        guard n > 0, n < count else { return }
        try finish()
        let keep = count - n
        var passed = 0
        var kept: [URL] = []
        for url in files {
            let shard = try TokenShard.open(url.path)
            let lo = max(0, keep - passed), hi = shard.count
            if lo < hi {
                var chunk = [UInt32](), i = lo
                while i < hi {
                    let end = min(hi, i + (1 << 20))
                    chunk = (i..<end).map { shard[$0] }
                    try other.append(chunk)
                    i = end
                }
            }
            if lo > 0 { kept.append(url) }
            if lo > 0 && lo < hi { try truncate(url, to: lo) }
            if lo == 0 { try? FileManager.default.removeItem(at: url) }
            passed += shard.count
        }
        files = kept; count = keep
    }

    private func truncate(_ url: URL, to tokens: Int) throws(DataError) {
        let width = TokenShard.width(forVocab: vocab)
        do {
            let h = try FileHandle(forWritingTo: url)
            try h.truncate(atOffset: UInt64(TokenShard.headerSize + tokens * width))
            try h.seek(toOffset: 0)
            try h.write(contentsOf: TokenShard.header(count: tokens, width: width, vocabSize: vocab))
            try h.close()
        } catch { throw DataError.unwritable(url.path, error) }
    }
}

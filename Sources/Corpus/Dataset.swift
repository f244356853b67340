import Foundation
import Kernels
#if canImport(Glibc)
import Glibc
#endif

// MARK: - Dataset

/// The token shards of a training run: a directory `tessera prepare` wrote (`train_NNNNNN.bin`,
/// `val_NNNNNN.bin`, `tokenizer.json`), llm.c shards (a directory or glob of `*_train_*.bin`
/// with their `*_val_*.bin`), or nanoGPT's headerless `train.bin`/`val.bin`.
public struct Dataset: Sendable {
    /// Which split to draw from.
    public enum Split: UInt64, Sendable { case train = 1, val = 2 }

    /// Training tokens.
    public let train: TokenSplit
    /// Validation tokens.
    public let val: TokenSplit
    /// The tokenizer the shards were written with, when known (`tokenizer.json`).
    public let tokenizer: Tokenizer?
    /// Ids the model must embed.
    public let vocabSize: Int
    /// How packed instruction data was laid out (nil for plain token streams): windows start
    /// at row boundaries, targets follow the loss mask, examples are separate documents.
    public let packing: Packing?
    /// A mixture's datasets and weights as `--data` named them (nil for one dataset); the
    /// splits' `sources` are theirs, in this order.
    public let mixture: MixtureSpec?

    /// Wraps shards already open.
    public init(train: TokenSplit, val: TokenSplit, tokenizer: Tokenizer?, vocabSize: Int, packing: Packing? = nil,
                mixture: MixtureSpec? = nil) {
        self.train = train; self.val = val; self.tokenizer = tokenizer; self.vocabSize = vocabSize; self.packing = packing
        self.mixture = mixture
    }

    /// Convenience for one shard per split.
    public init(train: TokenShard, val: TokenShard, tokenizer: Tokenizer) {
        self.init(train: TokenSplit([train]), val: TokenSplit([val]), tokenizer: tokenizer, vocabSize: tokenizer.vocabSize)
    }

    /// Uniformly random tokens over `vocab` ids (benchmarks: timing does not depend on text).
    public static func synthetic(vocab: Int, tokens: Int, seed: UInt64) -> Dataset {
        var rng = SplitMix64(seed: seed)
        let t = (0..<tokens).map { _ in UInt16(rng.next(below: vocab)) }
        let v = (0..<max(tokens / 10, 1)).map { _ in UInt16(rng.next(below: vocab)) }
        let tok = Tokenizer(kind: .char, symbols: (0..<vocab).map { String(UnicodeScalar(0x4E00 + $0)!) })
        return Dataset(train: TokenShard(tokens: t, vocabSize: vocab), val: TokenShard(tokens: v, vocabSize: vocab), tokenizer: tok)
    }

    /// Tokenizer description inside a prepared directory.
    public static let tokenizerFile = "tokenizer.json"

    /// The shard for a split.
    public func shard(_ split: Split) -> TokenSplit { split == .train ? train : val }

    // MARK: Opening

    /// Opens and checks a dataset. `vocabSize` is required for data with no `tokenizer.json`
    /// whose headers do not declare one (llm.c's and nanoGPT's files). `path` may name a
    /// mixture, `0.7:DATA,0.3:DATA` (`MixtureSpec`): datasets of one tokenizer whose samples
    /// `Blend` shares out by weight.
    public static func open(_ path: String, vocabSize given: Int? = nil) throws(DataError) -> Dataset {
        guard let mixture = try MixtureSpec.parse(path) else { return try openOne(path, vocabSize: given) }
        guard let blend = Blend(weights: mixture.weights) else {
            throw DataError.invalid(path: path, problem: "gives a source less than 1/\(Blend.cycle) of the samples",
                                    fix: "use weights whose smallest is at least 1/\(Blend.cycle) of their sum")
        }
        var parts: [Dataset] = []
        for p in mixture.paths {
            if (try? MixtureSpec.parse(p)) ?? nil != nil {
                throw DataError.invalid(path: path, problem: "nests the mixture '\(p)'", fix: "list every dataset once, each with its weight")
            }
            let d = try openOne(p, vocabSize: given)
            if d.packing != nil {
                throw DataError.invalid(path: p, problem: "is packed instruction data, which a mixture cannot take",
                                        fix: "mix plain token datasets (prepare the examples of several files into one directory instead)")
            }
            if let first = parts.first, d.vocabSize != first.vocabSize || d.tokenizer != first.tokenizer {
                throw DataError.invalid(path: p, problem: "was tokenized differently from \(mixture.paths[0]) (vocabulary \(d.vocabSize) vs \(first.vocabSize)"
                                            + (d.tokenizer != first.tokenizer ? ", another tokenizer.json" : "") + ")",
                                        fix: "prepare every dataset of a mixture with the same tokenizer")
            }
            if let first = parts.first?.train.shards.first, let mine = d.train.shards.first, mine.width != first.width {
                throw DataError.invalid(path: p, problem: "holds \(8 * mine.width)-bit tokens but \(mixture.paths[0]) holds \(8 * first.width)-bit ones",
                                        fix: "prepare every dataset of a mixture with the same tokenizer")
            }
            parts.append(d)
        }
        return Dataset(train: TokenSplit(sources: parts.map(\.train), blend: blend),
                       val: TokenSplit(sources: parts.map(\.val), blend: blend),
                       tokenizer: parts[0].tokenizer, vocabSize: parts[0].vocabSize, mixture: mixture)
    }

    /// One dataset (not a mixture).
    private static func openOne(_ path: String, vocabSize given: Int?) throws(DataError) -> Dataset {
        let files = try locate(path, headerlessAllowed: given != nil)
        let tokenizer = try tokenizer(directory: files.directory, required: false)
        let headerless = files.headerless
        let train = try files.train.map { p throws(DataError) in try TokenShard.open(p, headerless: headerless) }
        let val = try files.val.map { p throws(DataError) in try TokenShard.open(p, headerless: headerless) }
        let all = train + val
        for s in all where s.width != all[0].width {
            throw DataError.invalid(path: s.path, problem: "holds \(8 * s.width)-bit tokens but \(all[0].path) holds \(8 * all[0].width)-bit ones",
                                    fix: "train on shards prepared with one tokenizer")
        }
        let declared = Set(all.map(\.declaredVocab).filter { $0 > 0 })
        if declared.count > 1 {
            let a = all.first { $0.declaredVocab > 0 }!, b = all.first { $0.declaredVocab > 0 && $0.declaredVocab != a.declaredVocab }!
            throw DataError.invalid(path: b.path, problem: "was written with vocabulary \(b.declaredVocab) but \(a.path) with \(a.declaredVocab)",
                                    fix: "train on shards prepared with one tokenizer")
        }
        let candidates: [(Int, String)] = [tokenizer.map { ($0.vocabSize, files.directory + "/" + tokenizerFile) },
                                           declared.first.map { ($0, "the shard headers") },
                                           given.map { ($0, "--vocab-size") }].compactMap { $0 }
        guard let (vocab, _) = candidates.first else {
            throw DataError.invalid(path: path, problem: "neither a tokenizer.json nor the shard headers say the vocabulary size",
                                    fix: "pass --vocab-size (50257 for GPT-2 tokens)")
        }
        for (v, source) in candidates where v != vocab {
            throw DataError.invalid(path: path, problem: "\(candidates[0].1) says vocabulary \(vocab) but \(source) says \(v)",
                                    fix: "pass a matching --vocab-size, or none")
        }
        // Shards that declare their vocabulary were checked id by id when written; the rest
        // (llm.c's, nanoGPT's) are scanned once here, page by page, before any step.
        for s in all where s.declaredVocab == 0 {
            let (top, at) = s.maxToken()
            if Int(top) >= vocab {
                throw DataError.invalid(path: s.path, problem: "token \(at) is id \(top), outside the vocabulary of \(vocab)",
                                        fix: "pass the --vocab-size the data was tokenized with")
            }
        }
        let packing = try packing(directory: files.directory, shards: all)
        return Dataset(train: TokenSplit(train), val: TokenSplit(val), tokenizer: tokenizer, vocabSize: vocab, packing: packing)
    }

    /// A packed directory's layout, with each shard's loss mask attached and its length checked.
    private static func packing(directory: String, shards: [TokenShard]) throws(DataError) -> Packing? {
        let url = URL(fileURLWithPath: directory).appendingPathComponent(Packing.file)
        guard let data = try? Data(contentsOf: url) else { return nil }
        guard let p = try? JSONDecoder().decode(Packing.self, from: data), p.blockSize >= 1 else {
            throw DataError.malformed(path: url.path, problem: "not a packing description; re-run `tessera prepare --format prompt-completion`")
        }
        for s in shards {
            guard s.count % p.blockSize == 1 else {
                throw DataError.malformed(path: s.path, problem: "holds \(s.count) tokens, not rows of \(p.blockSize) plus one")
            }
            try s.attachLossMask(String(s.path.dropLast(".bin".count)) + ".mask")
        }
        return p
    }

    /// The shard files of a dataset path.
    static func locate(_ path: String, headerlessAllowed: Bool) throws(DataError)
        -> (directory: String, train: [String], val: [String], headerless: Bool) {
        if path.contains("*") || path.contains("?") || path.contains("[") {
            guard path.contains("train") else {
                throw DataError.invalid(path: path, problem: "a glob must name the training shards (contain \"train\") so their val shards can be found",
                                        fix: "pass e.g. 'DIR/*_train_*.bin'")
            }
            let train = glob(path), valPattern = path.replacingOccurrences(of: "train", with: "val"), val = glob(valPattern)
            guard !train.isEmpty else { throw DataError.missing(path: path, fix: "the glob matches no files; check --data") }
            guard !val.isEmpty else { throw DataError.missing(path: valPattern, fix: "llm.c shards come in train and val sets; add the val shards") }
            return ((path as NSString).deletingLastPathComponent, train, val, false)
        }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else {
            throw DataError.missing(path: path, fix: "pass a directory written by `tessera prepare --input TEXT --out DIR`, "
                                    + "a directory or glob of llm.c shards, or nanoGPT's train.bin/val.bin directory")
        }
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
        func shards(_ split: String) -> [String] {
            names.filter { n in
                n.hasSuffix(".bin") && n != "\(split).bin"
                    && (n.hasPrefix("\(split)_") || n.contains("_\(split)_") || n.hasSuffix("_\(split).bin"))
            }.map { path + "/" + $0 }
        }
        let train = shards("train"), val = shards("val")
        if !train.isEmpty || !val.isEmpty {
            guard !train.isEmpty else { throw DataError.missing(path: path + "/*train*.bin", fix: "the directory has val shards but no train shards") }
            guard !val.isEmpty else { throw DataError.missing(path: path + "/*val*.bin", fix: "the directory has train shards but no val shards; prepare a validation split") }
            return (path, train, val, false)
        }
        let plain = ["train.bin", "val.bin"].map { path + "/" + $0 }
        if names.contains("train.bin") || names.contains("val.bin") {
            for p in plain where !FileManager.default.fileExists(atPath: p) {
                throw DataError.missing(path: p, fix: "train.bin and val.bin come as a pair")
            }
            // A header says llm.c's format; anything else is nanoGPT's raw uint16 tokens.
            let hasHeader = plain.allSatisfy { Self.startsWithMagic($0) }
            if plain.contains(where: Self.isOldTesseraShard) {
                throw DataError.malformed(path: plain[0], problem: "written by an older tessera (TSRATOK format)")
            }
            if !hasHeader && !headerlessAllowed {
                throw DataError.malformed(path: plain[0], problem: "no llm.c header (wrong magic); if this is nanoGPT's headerless train.bin/val.bin, pass --vocab-size")
            }
            return (path, [plain[0]], [plain[1]], !hasHeader)
        }
        throw DataError.missing(path: path, fix: names.isEmpty
            ? "the directory is empty; write shards into it with `tessera prepare --input TEXT --out \(path)`"
            : "no token shards in it (train_*.bin and val_*.bin, llm.c's *_train_*.bin, or nanoGPT's train.bin); run `tessera prepare`")
    }

    /// The first `count` bytes of a file (fewer when it is shorter; empty when unreadable).
    private static func prefix(_ path: String, _ count: Int) -> Data {
        guard let h = FileHandle(forReadingAtPath: path) else { return Data() }
        defer { try? h.close() }
        return (try? h.read(upToCount: count)) ?? Data()
    }

    private static func startsWithMagic(_ path: String) -> Bool {
        let d = prefix(path, 4)
        return d.count == 4 && d.withUnsafeBytes { Int32(littleEndian: $0.loadUnaligned(as: Int32.self)) } == TokenShard.magic
    }

    /// Shards of tessera's first format, replaced by llm.c's.
    private static func isOldTesseraShard(_ path: String) -> Bool { prefix(path, 8) == Data("TSRATOK".utf8) + [0] }

    private static func glob(_ pattern: String) -> [String] {
        var g = glob_t()
        defer { globfree(&g) }
        guard Glibc.glob(pattern, 0, nil, &g) == 0 else { return [] }
        return (0..<Int(g.gl_pathc)).compactMap { g.gl_pathv[$0].map { String(cString: $0) } }.sorted()
    }

    /// The tokenizer of a data directory (nil when it has none and none is required).
    public static func tokenizer(directory: String, required: Bool = true) throws(DataError) -> Tokenizer? {
        let url = URL(fileURLWithPath: directory).appendingPathComponent(tokenizerFile)
        guard let data = try? Data(contentsOf: url) else {
            if required { throw DataError.missing(path: url.path, fix: "re-run `tessera prepare` for this directory") }
            return nil
        }
        guard let tokenizer = try? JSONDecoder().decode(Tokenizer.self, from: data) else {
            throw DataError.malformed(path: url.path, problem: "not a tessera tokenizer description")
        }
        return tokenizer
    }

    /// The vocabulary size `open` would find, without opening more than the headers.
    public static func vocabSize(_ path: String, given: Int?) throws(DataError) -> Int {
        try open(path, vocabSize: given).vocabSize
    }
}

// MARK: - Split

/// The shards of one split, read as one stream of windows that never cross a shard boundary.
public struct TokenSplit: Sendable {
    /// A mixture's sources, each the split of one dataset, and how samples are shared among them.
    public struct Mixture: Sendable {
        public let sources: [TokenSplit]
        public let blend: Blend
    }

    /// The shards in order.
    public let shards: [TokenShard]
    /// The mixture this split is (nil for one dataset); `shards` holds all of its sources', in order.
    public let mixture: Mixture?
    /// Tokens in all shards.
    public var tokenCount: Int { shards.reduce(0) { $0 + $1.count } }
    /// The splits samples are drawn from: a mixture's sources, or this split alone.
    public var parts: [TokenSplit] { mixture?.sources ?? [self] }

    /// Wraps shards.
    public init(_ shards: [TokenShard]) { self.shards = shards; mixture = nil }

    /// The split of a mixture of `sources`, drawn from as `blend` shares out samples.
    public init(sources: [TokenSplit], blend: Blend) {
        precondition(sources.count == blend.counts.count && sources.allSatisfy { $0.mixture == nil })
        shards = sources.flatMap(\.shards)
        mixture = Mixture(sources: sources, blend: blend)
    }

    /// Shard and offset of window `w` among windows counted by `perShard`.
    func locate(_ w: Int, perShard: (TokenShard) -> Int) -> (TokenShard, Int) {
        var w = w
        for s in shards {
            let n = perShard(s)
            if w < n { return (s, w) }
            w -= n
        }
        fatalError("window beyond the split")
    }
}

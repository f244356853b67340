import Foundation

// MARK: - Tokenizer

/// Maps text to token ids and back.
///
/// - `char`: one id per Unicode scalar that occurs in the corpus, sorted by code point (what
///   nanoGPT's shakespeare_char does with `sorted(set(text))`).
/// - `byte`: the 256 byte values.
/// - `gpt2`: GPT-2's byte-level BPE, loaded from its published files.
/// - `bpe`: a byte-level BPE that `tessera prepare` learned from the corpus.
///
/// The JSON form carries the whole vocabulary, so a checkpoint or model file alone can sample.
public struct Tokenizer: Codable, Equatable, Sendable {
    /// Tokenizer family.
    public enum Kind: String, Codable, Sendable, CaseIterable { case char, byte, gpt2, bpe }

    /// Which family this is.
    public let kind: Kind
    /// For `char`: the scalar of each id, as a one-scalar string.
    public let symbols: [String]
    /// For `gpt2` and `bpe`: the vocabulary and merges.
    public let bpe: BytePairEncoder?

    /// A character or byte tokenizer.
    public init(kind: Kind, symbols: [String]) {
        self.kind = kind; self.symbols = symbols; bpe = nil
    }

    /// A byte-level BPE tokenizer.
    public init(kind: Kind, bpe: BytePairEncoder) {
        self.kind = kind; symbols = []; self.bpe = bpe
    }

    /// Number of ids.
    public var vocabSize: Int {
        switch kind {
        case .byte: return 256
        case .char: return symbols.count
        case .gpt2, .bpe: return bpe!.vocabSize
        }
    }

    /// The id placed before every document, when the vocabulary has one.
    public var documentSeparator: Int? { bpe?.endOfText }

    /// Builds a character vocabulary from a corpus.
    public static func char(corpus: String) -> Tokenizer { char(scalars: Set(corpus.unicodeScalars.map(\.value))) }

    /// Builds a character vocabulary from the set of scalars a corpus uses.
    public static func char(scalars: Set<UInt32>) -> Tokenizer {
        Tokenizer(kind: .char, symbols: scalars.sorted().map { String(UnicodeScalar($0)!) })
    }

    /// The byte tokenizer.
    public static let byte = Tokenizer(kind: .byte, symbols: [])

    /// Encodes text; throws on a character a `char` vocabulary lacks.
    public func encode(_ text: String) throws(DataError) -> [UInt16] {
        try encodeWide(text).map { UInt16(truncatingIfNeeded: $0) }
    }

    /// Encodes text to ids of any width.
    public func encodeWide(_ text: String) throws(DataError) -> [UInt32] {
        var s = text
        var out: [UInt32] = []
        let encoder = makeEncoder()
        var failure: DataError?
        s.withUTF8 { buf in
            do throws(DataError) { try encoder.encode(buf, into: &out) } catch { failure = error }
        }
        if let failure { throw failure }
        return out
    }

    /// A reusable encoder for many pieces of text (one per thread).
    public func makeEncoder() -> TextEncoder { TextEncoder(self) }

    /// Decodes ids; unknown ids become U+FFFD (`char`) or are skipped (BPE).
    public func decode(_ ids: [Int]) -> String {
        switch kind {
        case .byte:
            return String(decoding: ids.map { UInt8(clamping: $0) }, as: UTF8.self)
        case .char:
            return ids.map { $0 >= 0 && $0 < symbols.count ? symbols[$0] : "\u{FFFD}" }.joined()
        case .gpt2, .bpe:
            return bpe!.decode(ids)
        }
    }

    /// UTF-8 bytes of text each id stands for (bits per byte): a special token such as
    /// `<|endoftext|>` marks a boundary and stands for none.
    public func byteLengths(vocabSize: Int) -> [Int] {
        (0..<vocabSize).map { id in
            switch kind {
            case .byte: return 1
            case .char: return id < symbols.count ? symbols[id].utf8.count : 0
            case .gpt2, .bpe:
                guard let bpe, id < bpe.tokens.count, !bpe.specials.values.contains(id) else { return 0 }
                return bpe.tokens[id].count
            }
        }
    }

    // MARK: Codable

    private enum CodingKeys: String, CodingKey { case kind, symbols, tokens, merges }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        kind = try c.decode(Kind.self, forKey: .kind)
        symbols = try c.decodeIfPresent([String].self, forKey: .symbols) ?? []
        guard kind == .gpt2 || kind == .bpe else { bpe = nil; return }
        let tokens = try c.decode([String].self, forKey: .tokens)
        let merges = try c.decode([String].self, forKey: .merges)
        var vocab: [String: Int] = [:]
        for (i, t) in tokens.enumerated() { vocab[t] = i }
        let pairs = merges.enumerated().map { i, m in
            let parts = m.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
            return (line: i + 1, left: parts[0], right: parts.count > 1 ? parts[1] : "")
        }
        do { bpe = try BytePairEncoder.make(vocab: vocab, merges: pairs, vocabPath: "tokenizer.json", mergesPath: "tokenizer.json") }
        catch { throw DecodingError.dataCorruptedError(forKey: .tokens, in: c, debugDescription: error.description) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(kind, forKey: .kind)
        if kind == .char { try c.encode(symbols, forKey: .symbols) }
        guard let bpe else { return }
        let special = Dictionary(uniqueKeysWithValues: bpe.specials.map { ($1, $0) })
        try c.encode(bpe.tokens.enumerated().map { special[$0] ?? ByteLevel.spell($1) }, forKey: .tokens)
        try c.encode(bpe.merges.map { ByteLevel.spell(bpe.tokens[$0]) + " " + ByteLevel.spell(bpe.tokens[$1]) }, forKey: .merges)
    }

    public static func == (a: Tokenizer, b: Tokenizer) -> Bool {
        guard a.kind == b.kind, a.symbols == b.symbols else { return false }
        guard let x = a.bpe, let y = b.bpe else { return a.bpe == nil && b.bpe == nil }
        return x === y || (x.tokens == y.tokens && x.merges.elementsEqual(y.merges, by: ==) && x.specials == y.specials)
    }
}

// MARK: - Encoding many pieces

/// Encodes text with one tokenizer, keeping per-thread state (the character index, the BPE
/// cache) across calls.
public final class TextEncoder {
    private let tokenizer: Tokenizer
    private let session = EncoderSession()
    private var charIndex: [UInt32: UInt32] = [:]

    init(_ tokenizer: Tokenizer) {
        self.tokenizer = tokenizer
        if tokenizer.kind == .char {
            for (i, s) in tokenizer.symbols.enumerated() { charIndex[s.unicodeScalars.first!.value] = UInt32(i) }
        }
    }

    /// Appends the ids of `text` (valid UTF-8) to `out`.
    public func encode(_ text: UnsafeBufferPointer<UInt8>, into out: inout [UInt32]) throws(DataError) {
        switch tokenizer.kind {
        case .byte:
            out.append(contentsOf: text.lazy.map { UInt32($0) })
        case .char:
            for u in String(decoding: text, as: UTF8.self).unicodeScalars {
                guard let id = charIndex[u.value] else { throw DataError.unknownCharacter(String(u)) }
                out.append(id)
            }
        case .gpt2, .bpe:
            tokenizer.bpe!.encode(text, into: &out, session: session)
        }
    }
}

/// Errors from data preparation and loading; each names the file and the fix.
public enum DataError: Error, CustomStringConvertible, Equatable {
    case unknownCharacter(String)
    case missing(path: String, fix: String)
    case malformed(path: String, problem: String)
    case invalid(path: String, problem: String, fix: String)
    case tooShort(path: String, tokens: Int, needed: Int)
    case vocabTooLarge(vocab: Int)

    /// `prepare` could not write below `path`.
    static func unwritable(_ path: String, _ error: Error) -> DataError {
        .missing(path: path, fix: "make the output directory writable (\(error.localizedDescription))")
    }

    public var description: String {
        switch self {
        case .unknownCharacter(let c):
            return "character \(c.debugDescription) is not in the vocabulary (prompt): use characters from the training corpus"
        case .missing(let p, let fix): return "missing file (\(p)): \(fix)"
        case .malformed(let p, let problem):
            return "malformed token shard (\(p)): \(problem); re-create it with `tessera prepare`"
        case .invalid(let p, let problem, let fix): return "\(p): \(problem); \(fix)"
        case .tooShort(let p, let n, let needed):
            return "token shard too short (\(p)): \(n) tokens but a window needs \(needed); use more text or a smaller --block-size"
        case .vocabTooLarge(let v):
            return "vocabulary of \(v) tokens exceeds the shard format's range (prepare): use a smaller vocabulary"
        }
    }
}

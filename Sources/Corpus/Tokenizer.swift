import Foundation

// MARK: - Tokenizer

/// Maps text to token ids and back.
///
/// `char`: one id per Unicode scalar that occurs in the corpus, sorted by code point (what
/// nanoGPT's shakespeare_char does with `sorted(set(text))`). `byte`: the 256 byte values.
public struct Tokenizer: Codable, Equatable, Sendable {
    /// Tokenizer family.
    public enum Kind: String, Codable, Sendable, CaseIterable { case char, byte }

    /// Which family this is.
    public let kind: Kind
    /// For `char`: the scalar of each id, as a one-scalar string.
    public let symbols: [String]

    /// Number of ids.
    public var vocabSize: Int { kind == .byte ? 256 : symbols.count }

    /// Builds a character vocabulary from a corpus.
    public static func char(corpus: String) -> Tokenizer {
        let scalars = Set(corpus.unicodeScalars.map(\.value)).sorted()
        return Tokenizer(kind: .char, symbols: scalars.map { String(UnicodeScalar($0)!) })
    }

    /// The byte tokenizer.
    public static let byte = Tokenizer(kind: .byte, symbols: [])

    /// Encodes text; throws on a character the vocabulary lacks.
    public func encode(_ text: String) throws(DataError) -> [UInt16] {
        switch kind {
        case .byte:
            return text.utf8.map { UInt16($0) }
        case .char:
            var index: [UInt32: UInt16] = [:]
            for (i, s) in symbols.enumerated() { index[s.unicodeScalars.first!.value] = UInt16(i) }
            var out: [UInt16] = []
            out.reserveCapacity(text.unicodeScalars.count)
            for u in text.unicodeScalars {
                guard let id = index[u.value] else {
                    throw DataError.unknownCharacter(String(u))
                }
                out.append(id)
            }
            return out
        }
    }

    /// Decodes ids; unknown ids become U+FFFD.
    public func decode(_ ids: [Int]) -> String {
        switch kind {
        case .byte:
            return String(decoding: ids.map { UInt8(clamping: $0) }, as: UTF8.self)
        case .char:
            return ids.map { $0 >= 0 && $0 < symbols.count ? symbols[$0] : "\u{FFFD}" }.joined()
        }
    }
}

/// Errors from data preparation and loading; each names the file and the fix.
public enum DataError: Error, CustomStringConvertible, Equatable {
    case unknownCharacter(String)
    case missing(path: String, fix: String)
    case malformed(path: String, problem: String)
    case tooShort(path: String, tokens: Int, needed: Int)
    case vocabTooLarge(vocab: Int)

    public var description: String {
        switch self {
        case .unknownCharacter(let c):
            return "character \(c.debugDescription) is not in the vocabulary (prompt): use characters from the training corpus"
        case .missing(let p, let fix): return "missing file (\(p)): \(fix)"
        case .malformed(let p, let problem):
            return "malformed token shard (\(p)): \(problem); re-create it with `tessera prepare`"
        case .tooShort(let p, let n, let needed):
            return "token shard too short (\(p)): \(n) tokens but a window needs \(needed); use more text or a smaller --block-size"
        case .vocabTooLarge(let v):
            return "vocabulary of \(v) tokens exceeds the uint16 shard range (prepare): use --tokenizer byte"
        }
    }
}

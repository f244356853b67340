// MARK: - GPT-2 pre-tokenization

/// Splits UTF-8 text into the pieces GPT-2's pattern matches, without a regex engine:
///
///     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
///
/// BPE never merges across pieces, so this fixes where tokens can end. The scanner follows
/// the alternation in order at each position, as the regex does: a contraction; an optional
/// space then a run of letters, numbers or other symbols; else a whitespace run, which leaves
/// its last character to the next piece when a non-space follows it (`\s+(?!\S)`), so that
/// " word" keeps its space. `\s` is Unicode White_Space, `\p{L}`/`\p{N}` the letter and
/// number categories, as in tiktoken's regex.
public enum PreTokenizer {
    /// Character classes the pattern distinguishes.
    @usableFromInline enum Class: UInt8, Sendable { case letter, number, space, other }

    /// Class of every scalar below U+10000 (the common case); higher scalars are looked up.
    @usableFromInline static let basicPlane: [Class] = (0..<0x10000).map { v in
        guard let u = Unicode.Scalar(UInt32(v)) else { return .other }   // surrogates never occur in valid UTF-8
        return classify(u)
    }

    @usableFromInline static func classify(_ u: Unicode.Scalar) -> Class {
        let p = u.properties
        if p.isWhitespace { return .space }
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
        case .decimalNumber, .letterNumber, .otherNumber: return .number
        default: return .other
        }
    }

    /// Class and byte length of the scalar starting at `i` (text is valid UTF-8).
    @inlinable @inline(__always)
    static func scalar(_ p: UnsafePointer<UInt8>, _ i: Int) -> (Class, Int) {
        let b0 = UInt32(p[i])
        if b0 < 0x80 { return (ascii[Int(b0)], 1) }
        if b0 < 0xE0 {
            return (basicPlane[Int((b0 & 0x1F) << 6 | UInt32(p[i + 1]) & 0x3F)], 2)
        }
        if b0 < 0xF0 {
            let v = (b0 & 0x0F) << 12 | (UInt32(p[i + 1]) & 0x3F) << 6 | UInt32(p[i + 2]) & 0x3F
            return (basicPlane[Int(v)], 3)
        }
        let v = (b0 & 0x07) << 18 | (UInt32(p[i + 1]) & 0x3F) << 12 | (UInt32(p[i + 2]) & 0x3F) << 6 | UInt32(p[i + 3]) & 0x3F
        return (Unicode.Scalar(v).map(classify) ?? .other, 4)
    }

    @usableFromInline static let ascii: [Class] = (0..<128).map { basicPlane[$0] }

    /// Calls `piece(start, end)` for each piece of `text` in order (byte offsets).
    @inlinable
    public static func split(_ text: UnsafeBufferPointer<UInt8>, _ piece: (Int, Int) -> Void) {
        guard let p = text.baseAddress else { return }
        let n = text.count
        var i = 0
        while i < n {
            let start = i
            if p[i] == 0x27, i + 1 < n {   // contractions: 's 't 'm 'd 'll 've 're
                let c1 = p[i + 1]
                if c1 == 0x73 || c1 == 0x74 || c1 == 0x6D || c1 == 0x64 { piece(i, i + 2); i += 2; continue }
                if i + 2 < n {
                    let c2 = p[i + 2]
                    if (c1 == 0x6C && c2 == 0x6C) || (c1 == 0x76 && c2 == 0x65) || (c1 == 0x72 && c2 == 0x65) {
                        piece(i, i + 3); i += 3; continue
                    }
                }
            }
            var (cls, len) = scalar(p, i)
            var j = i
            if p[i] == 0x20, i + 1 < n {
                let (next, nextLen) = scalar(p, i + 1)
                if next != .space { j = i + 1; cls = next; len = nextLen }
            }
            if cls != .space {
                j += len
                while j < n {
                    let (c, l) = scalar(p, j)
                    if c != cls { break }
                    j += l
                }
                piece(start, j); i = j; continue
            }
            // A whitespace run: all of it at the end of text or before more whitespace-only
            // text; otherwise all but its last character, which starts the next piece.
            var last = i, count = 0
            j = i
            while j < n {
                let (c, l) = scalar(p, j)
                if c != .space { break }
                last = j; j += l; count += 1
            }
            let end = (j < n && count >= 2) ? last : j
            piece(start, end); i = end
        }
    }

    /// The last offset in `text[lo..<hi]` where a piece is certain to start whatever follows
    /// `hi`, or nil: after a lone newline, between a visible ASCII character and a non-space
    /// character. Text cut there splits into the same pieces as the whole, so cut chunks
    /// encode in parallel. (After a run of whitespace the cut would not be safe: at the end of
    /// a chunk the run would stay whole, while `\s+(?!\S)` gives its last character to the
    /// next piece.)
    public static func safeCut(_ text: UnsafeBufferPointer<UInt8>, below hi: Int, above lo: Int) -> Int? {
        guard let p = text.baseAddress else { return nil }
        var k = hi - 1
        while k > max(lo, 1) {
            if p[k - 1] == 0x0A, p[k - 2] > 0x20, p[k - 2] < 0x7F, scalar(p, k).0 != .space { return k }
            k -= 1
        }
        return nil
    }
}

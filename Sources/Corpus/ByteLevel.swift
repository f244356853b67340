// MARK: - GPT-2's byte ↔ character map

/// GPT-2's reversible map from the 256 byte values to printable Unicode characters, so a
/// vocabulary of byte strings can be written as ordinary JSON text (`encoder.json`,
/// `vocab.json`, `merges.txt` all spell tokens this way).
///
/// Printable Latin-1 bytes map to themselves; the other 68 bytes (controls, space, 0x7F–0xA0,
/// 0xAD) map to U+0100 onwards in byte order, exactly as `bytes_to_unicode()` in GPT-2's
/// `encoder.py`.
public enum ByteLevel {
    /// The character that spells each byte.
    public static let characters: [Character] = {
        var map = [UInt32](repeating: 0, count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            if printable { map[b] = UInt32(b) } else { map[b] = next; next += 1 }
        }
        return map.map { Character(Unicode.Scalar($0)!) }
    }()

    /// The byte each spelling character stands for (nil for characters outside the map).
    public static func byte(of scalar: Unicode.Scalar) -> UInt8? { inverse[scalar.value] }

    private static let inverse: [UInt32: UInt8] = {
        var d: [UInt32: UInt8] = [:]
        for (b, c) in characters.enumerated() { d[c.unicodeScalars.first!.value] = UInt8(b) }
        return d
    }()

    /// Spells bytes as byte-level text.
    public static func spell(_ bytes: some Sequence<UInt8>) -> String {
        String(bytes.map { characters[Int($0)] })
    }

    /// The bytes a byte-level spelling stands for, or nil when it has a character outside the map.
    public static func bytes(of spelling: String) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(spelling.unicodeScalars.count)
        for u in spelling.unicodeScalars {
            guard let b = inverse[u.value] else { return nil }
            out.append(b)
        }
        return out
    }
}

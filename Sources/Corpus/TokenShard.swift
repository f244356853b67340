import Foundation

// MARK: - Token shard file format
//
// A shard is a 32-byte little-endian header followed by the tokens as uint16:
//
//   offset  size  field
//   0       8     magic "TSRATOK\0"
//   8       4     format version (1)
//   12      4     bytes per token (2)
//   16      8     token count
//   24      4     vocabulary size the tokens were written with
//   28      4     reserved (0)
//
// The vocabulary itself sits beside the shards in `tokenizer.json`.

/// A file of token ids.
public struct TokenShard: Sendable {
    /// File magic.
    public static let magic: [UInt8] = Array("TSRATOK".utf8) + [0]
    /// Format version written by this build.
    public static let version: UInt32 = 1
    /// Header length in bytes.
    public static let headerSize = 32

    /// The tokens.
    public let tokens: [UInt16]
    /// Vocabulary size recorded in the header.
    public let vocabSize: Int

    /// Creates a shard in memory.
    public init(tokens: [UInt16], vocabSize: Int) {
        self.tokens = tokens
        self.vocabSize = vocabSize
    }

    /// Serialises header and tokens.
    public func encoded() -> Data {
        var d = Data(capacity: Self.headerSize + tokens.count * 2)
        d.append(contentsOf: Self.magic)
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { d.append(contentsOf: $0) } }
        put(Self.version); put(UInt32(2)); put(UInt64(tokens.count)); put(UInt32(vocabSize)); put(UInt32(0))
        tokens.withUnsafeBufferPointer { buf in
            for t in buf { put(t) }
        }
        return d
    }

    /// Writes the shard atomically (temporary name, then rename).
    public func write(to url: URL) throws {
        try encoded().write(to: url, options: .atomic)
    }

    /// Reads and validates a shard, with errors that name the file and the problem.
    public static func read(from url: URL) throws(DataError) -> TokenShard {
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw DataError.missing(path: url.path, fix: "run `tessera prepare --input TEXT --out DIR` first")
        }
        guard let d = try? Data(contentsOf: url) else {
            throw DataError.malformed(path: url.path, problem: "cannot be read")
        }
        return try decode(d, path: url.path)
    }

    /// Parses shard bytes.
    public static func decode(_ d: Data, path: String) throws(DataError) -> TokenShard {
        guard d.count >= headerSize else {
            throw DataError.malformed(path: path, problem: "\(d.count) bytes is shorter than the \(headerSize)-byte header")
        }
        let bytes = [UInt8](d)
        guard Array(bytes[0..<8]) == magic else {
            throw DataError.malformed(path: path, problem: "wrong magic (not a tessera token shard)")
        }
        func u32(_ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(bytes[o + $1]) << (8 * UInt32($1)) } }
        func u64(_ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(bytes[o + $1]) << (8 * UInt64($1)) } }
        let ver = u32(8)
        guard ver == version else {
            throw DataError.malformed(path: path, problem: "format version \(ver), this build reads \(version)")
        }
        guard u32(12) == 2 else { throw DataError.malformed(path: path, problem: "token width \(u32(12)) bytes, expected 2") }
        // Compared without multiplying the header's count, which may be any 64-bit value.
        let claimed = u64(16), body = d.count - headerSize
        guard body % 2 == 0, claimed == UInt64(body / 2) else {
            throw DataError.malformed(path: path,
                                      problem: "header says \(claimed) tokens but the file holds \(body) bytes of tokens (truncated?)")
        }
        let n = body / 2
        var tokens = [UInt16](repeating: 0, count: n)
        tokens.withUnsafeMutableBytes { dst in
            _ = bytes.withUnsafeBytes { src in
                memcpy(dst.baseAddress!, src.baseAddress! + headerSize, 2 * n)
            }
        }
        #if _endian(big)
        tokens = tokens.map { UInt16(littleEndian: $0) }
        #endif
        return TokenShard(tokens: tokens, vocabSize: Int(u32(24)))
    }
}

import Foundation
#if canImport(Glibc)
import Glibc
#endif

// MARK: - Token shard file format
//
// llm.c's format, so a tessera dataset is an llm.c dataset and the reverse: a header of 256
// little-endian int32, then the tokens.
//
//   int32  field
//   0      magic 20240520
//   1      version: 1 = uint16 tokens (llm.c's); 2 = uint32 tokens (tessera's extension for
//          vocabularies above 65,536)
//   2      token count
//   3      vocabulary size the tokens were written with (tessera; llm.c writes 0 = unknown)
//   4–255  0
//
// nanoGPT's `train.bin`/`val.bin` are the uint16 tokens with no header at all.

/// A file of token ids, memory-mapped: no rank holds a dataset in memory, and the pages a
/// batch read are handed back to the kernel, so resident memory does not grow with the data.
public final class TokenShard: @unchecked Sendable {
    /// llm.c's magic number.
    public static let magic: Int32 = 20_240_520
    /// Header length in bytes.
    public static let headerSize = 1024

    /// Where the tokens came from (for errors).
    public let path: String
    /// Number of tokens.
    public let count: Int
    /// Bytes per token: 2 or 4.
    public let width: Int
    /// Vocabulary size the writer declared, or 0 when unknown (llm.c, nanoGPT).
    public let declaredVocab: Int
    private let tokens: UnsafeRawPointer
    private let mapping: (base: UnsafeMutableRawPointer, length: Int)?
    /// Packed instruction data's loss mask, one byte per token (1: the token is a target
    /// that counts), memory-mapped; nil for plain text, where every target counts.
    public private(set) var lossMask: Data?

    /// Wraps tokens held in memory (tests and synthetic benchmark data).
    public init(tokens: [UInt16], vocabSize: Int, path: String = "<memory>") {
        let storage = UnsafeMutableRawPointer.allocate(byteCount: max(1, tokens.count * 2), alignment: 64)
        tokens.withUnsafeBytes { storage.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        self.tokens = UnsafeRawPointer(storage)
        self.path = path; count = tokens.count; width = 2; declaredVocab = vocabSize; mapping = nil
    }

    private init(path: String, count: Int, width: Int, declaredVocab: Int, tokens: UnsafeRawPointer,
                 mapping: (UnsafeMutableRawPointer, Int)) {
        self.path = path; self.count = count; self.width = width; self.declaredVocab = declaredVocab
        self.tokens = tokens; self.mapping = mapping
    }

    deinit {
        if let mapping { munmap(mapping.base, mapping.length) } else { UnsafeMutableRawPointer(mutating: tokens).deallocate() }
    }

    /// Token `i`.
    @inline(__always) public subscript(i: Int) -> UInt32 {
        width == 2 ? UInt32(UInt16(littleEndian: tokens.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
                   : UInt32(littleEndian: tokens.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))
    }

    /// Attaches the loss mask in `path` (`prepare --format prompt-completion` wrote it).
    public func attachLossMask(_ path: String) throws(DataError) {
        guard let d = try? Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) else {
            throw DataError.missing(path: path, fix: "the shard's loss mask is missing: re-run `tessera prepare --format prompt-completion`")
        }
        guard d.count == count else {
            throw DataError.malformed(path: path, problem: "holds \(d.count) mask bytes for \(count) tokens in \(self.path)")
        }
        lossMask = d
    }

    /// Sets `targets[t]` to −1 (ignored by the loss) where the token at `first + t` does not
    /// count as a target; nothing without a loss mask.
    public func maskTargets(_ targets: UnsafeMutablePointer<Int32>, first: Int, count n: Int) {
        guard let lossMask else { return }
        lossMask.withUnsafeBytes { m in
            for t in 0..<n where m.load(fromByteOffset: first + t, as: UInt8.self) == 0 { targets[t] = -1 }
        }
    }

    /// Copies `n` tokens from `start` as Int32 and returns the largest.
    public func copy(from start: Int, count n: Int, into out: UnsafeMutablePointer<Int32>) -> UInt32 {
        var top: UInt32 = 0
        for t in 0..<n { let v = self[start + t]; out[t] = Int32(bitPattern: v); top = max(top, v) }
        return top
    }

    /// Hands the pages holding tokens `start..<start+n` back to the kernel (they stay in the
    /// page cache, but stop counting toward this process's resident memory).
    public func release(from start: Int, count n: Int) {
        guard let mapping else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let lo = (Self.headerSize + start * width) / page * page
        let hi = min(mapping.length, (Self.headerSize + (start + n) * width + page - 1) / page * page)
        if hi > lo { madvise(mapping.base + lo, hi - lo, MADV_DONTNEED) }
    }

    /// Largest token id, scanned in pieces whose pages are released as it goes.
    public func maxToken() -> (value: UInt32, at: Int) {
        var top: UInt32 = 0, at = 0
        let piece = 1 << 22
        var lo = 0
        while lo < count {
            let hi = min(count, lo + piece)
            for i in lo..<hi { let v = self[i]; if v > top { top = v; at = i } }
            release(from: lo, count: hi - lo)
            lo = hi
        }
        return (top, at)
    }

    // MARK: Opening

    /// Opens an llm.c-format shard, or (with `headerless`) nanoGPT's raw uint16 tokens.
    public static func open(_ path: String, headerless: Bool = false) throws(DataError) -> TokenShard {
        let fd = Glibc.open(path, O_RDONLY)
        guard fd >= 0 else {
            throw DataError.missing(path: path, fix: "run `tessera prepare --input TEXT --out DIR` first, or check --data")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw DataError.malformed(path: path, problem: "cannot be read") }
        let size = Int(st.st_size)
        let header = headerless ? 0 : headerSize
        guard size >= header else {
            throw DataError.malformed(path: path, problem: "\(size) bytes is shorter than llm.c's \(headerSize)-byte header (truncated?)")
        }
        var ints = [Int32](repeating: 0, count: 256)
        if !headerless {
            let got = ints.withUnsafeMutableBytes { pread(fd, $0.baseAddress, headerSize, 0) }
            guard got == headerSize else { throw DataError.malformed(path: path, problem: "header cannot be read") }
            ints = ints.map { Int32(littleEndian: $0) }
        }
        let (width, count, vocab) = try parseHeader(ints, fileSize: size, headerless: headerless, path: path)
        guard count > 0 else { throw DataError.malformed(path: path, problem: "holds no tokens") }
        guard let base = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), base != MAP_FAILED else {
            throw DataError.malformed(path: path, problem: "cannot be memory-mapped (errno \(errno))")
        }
        madvise(base, size, MADV_RANDOM)
        return TokenShard(path: path, count: count, width: width, declaredVocab: vocab,
                          tokens: UnsafeRawPointer(base + header), mapping: (base, size))
    }

    /// Token width, count and declared vocabulary from a header, checked against the file size.
    static func parseHeader(_ h: [Int32], fileSize: Int, headerless: Bool, path: String) throws(DataError) -> (Int, Int, Int) {
        if headerless {
            guard fileSize % 2 == 0 else {
                throw DataError.malformed(path: path, problem: "\(fileSize) bytes is not a whole number of uint16 tokens (truncated?)")
            }
            return (2, fileSize / 2, 0)
        }
        guard h[0] == magic else {
            throw DataError.malformed(path: path, problem: "wrong magic \(h[0]) (an llm.c/tessera shard starts with \(magic)); "
                                      + "if this is nanoGPT's headerless train.bin/val.bin, pass --vocab-size")
        }
        let width: Int
        switch h[1] {
        case 1: width = 2
        case 2: width = 4
        default: throw DataError.malformed(path: path, problem: "format version \(h[1]); this build reads 1 (uint16) and 2 (uint32)")
        }
        let count = Int(UInt32(bitPattern: h[2]))
        let body = fileSize - headerSize
        guard body % width == 0, body / width == count else {
            throw DataError.malformed(path: path, problem: "header says \(count) tokens but the file holds \(body) bytes of tokens (truncated?)")
        }
        guard h[3] >= 0 else { throw DataError.malformed(path: path, problem: "negative vocabulary size \(h[3]) in the header") }
        return (width, count, Int(h[3]))
    }

    /// The header of a shard of `count` tokens.
    public static func header(count: Int, width: Int, vocabSize: Int) -> Data {
        var h = [Int32](repeating: 0, count: 256)
        h[0] = magic; h[1] = width == 2 ? 1 : 2; h[2] = Int32(count); h[3] = Int32(vocabSize)
        return h.withUnsafeBytes { Data($0.map { $0 }) }   // little-endian hosts only (Linux x86-64/arm64)
    }

    /// Token width for a vocabulary: uint16 (llm.c's) up to 65,536 ids, else uint32.
    public static func width(forVocab vocab: Int) -> Int { vocab <= 65_536 ? 2 : 4 }

    /// Writes a whole shard (small shards; `ShardWriter` streams large ones).
    public static func write(_ tokens: [UInt32], vocabSize: Int, to url: URL) throws {
        let w = try ShardWriter(url: url, vocabSize: vocabSize)
        try tokens.withUnsafeBufferPointer { try w.append($0) }
        try w.finish()
    }
}

// MARK: - Writing

/// Streams tokens into one shard file: header placeholder, tokens, then the real header.
public final class ShardWriter {
    /// The file being written.
    public let url: URL
    /// Tokens written so far.
    public private(set) var count = 0
    let width: Int, vocabSize: Int
    private let handle: FileHandle
    private var buffer = Data()

    /// Most tokens one shard can hold (the header's count is an int32).
    public static let maxTokens = Int(Int32.max)

    /// Creates (or truncates) `url`.
    public init(url: URL, vocabSize: Int) throws {
        self.url = url; self.vocabSize = vocabSize; width = TokenShard.width(forVocab: vocabSize)
        guard FileManager.default.createFile(atPath: url.path, contents: nil) else { throw CocoaError(.fileWriteNoPermission) }
        handle = try FileHandle(forWritingTo: url)
        try handle.write(contentsOf: TokenShard.header(count: 0, width: width, vocabSize: vocabSize))
    }

    /// Appends tokens (each already checked to be below the vocabulary size).
    public func append(_ tokens: UnsafeBufferPointer<UInt32>) throws {
        precondition(count + tokens.count <= Self.maxTokens)
        if width == 2 {
            let start = buffer.count
            buffer.count += tokens.count * 2
            buffer.withUnsafeMutableBytes { raw in
                let p = (raw.baseAddress! + start).assumingMemoryBound(to: UInt16.self)
                for i in 0..<tokens.count { p[i] = UInt16(truncatingIfNeeded: tokens[i]).littleEndian }
            }
        } else {
            buffer.append(UnsafeBufferPointer(start: UnsafeRawPointer(tokens.baseAddress!).assumingMemoryBound(to: UInt8.self),
                                              count: tokens.count * 4))
        }
        count += tokens.count
        if buffer.count >= 1 << 22 { try flush() }
    }

    private func flush() throws {
        try handle.write(contentsOf: buffer)
        buffer.removeAll(keepingCapacity: true)
    }

    /// Writes the remaining tokens and the header with the final count, and closes the file.
    public func finish() throws {
        try flush()
        try handle.seek(toOffset: 0)
        try handle.write(contentsOf: TokenShard.header(count: count, width: width, vocabSize: vocabSize))
        try handle.synchronize()
        try handle.close()
    }
}

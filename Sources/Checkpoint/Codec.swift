import CZstd

// MARK: - Float compression: byte-plane shuffle + zstd

/// Compresses arrays of fixed-width numbers.
///
/// The bytes of each value are first regrouped into planes (all first bytes, then all second
/// bytes, …). Neighbouring weights share sign and exponent bytes, so the high planes become
/// long runs that zstd compresses well, while interleaved floats look like noise to it.
public enum FloatCodec {
    /// Shuffles `count` values of `width` bytes into planes.
    public static func shuffle(_ src: UnsafeRawPointer, count: Int, width: Int, into dst: UnsafeMutableRawPointer) {
        let s = src.assumingMemoryBound(to: UInt8.self), d = dst.assumingMemoryBound(to: UInt8.self)
        for b in 0..<width {
            let plane = d + b * count
            for i in 0..<count { plane[i] = s[i * width + b] }
        }
    }

    /// Inverse of `shuffle`.
    public static func unshuffle(_ src: UnsafeRawPointer, count: Int, width: Int, into dst: UnsafeMutableRawPointer) {
        let s = src.assumingMemoryBound(to: UInt8.self), d = dst.assumingMemoryBound(to: UInt8.self)
        for b in 0..<width {
            let plane = s + b * count
            for i in 0..<count { d[i * width + b] = plane[i] }
        }
    }

    /// Shuffled, zstd-compressed bytes of `count` values of `width` bytes.
    public static func compress(_ src: UnsafeRawPointer, count: Int, width: Int, level: Int32) throws(CodecError) -> [UInt8] {
        let n = count * width
        let tmp = UnsafeMutableRawPointer.allocate(byteCount: max(n, 1), alignment: 64)
        defer { tmp.deallocate() }
        shuffle(src, count: count, width: width, into: tmp)
        let cap = ZSTD_compressBound(n)
        var out = [UInt8](repeating: 0, count: cap)
        // Frame checksums let zstd itself catch a damaged frame, beside the file CRC.
        guard let cctx = ZSTD_createCCtx() else { throw CodecError("cannot create a compression context") }
        defer { ZSTD_freeCCtx(cctx) }
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level)
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1)
        let written = out.withUnsafeMutableBytes { ZSTD_compress2(cctx, $0.baseAddress, cap, tmp, n) }
        if ZSTD_isError(written) != 0 { throw CodecError(String(cString: ZSTD_getErrorName(written))) }
        out.removeSubrange(written...)
        return out
    }

    /// Decompresses into `dst`, which must hold exactly `count × width` bytes.
    public static func decompress(_ src: UnsafeRawBufferPointer, count: Int, width: Int,
                                  into dst: UnsafeMutableRawPointer) throws(CodecError) {
        let n = count * width
        let tmp = UnsafeMutableRawPointer.allocate(byteCount: max(n, 1), alignment: 64)
        defer { tmp.deallocate() }
        let got = ZSTD_decompress(tmp, n, src.baseAddress, src.count)
        if ZSTD_isError(got) != 0 { throw CodecError(String(cString: ZSTD_getErrorName(got))) }
        guard got == n else { throw CodecError("decompressed \(got) bytes, expected \(n)") }
        unshuffle(tmp, count: count, width: width, into: dst)
    }
}

/// A compression or decompression failure.
public struct CodecError: Error, CustomStringConvertible {
    public let message: String
    public init(_ m: String) { message = m }
    public var description: String { "zstd: \(message)" }
}

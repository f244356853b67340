import Checkpoint
import Foundation
import XCTest

final class CheckpointTests: XCTestCase {
    func testCRC32KnownValue() {
        let s = Array("123456789".utf8)
        XCTAssertEqual(s.withUnsafeBytes { CRC32.checksum($0) }, 0xCBF4_3926)
    }

    func testShuffleAndCodecRoundTrip() throws {
        var values = (0..<10_000).map { Float(sin(Double($0) * 0.01)) * 0.02 }
        values[7] = .nan; values[8] = .infinity; values[9] = -0.0
        let c = try values.withUnsafeBytes { try FloatCodec.compress($0.baseAddress!, count: values.count, width: 4, level: 3) }
        XCTAssertLessThan(c.count, values.count * 4, "smooth floats compress")
        var back = [Float](repeating: 0, count: values.count)
        try c.withUnsafeBytes { src in try back.withUnsafeMutableBytes { try FloatCodec.decompress(src, count: values.count, width: 4, into: $0.baseAddress!) } }
        XCTAssertEqual(back.map(\.bitPattern), values.map(\.bitPattern), "bit-exact")
        var shuffled = [UInt8](repeating: 0, count: 8)
        let two: [Float] = [1, 2]
        two.withUnsafeBytes { src in shuffled.withUnsafeMutableBytes { FloatCodec.shuffle(src.baseAddress!, count: 2, width: 4, into: $0.baseAddress!) } }
        // 1.0 = 0x3F800000, 2.0 = 0x40000000 (little-endian bytes): planes of byte 0, 1, 2, 3.
        XCTAssertEqual(shuffled, [0, 0, 0, 0, 0x80, 0, 0x3F, 0x40])
        var garbage = c; garbage[garbage.count / 2] ^= 0xFF
        XCTAssertThrowsError(try garbage.withUnsafeBytes { src in
            try back.withUnsafeMutableBytes { try FloatCodec.decompress(src, count: values.count, width: 4, into: $0.baseAddress!) } })
    }

    /// Shuffling is what makes float state compress: plain zstd does much worse.
    func testShuffleBeatsPlainCompression() throws {
        var rng = SystemRandomNumberGenerator()
        let values = (0..<50_000).map { _ in Float.random(in: -0.05...0.05, using: &rng) }
        let shuffled = try values.withUnsafeBytes { try FloatCodec.compress($0.baseAddress!, count: values.count, width: 4, level: 3) }
        let plain = try values.withUnsafeBytes { try FloatCodec.compress($0.baseAddress!, count: values.count * 4, width: 1, level: 3) }
        XCTAssertLessThan(Double(shuffled.count), 0.95 * Double(plain.count))
    }
}

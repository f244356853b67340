import Kernels
import Settings
import XCTest

/// Round-to-nearest-even conversions to bf16 and fp16, special values, and the vectorised
/// C paths against the scalar reference.
final class ConversionTests: XCTestCase {
    func bits(_ x: Float) -> UInt32 { x.bitPattern }

    func testBF16RoundsToNearestEven() {
        XCTAssertEqual(Convert.bf16(Float(bitPattern: 0x3F80_8000)), 0x3F80, "tie, lower is even: down")
        XCTAssertEqual(Convert.bf16(Float(bitPattern: 0x3F81_8000)), 0x3F82, "tie, upper is even: up")
        XCTAssertEqual(Convert.bf16(Float(bitPattern: 0x3F80_8001)), 0x3F81, "above the tie: up")
        XCTAssertEqual(Convert.bf16(Float(bitPattern: 0x3F80_7FFF)), 0x3F80, "below the tie: down")
        XCTAssertEqual(Convert.bf16(1), 0x3F80)
        XCTAssertEqual(Convert.bf16(-2), 0xC000)
    }

    func testBF16SpecialValues() {
        XCTAssertEqual(Convert.bf16(.infinity), 0x7F80)
        XCTAssertEqual(Convert.bf16(-.infinity), 0xFF80)
        XCTAssertTrue(Convert.float(bf16: Convert.bf16(.nan)).isNaN)
        // A NaN whose payload sits only in the low bits must not round into infinity.
        XCTAssertTrue(Convert.float(bf16: Convert.bf16(Float(bitPattern: 0x7F80_0001))).isNaN)
        XCTAssertEqual(Convert.bf16(Float(bitPattern: 0x7F7F_0000)), 0x7F7F, "largest finite bf16 survives")
        XCTAssertEqual(Convert.bf16(.greatestFiniteMagnitude), 0x7F80, "fp32 max rounds past bf16's max: inf")
        let sub = Float(bitPattern: 0x0001_0000)   // a bf16-representable subnormal
        XCTAssertEqual(Convert.float(bf16: Convert.bf16(sub)), sub)
        XCTAssertEqual(Convert.bf16(Float(bitPattern: 0x0000_8000)), 0x0000, "smallest subnormal tie rounds to even 0")
        XCTAssertEqual(Convert.bf16(-0.0), 0x8000)
    }

    func testFP16RoundingRangeAndSpecials() {
        XCTAssertEqual(Convert.fp16(1), 0x3C00)
        XCTAssertEqual(Convert.fp16(65504), 0x7BFF, "largest finite")
        XCTAssertEqual(Convert.fp16(65519), 0x7BFF, "rounds down to the largest finite")
        XCTAssertEqual(Convert.fp16(65520), 0x7C00, "the tie above the max overflows to inf")
        XCTAssertEqual(Convert.fp16(1e6), 0x7C00, "overflow is inf, not garbage")
        XCTAssertEqual(Convert.fp16(-1e6), 0xFC00)
        XCTAssertEqual(Convert.fp16(.infinity), 0x7C00)
        XCTAssertTrue(Convert.float(fp16: Convert.fp16(.nan)).isNaN)
        // 1 + 2^-11 is halfway between 1 and the next fp16 (1 + 2^-10): ties to even (1).
        XCTAssertEqual(Convert.fp16(1 + 0x1p-11), 0x3C00)
        XCTAssertEqual(Convert.fp16(1 + 3 * 0x1p-11), 0x3C02, "tie to even upwards")
        XCTAssertEqual(Convert.fp16(0x1p-24), 0x0001, "smallest subnormal")
        XCTAssertEqual(Convert.fp16(0x1p-25), 0x0000, "half the smallest subnormal: tie to even 0")
        XCTAssertEqual(Convert.fp16(3 * 0x1p-25), 0x0002, "1.5 × smallest: tie to even 2")
        XCTAssertEqual(Convert.float(fp16: 0x03FF), 1023 * 0x1p-24, "largest subnormal")
        XCTAssertEqual(Convert.float(fp16: 0x0400), 0x1p-14, "smallest normal")
    }

    /// The vectorised kernels the model uses agree bit for bit with the scalar reference.
    func testVectorisedConversionsMatchScalar() {
        var rng = SplitMix64(seed: 4)
        var xs: [Float] = (0..<100_000).map { _ in Float(bitPattern: UInt32(truncatingIfNeeded: rng.next())) }
        xs += [0, -0.0, .infinity, -.infinity, .nan, 65504, 65520, 0x1p-25, .greatestFiniteMagnitude]
        for p in [Precision.bf16, .fp16] {
            let half = HalfBuffer(count: xs.count)
            xs.withUnsafeBufferPointer { p.narrow($0.baseAddress!, into: half.pointer, xs.count) }
            let back = FloatBuffer(count: xs.count)
            p.widen(half.pointer, into: back.pointer, xs.count)
            for (i, x) in xs.enumerated() {
                let ref = p == .bf16 ? Convert.bf16(x) : Convert.fp16(x)
                if x.isNaN {
                    XCTAssertTrue(back[i].isNaN, "\(p) NaN at \(i)")
                } else {
                    XCTAssertEqual(half.pointer[i], ref, "\(p) \(x)")
                    XCTAssertEqual(back[i].bitPattern, (p == .bf16 ? Convert.float(bf16: ref) : Convert.float(fp16: ref)).bitPattern)
                }
            }
        }
    }

    /// Strided blocks converted in one call (the attention kernel's head rows) give the
    /// element-wise conversions' bits at every level, with row lengths that are and are not
    /// multiples of 16, and leave the values between rows alone.
    func testRowConversionsMatchElementwise() {
        defer { CPU.use(nil) }
        var rng = SplitMix64(seed: 8)
        for level in CPU.runnableLevels {
            CPU.use(level)
            for p in [Precision.bf16, .fp16] {
                for (rows, cols) in [(7, 64), (5, 37), (3, 16), (4, 1)] {
                    let ld = 3 * cols + 5, dstLD = cols + 3
                    var xs: [Float] = (0..<(rows * ld)).map { _ in Float(rng.nextNormal()) * 100 }
                    xs[1] = .infinity
                    var low = [UInt16](repeating: 0xABCD, count: rows * dstLD)
                    p.narrowRows(xs, ld: ld, rows: rows, cols: cols, into: &low, dstLD: dstLD)
                    var wide = [Float](repeating: -7, count: rows * ld)
                    p.widenRows(low, ld: dstLD, rows: rows, cols: cols, into: &wide, dstLD: ld)
                    for r in 0..<rows {
                        for j in 0..<dstLD {
                            let x = xs[r * ld + j], h = low[r * dstLD + j]
                            let label = "\(level) \(p) \(rows)×\(cols) (\(r), \(j))"
                            if j >= cols { XCTAssertEqual(h, 0xABCD, "\(label): between rows"); continue }
                            let ref = p == .bf16 ? Convert.bf16(x) : Convert.fp16(x)
                            XCTAssertEqual(h, ref, label)
                            let back = p == .bf16 ? Convert.float(bf16: ref) : Convert.float(fp16: ref)
                            XCTAssertEqual(wide[r * ld + j].bitPattern, back.bitPattern, label)
                        }
                        for j in cols..<ld { XCTAssertEqual(wide[r * ld + j], -7, "\(level) \(p): between widened rows") }
                    }
                }
            }
        }
    }

    /// bf16 GEMM (oneDNN or the widening fallback) equals fp32 GEMM on bf16-exact operands.
    func testLowGemmMatchesWidenedSgemm() {
        var rng = SplitMix64(seed: 9)
        let m = 33, n = 17, k = 40
        let a = (0..<(m * k)).map { _ in Convert.float(bf16: Convert.bf16(Float(rng.nextNormal()))) }
        let b = (0..<(n * k)).map { _ in Convert.float(bf16: Convert.bf16(Float(rng.nextNormal()))) }
        for p in [Precision.bf16, .fp16] {
            let ah = a.map { p == .bf16 ? Convert.bf16($0) : Convert.fp16($0) }
            let bh = b.map { p == .bf16 ? Convert.bf16($0) : Convert.fp16($0) }
            var c = [Float](repeating: 0, count: m * n), ref = c
            Gemm.lowGemm(p, .none, .transpose, m: m, n: n, k: k, a: ah, lda: k, b: bh, ldb: k, c: &c, ldc: n)
            let aw = ah.map { p == .bf16 ? Convert.float(bf16: $0) : Convert.float(fp16: $0) }
            let bw = bh.map { p == .bf16 ? Convert.float(bf16: $0) : Convert.float(fp16: $0) }
            Gemm.sgemm(.none, .transpose, m: m, n: n, k: k, a: aw, lda: k, b: bw, ldb: k, c: &ref, ldc: n)
            for i in 0..<(m * n) { XCTAssertEqual(c[i], ref[i], accuracy: 1e-4 * max(1, abs(ref[i])), "\(p) \(i)") }
        }
    }

    /// fp16's widening fallback on strided operands (a sub-matrix of a wider one) large enough
    /// to be widened on several threads: the rows land where the contiguous copy needs them.
    func testWideningFallbackOnStridedOperands() {
        CPU.use(.generic)   // the level whose products widen whole operands on every CPU
        defer { CPU.use(nil) }
        XCTAssertFalse(Gemm.packsWhileWidening)
        Gemm.setThreads(2)
        var rng = SplitMix64(seed: 11)
        let m = 300, n = 150, k = 200, lda = 230, ldb = 210
        let a = (0..<(m * lda)).map { _ in Convert.fp16(Float(rng.nextNormal())) }
        let b = (0..<(k * ldb)).map { _ in Convert.fp16(Float(rng.nextNormal())) }
        var c = [Float](repeating: 0, count: m * n), ref = c
        Gemm.lowGemm(.fp16, .none, .none, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, c: &c, ldc: n)
        Gemm.sgemm(.none, .none, m: m, n: n, k: k, a: a.map(Convert.float(fp16:)), lda: lda, b: b.map(Convert.float(fp16:)), ldb: ldb,
                   c: &ref, ldc: n)
        for i in 0..<(m * n) { XCTAssertEqual(c[i], ref[i], accuracy: 1e-5 * max(1, abs(ref[i])), "element \(i)") }
    }

    /// A linear map's backward multiplies its output gradient twice: inside
    /// `reusingWidenedOperands` the fallback widens it once. Proven by changing the stored
    /// operand between the two products (which the scope's contract forbids): inside the
    /// scope the second product still sees the first widening, outside it sees the change;
    /// the reused product equals a fresh one bit for bit, and a new shape or pointer widens.
    func testWidenedOperandsAreReusedOnlyInsideTheScope() {
        CPU.use(.generic)
        defer { CPU.use(nil) }
        Gemm.setThreads(2)
        var rng = SplitMix64(seed: 12)
        let n = 64, k = 48
        var g = (0..<(n * k)).map { _ in Convert.fp16(Float(rng.nextNormal())) }
        let w = (0..<(k * n)).map { _ in Convert.fp16(Float(rng.nextNormal())) }
        let x = (0..<(n * n)).map { _ in Convert.fp16(Float(rng.nextNormal())) }
        func product(_ g: [UInt16], _ b: [UInt16]) -> [Float] {
            var c = [Float](repeating: 0, count: n * n)
            Gemm.lowGemm(.fp16, .none, .none, m: n, n: n, k: k, a: g, lda: k, b: b, ldb: n, c: &c, ldc: n)
            return c
        }
        let original = g
        let fresh = product(original, w)
        let changed = g.map { _ in Convert.fp16(1) }
        var inside: [Float] = [], afterChange: [Float] = [], otherB: [Float] = []
        g.withUnsafeMutableBufferPointer { gp in
            Gemm.reusingWidenedOperands {
                var c = [Float](repeating: 0, count: n * n)
                Gemm.lowGemm(.fp16, .none, .none, m: n, n: n, k: k, a: gp.baseAddress!, lda: k, b: w, ldb: n, c: &c, ldc: n)
                XCTAssertEqual(c, fresh)
                gp.baseAddress!.update(from: changed, count: n * k)   // breaks the contract on purpose
                Gemm.lowGemm(.fp16, .none, .none, m: n, n: n, k: k, a: gp.baseAddress!, lda: k, b: w, ldb: n, c: &c, ldc: n)
                inside = c
                Gemm.lowGemm(.fp16, .none, .none, m: n, n: n, k: k, a: gp.baseAddress!, lda: k, b: x, ldb: n, c: &c, ldc: n)
                otherB = c
            }
            var c = [Float](repeating: 0, count: n * n)
            Gemm.lowGemm(.fp16, .none, .none, m: n, n: n, k: k, a: gp.baseAddress!, lda: k, b: w, ldb: n, c: &c, ldc: n)
            afterChange = c
        }
        XCTAssertEqual(inside, fresh, "inside the scope the first widening of the gradient is reused")
        XCTAssertEqual(otherB, product(original, x), "the gradient still reused, the new operand widened")
        XCTAssertEqual(afterChange, product(changed, w), "after the scope the operand is widened again")
        XCTAssertNotEqual(afterChange, fresh)
    }
}

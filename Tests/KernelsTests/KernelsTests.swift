import Kernels
import Settings
import XCTest

final class KernelsTests: XCTestCase {
    /// Strided row-major GEMM against a naive triple loop, all four transpose combinations.
    func testGemmMatchesNaive() {
        var rng = SplitMix64(seed: 1)
        let m = 5, n = 7, k = 3
        for ta in [Transpose.none, .transpose] {
            for tb in [Transpose.none, .transpose] {
                let a = (0..<(m * k)).map { _ in Float(rng.nextNormal()) }
                let b = (0..<(k * n)).map { _ in Float(rng.nextNormal()) }
                var c = [Float](repeating: 1, count: m * n)
                let lda = ta == .none ? k : m, ldb = tb == .none ? n : k
                Gemm.sgemm(ta, tb, m: m, n: n, k: k, alpha: 2, a: a, lda: lda, b: b, ldb: ldb, beta: 0.5, c: &c, ldc: n)
                for i in 0..<m {
                    for j in 0..<n {
                        var s: Float = 0
                        for p in 0..<k {
                            let av = ta == .none ? a[i * k + p] : a[p * m + i]
                            let bv = tb == .none ? b[p * n + j] : b[j * k + p]
                            s += av * bv
                        }
                        XCTAssertEqual(c[i * n + j], 2 * s + 0.5, accuracy: 1e-4)
                    }
                }
            }
        }
    }

    func testRandomIsReproducibleAndNormal() {
        var a = SplitMix64(seed: 5), b = SplitMix64(seed: 5)
        XCTAssertEqual((0..<10).map { _ in a.next() }, (0..<10).map { _ in b.next() })
        var r = SplitMix64(seed: 11)
        let xs = (0..<20_000).map { _ in r.nextNormal() }
        let mean = xs.reduce(0, +) / Double(xs.count)
        let varc = xs.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(xs.count)
        XCTAssertEqual(mean, 0, accuracy: 0.03)
        XCTAssertEqual(varc, 1, accuracy: 0.05)
        XCTAssertNotEqual(SplitMix64.hash(1, 2, 3), SplitMix64.hash(1, 3, 2))
    }

    func testSumOfSquaresAndFinite() {
        let x: [Float] = [1, 2, 3, 4, 5]
        XCTAssertEqual(Vector.sumOfSquares(x, 5), 55)
        // Finite exactly when every element is (what the strategies' overflow check relies on),
        // even for the largest floats, whose squares fp64 still holds.
        XCTAssertTrue(Vector.sumOfSquares(x, 5).isFinite)
        XCTAssertFalse(Vector.sumOfSquares([1, .nan], 2).isFinite)
        XCTAssertFalse(Vector.sumOfSquares([.infinity], 1).isFinite)
        XCTAssertFalse(Vector.sumOfSquares([-.infinity, 2], 2).isFinite)
        let largest = [Float](repeating: .greatestFiniteMagnitude, count: 100_000)
        XCTAssertTrue(Vector.sumOfSquares(largest, largest.count).isFinite)
    }
}

/// Every compiled copy of the element-wise kernels computes what the baseline copy does.
final class ISALevelTests: XCTestCase {
    /// Runs `body` with each level this CPU runs forced in turn, then lifts the force.
    func atEveryLevel(_ body: (ISA) -> Void) {
        defer { CPU.use(nil) }
        for level in CPU.runnableLevels {
            CPU.use(level)
            body(level)
        }
    }

    func testEveryLevelAgreesWithTheBaseline() {
        defer { CPU.use(nil) }
        let n = 1003
        var rng = SplitMix64(seed: 5)
        let x = (0..<n).map { _ in Float(rng.nextNormal() * 3) }
        let dy = (0..<n).map { _ in Float(rng.nextNormal()) }
        func run() -> (gelu: [Float], dgelu: [Float], bf16: [UInt16], f16: [UInt16], sumsq: Double, exp: [Float]) {
            var g = [Float](repeating: 0, count: n), d = [Float](repeating: 0, count: n)
            var b = [UInt16](repeating: 0, count: n), h = [UInt16](repeating: 0, count: n)
            GELU.forward(out: &g, inp: x, n: n)
            GELU.backward(dinp: &d, inp: x, dout: dy, n: n)
            Precision.bf16.narrow(x, into: &b, n); Precision.fp16.narrow(x, into: &h, n)
            var e = x
            _ = e.withUnsafeMutableBufferPointer { Vector.expShiftSum($0.baseAddress!, n, shift: 1) }
            return (g, d, b, h, x.withUnsafeBufferPointer { Vector.sumOfSquares($0.baseAddress!, n) }, e)
        }
        CPU.use(.generic)
        XCTAssertEqual(CPU.isa, .generic)
        let base = run()
        for level in CPU.runnableLevels where level > .generic {
            CPU.use(level)
            XCTAssertEqual(CPU.isa, level)
            let r = run()
            XCTAssertEqual(r.bf16, base.bf16, "\(level) bf16 rounding")
            XCTAssertEqual(r.f16, base.f16, "\(level) fp16 rounding")
            for i in 0..<n {
                XCTAssertEqual(r.gelu[i], base.gelu[i], accuracy: 1e-6 * max(1, abs(base.gelu[i])), "\(level) gelu[\(i)]")
                XCTAssertEqual(r.dgelu[i], base.dgelu[i], accuracy: 1e-5 * max(1, abs(base.dgelu[i])), "\(level) gelu'[\(i)]")
                XCTAssertEqual(r.exp[i], base.exp[i], accuracy: 1e-6 * max(1, abs(base.exp[i])), "\(level) exp[\(i)]")
            }
            XCTAssertEqual(r.sumsq, base.sumsq, accuracy: 1e-9 * base.sumsq, "\(level) sum of squares")
        }
        print("kernel levels checked on \(CPU.model): \(CPU.runnableLevels.map(\.description).joined(separator: ", "))")
    }

    /// The lane-wise maximum equals a sequential scan at every level: on lengths around the
    /// 16 lanes, with the largest value in the tail, NaNs skipped, and the starting value kept
    /// when nothing exceeds it.
    func testMaxValueAtEveryLevel() {
        var rng = SplitMix64(seed: 8)
        atEveryLevel { level in
            for n in [0, 1, 15, 16, 17, 33, 128, 1003] {
                var x = (0..<n).map { _ in Float(rng.nextNormal()) }
                if n > 2 { x[n - 1] = 9; x[1] = .nan }
                let scan = x.reduce(-Float.infinity) { $1 > $0 ? $1 : $0 }
                XCTAssertEqual(Vector.maxValue(x, n, startingAt: -.infinity), scan, "\(level) n=\(n)")
                XCTAssertEqual(Vector.maxValue(x, n, startingAt: 100), 100, "\(level) n=\(n) start kept")
            }
        }
    }

    /// Column sums (bias gradients) are each column added over the rows in order from its own
    /// value, at every level: widths around the vector lanes and the 256-column strips, a
    /// stride wider than the columns read, and a large first value that shows the order.
    func testColumnSumsAreTheRowOrderSumsAtEveryLevel() {
        var rng = SplitMix64(seed: 12)
        atEveryLevel { level in
            for (rows, cols, ld) in [(1, 1, 1), (7, 15, 15), (33, 17, 40), (300, 256, 256), (129, 600, 613)] {
                let x = (0..<(rows * ld)).map { _ in Float(rng.nextNormal()) }
                let start = (0..<cols).map { j in j % 3 == 2 ? Float(1e7) : Float(rng.nextNormal()) }
                var expected = start
                for r in 0..<rows { for j in 0..<cols { expected[j] += x[r * ld + j] } }
                var sums = start
                Vector.addColumnSums(x, rows: rows, cols: cols, ld: ld, into: &sums)
                XCTAssertEqual(sums.map(\.bitPattern), expected.map(\.bitPattern), "\(level) \(rows)×\(cols), ld \(ld)")
                XCTAssertNotEqual(sums, start, "the sums move")
            }
        }
    }

    /// Attention backward's D = rowsum(dO ⊙ O): every level's kernel gives, for each format,
    /// the bits of the one-row loop (from +0, product then add, column order), on row counts
    /// around its groups of eight and prefetch distance and with rows longer than they are read.
    func testRowDotsAreTheOneRowLoopsAtEveryLevel() {
        var rng = SplitMix64(seed: 21)
        atEveryLevel { level in
            for (rows, n, ld) in [(1, 1, 1), (7, 16, 20), (8, 64, 64), (41, 64, 384), (256, 33, 97)] {
                let g = (0..<(rows * ld)).map { i in i % 11 == 0 ? Float(3e4) : Float(rng.nextNormal()) }
                let o = (0..<(rows * ld)).map { i in i % 13 == 0 ? -Float(3e4) : Float(rng.nextNormal()) }
                func oneRowLoops(_ g: [Float], _ o: [Float]) -> [UInt32] {
                    (0..<rows).map { r in
                        var d: Float = 0
                        for c in 0..<n { d += g[r * ld + c] * o[r * ld + c] }
                        return d.bitPattern
                    }
                }
                func differing(_ out: [Float], _ expected: [UInt32]) -> [Int] {
                    (0..<rows).filter { out[$0].bitPattern != expected[$0] }
                }
                var out = [Float](repeating: .nan, count: rows)
                Vector.rowDots(FP32.self, into: &out, g, ldg: ld, o, ldo: ld, rows: rows, n: n)
                XCTAssertEqual(differing(out, oneRowLoops(g, o)), [], "fp32 \(level) \(rows)×\(n), ld \(ld): rows")
                for precision in [Precision.bf16, .fp16] {
                    var g16 = [UInt16](repeating: 0, count: g.count), o16 = g16
                    precision.narrow(g, into: &g16, g.count)
                    precision.narrow(o, into: &o16, o.count)
                    var gw = [Float](repeating: 0, count: g.count), ow = gw
                    precision.widen(g16, into: &gw, g.count)
                    precision.widen(o16, into: &ow, o.count)
                    out = [Float](repeating: .nan, count: rows)
                    if precision == .bf16 {
                        Vector.rowDots(BF16.self, into: &out, g16, ldg: ld, o16, ldo: ld, rows: rows, n: n)
                    } else {
                        Vector.rowDots(FP16.self, into: &out, g16, ldg: ld, o16, ldo: ld, rows: rows, n: n)
                    }
                    XCTAssertEqual(differing(out, oneRowLoops(gw, ow)), [], "\(precision) \(level) \(rows)×\(n), ld \(ld): rows")
                }
            }
        }
    }

    /// `Vector.scale` in C: at every level each element is `x·s` rounded once, as the scalar
    /// loop gives (lengths around the vector widths; a factor that is not a power of two, so
    /// the products round, and one that overflows large elements).
    func testScaleIsOneRoundingPerElementAtEveryLevel() {
        var rng = SplitMix64(seed: 33)
        atEveryLevel { level in
            for (n, s) in [(1, Float(0.3)), (15, 1 / 3), (16, 0.3), (77, 1e30), (1000, -0.7)] {
                let x = (0..<n).map { i in i % 9 == 0 ? Float(3e10) : Float(rng.nextNormal()) }
                var y = x
                Vector.scale(&y, n, by: s)
                let expected = x.map { ($0 * s).bitPattern }
                XCTAssertEqual(y.map(\.bitPattern), expected, "\(level) n \(n), s \(s)")
                XCTAssertNotEqual(y, x)
            }
        }
    }
}

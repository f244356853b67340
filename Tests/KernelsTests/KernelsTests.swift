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
        XCTAssertTrue(Vector.allFinite(x, 5))
        XCTAssertFalse(Vector.allFinite([1, .nan], 2))
        XCTAssertFalse(Vector.allFinite([.infinity], 1))
    }
}

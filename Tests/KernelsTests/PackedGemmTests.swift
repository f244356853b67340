import Kernels
import Settings
import XCTest

/// The GEMM that widens 16-bit operands while packing them (16-bit products without bf16 dot
/// products, AVX2 and AVX-512 kernels): every transpose, edge tiles, blocks crossed in every
/// dimension, beta, strided operands, thread counts and concurrent calls.
final class PackedGemmTests: XCTestCase {
    override func setUpWithError() throws {
        try XCTSkipIf(CPU.hardwareISA < .avx2, "this CPU has no AVX2 + FMA + F16C, so the packing GEMM never runs here")
    }

    /// The kernel levels this CPU can run: AVX2's 6×16 tiles, and AVX-512's 6×32 where present
    /// (a CPU without AVX-512 tests only the tiles it will use).
    var levels: [ISA] { CPU.hardwareISA >= .avx512 ? [.avx2, .avx512] : [.avx2] }

    override func tearDown() {
        CPU.use(nil)
        Gemm.setThreads(2)
    }

    struct Case {
        let p: Precision, transA: Transpose, transB: Transpose, m: Int, n: Int, k: Int, beta: Float
        var lda: Int { (transA == .none ? k : m) + 3 }
        var ldb: Int { (transB == .none ? n : k) + 5 }
        var ldc: Int { n + 2 }
    }

    func narrow(_ x: Float, _ p: Precision) -> UInt16 { p == .bf16 ? Convert.bf16(x) : Convert.fp16(x) }
    func widen(_ h: UInt16, _ p: Precision) -> Float { p == .bf16 ? Convert.float(bf16: h) : Convert.float(fp16: h) }

    /// Runs `c` through `Gemm.lowGemm` and checks every element against a double-precision sum
    /// of the same (exactly widened) products, relative to Σ|aᵢbᵢ|, and that C's padding
    /// columns are untouched.
    func check(_ c: Case, seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        let rowsA = c.transA == .none ? c.m : c.k, rowsB = c.transB == .none ? c.k : c.n
        let a = (0..<(rowsA * c.lda)).map { _ in narrow(Float(rng.nextNormal()), c.p) }
        let b = (0..<(rowsB * c.ldb)).map { _ in narrow(Float(rng.nextNormal()), c.p) }
        // beta 0 must overwrite whatever C holds, NaN included.
        let c0: [Float] = (0..<(c.m * c.ldc)).map { i in c.beta == 0 && i % 7 == 0 ? .nan : Float(rng.nextNormal()) }
        var out = c0
        Gemm.lowGemm(c.p, c.transA, c.transB, m: c.m, n: c.n, k: c.k, a: a, lda: c.lda, b: b, ldb: c.ldb,
                     beta: c.beta, c: &out, ldc: c.ldc)
        var worst = 0.0
        for i in 0..<c.m {
            for j in 0..<c.n {
                var sum = 0.0, size = 0.0
                for p in 0..<c.k {
                    let x = Double(widen(c.transA == .none ? a[i * c.lda + p] : a[p * c.lda + i], c.p))
                    let y = Double(widen(c.transB == .none ? b[p * c.ldb + j] : b[j * c.ldb + p], c.p))
                    sum += x * y; size += abs(x * y)
                }
                if c.beta != 0 { sum += Double(c.beta) * Double(c0[i * c.ldc + j]); size += abs(Double(c.beta * c0[i * c.ldc + j])) }
                worst = max(worst, abs(sum - Double(out[i * c.ldc + j])) / max(size, 1e-30))
            }
            for j in c.n..<c.ldc { XCTAssertEqual(out[i * c.ldc + j].bitPattern, c0[i * c.ldc + j].bitPattern, "padding \(c)") }
        }
        // fp32 accumulation of K products: a few ulps of Σ|aᵢbᵢ|.
        XCTAssertLessThan(worst, 2e-6, "\(c)")
    }

    func testMatchesDoubleReferenceForEveryTransposeAndEdge() {
        // Tiles are 6×16 (AVX2) or 6×32 (AVX-512), K in one block up to 384 and in equal blocks
        // of about 256 beyond, row blocks 168, column panels 4064: shapes below, at, and across
        // each, on one and two threads.
        let shapes = [(1, 1, 1), (5, 7, 3), (6, 16, 8), (6, 32, 8), (13, 33, 300), (170, 50, 257), (37, 300, 530),
                      (300, 37, 530), (8, 4100, 9), (40, 20, 384), (20, 40, 385)]
        var seed: UInt64 = 1
        for level in levels {
            CPU.use(level)
            XCTAssertTrue(Gemm.packsWhileWidening, "\(level)")
            for threads in [1, 2] {
                Gemm.setThreads(threads)
                for (s, (m, n, k)) in shapes.enumerated() {
                    for p in [Precision.bf16, .fp16] {
                        for ta in [Transpose.none, .transpose] {
                            for tb in [Transpose.none, .transpose] {
                                seed += 1
                                check(Case(p: p, transA: ta, transB: tb, m: m, n: n, k: k, beta: [0, 1, 0.5][s % 3]), seed: seed)
                            }
                        }
                    }
                }
            }
        }
    }

    /// Threads split C's rows or columns and every element sums in the same order, so the
    /// bits do not depend on the thread count; calls from concurrent tasks (the attention
    /// kernels' use) each get their own panels and give the serial call's bits.
    func testBitsIndependentOfThreadsAndSafeFromConcurrentTasks() {
        var rng = SplitMix64(seed: 77)
        let shapes = [(700, 90, 300), (90, 700, 300), (400, 400, 520)]
        let inputs = shapes.map { (m, n, k) in
            ((0..<(m * k)).map { _ in Convert.bf16(Float(rng.nextNormal())) }, (0..<(k * n)).map { _ in Convert.bf16(Float(rng.nextNormal())) })
        }
        func product(_ s: Int) -> [Float] {
            let (m, n, k) = shapes[s]
            var c = [Float](repeating: 0, count: m * n)
            Gemm.lowGemm(.bf16, .transpose, .none, m: m, n: n, k: k, a: inputs[s].0, lda: m, b: inputs[s].1, ldb: n, c: &c, ldc: n)
            return c
        }
        for level in levels {
            CPU.use(level)
            XCTAssertTrue(Gemm.lowGemmIsReentrant(.bf16) && Gemm.lowGemmIsReentrant(.fp16), "\(level)")
            Gemm.setThreads(1)
            let serial = shapes.indices.map(product)
            Gemm.setThreads(2)
            for s in shapes.indices { XCTAssertEqual(product(s), serial[s], "\(level), 2 threads, shape \(shapes[s])") }
            let results = UnsafeMutablePointer<[Float]>.allocate(capacity: 3 * shapes.count)
            results.initialize(repeating: [], count: 3 * shapes.count)
            defer { results.deinitialize(count: 3 * shapes.count); results.deallocate() }
            ParallelFor.tasks(3 * shapes.count, workers: 2) { task, _ in results[task] = product(task % shapes.count) }
            for t in 0..<(3 * shapes.count) { XCTAssertEqual(results[t], serial[t % shapes.count], "\(level), task \(t)") }
        }
    }

    /// A product rounded as its tiles finish (`packedRoundedGemm`, a linear map's output kept in
    /// 16 bits) stores the bits of the product into fp32, the bias added, then rounded: K in one
    /// block and in several (the earlier blocks' sums in `partial`), edge tiles, rows and
    /// columns split over threads, with and without a bias, strided output whose padding stays.
    func testRoundedOutputHasTheBitsOfTheProductBiasedThenRounded() {
        let shapes = [(1, 1, 1), (13, 33, 300), (170, 50, 384), (37, 300, 385), (300, 37, 768), (64, 1152, 384),
                      (200, 97, 1000)]
        var rng = SplitMix64(seed: 5)
        for level in levels {
            CPU.use(level)
            for threads in [1, 2] {
                Gemm.setThreads(threads)
                for (s, (m, n, k)) in shapes.enumerated() {
                    for p in [Precision.bf16, .fp16] {
                        for tb in [Transpose.transpose, .none] {
                            let hasBias = s % 2 == 0 || tb == .none, ldo = n + 3
                            let a = (0..<(m * k)).map { _ in narrow(Float(rng.nextNormal()), p) }
                            let b = (0..<(k * n)).map { _ in narrow(Float(rng.nextNormal()) * 0.3, p) }
                            let bias = (0..<n).map { _ in Float(rng.nextNormal()) }
                            let ldb = tb == .none ? n : k
                            var fp32 = [Float](repeating: 0, count: m * n)
                            Gemm.lowGemm(p, .none, tb, m: m, n: n, k: k, a: a, lda: k, b: b, ldb: ldb, c: &fp32, ldc: n)
                            var expected = [UInt16](repeating: 0xABCD, count: m * ldo)
                            for i in 0..<m {
                                for j in 0..<n { expected[i * ldo + j] = narrow(fp32[i * n + j] + (hasBias ? bias[j] : 0), p) }
                            }
                            var out = [UInt16](repeating: 0xABCD, count: m * ldo)
                            var partial = [Float](repeating: .nan, count: m * n)
                            let ran = bias.withUnsafeBufferPointer { bp in
                                Gemm.packedRoundedGemm(p, .none, tb, m: m, n: n, k: k, a: a, lda: k, b: b, ldb: ldb,
                                                       bias: hasBias ? bp.baseAddress : nil, c: &out, ldc: ldo,
                                                       partial: &partial)
                            }
                            XCTAssertTrue(ran, "\(level) \(p)")
                            let label = "\(level), \(threads) thread(s), \(p), \(m)×\(n)×\(k) \(tb) bias \(hasBias)"
                            XCTAssertEqual(zip(out, expected).filter { $0 != $1 }.count, 0, "\(label): differing values")
                            XCTAssertGreaterThan(Set(out).count, min(m * n, 1000) / 2, "\(label): a real product")
                        }
                    }
                }
            }
        }
    }
}

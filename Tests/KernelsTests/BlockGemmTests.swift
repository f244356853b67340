import Kernels
import Settings
import XCTest

/// The register-tile bf16 GEMM that runs attention's block products: the same bits as
/// oneDNN's matmul, which it replaces there, on every layout and edge the attention kernel
/// and odd shapes can give it.
final class BlockGemmTests: XCTestCase {
    override func setUpWithError() throws {
        try XCTSkipIf(!Gemm.bf16IsNative, "bf16 products do not run on bf16 dot products here (no AVX512-BF16, or "
                      + "TESSERA_ISA lowers it): the block GEMM declines, and there is nothing to compare")
        useTheTileLevel()
    }

    override func tearDown() { CPU.use(nil) }

    /// A bf16 value of about `scale`, now and then one of fp32's subnormals (which bf16 dot
    /// products flush: both ways must).
    func value(_ rng: inout SplitMix64, scale: Float = 1) -> UInt16 {
        if rng.next() % 97 == 0 { return Convert.bf16(Float(bitPattern: 0x0000_8000 + UInt32(rng.next() % 1000))) }
        return Convert.bf16(Float(rng.nextNormal()) * scale)
    }

    func testSameBitsAsOneDNNOnEveryLayoutAndEdge() {
        var rng = SplitMix64(seed: 5)
        // (transA, transB, m, n, k, beta): attention's block products at head size 64 (scores
        // Q·Kᵀ and dO·Vᵀ; P·V and dS·K; Pᵀ·dO and dSᵀ·Q), then edges: tails of the 6-row and
        // 64-column tile, an odd depth, depths past one 16×16 transpose, single rows.
        let cases: [(Transpose, Transpose, Int, Int, Int, Float)] = [
            (.none, .transpose, 64, 64, 64, 0), (.none, .transpose, 64, 128, 64, 0), (.none, .transpose, 128, 128, 64, 0),
            (.none, .none, 64, 64, 64, 1), (.none, .none, 64, 64, 128, 1), (.none, .none, 128, 64, 128, 1),
            (.transpose, .none, 64, 64, 64, 1), (.transpose, .none, 64, 64, 128, 1), (.transpose, .none, 128, 64, 128, 1),
            (.none, .transpose, 37, 75, 21, 0), (.none, .none, 37, 75, 21, 1), (.transpose, .none, 37, 75, 21, 1),
            (.transpose, .transpose, 13, 29, 66, 1), (.none, .transpose, 200, 300, 96, 0), (.none, .none, 5, 17, 130, 0),
            (.none, .transpose, 1, 1, 1, 1), (.transpose, .transpose, 7, 3, 33, 0),
        ]
        for (ta, tb, m, n, k, beta) in cases {
            let lda = (ta == .none ? k : m) + 3, ldb = (tb == .none ? n : k) + 7, ldc = n + 5
            let a = (0..<((ta == .none ? m : k) * lda)).map { _ in value(&rng) }
            let b = (0..<((tb == .none ? k : n) * ldb)).map { _ in value(&rng, scale: 0.5) }
            // beta 0 overwrites whatever C holds (NaN included); C's padding columns stay.
            let c0: [Float] = (0..<(m * ldc)).map { i in beta == 0 && i % 11 == 0 ? .nan : Float(rng.nextNormal()) }
            var tile = c0, matmul = c0
            XCTAssertTrue(Gemm.blockBF16Gemm(ta, tb, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, beta: beta,
                                             c: &tile, ldc: ldc))
            Gemm.matmulBF16Gemm(ta, tb, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: &matmul, ldc: ldc)
            let what = "\(ta) \(tb) \(m)×\(n)×\(k) beta \(beta)"
            let differing = zip(tile, matmul).filter { $0.bitPattern != $1.bitPattern }.count
            if !oneDNNRunsAMX { XCTAssertEqual(differing, 0, "\(what): values that differ from oneDNN's") }
            for i in 0..<m {
                for j in n..<ldc where tile[i * ldc + j].bitPattern != c0[i * ldc + j].bitPattern {
                    XCTFail("\(what): padding at (\(i), \(j)) was written")
                }
            }
            // A real product: one element against a double-precision sum of its products.
            func at(_ x: [UInt16], _ ld: Int, _ t: Transpose, _ r: Int, _ c: Int) -> Double {
                Double(Convert.float(bf16: t == .none ? x[r * ld + c] : x[c * ld + r]))
            }
            let (i, j) = (m - 1, n / 2)
            let expected = (0..<k).reduce(Double(beta) * Double(c0[i * ldc + j])) { $0 + at(a, lda, ta, i, $1) * at(b, ldb, tb, $1, j) }
            let size = (0..<k).reduce(1.0) { $0 + abs(at(a, lda, ta, i, $1) * at(b, ldb, tb, $1, j)) }
            XCTAssertEqual(Double(tile[i * ldc + j]), expected, accuracy: 1e-5 * size, what)
        }
    }

    func testDeclinesWhereItCannotKeepTheBits() {
        let one: [UInt16] = [0x3F80]
        var c: [Float] = [7]
        XCTAssertFalse(Gemm.blockBF16Gemm(.none, .none, m: 1, n: 1, k: 1, a: one, lda: 1, b: one, ldb: 1, beta: 0.5,
                                          c: &c, ldc: 1), "a beta of 0.5 (oneDNN may fuse it into the sum)")
        CPU.use(.avx512)
        XCTAssertFalse(Gemm.blockBF16Gemm(.none, .none, m: 1, n: 1, k: 1, a: one, lda: 1, b: one, ldb: 1, beta: 0,
                                          c: &c, ldc: 1), "below AVX512-BF16")
        XCTAssertEqual(c, [7], "C untouched when it declines")
        useTheTileLevel()
        XCTAssertTrue(Gemm.blockBF16Gemm(.none, .none, m: 1, n: 1, k: 1, a: one, lda: 1, b: one, ldb: 1, beta: 1, c: &c, ldc: 1))
        XCTAssertEqual(c, [8])
        if CPU.hardwareISA >= .amx {
            CPU.use(.amx)
            XCTAssertTrue(Gemm.blockBF16Gemm(.none, .none, m: 1, n: 1, k: 1, a: one, lda: 1, b: one, ldb: 1, beta: 1,
                                             c: &c, ldc: 1), "with AMX the blocks run on the AMX kernel")
            XCTAssertEqual(c, [9])
            XCTAssertFalse(Gemm.blockBF16Gemm(.none, .none, m: 1, n: 1, k: 1, a: one, lda: 1, b: one, ldb: 1, beta: 0.5,
                                              c: &c, ldc: 1), "a beta of 0.5, on AMX too")
            XCTAssertEqual(c, [9], "C untouched when it declines")
        }
    }
}

/// The AMX kernel that runs attention's block products on CPUs with AMX tiles
/// (`tessera_amx_block_gemm`, behind `Gemm.blockBF16Gemm` at `ISA.amx`): its stated order on
/// every layout and edge, oneDNN's bits on the blocks attention runs at head size 64, and a
/// real product.
final class AMXBlockGemmTests: XCTestCase {
    override func setUpWithError() throws {
        try XCTSkipIf(!CPU.runnableLevels.contains(.amx), "no AMX tiles that oneDNN runs on here (\(CPU.model)): "
                      + "attention's blocks run on the AVX512-BF16 tile or in fp32, checked above")
        CPU.use(.amx)
        XCTAssertTrue(Gemm.bf16OnAMX)
    }

    override func tearDown() { CPU.use(nil) }

    struct Product {
        let ta: Transpose, tb: Transpose, m: Int, n: Int, k: Int, beta: Float
        let a: [UInt16], lda: Int, b: [UInt16], ldb: Int, c0: [Float], ldc: Int
        var what: String { "\(ta) \(tb) \(m)×\(n)×\(k) beta \(beta)" }

        /// Random operands with rows `pad` (B: 2·`pad`) longer than they need, or with the row
        /// strides `strides` (lda, ldb, ldc).
        init(_ ta: Transpose, _ tb: Transpose, _ m: Int, _ n: Int, _ k: Int, beta: Float, pad: Int = 0,
             strides: (Int, Int, Int)? = nil, rng: inout SplitMix64) {
            (self.ta, self.tb, self.m, self.n, self.k, self.beta) = (ta, tb, m, n, k, beta)
            (lda, ldb, ldc) = strides ?? ((ta == .none ? k : m) + pad, (tb == .none ? n : k) + 2 * pad, n + pad)
            func value(_ scale: Float) -> UInt16 { Convert.bf16(Float(rng.nextNormal()) * scale) }
            a = (0..<((ta == .none ? m : k) * lda)).map { _ in value(1) }
            b = (0..<((tb == .none ? k : n) * ldb)).map { _ in value(0.5) }
            // beta 0 overwrites whatever C holds (NaN included); C's padding columns stay.
            c0 = (0..<(m * ldc)).map { i in beta == 0 && i % 11 == 0 ? .nan : Float(rng.nextNormal()) }
        }

        /// C after `op(A)·op(B)` over depth `from..<to` (β: `beta`) into `c`.
        func run(from: Int = 0, to: Int? = nil, beta: Float? = nil, into c: inout [Float]) -> Bool {
            let end = to ?? k
            return a.withUnsafeBufferPointer { a in
                b.withUnsafeBufferPointer { b in
                    Gemm.blockBF16Gemm(ta, tb, m: m, n: n, k: end - from, a: a.baseAddress! + (ta == .none ? from : from * lda),
                                       lda: lda, b: b.baseAddress! + (tb == .none ? from * ldb : from), ldb: ldb,
                                       beta: beta ?? self.beta, c: &c, ldc: ldc)
                }
            }
        }
    }

    func testExactlyItsOrder() {
        // Each element summed along the depth 32 at a time by tdpbf16ps into one accumulator
        // that starts at C (beta 1) or zero: so the product equals its first 32 depth elements
        // followed by the rest added with beta 1. Edges: C not in whole 32×32 blocks (a padded
        // copy), odd depths, depths ending inside a chunk or within the first, transposed operands
        // (packed otherwise).
        var rng = SplitMix64(seed: 77)
        let cases: [(Transpose, Transpose, Int, Int, Int, Float)] = [
            (.none, .transpose, 64, 64, 64, 0), (.none, .none, 128, 64, 128, 1), (.transpose, .none, 64, 64, 128, 1),
            (.none, .transpose, 37, 75, 71, 0), (.none, .none, 37, 75, 33, 1), (.transpose, .none, 37, 75, 99, 1),
            (.transpose, .transpose, 13, 29, 66, 1), (.none, .transpose, 200, 300, 96, 0), (.none, .none, 5, 17, 130, 0),
            (.none, .transpose, 1, 1, 40, 1), (.transpose, .transpose, 7, 3, 33, 0),
            // Depths inside one chunk (no split to compare; the padded chunk's real product).
            (.none, .transpose, 37, 75, 5, 0), (.transpose, .none, 64, 64, 31, 1), (.none, .none, 64, 64, 1, 1),
        ]
        for (ta, tb, m, n, k, beta) in cases {
            for pad in [0, 3] {
                let p = Product(ta, tb, m, n, k, beta: beta, pad: pad, rng: &rng)
                var whole = p.c0, split = p.c0
                XCTAssertTrue(p.run(into: &whole), p.what)
                if k > 32 {
                    XCTAssertTrue(p.run(to: 32, into: &split) && p.run(from: 32, beta: 1, into: &split), p.what)
                    XCTAssertEqual(zip(whole, split).filter { $0.bitPattern != $1.bitPattern }.count, 0,
                                   "\(p.what), pad \(pad): not the first chunk and then the rest")
                }
                for i in 0..<m {
                    for j in n..<p.ldc where whole[i * p.ldc + j].bitPattern != p.c0[i * p.ldc + j].bitPattern {
                        XCTFail("\(p.what): padding at (\(i), \(j)) was written")
                    }
                }
                // A real product: elements against a double-precision sum of their products.
                func at(_ x: [UInt16], _ ld: Int, _ t: Transpose, _ r: Int, _ c: Int) -> Double {
                    Double(Convert.float(bf16: t == .none ? x[r * ld + c] : x[c * ld + r]))
                }
                for (i, j) in [(0, 0), (m - 1, n / 2), (m / 2, n - 1)] {
                    let terms = (0..<k).map { at(p.a, p.lda, ta, i, $0) * at(p.b, p.ldb, tb, $0, j) }
                    let expected = terms.reduce(beta == 0 ? 0 : Double(p.c0[i * p.ldc + j]), +)
                    let size = terms.reduce(1.0) { $0 + abs($1) }
                    XCTAssertEqual(Double(whole[i * p.ldc + j]), expected, accuracy: 1e-5 * size, "\(p.what) at (\(i), \(j))")
                }
            }
        }
    }

    func testSameBitsAsOneDNNOnAttentionsBlocks() {
        // Attention's products at head size 64 in `small` (C = 384, blocks of 128 and, on the
        // diagonal, 64), with the strides they have there: scores Q·Kᵀ into S and dO·Vᵀ into dP
        // (rows of 128); P·V into O (rows of 64); dS·K into dQ, Pᵀ·dO into dV and dSᵀ·Q into dK
        // (in dqkv, rows of 3C). oneDNN 2.6 picks other code for other strides and shapes (none
        // on AMX below a depth of 32; C added otherwise on some), where the kernel keeps its own
        // order (above); this is what keeps the golden trajectories' and README's bits.
        var rng = SplitMix64(seed: 78)
        let (c3, c, block, hs) = (3 * 384, 384, 128, 64)
        var cases: [(Transpose, Transpose, Int, Int, Int, Float, (Int, Int, Int))] = []
        for (rows, keys) in [(64, 64), (64, 128), (128, 128)] {
            cases += [(.none, .transpose, rows, keys, hs, 0, (c3, c3, block)),     // S = Q·Kᵀ
                      (.none, .transpose, rows, keys, hs, 0, (c, c3, block)),      // dP = dO·Vᵀ
                      (.none, .none, rows, hs, keys, 1, (block, c3, hs)),          // O += P·V
                      (.none, .none, rows, hs, keys, 0, (block, c3, c3)),          // dQ = dS·K
                      (.none, .none, rows, hs, keys, 1, (block, c3, c3))]          // dQ += dS·K
        }
        for (keys, queries) in [(64, 64), (64, 128), (128, 128)] {
            for beta: Float in [0, 1] {
                cases += [(.transpose, .none, keys, hs, queries, beta, (block, c, c3)),    // dV (+)= Pᵀ·dO
                          (.transpose, .none, keys, hs, queries, beta, (block, c3, c3))]   // dK (+)= dSᵀ·Q
            }
        }
        for (ta, tb, m, n, k, beta, strides) in cases {
            let p = Product(ta, tb, m, n, k, beta: beta, strides: strides, rng: &rng)
            var tiles = p.c0, matmul = p.c0
            XCTAssertTrue(p.run(into: &tiles), p.what)
            Gemm.matmulBF16Gemm(ta, tb, m: m, n: n, k: k, a: p.a, lda: p.lda, b: p.b, ldb: p.ldb, beta: beta,
                                c: &matmul, ldc: p.ldc)
            XCTAssertEqual(zip(tiles, matmul).filter { $0.bitPattern != $1.bitPattern }.count, 0,
                           "\(p.what), strides \(strides): values that differ from oneDNN's")
        }
    }
}

/// Whether this process's oneDNN runs bf16 matmuls on AMX tiles, whose sums come in another
/// order than AVX512-BF16 dot products give: the tile keeps oneDNN's bits only where oneDNN
/// runs on those too (every AVX512-BF16 CPU without AMX, and `TESSERA_ISA=avx512bf16`, which
/// caps oneDNN before its first use; a test process cannot, having used it already).
let oneDNNRunsAMX: Bool = {
    let amx = CPU.hardwareISA >= .amx
    if amx { print("oneDNN's bf16 matmul runs on AMX here (\(CPU.model)): bits not compared with the tile's") }
    return amx
}()

/// Runs the kernels at the tile's level, AVX512-BF16, which CPUs with AMX leave for oneDNN's
/// matmul (tearDown restores the start-up level).
func useTheTileLevel() {
    CPU.use(.avx512bf16)
    precondition(CPU.isa == .avx512bf16)
}

/// The bf16 weight-gradient GEMM (`C += Aᵀ·B`, a linear map's `doutᵀ·inp`): exactly its stated
/// order, and on dense operands the bits of oneDNN's matmul, which it replaces there, on one
/// thread and two, with depth tails, an odd depth and products split to bound its buffers.
final class WeightGradientGemmTests: XCTestCase {
    override func setUpWithError() throws {
        try XCTSkipIf(!Gemm.bf16IsNative, "bf16 products do not run on bf16 dot products here (no AVX512-BF16, or "
                      + "TESSERA_ISA lowers it): the weight-gradient GEMM declines, and oneDNN's matmul is not used")
        useTheTileLevel()
    }

    override func tearDown() { CPU.use(nil) }

    /// (m, n, k): `small`'s attention projection at a shorter depth (4 blocks), tails of the
    /// 6-row and 64-column tiles with an odd depth (3 blocks and 1 row), a short last block,
    /// products whose partial sums a member could not hold at once (split by rows, by columns),
    /// and two blocks (`gpt2`'s depth), which run both blocks per tile, with tails; products at
    /// least twice as wide as tall, which run transposed from three blocks on (and at two as
    /// they are).
    static let cases: [(Int, Int, Int)] = [(384, 384, 2048), (257, 259, 1537), (391, 170, 1100), (3000, 768, 1100),
                                           (700, 3100, 1030), (391, 300, 1024), (300, 700, 1024)]

    func run(_ index: Int, pad: Int = 0, _ body: (Int, Int, Int, [UInt16], Int, [UInt16], Int, [Float], Int) -> Void) {
        let (m, n, k) = Self.cases[index]
        var rng = SplitMix64(seed: 40 + UInt64(index))
        let lda = m + pad, ldb = n + pad, ldc = n + pad
        let a = (0..<(k * lda)).map { _ in Convert.bf16(Float(rng.nextNormal())) }
        let b = (0..<(k * ldb)).map { _ in Convert.bf16(Float(rng.nextNormal()) * 0.5) }
        let c0 = (0..<(m * ldc)).map { _ in Float(rng.nextNormal()) }
        body(m, n, k, a, lda, b, ldb, c0, ldc)
    }

    func withThreads(_ threads: Int, _ body: () -> Void) {
        let before = ParallelFor.threads
        Gemm.setThreads(threads)
        defer { Gemm.setThreads(before) }
        body()
    }

    func testExactlyItsOrder() {
        // Each block of 512 along the depth summed from zero (the block tile's order, checked
        // against oneDNN above), the block sums added in order, then C added; padding untouched.
        for index in Self.cases.indices {
            run(index, pad: 3) { m, n, k, a, lda, b, ldb, c0, ldc in
                var expected = c0, block = [Float](repeating: 0, count: m * n), sums = [Float](repeating: 0, count: m * n)
                for k0 in stride(from: 0, to: k, by: 512) {
                    let depth = min(512, k - k0)
                    a.withUnsafeBufferPointer { a in
                        b.withUnsafeBufferPointer { b in
                            XCTAssertTrue(Gemm.blockBF16Gemm(.transpose, .none, m: m, n: n, k: depth, a: a.baseAddress! + k0 * lda,
                                                             lda: lda, b: b.baseAddress! + k0 * ldb, ldb: ldb, beta: 0,
                                                             c: &block, ldc: n))
                        }
                    }
                    for e in 0..<(m * n) { sums[e] = k0 == 0 ? block[e] : block[e] + sums[e] }
                }
                for i in 0..<m { for j in 0..<n { expected[i * ldc + j] = sums[i * n + j] + c0[i * ldc + j] } }
                withThreads(2) {
                    var got = c0
                    XCTAssertTrue(Gemm.weightGradientBF16(m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, c: &got, ldc: ldc))
                    let differing = zip(got, expected).filter { $0.bitPattern != $1.bitPattern }.count
                    XCTAssertEqual(differing, 0, "\(m)×\(n)×\(k): values not in the stated order (or padding written)")
                }
            }
        }
    }

    func testSameBitsAsOneDNNOnOneThreadAndTwo() throws {
        try XCTSkipIf(oneDNNRunsAMX, "oneDNN's bf16 matmul runs on AMX tiles here, in another order; the kernel's own "
                      + "order is checked above, and at this CPU's level lowGemm leaves weight gradients to oneDNN")
        for index in Self.cases.indices {
            run(index) { m, n, k, a, lda, b, ldb, c0, ldc in
                for threads in [1, 2] {
                    withThreads(threads) {
                        var kernel = c0, onednn = c0
                        XCTAssertTrue(Gemm.weightGradientBF16(m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb,
                                                              c: &kernel, ldc: ldc))
                        Gemm.matmulBF16Gemm(.transpose, .none, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, beta: 1,
                                            c: &onednn, ldc: ldc)
                        XCTAssertEqual(zip(kernel, onednn).filter { $0.bitPattern != $1.bitPattern }.count, 0,
                                       "\(m)×\(n)×\(k) on \(threads) threads: values that differ from oneDNN's")
                    }
                }
            }
        }
    }

    /// With AMX, oneDNN's matmul outruns the kernel (3–8× on a Xeon family 6 model 207), so the
    /// kernel declines and lowGemm's weight gradients carry oneDNN's bits.
    func testWithAMXWeightGradientsGoToOneDNN() throws {
        try XCTSkipIf(CPU.hardwareISA < .amx, "no AMX tiles that oneDNN runs on here (\(CPU.model)): nothing to route")
        CPU.use(.amx)
        XCTAssertTrue(Gemm.bf16OnAMX)
        XCTAssertEqual(Gemm.weightGradientScratchBytes([(384, 384, 16_384)], threads: 2), 0, "no buffers for a kernel not used")
        run(0) { m, n, k, a, lda, b, ldb, c0, ldc in
            var kernel = c0, routed = c0, onednn = c0
            XCTAssertFalse(Gemm.weightGradientBF16(m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, c: &kernel, ldc: ldc))
            XCTAssertEqual(kernel, c0, "C untouched when it declines")
            Gemm.lowGemm(.bf16, .transpose, .none, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, beta: 1,
                         c: &routed, ldc: ldc)
            Gemm.matmulBF16Gemm(.transpose, .none, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, beta: 1,
                                c: &onednn, ldc: ldc)
            XCTAssertEqual(zip(routed, onednn).filter { $0.bitPattern != $1.bitPattern }.count, 0)
            XCTAssertNotEqual(routed, c0)
        }
    }

    func testLowGemmTakesItOnlyForWeightGradientsItSpeeds() {
        XCTAssertTrue(Gemm.takesWeightGradient(m: 384, n: 384, k: 16_384), "small's weight gradients")
        XCTAssertTrue(Gemm.takesWeightGradient(m: 2304, n: 768, k: 1024), "gpt2's")
        XCTAssertFalse(Gemm.takesWeightGradient(m: 512, n: 128, k: 768), "tiny's (depth 768), where oneDNN was faster")
        XCTAssertFalse(Gemm.takesWeightGradient(m: 64, n: 64, k: 4096), "a 64×64 gradient")
        let one = [UInt16](repeating: 0x3F80, count: 1024)
        var c: [Float] = [7]
        XCTAssertFalse(Gemm.weightGradientBF16(m: 1, n: 1, k: 1024, a: one, lda: 1, b: one, ldb: 1, c: &c, ldc: 1))
        XCTAssertEqual(c, [7], "C untouched when it declines")
        // A product it takes gives oneDNN's bits through lowGemm too: 1,024 ones summed onto 7.
        var big = [Float](repeating: 7, count: 256 * 256), wide = [UInt16](repeating: 0x3F80, count: 1024 * 256)
        Gemm.lowGemm(.bf16, .transpose, .none, m: 256, n: 256, k: 1024, a: &wide, lda: 256, b: wide, ldb: 256, beta: 1,
                     c: &big, ldc: 256)
        XCTAssertEqual(Set(big), [1031])
        // Strided operands, which oneDNN runs another way with other bits, stay on oneDNN.
        run(0, pad: 3) { m, n, k, a, lda, b, ldb, c0, ldc in
            var routed = c0, onednn = c0
            Gemm.lowGemm(.bf16, .transpose, .none, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, beta: 1, c: &routed,
                         ldc: ldc)
            Gemm.matmulBF16Gemm(.transpose, .none, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, beta: 1, c: &onednn,
                                ldc: ldc)
            XCTAssertEqual(zip(routed, onednn).filter { $0.bitPattern != $1.bitPattern }.count, 0, "strided operands")
        }
        CPU.use(.avx512)
        XCTAssertFalse(Gemm.weightGradientBF16(m: 256, n: 256, k: 1024, a: wide, lda: 256, b: wide, ldb: 256, c: &big,
                                               ldc: 256), "below AVX512-BF16")
    }

    func testScratchIsWhatTheBuffersHold() {
        // Two threads, `small`'s products: the shared B blocks (2 × 256 pairs × 384 columns: the
        // 384 × 1,536 product runs transposed), per member a 192-row chunk of A and its 768 × 384
        // partial sums, and the transposed product's 1,536 × 384 result.
        let shapes = [(m: 1152, n: 384, k: 16_384), (384, 384, 16_384), (1536, 384, 16_384), (384, 1536, 16_384)]
        XCTAssertEqual(Gemm.weightGradientScratchBytes(shapes, threads: 2),
                       4 * (2 * 256 * 384 + 2 * (256 * 192 + 768 * 384) + 1536 * 384))
        XCTAssertEqual(Gemm.weightGradientScratchBytes([(m: 64, n: 64, k: 768)], threads: 2), 0, "a product it leaves to oneDNN")
        // gpt2's head (50,257 × 768) at depth 1,024 holds no partial sums: two blocks of B, and
        // per member both blocks of a 192-row chunk of A. Deeper, it is split so a member's
        // partial sums stay within 4 MiB.
        let head = Gemm.weightGradientScratchBytes([(m: 50_257, n: 768, k: 1024)], threads: 2)
        XCTAssertEqual(head, 4 * (2 * 256 * 768 + 2 * (2 * 256 * 192)))
        let deeper = Gemm.weightGradientScratchBytes([(m: 50_257, n: 768, k: 2048)], threads: 2)
        XCTAssertEqual(deeper, 4 * (2 * 256 * 768 + 2 * (256 * 192 + 1362 * 768)))
    }
}

/// The fp32 register-tile GEMM of attention's block products (AVX-512): exactly its stated
/// order (each element's products fused-multiply-added along the depth from zero, then scaled,
/// then C added), and the bits of oneDNN's sgemm, which it replaces.
final class BlockSgemmTests: XCTestCase {
    override func setUpWithError() throws {
        try XCTSkipIf(CPU.hardwareISA < .avx512, "this CPU has no AVX-512: the fp32 block GEMM declines and oneDNN runs "
                      + "attention's products")
    }

    override func tearDown() { CPU.use(nil) }

    /// (transA, transB, m, n, k, alpha, beta): attention's products at head sizes 16 to 64
    /// (scores with alpha 1/√hs), then tails of every tile, an empty depth.
    static let cases: [(Transpose, Transpose, Int, Int, Int, Float, Float)] = [
        (.none, .transpose, 16, 16, 16, 0.25, 0), (.none, .transpose, 16, 32, 16, 0.25, 0), (.none, .none, 16, 16, 32, 1, 1),
        (.transpose, .none, 16, 16, 32, 1, 1), (.none, .transpose, 32, 64, 32, 1, 0), (.none, .none, 32, 32, 64, 1, 1),
        (.transpose, .none, 32, 32, 64, 1, 1), (.none, .transpose, 64, 128, 64, 0.125, 0),
        (.none, .transpose, 128, 128, 64, 0.125, 0), (.none, .none, 128, 64, 128, 1, 1), (.transpose, .none, 64, 64, 128, 1, 1),
        (.none, .transpose, 37, 75, 21, 0.5, 0), (.none, .none, 13, 29, 7, 1, 1), (.transpose, .transpose, 7, 19, 33, 2, 1),
        (.none, .none, 5, 3, 0, 1, 1), (.none, .transpose, 32, 32, 32, 0.17677669, 0),
    ]

    func run(_ c: (Transpose, Transpose, Int, Int, Int, Float, Float), seed: UInt64,
             _ body: ([Float], Int, [Float], Int, [Float], Int) -> Void) {
        let (ta, tb, m, n, k, _, beta) = c
        var rng = SplitMix64(seed: seed)
        let lda = (ta == .none ? k : m) + 3, ldb = (tb == .none ? n : k) + 5, ldc = n + 2
        let a = (0..<((ta == .none ? m : k) * lda)).map { _ in Float(rng.nextNormal()) }
        let b = (0..<((tb == .none ? k : n) * ldb)).map { _ in Float(rng.nextNormal()) }
        let c0: [Float] = (0..<(m * ldc)).map { i in beta == 0 && i % 7 == 0 ? .nan : Float(rng.nextNormal()) }
        body(a, lda, b, ldb, c0, ldc)
    }

    func testExactlyItsOrder() {
        for level in [ISA.avx512] {
            CPU.use(level)
            for (index, c) in Self.cases.enumerated() {
                let (ta, tb, m, n, k, alpha, beta) = c
                run(c, seed: UInt64(index)) { a, lda, b, ldb, c0, ldc in
                    var got = c0
                    XCTAssertTrue(Gemm.blockSgemm(ta, tb, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                                                  beta: beta, c: &got, ldc: ldc))
                    for i in 0..<m {
                        for j in 0..<ldc {
                            var expected = c0[i * ldc + j]
                            if j < n {
                                var acc: Float = 0
                                for p in 0..<k {
                                    acc = acc.addingProduct(ta == .none ? a[i * lda + p] : a[p * lda + i],
                                                            tb == .none ? b[p * ldb + j] : b[j * ldb + p])
                                }
                                expected = beta == 0 ? acc * alpha : acc * alpha + c0[i * ldc + j]
                            }
                            if got[i * ldc + j].bitPattern != expected.bitPattern {
                                XCTFail("\(level) \(ta) \(tb) \(m)×\(n)×\(k): (\(i), \(j)) is \(got[i * ldc + j]), not \(expected)")
                                return
                            }
                        }
                    }
                }
            }
        }
    }

    func testSameBitsAsOneDNN() {
        // Where alpha is a power of two: otherwise oneDNN scales A before summing on some shapes.
        for (index, c) in Self.cases.enumerated() where c.4 > 0 && c.5.significandBitPattern == 0 {
            let (ta, tb, m, n, k, alpha, beta) = c
            run(c, seed: UInt64(100 + index)) { a, lda, b, ldb, c0, ldc in
                var tile = c0, onednn = c0
                XCTAssertTrue(Gemm.blockSgemm(ta, tb, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                                              beta: beta, c: &tile, ldc: ldc))
                Gemm.onednnSgemm(ta, tb, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta,
                                 c: &onednn, ldc: ldc)
                XCTAssertEqual(zip(tile, onednn).filter { $0.bitPattern != $1.bitPattern }.count, 0,
                               "\(ta) \(tb) \(m)×\(n)×\(k) alpha \(alpha) beta \(beta): values that differ from oneDNN's")
            }
        }
    }

    func testDeclinesWhereItCannotKeepTheBits() {
        let one: [Float] = [1]
        var c: [Float] = [7]
        XCTAssertFalse(Gemm.blockSgemm(.none, .none, m: 1, n: 1, k: 1, a: one, lda: 1, b: one, ldb: 1, beta: 0.5, c: &c, ldc: 1))
        CPU.use(.avx2)
        XCTAssertFalse(Gemm.blockSgemm(.none, .none, m: 1, n: 1, k: 1, a: one, lda: 1, b: one, ldb: 1, beta: 0, c: &c, ldc: 1),
                       "below AVX-512")
        XCTAssertEqual(c, [7], "C untouched when it declines")
    }
}

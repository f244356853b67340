import Kernels
import Model
import Settings
import XCTest

/// Layers that split their work over threads. Attention heads run as parallel tasks, each
/// with single-threaded GEMMs and its own scratch: the result must not depend on which thread
/// ran which head (two parallel runs are bit-identical) and matches the serial loop (whose
/// GEMMs use both threads) to rounding. Reductions over rows (LayerNorm's weight gradient, the
/// loss) sum fixed blocks in order, so they give the same bits on any number of threads.
final class ParallelLayersTests: XCTestCase {
    let B = 3, T = 48, C = 64, NH = 4

    override func setUp() { Gemm.setThreads(2) }
    override func tearDown() { Gemm.setThreads(1) }

    func random(_ n: Int, seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<n).map { _ in Float(rng.nextUniform() * 2 - 1) }
    }

    func assertClose(_ a: [Float], _ b: [Float], _ what: String, tolerance: Float) {
        var worst: Float = 0
        for (x, y) in zip(a, b) { worst = max(worst, abs(x - y)) }
        XCTAssertLessThan(worst, tolerance, what)
    }

    /// Two runs on 2 workers are bit-identical and match the serial loop to rounding.
    func checkTasks(_ run: (Int) -> (out: [Float], dqkv: [Float])) {
        let a = run(2), b = run(2), serial = run(1)
        XCTAssertEqual(a.out.map(\.bitPattern), b.out.map(\.bitPattern))
        XCTAssertEqual(a.dqkv.map(\.bitPattern), b.dqkv.map(\.bitPattern))
        assertClose(a.out, serial.out, "forward", tolerance: 1e-5)
        assertClose(a.dqkv, serial.dqkv, "backward", tolerance: 1e-5)
        XCTAssertGreaterThan(a.dqkv.map(abs).max()!, 0.01, "the gradient is not trivially zero")
    }

    /// Forward and backward of the one attention implementation in format `F`, on `workers`.
    func attention<F: ComputeFormat>(_: F.Type, qkv: [F.Element], dout: [F.Element],
                                      workers: Int) -> (out: [Float], dqkv: [Float]) {
        let out = FloatBuffer(count: B * T * C), att = AlignedBuffer<F.Element>(count: B * NH * T * T)
        let dqkv = FloatBuffer(count: B * T * 3 * C)
        let scores = FloatBuffer(count: T * T * workers), probs = FloatBuffer(count: T * T * workers)
        let gradient = AlignedBuffer<F.Element>(count: T * T * workers)
        Layers.attentionForward(F.self, out: out.pointer, att: att.pointer, qkv: qkv, scores: scores.pointer,
                                B: B, T: T, C: C, NH: NH, workers: workers)
        Layers.attentionBackward(F.self, dqkv: dqkv.pointer, dout: dout, qkv: qkv, att: att.pointer,
                                 scratch: .init(scores: scores.pointer, probs: probs.pointer, gradient: gradient.pointer),
                                 B: B, T: T, C: C, NH: NH, workers: workers)
        return (out.toArray(), dqkv.toArray())
    }

    func testFP32AttentionTasksAreDeterministicAndMatchTheSerialLoop() {
        let qkv = random(B * T * 3 * C, seed: 1), dout = random(B * T * C, seed: 2)
        checkTasks { attention(FP32.self, qkv: qkv, dout: dout, workers: $0) }
    }

    func testBF16AttentionTasksAreDeterministicAndMatchTheSerialLoop() throws {
        func narrow(_ x: [Float]) -> [UInt16] { x.map(Convert.bf16) }
        let qkv = narrow(random(B * T * 3 * C, seed: 3)), dout = narrow(random(B * T * C, seed: 4))
        // One call decides whether the native bf16 path works here (the tasks need it).
        var probe = [Float](repeating: 0, count: 4)
        Gemm.lowGemm(.bf16, .none, .none, m: 2, n: 2, k: 2, a: [1, 1, 1, 1].map(Convert.bf16), lda: 2,
                     b: [1, 1, 1, 1].map(Convert.bf16), ldb: 2, c: &probe, ldc: 2)
        try XCTSkipUnless(BF16.gemmIsReentrant, "bf16 products at the baseline level share scratch: attention runs serially")
        checkTasks { attention(BF16.self, qkv: qkv, dout: dout, workers: $0) }
    }

    func testRowReductionsGiveTheSameBitsOnAnyThreadCount() {
        let N = 1000, C = 96, V = 77
        let x = random(N * C, seed: 5), dy = random(N * C, seed: 6), w = random(C, seed: 7)
        let logits = random(N * V, seed: 8).map { $0 * 4 }
        let targets = (0..<N).map { Int32($0 % 7 == 3 ? -1 : ($0 * 31) % V) }
        func run(threads: Int) -> [[UInt32]] {
            Gemm.setThreads(threads)
            var out = [Float](repeating: 0, count: N * C), mean = [Float](repeating: 0, count: N), rstd = mean
            Layers.layerNormForward(FP32.self, out: &out, mean: &mean, rstd: &rstd, inp: x, weight: w, bias: w, N: N, C: C)
            var dx = [Float](repeating: 0, count: N * C), dw = [Float](repeating: 0, count: C), db = dw
            Layers.layerNormBackward(dinp: &dx, dweight: &dw, dbias: &db, dout: dy, inp: x, weight: w,
                                     mean: mean, rstd: rstd, N: N, C: C)
            var probs = logits
            let (loss, counted) = Layers.softmaxCrossEntropyForward(logits: &probs, targets: targets, N: N, V: V)
            Layers.softmaxCrossEntropyBackward(probs: &probs, targets: targets, N: N, V: V, scale: 0.5)
            XCTAssertEqual(counted, N - N / 7 - (N % 7 > 3 ? 1 : 0))
            return [dx, dw, db, probs].map { $0.map(\.bitPattern) } + [[UInt32(truncatingIfNeeded: loss.bitPattern), UInt32(loss.bitPattern >> 32)]]
        }
        let one = run(threads: 1), two = run(threads: 2)
        for (i, name) in ["dinp", "dweight", "dbias", "dlogits", "loss"].enumerated() { XCTAssertEqual(one[i], two[i], name) }
        XCTAssertGreaterThan(one[1].map { abs(Float(bitPattern: $0)) }.max()!, 0.1, "the weight gradient is not trivially zero")
    }
}

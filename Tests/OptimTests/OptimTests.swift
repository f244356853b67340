import Kernels
import Optim
import Settings
import XCTest

final class OptimTests: XCTestCase {
    /// nanoGPT's get_lr at the recipe's settings.
    func testCosineScheduleMatchesNanoGPT() {
        let s = LRSchedule(kind: .cosine, maxLR: 1e-3, minLR: 1e-4, warmupSteps: 100, decaySteps: 2000)
        XCTAssertEqual(s.lr(at: 0), 1e-3 / 101, accuracy: 1e-12)
        XCTAssertEqual(s.lr(at: 99), 1e-3 * 100 / 101, accuracy: 1e-12)
        XCTAssertEqual(s.lr(at: 100), 1e-3, accuracy: 1e-12)
        XCTAssertEqual(s.lr(at: 1050), 1e-4 + 0.5 * 9e-4, accuracy: 1e-12)
        XCTAssertEqual(s.lr(at: 2000), 1e-4, accuracy: 1e-12)
        XCTAssertEqual(s.lr(at: 5000), 1e-4, accuracy: 1e-12)
    }

    /// Warmup-stable-decay as llm.c's `get_learning_rate_wsd` computes it (the cooldown's
    /// progress is (step − start) / (end − start)), with each cooldown shape; linear and
    /// constant after the same warm-up.
    func testWSDLinearAndConstantSchedules() {
        let wsd = LRSchedule(kind: .wsd, maxLR: 1e-3, minLR: 1e-5, warmupSteps: 10, decaySteps: 100, cooldownSteps: 20)
        XCTAssertEqual(wsd.cooldownStart, 80)
        XCTAssertEqual(wsd.lr(at: 0), 1e-3 / 11, accuracy: 1e-15)
        XCTAssertEqual(wsd.lr(at: 10), 1e-3)
        XCTAssertEqual(wsd.lr(at: 79), 1e-3, "stable until the cooldown")
        XCTAssertEqual(wsd.lr(at: 80), 1e-3, accuracy: 1e-15)
        XCTAssertEqual(wsd.lr(at: 85), 1e-5 + 0.5 * (1e-3 - 1e-5), accuracy: 1e-15, "1 - sqrt(1/4)")
        XCTAssertEqual(wsd.lr(at: 100), 1e-5, accuracy: 1e-15)
        XCTAssertEqual(wsd.lr(at: 150), 1e-5)
        var shaped = wsd
        shaped.cooldownShape = .linear
        XCTAssertEqual(shaped.lr(at: 85), 1e-5 + 0.75 * (1e-3 - 1e-5), accuracy: 1e-15)
        shaped.cooldownShape = .cosine
        XCTAssertEqual(shaped.lr(at: 90), 1e-5 + 0.5 * (1e-3 - 1e-5), accuracy: 1e-15)
        // A cooldown longer than the steps after warm-up starts where warm-up ends.
        let long = LRSchedule(kind: .wsd, maxLR: 1e-3, minLR: 0, warmupSteps: 10, decaySteps: 30, cooldownSteps: 50)
        XCTAssertEqual(long.cooldownStart, 10)
        XCTAssertEqual(long.lr(at: 15), 1e-3 * (1 - 0.25.squareRoot()), accuracy: 1e-15)

        let linear = LRSchedule(kind: .linear, maxLR: 1e-3, minLR: 1e-4, warmupSteps: 100, decaySteps: 2000)
        XCTAssertEqual(linear.lr(at: 99), 1e-3 * 100 / 101, accuracy: 1e-15)
        XCTAssertEqual(linear.lr(at: 1050), 1e-4 + 0.5 * 9e-4, accuracy: 1e-15)
        XCTAssertEqual(linear.lr(at: 2000), 1e-4, accuracy: 1e-15)
        let constant = LRSchedule(kind: .constant, maxLR: 1e-3, minLR: 1e-4, warmupSteps: 100, decaySteps: 2000)
        XCTAssertEqual(constant.lr(at: 50), 1e-3 * 51 / 101, accuracy: 1e-15)
        XCTAssertEqual(constant.lr(at: 5000), 1e-3)
    }

    func testClipCoefficient() {
        XCTAssertEqual(GradientClipping.coefficient(norm: 4, maxNorm: 1), Float(1 / (4 + 1e-6)), accuracy: 1e-7)
        XCTAssertEqual(GradientClipping.coefficient(norm: 0.5, maxNorm: 1), 1)
        XCTAssertEqual(GradientClipping.coefficient(norm: 100, maxNorm: 0), 1, "0 turns clipping off")
    }

    /// One AdamW step by hand: first step moves each weight by ≈ lr·sign(g), plus decay.
    func testAdamWFirstStep() {
        let adam = AdamW(beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0.1)
        var p: [Float] = [1, -2], g: [Float] = [0.5, -0.25], m: [Float] = [0, 0], v: [Float] = [0, 0]
        adam.update(step: 1, lr: 0.01, decay: true, param: &p, grad: g, m: &m, v: &v, count: 2)
        XCTAssertEqual(p[0], 1 * (1 - 0.001) - 0.01, accuracy: 1e-6)
        XCTAssertEqual(p[1], -2 * (1 - 0.001) + 0.01, accuracy: 1e-6)
        XCTAssertEqual(m[0], 0.05, accuracy: 1e-7)
        XCTAssertEqual(v[1], 0.01 * 0.0625, accuracy: 1e-9)
        _ = g
    }

    func testDecayMaskSplitsRanges() {
        let mask = DecayMask([(0..<4, true), (4..<6, false), (6..<10, true), (10..<12, true)])
        XCTAssertEqual(mask.segments.count, 3)
        var seen: [(Range<Int>, Bool)] = []
        mask.forEach(in: 3..<8) { seen.append(($0, $1)) }
        XCTAssertEqual(seen.map(\.0), [3..<4, 4..<6, 6..<8])
        XCTAssertEqual(seen.map(\.1), [true, false, true])
    }

    /// The update split over two threads is the one-thread update, and with `rounded` it also
    /// writes each updated parameter narrowed (the model's 16-bit compute copy) while leaving
    /// the parameters and moments as they are without it: at every level this CPU runs, in
    /// bf16 and fp16, on a count that does not split evenly, with values that round both ways
    /// and some that overflow fp16.
    func testUpdateWithRoundedCopyIsTheUpdateThenNarrowed() {
        defer { CPU.use(nil); Gemm.setThreads(1) }
        let n = 100_003
        var rng = SystemRandomNumberGenerator()
        let p0 = (0..<n).map { i in Float.random(in: -2...2, using: &rng) * (i % 97 == 0 ? 70_000 : 1) }
        let g = (0..<n).map { _ in Float.random(in: -1...1, using: &rng) }
        let m0 = (0..<n).map { _ in Float.random(in: -0.1...0.1, using: &rng) }
        let v0 = (0..<n).map { _ in Float.random(in: 0...0.01, using: &rng) }
        let adam = AdamW(beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1)
        func step(threads: Int, rounded precision: Precision?) -> (p: [Float], m: [Float], v: [Float], low: [UInt16]) {
            Gemm.setThreads(threads)
            var p = p0, m = m0, v = v0, low = [UInt16](repeating: 0, count: n)
            low.withUnsafeMutableBufferPointer { l in
                adam.update(step: 3, lr: 3e-3, decay: true, param: &p, grad: g, m: &m, v: &v, count: n,
                            rounded: precision.map { (into: l.baseAddress!, precision: $0) })
            }
            return (p, m, v, low)
        }
        /// Elements whose bits differ (0 when equal), so a failure prints a count, not arrays.
        func differing<T: Equatable>(_ a: [T], _ b: [T]) -> Int { zip(a, b).filter { $0 != $1 }.count + abs(a.count - b.count) }
        func bits(_ x: [Float]) -> [UInt32] { x.map(\.bitPattern) }
        for level in CPU.runnableLevels {
            CPU.use(level)
            let plain = step(threads: 1, rounded: nil)
            XCTAssertGreaterThan(differing(bits(plain.p), bits(p0)), n / 2, "\(level): the step moves the parameters")
            for precision in [Precision.bf16, .fp16] {
                for threads in [1, 2] {
                    let r = step(threads: threads, rounded: precision), at = "\(level) \(precision) \(threads) thread(s)"
                    XCTAssertEqual(differing(bits(r.p), bits(plain.p)), 0, "parameters, \(at)")
                    XCTAssertEqual(differing(bits(r.m), bits(plain.m)), 0, "m, \(at)")
                    XCTAssertEqual(differing(bits(r.v), bits(plain.v)), 0, "v, \(at)")
                    var narrowed = [UInt16](repeating: 1, count: n)
                    precision.narrowSerial(plain.p, into: &narrowed, n)
                    XCTAssertEqual(differing(r.low, narrowed), 0, "rounded copy, \(at)")
                }
            }
            XCTAssertEqual(differing(bits(step(threads: 2, rounded: nil).p), bits(plain.p)), 0, "\(level), 2 threads")
        }
    }

    /// Clipping's factor applied as AdamW reads each gradient gives the bits of scaling the
    /// gradients in a pass first (what DDP and ZeRO did before), at every level, with and
    /// without the rounded copy.
    func testScaledGradientsAreTheScalingPassFused() {
        defer { CPU.use(nil); Gemm.setThreads(1) }
        Gemm.setThreads(2)
        let n = 50_001
        var rng = SystemRandomNumberGenerator()
        let p0 = (0..<n).map { _ in Float.random(in: -2...2, using: &rng) }
        let g0 = (0..<n).map { i in Float.random(in: -1...1, using: &rng) * (i % 89 == 0 ? 1e30 : 1) }
        let m0 = (0..<n).map { _ in Float.random(in: -0.1...0.1, using: &rng) }
        let v0 = (0..<n).map { _ in Float.random(in: 0...0.01, using: &rng) }
        let adam = AdamW(beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1)
        func step(_ grads: [Float], scale: Float, rounded: Precision?) -> [[UInt32]] {
            var p = p0, m = m0, v = v0, low = [UInt16](repeating: 0, count: n)
            low.withUnsafeMutableBufferPointer { l in
                adam.update(step: 7, lr: 1e-3, decay: true, param: &p, grad: grads, gradScale: scale, m: &m, v: &v,
                            count: n, rounded: rounded.map { (into: l.baseAddress!, precision: $0) })
            }
            return [p, m, v].map { $0.map(\.bitPattern) } + [low.map(UInt32.init)]
        }
        for level in CPU.runnableLevels {
            CPU.use(level)
            // A clip with a loss scale folded in (an inexact product), one that overflows the
            // large gradients, and 1.
            for scale: Float in [0.3141, 1e-9, 1] {
                var scaled = g0
                Vector.scale(&scaled, n, by: scale)
                for rounded in [nil, Precision.bf16, .fp16] {
                    let fused = step(g0, scale: scale, rounded: rounded), first = step(scaled, scale: 1, rounded: rounded)
                    for (i, name) in ["parameters", "m", "v", "rounded copy"].enumerated() {
                        XCTAssertEqual(zip(fused[i], first[i]).filter { $0 != $1 }.count, 0,
                                       "\(name), \(level), scale \(scale), \(rounded.map { "\($0)" } ?? "no copy")")
                    }
                }
                if scale != 1 {
                    XCTAssertNotEqual(step(g0, scale: scale, rounded: nil)[0], step(g0, scale: 1, rounded: nil)[0],
                                      "the factor is applied")
                }
            }
        }
    }
}

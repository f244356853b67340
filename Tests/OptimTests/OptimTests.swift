import Optim
import XCTest

final class OptimTests: XCTestCase {
    /// nanoGPT's get_lr at the recipe's settings.
    func testCosineScheduleMatchesNanoGPT() {
        let s = CosineSchedule(maxLR: 1e-3, minLR: 1e-4, warmupSteps: 100, decaySteps: 2000)
        XCTAssertEqual(s.lr(at: 0), 1e-3 / 101, accuracy: 1e-12)
        XCTAssertEqual(s.lr(at: 99), 1e-3 * 100 / 101, accuracy: 1e-12)
        XCTAssertEqual(s.lr(at: 100), 1e-3, accuracy: 1e-12)
        XCTAssertEqual(s.lr(at: 1050), 1e-4 + 0.5 * 9e-4, accuracy: 1e-12)
        XCTAssertEqual(s.lr(at: 2000), 1e-4, accuracy: 1e-12)
        XCTAssertEqual(s.lr(at: 5000), 1e-4, accuracy: 1e-12)
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
}

import Comm
import Kernels
import Parallel
import Settings
import XCTest

/// DiLoCo's outer loop on ranks as threads: the averaged delta, Nesterov momentum across
/// rounds, and the error bounds of the bf16 and int8 wire formats.
final class LocalSGDTests: XCTestCase {
    /// Rank r's parameters after its inner steps in round k (a fixed pattern).
    static func local(_ anchor: [Float], rank: Int, round: Int) -> [Float] {
        anchor.enumerated().map { i, a in a - Float((i % 7) - 3) * 0.01 * Float(rank + 1) * Float(round + 1) }
    }

    func testOuterNesterovStepMatchesTheFormula() throws {
        let n = 3, count = 1000, lr: Float = 0.7, mu: Float = 0.9
        let start = (0..<count).map { Float(sin(Double($0))) }
        let results = try ThreadCommunicator.run(size: n) { comm -> [[Float]] in
            let sgd = LocalSGD(count: count, comm: comm, outerLR: lr, momentum: mu, dtype: .fp32)
            start.withUnsafeBufferPointer { sgd.start(from: $0.baseAddress!) }
            var rounds: [[Float]] = []
            for k in 0..<2 {
                var mine = Self.local(sgd.anchor.toArray(), rank: comm.rank, round: k)
                try mine.withUnsafeMutableBufferPointer { try sgd.synchronize($0.baseAddress!) }
                rounds.append(mine)
            }
            return rounds
        }
        // Reference: b ← μb + Δ̄, θ ← θ − η(Δ̄ + μb), in double.
        var theta = start.map(Double.init), b = [Double](repeating: 0, count: count)
        for k in 0..<2 {
            let anchor = theta.map(Float.init)
            var mean = [Double](repeating: 0, count: count)
            for r in 0..<n {
                let l = Self.local(anchor, rank: r, round: k)
                for i in 0..<count { mean[i] += Double(anchor[i] - l[i]) / Double(n) }
            }
            for i in 0..<count {
                b[i] = Double(mu) * b[i] + mean[i]
                theta[i] -= Double(lr) * (mean[i] + Double(mu) * b[i])
            }
            for r in 0..<n {
                XCTAssertEqual(results[r][k], results[0][k], "round \(k): every rank holds the same θ")
                let worst = zip(results[r][k], theta).map { abs(Double($0) - $1) }.max()!
                XCTAssertLessThan(worst, 1e-6, "round \(k) rank \(r)")
            }
        }
        // The rounds moved: momentum from round 0 carries into round 1.
        XCTAssertGreaterThan(zip(results[0][1], start).map { abs($0 - $1) }.max()!, 0.05)
    }

    /// The compressed averages stay within their formats' rounding of the exact one.
    func testCompressedAveragesAreWithinTheirRounding() throws {
        let n = 2, count = 2000
        let start = (0..<count).map { Float(cos(Double($0) * 0.37)) }
        func averaged(_ dtype: SyncDType) throws -> [Float] {
            try ThreadCommunicator.run(size: n) { comm -> [Float] in
                // lr 1, no momentum: θ ← θ − Δ̄, so θ_anchor − θ is the averaged delta.
                let sgd = LocalSGD(count: count, comm: comm, outerLR: 1, momentum: 0, dtype: dtype)
                start.withUnsafeBufferPointer { sgd.start(from: $0.baseAddress!) }
                var mine = Self.local(start, rank: comm.rank, round: 4)
                try mine.withUnsafeMutableBufferPointer { try sgd.synchronize($0.baseAddress!) }
                return zip(start, mine).map { $0 - $1 }
            }[0]
        }
        let exact = try averaged(.fp32), bf16 = try averaged(.bf16), int8 = try averaged(.int8)
        let top = exact.map(abs).max()!
        XCTAssertGreaterThan(top, 0.1)
        let bfError = zip(bf16, exact).map { abs($0 - $1) }.max()!, i8Error = zip(int8, exact).map { abs($0 - $1) }.max()!
        // bf16: 8 significant bits per value and per sum (plus θ − Δ rounding in fp32).
        XCTAssertLessThan(bfError, top * 1.0 / 128)
        // int8: half a step of each rank's block scale (max|Δᵣ|/127), averaged.
        XCTAssertLessThan(i8Error, top / 127)
        XCTAssertGreaterThan(bfError, 0, "bf16 rounds"); XCTAssertGreaterThan(i8Error, 0, "int8 rounds")
    }

    func testInt8BlocksRoundTrip() {
        var x = (0..<600).map { Float($0 % 17) - 8.5 }
        x[300] = 1000   // one large value: only its block's scale grows
        var q = [Int8](repeating: 0, count: 768), s = [Float](repeating: 0, count: 3), back = [Float](repeating: 0, count: 600)
        LocalSGD.quantize(x, count: 600, into: &q, scales: &s)
        LocalSGD.dequantizeAdd(q, scales: s, count: 600, into: &back)
        XCTAssertEqual(s[0], 8.5 / 127)
        XCTAssertEqual(s[1], 1000 / 127)
        for i in 0..<600 { XCTAssertLessThanOrEqual(abs(back[i] - x[i]), s[i / 256] / 2 * 1.0001, "\(i)") }
        XCTAssertEqual(q[600..<768].filter { $0 != 0 }.count, 0, "padding codes are zero")
    }
}

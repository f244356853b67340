import Comm
import Kernels
import Model
import Optim
import Parallel
import Settings
import XCTest

/// PowerSGD on ranks as threads: two steps against the algorithm written out in double
/// (warm-started Q, error feedback), exactness on gradients of low rank, the bytes on the
/// wire, and DDP with the compressor before and after its start step.
final class PowerSGDTests: XCTestCase {
    override func setUp() { Gemm.setThreads(1) }

    /// A layout with two compressible matrices (one tall, one wide), one too small to pay,
    /// and a vector.
    static let layout = ParameterLayout(units: [[("a", [40, 24]), ("b", [16, 48]), ("small", [3, 5]), ("bias", [24])]])

    /// Rank `r`'s gradient contribution at step `k`: full rank, different on every rank.
    static func gradient(rank r: Int, step k: Int) -> [Float] {
        (0..<layout.count).map { i in Float(sin(Double(i * (r + 2) + 17 * k) * 0.37) + cos(Double(i % 11 + r * 5 + k))) * 0.1 }
    }

    func testTwoStepsMatchTheAlgorithmInDouble() throws {
        let n = 3, rank = 2, steps = 2
        let results = try ThreadCommunicator.run(size: n) { comm -> ([[Float]], [Float], Int) in
            let psgd = PowerSGD(layout: Self.layout, comm: comm, rank: rank, startStep: 0)
            let q0 = (0..<Self.layout.count).map { _ in Float(0) }
            var packed = q0
            packed.withUnsafeMutableBufferPointer { psgd.packedQ(range: 0..<Self.layout.count, into: $0.baseAddress!) }
            var out: [[Float]] = []
            for k in 0..<steps {
                var g = Self.gradient(rank: comm.rank, step: k)
                try g.withUnsafeMutableBufferPointer { try psgd.reduce($0.baseAddress!) }
                out.append(g)
            }
            return (out, packed, comm.sentBytes)
        }
        for r in 1..<n { XCTAssertEqual(results[r].0, results[0].0, "every rank holds the same estimate") }
        // The reference, in double: per matrix, error feedback, P = ΣMQ, orthonormal P, Q = ΣMᵀP, M̂ = PQᵀ.
        let packedQ = results[0].1
        var errors = (0..<n).map { _ in [Double](repeating: 0, count: Self.layout.count) }
        var q: [String: [Double]] = [:]
        for t in Self.layout.tensors where t.shape.count == 2 && t.name != "small" {
            q[t.name] = (0..<(t.shape[1] * rank)).map { Double(packedQ[t.offset + $0]) }
        }
        for k in 0..<steps {
            let local = (0..<n).map { r in Self.gradient(rank: r, step: k).map(Double.init) }
            var expected = [Double](repeating: 0, count: Self.layout.count)
            for t in Self.layout.tensors {
                let range = t.offset..<(t.offset + t.count)
                guard let Q = q[t.name] else {
                    for i in range { expected[i] = (0..<n).reduce(0) { $0 + local[$1][i] } }   // sent whole
                    continue
                }
                let rows = t.shape[0], cols = t.shape[1]
                let m = (0..<n).map { r in range.map { local[r][$0] + errors[r][$0] } }
                var P = [Double](repeating: 0, count: rows * rank)
                for r in 0..<n { for i in 0..<rows { for j in 0..<rank { for c in 0..<cols { P[i * rank + j] += m[r][i * cols + c] * Q[c * rank + j] } } } }
                for j in 0..<rank {
                    let norm = (0..<rows).reduce(0.0) { $0 + P[$1 * rank + j] * P[$1 * rank + j] }.squareRoot()
                    for i in 0..<rows { P[i * rank + j] /= norm }
                    for l in (j + 1)..<rank {
                        let dot = (0..<rows).reduce(0.0) { $0 + P[$1 * rank + j] * P[$1 * rank + l] }
                        for i in 0..<rows { P[i * rank + l] -= dot * P[i * rank + j] }
                    }
                }
                var newQ = [Double](repeating: 0, count: cols * rank)
                for r in 0..<n { for c in 0..<cols { for j in 0..<rank { for i in 0..<rows { newQ[c * rank + j] += m[r][i * cols + c] * P[i * rank + j] } } } }
                q[t.name] = newQ
                for i in 0..<rows {
                    for c in 0..<cols {
                        let hat = (0..<rank).reduce(0.0) { $0 + P[i * rank + $1] * newQ[c * rank + $1] }
                        expected[t.offset + i * cols + c] = hat
                        for r in 0..<n { errors[r][t.offset + i * cols + c] = m[r][i * cols + c] - hat / Double(n) }
                    }
                }
            }
            let got = results[0].0[k]
            let scale = expected.map(abs).max()!
            let worst = zip(got, expected).map { abs(Double($0) - $1) }.max()!
            XCTAssertLessThan(worst, 1e-5 * scale, "step \(k + 1): the compressed sum")
            // It is an approximation: far from the exact sum on full-rank gradients.
            let exact = (0..<Self.layout.count).map { i in (0..<n).reduce(0.0) { $0 + Double(Self.gradient(rank: $1, step: k)[i]) } }
            XCTAssertGreaterThan(zip(got, exact).map { abs(Double($0) - $1) }.max()!, 0.01 * scale, "rank 2 of a full-rank gradient is lossy")
        }
        // Bytes per step: three all-reduces, of P (n·r per matrix), Q (m·r) and the rest.
        let plan = PowerSGD.plan(layout: Self.layout, rank: rank)
        XCTAssertEqual([plan.p, plan.q, plan.rest], [(40 + 16) * rank, (24 + 48) * rank, 15 + 24])
        XCTAssertEqual(results[0].2, steps * 4 * PowerSGD.sentElements(layout: Self.layout, rank: rank, ranks: n))
        XCTAssertEqual(PowerSGD.sentElements(layout: Self.layout, rank: rank, ranks: n),
                       RingTraffic.allReduce(count: plan.p, ranks: n) + RingTraffic.allReduce(count: plan.q, ranks: n)
                        + RingTraffic.allReduce(count: plan.rest, ranks: n))
    }

    /// When the summed gradient has rank ≤ r (here 2 < 4: the extra columns of P are rounding
    /// noise, which must still come out orthonormal), the estimate is exact.
    func testLowRankGradientsPassExactly() throws {
        let n = 2, rank = 4
        let results = try ThreadCommunicator.run(size: n) { comm -> (sum: [Float], error: [Float]) in
            let psgd = PowerSGD(layout: Self.layout, comm: comm, rank: rank, startStep: 0)
            // Each rank: a rank-2 matrix per tensor (outer products), so the sum has rank ≤ 4.
            var g = [Float](repeating: 0, count: Self.layout.count)
            for t in Self.layout.tensors where t.shape.count == 2 {
                for i in 0..<t.shape[0] {
                    for j in 0..<t.shape[1] {
                        g[t.offset + i * t.shape[1] + j] = Float(sin(Double(i + comm.rank)) * cos(Double(j)) + Double(comm.rank + 1) * cos(Double(2 * i)) * sin(Double(j * j)))
                    }
                }
            }
            try g.withUnsafeMutableBufferPointer { try psgd.reduce($0.baseAddress!) }
            return (g, psgd.error.toArray())
        }
        var exact = [Float](repeating: 0, count: Self.layout.count)
        for t in Self.layout.tensors where t.shape.count == 2 {
            for i in 0..<t.shape[0] {
                for j in 0..<t.shape[1] {
                    exact[t.offset + i * t.shape[1] + j] = (0..<n).reduce(0) { acc, r in
                        acc + Float(sin(Double(i + r)) * cos(Double(j)) + Double(r + 1) * cos(Double(2 * i)) * sin(Double(j * j)))
                    }
                }
            }
        }
        XCTAssertLessThan(zip(results[0].sum, exact).map { abs($0 - $1) }.max()!, 1e-5 * exact.map(abs).max()!)
        // Each rank keeps M_r − M̂/N, which here is M_r − the mean: the residuals cancel.
        let residual = zip(results[0].error, results[1].error).map { $0 + $1 }
        XCTAssertLessThan(residual.map(abs).max()!, 1e-5 * exact.map(abs).max()!, "nothing left out of the sum")
        XCTAssertGreaterThan(results[0].error.map(abs).max()!, 0.1, "each rank's own share is not zero")
    }

    /// DDP with PowerSGD before its start step is DDP; after it, it still trains (the loss
    /// falls as fast to within a few percent on this problem) and ranks agree.
    func testDDPWithPowerSGD() throws {
        let ddp = try ThreadCommunicator.run(size: 2) { try StrategyTests.train(stage: .ddp, comm: $0) }[0]
        let late = try ThreadCommunicator.run(size: 2) { try StrategyTests.train(stage: .ddp, comm: $0, powerSGD: (4, 100)) }
        XCTAssertEqual(late[0].losses, ddp.losses, "uncompressed before the start step")
        let early = try ThreadCommunicator.run(size: 2) { try StrategyTests.train(stage: .ddp, comm: $0, powerSGD: (4, 1)) }
        XCTAssertEqual(early[0].losses[0], ddp.losses[0], "step 1 is uncompressed")
        XCTAssertNotEqual(early[0].losses[1...], ddp.losses[1...], "later steps are compressed")
        XCTAssertEqual(early[1].parameters, early[0].parameters, "ranks agree")
        XCTAssertLessThan(early[0].losses.last!, early[0].losses.first!, "it trains")
    }
}

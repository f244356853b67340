import Foundation
import XCTest

/// ZeRO stages 1–3 under mpirun: same numbers as DDP, memory and traffic as the formulas.
final class ZeROTests: XCTestCase {
    func args(_ data: String, _ out: String, zero: Int) -> [String] {
        tinyArgs(data: data, out: out) + ["--batch-size", "10", "--zero", "\(zero)"]
    }

    func testStagesMatchDDPAndFormulas() throws {
        let data = try Repo.dataDirectory()
        for n in 1...4 {
            let ddp = try Repo.temporaryDirectory("ddp")
            XCTAssertEqual(try mpirun(n, args(data, ddp, zero: 0)).status, 0)
            let refLoss = try losses(ddp), refParams = try modelParameters(ddp)
            let psi = try memoryFile(ddp)["psi"] as! Int
            let S = (psi + n - 1) / n
            let ddpSent = try metrics(ddp)[1]["sent_elements"] as! Int
            let ring = Double(psi) * Double(n - 1) / Double(n)
            if n > 1 { XCTAssertEqual(Double(ddpSent) / (2 * ring), 1, accuracy: 0.05, "DDP sends 2Ψ(N−1)/N") }
            let mem = try memoryFile(ddp)
            XCTAssertEqual(mem["parameters"] as? Int, 4 * psi)
            XCTAssertEqual(mem["gradients"] as? Int, 4 * psi)
            XCTAssertEqual(mem["optimizer"] as? Int, 8 * psi)

            for stage in 1...3 {
                let out = try Repo.temporaryDirectory("zero\(stage)")
                let r = try mpirun(n, args(data, out, zero: stage))
                XCTAssertEqual(r.status, 0, "stage \(stage) np \(n): \(r.stderr)")
                let l = try losses(out)
                XCTAssertEqual(l.count, refLoss.count)
                for (i, (a, b)) in zip(l, refLoss).enumerated() {
                    XCTAssertLessThan(abs(a - b) / b, 1e-5, "stage \(stage) np \(n) step \(i + 1)")
                }
                let p = try modelParameters(out)
                var worst: Float = 0
                for i in 0..<p.count { worst = max(worst, abs(p[i] - refParams[i])) }
                XCTAssertLessThan(worst, 1e-5, "stage \(stage) np \(n) parameters")

                // Memory: ZeRO paper formulas with S = ⌈Ψ/N⌉ (the padding is in S).
                let m = try memoryFile(out)
                let working = m["working"] as! [String: Int]
                switch stage {
                case 1:
                    XCTAssertEqual(m["parameters"] as? Int, 4 * psi)
                    XCTAssertEqual(m["gradients"] as? Int, 4 * psi)
                    XCTAssertEqual(working["parameter padding"], 4 * (n * S - psi))
                case 2:
                    XCTAssertEqual(m["parameters"] as? Int, 4 * psi)
                    XCTAssertEqual(m["gradients"] as? Int, 4 * S)
                    XCTAssertEqual(working["parameter padding"], 4 * (n * S - psi))
                default:
                    XCTAssertEqual(m["parameters"] as? Int, 4 * S)
                    XCTAssertEqual(m["gradients"] as? Int, 4 * S)
                    XCTAssertNotNil(working["gathered unit buffers (current + prefetch)"])
                }
                XCTAssertEqual(m["optimizer"] as? Int, 8 * S, "stage \(stage): 8Ψ/N optimizer bytes")
                // The calculator's prediction is the measurement.
                let predicted = m["predicted"] as! [String: Int]
                for key in ["parameters", "gradients", "optimizer"] { XCTAssertEqual(predicted[key], m[key] as? Int, key) }

                // Traffic per step (elements sent by a rank).
                if n > 1 {
                    let sent = Double(try metrics(out)[1]["sent_elements"] as! Int)
                    let expected = stage == 3 ? 3 * ring : 2 * ring
                    XCTAssertEqual(sent / expected, 1, accuracy: 0.05, "stage \(stage) np \(n): \(sent) vs \(expected)")
                }
            }
        }
    }

    /// A unit smaller than the world (the final LayerNorm of an n_embd 2 model has 2
    /// parameters; 4 ranks) leaves some ranks with empty pieces: documented to work.
    func testUnitsSmallerThanTheWorld() throws {
        let data = try Repo.dataDirectory()
        let tinyModel = ["--n-layer", "1", "--n-head", "1", "--n-embd", "2", "--block-size", "8", "--batch-size", "4",
                         "--max-steps", "5", "--eval-every", "0", "--eval-steps", "1", "--no-bias"]
        let ref = try Repo.temporaryDirectory("small")
        XCTAssertEqual(try tessera(["train", "--data", data, "--out", ref] + tinyModel).status, 0)
        for stage in [2, 3] {
            let out = try Repo.temporaryDirectory("small")
            let r = try mpirun(4, ["train", "--data", data, "--out", out, "--zero", "\(stage)"] + tinyModel)
            XCTAssertEqual(r.status, 0, r.stderr)
            for (a, b) in zip(try losses(out), try losses(ref)) { XCTAssertLessThan(abs(a - b) / b, 1e-5) }
        }
    }

    func testAccumulationUnderStage3() throws {
        let data = try Repo.dataDirectory()
        let a = try Repo.temporaryDirectory("acc3"), b = try Repo.temporaryDirectory("acc3")
        XCTAssertEqual(try mpirun(2, args(data, a, zero: 0)).status, 0)
        XCTAssertEqual(try mpirun(2, args(data, b, zero: 3) + ["--micro-batch", "2"]).status, 0)
        for (x, y) in zip(try losses(a), try losses(b)) { XCTAssertLessThan(abs(x - y) / y, 1e-5) }
    }
}

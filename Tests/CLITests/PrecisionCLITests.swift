import Checkpoint
import Foundation
import XCTest

/// fp16 overflow handling across ranks.
final class PrecisionCLITests: XCTestCase {
    /// +inf injected into rank 1's gradient at step 3 under fp16 on 2 ranks: both ranks skip
    /// that step, the scale halves, parameters and AdamW states stay bit-identical across the
    /// skipped step, and training then goes on.
    func testOverflowOnOneRankSkipsTheStepEverywhere() throws {
        let data = try Repo.dataDirectory()
        let out = try Repo.temporaryDirectory("fp16")
        let r = try mpirun(2, tinyArgs(data: data, out: out, steps: 5) + ["--precision", "fp16", "--save-every", "1",
                                                                          "--debug-inject-inf", "3:1"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let m = try metrics(out)
        XCTAssertEqual(m.count, 5)
        XCTAssertEqual(m[1]["loss_scale"] as? Double, 65536)
        XCTAssertEqual(m[2]["skipped"] as? Bool, true, "step 3 skipped")
        XCTAssertEqual(m[3]["loss_scale"] as? Double, 32768, "scale halved")
        for i in [0, 1, 3, 4] { XCTAssertEqual(m[i]["skipped"] as? Bool, false, "step \(i + 1)") }
        func vectors(_ step: Int) throws -> [String: [UInt32]] {
            let dir = URL(fileURLWithPath: out + "/checkpoints/step-" + String(format: "%08d", step))
            let man = try CheckpointReader.manifest(directory: dir)
            let reader = CheckpointReader.VectorReader(directory: dir, manifest: man)
            var res: [String: [UInt32]] = [:]
            for v in ["params", "adam.m", "adam.v"] {
                var b = [Float](repeating: 0, count: man.parameterCount)
                try b.withUnsafeMutableBufferPointer { try reader.read(v, range: 0..<man.parameterCount, into: $0.baseAddress!) }
                res[v] = b.map(\.bitPattern)
            }
            return res
        }
        let before = try vectors(2), after = try vectors(3), next = try vectors(4)
        for v in ["params", "adam.m", "adam.v"] {
            XCTAssertEqual(before[v], after[v], "\(v) unchanged by the skipped step")
            XCTAssertNotEqual(after[v], next[v], "\(v) moves again after it")
        }
        let man = try CheckpointReader.manifest(directory: URL(fileURLWithPath: out + "/checkpoints/step-00000005"))
        XCTAssertEqual(man.lossScale, 32768)
        XCTAssertEqual(man.skippedSteps, 1)
        XCTAssertEqual(man.precision, "fp16")
    }

    /// Gradients reduced in bf16 (the default under --precision bf16) train like an fp32
    /// reduction, but are not the same numbers: the wire format really is 16-bit.
    func testLowPrecisionGradientReduction() throws {
        let data = try Repo.dataDirectory()
        for zero in ["0", "1", "2", "3"] {
            let wide = try Repo.temporaryDirectory("rw"), narrow = try Repo.temporaryDirectory("rn")
            let base = tinyArgs(data: data, out: wide, steps: 10) + ["--precision", "bf16", "--zero", zero]
            XCTAssertEqual(try mpirun(2, base + ["--reduce-dtype", "fp32"]).status, 0)
            let r = try mpirun(2, tinyArgs(data: data, out: narrow, steps: 10) + ["--precision", "bf16", "--zero", zero])
            XCTAssertEqual(r.status, 0, r.stderr)
            let a = try losses(wide), b = try losses(narrow)
            XCTAssertNotEqual(a, b, "ZeRO-\(zero): bf16 reduction changes the numbers")
            for (x, y) in zip(a, b) { XCTAssertEqual(x, y, accuracy: 0.02 * x, "ZeRO-\(zero)") }
            let written = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: narrow + "/config.json"))) as! [String: Any]
            XCTAssertEqual(written["reduceDtype"] as? String, "")
        }
    }

    func testBadPrecisionIsRejected() throws {
        let data = try Repo.dataDirectory()
        let r = try tessera(["train", "--data", data, "--out", try Repo.temporaryDirectory("p"), "--precision", "fp8"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("--precision"), r.stderr)
    }
}

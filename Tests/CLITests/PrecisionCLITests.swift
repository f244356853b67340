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

    /// ZeRO-3 under bf16/fp16 gathers the 16-bit compute copy of its parameter shard: every
    /// byte it sends is 16-bit, its gathered buffers are half of fp32's, and because every
    /// strategy computes with the same rounded parameters it matches ZeRO-2 (same 16-bit
    /// gradient reduction) and DDP (fp32 reduction, exact on 2 ranks) bit for bit. Biases
    /// are on so LayerNorm and bias vectors go through the 16-bit copy too.
    func testStage3GathersTheComputeCopyIn16Bits() throws {
        let data = try Repo.dataDirectory()
        func run(_ extra: [String]) throws -> String {
            let out = try Repo.temporaryDirectory("z3low")
            let args = tinyArgs(data: data, out: out, steps: 6).filter { $0 != "--no-bias" } + extra
            let r = try mpirun(2, args)
            XCTAssertEqual(r.status, 0, r.stderr)
            return out
        }
        let wide = try run(["--zero", "3"])
        let psi = try memoryFile(wide)["psi"] as! Int
        let ring = Double(psi) / 2                                  // Ψ(N−1)/N on 2 ranks
        for precision in ["bf16", "fp16"] {
            let z3 = try run(["--zero", "3", "--precision", precision])
            let z2 = try run(["--zero", "2", "--precision", precision])
            XCTAssertEqual(try losses(z3), try losses(z2), precision)
            XCTAssertEqual(try modelParameters(z3).map(\.bitPattern), try modelParameters(z2).map(\.bitPattern), precision)

            // Parameters (two gathers) and gradients (one reduce-scatter) all travel in 16 bits.
            let sent = Double(try metrics(z3)[1]["sent_bytes"] as! Int)
            XCTAssertEqual(sent / (2 * 3 * ring), 1, accuracy: 0.01, "\(precision): \(sent) bytes")
            let m = try memoryFile(z3), w = try memoryFile(wide)
            let lowWorking = m["working"] as! [String: Int], wideWorking = w["working"] as! [String: Int]
            for buffer in ["gathered embedding unit", "gathered unit buffers (current + prefetch)"] {
                XCTAssertEqual(2 * lowWorking[buffer]!, wideWorking[buffer]!, "\(precision): \(buffer)")
            }
            XCTAssertEqual(lowWorking["16-bit parameter shard (compute copy)"], 2 * ((psi + 1) / 2))
            XCTAssertEqual(m["parameters"] as? Int, w["parameters"] as? Int, "the fp32 master shard stays")
        }
        // With gradients reduced in fp32, only the gathers are 16-bit: 4Ψ + 2·2Ψ bytes × (N−1)/N.
        let z3 = try run(["--zero", "3", "--precision", "bf16", "--reduce-dtype", "fp32"])
        let ddp = try run(["--zero", "0", "--precision", "bf16", "--reduce-dtype", "fp32"])
        XCTAssertEqual(try losses(z3), try losses(ddp))
        XCTAssertEqual(try modelParameters(z3).map(\.bitPattern), try modelParameters(ddp).map(\.bitPattern))
        let sent = Double(try metrics(z3)[1]["sent_bytes"] as! Int)
        XCTAssertEqual(sent / (8 * ring), 1, accuracy: 0.01, "\(sent) bytes")
        XCTAssertEqual(Double(try metrics(wide)[1]["sent_bytes"] as! Int) / (4 * 3 * ring), 1, accuracy: 0.01, "fp32 ZeRO-3")
    }

    func testBadPrecisionIsRejected() throws {
        let data = try Repo.dataDirectory()
        let r = try tessera(["train", "--data", data, "--out", try Repo.temporaryDirectory("p"), "--precision", "fp8"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("--precision"), r.stderr)
    }
}

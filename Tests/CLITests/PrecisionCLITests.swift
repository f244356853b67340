import Checkpoint
import Foundation
import Kernels
import Settings
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
            try checkpointVectors(out + "/checkpoints/step-" + String(format: "%08d", step)).mapValues { $0.map(\.bitPattern) }
        }
        let before = try vectors(2), after = try vectors(3), next = try vectors(4)
        for vector in StateVector.required {
            let v = vector.rawValue
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
            XCTAssertEqual(a.count, 10, "ZeRO-\(zero): fp32-reduced steps")
            XCTAssertEqual(b.count, 10, "ZeRO-\(zero): bf16-reduced steps")
            for (x, y) in zip(a, b) { XCTAssertEqual(x, y, accuracy: 0.02 * x, "ZeRO-\(zero)") }
            let written = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: narrow + "/config.json"))) as! [String: Any]
            XCTAssertNil(written["reduceDtype"], "not set: gradients travel in the compute precision")
        }
    }

    /// Under bf16/fp16 the sharded stages hold parameters as the ZeRO paper's mixed precision:
    /// ZeRO-1/2 replicate the 16-bit compute copy and shard the fp32 master values, ZeRO-3
    /// shards both and gathers the 16-bit copy. Every byte they send is then 16-bit, memory is
    /// 2Ψ (or 2Ψ/N) parameters + 12Ψ/N optimizer state as the calculator predicts (gradients
    /// stay fp32), and since every strategy computes with the same rounded parameters, all
    /// stages and DDP end bit-identical on 2 ranks (one 16-bit add reduces either way).
    /// Biases are on so LayerNorm and bias vectors go through the 16-bit copy too.
    func testShardedStagesKeepTheComputeCopyIn16Bits() throws {
        let data = try Repo.dataDirectory()
        func run(_ extra: [String]) throws -> String {
            let out = try Repo.temporaryDirectory("lowzero")
            let args = tinyArgs(data: data, out: out, steps: 6).filter { $0 != "--no-bias" } + extra
            let r = try mpirun(2, args)
            XCTAssertEqual(r.status, 0, r.stderr)
            return out
        }
        let wide = try run(["--zero", "3"])
        let psi = try memoryFile(wide)["psi"] as! Int, S = (psi + 1) / 2
        for precision in ["bf16", "fp16"] {
            let ddp = try run(["--zero", "0", "--precision", precision])
            let ddpParams = try modelParameters(ddp).map(\.bitPattern)
            for stage in 1...3 {
                let what = "\(precision) ZeRO-\(stage)"
                let out = try run(["--zero", "\(stage)", "--precision", precision])
                XCTAssertEqual(try losses(out), try losses(ddp), what)
                XCTAssertEqual(try modelParameters(out).map(\.bitPattern), ddpParams, what)

                // Gradients (reduce-scatter) and parameters (all-gather) travel in 16 bits.
                let step = try metrics(out)[1]
                let bytes = Double(step["sent_bytes"] as! Int), elements = Double(step["sent_elements"] as! Int)
                XCTAssertEqual(bytes / (2 * elements), 1, accuracy: 0.001, what)
                XCTAssertEqual(elements / (Double(stage == 3 ? 3 : 2) * Double(psi) / 2), 1, accuracy: 0.01, what)

                let m = try memoryFile(out)
                XCTAssertEqual(m["parameters"] as? Int, 2 * (stage == 3 ? S : psi), what)
                XCTAssertEqual(m["gradients"] as? Int, 4 * (stage >= 2 ? S : psi), what)
                XCTAssertEqual(m["optimizer"] as? Int, 12 * S, what)
                let predicted = m["predicted"] as! [String: Int]
                for key in ["parameters", "gradients", "optimizer"] { XCTAssertEqual(predicted[key], m[key] as? Int, "\(what) \(key)") }
                if stage == 3 {
                    let low = m["working"] as! [String: Int], full = try memoryFile(wide)["working"] as! [String: Int]
                    for buffer in ["gathered embedding unit", "gathered unit buffers (current + prefetch)"] {
                        XCTAssertEqual(2 * low[buffer]!, full[buffer]!, "\(what): \(buffer)")
                    }
                }
            }
        }
        // Gradients reduced in fp32 leave only ZeRO-3's gathers 16-bit: 4Ψ + 2·2Ψ bytes × (N−1)/N.
        let z3 = try run(["--zero", "3", "--precision", "bf16", "--reduce-dtype", "fp32"])
        let ddp = try run(["--zero", "0", "--precision", "bf16", "--reduce-dtype", "fp32"])
        XCTAssertEqual(try losses(z3), try losses(ddp))
        XCTAssertEqual(try modelParameters(z3).map(\.bitPattern), try modelParameters(ddp).map(\.bitPattern))
        let ring = Double(psi) / 2
        XCTAssertEqual(Double(try metrics(z3)[1]["sent_bytes"] as! Int) / (8 * ring), 1, accuracy: 0.01)
        XCTAssertEqual(Double(try metrics(wide)[1]["sent_bytes"] as! Int) / (4 * 3 * ring), 1, accuracy: 0.01, "fp32 ZeRO-3")
    }

    func testBadPrecisionIsRejected() throws {
        let data = try Repo.dataDirectory()
        let r = try tessera(["train", "--data", data, "--out", try Repo.temporaryDirectory("p"), "--precision", "fp8"])
        XCTAssertEqual(r.status, 64, "a value outside the type is a usage error, like any malformed flag")
        XCTAssertTrue(r.stderr.contains("--precision") && r.stderr.contains("bf16"), r.stderr)
    }
}

/// `TESSERA_ISA` forces lower kernel levels (and caps oneDNN's), so one machine runs what an
/// AVX2-only or a baseline x86-64 node runs: the same training, to rounding.
final class ISACLITests: XCTestCase {
    func testForcedKernelLevelsTrainAlike() throws {
        let data = try Repo.dataDirectory()
        var runs: [String: [Double]] = [:]
        for isa in ["", "avx2", "generic"] {
            let out = try Repo.temporaryDirectory("isa")
            let r = try runProcess(Repo.binary, tinyArgs(data: data, out: out, steps: 5) + ["--threads", "2"],
                                   environment: isa.isEmpty ? [:] : ["TESSERA_ISA": isa])
            XCTAssertEqual(r.status, 0, r.stderr)
            runs[isa] = try losses(out)
        }
        for isa in ["avx2", "generic"] {
            for (a, b) in zip(runs[isa]!, runs[""]!) { XCTAssertEqual(a, b, accuracy: 1e-3, "TESSERA_ISA=\(isa)") }
            let bench = try runProcess(Repo.binary, ["bench", "--config", "tiny", "--warmup", "0", "--steps", "1", "--threads", "1"],
                                       environment: ["TESSERA_ISA": isa])
            XCTAssertTrue(bench.stdout.contains("element-wise kernels: \(isa) "), bench.stdout + bench.stderr)
            // Its bf16 peak names the code it measured: neither level has bf16 dot products.
            let path = isa == "avx2" ? "bf16 packing GEMM " : "bf16 widened + oneDNN sgemm "
            XCTAssertTrue(bench.stdout.contains(path) && bench.stdout.contains("or the bf16 one above"), bench.stdout)
        }
    }

    /// A CPU with AMX runs bf16 on AMX tiles; `TESSERA_ISA=avx512bf16` plays one
    /// without it (AVX512-BF16 kernels, oneDNN capped alike): the same training, to rounding.
    func testAVX512BF16OnACPUWithAMX() throws {
        try XCTSkipIf(CPU.hardwareISA < .amx, "no AMX tiles that oneDNN runs on here (\(CPU.model))")
        let data = try Repo.dataDirectory()
        var runs: [String: [Double]] = [:], starts: [String: String] = [:]
        for isa in ["", "avx512bf16"] {
            let out = try Repo.temporaryDirectory("amx")
            let r = try runProcess(Repo.binary, tinyArgs(data: data, out: out, steps: 5) + ["--precision", "bf16"],
                                   environment: isa.isEmpty ? [:] : ["TESSERA_ISA": isa])
            XCTAssertEqual(r.status, 0, r.stderr)
            runs[isa] = try losses(out)
            starts[isa] = r.stdout + r.stderr
        }
        XCTAssertTrue(starts[""]!.contains("(AMX tiles: oneDNN's matmul, and tessera's for attention's blocks)"), starts[""]!)
        XCTAssertTrue(starts["avx512bf16"]!.contains("(AVX512-BF16)"), starts["avx512bf16"]!)
        XCTAssertNotEqual(runs[""], runs["avx512bf16"], "other products, other bits")
        for (a, b) in zip(runs["avx512bf16"]!, runs[""]!) { XCTAssertEqual(a, b, accuracy: 2e-2) }
    }

    /// A misspelt override is refused before anything runs, not ignored.
    func testUnknownLevelsAndBackendsAreRefused() throws {
        for (name, value, hint) in [("TESSERA_ISA", "avx3", "use one of generic, avx2, avx512, avx512bf16, amx"),
                                    ("TESSERA_GEMM", "mkl", "use onednn or openblas")] {
            let r = try runProcess(Repo.binary, ["bench", "--config", "tiny", "--steps", "1"], environment: [name: value])
            XCTAssertEqual(r.status, 2)
            XCTAssertTrue(r.stderr.contains("\(name)=\(value)") && r.stderr.contains(hint), r.stderr)
            XCTAssertFalse(r.stdout.contains("tokens/s"), r.stdout)
        }
    }

    /// A 16-bit run says at start how its products run: on bf16 dot products where the CPU
    /// has them and the level allows, else in fp32 on widened operands: at about fp32's speed
    /// with AVX2 or AVX-512 (the packing GEMM), slower than fp32 at the baseline level; fp32
    /// runs say nothing of it.
    func testStartSaysHowSixteenBitProductsRun() throws {
        let data = try Repo.dataDirectory()
        let native = "bf16 products run on this CPU's bf16 dot products"
        let widened = "compute in fp32 on operands widened from their 16-bit storage"
        func start(_ precision: String, isa: String) throws -> String {
            let out = try Repo.temporaryDirectory("note")
            let r = try runProcess(Repo.binary, tinyArgs(data: data, out: out, steps: 1) + ["--precision", precision],
                                   environment: isa.isEmpty ? [:] : ["TESSERA_ISA": isa])
            XCTAssertEqual(r.status, 0, r.stderr)
            return r.stdout + r.stderr
        }
        let hasBF16 = CPU.hardwareISA >= .avx512bf16
        let plain = try start("bf16", isa: "")
        XCTAssertTrue(plain.contains(hasBF16 ? native : widened), plain)
        XCTAssertFalse(plain.contains(hasBF16 ? widened : native), plain)
        let packed = "as the GEMM packs them", aboutFP32 = "about as long as with --precision fp32"
        let slower = "slower than with --precision fp32"
        let avx2 = try start("bf16", isa: "avx2")
        XCTAssertTrue(avx2.contains(widened) && avx2.contains(packed) && avx2.contains(aboutFP32), avx2)
        XCTAssertFalse(avx2.contains(slower), avx2)
        XCTAssertTrue(avx2.contains(hasBF16 ? "TESSERA_ISA=avx2 keeps kernels below" : "this CPU has no bf16 dot products"), avx2)
        let fp16 = try start("fp16", isa: "")
        XCTAssertTrue(fp16.contains("fp16: there are no fp16 dot products") && fp16.contains(widened), fp16)
        // AVX2 and AVX-512 both pack while widening; only the baseline widens whole operands.
        XCTAssertTrue(fp16.contains(packed) && fp16.contains(aboutFP32) && !fp16.contains(slower), fp16)
        let generic = try start("fp16", isa: "generic")
        XCTAssertTrue(generic.contains(widened) && generic.contains(slower) && !generic.contains(packed), generic)
        let fp32 = try start("fp32", isa: "")
        XCTAssertFalse(fp32.contains(native) || fp32.contains(widened), fp32)
    }
}

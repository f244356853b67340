import Foundation
import Kernels
import Model
import Training
import XCTest

/// LoRA from the command line: adapters trained on an imported Hugging Face base, exported
/// in PEFT's format (which PEFT loads with tessera's logits) and merged; checkpoints that name
/// their base; bad input refused.
final class LoRACLITests: XCTestCase {
    static let hf = Repo.root.appendingPathComponent("Tests/CLITests/Fixtures/hf").path
    static let peft = Repo.root.appendingPathComponent("Tests/CLITests/Fixtures/peft").path
    let fixtureLoRA = LoRAConfig(rank: 4, alpha: 8, targets: [.attn, .mlpProj])

    /// Fixed adapters: exact binary fractions in ±0.25 from a seeded stream.
    func fixedAdapters(_ lora: LoRAConfig, _ model: GPTConfig) -> FloatBuffer {
        let values = FloatBuffer(count: lora.layout(for: model).count)
        var rng = SplitMix64(seed: 2024)
        for i in 0..<values.count { values[i] = Float(Int(rng.next() % 2049) - 1024) / 4096 }
        return values
    }

    /// PEFT (`Fixtures/peft/make_peft_fixture.py`) loaded these exact bytes onto the fixture
    /// base; tessera's adapted model computes its logits.
    func testPEFTExportLoadsInPEFTWithTesserasLogits() throws {
        let base = try SafetensorsImport.read(Self.hf + "/f32")
        let adapters = fixedAdapters(fixtureLoRA, base.config)
        let record = ProcessInfo.processInfo.environment["TESSERA_RECORD_PEFT"] != nil
        let out = record ? Self.peft : try Repo.temporaryDirectory("peft")
        let names = try SafetensorsExport.writePEFT(fixtureLoRA, adapters: adapters.pointer, model: base.config,
                                                    base: "Tests/CLITests/Fixtures/hf/f32", to: out)
        XCTAssertEqual(names.count, 2 * 2 * 2)
        XCTAssertTrue(names.contains("base_model.model.transformer.h.1.mlp.c_proj.lora_B.weight"))
        if record { return }
        for file in ["adapter_model.safetensors", "adapter_config.json"] {
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: out + "/" + file)),
                           try Data(contentsOf: URL(fileURLWithPath: Self.peft + "/" + file)), "\(file): the bytes PEFT loaded")
        }
        struct Reference: Decodable { let ids: [[Int32]]; let logits: [Float] }
        let ref = try JSONDecoder().decode(Reference.self, from: Data(contentsOf: URL(fileURLWithPath: Self.peft + "/logits.json")))
        let model = GPT(config: base.config, lora: fixtureLoRA), none = FloatBuffer(count: 0)
        let flat = FlatParameters(layout: model.layout, parameters: base.parameters.pointer, gradients: none.pointer)
        let mine = FlatParameters(layout: model.adapterLayout!, parameters: adapters.pointer, gradients: none.pointer)
        let B = ref.ids.count, T = ref.ids[0].count, V = base.config.vocabSize
        model.forward(tokens: ref.ids.flatMap { $0 }, targets: nil, B: B, T: T, params: flat, adapters: mine)
        let ours = (0..<B).flatMap { b in (0..<T).flatMap { t in Array(UnsafeBufferPointer(start: model.logitsRow(b: b, t: t), count: V)) } }
        XCTAssertEqual(ours.count, ref.logits.count)
        let worst = zip(ours, ref.logits).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(worst, 1e-4, "tessera vs PEFT logits")
        print("tessera vs PEFT logits: largest difference \(worst)")
        // The adapters matter: the base alone is far from PEFT's logits.
        let plain = GPT(config: base.config)
        plain.forward(tokens: ref.ids.flatMap { $0 }, targets: nil, B: B, T: T, params: flat)
        let baseOnly = (0..<B).flatMap { b in (0..<T).flatMap { t in Array(UnsafeBufferPointer(start: plain.logitsRow(b: b, t: t), count: V)) } }
        XCTAssertGreaterThan(zip(baseOnly, ref.logits).map { abs($0 - $1) }.max()!, 100 * worst)
    }

    /// A LoRA run on the fixture base: its PEFT export holds the checkpoint's adapters, its
    /// merged export is base + (alpha/r)·B·A, and it names its base.
    func testTrainExportPEFTAndMerged() throws {
        let data = try Repo.dataDirectory(), run = try Repo.temporaryDirectory("lora")
        let r = try tessera(["train", "--data", data, "--out", run, "--init-from", Self.hf + "/f32", "--lora-rank", "4",
                             "--lora-alpha", "8", "--lora-targets", "attn,attn-proj", "--batch-size", "4", "--max-steps", "4",
                             "--lr", "1e-2", "--warmup-steps", "0", "--eval-steps", "1", "--no-tensorboard"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: run + "/config.json"))) as! [String: Any]
        let base = try SafetensorsImport.read(Self.hf + "/f32")
        XCTAssertEqual(config["loraBase"] as? String, InitialWeights.checksum(base.parameters))
        let lora = try XCTUnwrap(try LoRACheckpoint.read(run))
        XCTAssertEqual(lora.lora, LoRAConfig(rank: 4, alpha: 8, targets: [.attn, .attnProj]))
        let layout = lora.lora.layout(for: base.config)
        XCTAssertNotEqual(lora.values.toArray().filter { $0 != 0 }.count, 0)
        // B moved from zero: training reached the adapters.
        let b = layout.tensor(named: "h.0.attn.c_attn.lora_B.weight")!
        XCTAssertGreaterThan((0..<b.count).map { abs(lora.values[b.offset + $0]) }.max()!, 1e-4)

        let peftDir = try Repo.temporaryDirectory("peftexport")
        let e = try tessera(["export", run, "--format", "peft", "--out", peftDir])
        XCTAssertEqual(e.status, 0, e.stderr)
        let adapterConfig = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: peftDir + "/adapter_config.json"))) as! [String: Any]
        XCTAssertEqual(adapterConfig["r"] as? Int, 4)
        XCTAssertEqual(adapterConfig["lora_alpha"] as? Double, 8)
        XCTAssertEqual(adapterConfig["target_modules"] as? [String], ["attn.c_attn", "attn.c_proj"])
        let written = try SafetensorsImport.tensors(peftDir + "/adapter_model.safetensors")
        XCTAssertEqual(Set(written.keys), Set(layout.tensors.map { "base_model.model.transformer." + $0.name }))
        for t in layout.tensors {
            let w = written["base_model.model.transformer." + t.name]!
            XCTAssertEqual(w.shape, t.shape, t.name)
            XCTAssertEqual(w.values, Array(UnsafeBufferPointer(start: lora.values.pointer + t.offset, count: t.count)), t.name)
        }

        let mergedDir = try Repo.temporaryDirectory("merged")
        XCTAssertEqual(try tessera(["export", run, "--merge-lora", "--out", mergedDir]).status, 0)
        let merged = try SafetensorsImport.read(mergedDir)
        let full = ParameterLayout(base.config), s = 8.0 / 4
        var worst = 0.0, changed = 0
        for t in full.tensors {
            let module = t.name.replacingOccurrences(of: ".weight", with: "")
            let a = layout.tensor(named: module + ".lora_A.weight"), bb = layout.tensor(named: module + ".lora_B.weight")
            let (O, I) = (t.shape[0], t.shape.count > 1 ? t.shape[1] : 1)
            for o in 0..<O { for i in 0..<I {
                var expected = Double(base.parameters[t.offset + o * I + i])
                if let a, let bb, t.shape.count == 2 {
                    var d = 0.0
                    for k in 0..<4 { d += Double(lora.values[bb.offset + o * 4 + k]) * Double(lora.values[a.offset + k * I + i]) }
                    expected += s * d
                    changed += 1
                }
                worst = max(worst, abs(Double(merged.parameters[t.offset + o * I + i]) - expected))
            } }
        }
        XCTAssertEqual(changed, 2 * (48 * 16 + 16 * 16), "c_attn and attn.c_proj of both blocks")
        XCTAssertLessThan(worst, 1e-6, "merged = base + (alpha/r)·B·A")
        print("merged export vs base + (alpha/r)·B·A: largest difference \(worst)")
        // model.bin, eval and generate see the merged model.
        XCTAssertEqual(try modelParameters(run), merged.parameters.toArray())

        let refused = try tessera(["export", run, "--out", try Repo.temporaryDirectory("nochoice")])
        XCTAssertEqual(refused.status, 2)
        XCTAssertTrue(refused.stderr.contains("--merge-lora") && refused.stderr.contains("--format peft"), refused.stderr)
    }

    /// Bad LoRA input: exit 2 with the flag and the fix, nothing written.
    func testBadInputIsRefused() throws {
        let data = try Repo.dataDirectory()
        func refused(_ extra: [String], _ needle: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let out = try Repo.temporaryDirectory("lorabad")
            let r = try tessera(["train", "--data", data, "--out", out, "--batch-size", "4", "--max-steps", "1"] + extra)
            XCTAssertEqual(r.status, 2, "\(extra): \(r.stderr)", file: file, line: line)
            XCTAssertTrue(r.stderr.contains(needle), "\(extra): \(r.stderr)", file: file, line: line)
            XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/config.json"), file: file, line: line)
        }
        let base = ["--init-from", Self.hf + "/f32"]
        try refused(base + ["--lora-rank", "0"], "--lora-rank is 0")
        try refused(base + ["--lora-rank", "17"], "larger than 16")
        try refused(base + ["--lora-rank", "4", "--lora-targets", "attn,qkv"], "--lora-targets is 'attn,qkv'")
        try refused(["--lora-rank", "4"], "without --init-from")
        try refused(base + ["--lora-rank", "4", "--lora-alpha=-1"], "--lora-alpha")

        // Adapters on a different base: the resume is refused, the checkpoint untouched.
        let run = try Repo.temporaryDirectory("lorabase")
        XCTAssertEqual(try tessera(["train", "--data", data, "--out", run, "--batch-size", "4", "--max-steps", "2",
                                    "--eval-steps", "1", "--no-tensorboard", "--lora-rank", "2"] + base).status, 0)
        let before = try checkpointVectors(run + "/checkpoints/latest")
        let r = try tessera(["train", "--out", run, "--resume", "latest", "--max-steps", "4", "--init-from", Self.hf + "/bf16"])
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("checksum") && r.stderr.contains("pass the base the adapters were trained on"), r.stderr)
        XCTAssertEqual(try checkpointVectors(run + "/checkpoints/latest"), before)

        // PEFT output or a merge of a run that trained the whole model.
        let whole = try Repo.temporaryDirectory("wholemodel")
        XCTAssertEqual(try tessera(["train", "--data", data, "--out", whole, "--batch-size", "4", "--max-steps", "1",
                                    "--eval-steps", "1", "--no-tensorboard"] + base).status, 0)
        for flags in [["--format", "peft"], ["--merge-lora"]] {
            let e = try tessera(["export", whole, "--out", whole + "/export"] + flags)
            XCTAssertEqual(e.status, 2, "\(flags): \(e.stderr)")
            XCTAssertTrue(e.stderr.contains("trained the whole model"), e.stderr)
            XCTAssertFalse(FileManager.default.fileExists(atPath: whole + "/export"))
        }
    }

    /// The calculator for GPT-2 (124M) with rank-8 adapters on both attention maps: a few
    /// tenths of a percent of full fine-tuning's gradient and optimizer bytes.
    func testScalingMemoryWithLoRA() throws {
        let r = try tessera(["scaling", "memory", "--model", "gpt2", "--lora-rank", "8", "--lora-targets", "attn,attn-proj", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let A = 12 * 8 * ((768 + 2304) + (768 + 768)), psi = 124_439_808
        XCTAssertEqual(json["lora_adapters"] as? Int, A)
        let full = json["zero0"] as! [String: Int], lora = json["lora_zero0"] as! [String: Int]
        XCTAssertEqual(lora["gradients"], 4 * A)
        XCTAssertEqual(lora["optimizer"], 8 * A)
        XCTAssertEqual(lora["parameters"], 4 * (psi + A))
        let share = Double(lora["gradients"]! + lora["optimizer"]!) / Double(full["gradients"]! + full["optimizer"]!)
        XCTAssertLessThan(share, 0.05)
        XCTAssertEqual(share, Double(A) / Double(psi), accuracy: 1e-12)
        let text = try tessera(["scaling", "memory", "--model", "gpt2", "--lora-rank", "8", "--lora-targets", "attn,attn-proj"])
        XCTAssertTrue(text.stdout.contains("0.36%"), text.stdout)
        let bad = try tessera(["scaling", "memory", "--params", "1e6", "--lora-rank", "8"])
        XCTAssertEqual(bad.status, 2)
        XCTAssertTrue(bad.stderr.contains("--model"), bad.stderr)
    }

    // MARK: Under every strategy

    func loraArgs(_ data: String, _ out: String, steps: Int = 12) -> [String] {
        ["train", "--data", data, "--out", out, "--init-from", Self.hf + "/f32", "--lora-rank", "4", "--lora-alpha", "16",
         "--lora-targets", "attn,attn-proj,mlp,mlp-proj", "--batch-size", "8", "--block-size", "24", "--max-steps", "\(steps)",
         "--lr", "1e-2", "--warmup-steps", "0", "--eval-every", "0", "--eval-steps", "2", "--no-tensorboard"]
    }

    /// DDP and ZeRO-1/2/3 on 2 ranks train the adapters as one process does (losses within
    /// 1e-5); gradients and AdamW state exist for the adapters alone, the base is held once
    /// per rank (or sharded under ZeRO-3) in the compute precision; a resume is bit-exact.
    func testStrategiesMatchOneProcessAndResumeBitExact() throws {
        let data = try Repo.dataDirectory()
        let single = try Repo.temporaryDirectory("lora1")
        XCTAssertEqual(try tessera(loraArgs(data, single)).status, 0)
        let base = ParameterLayout(try SafetensorsImport.read(Self.hf + "/f32").config).count
        let A = try XCTUnwrap(try LoRACheckpoint.read(single)).values.count
        XCTAssertEqual(A, 2 * 4 * ((16 + 48) + (16 + 16) + (16 + 64) + (64 + 16)))
        var worst = 0.0
        for stage in 0...3 {
            let out = try Repo.temporaryDirectory("lora2z\(stage)")
            let r = try mpirun(2, loraArgs(data, out) + ["--zero", "\(stage)"])
            XCTAssertEqual(r.status, 0, "stage \(stage): \(r.stderr)")
            worst = max(worst, try assertSameTrajectory(out, single, tolerance: 1e-5, "LoRA ZeRO-\(stage) on 2 ranks vs one process").loss)
            let m = try memoryFile(out), S = (A + 1) / 2, SB = (base + 1) / 2
            XCTAssertEqual(m["gradients"] as? Int, 4 * (stage >= 2 ? S : A), "stage \(stage): adapter gradients only")
            XCTAssertEqual(m["optimizer"] as? Int, 8 * (stage >= 1 ? S : A), "stage \(stage): adapter AdamW state only")
            XCTAssertEqual(m["parameters"] as? Int, 4 * (stage == 3 ? S + SB : A + base), "stage \(stage): adapters + frozen base")
            let predicted = m["predicted"] as! [String: Int]
            for key in ["parameters", "gradients", "optimizer"] { XCTAssertEqual(predicted[key], m[key] as? Int, "stage \(stage) \(key)") }
            // The trainer's plan (what `train --dry-run` and `scaling memory` print) is what it held.
            let plan = m["plan"] as! [String: Any]
            for key in ["parameters", "gradients", "optimizer", "activations"] { XCTAssertEqual(plan[key] as? Int, m[key] as? Int, "plan \(key)") }
            XCTAssertEqual(plan["working"] as? Int, (m["working"] as! [String: Int]).values.reduce(0, +), "plan working")
        }
        print("LoRA on 2 ranks vs one process: largest relative loss difference \(worst)")

        // bf16: the base is held (and gathered) in bf16; every stage as DDP.
        let ddp16 = try Repo.temporaryDirectory("lorabf16")
        XCTAssertEqual(try mpirun(2, loraArgs(data, ddp16) + ["--precision", "bf16"]).status, 0)
        XCTAssertEqual((try memoryFile(ddp16))["parameters"] as? Int, 4 * A + 2 * base, "fp32 adapters, bf16 base")
        let z316 = try Repo.temporaryDirectory("lorabf16z3")
        XCTAssertEqual(try mpirun(2, loraArgs(data, z316) + ["--precision", "bf16", "--zero", "3"]).status, 0)
        try assertSameTrajectory(z316, ddp16, tolerance: 1e-5, "LoRA bf16 ZeRO-3 vs DDP")

        // Resume from step 6 under ZeRO-3 (bf16) and DDP: the same steps, bit for bit.
        for (tag, extra, reference) in [("z3", ["--precision", "bf16", "--zero", "3"], z316), ("ddp", [], single)] {
            let run = try Repo.temporaryDirectory("loraresume" + tag)
            let n = tag == "ddp" ? 1 : 2
            func go(_ args: [String]) throws -> RunResult { n == 1 ? try tessera(args) : try mpirun(n, args) }
            XCTAssertEqual(try go(loraArgs(data, run) + extra + ["--save-every", "6"]).status, 0)
            let r = try go(["train", "--out", run, "--resume", run + "/checkpoints/step-00000006", "--max-steps", "12"])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(try metrics(run).map { $0["step"] as! Int }, Array(1...12))
            XCTAssertTrue(try losses(run) == losses(reference), "\(tag): resumed losses bit for bit")
            XCTAssertTrue(try checkpointVectors(run + "/checkpoints/latest") == checkpointVectors(reference + "/checkpoints/latest"),
                          "\(tag): adapters and AdamW moments bit for bit")
        }
    }
}

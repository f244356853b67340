import Foundation
import Kernels
import Model
import Training
import XCTest

/// Hugging Face GPT-2 import: a randomly initialised `GPT2LMHeadModel` saved by transformers
/// (fixture in f32, f16 and bf16: `Fixtures/hf/make_hf_fixture.py`) gives transformers'
/// logits; import ∘ export is the identity; `train --init-from` starts from the weights on any
/// world size and stage.
final class ImportTests: XCTestCase {
    static let fixtures = Repo.root.appendingPathComponent("Tests/CLITests/Fixtures/hf").path

    struct Reference: Decodable { let ids: [[Int32]]; let f32: [Float]; let f16: [Float]; let bf16: [Float] }

    func logits(_ file: ModelFile, _ ids: [[Int32]]) -> [Float] {
        let model = GPT(config: file.config), none = FloatBuffer(count: 0)
        let flat = FlatParameters(layout: model.layout, parameters: file.parameters.pointer, gradients: none.pointer)
        let B = ids.count, T = ids[0].count, V = file.config.vocabSize
        model.forward(tokens: ids.flatMap { $0 }, targets: nil, B: B, T: T, params: flat)
        return (0..<B).flatMap { b in (0..<T).flatMap { t in Array(UnsafeBufferPointer(start: model.logitsRow(b: b, t: t), count: V)) } }
    }

    func testLogitsMatchTransformersInEveryDtype() throws {
        let ref = try JSONDecoder().decode(Reference.self, from: Data(contentsOf: URL(fileURLWithPath: Self.fixtures + "/logits.json")))
        for (dtype, expected) in [("f32", ref.f32), ("f16", ref.f16), ("bf16", ref.bf16)] {
            let file = try SafetensorsImport.read(Self.fixtures + "/" + dtype)
            XCTAssertEqual(file.config.nLayer, 2); XCTAssertEqual(file.config.vocabSize, 128); XCTAssertTrue(file.config.bias)
            let ours = logits(file, ref.ids)
            XCTAssertEqual(ours.count, expected.count)
            let worst = zip(ours, expected).map { abs($0 - $1) }.max()!
            XCTAssertLessThan(worst, 1e-4, "\(dtype): largest logit difference")
            XCTAssertGreaterThan(expected.map(abs).max()!, 1, "\(dtype): logits are not all near zero")
        }
    }

    func testImportExportImportIsTheIdentity() throws {
        let first = try SafetensorsImport.read(Self.fixtures + "/f32")
        let out = try Repo.temporaryDirectory("hfexport")
        try SafetensorsExport.write(first, to: out, dtype: .f32)
        let second = try SafetensorsImport.read(out)
        XCTAssertEqual(second.parameters.toArray().map(\.bitPattern), first.parameters.toArray().map(\.bitPattern))
        // And the exported tensors are the fixture's bytes: every f32 value of the original file is in the export.
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: out + "/model.safetensors")).count,
                       try Data(contentsOf: URL(fileURLWithPath: Self.fixtures + "/f32/model.safetensors")).count
                       - (try headerBytes(Self.fixtures + "/f32/model.safetensors")) + (try headerBytes(out + "/model.safetensors")))
    }

    /// Header length + 8 of a safetensors file.
    func headerBytes(_ path: String) throws -> Int {
        let d = try Data(contentsOf: URL(fileURLWithPath: path))
        return 8 + Int(d.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
    }

    func testTrainStartsFromImportedWeightsOnAnyWorldSizeAndStage() throws {
        let data = try Repo.dataDirectory(), imported = try Repo.temporaryDirectory("imported")
        let r = try tessera(["import", Self.fixtures + "/bf16", "--out", imported])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("imported") && r.stdout.contains("vocabulary 128"), r.stdout)
        let again = try tessera(["import", Self.fixtures + "/f32", "--out", imported])
        XCTAssertEqual(again.status, 2)
        XCTAssertTrue(again.stderr.contains("already exists"), again.stderr)
        let source = try SafetensorsImport.read(Self.fixtures + "/bf16").parameters.toArray()
        XCTAssertEqual(try modelParameters(imported), source, "model.bin holds the imported weights")

        func start(_ n: Int, _ extra: [String], from: String) throws -> String {
            let out = try Repo.temporaryDirectory("initfrom")
            let args = ["train", "--data", data, "--out", out, "--init-from", from, "--batch-size", "4", "--max-steps", "0",
                        "--eval-steps", "1"] + extra
            let r = n == 1 ? try tessera(args) : try mpirun(n, args)
            XCTAssertEqual(r.status, 0, "\(n) \(extra): \(r.stderr)")
            return out
        }
        for (n, extra, from) in [(1, [String](), imported), (2, ["--zero", "3"], Self.fixtures + "/bf16"), (2, ["--zero", "1"], imported + "/model.bin")] {
            let run = try start(n, extra, from: from)
            XCTAssertEqual(try modelParameters(run), source, "np \(n) \(extra) from \(from): step 0 holds the weights")
        }
        // A run's checkpoint as the source, and a shorter context (the first position embeddings).
        let run = try start(1, [], from: imported)
        let cropped = try start(1, ["--block-size", "16"], from: run)
        let short = try modelParameters(cropped), layout = ParameterLayout(GPTConfig(nLayer: 2, nHead: 2, nEmbd: 16, blockSize: 16, vocabSize: 128))
        XCTAssertEqual(short.count, layout.count)
        let wpe = layout.tensor(named: "wpe.weight")!
        let full = ParameterLayout(GPTConfig(nLayer: 2, nHead: 2, nEmbd: 16, blockSize: 24, vocabSize: 128))
        XCTAssertEqual(Array(short[wpe.offset..<(wpe.offset + wpe.count)]),
                       Array(source[full.tensor(named: "wpe.weight")!.offset...].prefix(wpe.count)))
        // Training from it moves on from the imported loss (one step, a small learning rate).
        let trained = try Repo.temporaryDirectory("initfrom-train")
        let t = try tessera(["train", "--data", data, "--out", trained, "--init-from", imported, "--batch-size", "4",
                             "--max-steps", "3", "--lr", "1e-4", "--warmup-steps", "0", "--eval-steps", "1"])
        XCTAssertEqual(t.status, 0, t.stderr)
        XCTAssertEqual(try losses(trained).count, 3)
    }

    func testBadImportsAreClearErrors() throws {
        let data = try Repo.dataDirectory(), out = try Repo.temporaryDirectory("badinit")
        let mismatch = try tessera(["train", "--data", data, "--out", out, "--init-from", Self.fixtures + "/f32", "--n-embd", "32",
                                    "--max-steps", "0"])
        XCTAssertEqual(mismatch.status, 2)
        XCTAssertTrue(mismatch.stderr.contains("do not fit") && mismatch.stderr.contains("n_embd 16 vs 32"), mismatch.stderr)
        let longer = try tessera(["train", "--data", data, "--out", out, "--init-from", Self.fixtures + "/f32", "--block-size", "64",
                                  "--max-steps", "0"])
        XCTAssertEqual(longer.status, 2)
        XCTAssertTrue(longer.stderr.contains("block_size 24 < 64"), longer.stderr)
        let missing = try tessera(["train", "--data", data, "--out", out, "--init-from", out + "/nothing"])
        XCTAssertEqual(missing.status, 2)
        XCTAssertTrue(missing.stderr.contains("does not exist"), missing.stderr)
        // A model that is not GPT-2's: another activation.
        let odd = try Repo.temporaryDirectory("oddhf")
        for f in ["model.safetensors", "config.json"] {
            try FileManager.default.copyItem(atPath: Self.fixtures + "/f32/" + f, toPath: odd + "/" + f)
        }
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: odd + "/config.json"))) as! [String: Any]
        config["activation_function"] = "relu"
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: odd + "/config.json"))
        let relu = try tessera(["import", odd, "--out", out + "/x"])
        XCTAssertEqual(relu.status, 2)
        XCTAssertTrue(relu.stderr.contains("activation_function is relu"), relu.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/x/model.bin"))
    }
}

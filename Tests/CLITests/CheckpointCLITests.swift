import Checkpoint
import Foundation
import Settings
import XCTest

/// Resume, reshard, corruption and failed saves, through the binary and mpirun.
final class CheckpointCLITests: XCTestCase {
    func args(_ data: String, _ out: String, steps: Int) -> [String] {
        tinyArgs(data: data, out: out, steps: steps) + ["--batch-size", "12"]
    }

    /// Launches on `n` ranks (1 = plain process, no mpirun).
    func launch(_ n: Int, _ a: [String]) throws -> RunResult { n == 1 ? try tessera(a) : try mpirun(n, a) }


    /// Stopped at step 10 and resumed: the same losses and final state, bit for bit, as 20
    /// uninterrupted steps, for every parallel mode (and async saving).
    func testBitExactResume() throws {
        let data = try Repo.dataDirectory()
        let modes: [(ranks: Int, extra: [String])] = [
            (1, []), (2, ["--zero", "0"]), (2, ["--zero", "1"]), (2, ["--zero", "2"]), (2, ["--zero", "3"]),
            (2, ["--zero", "3", "--async-save", "--save-every", "4"]),
            (1, ["--precision", "bf16"]), (2, ["--precision", "bf16", "--zero", "2"]),
            (2, ["--precision", "fp16", "--zero", "3"]),
            (1, ["--dropout", "0.2"]), (2, ["--dropout", "0.2", "--zero", "3", "--recompute", "full"]),
        ]
        for (n, extra) in modes {
            let full = try Repo.temporaryDirectory("full"), part = try Repo.temporaryDirectory("part")
            XCTAssertEqual(try launch(n, args(data, full, steps: 20) + extra).status, 0)
            XCTAssertEqual(try launch(n, args(data, part, steps: 10) + extra).status, 0)
            let r = try launch(n, ["train", "--out", part, "--resume", "latest", "--max-steps", "20"])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stdout.contains("resumed from"), "\(n) \(extra)")
            XCTAssertEqual(try losses(part), try losses(full), "losses, np \(n) \(extra)")
            XCTAssertEqual(try modelParameters(part), try modelParameters(full), "parameters, np \(n) \(extra)")
            let a = try checkpointVectors(part), b = try checkpointVectors(full)
            for v in StateVector.required.map(\.rawValue) {
                XCTAssertEqual(a[v]!.map(\.bitPattern), b[v]!.map(\.bitPattern), "\(v) np \(n) \(extra)")
            }
        }
    }

    /// A model whose shard of each vector spans several checkpoint frames (4M elements
    /// each): saved, verified and resumed bit for bit, on 1 and 2 ranks (ZeRO-3 at 2).
    func testMultiFrameCheckpointsResumeBitExactly() throws {
        let data = try Repo.dataDirectory()
        let big = ["--n-layer", "6", "--n-head", "6", "--n-embd", "384", "--block-size", "32", "--batch-size", "4",
                   "--eval-every", "0", "--eval-steps", "1", "--log-every", "1000"]
        for (n, extra) in [(1, ["--zero", "0"]), (2, ["--zero", "3"])] {
            let full = try Repo.temporaryDirectory("mfull"), part = try Repo.temporaryDirectory("mpart")
            XCTAssertEqual(try launch(n, ["train", "--data", data, "--out", full, "--max-steps", "3"] + big + extra).status, 0)
            XCTAssertEqual(try launch(n, ["train", "--data", data, "--out", part, "--max-steps", "2"] + big + extra).status, 0)
            let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: part + "/checkpoints/step-00000002/manifest.json"))) as! [String: Any]
            let frames = (manifest["files"] as! [[String: Any]]).map { ($0["frames"] as! [Any]).count }
            XCTAssertEqual(frames, n == 1 ? [9] : [6, 6], "10.7M parameters: 3 frames per vector on 1 rank, 2 per shard on 2")
            XCTAssertEqual(try tessera(["ckpt", "verify", part + "/checkpoints/step-00000002"]).status, 0)
            let r = try launch(n, ["train", "--out", part, "--resume", "latest", "--max-steps", "3"])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(try losses(part), try losses(full))
            XCTAssertEqual(try modelParameters(part), try modelParameters(full))
        }
    }

    /// A checkpoint written at world size N / stage S loads at N′ / S′ with identical state.
    func testReshard() throws {
        let data = try Repo.dataDirectory()
        // (ranks, stage) → (ranks, stage), in a precision; bf16 sharded stages hold a 16-bit
        // replica or shard beside the fp32 master values, which is what the checkpoint keeps.
        let cases: [(Int, Int, Int, Int, String)] = [(2, 0, 3, 0, "fp32"), (4, 0, 2, 0, "fp32"), (1, 0, 4, 0, "fp32"),
                                                     (2, 3, 2, 0, "fp32"), (2, 0, 2, 2, "fp32"), (3, 2, 2, 3, "fp32"),
                                                     (2, 1, 3, 3, "bf16"), (3, 3, 2, 2, "bf16")]
        for (n, s, n2, s2, precision) in cases {
            let src = try Repo.temporaryDirectory("src"), dst = try Repo.temporaryDirectory("dst")
            XCTAssertEqual(try launch(n, args(data, src, steps: 6) + ["--zero", "\(s)", "--precision", precision]).status, 0)
            // Resume into another run directory with no further steps: it loads, then saves
            // the same step again at the new world size and stage.
            let r = try launch(n2, ["train", "--out", dst, "--resume", src + "/checkpoints/latest", "--max-steps", "6", "--zero", "\(s2)"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let m = try CheckpointReader.manifest(directory: URL(fileURLWithPath: dst + "/checkpoints/step-00000006"))
            XCTAssertEqual(m.worldSize, n2); XCTAssertEqual(m.zeroStage, s2); XCTAssertEqual(m.precision, precision)
            let a = try checkpointVectors(src), b = try checkpointVectors(dst)
            for vector in StateVector.required {
            let v = vector.rawValue
                XCTAssertEqual(a[v]!.map(\.bitPattern), b[v]!.map(\.bitPattern), "\(v): \(n)/ZeRO-\(s) → \(n2)/ZeRO-\(s2)")
            }
            // Then both train on: the resharded state must continue as the original does (at
            // another world size the fp32 sums run in another order, hence the tolerance).
            XCTAssertEqual(try launch(n2, ["train", "--out", dst, "--resume", "latest", "--max-steps", "10"]).status, 0)
            XCTAssertEqual(try launch(n, ["train", "--out", src, "--resume", "latest", "--max-steps", "10"]).status, 0)
            try assertSameTrajectory(dst, src, tolerance: 2e-3, "\(n)/ZeRO-\(s) → \(n2)/ZeRO-\(s2), 4 steps after", lastSteps: 4)
        }
    }

    func testCorruptCheckpointsAreRefusedAndLatestFallsBack() throws {
        let data = try Repo.dataDirectory()
        let run = try Repo.temporaryDirectory("corrupt")
        XCTAssertEqual(try mpirun(2, args(data, run, steps: 6) + ["--save-every", "3"]).status, 0)
        let ck = run + "/checkpoints"
        let newest = ck + "/step-00000006", older = ck + "/step-00000003"
        let file = newest + "/rank-00001-of-00002.bin"
        let original = try Data(contentsOf: URL(fileURLWithPath: file))
        let manifestPath = newest + "/manifest.json"
        let manifest = try Data(contentsOf: URL(fileURLWithPath: manifestPath))

        func expectError(_ mention: [String], _ label: String) throws {
            let v = try tessera(["ckpt", "verify", newest])
            XCTAssertEqual(v.status, 2, "\(label): \(v.stderr)")
            for m in mention { XCTAssertTrue(v.stderr.contains(m), "\(label): expected '\(m)' in \(v.stderr)") }
            let r = try tessera(["train", "--out", run, "--resume", newest, "--max-steps", "8"])
            XCTAssertEqual(r.status, 2, "\(label): resume of the damaged checkpoint must fail")
            // 'latest' falls back to the newest valid one, with a warning.
            let l = try mpirun(2, ["train", "--out", run, "--resume", "latest", "--max-steps", "6"])
            XCTAssertEqual(l.status, 0, "\(label): \(l.stderr)")
            XCTAssertTrue(l.stderr.contains("warning:") && l.stderr.contains(older), "\(label): \(l.stderr)")
            XCTAssertTrue(l.stdout.contains("at step 3"), "\(label): \(l.stdout)")
        }

        try original.prefix(original.count - 100).write(to: URL(fileURLWithPath: file))
        try expectError([file, "truncated"], "truncated")
        var flipped = original; flipped[flipped.count / 3] ^= 0x10
        try flipped.write(to: URL(fileURLWithPath: file))
        try expectError([file, "checksum"], "flipped byte")
        try FileManager.default.removeItem(atPath: file)
        try expectError([file, "missing"], "missing shard")
        try original.write(to: URL(fileURLWithPath: file))
        let newer = String(decoding: manifest, as: UTF8.self).replacingOccurrences(of: "\"formatVersion\" : 2", with: "\"formatVersion\" : 99")
        try newer.write(toFile: manifestPath, atomically: true, encoding: .utf8)
        try expectError([manifestPath, "version 99"], "newer format")
        try manifest.write(to: URL(fileURLWithPath: manifestPath))
        XCTAssertEqual(try tessera(["ckpt", "verify", newest]).status, 0, "restored")

        let wrongModel = try tessera(["train", "--out", run, "--resume", newest, "--max-steps", "8", "--n-embd", "64"])
        XCTAssertEqual(wrongModel.status, 2)
        XCTAssertTrue(wrongModel.stderr.contains("mismatched model config") && wrongModel.stderr.contains(newest), wrongModel.stderr)
    }

    /// The reproduction of lost work after a fallback: a damaged newest checkpoint, a resume
    /// that falls back and retrains to the same step. Afterwards `latest` verifies, holds the
    /// same state as a clean run's bit for bit, the damaged copy is kept aside, and the next
    /// resume needs no fallback.
    func testFallbackRunReplacesTheDamagedCheckpoint() throws {
        let data = try Repo.dataDirectory()
        let clean = try Repo.temporaryDirectory("clean"), run = try Repo.temporaryDirectory("fallback")
        for dir in [clean, run] {
            XCTAssertEqual(try tessera(args(data, dir, steps: 6) + ["--save-every", "3"]).status, 0)
        }
        let file = run + "/checkpoints/step-00000006/rank-00000-of-00001.bin"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        bytes[bytes.count / 2] ^= 0x01
        try bytes.write(to: URL(fileURLWithPath: file))

        let r = try tessera(["train", "--out", run, "--resume", "latest", "--max-steps", "6"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("at step 3"), r.stdout)
        XCTAssertTrue(r.stderr.contains("moved the damaged checkpoint"), r.stderr)
        let latest = try String(contentsOfFile: run + "/checkpoints/latest", encoding: .utf8)
        XCTAssertEqual(latest.trimmingCharacters(in: .whitespacesAndNewlines), "step-00000006")
        XCTAssertEqual(try tessera(["ckpt", "verify", run]).status, 0, "latest verifies")
        let a = try checkpointVectors(run), b = try checkpointVectors(clean)
        for v in StateVector.required.map(\.rawValue) {
            XCTAssertEqual(a[v]!.map(\.bitPattern), b[v]!.map(\.bitPattern), "\(v) equals the clean run's step 6")
        }
        let aside = try FileManager.default.contentsOfDirectory(atPath: run + "/checkpoints").filter { $0.hasPrefix("damaged-step-00000006-") }
        XCTAssertEqual(aside.count, 1, "the damaged copy is kept aside")
        let again = try tessera(["train", "--out", run, "--resume", "latest", "--max-steps", "7"])
        XCTAssertEqual(again.status, 0, again.stderr)
        XCTAssertFalse(again.stderr.contains("warning"), "no second fallback: \(again.stderr)")
        XCTAssertTrue(again.stdout.contains("at step 6"), again.stdout)
    }

    /// Saving into a full filesystem: a clear error, the previous checkpoint intact and
    /// loadable, and a resumed run (elsewhere) works.
    func testFullDiskKeepsThePreviousCheckpoint() throws {
        let data = try Repo.dataDirectory()
        let mnt = try Repo.temporaryDirectory("tmpfs")
        let mount = try runProcess(URL(fileURLWithPath: "/bin/mount"), ["-t", "tmpfs", "-o", "size=12m", "tmpfs", mnt])
        try requireEnvironment(mount.status == 0, "cannot mount a tmpfs here (\(mount.stderr.trimmingCharacters(in: .whitespacesAndNewlines)))")
        defer { _ = try? runProcess(URL(fileURLWithPath: "/bin/umount"), [mnt]) }
        let run = mnt + "/run"
        // Each checkpoint of the tiny model is ~8 MB: the first fits, the second cannot.
        let r = try tessera(args(data, run, steps: 8) + ["--save-every", "4"])
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("error:") && r.stderr.contains("No space left on device"), r.stderr)
        XCTAssertTrue(r.stderr.contains("previous checkpoint is intact"), r.stderr)
        let v = try tessera(["ckpt", "verify", run + "/checkpoints/step-00000004"])
        XCTAssertEqual(v.status, 0, v.stderr)
        let latest = try String(contentsOfFile: run + "/checkpoints/latest", encoding: .utf8)
        XCTAssertEqual(latest.trimmingCharacters(in: .whitespacesAndNewlines), "step-00000004")
        let elsewhere = try Repo.temporaryDirectory("resumed")
        let resumed = try tessera(["train", "--out", elsewhere, "--resume", run + "/checkpoints/latest", "--max-steps", "8"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        let ref = try Repo.temporaryDirectory("ref")
        XCTAssertEqual(try tessera(args(data, ref, steps: 8)).status, 0)
        XCTAssertEqual(try losses(elsewhere).suffix(4), try losses(ref).suffix(4))
    }

    func testKeepLastPrunesOnlyAfterCommit() throws {
        let data = try Repo.dataDirectory()
        let run = try Repo.temporaryDirectory("keep")
        XCTAssertEqual(try tessera(args(data, run, steps: 8) + ["--save-every", "2", "--keep-last", "2"]).status, 0)
        let names = try FileManager.default.contentsOfDirectory(atPath: run + "/checkpoints").sorted()
        XCTAssertEqual(names, ["latest", "step-00000006", "step-00000008"])
    }

    /// `ckpt verify --all` checks every committed checkpoint: an older one damaged (which
    /// verifying `latest` does not see) fails it, named, with a non-zero exit.
    func testVerifyAllChecksEveryCheckpoint() throws {
        let data = try Repo.dataDirectory()
        let run = try Repo.temporaryDirectory("verifyall")
        XCTAssertEqual(try tessera(args(data, run, steps: 4) + ["--save-every", "2"]).status, 0)
        let good = try tessera(["ckpt", "verify", run, "--all"])
        XCTAssertEqual(good.status, 0, good.stderr)
        XCTAssertTrue(good.stdout.contains("ok: step-00000002") && good.stdout.contains("ok: step-00000004")
                      && good.stdout.contains("ok: all 2 checkpoints"), good.stdout)
        let file = run + "/checkpoints/step-00000002/rank-00000-of-00001.bin"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        bytes[bytes.count / 2] ^= 0x10
        try bytes.write(to: URL(fileURLWithPath: file))
        XCTAssertEqual(try tessera(["ckpt", "verify", run]).status, 0, "latest (step 4) is intact")
        let bad = try tessera(["ckpt", "verify", run + "/checkpoints", "--all"])
        XCTAssertEqual(bad.status, 2)
        XCTAssertTrue(bad.stdout.contains("ok: step-00000004"), bad.stdout)
        XCTAssertTrue(bad.stderr.contains("verification failed for 1 of 2 checkpoints (step-00000002)"), bad.stderr)
    }

    /// The exported safetensors file, read by a parser written here from the format's spec.
    func testSafetensorsExport() throws {
        let data = try Repo.dataDirectory()
        let run = try Repo.temporaryDirectory("export")
        XCTAssertEqual(try tessera(args(data, run, steps: 2)).status, 0)
        let params = try checkpointVectors(run)["params"]!
        for dtype in ["f32", "bf16"] {
            let out = try Repo.temporaryDirectory("st")
            let r = try tessera(["export", run, "--format", "safetensors", "--out", out, "--dtype", dtype])
            XCTAssertEqual(r.status, 0, r.stderr)
            let bytes = try Data(contentsOf: URL(fileURLWithPath: out + "/model.safetensors"))
            // Never over existing files (another model's, or a run's config.json).
            let again = try tessera(["export", run, "--out", out, "--dtype", dtype == "f32" ? "bf16" : "f32"])
            XCTAssertEqual(again.status, 2)
            XCTAssertTrue(again.stderr.contains("--out \(out) already holds model.safetensors and config.json"), again.stderr)
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: out + "/model.safetensors")), bytes, "nothing overwritten")
            XCTAssertEqual(try tessera(["export", run, "--out", run]).status, 2, "not over the run's own config.json")
            let n = bytes.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
            let header = try JSONSerialization.jsonObject(with: bytes.subdata(in: 8..<(8 + n))) as! [String: Any]
            let body = bytes.subdata(in: (8 + n)..<bytes.count)
            func tensor(_ name: String) throws -> (shape: [Int], values: [Float]) {
                let t = try XCTUnwrap(header[name] as? [String: Any], name)
                let off = t["data_offsets"] as! [Int]
                let raw = body.subdata(in: off[0]..<off[1])
                let values: [Float] = dtype == "f32"
                    ? raw.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
                    : raw.withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)) }.map { Float(bitPattern: UInt32($0) << 16) }
                XCTAssertEqual(t["dtype"] as? String, dtype == "f32" ? "F32" : "BF16")
                return (t["shape"] as! [Int], values)
            }
            let C = 128, V = try shardTokens(data, "train").vocab
            XCTAssertEqual(header.count, 1 + 2 + 4 * 12 + 2, "metadata + wte/wpe + 4 blocks × 12 + ln_f")
            let wte = try tensor("transformer.wte.weight")
            XCTAssertEqual(wte.shape, [V, C])
            // c_attn is Conv1D: (in, out) = transpose of tessera's (3C, C), which sits right
            // after ln_1.weight in block 0 (no biases): offset (V + 64)·C + C.
            let attn = try tensor("transformer.h.0.attn.c_attn.weight")
            XCTAssertEqual(attn.shape, [C, 3 * C])
            let base = (V + 64) * C + C
            for (o, i) in [(0, 0), (5, 7), (300, 100), (3 * C - 1, C - 1)] {
                let expected = params[base + o * C + i]
                let got = attn.values[i * 3 * C + o]
                if dtype == "f32" { XCTAssertEqual(got, expected) } else { XCTAssertEqual(got, expected, accuracy: abs(expected) / 128) }
            }
            XCTAssertEqual(try tensor("transformer.h.3.mlp.c_proj.bias").values, [Float](repeating: 0, count: C), "zero biases for a no-bias model")
            let cfg = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/config.json"))) as! [String: Any]
            XCTAssertEqual(cfg["model_type"] as? String, "gpt2")
            XCTAssertEqual(cfg["n_embd"] as? Int, C)
        }
    }
}

/// A new run started in a directory that holds one does not replace it: refused with the
/// ways out, unless `--overwrite` (which removes the old run first and leaves the user's own
/// files alone); an attempt that died before its first save is simply begun again.
final class RunDirectoryCLITests: XCTestCase {
    func args(_ data: String, _ out: String, steps: Int) -> [String] {
        ["train", "--data", data, "--out", out, "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
         "--batch-size", "2", "--max-steps", "\(steps)", "--eval-every", "0", "--eval-steps", "1", "--log-every", "1000"]
    }

    func testANewRunDoesNotReplaceAnOldOne() throws {
        let data = try Repo.dataDirectory(), out = try Repo.temporaryDirectory("rundir") + "/run"
        XCTAssertEqual(try tessera(args(data, out, steps: 4) + ["--save-every", "2"]).status, 0)
        let model = out + "/model.bin"
        let before = try Data(contentsOf: URL(fileURLWithPath: model))
        let metrics = try Data(contentsOf: URL(fileURLWithPath: out + "/metrics.jsonl"))

        let again = try tessera(args(data, out, steps: 3))
        XCTAssertEqual(again.status, 2)
        XCTAssertTrue(again.stderr.contains("error: --out \(out) already holds a run (checkpoints of steps 2–4 and model.bin)"),
                      again.stderr)
        XCTAssertTrue(again.stderr.contains("--resume latest") && again.stderr.contains("--overwrite"), again.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: model)), before, "model.bin untouched")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: out + "/metrics.jsonl")), metrics, "metrics untouched")

        // Its own weights cannot be the start of the run that removes them.
        let selfInit = try tessera(args(data, out, steps: 3) + ["--init-from", out, "--overwrite"])
        XCTAssertEqual(selfInit.status, 2)
        XCTAssertTrue(selfInit.stderr.contains("--overwrite would remove the weights --init-from"), selfInit.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: model)), before)
        XCTAssertEqual(try tessera(["train", "--out", out, "--resume", "latest", "--overwrite"]).status, 64)

        // --overwrite: the old run's checkpoints go (no mixing of two runs' steps), a file of
        // the user's stays, and the new run is whole.
        try Data("mine".utf8).write(to: URL(fileURLWithPath: out + "/notes.txt"))
        let fresh = try tessera(args(data, out, steps: 3) + ["--overwrite"])
        XCTAssertEqual(fresh.status, 0, fresh.stderr)
        XCTAssertTrue(fresh.stdout.contains("--overwrite: removed the previous run in \(out) (checkpoints of steps 2–4 and model.bin)"),
                      fresh.stdout)
        let steps = try FileManager.default.contentsOfDirectory(atPath: out + "/checkpoints").filter { $0.hasPrefix("step-") }
        XCTAssertEqual(steps, ["step-00000003"], "only the new run's checkpoint")
        XCTAssertEqual(try metricsLines(out + "/metrics.jsonl"), 3)
        XCTAssertEqual(try String(contentsOfFile: out + "/notes.txt", encoding: .utf8), "mine")
        // Resuming writes on into the run, as meant.
        XCTAssertEqual(try tessera(["train", "--out", out, "--resume", "latest", "--max-steps", "5"]).status, 0)
    }

    /// A run that failed before its first checkpoint left metrics but nothing to lose: a
    /// restart (as launch/resilient.sh makes, without --resume) begins again.
    func testAnAttemptWithoutACheckpointIsBegunAgain() throws {
        let data = try Repo.dataDirectory(), out = try Repo.temporaryDirectory("rundir") + "/run"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try Data("{\"step\":1,\"loss\":4.0}\n".utf8).write(to: URL(fileURLWithPath: out + "/metrics.jsonl"))
        try FileManager.default.createDirectory(atPath: out + "/checkpoints/.step-00000002.partial", withIntermediateDirectories: true)
        let r = try tessera(args(data, out, steps: 2))
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertFalse(r.stdout.contains("--overwrite"), r.stdout)
    }

    func metricsLines(_ path: String) throws -> Int {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").count
    }
}

import Foundation
import XCTest

/// The pre-flight memory plan: what cannot fit is refused before anything large is
/// allocated, with the cheapest change that fits; `--dry-run` prints the plan; a run records
/// its measured peak beside the plan.
final class MemoryPlanTests: XCTestCase {
    func testATrillionParametersIsRefusedAtOnce() throws {
        let data = try Repo.dataDirectory(), out = try Repo.temporaryDirectory("huge")
        let t0 = Date()
        let r = try tessera(["train", "--data", data, "--out", out, "--n-layer", "4096", "--n-head", "64", "--n-embd", "65536"])
        XCTAssertLessThan(Date().timeIntervalSince(t0), 1.5, "refused in about a second")
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("memory plan") && r.stderr.contains("parameters"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/config.json"), "nothing written")
    }

    func testAPlanOverTheLimitNamesTheCheapestFix() throws {
        let data = try Repo.dataDirectory(), out = try Repo.temporaryDirectory("limit")
        let small = ["train", "--data", data, "--out", out, "--n-layer", "6", "--n-head", "6", "--n-embd", "384",
                     "--block-size", "256", "--batch-size", "16", "--max-steps", "1", "--attention", "unfused"]
        // (Unfused attention keeps T² probabilities per head: the plan below is about them.)
        // 2 ranks of DDP need ~1.5 GiB on the node; ZeRO-3 still does not fit 1.2 GiB,
        // selective recomputation does (and is cheaper than smaller micro-batches); with it
        // the same limit is met. At 0.6 GiB full recomputation needs smaller micro-batches too.
        let r = try mpirun(2, small + ["--memory-limit", "1200M"])
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("--memory-limit is exceeded: DDP needs") && r.stderr.contains("use --recompute selective ("), r.stderr)
        let fixed = try mpirun(2, small + ["--memory-limit", "1200M", "--recompute", "selective", "--dry-run"])
        XCTAssertTrue(fixed.stdout.contains("fits:"), fixed.stdout + fixed.stderr)
        let tight = try mpirun(2, small + ["--memory-limit", "600M"])
        XCTAssertEqual(tight.status, 2, tight.stderr)
        XCTAssertTrue(tight.stderr.contains("--recompute full --micro-batch"), tight.stderr)
        let dry = try mpirun(2, small + ["--dry-run"])
        XCTAssertEqual(dry.status, 0, dry.stderr)
        XCTAssertTrue(dry.stdout.contains("memory plan: DDP, fp32, recompute none, 2 rank(s)") && dry.stdout.contains("fits:"), dry.stdout)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/config.json"), "a dry run trains nothing")
    }

    /// The plan's communication per step is what the runs report sending: DDP, and every
    /// ZeRO stage with 16-bit parameters but fp32 gradients (two wire formats in one step),
    /// with one and with three micro-steps.
    func testPlannedTrafficIsWhatTheRunSends() throws {
        let data = try Repo.dataDirectory()
        for zero in ["0", "1", "2", "3"] {
            for micro in ["0", "2"] {
                let out = try Repo.temporaryDirectory("traffic")
                let r = try mpirun(2, tinyArgs(data: data, out: out, steps: 2) + ["--zero", zero, "--precision", "bf16",
                                                                                 "--reduce-dtype", "fp32", "--micro-batch", micro])
                XCTAssertEqual(r.status, 0, r.stderr)
                let planned = try XCTUnwrap((try memoryFile(out)["plan"] as? [String: Any])?["sentBytesPerStep"] as? Int)
                let sent = try XCTUnwrap(try metrics(out)[1]["sent_bytes"] as? Int)
                // Within 5%: the loss and norm all-reduces are not planned, and ZeRO-3 keeps
                // the embedding gathered for backward.
                XCTAssertEqual(Double(sent) / Double(planned), 1, accuracy: 0.05, "ZeRO-\(zero), micro-batch \(micro)")
            }
        }
    }

    func testTheMeasuredPeakIsRecordedBesideThePlan() throws {
        let data = try Repo.dataDirectory(), out = try Repo.temporaryDirectory("peak")
        let r = try mpirun(2, ["train", "--data", data, "--out", out, "--n-layer", "6", "--n-head", "6", "--n-embd", "384",
                               "--block-size", "256", "--batch-size", "16", "--max-steps", "2", "--eval-steps", "1", "--zero", "3"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let m = try memoryFile(out)
        let plan = try XCTUnwrap(m["plan"] as? [String: Any])
        let measured = try XCTUnwrap(m["measured_peak_rss"] as? Int)
        let planned = (["runtime", "parameters", "gradients", "optimizer", "working"].map { plan[$0] as! Int }.reduce(0, +))
            + max(plan["startup"] as! Int, (plan["activations"] as! Int) + (plan["collectives"] as! Int) + (plan["save"] as! Int))
        // Measured on AMD Zen 4: within 4% at this shape for every stage (README).
        XCTAssertEqual(Double(measured) / Double(planned), 1, accuracy: 0.15, "measured \(measured) vs planned \(planned)")
        // Each metrics line carries rank 0's peak so far, never above the final peak of all ranks.
        let perStep = try metrics(out).compactMap { $0["peak_rss_mb"] as? Double }
        XCTAssertEqual(perStep.count, 2)
        XCTAssertLessThanOrEqual(perStep.last! * 1_048_576, Double(measured) * 1.001)
        XCTAssertGreaterThan(perStep.last!, 100, "a real resident size, in MiB")
    }
}

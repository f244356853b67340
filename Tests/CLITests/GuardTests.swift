import Foundation
import XCTest

/// The non-finite guard (fp32/bf16): a step whose loss or gradient is not finite on any rank
/// is skipped on every rank; `--max-bad-steps` in a row stop the job with the last good
/// state saved, from which it resumes.
final class GuardTests: XCTestCase {
    func args(_ data: String, _ out: String, steps: Int) -> [String] {
        // Replicas compared after every step: the guards must raise no false alarm.
        tinyArgs(data: data, out: out, steps: steps) + ["--save-every", "1", "--zero", "1", "--warmup-steps", "0",
                                                        "--check-replicas", "1"]
    }

    func step(_ out: String, _ k: Int) throws -> [String: [UInt32]] {
        try checkpointVectors(out + "/checkpoints/step-" + String(format: "%08d", k)).mapValues { $0.map(\.bitPattern) }
    }

    func testANaNOnOneRankSkipsTheStepEverywhere() throws {
        let data = try Repo.dataDirectory(), out = try Repo.temporaryDirectory("nan")
        let r = try mpirun(2, args(data, out, steps: 8) + ["--debug-inject-nan", "5:1"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let m = try metrics(out)
        XCTAssertEqual(m.count, 8)
        XCTAssertEqual(m[4]["skipped"] as? Bool, true, "step 5 skipped")
        XCTAssertEqual(m[4]["loss"] as? String, "nan", "its loss is recorded as nan")
        XCTAssertEqual(m[7]["skipped_steps"] as? Int, 1)
        XCTAssertTrue(r.stdout.contains("skipped: non-finite"), r.stdout)
        // ZeRO-1 shards the optimizer: each rank wrote its own part of step 5's checkpoint, and
        // every part equals step 4's, so no rank applied the update.
        let four = try step(out, 4), five = try step(out, 5), six = try step(out, 6)
        for v in ["params", "adam.m", "adam.v"] {
            XCTAssertEqual(four[v], five[v], "\(v) unchanged by the skipped step on every rank")
            XCTAssertNotEqual(five[v], six[v], "\(v) moves again after it")
        }
    }

    func testConsecutiveBadStepsStopTheJobResumably() throws {
        let data = try Repo.dataDirectory(), out = try Repo.temporaryDirectory("bad")
        let r = try mpirun(2, args(data, out, steps: 20) + ["--debug-inject-nan", "6-20:1", "--max-bad-steps", "3"])
        XCTAssertEqual(r.status, 1, r.stdout)
        XCTAssertTrue(r.stderr.contains("steps 6-8") && r.stderr.contains("step-00000008"), r.stderr)
        XCTAssertEqual(try String(contentsOfFile: out + "/checkpoints/latest", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines), "step-00000008")
        XCTAssertEqual(try tessera(["ckpt", "verify", out]).status, 0)
        XCTAssertEqual(try step(out, 8)["params"], try step(out, 5)["params"], "the saved state is the last good one")
        // Resumed without the fault, it trains on: the job stopped resumably.
        let resumed = try mpirun(2, ["train", "--out", out, "--resume", "latest", "--max-steps", "12", "--debug-inject-nan", "99:0"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(resumed.stdout.contains("at step 8"), resumed.stdout)
        let m = try metrics(out)
        XCTAssertEqual(m.count, 12)
        XCTAssertNil(m[11]["skipped"] as? Bool, "no more skips")
        XCTAssertEqual(m[11]["skipped_steps"] as? Int, 3, "the skipped count survives the resume")
    }

    /// A bit flipped in one rank's replicated parameters stops the job at the next check,
    /// naming the rank and the tensor, and nothing of the diverged state is saved.
    func testReplicaDivergenceStopsTheJobWithinTheInterval() throws {
        let data = try Repo.dataDirectory()
        // DDP: the flipped replica stays wrong, the check 3 steps later sees it. ZeRO-1: the
        // next all-gather would overwrite it, so the flip lands on a check step.
        for (zero, flip) in [("0", "7"), ("1", "10")] {
            let out = try Repo.temporaryDirectory("flip")
            let r = try mpirun(2, tinyArgs(data: data, out: out, steps: 30) + ["--zero", zero, "--check-replicas", "5",
                                                                              "--save-every", "5", "--debug-flip-bit", "\(flip):1"])
            XCTAssertEqual(r.status, 1, "ZeRO-\(zero): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("after step 10, tensor wte.weight on rank(s) 1 differs"), "ZeRO-\(zero): \(r.stderr)")
            XCTAssertEqual(try metrics(out).count, 10, "ZeRO-\(zero): stopped at the first check after the flip")
            XCTAssertEqual(try String(contentsOfFile: out + "/checkpoints/latest", encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines), "step-00000005", "ZeRO-\(zero): the diverged step 10 was not saved")
        }
    }
}

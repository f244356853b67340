import Foundation
import XCTest

/// `--lr-schedule`: the learning rate `train` applies, step by step, and warmup-stable-decay's
/// promise that a cooldown branched from a stable checkpoint is the run that had planned it.
final class ScheduleCLITests: XCTestCase {
    let peak = 1e-3

    /// Every step's `lr` in metrics.jsonl, by 1-based step.
    func learningRates(_ out: String) throws -> [Int: Double] {
        var lr: [Int: Double] = [:]
        for m in try metrics(out) { if let s = m["step"] as? Int, let v = m["lr"] as? Double { lr[s] = v } }
        return lr
    }

    /// A 30-step wsd run (warm-up 5, cooldown 10 to 0) against llm.c's formula; then the same
    /// run made in two parts: 20 steps planned for 40 (so still at the peak), and a branch
    /// from its step-20 checkpoint into a new run directory that ends at 30. The branch's
    /// weights are the straight run's, bit for bit.
    func testWSDBranchedCooldownEqualsTheStraightRun() throws {
        let data = try Repo.dataDirectory()
        let straight = try Repo.temporaryDirectory("wsd"), stable = try Repo.temporaryDirectory("stable")
        let branch = try Repo.temporaryDirectory("branch") + "/cool"
        let wsd = ["--lr", "\(peak)", "--min-lr", "0", "--warmup-steps", "5", "--lr-schedule", "wsd", "--cooldown-steps", "10"]
        let a = try tessera(tinyArgs(data: data, out: straight, steps: 30) + wsd)
        XCTAssertEqual(a.status, 0, a.stderr)
        let lr = try learningRates(straight)
        XCTAssertEqual(lr.count, 30)
        for step in 1...30 {
            let i = step - 1   // 0-based, as the schedule counts
            let expected = i < 5 ? peak * Double(i + 1) / 6 : i < 20 ? peak : peak * (1 - (Double(i - 20) / 10).squareRoot())
            XCTAssertEqual(lr[step] ?? .nan, expected, accuracy: 1e-15, "step \(step)")
        }

        let b = try tessera(tinyArgs(data: data, out: stable, steps: 20) + wsd + ["--lr-decay-steps", "40", "--save-every", "10"])
        XCTAssertEqual(b.status, 0, b.stderr)
        let stableLR = try learningRates(stable)
        XCTAssertEqual(stableLR[20] ?? .nan, peak, accuracy: 1e-15, "a run planned for 40 steps is still at its peak at 20")
        let c = try tessera(["train", "--resume", stable + "/checkpoints/step-00000020", "--out", branch,
                             "--max-steps", "30", "--lr-decay-steps", "0"])
        XCTAssertEqual(c.status, 0, c.stderr)
        XCTAssertFalse(c.stdout.contains("schedule changed"), "step 21 is at the peak in both plans: \(c.stdout)")
        let branchLR = try learningRates(branch)
        XCTAssertEqual(branchLR.keys.sorted(), Array(21...30), "the branch logs its own steps")
        for step in 21...30 { XCTAssertEqual(branchLR[step], lr[step], "step \(step)") }
        let straightModel = try Data(contentsOf: URL(fileURLWithPath: straight + "/model.bin"))
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: branch + "/model.bin")), straightModel)
        let stableModel = try Data(contentsOf: URL(fileURLWithPath: stable + "/model.bin"))
        XCTAssertNotEqual(stableModel, straightModel)

        // A branch into a directory that holds a run is refused, and that run is kept.
        let refused = try tessera(["train", "--resume", stable + "/checkpoints/step-00000020", "--out", straight, "--max-steps", "30"])
        XCTAssertEqual(refused.status, 2)
        XCTAssertTrue(refused.stderr.contains("already holds a run") && refused.stderr.contains("belongs to another"), refused.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: straight + "/model.bin")), straightModel)
        XCTAssertEqual(try learningRates(straight), lr)

        // Resuming the stable run with an earlier end moves step 21 into a cooldown: said once.
        let moved = try tessera(["train", "--resume", "latest", "--out", stable, "--max-steps", "25", "--lr-decay-steps", "25"])
        XCTAssertEqual(moved.status, 0, moved.stderr)
        let expected = peak * (1 - (5.0 / 10).squareRoot())   // cooldown 15..<25, step index 20
        XCTAssertTrue(moved.stdout.contains(String(format: "step 21's learning rate is %.3e (the checkpoint's config gave %.3e)", expected, peak)),
                      moved.stdout)
        XCTAssertEqual(try learningRates(stable)[21] ?? .nan, expected, accuracy: 1e-15)
    }

    /// linear and constant after a warm-up, and the cosine's default end at --max-steps.
    func testLinearConstantAndCosineRates() throws {
        let data = try Repo.dataDirectory()
        let common = ["--lr", "\(peak)", "--min-lr", "1e-4", "--warmup-steps", "2"]
        for (kind, formula) in [("linear", { (i: Int) in 1e-4 + (1 - Double(i - 2) / 10) * 9e-4 }),
                                ("constant", { (_: Int) in self.peak }),
                                ("cosine", { (i: Int) in 1e-4 + 0.5 * (1 + cos(Double.pi * Double(i - 2) / 10)) * 9e-4 })] {
            let out = try Repo.temporaryDirectory(kind)
            let r = try tessera(tinyArgs(data: data, out: out, steps: 12) + common + ["--lr-schedule", kind])
            XCTAssertEqual(r.status, 0, r.stderr)
            let lr = try learningRates(out)
            for step in 1...12 {
                let i = step - 1
                XCTAssertEqual(lr[step] ?? .nan, i < 2 ? peak * Double(i + 1) / 3 : formula(i), accuracy: 1e-15, "\(kind) step \(step)")
            }
        }
    }

    /// Schedules that cannot mean what was asked are refused before anything is written.
    func testBadScheduleFlagsAreRefused() throws {
        let data = try Repo.dataDirectory()
        let out = try Repo.temporaryDirectory("bad")
        for (flags, expected) in [(["--cooldown-steps", "5"], "a cooldown belongs to --lr-schedule wsd"),
                                  (["--lr-schedule", "wsd", "--cooldown-steps", "40", "--warmup-steps", "5"],
                                   "more than the 25 steps between warm-up (5) and the decay's end (30)"),
                                  (["--lr-decay-steps", "-1"], "--lr-decay-steps"),
                                  (["--lr-schedule", "step"], "lr-schedule")] {
            let r = try tessera(tinyArgs(data: data, out: out, steps: 30) + flags)
            XCTAssertNotEqual(r.status, 0, "\(flags)")
            XCTAssertTrue(r.stderr.contains(expected), "\(flags): \(r.stderr)")
            XCTAssertNil(FileManager.default.contents(atPath: out + "/config.json"), "\(flags) wrote nothing")
        }
    }
}

import Foundation
import XCTest

/// Multi-rank behaviour under mpirun (through launch/local.sh), against the release binary.
final class MPITests: XCTestCase {
    /// DDP at 1–4 ranks (3 gives uneven splits of a batch of 10) matches one process: losses
    /// at every step within 1e-5 relative, final parameters within 1e-5.
    func testDDPParityAcrossWorldSizes() throws {
        let data = try Repo.dataDirectory()
        let ref = try Repo.temporaryDirectory("ref")
        let args = { (out: String) in tinyArgs(data: data, out: out) + ["--batch-size", "10"] }
        XCTAssertEqual(try tessera(args(ref)).status, 0)
        let refLoss = try losses(ref), refParams = try modelParameters(ref)
        XCTAssertEqual(refLoss.count, 20)
        for n in 1...4 {
            let out = try Repo.temporaryDirectory("ddp\(n)")
            let r = try mpirun(n, args(out))
            XCTAssertEqual(r.status, 0, "np \(n): \(r.stderr)")
            let l = try losses(out)
            XCTAssertEqual(l.count, refLoss.count, "np \(n)")
            for (i, (a, b)) in zip(l, refLoss).enumerated() {
                XCTAssertLessThan(abs(a - b) / abs(b), 1e-5, "np \(n) step \(i + 1): \(a) vs \(b)")
            }
            let p = try modelParameters(out)
            XCTAssertEqual(p.count, refParams.count)
            var worst: Float = 0
            for i in 0..<p.count { worst = max(worst, abs(p[i] - refParams[i])) }
            XCTAssertLessThan(worst, 1e-5, "np \(n): largest parameter difference")
            let m = try metrics(out)
            XCTAssertEqual(m[0]["world_size"] as? Int, n)
        }
    }

    /// Gradient accumulation (micro-batch 2 → several micro-steps per rank) gives the same run.
    func testAccumulationMatchesOneMicroStep() throws {
        let data = try Repo.dataDirectory()
        let a = try Repo.temporaryDirectory("acc"), b = try Repo.temporaryDirectory("acc")
        XCTAssertEqual(try mpirun(2, tinyArgs(data: data, out: a)).status, 0)
        XCTAssertEqual(try mpirun(2, tinyArgs(data: data, out: b) + ["--micro-batch", "2"]).status, 0)
        try assertSameTrajectory(b, a, tolerance: 1e-5, "micro-batch 2 vs one micro-step")
    }

    /// Only rank 0 prints progress.
    func testWorkersAreQuiet() throws {
        let data = try Repo.dataDirectory()
        let out = try Repo.temporaryDirectory("quiet")
        let r = try mpirun(2, tinyArgs(data: data, out: out, steps: 3) + ["--log-every", "1"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout.components(separatedBy: "step     1/3").count - 1, 1, "one progress line per step")
        XCTAssertTrue(r.stdout.contains("2 rank(s)"))
    }

    /// kill -9 of a worker mid-run: the job ends non-zero within 30 s and names the rank.
    func testKilledRankEndsTheJob() throws {
        let data = try Repo.dataDirectory()
        let out = try Repo.temporaryDirectory("kill")
        let job = try start(Repo.launcher, ["-n", "2", "--"] + tinyArgs(data: data, out: out, steps: 100_000))
        try waitForSteps(out, 3)
        let pids = rankPIDs()
        let victim = try XCTUnwrap(pids[1], "rank 1 process not found: \(pids)")
        let killedAt = Date()
        kill(victim, SIGKILL)
        let r = job.finish()
        let elapsed = Date().timeIntervalSince(killedAt)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertLessThan(elapsed, 30, "job must end within 30 s of the kill")
        XCTAssertTrue((r.stdout + r.stderr).contains("rank 1"), "names the dead rank: \(r.stderr)")
    }

    /// A rank stopped longer than --comm-timeout is reported by the watchdog; a shorter stall
    /// is survived.
    func testWatchdogReportsStalledRank() throws {
        let data = try Repo.dataDirectory()
        let out = try Repo.temporaryDirectory("stall")
        let job = try start(Repo.launcher, ["-n", "2", "--"] + tinyArgs(data: data, out: out, steps: 100_000)
                            + ["--comm-timeout", "3"])
        try waitForSteps(out, 3)
        let victim = try XCTUnwrap(rankPIDs()[1])
        let stoppedAt = Date()
        kill(victim, SIGSTOP)
        let r = job.finish()
        kill(victim, SIGCONT)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertLessThan(Date().timeIntervalSince(stoppedAt), 3 + 20)
        XCTAssertTrue(r.stderr.contains("did not complete within 3 s"), r.stderr)
        XCTAssertTrue(r.stderr.contains("[rank 0]"), r.stderr)
        XCTAssertTrue(r.stderr.contains("step "), "names the step: \(r.stderr)")
    }

    func testShortStallIsSurvived() throws {
        let data = try Repo.dataDirectory()
        let out = try Repo.temporaryDirectory("pause")
        let job = try start(Repo.launcher, ["-n", "2", "--"] + tinyArgs(data: data, out: out, steps: 60)
                            + ["--comm-timeout", "10"])
        try waitForSteps(out, 3)
        let victim = try XCTUnwrap(rankPIDs()[1])
        kill(victim, SIGSTOP)
        Thread.sleep(forTimeInterval: 2)
        kill(victim, SIGCONT)
        let r = job.finish()
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try losses(out).count, 60)
    }

    func waitForSteps(_ out: String, _ n: Int, timeout: Double = 60) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let m = try? metrics(out), m.count >= n { return }
            Thread.sleep(forTimeInterval: 0.1)
        }
        XCTFail("run did not reach step \(n) within \(timeout) s")
    }
}

/// A global batch smaller than the world leaves a rank without samples: it still joins every
/// gradient reduction (with zero gradients), so DDP and ZeRO-1 train as one process does.
final class IdleRankTests: XCTestCase {
    func testBatchSmallerThanTheWorld() throws {
        let data = try Repo.dataDirectory(), single = try Repo.temporaryDirectory("idle1")
        func args(_ out: String) -> [String] {
            tinyArgs(data: data, out: out, steps: 6) + ["--batch-size", "1", "--warmup-steps", "0", "--bucket-mb", "0.1"]
        }
        let alone = try tessera(args(single))
        XCTAssertEqual(alone.status, 0)
        XCTAssertFalse(alone.stdout.contains("idles"), "one process with batch 1 has no idle rank")
        for zero in ["0", "1"] {
            let out = try Repo.temporaryDirectory("idle2")
            let r = try mpirun(2, args(out) + ["--zero", zero])
            XCTAssertEqual(r.status, 0, "zero \(zero): \(r.stderr)")
            XCTAssertTrue(r.stdout.contains("global batch 1 is smaller than the 2 ranks: rank 1 gets no sequence and idles"),
                          "the run says a rank idles: \(r.stdout)")
            try assertSameTrajectory(out, single, tolerance: 2e-3, "2 ranks, batch 1, zero \(zero) vs one process")
        }
    }

    /// ZeRO-2/3 reduce after every micro-step, which a rank without samples does not have: the
    /// run is refused up front, naming the batch (not --micro-batch, which cannot help), and
    /// nothing is written.
    func testShardedGradientsRefuseAnIdleRank() throws {
        let data = try Repo.dataDirectory()
        for zero in ["2", "3"] {
            let out = try Repo.temporaryDirectory("idle3") + "/run"
            let r = try mpirun(2, tinyArgs(data: data, out: out, steps: 2) + ["--batch-size", "1", "--zero", zero])
            XCTAssertEqual(r.status, 2, "zero \(zero): a configuration error")
            XCTAssertTrue(r.stderr.contains("error: --batch-size is 1, below the 2 ranks, which ZeRO-\(zero) cannot run"), r.stderr)
            XCTAssertTrue(r.stderr.contains("use --batch-size 2 or more"), r.stderr)
            XCTAssertFalse(FileManager.default.fileExists(atPath: out), "zero \(zero): nothing written")
        }
    }

    /// `bench` on more ranks than a shape's batch (gpt2-1k's 1) gives each rank a sequence
    /// rather than timing an idle rank, and says so; ZeRO-3 can then run it too.
    func testBenchGivesEveryRankASequence() throws {
        let json = try Repo.temporaryDirectory("idle4") + "/bench.jsonl"
        let r = try mpirun(2, ["bench", "--config", "gpt2-1k", "--zero", "3", "--warmup", "0", "--steps", "1",
                               "--threads", "1", "--json", json])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("note: gpt2-1k's batch of 1 is below the 2 ranks: measured at global batch 2"), r.stdout)
        let row = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json))) as? [String: Any]
        XCTAssertEqual(row?["tokensPerStep"] as? Int, 2 * 1024, "two sequences of 1024 tokens")
    }
}

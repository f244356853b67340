import Foundation
import XCTest

/// Launchers and failures: restarts, pre-emption, multi-host over network namespaces, elastic.
final class FaultToleranceTests: XCTestCase {
    var resilient: URL { Repo.root.appendingPathComponent("launch/resilient.sh") }

    func args(_ data: String, _ out: String, steps: Int) -> [String] {
        tinyArgs(data: data, out: out, steps: steps) + ["--save-every", "5"]
    }

    func waitFor(_ what: String, timeout: Double = 60, _ cond: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline { if cond() { return }; Thread.sleep(forTimeInterval: 0.1) }
        XCTFail("timed out waiting for \(what)")
        throw XCTSkip("precondition not reached")
    }

    /// k of the trainer's "resumed from … at step k" line, if it printed one.
    func resumedStep(_ stdout: String) -> Int? {
        guard let m = stdout.range(of: #"resumed from \S+ at step [0-9]+"#, options: .regularExpression) else { return nil }
        return Int(stdout[m].split(separator: " ").last!)
    }

    func latest(_ out: String) -> String {
        ((try? String(contentsOfFile: out + "/checkpoints/latest", encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// kill -9 of a rank while an async checkpoint is being written: the previous checkpoint
    /// still verifies, `latest` names it, and resuming from it is bit-exact.
    func testRankKilledDuringAsyncSaveKeepsThePreviousCheckpoint() throws {
        let data = try Repo.dataDirectory()
        let ref = try Repo.temporaryDirectory("ref"), out = try Repo.temporaryDirectory("async")
        XCTAssertEqual(try mpirun(2, tinyArgs(data: data, out: ref, steps: 30)).status, 0)
        let job = try start(Repo.launcher, ["-n", "2", "--"] + tinyArgs(data: data, out: out, steps: 30)
                                + ["--save-every", "5", "--async-save", "--debug-slow-save-ms", "4000"])
        // Step 5's save committed, step 10's writers are waiting: kill inside that window.
        try waitFor("step 10's save to start") {
            latest(out) == "step-00000005" && FileManager.default.fileExists(atPath: out + "/checkpoints/.step-00000010.partial")
        }
        let victim = try XCTUnwrap(rankPIDs()[1])
        kill(victim, SIGKILL)
        let r = job.finish(timeout: 120)
        XCTAssertNotEqual(r.status, 0, "the job fails when a rank dies")
        XCTAssertEqual(latest(out), "step-00000005", "latest still names the committed checkpoint")
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/checkpoints/step-00000010"), "step 10 never committed")
        XCTAssertEqual(try tessera(["ckpt", "verify", out]).status, 0, "the previous checkpoint verifies")
        let resumed = try mpirun(2, ["train", "--out", out, "--resume", "latest", "--max-steps", "30", "--debug-slow-save-ms", "0"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertEqual(resumedStep(resumed.stdout), 5)
        XCTAssertEqual(try losses(out), try losses(ref), "bit-exact continuation")
        XCTAssertEqual(try modelParameters(out), try modelParameters(ref))
    }

    /// kill -9 of a worker under the resilient launcher: it restarts from the last checkpoint
    /// and ends bit-identical to an uninterrupted run.
    func testKilledWorkerIsRestartedAndResumesBitExactly() throws {
        let data = try Repo.dataDirectory()
        let ref = try Repo.temporaryDirectory("ref"), out = try Repo.temporaryDirectory("res")
        XCTAssertEqual(try mpirun(2, args(data, ref, steps: 40)).status, 0)
        let job = try start(resilient, ["-n", "2", "--backoff", "1", "--"] + args(data, out, steps: 40))
        try waitFor("a checkpoint") { latest(out) >= "step-00000010" }
        let victim = try XCTUnwrap(rankPIDs()[1])
        kill(victim, SIGKILL)
        let r = job.finish()
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("attempt 1:") && r.stderr.contains("--resume latest"), r.stderr)
        // Deterministic runs would also match if the restart began from scratch: it must resume.
        XCTAssertGreaterThanOrEqual(resumedStep(r.stdout) ?? 0, 10, "the restart resumes from a checkpoint: \(r.stdout)")
        XCTAssertEqual(try modelParameters(out), try modelParameters(ref), "bit-identical final parameters")
        XCTAssertEqual(try losses(out), try losses(ref))
    }

    /// SIGTERM: a checkpoint at the current step, exit 75; resuming continues bit-exactly.
    func testSigtermCheckpointsAndExitsResumable() throws {
        let data = try Repo.dataDirectory()
        let ref = try Repo.temporaryDirectory("ref"), out = try Repo.temporaryDirectory("term")
        XCTAssertEqual(try mpirun(2, tinyArgs(data: data, out: ref, steps: 400)).status, 0)
        let job = try start(Repo.launcher, ["-n", "2", "--"] + tinyArgs(data: data, out: out, steps: 400))
        try waitFor("training to start") { ((try? metrics(out))?.count ?? 0) >= 5 }
        kill(job.process.processIdentifier, SIGTERM)
        let r = job.finish()
        XCTAssertEqual(r.status, 75, r.stderr)
        let done = try losses(out).count
        XCTAssertLessThan(done, 400)
        XCTAssertEqual(latest(out), "step-" + String(format: "%08d", done), "checkpoint at the step it stopped")
        XCTAssertTrue(r.stdout.contains("stopped by signal"), r.stdout)
        let resumed = try mpirun(2, ["train", "--out", out, "--resume", "latest", "--max-steps", "400"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertEqual(resumedStep(resumed.stdout), done, "resumed at the step it stopped")
        XCTAssertEqual(try losses(out), try losses(ref))
        XCTAssertEqual(try modelParameters(out), try modelParameters(ref))
    }

    /// The resilient launcher stops at once on a configuration error.
    func testConfigurationErrorIsNotRetried() throws {
        let out = try Repo.temporaryDirectory("cfg")
        let r = try runProcess(resilient, ["-n", "1", "--backoff", "1", "--", "train", "--data", "/nonexistent", "--out", out])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("configuration error") && r.stderr.contains("not restarting"), r.stderr)
        XCTAssertFalse(r.stderr.contains("attempt 1:"))
    }

    /// A run branched from another run's checkpoint (`--resume OTHER --out NEW`) that fails
    /// after saving is restarted from NEW's own latest checkpoint, not branched again from
    /// OTHER. The launcher here is a stand-in that records its arguments, and the first time
    /// saves a `latest` pointer and fails.
    func testRestartOfABranchResumesItsOwnLatest() throws {
        let out = try Repo.temporaryDirectory("branch")
        let calls = out + "/calls.txt"
        let fake = URL(fileURLWithPath: try Repo.temporaryDirectory("fake")).appendingPathComponent("launch.sh")
        try """
            #!/usr/bin/env bash
            echo "$*" >> \(calls)
            if [ ! -f \(out)/checkpoints/latest ]; then
              mkdir -p \(out)/checkpoints && echo step-00000025 > \(out)/checkpoints/latest; exit 1
            fi
            exit 0
            """.write(to: fake, atomically: true, encoding: .utf8)
        chmod(fake.path, 0o755)
        let r = try runProcess(resilient, ["--launcher", fake.path, "--backoff", "0", "--", "train", "--resume",
                                           "/elsewhere/checkpoints/step-00000020", "--out", out, "--max-steps", "30"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = try String(contentsOfFile: calls, encoding: .utf8).split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 2, r.stderr)
        XCTAssertTrue(lines[0].hasSuffix("train --resume /elsewhere/checkpoints/step-00000020 --out \(out) --max-steps 30"), lines[0])
        XCTAssertTrue(lines[1].hasSuffix("train --out \(out) --max-steps 30 --resume latest"), lines[1])
    }

    /// A 3-rank run loses a rank for good: the elastic launcher continues on 2 ranks from
    /// the last checkpoint, and from there matches a 2-rank run resumed from that checkpoint.
    func testElasticContinuesOnFewerRanks() throws {
        let data = try Repo.dataDirectory()
        let out = try Repo.temporaryDirectory("elastic")
        let job = try start(resilient, ["-n", "3", "--elastic", "--backoff", "1", "--"] + args(data, out, steps: 30))
        try waitFor("a checkpoint") { latest(out) >= "step-00000010" }
        let victim = try XCTUnwrap(rankPIDs()[2])
        kill(victim, SIGKILL)
        let r = job.finish()
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("continuing on 2 rank(s)"), r.stderr)
        let log = try String(contentsOfFile: out + "/launch-attempt-1.log", encoding: .utf8)
        let resumedAt = try XCTUnwrap(log.range(of: "at step ").map { Int(log[$0.upperBound...].prefix { $0.isNumber })! })
        let final = try metrics(out)
        XCTAssertEqual(final.last?["world_size"] as? Int, 2)
        // Reference: the same checkpoint continued on the 3 ranks it was written by, without
        // resharding (another world size sums in another order, hence the tolerance).
        let ref = try Repo.temporaryDirectory("elastic-ref")
        let ckpt = out + "/checkpoints/step-" + String(format: "%08d", resumedAt)
        XCTAssertTrue(FileManager.default.fileExists(atPath: ckpt), "the checkpoint the restart used is kept")
        XCTAssertEqual(try mpirun(3, ["train", "--out", ref, "--resume", ckpt, "--max-steps", "30"]).status, 0)
        try assertSameTrajectory(out, ref, tolerance: 2e-3, "elastic 2 ranks vs 3 ranks unresharded", lastSteps: 30 - resumedAt)
    }

    /// 2 hosts × 1 rank over TCP between network namespaces: same losses as one host; a cut
    /// link aborts within --comm-timeout + 10 s; after the link is back, resuming completes.
    func testMultiHostOverNetworkNamespaces() throws {
        let harness = try namespaceHarness(hosts: 2)
        defer { _ = try? runProcess(harness, ["down"]) }
        let data = try Repo.dataDirectory()
        let local = try Repo.temporaryDirectory("mh-local"), multi = try Repo.temporaryDirectory("mh")
        XCTAssertEqual(try mpirun(2, tinyArgs(data: data, out: local)).status, 0)
        let r = try runProcess(harness, ["run", "-n", "2", "--"] + tinyArgs(data: data, out: multi))
        XCTAssertEqual(r.status, 0, r.stderr)
        try assertSameTrajectory(multi, local, tolerance: 1e-5, "2 hosts vs one host")

        let cut = try Repo.temporaryDirectory("mh-cut")
        let timeout = 5.0
        let job = try start(harness, ["run", "-n", "2", "--"] + tinyArgs(data: data, out: cut, steps: 100_000)
                            + ["--save-every", "10", "--comm-timeout", "\(Int(timeout))"])
        try waitFor("a checkpoint", timeout: 120) { latest(cut) >= "step-00000010" }
        let cutAt = Date()
        XCTAssertEqual(try runProcess(harness, ["cut", "2"]).status, 0)
        let c = job.finish()
        XCTAssertNotEqual(c.status, 0)
        XCTAssertLessThan(Date().timeIntervalSince(cutAt), timeout + 10, "abort within --comm-timeout + 10 s")
        XCTAssertTrue(c.stderr.contains("did not complete within"), c.stderr)
        XCTAssertEqual(try runProcess(harness, ["restore", "2"]).status, 0)
        let stoppedAt = Int(latest(cut).dropFirst(5))!
        let resumed = try runProcess(harness, ["run", "-n", "2", "--", "train", "--out", cut, "--resume", "latest",
                                               "--max-steps", "\(stoppedAt + 5)", "--comm-timeout", "30"])
        XCTAssertEqual(resumed.status, 0, resumed.stdout + resumed.stderr)
        XCTAssertEqual(latest(cut), "step-" + String(format: "%08d", stoppedAt + 5))
    }
}

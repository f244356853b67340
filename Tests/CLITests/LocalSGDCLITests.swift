import Foundation
import XCTest

/// `train --sync-every H` (local SGD / DiLoCo): the outer step reduces to plain training when
/// it should, the bytes on the wire are the formula's, and bad combinations are refused.
final class LocalSGDCLITests: XCTestCase {
    func args(_ data: String, _ out: String, steps: Int = 20) -> [String] {
        tinyArgs(data: data, out: out, steps: steps) + ["--warmup-steps", "0"]
    }

    /// One rank with outer lr 1 and no momentum: θ ← θ − (θ − θ₁) = θ₁, so the run is plain
    /// training up to the rounding of that subtraction.
    func testOneRankWithUnitOuterStepIsPlainTraining() throws {
        let data = try Repo.dataDirectory()
        let plain = try Repo.temporaryDirectory("plain"), local = try Repo.temporaryDirectory("localsgd")
        XCTAssertEqual(try tessera(args(data, plain)).status, 0)
        let r = try tessera(args(data, local) + ["--sync-every", "5", "--outer-lr", "1", "--outer-momentum", "0", "--sync-dtype", "fp32"])
        XCTAssertEqual(r.status, 0, r.stderr)
        try assertSameTrajectory(local, plain, tolerance: 1e-5, "local SGD (η = 1, μ = 0) vs plain training")
        // With DiLoCo's outer step it is a different optimizer.
        let diloco = try Repo.temporaryDirectory("diloco1")
        XCTAssertEqual(try tessera(args(data, diloco) + ["--sync-every", "5"]).status, 0)
        XCTAssertNotEqual(try losses(diloco).last, try losses(plain).last)
    }

    /// Two ranks: nothing but the step's loss all-reduce travels between synchronisations; a
    /// synchronisation sends the deltas (bf16 all-reduce, or int8 codes and scales), as the plan says.
    func testTwoRanksSendOnlyAtSynchronisations() throws {
        let data = try Repo.dataDirectory()
        let ddp = try Repo.temporaryDirectory("ddpbytes")
        XCTAssertEqual(try mpirun(2, args(data, ddp, steps: 10)).status, 0)
        let psi = try memoryFile(ddp)["psi"] as! Int
        let ddpBytes = try metrics(ddp).map { $0["sent_bytes"] as! Int }
        for (dtype, perSync) in [("bf16", 2 * psi / 2 * 2), ("int8", (psi + 255) / 256 * (256 + 4))] {
            let out = try Repo.temporaryDirectory("sync" + dtype)
            let r = try mpirun(2, args(data, out, steps: 10) + ["--sync-every", "5", "--sync-dtype", dtype])
            XCTAssertEqual(r.status, 0, r.stderr)
            let sent = try metrics(out).map { $0["sent_bytes"] as! Int }
            let small = sent[0]
            XCTAssertLessThan(small, 100, "\(dtype): a step without synchronisation sends only the loss all-reduce")
            for (i, s) in sent.enumerated() {
                if (i + 1) % 5 == 0 { XCTAssertEqual(s - small, perSync, "\(dtype) step \(i + 1): the deltas") } else { XCTAssertEqual(s, small) }
            }
            XCTAssertEqual((try memoryFile(out)["plan"] as! [String: Any])["sentBytesPerStep"] as? Int, perSync / 5, "\(dtype): the plan's bytes")
            let ratio = Double(ddpBytes.reduce(0, +)) / Double(sent.reduce(0, +))
            print("\(dtype), sync every 5: DDP sends \(String(format: "%.1f", ratio))× more bytes")
            XCTAssertGreaterThan(ratio, dtype == "bf16" ? 9 : 18)
            let m = try memoryFile(out)
            XCTAssertEqual(m["gradients"] as? Int, 4 * psi, "each rank holds its whole gradient")
        }
    }

    /// Checkpoints at synchronisations hold θ, the outer momentum, the mean inner moments and
    /// each rank's own: a resume on the same ranks continues bit for bit; one on fewer ranks
    /// starts every worker from the mean moments.
    func testResumeIsBitExactAndShrinks() throws {
        let data = try Repo.dataDirectory()
        let extra = ["--sync-every", "5", "--save-every", "5", "--sync-dtype", "int8"]
        let reference = try Repo.temporaryDirectory("syncref"), run = try Repo.temporaryDirectory("syncresume")
        XCTAssertEqual(try mpirun(2, args(data, reference) + extra).status, 0)
        XCTAssertEqual(try mpirun(2, args(data, run) + extra).status, 0)
        let saved = try checkpointVectors(run + "/checkpoints/step-00000010")
        XCTAssertEqual(Set(saved.keys), ["params", "adam.m", "adam.v", "outer.momentum", "local.adam.m@0", "local.adam.m@1",
                                         "local.adam.v@0", "local.adam.v@1"])
        XCTAssertNotEqual(saved["local.adam.m@0"], saved["local.adam.m@1"], "each worker's own moments")
        let mean = zip(saved["local.adam.m@0"]!, saved["local.adam.m@1"]!).map { ($0 + $1) / 2 }
        XCTAssertLessThan(zip(mean, saved["adam.m"]!).map { abs($0 - $1) }.max()!, 1e-9, "adam.m holds their mean")
        let r = try mpirun(2, ["train", "--out", run, "--resume", run + "/checkpoints/step-00000010", "--max-steps", "20"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(try losses(run) == losses(reference), "resumed losses bit for bit")
        XCTAssertTrue(try modelParameters(run) == modelParameters(reference), "final weights bit for bit")
        XCTAssertTrue(try checkpointVectors(run + "/checkpoints/latest") == checkpointVectors(reference + "/checkpoints/latest"))
        // Elastic: the same checkpoint on one rank.
        let shrunk = try Repo.temporaryDirectory("syncshrink")
        try FileManager.default.removeItem(atPath: shrunk)
        try FileManager.default.copyItem(atPath: run, toPath: shrunk)
        let s = try tessera(["train", "--out", shrunk, "--resume", shrunk + "/checkpoints/step-00000010", "--max-steps", "20"])
        XCTAssertEqual(s.status, 0, s.stderr)
        XCTAssertTrue(s.stdout.contains("mean inner AdamW moments"), s.stdout)
        XCTAssertEqual(try metrics(shrunk).count, 20)
    }

    /// `--shard-group`: each group is one worker training with DDP inside. One group of 2 ranks
    /// with outer lr 1 and no momentum is DDP; 2 groups of 2 send DDP's gradients within a
    /// group every step and the deltas across groups at synchronisations, as the plan says,
    /// and resume bit for bit.
    func testGroupsAsWorkers() throws {
        let data = try Repo.dataDirectory()
        let ddp = try Repo.temporaryDirectory("sync-group-ddp"), one = try Repo.temporaryDirectory("sync-group-one")
        XCTAssertEqual(try mpirun(2, args(data, ddp, steps: 10)).status, 0)
        let r = try mpirun(2, args(data, one, steps: 10) + ["--sync-every", "5", "--shard-group", "2", "--outer-lr", "1", "--outer-momentum", "0", "--sync-dtype", "fp32"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("local SGD: 1 worker(s) of 2 rank(s) (DDP within each)"), r.stdout)
        try assertSameTrajectory(one, ddp, tolerance: 1e-5, "one worker of 2 ranks (η = 1, μ = 0) vs DDP")

        let extra = ["--sync-every", "5", "--shard-group", "2", "--save-every", "5"]
        let reference = try Repo.temporaryDirectory("sync-groups-ref"), run = try Repo.temporaryDirectory("sync-groups")
        let g = try mpirun(4, args(data, reference, steps: 10) + extra)
        XCTAssertEqual(g.status, 0, g.stderr)
        XCTAssertTrue(g.stdout.contains("local SGD: 2 worker(s) of 2 rank(s) (DDP within each)"), g.stdout)
        let psi = try memoryFile(reference)["psi"] as! Int
        let sent = try metrics(reference).map { $0["sent_bytes"] as! Int }
        let scalars = sent[0] - 4 * psi          // DDP within the group of 2: 2·Ψ·(1/2) fp32 values
        XCTAssertLessThan(scalars, 200)
        for (i, s) in sent.enumerated() {
            // A synchronisation adds the bf16 all-reduce of the deltas across the 2 workers.
            XCTAssertEqual(s - scalars, 4 * psi + ((i + 1) % 5 == 0 ? 2 * psi : 0), "step \(i + 1)")
        }
        let plan = try memoryFile(reference)["plan"] as! [String: Any]
        XCTAssertEqual(plan["sentBytesPerStep"] as? Int, 4 * psi + 2 * psi / 5)
        XCTAssertEqual(try mpirun(4, args(data, run, steps: 10) + extra).status, 0)
        let resumed = try mpirun(4, ["train", "--out", run, "--resume", run + "/checkpoints/step-00000005", "--max-steps", "10"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(try losses(run) == losses(reference), "resumed losses bit for bit")
        XCTAssertTrue(try modelParameters(run) == modelParameters(reference), "final weights bit for bit")
    }

    func testBadCombinationsAreRefused() throws {
        let data = try Repo.dataDirectory()
        for (extra, needle) in [(["--sync-every", "0"], "--sync-every is 0"),
                                (["--sync-every", "5", "--zero", "3"], "use --zero 0"),
                                (["--sync-every", "5", "--save-every", "7"], "not a multiple of --sync-every 5"),
                                (["--sync-every", "5", "--eval-every", "7"], "not a multiple of --sync-every 5"),
                                (["--sync-every", "5", "--outer-momentum", "1"], "--outer-momentum")] {
            let out = try Repo.temporaryDirectory("syncbad")
            let r = try tessera(args(data, out) + extra)
            XCTAssertEqual(r.status, 2, "\(extra): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(needle), "\(extra): \(r.stderr)")
        }
    }
}

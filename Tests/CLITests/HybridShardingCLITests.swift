import Foundation
import XCTest

/// `train --zero 3 --shard-group G` (HSDP) under mpirun on 4 ranks: the same run as DDP,
/// the cross-group traffic of the plan, bit-exact resume, and checkpoints any world size,
/// stage and group size can load.
final class HybridShardingCLITests: XCTestCase {
    func args(_ data: String, _ out: String, steps: Int = 20) -> [String] {
        tinyArgs(data: data, out: out, steps: steps) + ["--warmup-steps", "0", "--check-replicas", "5"]
    }

    func testGroupsMatchDDPAndSendThePlannedBytesAcrossGroups() throws {
        let data = try Repo.dataDirectory()
        let ddp = try Repo.temporaryDirectory("hsdp-ddp")
        XCTAssertEqual(try mpirun(4, args(data, ddp)).status, 0)
        for stage in ["3", "2"] {
            let out = try Repo.temporaryDirectory("hsdp-z" + stage)
            let r = try mpirun(4, args(data, out) + ["--zero", stage, "--shard-group", "2"])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stdout.contains("hybrid sharding: ZeRO-\(stage) within 2 groups of 2 ranks"), r.stdout)
            try assertSameTrajectory(out, ddp, tolerance: 1e-5, "ZeRO-\(stage) in groups of 2 vs DDP on 4 ranks")
            let m = try memoryFile(out), psi = m["psi"] as! Int, half = (psi + 1) / 2
            XCTAssertEqual(m["optimizer"] as? Int, 8 * half, "AdamW sharded over the group of 2, not the world of 4")
            let plan = m["plan"] as! [String: Any]
            XCTAssertEqual(plan["shardGroupSize"] as? Int, 2)
            // Each rank all-reduces its fp32 gradient shard ⌈Ψ/2⌉ across R = 2 groups:
            // 2·⌈Ψ/2⌉·(R−1)/R elements of 4 bytes per step.
            XCTAssertEqual(plan["crossGroupBytesPerStep"] as? Int, 4 * 2 * half / 2)
        }
    }

    /// Saves at step 10 of an HSDP run; resumes it as it was (bit for bit), and on other
    /// world sizes, stages and groups (the same trajectory to rounding).
    func testResumeIsBitExactAndReshards() throws {
        let data = try Repo.dataDirectory()
        let hsdp = ["--zero", "3", "--shard-group", "2", "--save-every", "10"]
        let reference = try Repo.temporaryDirectory("hsdp-ref"), run = try Repo.temporaryDirectory("hsdp-run")
        XCTAssertEqual(try mpirun(4, args(data, reference) + hsdp).status, 0)
        XCTAssertEqual(try mpirun(4, args(data, run) + hsdp).status, 0)
        let step10 = run + "/checkpoints/step-00000010"
        // Each of the 4 ranks wrote a quarter of each vector: its half of its group's shard.
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: step10 + "/manifest.json"))) as! [String: Any]
        let starts = (manifest["files"] as! [[String: Any]]).map { (($0["frames"] as! [[String: Any]])[0]["start"] as! Int) }
        let psi = manifest["parameterCount"] as! Int, half = (psi + 1) / 2, quarter = (half + 1) / 2
        XCTAssertEqual(starts, [0, half, quarter, half + quarter], "rank r (group r/2, shard r%2) writes part r/2 of shard r%2")
        for (name, ranks, extra) in [("same", 4, hsdp), ("zero3-2ranks", 2, ["--zero", "3", "--shard-group", "world"]),
                                     ("ddp-1rank", 1, ["--zero", "0", "--shard-group", "world"]),
                                     ("zero1-groups-of-1", 4, ["--zero", "1", "--shard-group", "1"])] {
            let dir = try Repo.temporaryDirectory("hsdp-" + name)
            try FileManager.default.removeItem(atPath: dir)
            try FileManager.default.copyItem(atPath: run, toPath: dir)
            let r = try mpirun(ranks, ["train", "--out", dir, "--resume", dir + "/checkpoints/step-00000010", "--max-steps", "20"] + extra)
            XCTAssertEqual(r.status, 0, "\(name): \(r.stderr)")
            if name == "same" {
                XCTAssertTrue(try losses(dir) == losses(reference), "resumed losses bit for bit")
                XCTAssertTrue(try modelParameters(dir) == modelParameters(reference), "final weights bit for bit")
                XCTAssertTrue(try checkpointVectors(dir + "/checkpoints/step-00000020") == checkpointVectors(reference + "/checkpoints/step-00000020"),
                              "final checkpoint bit for bit")
            } else {
                try assertSameTrajectory(dir, reference, tolerance: 1e-5, "resumed as \(name)", lastSteps: 10)
            }
        }
        // And the other way: a plain ZeRO-1 checkpoint resumed in groups.
        let z1 = try Repo.temporaryDirectory("hsdp-from-z1")
        XCTAssertEqual(try mpirun(4, args(data, z1) + ["--zero", "1", "--save-every", "10"]).status, 0)
        let r = try mpirun(4, ["train", "--out", z1, "--resume", z1 + "/checkpoints/step-00000010", "--max-steps", "20",
                               "--zero", "3", "--shard-group", "2"])
        XCTAssertEqual(r.status, 0, r.stderr)
        try assertSameTrajectory(z1, reference, tolerance: 1e-5, "ZeRO-1 checkpoint resumed as HSDP", lastSteps: 10)
    }

    /// 2 hosts × 2 ranks (network namespaces, TCP between hosts): with `--shard-group node`
    /// each host is one group, and the only bytes on a host's link are its two ranks'
    /// all-reduces of their fp32 gradient shards: 2 ranks × 4 B × 2⌈Ψ/2⌉(R−1)/R = 8⌈Ψ/2⌉ per
    /// step (plus TCP/IP headers and the step's scalar all-reduces). Plain ZeRO-3 over the
    /// same 4 ranks sends its parameter gathers across too.
    func testOnlyGradientShardsCrossHostLinks() throws {
        let harness = try namespaceHarness(hosts: 2, slots: 2)
        defer { _ = try? runProcess(harness, ["down"]) }
        let data = try Repo.dataDirectory()
        func sent(_ host: Int) throws -> Int { Int(try runProcess(harness, ["txbytes", "\(host)"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines))! }
        /// Bytes each host sent per step, from runs of 10 and 60 steps (start-up and the end's
        /// saves cancel, up to their run-to-run jitter of a few hundred KB: spread over 50
        /// steps it stays below the TCP/IP headers); the 60-step run's directory.
        func perStep(_ extra: [String]) throws -> (bytes: [Double], run: String, stdout: String) {
            var delta: [[Int]] = [], run = "", stdout = ""
            for steps in [10, 60] {
                run = try Repo.temporaryDirectory("hsdp-hosts")
                let before = [try sent(1), try sent(2)]
                let r = try runProcess(harness, ["run", "-n", "4", "--"] + args(data, run, steps: steps) + extra)
                XCTAssertEqual(r.status, 0, r.stderr)
                delta.append([try sent(1) - before[0], try sent(2) - before[1]])
                stdout = r.stdout
            }
            return ((0..<2).map { Double(delta[1][$0] - delta[0][$0]) / 50 }, run, stdout)
        }
        let hybrid = try perStep(["--zero", "3", "--shard-group", "node"])
        XCTAssertTrue(hybrid.stdout.contains("within 2 groups of 2 ranks, gradient shards all-reduced across groups (each group within one node)"),
                      hybrid.stdout)
        let psi = try memoryFile(hybrid.run)["psi"] as! Int
        let formula = Double(8 * ((psi + 1) / 2))
        for (h, bytes) in hybrid.bytes.enumerated() {
            print(String(format: "host %d sent %.0f B/step; formula 8⌈Ψ/2⌉ = %.0f (Ψ = %d): %+.2f%%", h + 1, bytes, formula, psi, 100 * (bytes / formula - 1)))
            // The payload is a floor, but the estimate scatters around payload + headers: eleven
            // 60-step runs on one machine read +0.17% to +0.97% above the formula, and two CI runs
            // read −0.04% and −0.01%. 1% below still fails if any shard did not cross.
            XCTAssertGreaterThan(bytes, formula * 0.99, "host \(h + 1): the gradient shards, to the estimate's scatter")
            XCTAssertLessThan(bytes, formula * 1.02, "host \(h + 1): nothing else of size crosses (headers and scalars < 2%)")
        }
        let plain = try perStep(["--zero", "3"])
        for (h, bytes) in plain.bytes.enumerated() {
            print(String(format: "plain ZeRO-3: host %d sent %.0f B/step (%.1f× hybrid)", h + 1, bytes, bytes / hybrid.bytes[h]))
        }
        XCTAssertGreaterThan(plain.bytes.reduce(0, +), 2 * hybrid.bytes.reduce(0, +), "plain ZeRO-3 gathers parameters across hosts")
        try assertSameTrajectory(hybrid.run, plain.run, tolerance: 1e-5, "hybrid vs plain ZeRO-3 across 2 hosts")
    }

    /// `bench` takes train's parallelism flags: hybrid sharding reports its cross-group bytes
    /// (exactly the formula's), PowerSGD its rank; bad combinations are refused.
    func testBenchTakesTheParallelismFlags() throws {
        let json = try Repo.temporaryDirectory("hsdp-bench") + "/bench.jsonl"
        let r = try mpirun(4, ["bench", "--config", "tiny", "--zero", "3", "--shard-group", "2", "--warmup", "1", "--steps", "2",
                               "--threads", "1", "--bucket-mb", "1", "--json", json])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("parallelism: ZeRO-3 shard groups: 2"), r.stdout)
        let row = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json))) as! [String: Any]
        let psi = row["params"] as! Int
        XCTAssertEqual(row["shardGroup"] as? String, "2")
        XCTAssertEqual(row["crossGroupBytesPerStep"] as? Double, Double(4 * ((psi + 1) / 2)), "4 B × 2⌈Ψ/2⌉(R−1)/R per rank and step")
        for (extra, needle) in [(["--shard-group", "2"], "--shard-group"), (["--powersgd-rank", "4", "--zero", "3"], "--powersgd-rank"),
                                (["--outer-momentum", "1"], "--outer-momentum")] {
            let bad = try tessera(["bench", "--config", "tiny"] + extra)
            XCTAssertNotEqual(bad.status, 0, "\(extra)")
            XCTAssertTrue(bad.stderr.contains(needle), "\(extra): \(bad.stderr)")
        }
    }

    func testBadGroupsAreRefused() throws {
        let data = try Repo.dataDirectory()
        let out = try Repo.temporaryDirectory("hsdp-bad")
        let cases: [(Int, [String], String)] = [
            (4, ["--zero", "3", "--shard-group", "3"], "--shard-group is 3, which does not divide the 4 ranks"),
            (1, ["--shard-group", "2"], "--shard-group is 2, which does not divide the 1 ranks"),
            (1, ["--zero", "0", "--shard-group", "1"], "with --zero 0 (DDP shards nothing)"),
            (1, ["--zero", "3", "--shard-group", "1", "--sync-every", "5"], "use --zero 0"),
        ]
        for (ranks, extra, needle) in cases {
            let r = ranks == 1 ? try tessera(args(data, out) + extra) : try mpirun(ranks, args(data, out) + extra)
            XCTAssertNotEqual(r.status, 0, "\(extra)")
            XCTAssertTrue((r.stderr + r.stdout).contains(needle), "\(extra): \(r.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/metrics.jsonl"), "\(extra): nothing ran")
        }
        let parse = try tessera(args(data, out) + ["--zero", "3", "--shard-group", "rack"])
        XCTAssertNotEqual(parse.status, 0)
        XCTAssertTrue(parse.stderr.contains("--shard-group"), parse.stderr)
    }
}

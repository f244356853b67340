import Foundation
import XCTest

final class ScalingCLITests: XCTestCase {
    func testBadInputsExitNonZeroWithAClearLine() throws {
        let cases: [([String], Int32, String)] = [
            (["scaling", "optimal", "--flops", "0"], 2, "--flops"),
            (["scaling", "optimal", "--flops=-5e20"], 2, "positive"),
            (["scaling", "optimal", "--flops", "nan"], 2, "finite"),
            (["scaling", "optimal", "--flops", "inf"], 2, "finite"),
            (["scaling", "optimal", "--flops", "lots"], 64, "lots"),
            (["scaling", "optimal", "--flops", "3"], 2, "too small"),
            (["scaling", "optimal", "--flops", "1e21", "--fit", "moore"], 64, "moore"),
            (["scaling", "memory", "--params", "1e9", "--zero", "5"], 64, "--zero"),
            (["scaling", "compute", "--params", "1e9", "--tokens", "0"], 2, "--tokens"),
            (["scaling", "budget", "--metrics", "/nonexistent/metrics.jsonl", "--hours", "1", "--ranks", "2"], 2, "not found"),
        ]
        for (args, status, mention) in cases {
            let r = try tessera(args)
            XCTAssertEqual(r.status, status, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(mention), "\(args): expected '\(mention)' in \(r.stderr)")
        }
    }

    func testOptimalJSONAndHours() throws {
        let r = try tessera(["scaling", "optimal", "--hours", "1000", "--peak-flops", "312e12", "--mfu", "0.4",
                             "--fit", "chinchilla", "--fit", "epoch", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let arr = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [[String: Any]]
        XCTAssertEqual(arr.count, 2)
        XCTAssertEqual(arr[0]["flops"] as! Double, 1000 * 3600 * 312e12 * 0.4, accuracy: 1e6)
    }

    /// `scaling memory --model RUN/config.json --micro-batch B` prints the trainer's own plan:
    /// the same numbers a run of that configuration recorded in memory.json.
    func testMemoryUsesTheTrainersPlan() throws {
        let data = try Repo.dataDirectory(), out = try Repo.temporaryDirectory("plan")
        let r = try mpirun(2, tinyArgs(data: data, out: out, steps: 1) + ["--zero", "3", "--recompute", "selective"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let recorded = try XCTUnwrap(try memoryFile(out)["plan"] as? [String: Any])
        let vocab = try shardTokens(data, "train").vocab
        let c = try tessera(["scaling", "memory", "--model", out + "/config.json", "--vocab", "\(vocab)", "--world", "2",
                             "--micro-batch", "6", "--zero", "3", "--recompute", "selective", "--json"])
        XCTAssertEqual(c.status, 0, c.stderr)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(c.stdout.utf8)) as? [String: Any])
        let plan = try XCTUnwrap(json["plan_zero3"] as? [String: Any])
        for key in ["parameters", "gradients", "optimizer", "working", "activations", "collectives", "save", "runtime"] {
            XCTAssertEqual(plan[key] as? Int, recorded[key] as? Int, key)
        }
        XCTAssertEqual(plan["recompute"] as? String, "selective")
    }

    func testMemoryTableForAllStages() throws {
        let r = try tessera(["scaling", "memory", "--params", "7.5e9", "--world", "64", "--precision", "bf16"])
        XCTAssertEqual(r.status, 0)
        for s in ["DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3", "120.00 GB", "31.41 GB", "16.64 GB", "1.88 GB"] {
            XCTAssertTrue(r.stdout.contains(s), s)
        }
    }
}

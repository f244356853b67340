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
        XCTAssertTrue(r.stdout.contains("local SGD writes no checkpoint"), r.stdout)
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

    func testBadCombinationsAreRefused() throws {
        let data = try Repo.dataDirectory()
        for (extra, needle) in [(["--sync-every", "0"], "--sync-every is 0"),
                                (["--sync-every", "5", "--zero", "3"], "use --zero 0"),
                                (["--sync-every", "5", "--save-every", "10"], "not built yet"),
                                (["--sync-every", "5", "--eval-every", "7"], "not a multiple of --sync-every 5"),
                                (["--sync-every", "5", "--outer-momentum", "1"], "--outer-momentum")] {
            let out = try Repo.temporaryDirectory("syncbad")
            let r = try tessera(args(data, out) + extra)
            XCTAssertEqual(r.status, 2, "\(extra): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(needle), "\(extra): \(r.stderr)")
        }
    }
}

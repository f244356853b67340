import Foundation
import XCTest

/// Dropout 0.2 through the binary: masks are keyed by each sample's place in the global
/// batch, so one process, DDP and ZeRO-1/2/3 on 2 ranks train the same model (tolerances as
/// in ZeROTests: only sums run in another order), and dropout really changes training.
final class DropoutCLITests: XCTestCase {
    func args(_ data: String, _ out: String, zero: Int, dropout: String = "0.2") -> [String] {
        tinyArgs(data: data, out: out, steps: 12) + ["--batch-size", "10", "--zero", "\(zero)", "--warmup-steps", "0",
                                                    "--dropout", dropout, "--eval-every", "6"]
    }

    func testStrategiesMatchOneProcessWithDropout() throws {
        let data = try Repo.dataDirectory()
        let single = try Repo.temporaryDirectory("drop1"), none = try Repo.temporaryDirectory("drop0")
        XCTAssertEqual(try tessera(args(data, single, zero: 0)).status, 0)
        XCTAssertEqual(try tessera(args(data, none, zero: 0, dropout: "0")).status, 0)
        let with = try losses(single), without = try losses(none)
        XCTAssertEqual(with.first!, without.first!, accuracy: 0.05, "the same start")
        XCTAssertNotEqual(with, without, "dropout changes the trajectory")
        // Validation runs without dropout: at step 6 the dropout run's val loss is its model's, not a masked one.
        XCTAssertNotNil(try metrics(single)[5]["val_loss"])
        let ddp = try Repo.temporaryDirectory("dropddp")
        let r = try mpirun(2, args(data, ddp, zero: 0))
        XCTAssertEqual(r.status, 0, r.stderr)
        try assertSameTrajectory(ddp, single, tolerance: 2e-3, "DDP np 2 vs one process, dropout 0.2")
        for stage in 1...3 {
            let out = try Repo.temporaryDirectory("dropzero\(stage)")
            let z = try mpirun(2, args(data, out, zero: stage))
            XCTAssertEqual(z.status, 0, z.stderr)
            try assertSameTrajectory(out, ddp, tolerance: 1e-4, "ZeRO-\(stage) vs DDP, dropout 0.2")
        }
    }

    func testBadDropoutIsRefused() throws {
        let data = try Repo.dataDirectory(), out = try Repo.temporaryDirectory("dropbad")
        let high = try tessera(tinyArgs(data: data, out: out, steps: 1) + ["--dropout", "1"])
        XCTAssertEqual(high.status, 2)
        XCTAssertTrue(high.stderr.contains("--dropout") && high.stderr.contains("[0, 1)"), high.stderr)
        let unfused = try tessera(tinyArgs(data: data, out: out, steps: 1) + ["--dropout", "0.1", "--attention", "unfused"])
        XCTAssertEqual(unfused.status, 2)
        XCTAssertTrue(unfused.stderr.contains("fused kernel"), unfused.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/config.json"), "nothing written")
    }
}

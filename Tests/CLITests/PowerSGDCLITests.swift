import Foundation
import XCTest

/// `train --powersgd-rank R` on 2 ranks: exact DDP before `--powersgd-start`, the planned
/// bytes after it, its state in checkpoints (bit-exact resume), bad combinations refused.
final class PowerSGDCLITests: XCTestCase {
    func args(_ data: String, _ out: String) -> [String] {
        tinyArgs(data: data, out: out) + ["--warmup-steps", "0", "--save-every", "10"]
    }
    let psgd = ["--powersgd-rank", "4", "--powersgd-start", "5"]

    func testExactThenCompressedWithThePlannedBytes() throws {
        let data = try Repo.dataDirectory()
        let ddp = try Repo.temporaryDirectory("psgd-ddp"), run = try Repo.temporaryDirectory("psgd")
        XCTAssertEqual(try mpirun(2, args(data, ddp)).status, 0)
        let r = try mpirun(2, args(data, run) + psgd)
        XCTAssertEqual(r.status, 0, r.stderr)
        let a = try losses(run), b = try losses(ddp)
        XCTAssertEqual(Array(a[..<6]), Array(b[..<6]), "5 exact steps: DDP bit for bit (step 6's loss precedes its compressed update)")
        XCTAssertNotEqual(Array(a[6...]), Array(b[6...]), "then compressed")
        XCTAssertLessThan(abs(a.last! - b.last!) / b.last!, 0.05, "and still training like DDP")
        let psi = try memoryFile(run)["psi"] as! Int
        let sent = try metrics(run).map { $0["sent_bytes"] as! Int }
        // The step's scalars (loss, checks) besides the gradients: what step 1 sent beyond 4Ψ.
        let scalars = sent[0] - 4 * psi
        XCTAssertLessThan(scalars, 100)
        let planned = (try memoryFile(run)["plan"] as! [String: Any])["sentBytesPerStep"] as! Int
        for (i, s) in sent.enumerated() {
            XCTAssertEqual(s - scalars, i < 5 ? 4 * psi : planned, "step \(i + 1)'s gradient bytes")
        }
        print(String(format: "PowerSGD rank 4: %d bytes per step against DDP's %d (%.1f× fewer)", planned, 4 * psi, Double(4 * psi) / Double(planned)))
        XCTAssertGreaterThan(4 * psi, 10 * planned, "rank 4 on 128-wide layers sends over 10× less")
        let m = try memoryFile(run)
        XCTAssertNotNil((m["working"] as! [String: Int])["PowerSGD factors, error feedback, uncompressed staging"])
    }

    /// Checkpoints hold Q (sharded) and each rank's error feedback: resuming on 2 ranks
    /// continues bit for bit; on 1 rank the run goes on uncompressed.
    func testResumeIsBitExact() throws {
        let data = try Repo.dataDirectory()
        let reference = try Repo.temporaryDirectory("psgd-ref"), run = try Repo.temporaryDirectory("psgd-run")
        XCTAssertEqual(try mpirun(2, args(data, reference) + psgd).status, 0)
        XCTAssertEqual(try mpirun(2, args(data, run) + psgd).status, 0)
        let saved = try checkpointVectors(run + "/checkpoints/step-00000010")
        XCTAssertEqual(Set(saved.keys), ["params", "adam.m", "adam.v", "powersgd.q", "powersgd.error@0", "powersgd.error@1"])
        XCTAssertNotEqual(saved["powersgd.error@0"], saved["powersgd.error@1"], "each rank's own error feedback")
        XCTAssertGreaterThan(saved["powersgd.q"]!.filter { $0 != 0 }.count, 1000, "Q is saved")
        let r = try mpirun(2, ["train", "--out", run, "--resume", run + "/checkpoints/step-00000010", "--max-steps", "20"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(try losses(run) == losses(reference), "resumed losses bit for bit")
        XCTAssertTrue(try modelParameters(run) == modelParameters(reference), "final weights bit for bit")
        XCTAssertTrue(try checkpointVectors(run + "/checkpoints/step-00000020") == checkpointVectors(reference + "/checkpoints/step-00000020"))
        let one = try tessera(["train", "--out", run, "--resume", run + "/checkpoints/step-00000010", "--max-steps", "20"])
        XCTAssertEqual(one.status, 0, one.stderr)
    }

    func testBadCombinationsAreRefused() throws {
        let data = try Repo.dataDirectory()
        for (extra, needle) in [(["--powersgd-rank=-1"], "--powersgd-rank is -1"),
                                (["--powersgd-rank", "4", "--zero", "2"], "use --zero 0 without --sync-every"),
                                (["--powersgd-rank", "4", "--sync-every", "5"], "use --zero 0 without --sync-every"),
                                (["--powersgd-rank", "4", "--powersgd-start=-2"], "--powersgd-start is -2")] {
            let out = try Repo.temporaryDirectory("psgd-bad")
            let r = try tessera(args(data, out) + extra)
            XCTAssertEqual(r.status, 2, "\(extra): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(needle), "\(extra): \(r.stderr)")
        }
    }
}

import Foundation
import XCTest

/// `--recompute` through the binary on 2 ranks: the same run bit for bit, with less memory.
final class RecomputeCLITests: XCTestCase {
    func testRecomputeModesReproduceTheRunBitForBit() throws {
        let data = try Repo.dataDirectory()
        for extra in [["--zero", "0"], ["--zero", "3"], ["--zero", "0", "--precision", "bf16"], ["--zero", "3", "--precision", "bf16"]] {
            var reference: (losses: [Double], params: [Float], saved: Int)?
            for mode in ["none", "selective", "full"] {
                let out = try Repo.temporaryDirectory("recompute")
                let r = try mpirun(2, tinyArgs(data: data, out: out, steps: 20) + extra + ["--recompute", mode])
                XCTAssertEqual(r.status, 0, r.stderr)
                let saved = try XCTUnwrap(try memoryFile(out)["activations"] as? Int)
                let run = (try losses(out), try modelParameters(out), saved)
                guard let ref = reference else { reference = run; continue }
                XCTAssertEqual(run.0, ref.losses, "\(extra) \(mode): losses")
                XCTAssertEqual(run.1.map(\.bitPattern), ref.params.map(\.bitPattern), "\(extra) \(mode): parameters")
                XCTAssertLessThan(run.2, ref.saved, "\(extra) \(mode) holds fewer activation bytes")
            }
        }
    }
}

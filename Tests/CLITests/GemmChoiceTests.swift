import Foundation
import XCTest

/// The GEMM library is chosen by timing both on the run's shapes: the faster one is taken,
/// cached, recorded in the run's config and kept by a resume; TESSERA_GEMM and --gemm decide
/// instead when given; both libraries train the same model.
final class GemmChoiceTests: XCTestCase {
    /// The start-up line naming the backend.
    func choiceLine(_ r: RunResult) -> String {
        r.stdout.split(separator: "\n").first { $0.contains("GEMM backend") }.map(String.init) ?? ""
    }

    func config(_ run: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: run + "/config.json"))) as! [String: Any]
    }

    func testMeasuredCachedRecordedAndResumed() throws {
        let data = try Repo.dataDirectory(), cache = try Repo.temporaryDirectory("gemmcache")
        let env = ["XDG_CACHE_HOME": cache]
        let first = try Repo.temporaryDirectory("gemm1"), second = try Repo.temporaryDirectory("gemm2")
        let r1 = try runProcess(Repo.binary, tinyArgs(data: data, out: first, steps: 4) + ["--save-every", "2"], environment: env)
        XCTAssertEqual(r1.status, 0, r1.stderr)
        let line = choiceLine(r1)
        XCTAssertTrue(line.contains("(measured on this run's shapes") && !line.contains("cached in"), line)
        // The faster of the two printed times is the one taken (OpenBLAS if faster by 10%).
        let ms = try NSRegularExpression(pattern: #"oneDNN ([0-9.]+) ms, OpenBLAS ([0-9.]+) ms"#)
        let m = ms.firstMatch(in: line, range: NSRange(line.startIndex..., in: line))!
        let onednn = Double(line[Range(m.range(at: 1), in: line)!])!, openblas = Double(line[Range(m.range(at: 2), in: line)!])!
        let faster = openblas < 0.9 * onednn ? "openblas" : "onednn"
        XCTAssertTrue(line.contains("GEMM backend \(faster) ("), line)
        XCTAssertEqual(try config(first)["gemm"] as? String, faster, "recorded in the run's config")
        XCTAssertTrue(FileManager.default.fileExists(atPath: cache + "/tessera/gemm.json"))
        // The same shapes again: the cached answer, on 2 ranks too (they agree: the run trains).
        let r2 = try runProcess(Repo.binary, tinyArgs(data: data, out: second, steps: 2), environment: env)
        XCTAssertTrue(choiceLine(r2).contains("GEMM backend \(faster) (measured on this run's shapes")
                      && choiceLine(r2).contains("; cached in \(cache)/tessera/gemm.json)"), choiceLine(r2))
        let two = try Repo.temporaryDirectory("gemm3")
        let r3 = try mpirun(2, tinyArgs(data: data, out: two, steps: 2) + ["--batch-size", "10"])
        XCTAssertEqual(r3.status, 0, r3.stderr)
        XCTAssertTrue(choiceLine(r3).contains("GEMM backend"), r3.stdout)
        // A resume computes with the recorded library, whatever a new measurement would say.
        let other = faster == "onednn" ? "openblas" : "onednn"
        let forced = try Repo.temporaryDirectory("gemm4")
        XCTAssertEqual(try tessera(tinyArgs(data: data, out: forced, steps: 4) + ["--gemm", other, "--save-every", "2"]).status, 0)
        let resumed = try runProcess(Repo.binary, ["train", "--out", forced, "--resume", forced + "/checkpoints/step-00000002"], environment: env)
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(choiceLine(resumed).contains("GEMM backend \(other) (--gemm, or the resumed run's choice)"), choiceLine(resumed))
        // TESSERA_GEMM overrides everything.
        let envRun = try Repo.temporaryDirectory("gemm5")
        let r5 = try runProcess(Repo.binary, tinyArgs(data: data, out: envRun, steps: 1), environment: ["TESSERA_GEMM": "openblas"])
        XCTAssertTrue(choiceLine(r5).contains("GEMM backend openblas (TESSERA_GEMM)"), choiceLine(r5))
    }

    /// oneDNN and OpenBLAS compute the same products in other orders: the same trajectory
    /// within rounding.
    func testBothLibrariesTrainTheSameModel() throws {
        let data = try Repo.dataDirectory()
        let a = try Repo.temporaryDirectory("gemmone"), b = try Repo.temporaryDirectory("gemmblas")
        XCTAssertEqual(try tessera(tinyArgs(data: data, out: a, steps: 10) + ["--gemm", "onednn"]).status, 0)
        XCTAssertEqual(try tessera(tinyArgs(data: data, out: b, steps: 10) + ["--gemm", "openblas"]).status, 0)
        try assertSameTrajectory(b, a, tolerance: 2e-3, "OpenBLAS vs oneDNN")
    }
}

import Foundation
import XCTest

/// `--keep-best`: `RUN/best/model.bin` holds the weights of the evaluation with the lowest
/// validation loss, across a resume, and starting over removes it.
final class KeepBestCLITests: XCTestCase {
    struct Best: Decodable { var step: Int; var val_loss: Double }

    func best(_ out: String) throws -> Best {
        try JSONDecoder().decode(Best.self, from: Data(contentsOf: URL(fileURLWithPath: out + "/best/best.json")))
    }

    /// (step, val_loss) of every evaluation in metrics.jsonl.
    func evaluations(_ out: String) throws -> [(step: Int, loss: Double)] {
        try metrics(out).compactMap { m in (m["val_loss"] as? Double).map { (m["step"] as! Int, $0) } }
    }

    /// The whole validation split's loss of a model.bin or checkpoint (`eval --json`).
    func splitLoss(_ source: [String], data: String) throws -> Double {
        let r = try tessera(["eval"] + source + ["--data", data, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        return try XCTUnwrap(json?["loss"] as? Double)
    }

    func testBestEvaluationsWeightsAcrossAResume() throws {
        let data = try Repo.dataDirectory()
        let out = try Repo.temporaryDirectory("best")
        let args = ["train", "--data", data, "--out", out, "--n-layer", "2", "--n-head", "2", "--n-embd", "64", "--block-size", "32",
                    "--batch-size", "8", "--eval-every", "3", "--eval-steps", "4", "--save-every", "3", "--keep-best",
                    "--lr", "2e-2", "--warmup-steps", "0", "--lr-schedule", "constant", "--log-every", "1000"]
        let a = try tessera(args + ["--max-steps", "30"])
        XCTAssertEqual(a.status, 0, a.stderr)
        var evals = try evaluations(out)
        XCTAssertEqual(evals.count, 10)
        var lowest = evals.min { $0.loss < $1.loss }!
        XCTAssertEqual(try best(out).step, lowest.step)
        XCTAssertEqual(try best(out).val_loss, lowest.loss, accuracy: 1e-12)
        let improvements = a.stdout.components(separatedBy: "best: step").count - 1
        XCTAssertLessThan(improvements, 10, "an evaluation that was not better left best/ alone")
        XCTAssertGreaterThan(improvements, 1)
        // The weights are that step's: the same loss over the whole split as its checkpoint (to
        // the last digits, which the order of the split's sums moves; a neighbouring step's
        // weights differ by about 1e-3).
        let checkpoint = out + "/checkpoints/step-" + String(format: "%08d", lowest.step)
        XCTAssertEqual(try splitLoss(["--model", out + "/best/model.bin"], data: data), try splitLoss(["--checkpoint", checkpoint], data: data), accuracy: 1e-12)

        // A resume keeps the record to beat; the best of all 20 evaluations wins. A learning
        // rate far too high from here makes every later evaluation worse.
        let before = try Data(contentsOf: URL(fileURLWithPath: out + "/best/model.bin"))
        let b = try tessera(["train", "--resume", "latest", "--out", out, "--max-steps", "60", "--lr", "0.3"])
        XCTAssertEqual(b.status, 0, b.stderr)
        evals = try evaluations(out)
        XCTAssertEqual(evals.count, 20)
        lowest = evals.min { $0.loss < $1.loss }!
        XCTAssertEqual(try best(out).step, lowest.step)
        XCTAssertLessThanOrEqual(lowest.step, 30, "\(evals)")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: out + "/best/model.bin")), before, "not replaced by a worse one")
        XCTAssertFalse(b.stdout.contains("best: step"), b.stdout)

        // Starting over removes it with the rest of the run.
        let c = try tessera(tinyArgs(data: data, out: out, steps: 2) + ["--overwrite"])
        XCTAssertEqual(c.status, 0, c.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/best"))
    }

    /// On 2 ranks under ZeRO-3 the weights are gathered like model.bin's.
    func testBestUnderZeRO3() throws {
        let data = try Repo.dataDirectory()
        let out = try Repo.temporaryDirectory("best3")
        let r = try mpirun(2, tinyArgs(data: data, out: out, steps: 6) + ["--zero", "3", "--eval-every", "3", "--save-every", "3", "--keep-best"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let record = try best(out)
        let evals = try evaluations(out)
        XCTAssertEqual(record.val_loss, evals.min { $0.loss < $1.loss }!.loss, accuracy: 1e-12)
        let checkpoint = out + "/checkpoints/step-" + String(format: "%08d", record.step)
        XCTAssertEqual(try splitLoss(["--model", out + "/best/model.bin"], data: data), try splitLoss(["--checkpoint", checkpoint], data: data), accuracy: 1e-12)
    }
}

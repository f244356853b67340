import Foundation
import XCTest

/// `--data 0.75:A,0.25:B`: a run over a weighted mixture of prepared datasets says how it
/// shares samples, resumes bit for bit (the blend is a function of the sample's number),
/// samples sequentially too, and refuses datasets that cannot mix.
final class MixtureCLITests: XCTestCase {
    /// Two byte-level datasets, from the two halves of the test corpus.
    func halves() throws -> (String, String) {
        let text = try String(contentsOf: try Repo.corpus, encoding: .utf8)
        let cut = text.index(text.startIndex, offsetBy: text.count / 2)
        let dir = try Repo.temporaryDirectory("halves")
        var out: [String] = []
        for (name, part) in [("a", text[..<cut]), ("b", text[cut...])] {
            let file = dir + "/\(name).txt"
            try String(part).write(toFile: file, atomically: true, encoding: .utf8)
            let r = try tessera(["prepare", "--input", file, "--tokenizer", "byte", "--out", dir + "/" + name])
            XCTAssertEqual(r.status, 0, r.stderr)
            out.append(dir + "/" + name)
        }
        return (out[0], out[1])
    }

    func testMixtureTrainsResumesAndRefusesWhatCannotMix() throws {
        let (a, b) = try halves()
        let mix = "0.75:\(a),0.25:\(b)"
        let straight = try Repo.temporaryDirectory("mix"), split = try Repo.temporaryDirectory("mix2")
        let r = try tessera(tinyArgs(data: mix, out: straight, steps: 12) + ["--eval-every", "6"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("tessera: data: a mixture of 2 datasets, samples shared 75.0% \(a), 25.0% \(b)"), r.stdout)
        XCTAssertEqual(try metrics(straight).count, 12)
        let first = try tessera(tinyArgs(data: mix, out: split, steps: 6) + ["--eval-every", "6"])
        XCTAssertEqual(first.status, 0, first.stderr)
        let second = try tessera(["train", "--resume", "latest", "--out", split, "--max-steps", "12"])
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: split + "/model.bin")),
                       try Data(contentsOf: URL(fileURLWithPath: straight + "/model.bin")), "resumed bit for bit")
        // Not the same run as either dataset alone.
        let alone = try Repo.temporaryDirectory("alone")
        XCTAssertEqual(try tessera(tinyArgs(data: a, out: alone, steps: 12) + ["--eval-every", "6"]).status, 0)
        XCTAssertNotEqual(try metrics(alone).map { $0["loss"] as? Double }, try metrics(straight).map { $0["loss"] as? Double })

        let sequential = try Repo.temporaryDirectory("mixseq")
        let s = try tessera(tinyArgs(data: mix, out: sequential, steps: 4) + ["--sampling", "sequential"])
        XCTAssertEqual(s.status, 0, s.stderr)
        XCTAssertNotNil(try metrics(sequential).last?["epoch"] as? Double)

        // A char-level dataset has another vocabulary; weights must be positive and present.
        let chars = try Repo.dataDirectory()
        for (data, expected) in [("0.5:\(a),0.5:\(chars)", "was tokenized differently"), ("0:\(a),1:\(b)", "WEIGHT:DATA"),
                                 ("\(a),\(b)", "WEIGHT:DATA"), ("1:\(a),1:/nonexistent", "/nonexistent")] {
            let out = try Repo.temporaryDirectory("bad")
            let e = try tessera(tinyArgs(data: data, out: out, steps: 2))
            XCTAssertEqual(e.status, 2, data)
            XCTAssertTrue(e.stderr.contains(expected), "\(data): \(e.stderr)")
        }
    }
}

import Corpus
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
        let lines = try metrics(straight)
        XCTAssertEqual(lines.count, 12)
        // Each evaluation's datasets: the blended loss is their mean weighted by the rows each
        // gave the validation batches (every row counts blockSize targets).
        let blend = try XCTUnwrap(Blend(weights: [0.75, 0.25]))
        var rows = [0, 0]
        for n in 0..<(2 * 12) { rows[blend.source(of: n).source] += 1 }   // --eval-steps 2 of batch 12
        for m in lines where m["val_loss"] != nil {
            let parts = try XCTUnwrap(m["val_loss_by_data"] as? [String: Double], "\(m)")
            XCTAssertEqual(Set(parts.keys), [a, b])
            let mean = (parts[a]! * Double(rows[0]) + parts[b]! * Double(rows[1])) / Double(rows[0] + rows[1])
            XCTAssertEqual(m["val_loss"] as! Double, mean, accuracy: 1e-9)
            XCTAssertNotEqual(parts[a], parts[b])
        }
        XCTAssertTrue(r.stdout.contains(" | val ") && r.stdout.contains("(a ") && r.stdout.contains(", b "), r.stdout)
        let events = try FileManager.default.contentsOfDirectory(atPath: straight + "/tb")
            .map { try Data(contentsOf: URL(fileURLWithPath: straight + "/tb/" + $0)) }.reduce(Data(), +)
        for tag in ["val/loss_by_data/a", "val/loss_by_data/b"] {
            XCTAssertNotNil(events.range(of: Data([0x0A, UInt8(tag.utf8.count)] + Array(tag.utf8))), "\(tag) in the event files")
        }
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

        // `eval` of the whole split: each dataset's loss is `eval --data` of that dataset alone,
        // and the total their mean weighted by predicted tokens.
        func evaluation(_ extra: [String]) throws -> [String: Any] {
            let e = try tessera(["eval", "--checkpoint", straight, "--json"] + extra)
            XCTAssertEqual(e.status, 0, e.stderr)
            return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(e.stdout.utf8)) as? [String: Any])
        }
        let whole = try evaluation([]), single = [try evaluation(["--data", a]), try evaluation(["--data", b])]
        let byData = try XCTUnwrap(whole["lossByData"] as? [String: Double])
        XCTAssertEqual(byData[a], single[0]["loss"] as? Double)
        XCTAssertEqual(byData[b], single[1]["loss"] as? Double)
        let tokens = single.map { $0["tokens"] as! Int }
        XCTAssertEqual(whole["tokens"] as? Int, tokens[0] + tokens[1])
        XCTAssertEqual(whole["loss"] as! Double, (byData[a]! * Double(tokens[0]) + byData[b]! * Double(tokens[1])) / Double(tokens[0] + tokens[1]),
                       accuracy: 1e-12)

        // Any world size draws the same global batches: 2 ranks' first loss is one process's.
        let ranks = try Repo.temporaryDirectory("mixranks")
        let two = try mpirun(2, tinyArgs(data: mix, out: ranks, steps: 2))
        XCTAssertEqual(two.status, 0, two.stderr)
        XCTAssertEqual(try metrics(ranks)[0]["loss"] as! Double, lines[0]["loss"] as! Double, accuracy: 1e-6)

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

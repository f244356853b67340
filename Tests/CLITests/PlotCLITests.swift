import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import XCTest

/// `tessera plot`: a well-formed SVG with every run's curves, points inside their panels and
/// placed by value; PNG through rsvg-convert.
final class PlotCLITests: XCTestCase {
    /// Elements of an SVG document by name, with their attributes.
    final class Elements: NSObject, XMLParserDelegate {
        var found: [(name: String, attributes: [String: String])] = []
        var text = ""
        func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                    attributes: [String: String] = [:]) { found.append((name, attributes)) }
        func parser(_ parser: XMLParser, foundCharacters string: String) { text += string + "|" }
    }

    func testTwoRunsOverlaid() throws {
        let data = try Repo.dataDirectory(), root = try Repo.temporaryDirectory("plot")
        for (name, lr) in [("alpha", "1e-3"), ("beta", "3e-3")] {
            let r = try tessera(tinyArgs(data: data, out: root + "/" + name, steps: 8) + ["--lr", lr, "--eval-every", "4", "--no-tensorboard"])
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        let svgPath = root + "/both.svg"
        let r = try tessera(["plot", root + "/alpha", root + "/beta", "--out", svgPath])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("alpha (8 steps), beta (8 steps)"), r.stdout)
        let parser = XMLParser(contentsOf: URL(fileURLWithPath: svgPath))!
        let e = Elements()
        parser.delegate = e
        XCTAssertTrue(parser.parse(), "well-formed XML: \(parser.parserError.map { "\($0)" } ?? "")")
        XCTAssertTrue(e.text.contains("alpha train") && e.text.contains("beta val") && e.text.contains("tokens"), e.text)
        let lines = e.found.filter { $0.name == "polyline" }
        // Per run: train raw, train smoothed and val in two loss panels, then lr and tokens/s.
        XCTAssertEqual(lines.count, 2 * 3 * 2 + 2 * 2)
        let colours = Set(lines.map { $0.attributes["stroke"]! })
        XCTAssertEqual(colours.count, 2, "one colour per run")
        // The raw train-loss line of run alpha in the step panel: 8 points, x increasing,
        // y placed by value (higher loss, higher on the page = smaller y).
        let metrics = try String(contentsOfFile: root + "/alpha/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            .map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        let losses = metrics.map { $0["loss"] as! Double }
        let points = lines[0].attributes["points"]!.split(separator: " ").map { $0.split(separator: ",").map { Double($0)! } }
        XCTAssertEqual(points.count, 8)
        for i in 1..<8 {
            XCTAssertGreaterThan(points[i][0], points[i - 1][0])
            XCTAssertEqual(points[i][1] < points[i - 1][1], losses[i] > losses[i - 1], "point \(i)")
        }
        // Every point lies inside the drawing (1000 wide).
        for l in lines {
            for p in l.attributes["points"]!.split(separator: " ") {
                let xy = p.split(separator: ",").map { Double($0)! }
                XCTAssertTrue((0...1000).contains(xy[0]) && (0...710).contains(xy[1]), "\(xy)")
            }
        }
        // Validation markers: 2 evaluations per run, drawn in both loss panels.
        XCTAssertEqual(e.found.filter { $0.name == "circle" }.count, 2 * 2 * 2 + 2, "markers (and the legend's two)")
        // Default output: FIRST_RUN/loss.svg.
        XCTAssertEqual(try tessera(["plot", root + "/alpha"]).status, 0)
        XCTAssertTrue(FileManager.default.fileExists(atPath: root + "/alpha/loss.svg"))
    }

    func testMultipleChoiceAccuracyRow() throws {
        let data = try Repo.dataDirectory(), root = try Repo.temporaryDirectory("plotchoices"), questions = root + "/q.jsonl"
        try [#"{"context": "the man sat on the", "choices": [" mat", " dog", " old hat"], "label": 0}"#,
             #"{"context": "a dog ran", "choices": [" far away", " home"], "label": 1}"#]
            .joined(separator: "\n").write(toFile: questions, atomically: true, encoding: .utf8)
        let r = try tessera(tinyArgs(data: data, out: root + "/run", steps: 8) + ["--eval-every", "4", "--eval-choices", questions, "--no-tensorboard"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try tessera(["plot", root + "/run", "--out", root + "/p.svg"]).status, 0)
        let parser = XMLParser(contentsOf: URL(fileURLWithPath: root + "/p.svg"))!
        let e = Elements()
        parser.delegate = e
        XCTAssertTrue(parser.parse())
        XCTAssertEqual(e.found.first { $0.name == "svg" }?.attributes["height"], "1010", "a third row")
        XCTAssertTrue(e.text.contains("multiple-choice acc_norm") && e.text.contains("multiple-choice acc|"), e.text)
        let lines = e.found.filter { $0.name == "polyline" }
        XCTAssertEqual(lines.count, 3 * 2 + 2 + 2)
        // acc_norm, then acc: one point per evaluation, in the third row (y beyond 670), dashed for acc.
        let metrics = try String(contentsOfFile: root + "/run/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            .map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        for (line, key) in zip(lines.suffix(2), ["choice_acc_norm", "choice_acc"]) {
            let values = metrics.compactMap { $0[key] as? Double }
            XCTAssertEqual(values.count, 2, key)
            let points = line.attributes["points"]!.split(separator: " ").map { $0.split(separator: ",").map { Double($0)! } }
            XCTAssertEqual(points.count, 2, key)
            XCTAssertTrue(points.allSatisfy { (670...1010).contains($0[1]) }, "\(key): \(points)")
            XCTAssertEqual(points[1][1] < points[0][1], values[1] > values[0], key)
            XCTAssertEqual(points[1][1] == points[0][1], values[1] == values[0], key)
        }
        XCTAssertNil(lines[lines.count - 2].attributes["stroke-dasharray"])
        XCTAssertEqual(lines.last!.attributes["stroke-dasharray"], "6 3")
        XCTAssertEqual(e.found.filter { $0.name == "circle" }.count, 2 * 2 + 2 * 2 + 1, "val and choice markers, and the legend's")
    }

    /// A mixture's run: a line per dataset in both loss panels, in the mixture's order with
    /// dashes of their own, placed by value, and named in the legend.
    func testMixtureDatasetLines() throws {
        let run = try Repo.temporaryDirectory("plotmix")
        try #"{"data": "0.5:/d/web,0.5:/e/code", "batchSize": 2, "blockSize": 4}"#.write(toFile: run + "/config.json", atomically: true, encoding: .utf8)
        var lines: [String] = []
        for step in 1...4 {
            var line = #"{"step": \#(step), "loss": \#(5.0 - Double(step) * 0.5), "lr": 0.001, "tokens_per_s": 100"#
            if step % 2 == 0 {
                let web = 4.0 - Double(step) * 0.25, code = 3.0 - Double(step) * 0.25
                line += #", "val_loss": \#((web + code) / 2), "val_loss_by_data": {"/e/code": \#(code), "/d/web": \#(web)}"#
            }
            lines.append(line + "}")
        }
        try lines.joined(separator: "\n").write(toFile: run + "/metrics.jsonl", atomically: true, encoding: .utf8)
        XCTAssertEqual(try tessera(["plot", run, "--out", run + "/p.svg"]).status, 0)
        let parser = XMLParser(contentsOf: URL(fileURLWithPath: run + "/p.svg"))!
        let e = Elements()
        parser.delegate = e
        XCTAssertTrue(parser.parse())
        XCTAssertTrue(e.text.contains(" val web|") && e.text.contains(" val code|"), e.text)
        let polylines = e.found.filter { $0.name == "polyline" }
        XCTAssertEqual(polylines.count, 2 * (3 + 2) + 2)
        // The step panel's lines: train, smoothed, val, then web and code.
        let step = Array(polylines.prefix(5))
        XCTAssertEqual(step.map { $0.attributes["stroke-dasharray"] }, [nil, nil, "6 3", "2 3", "10 3 2 3"])
        let y = { (line: (name: String, attributes: [String: String])) in
            line.attributes["points"]!.split(separator: " ").map { Double($0.split(separator: ",")[1])! }
        }
        XCTAssertEqual(y(step[3]).count, 2)
        XCTAssertTrue(zip(y(step[3]), y(step[4])).allSatisfy { $0 < $1 }, "web's loss above code's: higher on the page")
        XCTAssertTrue(zip(y(step[3]), y(step[2])).allSatisfy { $0 < $1 } && zip(y(step[2]), y(step[4])).allSatisfy { $0 < $1 },
                      "the blended validation between them")
    }

    func testPNGAndBadInput() throws {
        let data = try Repo.dataDirectory(), run = try Repo.temporaryDirectory("plotpng")
        XCTAssertEqual(try tessera(tinyArgs(data: data, out: run, steps: 3)).status, 0)
        let bad = try tessera(["plot", run, "--out", run + "/x.jpg"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("--out must end in .svg or .png"), bad.stderr)
        let missing = try tessera(["plot", run + "/nothing"])
        XCTAssertEqual(missing.status, 2)
        XCTAssertTrue(missing.stderr.contains("metrics.jsonl cannot be read"), missing.stderr)
        try requireEnvironment(FileManager.default.isExecutableFile(atPath: "/usr/bin/rsvg-convert"),
                               "rsvg-convert is not installed (make setup installs librsvg2-bin)")
        let png = try tessera(["plot", run, "--out", run + "/loss.png"])
        XCTAssertEqual(png.status, 0, png.stderr)
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: run + "/loss.png")))
        XCTAssertEqual(Array(bytes.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A], "a PNG signature")
        XCTAssertGreaterThan(bytes.count, 10_000)
    }
}

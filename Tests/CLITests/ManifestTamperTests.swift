import Checkpoint
import Foundation
import XCTest

/// A checkpoint's manifest is tamper-evident: editing any single value is refused by
/// `ckpt verify` and by `--resume`, naming the manifest; a manifest whose checksum was
/// recomputed after a hostile edit (a path outside the directory, a 10^15-element tensor) is
/// refused by validation before anything is allocated from it.
final class ManifestTamperTests: XCTestCase {
    var checkpoint = "", manifestPath = "", original = Data()

    override func setUpWithError() throws {
        let data = try Repo.dataDirectory(), run = try Repo.temporaryDirectory("tamper")
        let r = try tessera(tinyArgs(data: data, out: run, steps: 2))
        XCTAssertEqual(r.status, 0, r.stderr)
        checkpoint = run + "/checkpoints/step-00000002"
        manifestPath = checkpoint + "/manifest.json"
        original = try Data(contentsOf: URL(fileURLWithPath: manifestPath))
    }

    override func tearDownWithError() throws { try original.write(to: URL(fileURLWithPath: manifestPath)) }

    func expectRefused(_ mentions: [String], _ label: String) throws {
        let v = try tessera(["ckpt", "verify", checkpoint])
        XCTAssertEqual(v.status, 2, "\(label): ckpt verify must refuse: \(v.stdout)")
        for m in mentions { XCTAssertTrue(v.stderr.contains(m), "\(label): expected '\(m)' in \(v.stderr)") }
        let r = try tessera(["train", "--resume", checkpoint, "--max-steps", "3", "--out", try Repo.temporaryDirectory("t")])
        XCTAssertEqual(r.status, 2, "\(label): resume must refuse")
        XCTAssertTrue(r.stderr.contains(mentions[0]), "\(label): \(r.stderr)")
    }

    func testEditingAnySingleValueIsRefused() throws {
        XCTAssertEqual(try tessera(["ckpt", "verify", checkpoint]).status, 0, "the untouched checkpoint verifies")
        let text = String(decoding: original, as: UTF8.self)
        // Every number and every string value of the manifest, one at a time.
        let values = try NSRegularExpression(pattern: #"(: )("[^"\n]*"|-?[0-9][0-9.e+-]*|true|false)"#)
        let matches = values.matches(in: text, range: NSRange(text.startIndex..., in: text))
        XCTAssertGreaterThan(matches.count, 60, "the manifest has many values")
        var edited = 0
        // A spread of them (every one would take minutes of process starts).
        for m in stride(from: 0, to: matches.count, by: max(1, matches.count / 25)).map({ matches[$0] }) {
            let r = Range(m.range(at: 2), in: text)!
            let value = String(text[r])
            if value.contains("crc32:") { continue }      // the seal itself: covered below
            let replacement: String
            if value.hasPrefix("\"") { replacement = value.count > 2 ? "\"X" + value.dropFirst(2) : "\"X\"" }
            else if value == "true" || value == "false" { replacement = value == "true" ? "false" : "true" }
            else { replacement = value.hasSuffix("7") ? String(value.dropLast()) + "8" : String(value.dropLast()) + "7" }
            var changed = text
            changed.replaceSubrange(r, with: replacement)
            try Data(changed.utf8).write(to: URL(fileURLWithPath: manifestPath))
            // The format version is read first (a newer format may seal differently): an edit of
            // it is refused as a version this build cannot read.
            let line = text[..<r.lowerBound].split(separator: "\n").last ?? ""
            let expected = line.contains("\"formatVersion\"") ? "format version" : "checksum"
            try expectRefused([manifestPath, expected], "value \(value) → \(replacement)")
            edited += 1
        }
        XCTAssertGreaterThanOrEqual(edited, 20)
        // Removing the seal is refused too.
        let unsealed = text.replacingOccurrences(of: #""checksum" : "crc32:[0-9a-f]{8}","#, with: "", options: .regularExpression)
        XCTAssertNotEqual(unsealed, text)
        try Data(unsealed.utf8).write(to: URL(fileURLWithPath: manifestPath))
        try expectRefused([manifestPath, "no checksum"], "seal removed")
    }

    /// Re-seals an edited manifest, as a hostile writer who knows the algorithm would.
    func writeSealed(_ edit: (inout [String: Any]) -> Void) throws {
        var m = try JSONSerialization.jsonObject(with: original) as! [String: Any]
        edit(&m)
        m["checksum"] = "crc32:" + ManifestSeal.placeholder
        let json = try JSONSerialization.data(withJSONObject: m, options: [.prettyPrinted, .sortedKeys])
        try ManifestSeal.seal(json).write(to: URL(fileURLWithPath: manifestPath))
    }

    func testResealedHostileManifestsAreRefusedBeforeAllocating() throws {
        try writeSealed { _ in }
        XCTAssertEqual(try tessera(["ckpt", "verify", checkpoint]).status, 0, "a faithful re-seal verifies")

        try writeSealed { m in
            var files = m["files"] as! [[String: Any]]
            files[0]["file"] = "../x.bin"
            m["files"] = files
        }
        try expectRefused([manifestPath, "'../x.bin'"], "path outside the directory")

        try writeSealed { m in
            m["parameterCount"] = 1_000_000_000_000_000
            m["tensors"] = [["name": "huge", "shape": [1_000_000, 1_000_000, 1000], "dtype": "f32", "offset": 0]]
        }
        let t0 = Date()
        try expectRefused([manifestPath, "parameterCount 1000000000000000", "bytes of memory"], "10^15 elements")
        XCTAssertLessThan(Date().timeIntervalSince(t0), 5, "refused at once, with nothing allocated")

        try writeSealed { m in
            var files = m["files"] as! [[String: Any]]
            var frames = files[0]["frames"] as! [[String: Any]]
            frames[0]["length"] = 1 << 40
            files[0]["frames"] = frames
            m["files"] = files
        }
        try expectRefused([manifestPath, "outside its"], "frame past the end of its file")

        try writeSealed { m in
            var model = m["model"] as! [String: Any]
            model["nLayer"] = 1 << 40
            m["model"] = model
        }
        try expectRefused([manifestPath, "model.nLayer"], "absurd model shape")
    }
}

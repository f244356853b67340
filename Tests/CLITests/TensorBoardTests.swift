import Foundation
import Training
import XCTest

/// TensorBoard event files: CRC-32C and TFRecord framing as TensorFlow defines them, every
/// scalar of a run readable at its step with the value `metrics.jsonl` has, and a resumed run
/// reading as one run.
final class TensorBoardTests: XCTestCase {
    func testChecksumsAndFraming() throws {
        // The CRC-32C check value (RFC 3720, B.4) and TFRecord's masking.
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        let dir = try Repo.temporaryDirectory("tb")
        let w = try TensorBoard.Writer(directory: dir, keepThrough: 0)
        w.write(step: 7, [("a/b", 1.5), ("c", -2)], wallTime: 1000)
        let read = try TensorBoard.read(w.path)
        XCTAssertEqual(read, [.init(step: 7, tag: "a/b", value: 1.5, wallTime: 1000), .init(step: 7, tag: "c", value: -2, wallTime: 1000)])
        // The first record is TensorBoard's file_version event: 8-byte length, masked CRC, payload, masked CRC.
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: w.path)))
        let length = Int(bytes[0]) | Int(bytes[1]) << 8
        let payload = Array(bytes[12..<(12 + length)])
        XCTAssertTrue(String(decoding: payload, as: UTF8.self).contains("brain.Event:2"))
        let crc = CRC32C.checksum(payload), masked = ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8
        XCTAssertEqual(bytes[(12 + length)..<(16 + length)].reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) }, masked)
        // A flipped payload byte is caught.
        var damaged = bytes; damaged[14] ^= 1
        try Data(damaged).write(to: URL(fileURLWithPath: w.path))
        XCTAssertThrowsError(try TensorBoard.read(w.path))
    }

    func testEveryScalarOfARunAtItsStepAndAResumeReadsAsOneRun() throws {
        let data = try Repo.dataDirectory(), run = try Repo.temporaryDirectory("tbrun")
        let args = tinyArgs(data: data, out: run, steps: 6) + ["--eval-every", "3", "--save-every", "2"]
        XCTAssertEqual(try tessera(args).status, 0)
        func scalars() throws -> [TensorBoard.Scalar] {
            let files = try FileManager.default.contentsOfDirectory(atPath: run + "/tb").filter { $0.contains("tfevents") }
            XCTAssertEqual(files.count, 1, "one event file: \(files)")
            return try TensorBoard.read(run + "/tb/" + files[0])
        }
        func check(_ s: [TensorBoard.Scalar]) throws {
            let lines = try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            XCTAssertEqual(lines.count, 6)
            for line in lines {
                let m = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
                let step = m["step"] as! Int
                for (tag, key) in [("train/loss", "loss"), ("train/lr", "lr"), ("train/grad_norm", "grad_norm"),
                                   ("perf/tokens_per_s", "tokens_per_s"), ("perf/ms_per_step", "ms_per_step"), ("perf/mfu", "mfu"),
                                   ("memory/peak_rss_mb", "peak_rss_mb"), ("val/loss", "val_loss")] {
                    let found = s.filter { $0.step == step && $0.tag == tag }
                    guard let expected = m[key] as? Double else {
                        XCTAssertTrue(found.isEmpty, "\(tag) at step \(step) has no metrics value"); continue
                    }
                    XCTAssertEqual(found.count, 1, "\(tag) at step \(step)")
                    XCTAssertEqual(found.first?.value, Float(expected), "\(tag) at step \(step)")
                }
            }
            XCTAssertEqual(Set(s.filter { $0.tag == "val/loss" }.map(\.step)), [3, 6])
            XCTAssertEqual(Set(s.map(\.step)), Set(1...6))
        }
        let first = try scalars()
        try check(first)
        // Resume from step 2 and run to 6 again: events after step 2 are replaced, not doubled.
        let r = try tessera(["train", "--out", run, "--resume", run + "/checkpoints/step-00000002"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let second = try scalars()
        try check(second)
        XCTAssertEqual(second.filter { $0.step <= 2 }, first.filter { $0.step <= 2 }, "steps before the resume kept as written")
        XCTAssertEqual(second.filter { $0.tag == "train/loss" }.map(\.value), first.filter { $0.tag == "train/loss" }.map(\.value),
                       "bit-exact resume: the same losses")
    }

    func testNoTensorBoardWritesNoEvents() throws {
        let data = try Repo.dataDirectory(), run = try Repo.temporaryDirectory("notb")
        XCTAssertEqual(try tessera(tinyArgs(data: data, out: run, steps: 1) + ["--no-tensorboard"]).status, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: run + "/tb"))
    }
}

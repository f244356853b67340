import Foundation
import XCTest

/// `train --profile`: every rank's timeline of the window's steps in one Chrome trace file,
/// spans that nest as the code does, nothing outside the window, and training's numbers
/// untouched.
final class ProfileCLITests: XCTestCase {
    typealias Event = [String: Any]

    func traceEvents(_ file: String) throws -> [Event] {
        let data = try Data(contentsOf: URL(fileURLWithPath: file))
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        return try XCTUnwrap(object["traceEvents"] as? [Event])
    }

    func spans(_ events: [Event], pid: Int, name: String? = nil) -> [(name: String, start: Double, end: Double, args: [String: Any])] {
        events.filter { $0["ph"] as? String == "X" && $0["pid"] as? Int == pid && $0["tid"] as? Int == 0 && (name == nil || $0["name"] as? String == name) }
            .map { e in
                let ts = e["ts"] as! Double
                return (e["name"] as! String, ts, ts + (e["dur"] as! Double), e["args"] as? [String: Any] ?? [:])
            }
    }

    /// ZeRO-3 on 2 ranks, steps 3–5 of 7: three step spans per rank, each holding one
    /// forward and one backward whose blocks are the model's layers in order (backward in
    /// reverse), ZeRO-3's parameter gathers waited on inside them, collectives in flight as
    /// begin/end pairs; the weights are those of the same run without a profile.
    func testTimelineOfEveryRank() throws {
        let data = try Repo.dataDirectory()
        let plain = try Repo.temporaryDirectory("plain"), profiled = try Repo.temporaryDirectory("profiled")
        let args = ["--zero", "3", "--eval-every", "4"]
        let a = try mpirun(2, tinyArgs(data: data, out: plain, steps: 7) + args)
        XCTAssertEqual(a.status, 0, a.stderr)
        let b = try mpirun(2, tinyArgs(data: data, out: profiled, steps: 7) + args + ["--profile", "3-5"])
        XCTAssertEqual(b.status, 0, b.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: profiled + "/model.bin")),
                       try Data(contentsOf: URL(fileURLWithPath: plain + "/model.bin")), "profiling changes no bit")
        let file = profiled + "/profile/steps-3-5.trace.json"
        XCTAssertTrue(b.stdout.contains("profile of steps 3–5 on 2 rank(s) -> \(file)"), b.stdout)
        XCTAssertTrue(b.stdout.contains("    compute") && b.stdout.contains("    block backward") && b.stdout.contains("    evaluation"), b.stdout)
        XCTAssertTrue(b.stdout.contains("  rank 0 ") && b.stdout.contains("  rank 1 "), b.stdout)
        let events = try traceEvents(file)
        for pid in 0..<2 {
            let steps = spans(events, pid: pid, name: "step")
            XCTAssertEqual(steps.map { $0.args["step"] as? Int }, [3, 4, 5], "rank \(pid)")
            for step in steps {
                func inside(_ name: String) -> [(name: String, start: Double, end: Double, args: [String: Any])] {
                    spans(events, pid: pid, name: name).filter { $0.start >= step.start && $0.end <= step.end }
                }
                let forward = inside("forward"), backward = inside("backward")
                XCTAssertEqual(forward.count, 1)
                XCTAssertEqual(backward.count, 1)
                guard let f = forward.first, let bw = backward.first else { continue }
                XCTAssertLessThanOrEqual(f.end, bw.start)
                let blocks = inside("block forward")
                XCTAssertEqual(blocks.map { $0.args["layer"] as? Int }, [0, 1, 2, 3])
                XCTAssertTrue(blocks.allSatisfy { $0.start >= f.start && $0.end <= f.end })
                let back = inside("block backward")
                XCTAssertEqual(back.map { $0.args["layer"] as? Int }, [3, 2, 1, 0])
                XCTAssertTrue(back.allSatisfy { $0.start >= bw.start && $0.end <= bw.end })
                for op in ["qkv", "attention", "attention proj", "mlp fc", "mlp proj"] {
                    let within = inside(op).filter { s in blocks.contains { s.start >= $0.start && s.end <= $0.end } }
                    XCTAssertEqual(within.count, 4, "\(op) once in each block")
                }
                XCTAssertFalse(inside("wait all-gather").isEmpty, "ZeRO-3 waits for parameter gathers")
                XCTAssertEqual(inside("optimizer step").count, 1)
            }
            XCTAssertEqual(spans(events, pid: pid, name: "evaluation").count, 1, "step 4's evaluation")
            let all = spans(events, pid: pid)
            let last = try XCTUnwrap(steps.last)
            XCTAssertTrue(all.allSatisfy { $0.start >= steps[0].start - 1 && $0.end <= last.end + 1e6 }, "nothing from other steps")
            let begins = events.filter { $0["ph"] as? String == "b" && $0["pid"] as? Int == pid }
            let ends = events.filter { $0["ph"] as? String == "e" && $0["pid"] as? Int == pid }
            XCTAssertFalse(begins.isEmpty)
            XCTAssertEqual(Set(begins.compactMap { $0["id"] as? Int }), Set(ends.compactMap { $0["id"] as? Int }))
            XCTAssertTrue(begins.contains { ($0["args"] as? [String: Any])?["label"] as? String == "all-gather of unit 1 parameters" })
        }
    }

    /// One process: a window cut by the run's end includes the final save; a resume inside
    /// the window profiles the rest of it; bad windows are refused.
    func testWindowsAcrossAResume() throws {
        let data = try Repo.dataDirectory()
        let out = try Repo.temporaryDirectory("resume")
        let a = try tessera(tinyArgs(data: data, out: out, steps: 4) + ["--profile", "3-5"])
        XCTAssertEqual(a.status, 0, a.stderr)
        let first = try traceEvents(out + "/profile/steps-3-4.trace.json")
        XCTAssertEqual(spans(first, pid: 0, name: "step").map { $0.args["step"] as? Int }, [3, 4])
        XCTAssertEqual(spans(first, pid: 0, name: "checkpoint save").map { $0.args["step"] as? Int }, [4])
        let b = try tessera(["train", "--resume", "latest", "--out", out, "--max-steps", "8"])
        XCTAssertEqual(b.status, 0, b.stderr)
        let second = try traceEvents(out + "/profile/step-5.trace.json")
        XCTAssertEqual(spans(second, pid: 0, name: "step").map { $0.args["step"] as? Int }, [5])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out + "/profile").sorted(),
                       ["step-5.trace.json", "steps-3-4.trace.json"])

        // An async save inside a window: the writer's thread has its own named track.
        let async = try Repo.temporaryDirectory("async")
        let c = try tessera(tinyArgs(data: data, out: async, steps: 6) + ["--profile", "2-5", "--save-every", "2", "--async-save",
                                                                        "--debug-slow-save-ms", "0"])
        XCTAssertEqual(c.status, 0, c.stderr)
        let timeline = try traceEvents(async + "/profile/steps-2-5.trace.json")
        let names = timeline.filter { $0["name"] as? String == "thread_name" }
            .reduce(into: [Int: String]()) { $0[$1["tid"] as! Int] = ($1["args"] as? [String: Any])?["name"] as? String }
        let writer = try XCTUnwrap(names.first { $0.value == "checkpoint writer" }?.key, "\(names)")
        XCTAssertEqual(names[0], "training")
        let writes = timeline.filter { $0["name"] as? String == "checkpoint write" }
        XCTAssertFalse(writes.isEmpty)
        XCTAssertTrue(writes.allSatisfy { $0["tid"] as? Int == writer })

        for (window, expected) in [("5-3", "use FROM-TO"), ("x", "use FROM-TO"), ("0-2", "use FROM-TO"), ("1-1001", "at most 1000 steps")] {
            let r = try tessera(tinyArgs(data: data, out: try Repo.temporaryDirectory("bad"), steps: 4) + ["--profile", window])
            XCTAssertEqual(r.status, 2, window)
            XCTAssertTrue(r.stderr.contains("--profile") && r.stderr.contains(expected), "\(window): \(r.stderr)")
        }
    }
}

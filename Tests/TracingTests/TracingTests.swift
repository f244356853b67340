import Foundation
import Tracing
import XCTest

final class TracingTests: XCTestCase {
    func event(_ name: String, _ c: Trace.Category, _ start: UInt64, _ end: UInt64, thread: Int = 0, async: Int? = nil) -> TraceEvent {
        TraceEvent(name: name, category: c, start: start, end: end, thread: thread, async: async, args: [:])
    }

    /// Self time is a span less its direct children; inclusive rows count every span; other
    /// threads and collectives in flight are left out.
    func testSummaryAddsSelfTimeByCategory() {
        let events = [
            event("step", .step, 0, 100), event("forward", .compute, 5, 45), event("block forward", .compute, 10, 20),
            event("block forward", .compute, 20, 40), event("wait all-gather", .comm, 25, 30),
            event("backward", .compute, 45, 85), event("wait all-reduce", .comm, 85, 95),
            event("step", .step, 100, 150), event("optimizer step", .optimizer, 110, 140),
            event("evaluation", .eval, 150, 170),
            event("checkpoint write", .checkpoint, 0, 1000, thread: 1),
            event("all-reduce", .comm, 50, 95, async: 0),
        ]
        let s = TraceSummary(events)
        XCTAssertEqual(s.steps, 2)
        XCTAssertEqual(s.stepNanoseconds, 150)
        // step: 100 − 40 − 40 − 10 = 10, plus 50 − 30 = 20.
        XCTAssertEqual(s.selfTime[.step], 30)
        // forward 40 − 30 = 10; blocks 10 + (20 − 5); backward 40.
        XCTAssertEqual(s.selfTime[.compute], 10 + 10 + 15 + 40)
        XCTAssertEqual(s.selfTime[.comm], 5 + 10)
        XCTAssertEqual(s.selfTime[.optimizer], 30)
        XCTAssertNil(s.selfTime[.eval], "between the steps")
        XCTAssertNil(s.selfTime[.checkpoint], "another thread")
        XCTAssertEqual(s.rows.first?.name, "step")
        let block = s.rows.first { $0.name == "block forward" }
        XCTAssertEqual(block?.calls, 2)
        XCTAssertEqual(block?.nanoseconds, 30)
        XCTAssertEqual(s.between, [TraceSummary.Row(name: "evaluation", calls: 1, nanoseconds: 20)])
        XCTAssertFalse(s.rows.contains { $0.name == "evaluation" })
        let table = s.table()
        XCTAssertTrue(table.contains("    block forward                     1.0       0.00      20.0%"), table)
        XCTAssertTrue(table.contains("    compute"), table)
        let perRank = TraceSummary.ranks([(1, TraceSummary([event("step", .step, 0, 4_000_000), event("x", .compute, 0, 3_000_000)])), (0, s)])
        XCTAssertEqual(perRank.split(separator: "\n").last, "  rank 1                 4.00       3.00       0.00       1.00")
    }

    /// The file parses as JSON; complete events carry microseconds; a collective in flight is
    /// a begin/end pair with one id; thread names are metadata.
    func testChromeTraceJSON() throws {
        let r0 = TraceFile.Rank(rank: 0, events: [event("step \"1\"", .step, 1_234_567, 2_000_000),
                                                  event("all-reduce", .comm, 1_500_000, 1_900_001, async: 7)],
                                threads: [0: "training"])
        var e = event("checkpoint write", .checkpoint, 0, 5, thread: 1)
        e.args = ["bytes": .int(42), "path": .text("a\\b")]
        let r1 = TraceFile.Rank(rank: 1, events: [e], threads: [0: "training", 1: "checkpoint writer"])
        let text = TraceFile.json([r0, r1], metadata: ["run": "x"])
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        XCTAssertEqual((object["otherData"] as? [String: String])?["run"], "x")
        let events = try XCTUnwrap(object["traceEvents"] as? [[String: Any]])
        let step = try XCTUnwrap(events.first { $0["ph"] as? String == "X" && $0["pid"] as? Int == 0 })
        XCTAssertEqual(step["name"] as? String, "step \"1\"")
        XCTAssertEqual(step["ts"] as? Double ?? 0, 1234.567, accuracy: 1e-9)
        XCTAssertEqual(step["dur"] as? Double ?? 0, 765.433, accuracy: 1e-9)
        let pair = events.filter { $0["cat"] as? String == "comm" }
        XCTAssertEqual(pair.map { $0["ph"] as? String }, ["b", "e"])
        XCTAssertEqual(pair.map { $0["id"] as? Int }, [7, 7])
        XCTAssertEqual(pair.last?["ts"] as? Double ?? 0, 1900.001, accuracy: 1e-9)
        let write = try XCTUnwrap(events.first { $0["name"] as? String == "checkpoint write" })
        XCTAssertEqual(write["tid"] as? Int, 1)
        XCTAssertEqual((write["args"] as? [String: Any])?["bytes"] as? Int, 42)
        XCTAssertEqual((write["args"] as? [String: Any])?["path"] as? String, "a\\b")
        let names = events.filter { $0["name"] as? String == "thread_name" }
        XCTAssertEqual(names.count, 3)
        // What a rank sends to rank 0 comes back whole, and other bytes are refused.
        let back = try XCTUnwrap(TraceFile.decode(Array(try TraceFile.encode(r1))))
        XCTAssertEqual(back.rank, 1)
        XCTAssertEqual(back.events, r1.events)
        XCTAssertEqual(back.threads, r1.threads)
        XCTAssertNil(TraceFile.decode(Array("1\n0\n".utf8)))
    }

    /// Nothing is recorded outside a window, a span begun before it opened is dropped, and
    /// spans nest in time on the recording thread.
    func testRecordingOnlyInsideTheWindow() {
        Trace.end(Trace.begin(), .step, "before")
        XCTAssertEqual(Trace.begin(), 0)
        Trace.start(threadName: "training")
        Trace.span(.step, "outer") { Trace.span(.compute, "inner", args: ["layer": .int(3)]) { usleep(1000) } }
        let t = Trace.begin()
        let recorded = Trace.stop()
        Trace.end(t, .step, "after the window closed")
        XCTAssertEqual(recorded.events.map(\.name), ["inner", "outer"])
        XCTAssertEqual(recorded.threads, [0: "training"])
        let inner = recorded.events[0], outer = recorded.events[1]
        XCTAssertEqual(inner.args["layer"], .int(3))
        XCTAssertGreaterThanOrEqual(inner.start, outer.start)
        XCTAssertLessThanOrEqual(inner.end, outer.end)
        XCTAssertGreaterThanOrEqual(inner.duration, 1_000_000)
        XCTAssertEqual(Trace.stop().events, [])
    }
}

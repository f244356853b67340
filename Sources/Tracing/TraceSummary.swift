import Foundation

// MARK: - Summary

/// Where one rank's time went in a profile window, as torch.profiler's `key_averages()`
/// table: inside the steps, each span name's calls and inclusive time per step and the self
/// time (a span's duration less its children's) added up by category; between the steps,
/// what ran there (evaluations, saves) as a whole.
public struct TraceSummary: Sendable {
    /// Calls and inclusive time of one span name.
    public struct Row: Sendable, Equatable {
        public var name: String
        public var calls: Int
        public var nanoseconds: UInt64
        public init(name: String, calls: Int, nanoseconds: UInt64) { self.name = name; self.calls = calls; self.nanoseconds = nanoseconds }
    }

    /// Spans named "step" on the recording thread, and their nanoseconds.
    public var steps: Int
    public var stepNanoseconds: UInt64
    /// Self time by category inside the steps.
    public var selfTime: [Trace.Category: UInt64]
    /// Span names inside the steps (the steps included) by inclusive time, longest first.
    public var rows: [Row]
    /// Top-level spans between the steps, by inclusive time.
    public var between: [Row]

    /// Summarises the spans of thread `thread` (0: the training loop) in `events`.
    public init(_ events: [TraceEvent], thread: Int = 0) {
        let spans = events.filter { $0.thread == thread && $0.async == nil }
            .sorted { $0.start != $1.start ? $0.start < $1.start : $0.end > $1.end }
        var selfTime: [Trace.Category: UInt64] = [:]
        var inside: [String: Row] = [:], outside: [String: Row] = [:]
        // Open spans, innermost last, each with the time its children took.
        var open: [(event: TraceEvent, children: UInt64)] = []
        var inStep = false
        func close() {
            let (e, children) = open.removeLast()
            if inStep { selfTime[e.category, default: 0] += e.duration - min(children, e.duration) }
            if !open.isEmpty { open[open.count - 1].children += e.duration }
        }
        for e in spans {
            while let top = open.last?.event, top.end <= e.start { close() }
            if open.isEmpty { inStep = e.name == "step" }
            open.append((e, 0))
            if inStep {
                inside[e.name, default: Row(name: e.name, calls: 0, nanoseconds: 0)].calls += 1
                inside[e.name]!.nanoseconds += e.duration
            } else if open.count == 1 {
                outside[e.name, default: Row(name: e.name, calls: 0, nanoseconds: 0)].calls += 1
                outside[e.name]!.nanoseconds += e.duration
            }
        }
        while !open.isEmpty { close() }
        let order = { (a: Row, b: Row) in a.nanoseconds != b.nanoseconds ? a.nanoseconds > b.nanoseconds : a.name < b.name }
        steps = inside["step"]?.calls ?? 0
        stepNanoseconds = inside["step"]?.nanoseconds ?? 0
        self.selfTime = selfTime
        rows = inside.values.sorted(by: order)
        between = outside.values.sorted(by: order)
    }

    /// One line per rank of what its steps took: compute, waiting for collectives, and the
    /// rest. The rank that waits least is the one the others wait for.
    public static func ranks(_ summaries: [(rank: Int, summary: TraceSummary)]) -> String {
        var lines = ["  ms/step per rank" + ["step", "compute", "comm wait", "other"].map { String(repeating: " ", count: 11 - $0.count) + $0 }.joined()]
        for (rank, s) in summaries.sorted(by: { $0.rank < $1.rank }) {
            let per = Double(max(s.steps, 1)) * 1e6
            let step = Double(s.stepNanoseconds) / per
            let compute = Double(s.selfTime[.compute] ?? 0) / per, comm = Double(s.selfTime[.comm] ?? 0) / per
            lines.append(String(format: "  rank %-11d %10.2f %10.2f %10.2f %10.2f", rank, step, compute, comm, step - compute - comm))
        }
        return lines.joined(separator: "\n")
    }

    /// The table `train` prints when a window closes (at most `limit` span names).
    public func table(limit: Int = 24) -> String {
        let perStep = Double(max(steps, 1))
        let ms = { (ns: UInt64) in Double(ns) / 1e6 / perStep }
        let stepMS = ms(stepNanoseconds)
        func line(_ name: String, _ columns: [String]) -> String {
            "  " + name.padding(toLength: max(name.count, 28), withPad: " ", startingAt: 0)
                + columns.map { String(repeating: " ", count: max(0, 11 - $0.count)) + $0 }.joined()
        }
        var lines = [line("inside the steps, self time", ["ms/step", "share"])]
        let total = selfTime.values.reduce(0, +)
        for c in Trace.Category.allCases {
            guard let ns = selfTime[c], ns > 0 else { continue }
            lines.append(line("  " + c.rawValue, [String(format: "%.2f", ms(ns)), String(format: "%.1f%%", 100 * Double(ns) / Double(max(total, 1)))]))
        }
        lines.append(line("span (inclusive)", ["calls/step", "ms/step", "of step"]))
        for r in rows.prefix(limit) {
            lines.append(line("  " + r.name, [String(format: "%.1f", Double(r.calls) / perStep), String(format: "%.2f", ms(r.nanoseconds)),
                                              String(format: "%.1f%%", stepMS > 0 ? 100 * ms(r.nanoseconds) / stepMS : 0)]))
        }
        if !between.isEmpty {
            lines.append(line("between the steps", ["calls", "ms", ""]))
            for r in between {
                lines.append(line("  " + r.name, ["\(r.calls)", String(format: "%.2f", Double(r.nanoseconds) / 1e6), ""]))
            }
        }
        return lines.joined(separator: "\n")
    }
}

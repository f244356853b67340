import Foundation

// MARK: - Chrome trace-event JSON

/// Every rank's spans in one file of Chrome's trace-event format (the JSON object form):
/// each rank is a process (`pid` = rank), each of its threads a track, and collectives in
/// flight async spans beside them. Perfetto (ui.perfetto.dev) and chrome://tracing open it.
public enum TraceFile {
    /// One rank's recording.
    public struct Rank: Sendable {
        public var rank: Int
        public var events: [TraceEvent]
        public var threads: [Int: String]
        public init(rank: Int, events: [TraceEvent], threads: [Int: String]) {
            self.rank = rank; self.events = events; self.threads = threads
        }
    }

    /// The JSON text for `ranks`, with `metadata` (strings) as the file's own.
    public static func json(_ ranks: [Rank], metadata: [String: String]) -> String {
        var out = "{\"displayTimeUnit\":\"ms\",\"otherData\":{"
        out += metadata.sorted { $0.key < $1.key }.map { "\(quote($0.key)):\(quote($0.value))" }.joined(separator: ",")
        out += "},\"traceEvents\":[\n"
        var lines: [String] = []
        for r in ranks {
            lines.append("{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":\(r.rank),\"args\":{\"name\":\(quote("rank \(r.rank)"))}}")
            lines.append("{\"ph\":\"M\",\"name\":\"process_sort_index\",\"pid\":\(r.rank),\"args\":{\"sort_index\":\(r.rank)}}")
            for (tid, name) in r.threads.sorted(by: { $0.key < $1.key }) {
                lines.append("{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":\(r.rank),\"tid\":\(tid),\"args\":{\"name\":\(quote(name))}}")
            }
            for e in r.events {
                let common = "\"name\":\(quote(e.name)),\"cat\":\"\(e.category.rawValue)\",\"pid\":\(r.rank),\"tid\":\(e.thread)"
                let args = e.args.isEmpty ? "" : ",\"args\":{" + e.args.sorted { $0.key < $1.key }.map { k, v in
                    switch v {
                    case .int(let i): return "\(quote(k)):\(i)"
                    case .text(let t): return "\(quote(k)):\(quote(t))"
                    }
                }.joined(separator: ",") + "}"
                if let id = e.async {
                    lines.append("{\"ph\":\"b\",\(common),\"id\":\(id),\"ts\":\(micros(e.start))\(args)}")
                    lines.append("{\"ph\":\"e\",\(common),\"id\":\(id),\"ts\":\(micros(e.end))}")
                } else {
                    lines.append("{\"ph\":\"X\",\(common),\"ts\":\(micros(e.start)),\"dur\":\(micros(e.duration))\(args)}")
                }
            }
        }
        out += lines.joined(separator: ",\n")
        out += "\n]}\n"
        return out
    }

    /// One rank's recording as bytes, to send to the rank that writes the file.
    public static func encode(_ r: Rank) -> Data {
        var out = "\(r.rank)\n\(r.threads.count)\n"
        for (tid, name) in r.threads.sorted(by: { $0.key < $1.key }) { out += "\(tid)\t\(escape(name))\n" }
        for e in r.events {
            out += "\(e.category.rawValue)\t\(e.start)\t\(e.end)\t\(e.thread)\t\(e.async.map(String.init) ?? "-")\t\(escape(e.name))"
            for (k, v) in e.args.sorted(by: { $0.key < $1.key }) {
                switch v {
                case .int(let i): out += "\t\(escape(k))=i\(i)"
                case .text(let t): out += "\t\(escape(k))=t\(escape(t))"
                }
            }
            out += "\n"
        }
        return Data(out.utf8)
    }

    /// The rank `encode` wrote; nil for bytes it did not write.
    public static func decode(_ bytes: [UInt8]) -> Rank? {
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard lines.count >= 2, let rank = Int(lines[0]), let threadCount = Int(lines[1]), lines.count >= 2 + threadCount else { return nil }
        var threads: [Int: String] = [:]
        for line in lines[2..<(2 + threadCount)] {
            let f = line.split(separator: "\t", maxSplits: 1, omittingEmptySubsequences: false)
            guard f.count == 2, let tid = Int(f[0]) else { return nil }
            threads[tid] = unescape(String(f[1]))
        }
        var events: [TraceEvent] = []
        for line in lines[(2 + threadCount)...] where !line.isEmpty {
            let f = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            guard f.count >= 6, let c = Trace.Category(rawValue: f[0]), let start = UInt64(f[1]), let end = UInt64(f[2]),
                  let thread = Int(f[3]) else { return nil }
            var args: [String: TraceValue] = [:]
            for a in f[6...] {
                guard let eq = a.firstIndex(of: "="), a.index(after: eq) < a.endIndex else { return nil }
                let key = unescape(String(a[..<eq])), kind = a[a.index(after: eq)], value = String(a[a.index(eq, offsetBy: 2)...])
                if kind == "i", let i = Int(value) { args[key] = .int(i) } else if kind == "t" { args[key] = .text(unescape(value)) } else { return nil }
            }
            events.append(TraceEvent(name: unescape(f[5]), category: c, start: start, end: end, thread: thread,
                                     async: f[4] == "-" ? nil : Int(f[4]), args: args))
        }
        return Rank(rank: rank, events: events, threads: threads)
    }

    /// Tabs, newlines, '=' and backslashes escaped, so fields split cleanly.
    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\t", with: "\\t")
            .replacingOccurrences(of: "\n", with: "\\n").replacingOccurrences(of: "=", with: "\\e")
    }

    static func unescape(_ s: String) -> String {
        var out = "", escaped = false
        for ch in s {
            if escaped {
                switch ch { case "t": out.append("\t"); case "n": out.append("\n"); case "e": out.append("="); default: out.append(ch) }
                escaped = false
            } else if ch == "\\" { escaped = true } else { out.append(ch) }
        }
        return out
    }

    /// Nanoseconds as microseconds with three decimals (the format's unit).
    static func micros(_ ns: UInt64) -> String {
        "\(ns / 1000).\(String(ns % 1000 + 1000).dropFirst())"
    }

    /// A JSON string literal.
    static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
            }
        }
        return out + "\""
    }
}

import Foundation

// MARK: - Chrome trace-event JSON

/// Every rank's spans in one file of Chrome's trace-event format (the JSON object form):
/// each rank is a process (`pid` = rank), each of its threads a track, and collectives in
/// flight async spans beside them. Perfetto (ui.perfetto.dev) and chrome://tracing open it.
public enum TraceFile {
    /// One rank's recording.
    public struct Rank: Codable, Sendable {
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
    public static func encode(_ r: Rank) throws -> Data { try JSONEncoder().encode(r) }

    /// The rank `encode` wrote; nil for bytes it did not write.
    public static func decode(_ bytes: [UInt8]) -> Rank? { try? JSONDecoder().decode(Rank.self, from: Data(bytes)) }

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

import Foundation

// MARK: - TensorBoard event files

/// Scalars in TensorBoard's event-file format, written natively: TFRecord framing (length,
/// masked CRC-32C of the length, payload, masked CRC-32C of the payload) around `Event`
/// protocol-buffer messages, which are encoded here field by field (the handful of fields a
/// scalar needs). `tensorboard --logdir RUN/tb` reads them.
public enum TensorBoard {
    /// One scalar as written or read back.
    public struct Scalar: Equatable, Sendable {
        public var step: Int, tag: String, value: Float, wallTime: Double
        public init(step: Int, tag: String, value: Float, wallTime: Double) {
            self.step = step; self.tag = tag; self.value = value; self.wallTime = wallTime
        }
    }

    /// Event.file_version of the first record: what TensorBoard expects of a v2 event file.
    static let fileVersion = "brain.Event:2"

    // MARK: Writing

    /// Appends events to one file in a run's `tb/` directory (rank 0 only).
    public final class Writer {
        public let path: String
        private let handle: FileHandle

        /// Creates `directory` and a new event file in it. After a resume at step `keepThrough`
        /// (> 0), the events of earlier files up to that step are copied into the new file and
        /// the old files removed, so the directory reads as one run (as `metrics.jsonl` does).
        public init(directory: String, keepThrough step: Int) throws {
            let fm = FileManager.default
            try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let old = (try fm.contentsOfDirectory(atPath: directory)).filter { $0.contains("tfevents") }.sorted()
            var kept: [Scalar] = []
            if step > 0 {
                for name in old { kept += (try? TensorBoard.read(directory + "/" + name))?.filter { $0.step <= step } ?? [] }
            }
            let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "host"
            var stamp = Int(Date().timeIntervalSince1970)
            // A fresh name even when a resume lands within the same second as its predecessor.
            while old.contains(where: { $0.hasPrefix("events.out.tfevents.\(stamp).") }) { stamp += 1 }
            path = directory + "/events.out.tfevents.\(stamp).\(host).\(getpid())"
            guard fm.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
                throw ConfigError(flag: "--out", problem: "cannot write \(path)", fix: "choose a writable run directory")
            }
            handle = h
            var header = Protobuf()
            header.double(1, Date().timeIntervalSince1970)
            header.string(3, TensorBoard.fileVersion)
            handle.write(TensorBoard.record(header.bytes))
            for s in kept { write(step: s.step, [(s.tag, Double(s.value))], wallTime: s.wallTime) }
            for name in old { try? fm.removeItem(atPath: directory + "/" + name) }
        }

        /// One event holding `scalars` at `step`.
        public func write(step: Int, _ scalars: [(tag: String, value: Double)], wallTime: Double = Date().timeIntervalSince1970) {
            guard !scalars.isEmpty else { return }
            var summary = Protobuf()
            for (tag, value) in scalars {
                var v = Protobuf()
                v.string(1, tag)
                v.float(2, Float(value))
                summary.message(1, v)
            }
            var event = Protobuf()
            event.double(1, wallTime)
            event.varint(2, UInt64(bitPattern: Int64(step)))
            event.message(5, summary)
            handle.write(TensorBoard.record(event.bytes))
        }

        deinit { try? handle.close() }
    }

    /// A TFRecord: payload length, masked CRC-32C of the length bytes, payload, masked CRC-32C.
    static func record(_ payload: [UInt8]) -> Data {
        var out = Data(capacity: payload.count + 16)
        var length = [UInt8](repeating: 0, count: 8)
        for i in 0..<8 { length[i] = UInt8(truncatingIfNeeded: UInt64(payload.count) >> (8 * UInt64(i))) }
        out.append(contentsOf: length)
        out.append(contentsOf: littleEndian(masked(CRC32C.checksum(length))))
        out.append(contentsOf: payload)
        out.append(contentsOf: littleEndian(masked(CRC32C.checksum(payload))))
        return out
    }

    /// TFRecord's CRC masking: rotate right by 15 and add a constant (a CRC of data that
    /// contains CRCs is otherwise weak).
    static func masked(_ crc: UInt32) -> UInt32 { ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8 }

    static func littleEndian(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }

    // MARK: Reading

    /// Every scalar of an event file, checking each record's CRCs (the check a test makes of
    /// what `Writer` wrote; TensorBoard's own reader is the other).
    public static func read(_ path: String) throws -> [Scalar] {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        func bad(_ why: String) -> Error {
            ConfigError(flag: "event file", problem: "\(path) is damaged: \(why)", fix: "it was not written by tessera, or was cut short")
        }
        func u32(_ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(bytes[at + $1]) << (8 * UInt32($1)) } }
        var scalars: [Scalar] = [], at = 0
        while at < bytes.count {
            guard at + 12 <= bytes.count else { throw bad("a record header is cut short at byte \(at)") }
            let header = Array(bytes[at..<(at + 8)])
            let n = Int(header.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
            guard masked(CRC32C.checksum(header)) == u32(at + 8) else { throw bad("length CRC mismatch at byte \(at)") }
            guard n <= bytes.count - at - 16 else { throw bad("a record at byte \(at) runs past the end") }
            let payload = Array(bytes[(at + 12)..<(at + 12 + n)])
            guard masked(CRC32C.checksum(payload)) == u32(at + 12 + n) else { throw bad("payload CRC mismatch at byte \(at)") }
            at += 16 + n
            var step = 0, wall = 0.0, values: [(String, Float)] = []
            for field in try Protobuf.fields(payload) {
                switch (field.number, field.value) {
                case (1, .fixed64(let v)): wall = Double(bitPattern: v)
                case (2, .varint(let v)): step = Int(Int64(bitPattern: v))
                case (5, .bytes(let summary)):
                    for value in try Protobuf.fields(summary) where value.number == 1 {
                        guard case .bytes(let v) = value.value else { continue }
                        var tag = "", x: Float?
                        for f in try Protobuf.fields(v) {
                            if f.number == 1, case .bytes(let t) = f.value { tag = String(decoding: t, as: UTF8.self) }
                            if f.number == 2, case .fixed32(let b) = f.value { x = Float(bitPattern: b) }
                        }
                        if let x { values.append((tag, x)) }
                    }
                default: continue
                }
            }
            scalars += values.map { Scalar(step: step, tag: $0.0, value: $0.1, wallTime: wall) }
        }
        return scalars
    }
}

// MARK: - Protocol buffers (the wire format, just what events use)

struct Protobuf {
    private(set) var bytes: [UInt8] = []

    enum Value { case varint(UInt64), fixed64(UInt64), bytes([UInt8]), fixed32(UInt32) }

    mutating func key(_ field: Int, _ wire: Int) { appendVarint(UInt64(field << 3 | wire)) }
    mutating func appendVarint(_ v: UInt64) {
        var v = v
        while v >= 0x80 { bytes.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
        bytes.append(UInt8(v))
    }
    mutating func varint(_ field: Int, _ v: UInt64) { key(field, 0); appendVarint(v) }
    mutating func double(_ field: Int, _ v: Double) {
        key(field, 1)
        for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v.bitPattern >> (8 * UInt64(i)))) }
    }
    mutating func float(_ field: Int, _ v: Float) { key(field, 5); bytes += TensorBoard.littleEndian(v.bitPattern) }
    mutating func string(_ field: Int, _ s: String) { key(field, 2); appendVarint(UInt64(s.utf8.count)); bytes += Array(s.utf8) }
    mutating func message(_ field: Int, _ m: Protobuf) { key(field, 2); appendVarint(UInt64(m.bytes.count)); bytes += m.bytes }

    /// The fields of one message, in order.
    static func fields(_ b: [UInt8]) throws -> [(number: Int, value: Value)] {
        struct Malformed: Error {}
        var out: [(Int, Value)] = [], i = 0
        func varint() throws -> UInt64 {
            var v: UInt64 = 0, shift: UInt64 = 0
            while true {
                guard i < b.count, shift < 64 else { throw Malformed() }
                let byte = b[i]; i += 1
                v |= UInt64(byte & 0x7F) << shift
                if byte < 0x80 { return v }
                shift += 7
            }
        }
        func take(_ n: Int) throws -> [UInt8] {
            guard n >= 0, n <= b.count - i else { throw Malformed() }
            defer { i += n }
            return Array(b[i..<(i + n)])
        }
        while i < b.count {
            let k = try varint()
            let number = Int(k >> 3)
            switch k & 7 {
            case 0: out.append((number, .varint(try varint())))
            case 1: out.append((number, .fixed64(try take(8).reversed().reduce(0) { $0 << 8 | UInt64($1) })))
            case 2: out.append((number, .bytes(try take(Int(try varint())))))
            case 5: out.append((number, .fixed32(try take(4).reversed().reduce(0) { $0 << 8 | UInt32($1) })))
            default: throw Malformed()
            }
        }
        return out
    }
}

// MARK: - CRC-32C

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum TFRecord uses.
public enum CRC32C {
    static let table: [UInt32] = (0..<256).map { i in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? 0x82F6_3B78 ^ (c >> 1) : c >> 1 }
        return c
    }

    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }
}

import Foundation
import Settings

// MARK: - Manifest integrity
//
// A manifest is sealed with a CRC-32 of its own bytes: the file holds
// `"checksum": "crc32:XXXXXXXX"`, and the checksum is taken over the file as written with
// those eight digits replaced by zeros. Any edit of any value changes the bytes and is
// refused on every read. Then every count, size, name and offset is checked against the
// others and against this machine's memory before anything is allocated from them, so a
// hostile manifest cannot make tessera read outside the checkpoint directory, allocate
// terabytes or crash.

public enum ManifestSeal {
    public static let placeholder = "00000000"

    /// `json` (an encoding of a manifest whose `checksum` is `crc32:00000000`) with the real
    /// checksum written in.
    public static func seal(_ json: Data) -> Data {
        guard let at = range(in: json) else { preconditionFailure("manifest encoding lacks the checksum field") }
        let crc = json.withUnsafeBytes { CRC32.checksum($0) }
        var out = json
        out.replaceSubrange(at, with: Data(String(format: "%08x", crc).utf8))
        return out
    }

    /// Whether `json` carries a checksum, and if so whether it matches.
    static func check(_ json: Data) -> (sealed: Bool, valid: Bool) {
        guard let at = range(in: json) else { return (false, false) }
        let recorded = String(decoding: json[at], as: UTF8.self)
        var zeroed = json
        zeroed.replaceSubrange(at, with: Data(placeholder.utf8))
        let crc = zeroed.withUnsafeBytes { CRC32.checksum($0) }
        return (true, recorded == String(format: "%08x", crc))
    }

    /// The eight hex digits of `"checksum": "crc32:XXXXXXXX"` (any spacing around the colon).
    private static func range(in json: Data) -> Range<Data.Index>? {
        guard let key = json.range(of: Data("\"checksum\"".utf8)) else { return nil }
        var i = key.upperBound
        func skipSpaces() { while i < json.endIndex, json[i] == 0x20 || json[i] == 0x0A || json[i] == 0x09 { i += 1 } }
        skipSpaces()
        guard i < json.endIndex, json[i] == UInt8(ascii: ":") else { return nil }
        i += 1
        skipSpaces()
        let prefix = Data("\"crc32:".utf8)
        guard json[i...].starts(with: prefix) else { return nil }
        let start = i + prefix.count, end = start + placeholder.count
        guard end <= json.endIndex else { return nil }
        return start..<end
    }
}

extension Manifest {
    /// Largest world size, tensor rank and model dimension a manifest may claim.
    static let limits = (world: 1 << 20, dimension: 1 << 24, fileBytes: 1 << 50)

    /// Checks that every field is consistent with the others and fits this machine, so the
    /// readers can trust them; `path` names the manifest in errors.
    func validate(path: String) throws {
        func need(_ ok: Bool, _ problem: @autoclosure () -> String) throws {
            if !ok { throw CheckpointError(path, "manifest is invalid: \(problem())", "resume from another checkpoint") }
        }
        try need(step >= 0 && scheduleStep >= 0 && adamStep >= 0 && dataPosition >= 0 && skippedSteps >= 0,
                 "negative step counters")
        try need(adamStep <= scheduleStep, "adamStep \(adamStep) exceeds scheduleStep \(scheduleStep)")
        try need(ZeroStage(rawValue: zeroStage) != nil, "zeroStage \(zeroStage) is not 0-3")
        try need(Precision(rawValue: precision) != nil, "precision '\(precision)' is not fp32, bf16 or fp16")
        try need((1...22).contains(compressionLevel), "compressionLevel \(compressionLevel) is not a zstd level")
        try need((1...Self.limits.world).contains(worldSize), "worldSize \(worldSize) is out of range")
        try need(parameterCount >= 1, "parameterCount \(parameterCount) is not positive")
        // Every reader holds at least one full vector (4 bytes per element) in memory.
        let physical = Int(sysconf(Int32(_SC_PHYS_PAGES))) * Int(sysconf(Int32(_SC_PAGESIZE)))
        let (bytes, overflow) = parameterCount.multipliedReportingOverflow(by: 4)
        try need(!overflow && bytes <= physical,
                 "parameterCount \(parameterCount) needs \(overflow ? "more than 2^63" : String(bytes)) bytes per vector, "
                    + "more than this machine's \(physical) bytes of memory")
        // Tensors tile the flat vector in order.
        var next = 0
        for t in tensors {
            try need(!t.shape.isEmpty && t.shape.count <= 4 && t.shape.allSatisfy { (1...Self.limits.dimension).contains($0) },
                     "tensor \(t.name) has shape \(t.shape)")
            let count = t.shape.reduce(1, *)
            try need(t.offset == next, "tensor \(t.name) starts at \(t.offset), not \(next)")
            next += count
            try need(next <= parameterCount, "tensor \(t.name) ends past parameterCount \(parameterCount)")
        }
        try need(next == parameterCount, "tensors hold \(next) elements, parameterCount says \(parameterCount)")
        // Files: exactly this world's rank files, named as the store names them.
        try need(files.count == worldSize, "\(files.count) files for worldSize \(worldSize)")
        let vectors = Set(StateVector.allCases.map(\.rawValue))
        for (r, f) in files.enumerated() {
            let expected = CheckpointStore.fileName(rank: r, world: worldSize)
            try need(f.rank == r && f.file == expected, "file entry \(r) is '\(f.file)' (rank \(f.rank)), expected '\(expected)'")
            try need((0...Self.limits.fileBytes).contains(f.bytes), "file \(f.file) claims \(f.bytes) bytes")
            for fr in f.frames {
                try need(vectors.contains(fr.vector), "file \(f.file) has a frame of unknown vector '\(fr.vector)'")
                try need(fr.start >= 0 && fr.count >= 0 && fr.start <= parameterCount && fr.count <= parameterCount - fr.start,
                         "file \(f.file) has a \(fr.vector) frame \(fr.start)+\(fr.count) outside \(parameterCount) elements")
                try need(fr.offset >= 0 && fr.length >= 0 && fr.offset <= f.bytes && fr.length <= f.bytes - fr.offset,
                         "file \(f.file) has a frame at bytes \(fr.offset)+\(fr.length) outside its \(f.bytes) bytes")
            }
        }
        for (key, value) in model {
            guard ["nLayer", "nHead", "nEmbd", "blockSize", "vocabSize"].contains(key) else { continue }
            var ok = false
            if case .unsigned(let u) = value { ok = (1...UInt64(Self.limits.dimension)).contains(u) }
            try need(ok, "model.\(key) is \(value)")
        }
    }
}


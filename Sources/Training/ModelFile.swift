import Checkpoint
import Corpus
import Foundation
import Kernels
import Model

// MARK: - ModelFile
//
// The trained weights of a run, for inspection and sampling (not a resumable checkpoint:
// it has no optimizer state). Layout:
//   bytes 0..<8   magic "TSRAMDL\0"
//   bytes 8..<16  little-endian UInt64 length H of the JSON header
//   H bytes       JSON: {"config": GPTConfig, "tokenizer": Tokenizer, "count": Int}
//   4·count bytes fp32 parameters in ParameterLayout order, little-endian
//   16 bytes      trailer: "TSRACRC\0", the CRC-32 of the header and parameters (everything
//                 before the trailer), 4 zero bytes. Files written before the trailer existed
//                 end after the parameters and are read unchecked.

/// Weights plus what is needed to use them.
public struct ModelFile {
    static let magic: [UInt8] = Array("TSRAMDL".utf8) + [0]
    static let trailerMagic: [UInt8] = Array("TSRACRC".utf8) + [0]
    static let trailerSize = 16
    struct Header: Codable { var config: GPTConfig; var tokenizer: Tokenizer?; var count: Int }

    public let config: GPTConfig
    public let tokenizer: Tokenizer?
    public let parameters: FloatBuffer

    public init(config: GPTConfig, tokenizer: Tokenizer?, parameters: FloatBuffer) {
        self.config = config; self.tokenizer = tokenizer; self.parameters = parameters
    }

    /// Writes atomically (temporary file, then rename).
    public func write(to path: String) throws {
        let w = try Writer(path: path, config: config, tokenizer: tokenizer, count: parameters.count)
        try w.append(parameters.pointer, count: parameters.count)
        try w.finish()
    }

    /// Writes a model file piece by piece, so no full copy of the parameters is needed: a
    /// temporary file, renamed over `path` when complete.
    public final class Writer {
        let path: String, temporary: String, count: Int
        private let handle: FileHandle
        private var written = 0
        private var crc = CRC32()

        /// Starts the file with its header.
        public init(path: String, config: GPTConfig, tokenizer: Tokenizer?, count: Int) throws {
            self.path = path; self.count = count
            temporary = path + ".partial-\(ProcessInfo.processInfo.processIdentifier)"
            let enc = JSONEncoder(); enc.outputFormatting = [.sortedKeys]
            let header = try enc.encode(Header(config: config, tokenizer: tokenizer, count: count))
            var d = Data(ModelFile.magic)
            withUnsafeBytes(of: UInt64(header.count).littleEndian) { d.append(contentsOf: $0) }
            d.append(header)
            var sum = CRC32()
            d.withUnsafeBytes { sum.update($0) }
            crc = sum
            guard FileManager.default.createFile(atPath: temporary, contents: d) else {
                throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: temporary])
            }
            handle = try FileHandle(forWritingTo: URL(fileURLWithPath: temporary))
            try handle.seekToEnd()
        }

        /// Appends the next `n` parameters.
        public func append(_ values: UnsafePointer<Float>, count n: Int) throws {
            crc.update(UnsafeRawBufferPointer(start: values, count: 4 * n))
            try handle.write(contentsOf: Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: values), count: 4 * n, deallocator: .none))
            written += n
        }

        /// Checks every parameter was written and moves the file into place.
        public func finish() throws {
            precondition(written == count, "model file: \(written) of \(count) parameters written")
            var trailer = Data(ModelFile.trailerMagic)
            withUnsafeBytes(of: crc.value.littleEndian) { trailer.append(contentsOf: $0) }
            trailer.append(contentsOf: [0, 0, 0, 0])
            try handle.write(contentsOf: trailer)
            try handle.synchronize()
            try handle.close()
            if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
            try FileManager.default.moveItem(atPath: temporary, toPath: path)
        }
    }

    /// Reads and checks a model file.
    public static func read(from path: String) throws -> ModelFile {
        guard let d = FileManager.default.contents(atPath: path) else {
            throw DataError.missing(path: path, fix: "pass the model.bin a training run wrote")
        }
        guard d.count >= 16, Array(d.prefix(8)) == magic else {
            throw DataError.invalid(path: path, problem: "not a tessera model file", fix: "pass the model.bin a training run wrote")
        }
        // Sizes from the file are checked before any arithmetic that could overflow on them.
        let length = d.subdata(in: 8..<16).withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard length <= UInt64(d.count - 16), case let h = Int(length),
              let header = try? JSONDecoder().decode(Header.self, from: d.subdata(in: 16..<(16 + h))) else {
            throw DataError.invalid(path: path, problem: "header is damaged", fix: "write it again: tessera generate --checkpoint RUN reads the run's checkpoint instead")
        }
        var body = d.count - 16 - h
        if body >= Self.trailerSize, Array(d.suffix(Self.trailerSize).prefix(8)) == Self.trailerMagic {
            body -= Self.trailerSize
            let stored = d.subdata(in: (d.count - 8)..<(d.count - 4)).withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }
            let actual = d.withUnsafeBytes { CRC32.checksum(UnsafeRawBufferPointer(rebasing: $0[0..<(d.count - Self.trailerSize)])) }
            guard d.suffix(4).allSatisfy({ $0 == 0 }) else {
                throw DataError.invalid(path: path, problem: "checksum trailer is damaged (corrupted)",
                                        fix: "write it again: tessera generate --checkpoint RUN reads the run's checkpoint instead")
            }
            guard stored == actual else {
                throw DataError.invalid(path: path, problem: "checksum \(String(actual, radix: 16)) does not match the file's \(String(stored, radix: 16)) (corrupted)",
                                        fix: "write it again: tessera generate --checkpoint RUN reads the run's checkpoint instead")
            }
        }
        guard header.count >= 1, body % 4 == 0, header.count == body / 4, (try? header.config.validate()) != nil,
              header.count == ParameterLayout(header.config).count else {
            throw DataError.invalid(path: path, problem: "size does not match its header (truncated?)", fix: "write it again: tessera generate --checkpoint RUN reads the run's checkpoint instead")
        }
        let buf = FloatBuffer(count: header.count)
        d.withUnsafeBytes { raw in
            UnsafeMutableRawPointer(buf.pointer).copyMemory(from: raw.baseAddress! + 16 + h, byteCount: 4 * header.count)
        }
        return ModelFile(config: header.config, tokenizer: header.tokenizer, parameters: buf)
    }
}

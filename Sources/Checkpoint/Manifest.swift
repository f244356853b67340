// MARK: - Manifest
//
// `manifest.json` describes one committed checkpoint and is its commit marker: a step
// directory without it was never completed.

/// One compressed piece of a flat state vector inside a rank file.
public struct Frame: Codable, Equatable, Sendable {
    /// Which state vector (a `StateVector` raw value).
    public var vector: String
    /// First element of the vector held by this frame, and how many.
    public var start: Int, count: Int
    /// Byte range in the file.
    public var offset: Int, length: Int
    public init(vector: String, start: Int, count: Int, offset: Int, length: Int) {
        self.vector = vector; self.start = start; self.count = count; self.offset = offset; self.length = length
    }
}

/// One data file (one per saving rank).
public struct ShardFileEntry: Codable, Equatable, Sendable {
    public var file: String
    public var rank: Int
    public var bytes: Int
    public var crc32: UInt32
    public var frames: [Frame]
    public init(file: String, rank: Int, bytes: Int, crc32: UInt32, frames: [Frame]) {
        self.file = file; self.rank = rank; self.bytes = bytes; self.crc32 = crc32; self.frames = frames
    }
}

/// A model tensor as the flat vectors hold it.
public struct TensorEntry: Codable, Equatable, Sendable {
    public var name: String
    public var shape: [Int]
    public var dtype: String
    /// Offset in every flat vector (params, adam.m, adam.v share the layout).
    public var offset: Int
    public init(name: String, shape: [Int], dtype: String, offset: Int) {
        self.name = name; self.shape = shape; self.dtype = dtype; self.offset = offset
    }
}

/// Everything needed to resume.
public struct Manifest: Codable, Equatable, Sendable {
    /// Bumped on incompatible changes; readers refuse newer versions. Version 2 adds the
    /// manifest's own checksum (version 1 manifests are read without one).
    public static let currentVersion = 2

    public var formatVersion: Int
    /// Completed optimizer steps (the next step to run).
    public var step: Int
    /// The run's configuration, as `RUN/config.json` holds it.
    public var config: [String: JSONValue]
    /// Model shape with the vocabulary (what the parameters mean).
    public var model: [String: JSONValue]
    public var worldSize: Int
    public var zeroStage: Int
    public var precision: String
    /// Elements per flat vector (Ψ).
    public var parameterCount: Int
    /// Data-loader position: batches are a pure function of (seed, step, sample), so the
    /// position is the step; recorded explicitly for readers.
    public var dataPosition: Int
    /// Random state: the run seed drives initialisation and batches (counter-based, no
    /// stream position to save).
    public var seed: UInt64
    /// Learning-rate schedule position (optimizer steps taken).
    public var scheduleStep: Int
    /// AdamW update count (bias correction).
    public var adamStep: Int
    /// Dynamic loss scaler (fp16), if any.
    public var lossScale: Double?
    public var lossScaleGoodSteps: Int?
    public var skippedSteps: Int
    public var compressionLevel: Int
    /// The tokenizer the run was trained with (its JSON), so the checkpoint alone can sample.
    public var tokenizer: String?
    public var tensors: [TensorEntry]
    public var files: [ShardFileEntry]
    /// `crc32:` and the CRC-32 of this file as written, with these digits zeroed (see
    /// `ManifestSeal`); absent in version 1.
    public var checksum: String?

    public init(formatVersion: Int, step: Int, config: [String: JSONValue], model: [String: JSONValue], worldSize: Int,
                zeroStage: Int, precision: String, parameterCount: Int, dataPosition: Int, seed: UInt64, scheduleStep: Int,
                adamStep: Int, lossScale: Double?, lossScaleGoodSteps: Int?, skippedSteps: Int, compressionLevel: Int,
                tensors: [TensorEntry], files: [ShardFileEntry]) {
        self.formatVersion = formatVersion; self.step = step; self.config = config; self.model = model
        self.worldSize = worldSize; self.zeroStage = zeroStage; self.precision = precision
        self.parameterCount = parameterCount; self.dataPosition = dataPosition; self.seed = seed
        self.scheduleStep = scheduleStep; self.adamStep = adamStep; self.lossScale = lossScale
        self.lossScaleGoodSteps = lossScaleGoodSteps; self.skippedSteps = skippedSteps
        self.compressionLevel = compressionLevel; self.tensors = tensors; self.files = files
        tokenizer = nil
    }
}

/// A minimal JSON value so the manifest can embed configs without this module knowing them.
public enum JSONValue: Codable, Equatable, Sendable {
    case unsigned(UInt64), signed(Int64), number(Double), string(String), bool(Bool), null

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let u = try? c.decode(UInt64.self) { self = .unsigned(u) }
        else if let i = try? c.decode(Int64.self) { self = .signed(i) }
        else if let d = try? c.decode(Double.self) { self = .number(d) }
        else { self = .string(try c.decode(String.self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .unsigned(let u): try c.encode(u)
        case .signed(let i): try c.encode(i)
        case .number(let d): try c.encode(d)
        case .string(let s): try c.encode(s)
        case .bool(let b): try c.encode(b)
        case .null: try c.encodeNil()
        }
    }
}

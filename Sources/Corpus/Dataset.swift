import Foundation
import Kernels

// MARK: - Dataset

/// A prepared data directory: `train.bin`, `val.bin` and `tokenizer.json`.
public struct Dataset: Sendable {
    /// Which split to draw from.
    public enum Split: UInt64, Sendable { case train = 1, val = 2 }

    /// Training tokens.
    public let train: TokenShard
    /// Validation tokens.
    public let val: TokenShard
    /// The tokenizer the shards were written with.
    public let tokenizer: Tokenizer

    /// Wraps shards already in memory.
    public init(train: TokenShard, val: TokenShard, tokenizer: Tokenizer) {
        self.train = train; self.val = val; self.tokenizer = tokenizer
    }

    /// Uniformly random tokens over `vocab` ids (benchmarks: timing does not depend on text).
    public static func synthetic(vocab: Int, tokens: Int, seed: UInt64) -> Dataset {
        var rng = SplitMix64(seed: seed)
        let t = (0..<tokens).map { _ in UInt16(rng.next(below: vocab)) }
        let v = (0..<max(tokens / 10, 1)).map { _ in UInt16(rng.next(below: vocab)) }
        let tok = Tokenizer(kind: .char, symbols: (0..<vocab).map { String(UnicodeScalar(0x4E00 + $0)!) })
        return Dataset(train: TokenShard(tokens: t, vocabSize: vocab), val: TokenShard(tokens: v, vocabSize: vocab), tokenizer: tok)
    }

    /// File names inside a data directory.
    public static let trainFile = "train.bin", valFile = "val.bin", tokenizerFile = "tokenizer.json"

    /// Loads and validates a data directory.
    public static func load(directory: String) throws(DataError) -> Dataset {
        let dir = URL(fileURLWithPath: directory)
        let tokenizer = try Self.tokenizer(directory: directory)
        let train = try TokenShard.read(from: dir.appendingPathComponent(trainFile))
        let val = try TokenShard.read(from: dir.appendingPathComponent(valFile))
        for (shard, name) in [(train, trainFile), (val, valFile)] where shard.vocabSize != tokenizer.vocabSize {
            throw DataError.malformed(path: dir.appendingPathComponent(name).path,
                                      problem: "written with vocabulary \(shard.vocabSize) but tokenizer.json has \(tokenizer.vocabSize)")
        }
        return Dataset(train: train, val: val, tokenizer: tokenizer)
    }

    /// The tokenizer of a prepared directory, read without its token shards.
    public static func tokenizer(directory: String) throws(DataError) -> Tokenizer {
        let dir = URL(fileURLWithPath: directory)
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir.path, isDirectory: &isDir), isDir.boolValue else {
            throw DataError.missing(path: dir.path,
                                    fix: "pass a directory written by `tessera prepare --input TEXT --out DIR`")
        }
        let tokURL = dir.appendingPathComponent(tokenizerFile)
        guard let tokData = try? Data(contentsOf: tokURL) else {
            throw DataError.missing(path: tokURL.path, fix: "re-run `tessera prepare` for this directory")
        }
        guard let tokenizer = try? JSONDecoder().decode(Tokenizer.self, from: tokData) else {
            throw DataError.malformed(path: tokURL.path, problem: "not a tessera tokenizer description")
        }
        return tokenizer
    }

    /// Bytes of the token shards of a prepared directory (what loading them holds).
    public static func shardBytes(directory: String) -> Int {
        [trainFile, valFile].reduce(0) { total, name in
            let path = URL(fileURLWithPath: directory).appendingPathComponent(name).path
            return total + ((try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0)
        }
    }

    /// The shard for a split.
    public func shard(_ split: Split) -> TokenShard { split == .train ? train : val }

    /// Largest token id present in both splits plus one.
    public var observedVocab: Int {
        Int(max(train.tokens.max() ?? 0, val.tokens.max() ?? 0)) + 1
    }
}

// MARK: - Batch sampling

/// Where sample `index` of batch `batch` starts: a counter-based hash of (seed, split, batch,
/// index), uniform over the valid window starts, as nanoGPT's `get_batch` draws them.
///
/// Because the start depends only on those four numbers, every rank computes its own samples
/// without communication, any world size sees the same global batch, and resuming at step k
/// needs no saved sampler state beyond k.
public struct BatchSampler: Sendable {
    /// Seed of the run.
    public let seed: UInt64
    /// Window length.
    public let blockSize: Int

    /// Creates a sampler.
    public init(seed: UInt64, blockSize: Int) {
        self.seed = seed
        self.blockSize = blockSize
    }

    /// Start offset of one window.
    public func start(split: Dataset.Split, batch: Int, index: Int, tokens: Int) -> Int {
        let windows = tokens - blockSize
        precondition(windows > 0)
        let h = SplitMix64.hash(seed, split.rawValue, UInt64(batch), UInt64(index))
        return Int(h % UInt64(windows))
    }

    /// Fills `x` and `y` (each `indices.count × blockSize`) with inputs and next-token targets.
    public func fill(x: UnsafeMutablePointer<Int32>, y: UnsafeMutablePointer<Int32>,
                     shard: TokenShard, split: Dataset.Split, batch: Int, indices: some Collection<Int>) {
        let T = blockSize
        shard.tokens.withUnsafeBufferPointer { tok in
            for (row, i) in indices.enumerated() {
                let s = start(split: split, batch: batch, index: i, tokens: tok.count)
                for t in 0..<T {
                    x[row * T + t] = Int32(tok[s + t])
                    y[row * T + t] = Int32(tok[s + t + 1])
                }
            }
        }
    }
}

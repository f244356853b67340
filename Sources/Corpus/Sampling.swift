import Kernels

// MARK: - Batch sampling

/// How windows are drawn from a split.
public enum Sampling: String, Codable, Sendable, CaseIterable {
    /// nanoGPT's `get_batch`: each window starts at a random token.
    case random
    /// llm.c's pass over the shards: consecutive non-overlapping windows, shard after shard,
    /// starting over (a new epoch) at the end.
    case sequential
}

/// Which window row `index` of global batch `batch` reads, as a pure function of those two
/// numbers and the seed, so every rank fills its own rows without communication, any world
/// size sees the same global batch, and resuming at step k needs no saved position.
///
/// Windows never cross a shard boundary. `random`: a counter-based hash of (seed, split,
/// batch, index), uniform over all valid starts (with one shard, nanoGPT's draw). `sequential`:
/// global row `batch × batchSize + index` of the stream of `blockSize`-token windows; each rank
/// takes its interleaved rows of every batch.
public struct BatchSampler: Sendable {
    /// Seed of the run.
    public let seed: UInt64
    /// Window length.
    public let blockSize: Int
    /// Rows of one global batch.
    public let batchSize: Int
    /// How windows are drawn.
    public let mode: Sampling
    /// Whether windows start only at multiples of `blockSize` (packed rows); random draws
    /// then pick a row.
    public let rowAligned: Bool

    /// Creates a sampler.
    public init(seed: UInt64, blockSize: Int, batchSize: Int = 1, mode: Sampling = .random, rowAligned: Bool = false) {
        self.seed = seed; self.blockSize = blockSize; self.batchSize = batchSize; self.mode = mode; self.rowAligned = rowAligned
    }

    /// Valid random window starts in a shard (rows, when aligned).
    private func randomStarts(_ s: TokenShard) -> Int { rowAligned ? sequentialWindows(s) : max(0, s.count - blockSize) }
    /// Non-overlapping windows (with their one extra target token) in a shard.
    private func sequentialWindows(_ s: TokenShard) -> Int { max(0, (s.count - 1) / blockSize) }

    /// Windows a split offers (0: too short for one window).
    public func windows(in split: TokenSplit) -> Int {
        split.shards.reduce(0) { $0 + (mode == .random ? randomStarts($1) : sequentialWindows($1)) }
    }

    /// Shard and first token of one window. In a mixture, the blend names the sample's source
    /// and the window is drawn from that source alone: at random, or its next one in order.
    public func window(in split: TokenSplit, which: Dataset.Split, batch: Int, index: Int) -> (TokenShard, Int) {
        var part = split, n = batch * batchSize + index
        if let mixture = split.mixture {
            let (i, k) = mixture.blend.source(of: n)
            part = mixture.sources[i]
            n = k
        }
        let total = windows(in: part)
        precondition(total > 0)
        switch mode {
        case .random:
            let h = SplitMix64.hash(seed, which.rawValue, UInt64(batch), UInt64(index))
            let (shard, start) = part.locate(Int(h % UInt64(total)), perShard: randomStarts)
            return (shard, rowAligned ? start * blockSize : start)
        case .sequential:
            let (shard, w) = part.locate(n % total, perShard: sequentialWindows)
            return (shard, w * blockSize)
        }
    }

    /// Completed passes over the training split before `batch` (sequential sampling); in a
    /// mixture, over the source that has been repeated most.
    public func epoch(batch: Int, split: TokenSplit) -> Double {
        guard let mixture = split.mixture else {
            return Double(batch * batchSize) / Double(max(1, windows(in: split)))
        }
        return mixture.sources.indices.map {
            Double(mixture.blend.samples(of: $0, before: batch * batchSize)) / Double(max(1, windows(in: mixture.sources[$0])))
        }.max() ?? 0
    }

    /// Fills `x` and `y` (each `indices.count × blockSize`) with inputs and next-token targets
    /// (−1 where a loss mask says the target does not count), and hands the pages read back to
    /// the kernel. Throws on an id outside the vocabulary.
    public func fill(x: UnsafeMutablePointer<Int32>, y: UnsafeMutablePointer<Int32>, split: TokenSplit,
                     which: Dataset.Split, batch: Int, indices: some Collection<Int>, vocabSize: Int) throws(DataError) {
        let T = blockSize
        for (row, i) in indices.enumerated() {
            let (shard, s) = window(in: split, which: which, batch: batch, index: i)
            let top = shard.copy(from: s, count: T, into: x + row * T)
            let last = shard[s + T]
            (y + row * T).update(from: x + row * T + 1, count: T - 1)
            y[row * T + T - 1] = Int32(bitPattern: last)
            shard.maskTargets(y + row * T, first: s + 1, count: T)
            shard.release(from: s, count: T + 1)
            if Int(max(top, last)) >= vocabSize {
                throw DataError.invalid(path: shard.path, problem: "a window at token \(s) holds id \(max(top, last)), outside the vocabulary of \(vocabSize)",
                                        fix: "re-prepare the data, or pass the --vocab-size it was tokenized with")
            }
        }
    }
}

// MARK: - ShardLayout

/// How a flat buffer of `total` elements is split into `ranks` equal shards.
///
/// Every shard has `shardSize = ⌈total / ranks⌉` slots; the last shards are partly or wholly
/// padding, which is allocated (so equal-block collectives work) but never read by the math.
public struct ShardLayout: Equatable, Sendable {
    /// Elements of the real buffer (Ψ).
    public let total: Int
    /// Number of shards (world size).
    public let ranks: Int
    /// Slots per shard.
    public let shardSize: Int
    /// This rank.
    public let rank: Int

    /// Splits `total` over `ranks`.
    public init(total: Int, ranks: Int, rank: Int) {
        self.total = total; self.ranks = ranks; self.rank = rank
        shardSize = (total + ranks - 1) / ranks
    }

    /// Total slots including padding.
    public var padded: Int { shardSize * ranks }
    /// Real elements owned by rank `r`.
    public func shard(of r: Int) -> Range<Int> { min(r * shardSize, total)..<min((r + 1) * shardSize, total) }
    /// Real elements owned by this rank.
    public var mine: Range<Int> { shard(of: rank) }

    /// How many elements of `range` each rank owns, in rank order. Shards are contiguous and
    /// ascending, so these pieces tile `range` in order: the counts of a V collective.
    public func pieces(of range: Range<Int>) -> [Int] {
        (0..<ranks).map { r in
            let s = shard(of: r)
            return max(0, min(s.upperBound, range.upperBound) - max(s.lowerBound, range.lowerBound))
        }
    }

    /// The part of `range` this rank owns.
    public func myPart(of range: Range<Int>) -> Range<Int> {
        let s = mine
        let lo = max(s.lowerBound, range.lowerBound), hi = min(s.upperBound, range.upperBound)
        return lo < hi ? lo..<hi : s.lowerBound..<s.lowerBound
    }
}

// MARK: - DecayMask

/// Which ranges of the flat buffer receive weight decay.
///
/// Built from the parameter layout (2-D tensors decay, vectors do not) without depending on
/// the Model module: callers pass `(range, decays)` pairs in buffer order.
public struct DecayMask: Sendable {
    /// Contiguous segments covering the buffer, in order.
    public let segments: [(range: Range<Int>, decays: Bool)]

    /// Merges adjacent segments with the same flag.
    public init(_ pieces: [(range: Range<Int>, decays: Bool)]) {
        var merged: [(range: Range<Int>, decays: Bool)] = []
        for p in pieces {
            if let last = merged.last, last.decays == p.decays, last.range.upperBound == p.range.lowerBound {
                merged[merged.count - 1] = (last.range.lowerBound..<p.range.upperBound, p.decays)
            } else {
                merged.append(p)
            }
        }
        segments = merged
    }

    /// Calls `body` for each piece of `range` with its decay flag.
    public func forEach(in range: Range<Int>, _ body: (Range<Int>, Bool) -> Void) {
        for s in segments {
            let lo = max(s.range.lowerBound, range.lowerBound)
            let hi = min(s.range.upperBound, range.upperBound)
            if lo < hi { body(lo..<hi, s.decays) }
        }
    }
}

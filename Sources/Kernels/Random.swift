// MARK: - Deterministic random numbers

/// SplitMix64: a tiny, well-mixed 64-bit generator. Used both as a stream and, through
/// `mix(_:)`, as a counter-based hash so that any (seed, step, sample) triple maps to the same
/// value on any rank and at any world size.
public struct SplitMix64: Sendable {
    /// Current state; saving and restoring it reproduces the stream exactly.
    public var state: UInt64

    /// Creates a generator from a seed.
    public init(seed: UInt64) { state = seed }

    /// The SplitMix64 finaliser applied to one value: a stateless hash.
    @inlinable public static func mix(_ value: UInt64) -> UInt64 {
        var z = value &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Hash of several words, order-sensitive.
    @inlinable public static func hash(_ words: UInt64...) -> UInt64 {
        var h: UInt64 = 0x6A09_E667_F3BC_C908
        for w in words { h = mix(h ^ mix(w)) }
        return h
    }

    /// Next 64 random bits.
    @inlinable public mutating func next() -> UInt64 {
        state = state &+ 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform double in [0, 1) with 53 random bits.
    @inlinable public mutating func nextUniform() -> Double {
        Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// Uniform integer in 0..<bound (bound > 0), unbiased by rejection.
    @inlinable public mutating func next(below bound: Int) -> Int {
        precondition(bound > 0)
        let b = UInt64(bound)
        let limit = UInt64.max - UInt64.max % b
        while true {
            let r = next()
            if r < limit { return Int(r % b) }
        }
    }

    /// Standard normal sample by the Box–Muller transform (one of the pair is used, so the
    /// stream position after n samples is always 2n words: easy to reason about on resume).
    @inlinable public mutating func nextNormal() -> Double {
        var u1 = nextUniform()
        if u1 < 1e-300 { u1 = 1e-300 }
        let u2 = nextUniform()
        return (-2.0 * _log(u1)).squareRoot() * _cos(2.0 * Double.pi * u2)
    }
}

@usableFromInline func _log(_ x: Double) -> Double { Foundation_log(x) }
@usableFromInline func _cos(_ x: Double) -> Double { Foundation_cos(x) }

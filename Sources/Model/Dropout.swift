import Kernels

// MARK: - Dropout

/// Dropout masks from a counter-based generator: whether an element is kept is a hash of
/// (its sequence's key, the site, the layer, its position), never a stream drawn in some
/// order. So the mask of an element is the same whichever rank, micro-batch, thread or
/// recomputation computes it, and backward regenerates forward's masks instead of storing
/// them. Sites are nanoGPT's: the embedding sum, the attention probabilities, and the
/// attention and MLP outputs before their residual adds.
public struct Dropout: Sendable {
    /// Probability of zeroing an element; kept elements are scaled by 1/(1 − p).
    public let p: Float
    /// Elements whose 24-bit hash is below this are dropped.
    let threshold: UInt32
    let scale: Float

    /// Where in the model a mask applies.
    public enum Site: UInt64, Sendable { case embedding = 1, attention = 2, attentionOutput = 3, mlpOutput = 4 }

    /// `p` in [0, 1).
    public init(p: Float) {
        precondition(p >= 0 && p < 1, "dropout probability \(p) is outside [0, 1)")
        self.p = p
        threshold = UInt32((Double(p) * Double(1 << 24)).rounded())
        scale = 1 / (1 - p)
    }

    /// One key per sequence of a global batch: a function of (seed, step, sample index), so a
    /// sample's masks do not depend on which rank or micro-batch holds it.
    public static func sequenceKey(seed: UInt64, step: Int, sample: Int) -> UInt64 {
        mix(mix(seed ^ 0xD1B5_4A32_D192_ED03) &+ UInt64(step) &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(sample))
    }

    /// SplitMix64's finaliser: a bijective 64-bit mix.
    @inline(__always) static func mix(_ x: UInt64) -> UInt64 {
        var z = x
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// The key of one (sequence, site, layer, head) stream of elements.
    @inline(__always) static func streamKey(_ sequence: UInt64, _ site: Site, layer: Int, head: Int = 0) -> UInt64 {
        mix(sequence ^ (site.rawValue << 56 | UInt64(layer) << 32 | UInt64(head)))
    }

    /// The mask factor of element `index` of a stream: 0 or 1/(1 − p).
    @inline(__always) func factor(_ stream: UInt64, _ index: Int) -> Float {
        UInt32(truncatingIfNeeded: Self.mix(stream &+ UInt64(index) &* 0x9E37_79B9_7F4A_7C15) >> 40) < threshold ? 0 : scale
    }

    /// Multiplies `x` (B×T×C) by its mask at `site` of `layer`: forward's dropout, and also
    /// backward's, which scales the gradient by the same factors.
    public func apply(_ x: UnsafeMutablePointer<Float>, B: Int, T: Int, C: Int, keys: UnsafePointer<UInt64>, site: Site, layer: Int) {
        let n = T * C
        ParallelFor.chunks(B * n, minimum: 16_384) { lo, hi in
            var i = lo
            while i < hi {
                let b = i / n, end = min(hi, (b + 1) * n)
                let stream = Self.streamKey(keys[b], site, layer: layer), first = b * n
                for j in i..<end { x[j] *= factor(stream, j - first) }
                i = end
            }
        }
    }
}

/// Dropout of one forward/backward pass: the probability and each sequence's key.
public struct DropoutPass {
    public let dropout: Dropout
    public let keys: UnsafePointer<UInt64>
    public init(dropout: Dropout, keys: UnsafePointer<UInt64>) { self.dropout = dropout; self.keys = keys }

    /// `x` (B×T×C) times its mask at `site` of `layer`.
    func apply(_ x: UnsafeMutablePointer<Float>, B: Int, T: Int, C: Int, site: Dropout.Site, layer: Int) {
        dropout.apply(x, B: B, T: T, C: C, keys: keys, site: site, layer: layer)
    }
}

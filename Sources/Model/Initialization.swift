import Kernels

// MARK: - Initialization

extension GPT {
    /// GPT-2 / nanoGPT initialisation of a full parameter buffer.
    ///
    /// Weights and embeddings ~ N(0, 0.02); the two residual projections of every block
    /// (`attn.c_proj`, `mlp.c_proj`) ~ N(0, 0.02/√(2·n_layer)); LayerNorm weights 1; biases 0.
    public static func initialize(_ params: UnsafeMutablePointer<Float>, layout: ParameterLayout,
                                  config: GPTConfig, seed: UInt64) {
        initialize(params, elements: 0..<layout.count, layout: layout, config: config, seed: seed)
    }

    /// Elements `range` of the initial parameter vector, into `out[0..<range.count]`.
    ///
    /// Each tensor draws from its own SplitMix64 stream seeded by (seed, tensor index), and
    /// every normal sample takes exactly two words of it, so element i of a tensor is drawn
    /// from the stream advanced by 2i: any range, on any rank, holds exactly the values of
    /// the full initialisation, and a sharded strategy initialises only its shard.
    public static func initialize(_ out: UnsafeMutablePointer<Float>, elements range: Range<Int>, layout: ParameterLayout,
                                  config: GPTConfig, seed: UInt64) {
        let residualStd = 0.02 / (2.0 * Double(config.nLayer)).squareRoot()
        for (index, spec) in layout.tensors.enumerated() {
            let lo = max(spec.offset, range.lowerBound), hi = min(spec.offset + spec.count, range.upperBound)
            guard lo < hi else { continue }
            let p = out + (lo - range.lowerBound), n = hi - lo, first = lo - spec.offset
            if spec.shape.count >= 2 {
                let isResidual = spec.name.hasSuffix("attn.c_proj.weight") || spec.name.hasSuffix("mlp.c_proj.weight")
                let std = isResidual ? residualStd : 0.02
                var rng = SplitMix64(seed: SplitMix64.hash(seed, UInt64(index)))
                rng.state = rng.state &+ 0x9E37_79B9_7F4A_7C15 &* UInt64(2 * first)   // skip 2·first words
                for i in 0..<n { p[i] = Float(rng.nextNormal() * std) }
            } else if spec.name.hasSuffix(".weight") {
                p.update(repeating: 1, count: n)
            } else {
                p.update(repeating: 0, count: n)
            }
        }
    }
}

import Kernels

// MARK: - Initialization

extension GPT {
    /// GPT-2 / nanoGPT initialisation of a full parameter buffer.
    ///
    /// Weights and embeddings ~ N(0, 0.02); the two residual projections of every block
    /// (`attn.c_proj`, `mlp.c_proj`) ~ N(0, 0.02/√(2·n_layer)); LayerNorm weights 1; biases 0.
    /// Each tensor draws from its own stream seeded by (seed, tensor index), so the values do
    /// not depend on how the buffer is split across ranks.
    public static func initialize(_ params: UnsafeMutablePointer<Float>, layout: ParameterLayout,
                                  config: GPTConfig, seed: UInt64) {
        let residualStd = 0.02 / (2.0 * Double(config.nLayer)).squareRoot()
        for (index, spec) in layout.tensors.enumerated() {
            let p = params + spec.offset
            let n = spec.count
            if spec.shape.count >= 2 {
                let isResidual = spec.name.hasSuffix("attn.c_proj.weight") || spec.name.hasSuffix("mlp.c_proj.weight")
                let std = isResidual ? residualStd : 0.02
                var rng = SplitMix64(seed: SplitMix64.hash(seed, UInt64(index)))
                for i in 0..<n { p[i] = Float(rng.nextNormal() * std) }
            } else if spec.name.hasSuffix(".weight") {
                p.update(repeating: 1, count: n)
            } else {
                p.update(repeating: 0, count: n)
            }
        }
    }
}

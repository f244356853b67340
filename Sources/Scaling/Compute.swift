import Settings

// MARK: - Training compute

/// FLOP counts and wall-clock estimates.
public enum Compute {
    /// 6ND: forward 2N + backward 4N FLOPs per token.
    public static func flops6ND(params n: Double, tokens d: Double) -> Double { 6 * n * d }

    /// FLOPs per trained token including attention: 6N + 12·n_layer·n_embd·seq (the
    /// attention score and weighted-sum matmuls, forward and backward; PaLM appendix B).
    public static func flopsPerToken(params n: Double, nLayer: Int, nEmbd: Int, seq: Int) -> Double {
        6 * n + 12 * Double(nLayer) * Double(nEmbd) * Double(seq)
    }

    /// PF-days for a FLOP count.
    public static func pfDays(_ flops: Double) -> Double { flops / flopsPerPFDay }

    /// Seconds to process `tokens` at `tokensPerSecond`.
    public static func seconds(tokens: Double, tokensPerSecond: Double) -> Double { tokens / tokensPerSecond }

    /// Seconds to spend `flops` on hardware of `peak` FLOP/s at model-FLOPs utilisation `mfu`.
    public static func seconds(flops: Double, peak: Double, mfu: Double) -> Double { flops / (peak * mfu) }
}

// MARK: - Per-rank memory

/// Bytes one rank holds, by kind.
public struct MemoryEstimate: Codable, Equatable, Sendable {
    public var parameters: Int, gradients: Int, optimizer: Int, activations: Int
    public var total: Int { parameters + gradients + optimizer + activations }
}

/// The ZeRO paper's accounting (Rajbhandari et al. 2020, section 3): Ψ parameters, N ranks.
///
/// fp32: 4Ψ parameters, 4Ψ gradients, 8Ψ AdamW moments. Mixed precision: 2Ψ low-precision
/// parameters, 2Ψ gradients, and K = 12 bytes per parameter of optimizer state (fp32
/// master copy, m and v). Stage 1 divides the optimizer states by N, stage 2 also the
/// gradients, stage 3 also the parameters. A divided quantity is one equal shard,
/// ⌈Ψ/N⌉ elements, as the trainer allocates it (padding included).
public enum MemoryModel {
    /// Bytes per rank for Ψ = `psi` parameters on `n` ranks at ZeRO stage `stage`, holding
    /// parameters in `precision`.
    /// `gradientBytes` overrides the bytes of a gradient element (the paper's accounting keeps
    /// mixed-precision gradients in 16 bits; a trainer that accumulates them in fp32, as
    /// tessera and PyTorch AMP do, passes 4).
    public static func perRank(params psi: Int, world n: Int, stage: ZeroStage, precision: Precision,
                               activations: Int = 0, gradientBytes: Int? = nil) throws(ScalingError) -> MemoryEstimate {
        guard psi > 0 else { throw ScalingError("--params", "is \(psi)", "pass a positive parameter count") }
        guard n > 0 else { throw ScalingError("--world", "is \(n)", "pass a positive number of ranks") }
        let shard = (psi + n - 1) / n
        let p = precision.bytes
        let k = precision == .fp32 ? 8 : 12
        return MemoryEstimate(parameters: p * (stage.shardsParameters ? shard : psi),
                              gradients: (gradientBytes ?? p) * (stage.shardsGradients ? shard : psi),
                              optimizer: k * (stage.shardsOptimizer ? shard : psi),
                              activations: activations)
    }

    /// Bytes per rank for LoRA: `adapters` trainable parameters held as `perRank` holds any
    /// (gradients and AdamW state exist only for them), plus a frozen base of `base`
    /// parameters in `basePrecision` (the compute format) alone, replicated, or sharded at stage 3.
    public static func lora(base: Int, adapters: Int, world n: Int, stage: ZeroStage, precision: Precision,
                            basePrecision: Precision, activations: Int = 0,
                            gradientBytes: Int? = nil) throws(ScalingError) -> MemoryEstimate {
        var e = try perRank(params: adapters, world: n, stage: stage, precision: precision, activations: activations,
                            gradientBytes: gradientBytes)
        guard base > 0 else { throw ScalingError("--params", "is \(base)", "pass a positive parameter count") }
        e.parameters += basePrecision.bytes * (stage.shardsParameters ? (base + n - 1) / n : base)
        return e
    }

    /// Bytes of activations tessera keeps for backward for a micro-batch of `batch` × `seq`
    /// tokens: per token, each block keeps 15 widths (LN outputs, QKV, attention output,
    /// residual, MLP pre- and post-GELU), 4 LayerNorm statistics and, per head, one
    /// log-sum-exp (fused attention) or one row of probabilities (`fusedAttention` false);
    /// plus the residual stream at every block boundary, the final LayerNorm and the logits.
    /// `elementBytes` is 4 in fp32.
    public static func activations(shape s: ModelShape, batch: Int, seq: Int, elementBytes: Int = 4,
                                   fusedAttention: Bool = true) -> Int {
        let C = s.nEmbd, L = s.nLayer
        let perToken = L * (15 * C + 4 + s.nHead * (fusedAttention ? 1 : seq)) + (L + 1) * C + C + 2 + s.vocabSize
        return elementBytes * batch * seq * perToken
    }
}

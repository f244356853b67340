// MARK: - Recompute

/// Which activations backward recomputes instead of keeping (activation checkpointing).
///
/// Recomputation repeats the forward's exact arithmetic on the same inputs, so gradients are
/// bit-identical in every mode; only memory and time change.
public enum Recompute: String, CaseIterable, Codable, Sendable {
    /// Keep everything the backward reads.
    case none
    /// Keep the GEMM outputs (QKV, attention output, MLP pre-activation), the residual stream
    /// and LayerNorm statistics; recompute the cheap, large rest: LayerNorm outputs, attention
    /// probabilities (B·heads·T² per layer) and the GELU output (Korthikanti et al. 2022).
    case selective
    /// Keep only each block's input; re-run the block's forward inside its backward.
    case full

    /// The per-layer tensors kept for every layer (the others are one shared buffer).
    public var keepsGEMMOutputs: Bool { self != .full }
    public var keepsAll: Bool { self == .none }
}

// MARK: - AttentionKernel

/// How causal self-attention is computed.
public enum AttentionKernel: String, CaseIterable, Codable, Sendable {
    /// Blocked over queries and keys with an online softmax (FlashAttention-2's algorithm):
    /// the masked triangle is skipped, and forward keeps only each row's log-sum-exp for
    /// backward, which recomputes the probabilities block by block. Memory O(T) per head.
    case fused
    /// One head at a time as whole T×T products: the probabilities (B·heads·T² per layer)
    /// are kept for backward. The reference the fused kernel is tested against.
    case unfused
}

// MARK: - GemmPolicy

/// Which library runs a run's large fp32 matrix multiplies.
public enum GemmPolicy: String, CaseIterable, Codable, Sendable {
    /// Time oneDNN and OpenBLAS on the run's own GEMM shapes at start (once per machine,
    /// thread count and shapes: the result is cached) and use the faster (OpenBLAS only when
    /// faster by 10%, so near-ties do not flip between runs).
    case auto
    case onednn
    case openblas
}

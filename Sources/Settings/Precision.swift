// MARK: - Precision

/// The number format a model computes in: matrix-multiply operands and saved activations.
/// Accumulation, master weights, gradients and optimizer states stay fp32 in every format.
///
/// One type for every layer: the kernels, the strategies (what they gather and send), the
/// memory calculator and the command line all read this.
public enum Precision: String, CaseIterable, Codable, Sendable, CustomStringConvertible {
    case fp32, bf16, fp16

    /// Whether values are 16-bit.
    public var isLow: Bool { self != .fp32 }

    /// Bytes of one element.
    public var bytes: Int { isLow ? 2 : 4 }

    public var description: String { rawValue }
}

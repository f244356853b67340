// MARK: - SyncDType

/// How local SGD's parameter deltas travel at a synchronisation.
public enum SyncDType: String, Codable, CaseIterable, Sendable {
    /// fp32: exact.
    case fp32
    /// bf16, summed in an all-reduce (each addition rounded to bf16).
    case bf16
    /// int8 with one fp32 scale per block of 256: all-gathered and averaged in fp32.
    case int8

    /// Bytes per delta on the wire (int8's per-block scales aside).
    public var bytes: Int { self == .fp32 ? 4 : self == .bf16 ? 2 : 1 }
}

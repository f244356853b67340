// MARK: - ZeroStage

/// How much of the training state each rank shards (Rajbhandari et al. 2020): nothing (DDP),
/// the optimizer states (1), also the gradients (2), also the parameters (3, FSDP's full
/// shard).
public enum ZeroStage: Int, CaseIterable, Codable, Sendable, Comparable, CustomStringConvertible {
    case ddp = 0, one = 1, two = 2, three = 3

    /// The name people use for it: "DDP", "ZeRO-1" … "ZeRO-3".
    public var name: String { self == .ddp ? "DDP" : "ZeRO-\(rawValue)" }
    public var description: String { name }

    /// AdamW moments (and, in mixed precision, fp32 master values) are sharded.
    public var shardsOptimizer: Bool { self >= .one }
    /// Gradients are sharded (reduce-scattered unit by unit).
    public var shardsGradients: Bool { self >= .two }
    /// Parameters are sharded and gathered unit by unit.
    public var shardsParameters: Bool { self == .three }

    public static func < (a: ZeroStage, b: ZeroStage) -> Bool { a.rawValue < b.rawValue }
}

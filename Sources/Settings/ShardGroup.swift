// MARK: - ShardGroup

/// Which ranks a ZeRO stage shards over (hybrid sharding: PyTorch's HSDP, ZeRO++'s hpZ).
///
/// State is sharded within each group and replicated across groups: parameter all-gathers
/// and gradient reduce-scatters stay inside a group (one node's shared memory), and only one
/// all-reduce of each rank's gradient shard crosses groups per step.
public enum ShardGroup: Equatable, Hashable, Sendable, Codable, LosslessStringConvertible {
    /// One group of every rank: plain ZeRO.
    case world
    /// The ranks of each node (`MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)`).
    case node
    /// Consecutive blocks of this many ranks.
    case ranks(Int)

    /// "world", "node" or a positive count.
    public init?(_ description: String) {
        switch description {
        case "world": self = .world
        case "node": self = .node
        default:
            guard let n = Int(description), n > 0 else { return nil }
            self = .ranks(n)
        }
    }

    public var description: String {
        switch self {
        case .world: return "world"
        case .node: return "node"
        case .ranks(let n): return String(n)
        }
    }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let group = ShardGroup(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath,
                                                    debugDescription: "shard group '\(text)': use world, node or a positive number of ranks"))
        }
        self = group
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

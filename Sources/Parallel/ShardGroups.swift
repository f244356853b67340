import Comm
import Settings

// MARK: - ShardGroups

/// The two communicators of hybrid sharding, split from the world (PyTorch's HSDP device
/// mesh of replicas × shards, ZeRO++'s hpZ): `shard` holds the ranks this rank shards its
/// state with, `replicas` the ranks at the same position of every other group, which hold the
/// same shard. A ZeRO stage runs unchanged over `shard`; the only collective over `replicas`
/// is one all-reduce of each rank's gradient shard per step.
///
/// Groups are consecutive ranks (`--shard-group G`) or the ranks of one node (`node`, from
/// `MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)`); the latter keeps every parameter all-gather
/// and gradient reduce-scatter in shared memory.
public struct ShardGroups {
    /// This rank's group: where parameters, gradients and optimizer states are sharded.
    public let shard: Communicator
    /// The same position in every group (nil when there is one group: plain ZeRO).
    public let replicas: Communicator?
    /// Whether every group lies within one node (nothing but the replica all-reduce leaves
    /// it); nil with one group, when there is nothing to keep inside a node.
    public let withinNodes: Bool?

    /// Ranks per group.
    public var groupSize: Int { shard.size }
    /// Number of groups.
    public var groupCount: Int { replicas?.size ?? 1 }

    /// Splits `world` as `group` says (collective). `world` splits nothing.
    public init(world: Communicator, group: ShardGroup) throws {
        switch group {
        case .world:
            shard = world
        case .node:
            let node = try world.splitByNode()
            var sizes = [Double(node.size), -Double(node.size)]
            try world.allReduce(&sizes, op: .max, label: "all-reduce of ranks per node")
            guard Int(sizes[0]) == -Int(sizes[1]) else {
                throw ShardGroupError.unevenNodes(smallest: -Int(sizes[1]), largest: Int(sizes[0]))
            }
            shard = node
        case .ranks(let g):
            guard g > 0, world.size % g == 0 else { throw ShardGroupError.notDividing(group: g, world: world.size) }
            shard = g == world.size ? world : try world.split(color: world.rank / g, key: world.rank)
        }
        guard shard.size < world.size else {
            replicas = nil; withinNodes = nil
            return
        }
        replicas = try world.split(color: shard.rank, key: world.rank)
        // A group is within one node when the ranks of its node are all of it, on every rank.
        let local = try shard.splitByNode()
        var crosses = [local.size == shard.size ? 0.0 : 1.0]
        try world.allReduce(&crosses, op: .max, label: "all-reduce of groups crossing nodes")
        withinNodes = crosses[0] == 0
    }
}

/// Ranks that cannot be split into equal shard groups.
public enum ShardGroupError: Error, CustomStringConvertible {
    case notDividing(group: Int, world: Int)
    case unevenNodes(smallest: Int, largest: Int)

    public var description: String {
        switch self {
        case .notDividing(let g, let n):
            return "groups of \(g) ranks do not divide the \(n) ranks"
        case .unevenNodes(let a, let b):
            return "the nodes run different numbers of ranks (\(a) to \(b)), so they cannot be equal shard groups"
        }
    }
}

import Model
import Settings

// MARK: - Memory before allocation

/// The bytes a strategy will hold, by kind, computed from the layout alone: what
/// `TrainingStrategy.memory` reports once the strategy exists (a test holds the two equal),
/// so a run can be judged before anything is allocated. Under hybrid sharding `n` is the
/// group size and `groups` the number of groups.
public func predictedMemory(stage: ZeroStage, layout: ParameterLayout, worldSize n: Int, rank: Int = 0, groups: Int = 1,
                            reduce: Precision, compute: Precision) -> MemoryReport {
    let shard = ShardLayout(total: layout.count, ranks: n, rank: rank)
    let psi = layout.count, S = shard.shardSize
    let big = layout.largestNonEmbeddingUnit, u0 = layout.units[0].count
    let travels = reduce.isLow && n > 1
    if stage == .ddp {
        var working = travels ? ["16-bit gradient staging": 2 * psi] : [:]
        if compute.isLow { working[DataParallel.computeCopyName] = 2 * psi }
        return MemoryReport(parameters: 4 * psi, gradients: 4 * psi, optimizer: 8 * psi, working: working)
    }
    var working: [String: Int] = [:]
    let parameters: Int, master: Int, gradients: Int
    if stage.shardsParameters {
        parameters = compute.isLow ? 2 * S : 4 * S
        master = compute.isLow ? 4 * S : 0
        working["gathered embedding unit"] = compute.bytes * u0
        working["gathered unit buffers (current + prefetch)"] = 2 * compute.bytes * big
    } else {
        parameters = compute.bytes * psi
        master = compute.isLow ? 4 * S : 0
        working["parameter padding"] = compute.bytes * (shard.padded - psi)
    }
    if stage.shardsGradients {
        gradients = 4 * S
        let sizes = [big, big, u0]
        working["gradient unit buffers"] = 4 * sizes.reduce(0, +)
        working["gradient receive buffers"] = 4 * sizes.map { min($0, S) }.reduce(0, +)
        working["16-bit gradient staging"] = reduce.isLow ? 2 * (sizes.reduce(0, +) + sizes.map { min($0, S) }.reduce(0, +)) : 0
    } else {
        gradients = 4 * psi
        working["gradient shard (reduce-scatter target)"] = 4 * S
        working["16-bit gradient staging"] = travels ? 2 * (psi + S) : 0
    }
    if groups > 1 && reduce.isLow { working[ZeRO.replicaStagingName] = 2 * S }
    return MemoryReport(parameters: parameters, gradients: gradients, optimizer: 8 * S + master, working: working)
}

/// The bytes `FrozenParameters` will hold (LoRA's base), computed from the layout alone:
/// the compute-precision values, all of them or (stage 3) one shard plus the gather buffers.
public func predictedFrozenMemory(stage: ZeroStage, layout: ParameterLayout, worldSize n: Int,
                                  compute: Precision) -> (parameters: Int, working: [String: Int]) {
    guard stage.shardsParameters else { return (compute.bytes * layout.count, [:]) }
    let shard = ShardLayout(total: layout.count, ranks: n, rank: 0)
    return (compute.bytes * shard.shardSize,
            ["frozen base: gathered embedding unit": compute.bytes * layout.units[0].count,
             "frozen base: gathered unit buffers (current + prefetch)": 2 * compute.bytes * layout.largestNonEmbeddingUnit])
}

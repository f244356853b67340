import Comm
import Kernels
import Settings
import Model
import Optim

// MARK: - ZeRO stage 1

/// Optimizer-state sharding: full parameters and gradients on every rank, AdamW moments for
/// this rank's shard only.
///
/// Backward accumulates full gradients locally (no communication on accumulation
/// micro-steps); on the last micro-step each bucket is reduce-scattered as soon as backward
/// finishes it, so a rank receives the summed gradient of exactly its shard. It updates that
/// shard, and an all-gather brings every rank the new parameters: 2Ψ(N−1)/N elements sent,
/// the same as DDP's all-reduce. Under bf16/fp16 the replicated parameters are the 16-bit
/// compute copy and the fp32 master values are sharded (see `ReplicatedParameters`).
public final class ZeRO1: TrainingStrategy {
    let layout: ParameterLayout
    let comm: Communicator
    let shard: ShardLayout
    let optimizer: ShardedAdam
    let replica: ReplicatedParameters
    /// This rank's reduced gradient shard (the reduce-scatter target).
    let gradShard: FloatBuffer
    let reducer: BucketReducer
    public var commWaitSeconds: Double = 0
    public let stage = ZeroStage.one
    public var parameterPrecision: Precision { replica.values.precision }

    /// `compute` is the model's precision: a 16-bit one replicates the 16-bit compute copy.
    public init(layout: ParameterLayout, comm: Communicator, adam: AdamW, bucketBytes: Int, reduce: Precision = .fp32,
                compute: Precision = .fp32) {
        self.layout = layout; self.comm = comm
        shard = ShardLayout(total: layout.count, ranks: comm.size, rank: comm.rank)
        optimizer = ShardedAdam(shard: shard, adam: adam, mask: decayMask(for: layout))
        replica = ReplicatedParameters(shard: shard, precision: compute)
        gradShard = FloatBuffer(count: shard.shardSize)
        reducer = BucketReducer(layout: layout, comm: comm, bucketBytes: bucketBytes, reduce: reduce,
                                collective: .reduceScatter(shard, into: gradShard))
    }

    // MARK: ParameterProvider

    public func acquireParameters(unit: Int) -> UnsafeMutablePointer<Float> {
        replica.values.wide(at: layout.units[unit].lowerBound)
    }
    public func acquireLowParameters(unit: Int, precision: Precision) -> UnsafeMutablePointer<UInt16>? {
        replica.values.low(at: layout.units[unit].lowerBound, as: precision)
    }
    public func releaseParameters(unit: Int) {}
    public func gradients(unit: Int) -> UnsafeMutablePointer<Float> { reducer.grads.pointer + layout.units[unit].lowerBound }
    public func gradientsProduced(unit: Int) { reducer.unitDone(unit) }

    // MARK: TrainingStrategy

    public func beginStep() { reducer.grads.zero() }
    public func beginMicroStep(isLast: Bool) { reducer.isLastMicroStep = isLast }
    public func finishGradients() throws(CommError) { try reducer.finish(seconds: &commWaitSeconds) }

    public func gradientSquaredNorm() throws(CommError) -> Double {
        try optimizer.globalNormSquared(gradShard: gradShard.pointer, comm: comm)
    }

    public func localGradientsFinite() -> Bool { Vector.allFinite(gradShard.pointer, shard.mine.count) }
    public func poisonGradientForTesting() { gradShard[0] = .infinity }

    public func optimizerStep(step: Int, lr: Float, clip: Float) throws(CommError) {
        try replica.update(optimizer, grads: gradShard.pointer, step: step, lr: lr, clip: clip, comm: comm,
                           seconds: &commWaitSeconds)
    }

    public var memory: MemoryReport {
        MemoryReport(parameters: replica.replicaBytes, gradients: reducer.grads.byteCount,
                     optimizer: optimizer.bytes + replica.masterBytes,
                     working: ["parameter padding": replica.paddingBytes,
                               "gradient shard (reduce-scatter target)": gradShard.byteCount,
                               "16-bit gradient staging": reducer.stagingBytes])
    }

    public func statePieces() -> [StatePiece] { replica.statePieces(optimizer) }
    public func loadState(_ read: StateReader) rethrows { try replica.loadState(read, into: optimizer) }
    public func loadParameters(from full: UnsafePointer<Float>) { replica.load(from: full) }
    public func gatherParameters(into out: UnsafeMutablePointer<Float>) throws(CommError) {
        try replica.gather(into: out, comm: comm)
    }
}

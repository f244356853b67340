import Comm
import Kernels
import Settings
import Model
import Optim

// MARK: - ZeRO stage 2

/// Optimizer-state and gradient sharding: full parameters on every rank; gradients exist in
/// full only one unit at a time (see `UnitGradientReducer`); each rank keeps the reduced
/// gradient and AdamW moments of its shard, updates it, and all-gathers the parameters.
/// Under bf16/fp16 the replicated parameters are the 16-bit compute copy and the fp32 master
/// values are sharded (see `ReplicatedParameters`).
public final class ZeRO2: TrainingStrategy {
    let layout: ParameterLayout
    let comm: Communicator
    let shard: ShardLayout
    let optimizer: ShardedAdam
    let replica: ReplicatedParameters
    let reducer: UnitGradientReducer
    public var commWaitSeconds: Double = 0
    public let stage = ZeroStage.two
    public var parameterPrecision: Precision { replica.values.precision }

    /// `compute` is the model's precision: a 16-bit one replicates the 16-bit compute copy.
    public init(layout: ParameterLayout, comm: Communicator, adam: AdamW, reduce: Precision = .fp32,
                compute: Precision = .fp32) {
        self.layout = layout; self.comm = comm
        shard = ShardLayout(total: layout.count, ranks: comm.size, rank: comm.rank)
        optimizer = ShardedAdam(shard: shard, adam: adam, mask: decayMask(for: layout))
        replica = ReplicatedParameters(shard: shard, precision: compute)
        reducer = UnitGradientReducer(layout: layout, shard: shard, comm: comm, reduce: reduce)
    }

    // MARK: ParameterProvider
    public func acquireParameters(unit: Int) -> UnsafeMutablePointer<Float> {
        replica.values.wide(at: layout.units[unit].lowerBound)
    }
    public func acquireLowParameters(unit: Int, precision: Precision) -> UnsafeMutablePointer<UInt16>? {
        replica.values.low(at: layout.units[unit].lowerBound, as: precision)
    }
    public func releaseParameters(unit: Int) {}
    public func gradients(unit: Int) -> UnsafeMutablePointer<Float> {
        do { return try reducer.buffer(for: unit) } catch { abortJob(comm, error) }
    }
    public func gradientsProduced(unit: Int) { reducer.produced(unit: unit) }

    // MARK: TrainingStrategy
    public func beginStep() { reducer.zeroShard() }
    public func beginMicroStep(isLast: Bool) {}

    public func finishGradients() throws(CommError) {
        try reducer.finish(seconds: &commWaitSeconds)
    }

    public func gradientSquaredNorm() throws(CommError) -> Double {
        try optimizer.globalNormSquared(gradShard: reducer.gradShard.pointer, comm: comm)
    }

    public func localGradientsFinite() -> Bool { reducer.shardFinite }
    public func poisonGradientForTesting() { reducer.gradShard[0] = .infinity }

    public func optimizerStep(step: Int, lr: Float, clip: Float) throws(CommError) {
        try replica.update(optimizer, grads: reducer.gradShard.pointer, step: step, lr: lr, clip: clip, comm: comm,
                           seconds: &commWaitSeconds)
    }

    public var memory: MemoryReport {
        var w = reducer.workingBytes
        w["parameter padding"] = replica.paddingBytes
        return MemoryReport(parameters: replica.replicaBytes, gradients: reducer.gradShard.byteCount,
                            optimizer: optimizer.bytes + replica.masterBytes, working: w)
    }

    public func statePieces() -> [StatePiece] { replica.statePieces(optimizer) }

    public func loadState(_ read: StateReader) rethrows {
        try replica.loadState(read, into: optimizer)
    }

    public func loadParameters(from full: UnsafePointer<Float>) { replica.load(from: full) }

    public func gatherParameters(into out: UnsafeMutablePointer<Float>) throws(CommError) {
        try replica.gather(into: out, comm: comm)
    }
}

/// A collective failed inside a model hook, which cannot throw: report it and end the job
/// (the watchdog's contract).
func abortJob(_ comm: Communicator, _ error: CommError) -> Never {
    writeStandardError(error.description)
    comm.abort(code: 1)
}

import Comm
import Kernels
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
public final class ZeRO1: TrainingStrategy, ParameterProvider {
    let layout: ParameterLayout
    let comm: Communicator
    let shard: ShardLayout
    let optimizer: ShardedAdam
    let replica: ReplicatedParameters
    /// Full fp32 gradients (accumulated over micro-steps) and this rank's reduced shard.
    let grads: FloatBuffer, gradShard: FloatBuffer
    let buckets: [Range<Int>], bucketFirstUnit: [Int]
    let reduce: Precision
    /// 16-bit staging of the gradients and of this rank's reduced shard.
    private let lowGrads: HalfBuffer?, lowShard: HalfBuffer?
    private var inFlight: [CommRequest] = []
    private var isLastMicroStep = true
    public var commWaitSeconds: Double = 0
    public var provider: ParameterProvider { self }

    /// `compute` is the model's precision: a 16-bit one replicates the 16-bit compute copy.
    public init(layout: ParameterLayout, comm: Communicator, adam: AdamW, bucketBytes: Int, reduce: Precision = .fp32,
                compute: Precision = .fp32) {
        self.layout = layout; self.comm = comm
        shard = ShardLayout(total: layout.count, ranks: comm.size, rank: comm.rank)
        self.reduce = reduce
        lowGrads = reduce.isLow ? HalfBuffer(count: layout.count) : nil
        lowShard = reduce.isLow ? HalfBuffer(count: shard.shardSize) : nil
        optimizer = ShardedAdam(shard: shard, adam: adam, mask: decayMask(for: layout))
        replica = ReplicatedParameters(shard: shard, precision: compute)
        grads = FloatBuffer(count: layout.count)
        gradShard = FloatBuffer(count: shard.shardSize)
        (buckets, bucketFirstUnit) = DataParallel.makeBuckets(layout: layout, bucketBytes: bucketBytes)
    }

    // MARK: ParameterProvider

    public func acquireParameters(unit: Int) -> UnsafeMutablePointer<Float> {
        replica.values.wide(at: layout.units[unit].lowerBound)
    }
    public func acquireLowParameters(unit: Int, precision: Precision) -> UnsafeMutablePointer<UInt16>? {
        replica.values.low(at: layout.units[unit].lowerBound, as: precision)
    }
    public func releaseParameters(unit: Int) {}
    public func gradients(unit: Int) -> UnsafeMutablePointer<Float> { grads.pointer + layout.units[unit].lowerBound }
    public func gradientsProduced(unit: Int) { unitDone(unit) }

    // MARK: TrainingStrategy

    public func beginStep() { grads.zero() }
    public func beginMicroStep(isLast: Bool) { isLastMicroStep = isLast }

    private func unitDone(_ unit: Int) {
        for r in inFlight { _ = comm.test(r) }
        guard isLastMicroStep else { return }
        for (i, first) in bucketFirstUnit.enumerated() where first == unit {
            let b = buckets[i]
            let part = shard.myPart(of: b)
            let at = part.lowerBound - shard.mine.lowerBound
            var send = UnsafeRawPointer(grads.pointer + b.lowerBound)
            var recv = UnsafeMutableRawPointer(gradShard.pointer + at), dtype = CommDType.float32
            if let lg = lowGrads, let ls = lowShard {
                reduce.narrow(grads.pointer + b.lowerBound, into: lg.pointer + b.lowerBound, b.count)
                send = UnsafeRawPointer(lg.pointer + b.lowerBound)
                recv = UnsafeMutableRawPointer(ls.pointer + at)
                dtype = reduce.commDType
            }
            inFlight.append(comm.startReduceScatterV(send: send, recv: recv, counts: shard.pieces(of: b), dtype: dtype,
                                                     op: .sum, label: "reduce-scatter of gradient bucket \(i)"))
        }
    }

    public func finishGradients() throws(CommError) {
        let t0 = MPIClock.now()
        for r in inFlight { try comm.wait(r) }
        inFlight.removeAll(keepingCapacity: true)
        commWaitSeconds += MPIClock.now() - t0
        if let ls = lowShard { reduce.widen(ls.pointer, into: gradShard.pointer, shard.mine.count) }
    }

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
        MemoryReport(parameters: replica.replicaBytes, gradients: grads.byteCount,
                     optimizer: optimizer.bytes + replica.masterBytes,
                     working: ["parameter padding": replica.paddingBytes,
                               "gradient shard (reduce-scatter target)": gradShard.byteCount,
                               "16-bit gradient staging": (lowGrads?.byteCount ?? 0) + (lowShard?.byteCount ?? 0)])
    }

    public func statePieces() -> [StatePiece] { replica.statePieces(optimizer) }

    public func loadState(_ read: (String, Range<Int>, UnsafeMutablePointer<Float>) throws -> Void) rethrows {
        try replica.loadState(read, into: optimizer)
    }

    public func loadParameters(from full: UnsafePointer<Float>) { replica.load(from: full) }

    public func gatherParameters(into out: UnsafeMutablePointer<Float>) throws(CommError) {
        try replica.gather(into: out, comm: comm)
    }
}

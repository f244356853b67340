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
/// the same as DDP's all-reduce.
public final class ZeRO1: TrainingStrategy {
    let layout: ParameterLayout
    let comm: Communicator
    let shard: ShardLayout
    let optimizer: ShardedAdam
    /// Full parameters (padded to `ranks × shardSize` for the all-gather) and gradients.
    let params: FloatBuffer, grads: FloatBuffer
    /// This rank's reduced gradient.
    let gradShard: FloatBuffer
    let flat: FlatParameters
    let buckets: [Range<Int>], bucketFirstUnit: [Int]
    let reduce: Precision
    /// 16-bit staging of the gradients and of this rank's reduced shard.
    private let lowGrads: HalfBuffer?, lowShard: HalfBuffer?
    private var inFlight: [CommRequest] = []
    private var isLastMicroStep = true
    public var commWaitSeconds: Double = 0
    public var provider: ParameterProvider { flat }

    public init(layout: ParameterLayout, comm: Communicator, adam: AdamW, bucketBytes: Int, reduce: Precision = .fp32) {
        self.layout = layout; self.comm = comm
        shard = ShardLayout(total: layout.count, ranks: comm.size, rank: comm.rank)
        self.reduce = reduce
        lowGrads = reduce.isLow ? HalfBuffer(count: layout.count) : nil
        lowShard = reduce.isLow ? HalfBuffer(count: shard.shardSize) : nil
        optimizer = ShardedAdam(shard: shard, adam: adam, mask: decayMask(for: layout))
        params = FloatBuffer(count: shard.padded)
        grads = FloatBuffer(count: layout.count)
        gradShard = FloatBuffer(count: shard.shardSize)
        flat = FlatParameters(layout: layout, parameters: params.pointer, gradients: grads.pointer)
        (buckets, bucketFirstUnit) = DataParallel.makeBuckets(layout: layout, bucketBytes: bucketBytes)
        flat.onGradientsProduced = { [unowned self] unit in self.unitDone(unit) }
    }

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
        optimizer.update(params: params.pointer + shard.mine.lowerBound, grads: gradShard.pointer,
                         step: step, lr: lr, clip: clip)
        try allGatherParameters(comm: comm, shard: shard, params: params.pointer, seconds: &commWaitSeconds)
    }

    public var memory: MemoryReport {
        MemoryReport(parameters: 4 * layout.count, gradients: grads.byteCount, optimizer: optimizer.bytes,
                     working: ["parameter padding": 4 * (shard.padded - layout.count),
                               "gradient shard (reduce-scatter target)": gradShard.byteCount,
                               "16-bit gradient staging": (lowGrads?.byteCount ?? 0) + (lowShard?.byteCount ?? 0)])
    }

    public func statePieces() -> [StatePiece] { optimizer.replicatedPieces(params: params.pointer) }

    public func loadState(_ read: (String, Range<Int>, UnsafeMutablePointer<Float>) throws -> Void) rethrows {
        try optimizer.loadReplicated(read, params: params.pointer)
    }

    public func loadParameters(from full: UnsafePointer<Float>) {
        params.pointer.update(from: full, count: layout.count)
    }

    public func gatherParameters(into out: UnsafeMutablePointer<Float>) throws(CommError) {
        out.update(from: params.pointer, count: layout.count)
    }
}

/// In-place all-gather of a padded, replicated parameter buffer from each rank's shard.
func allGatherParameters(comm: Communicator, shard: ShardLayout, params: UnsafeMutablePointer<Float>,
                         seconds: inout Double) throws(CommError) {
    guard comm.size > 1 else { return }
    let t0 = MPIClock.now()
    let mineStart = UnsafeRawPointer(params + comm.rank * shard.shardSize)
    try comm.wait(comm.startAllGather(send: mineStart, recv: UnsafeMutableRawPointer(params),
                                      countPerRank: shard.shardSize, dtype: .float32,
                                      label: "all-gather of updated parameters"))
    seconds += MPIClock.now() - t0
}

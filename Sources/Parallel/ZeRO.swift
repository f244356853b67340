import Comm
import Kernels
import Model
import Optim
import Settings

// MARK: - ZeRO stages 1–3

/// The parameter half of a ZeRO stage: where parameters live between steps, how the model
/// reaches a unit, and how an updated shard reaches every rank.
protocol ShardedParameters: AnyObject {
    /// The format parameters are held in (the compute copy's, in mixed precision).
    var precision: Precision { get }
    /// Seconds spent waiting for parameter communication since the last reset.
    var waitSeconds: Double { get set }
    func acquire(unit: Int) -> UnsafeMutablePointer<Float>
    func acquireLow(unit: Int, precision: Precision) -> UnsafeMutablePointer<UInt16>?
    func release(unit: Int)
    /// Backward starts (units now come last to first), or forward does again.
    func setBackward(_ backward: Bool)
    /// Clips and applies AdamW to this rank's fp32 shard with its reduced gradient, and makes
    /// the result visible to every rank's model.
    func update(_ optimizer: ShardedAdam, grads: UnsafeMutablePointer<Float>, step: Int, lr: Float, clip: Float) throws(CommError)
    /// This rank's fp32 master shard, for checkpoints.
    var masterShard: UnsafeMutablePointer<Float> { get }
    func loadState(_ read: StateReader, into optimizer: ShardedAdam) rethrows
    func load(from full: UnsafePointer<Float>)
    /// Elements `range` of the full fp32 parameter vector (collective: every rank calls it).
    func gather(range: Range<Int>, into out: UnsafeMutablePointer<Float>) throws(CommError)
    /// The replicated values (nil when parameters are sharded) and their element size.
    var replica: (values: UnsafeMutableRawPointer, elementBytes: Int)? { get }
    /// Bytes of parameters, of fp32 master values counted with the optimizer, and working buffers.
    var bytes: (parameters: Int, master: Int, working: [String: Int]) { get }
}

/// The gradient half of a ZeRO stage: where backward writes a unit's gradients and how they
/// become this rank's reduced shard.
protocol ShardedGradients: AnyObject {
    /// This rank's reduced gradient (`shardSize` slots), complete after `finish`.
    var gradShard: FloatBuffer { get }
    func buffer(for unit: Int) throws(CommError) -> UnsafeMutablePointer<Float>
    func produced(unit: Int)
    /// Lets the transport advance reductions in flight.
    func progress()
    func beginStep()
    func beginMicroStep(isLast: Bool)
    func finish(seconds: inout Double) throws(CommError)
    /// Bytes of gradients that live across the step, and working buffers.
    var bytes: (gradients: Int, working: [String: Int]) { get }
}

/// A ZeRO stage: the AdamW moments are sharded (stage 1); so are the gradients, reduced unit
/// by unit (stage 2); so are the parameters, gathered unit by unit (stage 3, FSDP's full
/// shard). Each is a parameter half and a gradient half around one sharded optimizer:
///
/// | stage | parameters                  | gradients                                  |
/// |-------|-----------------------------|--------------------------------------------|
/// | 1     | `ReplicatedParameters`      | `BucketReducer`, buckets reduce-scattered  |
/// | 2     | `ReplicatedParameters`      | `UnitGradientReducer`                      |
/// | 3     | `GatheredParameters`        | `UnitGradientReducer`                      |
///
/// Hybrid sharding (`replicas`): `comm` is one group of ranks and the stage runs within it
/// unchanged; each group holds a full copy of the sharded state, and after the group's
/// reduction each rank all-reduces its gradient shard with the ranks holding the same shard
/// in the other groups (`ShardGroups`). Nothing else crosses groups: parameter gathers,
/// gradient reduce-scatters and the norm's sum stay inside the group.
public final class ZeRO: TrainingStrategy {
    /// This rank's gradient shard's sum of squares, read once for `localGradientsFinite` and
    /// `gradientSquaredNorm`.
    private var squares = GradientSquares()
    public let stage: ZeroStage
    public let layout: ParameterLayout
    let comm: Communicator
    /// The ranks holding the same shard in the other groups (hybrid sharding), or nil.
    let replicas: Communicator?
    let shard: ShardLayout
    let optimizer: ShardedAdam
    let parameters: ShardedParameters
    let grads: ShardedGradients
    /// The format gradients travel in, and the 16-bit staging of the cross-group all-reduce.
    let reduce: Precision
    private let replicaStaging: HalfBuffer
    private var ownWait = 0.0

    /// Stage `stage` (1–3) over the ranks of `comm`; `reduce` is the format gradients travel
    /// in, `compute` the model's (parameters are replicated or gathered in it). With `replicas`
    /// the state is sharded over `comm` only and gradient shards are all-reduced over `replicas`.
    public init(stage: ZeroStage, layout: ParameterLayout, comm: Communicator, adam: AdamW, bucketBytes: Int,
                reduce: Precision = .fp32, compute: Precision = .fp32, replicas: Communicator? = nil) {
        precondition(stage != .ddp, "DDP is DataParallel")
        self.stage = stage; self.layout = layout; self.comm = comm; self.reduce = reduce
        self.replicas = replicas.flatMap { $0.size > 1 ? $0 : nil }
        shard = ShardLayout(total: layout.count, ranks: comm.size, rank: comm.rank)
        // ZeRO-2/3 reduce across groups unit by unit inside their gradient half; ZeRO-1 here,
        // once its buckets are in.
        replicaStaging = HalfBuffer(count: self.replicas != nil && reduce.isLow && !stage.shardsGradients ? shard.shardSize : 0)
        optimizer = ShardedAdam(shard: shard, adam: adam, mask: decayMask(for: layout))
        if stage.shardsGradients {
            grads = UnitGradientReducer(layout: layout, shard: shard, comm: comm, reduce: reduce, replicas: self.replicas)
        } else {
            grads = BucketReducer(layout: layout, comm: comm, bucketBytes: bucketBytes, reduce: reduce,
                                  collective: .reduceScatter(shard, into: FloatBuffer(count: shard.shardSize)))
        }
        if stage.shardsParameters {
            parameters = GatheredParameters(layout: layout, shard: shard, comm: comm, precision: compute)
        } else {
            parameters = ReplicatedParameters(layout: layout, shard: shard, comm: comm, precision: compute)
        }
    }

    public var parameterPrecision: Precision { parameters.precision }

    public var commWaitSeconds: Double {
        get { ownWait + parameters.waitSeconds }
        set { ownWait = newValue; parameters.waitSeconds = 0 }
    }

    // MARK: ParameterProvider

    public func acquireParameters(unit: Int) -> UnsafeMutablePointer<Float> {
        grads.progress()
        return parameters.acquire(unit: unit)
    }
    public func acquireLowParameters(unit: Int, precision: Precision) -> UnsafeMutablePointer<UInt16>? {
        grads.progress()
        return parameters.acquireLow(unit: unit, precision: precision)
    }
    public func releaseParameters(unit: Int) { parameters.release(unit: unit) }
    public func beginBackward() { parameters.setBackward(true) }
    public func gradients(unit: Int) -> UnsafeMutablePointer<Float> {
        do { return try grads.buffer(for: unit) } catch { abortJob(comm, error) }
    }
    public func gradientsProduced(unit: Int) { grads.produced(unit: unit) }

    // MARK: TrainingStrategy

    public func beginStep() { grads.beginStep() }
    public func beginMicroStep(isLast: Bool) {
        parameters.setBackward(false)
        grads.beginMicroStep(isLast: isLast)
    }
    public func finishGradients() throws(CommError) {
        squares.forget()
        parameters.setBackward(false)
        try grads.finish(seconds: &ownWait)
        if let replicas, !stage.shardsGradients { try reduceAcrossGroups(replicas) }
    }

    /// ZeRO-1: sums this rank's gradient shard (its group's sum) with the same shard of every
    /// other group, in the gradients' wire format: once per step, after the last micro-step.
    private func reduceAcrossGroups(_ replicas: Communicator) throws(CommError) {
        let t0 = MPIClock.now()
        defer { ownWait += MPIClock.now() - t0 }
        try replicas.allReduce(grads.gradShard.pointer, count: shard.mine.count, wire: reduce, staging: replicaStaging.pointer,
                               label: "all-reduce of gradient shard across groups")
    }

    public func gradientSquaredNorm() throws(CommError) -> Double {
        try optimizer.globalNormSquared(local: squares.take(grads.gradShard.pointer, shard.mine.count), comm: comm)
    }
    public func localGradientsFinite() -> Bool { squares.finite(grads.gradShard.pointer, shard.mine.count) }
    public func poisonGradientForTesting() {
        squares.forget()
        grads.gradShard[0] = .infinity
    }

    public func optimizerStep(step: Int, lr: Float, clip: Float) throws(CommError) {
        try parameters.update(optimizer, grads: grads.gradShard.pointer, step: step, lr: lr, clip: clip)
    }

    public var memory: MemoryReport {
        let p = parameters.bytes, g = grads.bytes
        var working = p.working.merging(g.working) { $0 + $1 }
        if replicaStaging.count > 0 { working[Self.replicaStagingName] = replicaStaging.byteCount }
        return MemoryReport(parameters: p.parameters, gradients: g.gradients, optimizer: optimizer.bytes + p.master,
                            working: working)
    }

    static let replicaStagingName = "16-bit cross-group gradient staging"

    // MARK: State

    /// This rank's shard; under hybrid sharding every group holds all of it, so each of the
    /// shard's replicas writes 1/R of it and every rank still writes an equal share.
    public func statePieces() -> [StatePiece] {
        let all = optimizer.statePieces(paramShard: parameters.masterShard)
        guard let replicas else { return all }
        let part = ShardLayout(total: shard.mine.count, ranks: replicas.size, rank: replicas.rank).mine
        return all.map {
            StatePiece(vector: $0.vector, start: $0.start + part.lowerBound, count: part.count, pointer: $0.pointer + part.lowerBound)
        }
    }
    public func loadState(_ read: StateReader) rethrows { try parameters.loadState(read, into: optimizer) }
    public func loadParameters(from full: UnsafePointer<Float>) { parameters.load(from: full) }
    public func gatherParameters(range: Range<Int>, into out: UnsafeMutablePointer<Float>) throws(CommError) {
        try parameters.gather(range: range, into: out)
    }

    public func replicaChecksums() -> [UInt64]? {
        parameters.replica.map { tensorChecksums($0.values, layout: layout, elementBytes: $0.elementBytes) }
    }
    public func corruptReplicaForTesting() {
        if let r = parameters.replica { flipBit(r.values, layout: layout, elementBytes: r.elementBytes) }
    }
}

/// A collective failed inside a model hook, which cannot throw: report it and end the job
/// (the watchdog's contract).
func abortJob(_ comm: Communicator, _ error: CommError) -> Never {
    writeStandardError(error.description)
    comm.abort(code: 1)
}

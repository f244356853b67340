import Comm
import Kernels
import Model
import Optim
import Settings

// MARK: - Strategy

/// Bytes one rank holds for training state, by kind (what ZeRO divides).
public struct MemoryReport: Codable, Equatable, Sendable {
    /// Parameters resident between steps.
    public var parameters: Int
    /// Gradients.
    public var gradients: Int
    /// Optimizer states (AdamW m and v).
    public var optimizer: Int
    /// Named working buffers (communication buckets, gathered units), by name.
    public var working: [String: Int]

    /// Sum of all of the above.
    public var total: Int { parameters + gradients + optimizer + working.values.reduce(0, +) }
}

/// How parameters, gradients and optimizer states are held and synchronised across ranks.
///
/// A strategy is the model's `ParameterProvider`: the model's hooks (acquire, release,
/// gradients produced) are where it gathers parameters and starts gradient communication,
/// the same mechanism for every stage. One training step under any strategy is: `beginStep`,
/// then for each micro-batch `beginMicroStep` + model forward/backward with the strategy as
/// provider, then `finishGradients`, `gradientSquaredNorm` (global), and `optimizerStep`.
public protocol TrainingStrategy: ParameterProvider {
    /// Where each parameter lives.
    var layout: ParameterLayout { get }
    /// Which ZeRO stage this is.
    var stage: ZeroStage { get }
    /// The format parameters are held in between steps: fp32 for DDP (it narrows on use, as
    /// PyTorch AMP does); the compute format for the ZeRO stages, whose fp32 master values
    /// are sharded with the optimizer state (the ZeRO paper's mixed precision).
    var parameterPrecision: Precision { get }
    /// Zeroes gradients for a new optimizer step.
    func beginStep()
    /// Tells the strategy whether the coming backward is the last of this step (gradients are
    /// communicated only then).
    func beginMicroStep(isLast: Bool)
    /// Completes all gradient communication of the step.
    func finishGradients() throws(CommError)
    /// Squared L2 norm of the full (global) gradient, identical on every rank (sharded
    /// strategies sum their shards with one all-reduce).
    func gradientSquaredNorm() throws(CommError) -> Double
    /// Whether every gradient element this rank holds (after `finishGradients`) is finite.
    /// Strategies find out from the sum of squares of those elements (`GradientSquares`), which
    /// `gradientSquaredNorm` then reuses instead of reading the gradients again.
    func localGradientsFinite() -> Bool
    /// Writes +inf into one gradient element this rank holds (tests of overflow handling).
    func poisonGradientForTesting()
    /// Scales gradients by `clip` and applies AdamW update `step` (1-based) with `lr`.
    func optimizerStep(step: Int, lr: Float, clip: Float) throws(CommError)
    /// Bytes held now, by kind.
    var memory: MemoryReport { get }
    /// Sets parameters from a full vector (identical on every rank): replicated strategies copy
    /// it, sharded ones keep their shard.
    func loadParameters(from full: UnsafePointer<Float>)
    /// This rank's part of the training state in checkpoint order: a contiguous range of every
    /// `StateVector` (`shard.mine` of a ShardLayout over the world, or under hybrid sharding
    /// its share of its group's shard), the same range for each, so every rank writes an
    /// equal share and any stage can read any other's.
    func statePieces() -> [StatePiece]
    /// Loads parameters and AdamW moments; `read(vector, range, dest)` fills elements.
    func loadState(_ read: StateReader) rethrows
    /// Copies elements `range` of the fp32 parameter vector into `out`, gathering the pieces
    /// of sharded values (collective: every rank calls it with the same range).
    func gatherParameters(range: Range<Int>, into out: UnsafeMutablePointer<Float>) throws(CommError)
    /// A checksum of each tensor of the parameters this rank replicates (in layout order),
    /// or nil when it replicates none (ZeRO-3): equal on every rank unless one diverged.
    func replicaChecksums() -> [UInt64]?
    /// Flips one bit of a replicated parameter (tests of the replica check).
    func corruptReplicaForTesting()
    /// Elements of time spent waiting for communication since the last reset, in seconds.
    var commWaitSeconds: Double { get set }
}

/// Decay mask of a GPT layout: 2-D tensors decay.
public func decayMask(for layout: ParameterLayout) -> DecayMask {
    DecayMask(layout.tensors.map { ($0.offset..<($0.offset + $0.count), $0.decays) })
}

extension TrainingStrategy {
    /// Copies the full fp32 parameter vector into `out` (collective).
    public func gatherParameters(into out: UnsafeMutablePointer<Float>) throws(CommError) {
        try gatherParameters(range: 0..<layout.count, into: out)
    }

    /// What the model reads parameters from and writes gradients to: the strategy itself.
    public var provider: ParameterProvider { self }
    /// "DDP", "ZeRO-1" … "ZeRO-3".
    public var name: String { stage.name }
}

/// The strategy for a ZeRO stage; `reduce` is the format gradients travel in, `compute` the
/// model's (ZeRO stages replicate or gather parameters in it). A ZeRO stage given `replicas`
/// shards over `comm`, one group, and all-reduces gradient shards across groups (hybrid
/// sharding, `ShardGroups`).
public func makeStrategy(stage: ZeroStage, layout: ParameterLayout, comm: Communicator, adam: AdamW,
                         bucketBytes: Int, reduce: Precision = .fp32, compute: Precision = .fp32,
                         replicas: Communicator? = nil, powerSGD: (rank: Int, startStep: Int)? = nil) -> TrainingStrategy {
    switch stage {
    case .ddp:
        precondition(replicas == nil, "DDP shards nothing: hybrid sharding needs a ZeRO stage")
        return DataParallel(layout: layout, comm: comm, adam: adam, bucketBytes: bucketBytes, reduce: reduce,
                            compute: compute, powerSGD: powerSGD.map { PowerSGD(layout: layout, comm: comm, rank: $0.rank, startStep: $0.startStep) })
    case .one, .two, .three:
        precondition(powerSGD == nil, "PowerSGD compresses DDP's all-reduce")
        return ZeRO(stage: stage, layout: layout, comm: comm, adam: adam, bucketBytes: bucketBytes, reduce: reduce,
                    compute: compute, replicas: replicas)
    }
}

extension Precision {
    /// The wire type of gradients reduced in this format (16-bit formats only).
    var commDType: CommDType { self == .bf16 ? .bfloat16 : .float16 }
}

// MARK: - Sums that travel in 16 bits

extension Communicator {
    /// Starts an in-place sum over ranks of `count` fp32 values travelling in `wire`: as they
    /// are, or rounded into `staging` (`count` 16-bit slots) and summed there, in which case
    /// `finishAllReduce` widens the result back once the request has completed.
    func startAllReduce(_ values: UnsafeMutablePointer<Float>, count: Int, wire: Precision,
                        staging: UnsafeMutablePointer<UInt16>, label: String) -> CommRequest {
        guard wire.isLow else {
            return startAllReduce(UnsafeMutableRawPointer(values), count: count, dtype: .float32, op: .sum, label: label)
        }
        wire.narrow(values, into: staging, count)
        return startAllReduce(UnsafeMutableRawPointer(staging), count: count, dtype: wire.commDType, op: .sum, label: label)
    }

    /// Brings a completed 16-bit sum from `staging` back into `values` (nothing for fp32).
    func finishAllReduce(_ values: UnsafeMutablePointer<Float>, count: Int, wire: Precision,
                         staging: UnsafePointer<UInt16>) {
        if wire.isLow { wire.widen(staging, into: values, count) }
    }

    /// The blocking form: `values` hold the sum over ranks when it returns.
    func allReduce(_ values: UnsafeMutablePointer<Float>, count: Int, wire: Precision,
                   staging: UnsafeMutablePointer<UInt16>, label: String) throws(CommError) {
        try wait(startAllReduce(values, count: count, wire: wire, staging: staging, label: label))
        finishAllReduce(values, count: count, wire: wire, staging: staging)
    }
}

/// Fills `destination` with elements `range` of a checkpoint's state vector.
public typealias StateReader = (StateVector, Range<Int>, UnsafeMutablePointer<Float>) throws -> Void

/// A contiguous piece of a flat state vector held by this rank.
public struct StatePiece: @unchecked Sendable {
    public var vector: StateVector, start: Int, count: Int
    public var pointer: UnsafePointer<Float>
    public init(vector: StateVector, start: Int, count: Int, pointer: UnsafePointer<Float>) {
        self.vector = vector; self.start = start; self.count = count; self.pointer = pointer
    }
}

/// The three pieces of `shard.mine` given base pointers that address element `mine.lowerBound`.
func pieces(_ shard: ShardLayout, params: UnsafePointer<Float>, m: UnsafePointer<Float>, v: UnsafePointer<Float>) -> [StatePiece] {
    let r = shard.mine
    return [StatePiece(vector: .params, start: r.lowerBound, count: r.count, pointer: params),
            StatePiece(vector: .adamM, start: r.lowerBound, count: r.count, pointer: m),
            StatePiece(vector: .adamV, start: r.lowerBound, count: r.count, pointer: v)]
}

/// Elements `range` of a vector sharded by `shard`, whose local shard starts at `values`: each
/// rank sends its piece of the range (an all-gather with per-rank counts), so only `range`
/// is ever held in full.
func gatherRange(_ range: Range<Int>, of values: UnsafePointer<Float>, shard: ShardLayout, comm: Communicator,
                 into out: UnsafeMutablePointer<Float>) throws(CommError) {
    let send = values + (shard.myPart(of: range).lowerBound - shard.mine.lowerBound)
    try comm.wait(comm.startAllGatherV(send: UnsafeRawPointer(send), recv: UnsafeMutableRawPointer(out),
                                       counts: shard.pieces(of: range), dtype: .float32,
                                       label: "all-gather of parameters \(range) for saving"))
}

/// Per-tensor checksums of `values`, replicated parameters in `layout` order with
/// `elementBytes` bytes per element.
func tensorChecksums(_ values: UnsafeRawPointer, layout: ParameterLayout, elementBytes: Int) -> [UInt64] {
    layout.tensors.map {
        Checksum.fnv1a(UnsafeRawBufferPointer(start: values + $0.offset * elementBytes, count: $0.count * elementBytes))
    }
}

/// Flips the top significand bit of the first element of `layout`'s first tensor (the token
/// embedding, a weight every step moves) in `values`: a change the next updates cannot round
/// away, as a flip of a tiny value's lowest bit would be.
func flipBit(_ values: UnsafeMutableRawPointer, layout: ParameterLayout, elementBytes: Int) {
    // Little-endian: fp32's top significand bit is bit 6 of byte 2; bf16's is bit 6 of byte 0.
    let at = values + layout.tensors[0].offset * elementBytes + (elementBytes == 4 ? 2 : 0)
    at.storeBytes(of: at.load(as: UInt8.self) ^ 0x40, as: UInt8.self)
}

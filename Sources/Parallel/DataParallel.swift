import Comm
import Kernels
import Model
import Optim
import Settings

#if canImport(Glibc)
import Glibc
#endif

// MARK: - DataParallel (DDP)

/// Replicated training: every rank holds all parameters, gradients and AdamW states, and
/// gradients are all-reduced bucket by bucket while backward goes on (see `BucketReducer`).
///
/// A 16-bit model (bf16/fp16) also gets a compute copy of every parameter in its format, as
/// PyTorch's autocast keeps its cast weights for a forward and its backward: AdamW writes it
/// as it updates each parameter, so the model reads its operands instead of narrowing each
/// unit's fp32 values again in every forward and every backward (gpt2: 124M parameters, two
/// passes over 744 MB per micro-step, against 248 MB more written once a step).
public final class DataParallel: TrainingStrategy {
    /// The gradients' sum of squares, read once for `localGradientsFinite` and `gradientSquaredNorm`.
    private var squares = GradientSquares()
    public let layout: ParameterLayout
    let comm: Communicator
    /// AdamW over every parameter: the one shard of a world of one.
    let optimizer: ShardedAdam
    /// Full parameters. Whoever writes them other than this strategy's optimizer step must
    /// call `parametersChanged()` afterwards.
    public let params: FloatBuffer
    /// AdamW's first and second moments of every parameter.
    public var m: FloatBuffer { optimizer.m }
    public var v: FloatBuffer { optimizer.v }
    /// The parameters rounded to the model's 16-bit format (nil for an fp32 model).
    private let computeCopy: ParameterBuffer?
    /// Whether `computeCopy` holds `params` as they are now: AdamW keeps it so; any other
    /// write (loading, local SGD's averaging) leaves it stale until the next acquire rounds
    /// all of them again.
    private var copyIsCurrent = false
    let reducer: BucketReducer
    /// PowerSGD's low-rank compression of the all-reduce (nil: exact gradients).
    public let powerSGD: PowerSGD?
    public var commWaitSeconds: Double = 0
    public let stage = ZeroStage.ddp
    public let parameterPrecision = Precision.fp32

    /// Full gradients.
    public var grads: FloatBuffer { reducer.grads }
    /// Bucket ranges (elements) in the order they are reduced.
    public var buckets: [Range<Int>] { reducer.buckets }

    /// Creates the strategy; `reduce` is the format gradients travel in, `compute` the
    /// model's (a 16-bit one gets its compute copy here), `powerSGD` an optional compressor
    /// that replaces the bucket all-reduces from its start step.
    public init(layout: ParameterLayout, comm: Communicator, adam: AdamW, bucketBytes: Int, reduce: Precision = .fp32,
                compute: Precision = .fp32, powerSGD: PowerSGD? = nil) {
        self.powerSGD = comm.size > 1 ? powerSGD : nil
        self.layout = layout
        self.comm = comm
        optimizer = ShardedAdam(shard: ShardLayout(total: layout.count, ranks: 1, rank: 0), adam: adam,
                                mask: decayMask(for: layout))
        params = FloatBuffer(count: layout.count)
        computeCopy = compute.isLow ? ParameterBuffer(count: layout.count, precision: compute) : nil
        reducer = BucketReducer(layout: layout, comm: comm, bucketBytes: bucketBytes, reduce: reduce, collective: .allReduce)
    }

    // MARK: ParameterProvider

    public func acquireParameters(unit: Int) -> UnsafeMutablePointer<Float> { params.pointer + layout.units[unit].lowerBound }
    public func acquireLowParameters(unit: Int, precision: Precision) -> UnsafeMutablePointer<UInt16>? {
        guard let computeCopy else { return nil }
        if !copyIsCurrent {
            computeCopy.store(params.pointer, at: 0, count: layout.count)
            copyIsCurrent = true
        }
        return computeCopy.low(at: layout.units[unit].lowerBound, as: precision)
    }
    public func releaseParameters(unit: Int) {}
    public func gradients(unit: Int) -> UnsafeMutablePointer<Float> { reducer.buffer(for: unit) }
    public func gradientsProduced(unit: Int) { reducer.produced(unit: unit) }

    // MARK: TrainingStrategy

    public func beginStep() { reducer.beginStep() }
    /// A compressed step's buckets only accumulate; PowerSGD reduces the whole gradient at the end.
    public func beginMicroStep(isLast: Bool) { reducer.beginMicroStep(isLast: isLast && powerSGD?.compresses != true) }
    public func finishGradients() throws(CommError) {
        squares.forget()
        try reducer.finish(seconds: &commWaitSeconds)
        guard let powerSGD else { return }
        if powerSGD.compresses {
            let t0 = MPIClock.now()
            try powerSGD.reduce(grads.pointer)
            commWaitSeconds += MPIClock.now() - t0
        }
        powerSGD.step += 1
    }

    public func gradientSquaredNorm() throws(CommError) -> Double {
        squares.take(grads.pointer, layout.count)
    }

    public func localGradientsFinite() -> Bool { squares.finite(grads.pointer, layout.count) }

    public func poisonGradientForTesting() {
        squares.forget()
        grads[0] = .infinity
    }

    public func optimizerStep(step: Int, lr: Float, clip: Float) throws(CommError) {
        // The mask's ranges cover every parameter, so the copy is current afterwards.
        optimizer.update(params: params.pointer, grads: grads.pointer, step: step, lr: lr, clip: clip,
                         rounded: copyIsCurrent ? computeCopy?.roundedTarget(at: 0) : nil)
    }

    /// Says `params` were written other than by the optimizer step: the 16-bit compute copy
    /// is rounded again from them before the model next reads it.
    public func parametersChanged() { copyIsCurrent = false }

    public var memory: MemoryReport {
        let staging = reducer.stagingBytes
        var working = staging > 0 ? ["16-bit gradient staging": staging] : [:]
        if let powerSGD { working[PowerSGD.workingName] = powerSGD.bytes }
        if let computeCopy { working[Self.computeCopyName] = computeCopy.byteCount }
        return MemoryReport(parameters: params.byteCount, gradients: grads.byteCount,
                            optimizer: m.byteCount + v.byteCount, working: working)
    }

    public func statePieces() -> [StatePiece] {
        let shard = ShardLayout(total: layout.count, ranks: comm.size, rank: comm.rank)
        let o = shard.mine.lowerBound
        var all = pieces(shard, params: params.pointer + o, m: m.pointer + o, v: v.pointer + o)
        if let powerSGD {
            // Q is the same on every rank: each writes its shard of the packed vector; the
            // error feedback is each rank's own.
            let packed = FloatBuffer(count: shard.mine.count)
            powerSGD.packedQ(range: shard.mine, into: packed.pointer)
            qSnapshot = packed
            all.append(StatePiece(vector: .powerSGDQ, start: o, count: shard.mine.count, pointer: packed.pointer))
            all.append(StatePiece(vector: .powerSGDError, start: 0, count: layout.count, pointer: powerSGD.error.pointer))
        }
        return all
    }

    /// Backs the packed-Q piece of the latest `statePieces` until the next.
    private var qSnapshot: FloatBuffer?

    public func loadState(_ read: StateReader) rethrows {
        let all = 0..<layout.count
        try read(.params, all, params.pointer)
        try read(.adamM, all, m.pointer)
        try read(.adamV, all, v.pointer)
        parametersChanged()
    }

    public func loadParameters(from full: UnsafePointer<Float>) {
        params.pointer.update(from: full, count: layout.count)
        parametersChanged()
    }

    public func gatherParameters(range: Range<Int>, into out: UnsafeMutablePointer<Float>) throws(CommError) {
        out.update(from: params.pointer + range.lowerBound, count: range.count)
    }

    public func replicaChecksums() -> [UInt64]? { tensorChecksums(params.pointer, layout: layout, elementBytes: 4) }
    public func corruptReplicaForTesting() {
        flipBit(params.pointer, layout: layout, elementBytes: 4)
        parametersChanged()
    }

    /// The memory report's name for the 16-bit compute copy.
    public static let computeCopyName = "16-bit compute copy"
}

/// Monotonic clock in seconds.
public enum MPIClock {
    /// Seconds since an arbitrary start.
    public static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }
}

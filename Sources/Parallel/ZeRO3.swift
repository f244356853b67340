import Comm
import Kernels
import Settings
import Model
import Optim

// MARK: - ZeRO stage 3 (FSDP full shard)

/// Full sharding: each rank keeps only its shard of parameters, gradients and AdamW moments.
///
/// A unit's parameters are all-gathered into a working buffer when the model acquires it and
/// dropped when it releases it; the next unit in compute order (forward: up, backward: down)
/// is gathered in the background meanwhile. The embedding unit has its own buffer and stays
/// gathered until the next optimizer step, because the tied LM head needs it right after the
/// forward pass and again at the start of backward. Gradients go through the same per-unit
/// reduce-scatter as stage 2.
///
/// Under bf16/fp16 the rank also keeps its shard of the 16-bit compute copy, narrowed after
/// every optimizer step and load, and gathers that instead of the fp32 values (FSDP's
/// `param_dtype`): half the gather traffic and half the gathered buffers. The model then
/// takes units through `acquireLowParameters` and never sees fp32 weights.
public final class ZeRO3: TrainingStrategy {
    let layout: ParameterLayout
    let comm: Communicator
    let shard: ShardLayout
    let optimizer: ShardedAdam
    /// This rank's parameters (`shardSize` slots).
    let paramShard: FloatBuffer
    let reducer: UnitGradientReducer
    /// The format parameters travel and are gathered in: fp32, or the 16-bit compute format.
    let gatherPrecision: Precision
    /// This rank's shard of the 16-bit compute copy (empty when gathering fp32).
    private let lowShard: HalfBuffer
    /// Gathered units, in `gatherPrecision`.
    private let embedding: ParameterBuffer, slots: [ParameterBuffer]
    private var embeddingResident = false
    private var slotUnit: [Int?] = [nil, nil]        // unit gathered (or gathering) in each slot
    private var gathers: [CommRequest?] = [nil, nil]
    private var backwardPass = false
    private var lastAcquired = -1
    public var commWaitSeconds: Double = 0
    public let stage = ZeroStage.three
    public var parameterPrecision: Precision { gatherPrecision }

    /// `compute` is the model's precision: a 16-bit one makes the rank gather its compute copy.
    public init(layout: ParameterLayout, comm: Communicator, adam: AdamW, reduce: Precision = .fp32,
                compute: Precision = .fp32) {
        self.layout = layout; self.comm = comm
        shard = ShardLayout(total: layout.count, ranks: comm.size, rank: comm.rank)
        optimizer = ShardedAdam(shard: shard, adam: adam, mask: decayMask(for: layout))
        paramShard = FloatBuffer(count: shard.shardSize)
        reducer = UnitGradientReducer(layout: layout, shard: shard, comm: comm, reduce: reduce)
        gatherPrecision = compute
        let big = largestUnit(layout.units, from: 1)
        lowShard = HalfBuffer(count: compute.isLow ? shard.shardSize : 0)
        embedding = ParameterBuffer(count: layout.units[0].count, precision: compute)
        slots = [ParameterBuffer(count: big, precision: compute), ParameterBuffer(count: big, precision: compute)]
    }

    /// Takes this rank's shard from a full parameter vector (initialisation, loading).
    public func statePieces() -> [StatePiece] {
        optimizer.statePieces(paramShard: paramShard.pointer)
    }

    public func loadState(_ read: StateReader) rethrows {
        try read(.params, shard.mine, paramShard.pointer)
        try optimizer.loadMoments(read)
        parametersChanged()
    }

    public func loadParameters(from full: UnsafePointer<Float>) {
        let mine = shard.mine
        paramShard.pointer.update(from: full + mine.lowerBound, count: mine.count)
        parametersChanged()
    }

    /// Re-derives everything computed from the parameter shard: the 16-bit compute copy, and
    /// the embedding unit kept gathered across a step.
    private func parametersChanged() {
        if gatherPrecision.isLow { gatherPrecision.narrow(paramShard.pointer, into: lowShard.pointer, shard.shardSize) }
        embeddingResident = false
    }

    // MARK: Gathering

    private func startGather(_ unit: Int, into buffer: ParameterBuffer) -> CommRequest {
        let range = layout.units[unit]
        let offset = shard.myPart(of: range).lowerBound - shard.mine.lowerBound
        let send = gatherPrecision.isLow ? UnsafeRawPointer(lowShard.pointer + offset) : UnsafeRawPointer(paramShard.pointer + offset)
        return comm.startAllGatherV(send: send, recv: buffer.address(0), counts: shard.pieces(of: range),
                                    dtype: buffer.dtype, label: "all-gather of unit \(unit) parameters")
    }

    private func wait(_ r: CommRequest) {
        let t0 = MPIClock.now()
        do { try comm.wait(r) } catch { abortJob(comm, error) }
        commWaitSeconds += MPIClock.now() - t0
    }

    private func prefetch(_ unit: Int) {
        guard unit >= 1, unit < layout.units.count, !slotUnit.contains(unit),
              let free = slotUnit.firstIndex(where: { $0 == nil }) else { return }
        slotUnit[free] = unit
        gathers[free] = startGather(unit, into: slots[free])
    }

    // MARK: ParameterProvider

    public func acquireParameters(unit: Int) -> UnsafeMutablePointer<Float> { acquire(unit: unit).wide() }

    public func acquireLowParameters(unit: Int, precision: Precision) -> UnsafeMutablePointer<UInt16>? {
        // An fp32 gather leaves narrowing to the model; nothing is acquired then.
        gatherPrecision.isLow ? acquire(unit: unit).low(as: precision) : nil
    }

    private func acquire(unit: Int) -> ParameterBuffer {
        reducer.progress()
        defer { lastAcquired = unit }
        if unit == 0 {
            if !embeddingResident {
                wait(startGather(0, into: embedding))
                embeddingResident = true
            }
            // Forward's embedding lookup is followed by block 0; the LM head (acquired right
            // after the final unit) is followed by backward or the next forward.
            if !backwardPass && lastAcquired != layout.finalUnit { prefetch(1) }
            return embedding
        }
        if !slotUnit.contains(unit) { prefetch(unit) }
        let s = slotUnit.firstIndex(of: unit)!
        if let g = gathers[s] { wait(g); gathers[s] = nil }
        prefetch(backwardPass ? unit - 1 : unit + 1)
        return slots[s]
    }

    public func releaseParameters(unit: Int) {
        guard unit != 0, let s = slotUnit.firstIndex(of: unit) else { return }
        if let g = gathers[s] { wait(g); gathers[s] = nil }
        slotUnit[s] = nil
    }

    public func beginBackward() { backwardPass = true }

    public func gradients(unit: Int) -> UnsafeMutablePointer<Float> {
        do { return try reducer.buffer(for: unit) } catch { abortJob(comm, error) }
    }

    public func gradientsProduced(unit: Int) { reducer.produced(unit: unit) }

    // MARK: TrainingStrategy

    public func beginStep() { reducer.zeroShard() }
    public func beginMicroStep(isLast: Bool) { backwardPass = false }

    public func finishGradients() throws(CommError) {
        backwardPass = false
        try reducer.finish(seconds: &commWaitSeconds)
    }

    public func gradientSquaredNorm() throws(CommError) -> Double {
        try optimizer.globalNormSquared(gradShard: reducer.gradShard.pointer, comm: comm)
    }

    public func localGradientsFinite() -> Bool { reducer.shardFinite }
    public func poisonGradientForTesting() { reducer.gradShard[0] = .infinity }

    public func optimizerStep(step: Int, lr: Float, clip: Float) throws(CommError) {
        optimizer.update(params: paramShard.pointer, grads: reducer.gradShard.pointer, step: step, lr: lr, clip: clip)
        parametersChanged()
    }

    public var memory: MemoryReport {
        var w = reducer.workingBytes
        w["gathered embedding unit"] = embedding.byteCount
        w["gathered unit buffers (current + prefetch)"] = slots.reduce(0) { $0 + $1.byteCount }
        // Mixed precision follows the ZeRO paper: the parameters are the 16-bit shard, the
        // fp32 master shard is optimizer state (K = 12 with m and v).
        let mixed = gatherPrecision.isLow
        return MemoryReport(parameters: mixed ? lowShard.byteCount : paramShard.byteCount,
                            gradients: reducer.gradShard.byteCount,
                            optimizer: optimizer.bytes + (mixed ? paramShard.byteCount : 0), working: w)
    }

    public func gatherParameters(into out: UnsafeMutablePointer<Float>) throws(CommError) {
        try gatherShards(paramShard.pointer, shard: shard, comm: comm, into: out)
    }
}

import Comm
import Kernels
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
public final class ZeRO3: TrainingStrategy, ParameterProvider {
    let layout: ParameterLayout
    let comm: Communicator
    let shard: ShardLayout
    let optimizer: ShardedAdam
    /// This rank's parameters (`shardSize` slots).
    let paramShard: FloatBuffer
    let reducer: UnitGradientReducer
    private let embedding: FloatBuffer
    private var embeddingResident = false
    private let slots: [FloatBuffer]
    private var slotUnit: [Int?] = [nil, nil]        // unit gathered (or gathering) in each slot
    private var gathers: [CommRequest?] = [nil, nil]
    private var backwardPass = false
    private var lastAcquired = -1
    public var commWaitSeconds: Double = 0
    public var provider: ParameterProvider { self }

    public init(layout: ParameterLayout, comm: Communicator, adam: AdamW, reduce: Precision = .fp32) {
        self.layout = layout; self.comm = comm
        shard = ShardLayout(total: layout.count, ranks: comm.size, rank: comm.rank)
        optimizer = ShardedAdam(shard: shard, adam: adam, mask: decayMask(for: layout))
        paramShard = FloatBuffer(count: shard.shardSize)
        reducer = UnitGradientReducer(layout: layout, shard: shard, comm: comm, reduce: reduce)
        embedding = FloatBuffer(count: layout.units[0].count)
        let big = largestUnit(layout.units, from: 1)
        slots = [FloatBuffer(count: big), FloatBuffer(count: big)]
    }

    /// Takes this rank's shard from a full parameter vector (initialisation, loading).
    public func statePieces() -> [StatePiece] {
        pieces(shard, params: paramShard.pointer, m: optimizer.m.pointer, v: optimizer.v.pointer)
    }

    public func loadState(_ read: (String, Range<Int>, UnsafeMutablePointer<Float>) throws -> Void) rethrows {
        try read("params", shard.mine, paramShard.pointer)
        try read("adam.m", shard.mine, optimizer.m.pointer)
        try read("adam.v", shard.mine, optimizer.v.pointer)
        embeddingResident = false
    }

    public func loadParameters(from full: UnsafePointer<Float>) {
        let mine = shard.mine
        paramShard.pointer.update(from: full + mine.lowerBound, count: mine.count)
        embeddingResident = false
    }

    // MARK: Gathering

    private func startGather(_ unit: Int, into buffer: UnsafeMutablePointer<Float>) -> CommRequest {
        let range = layout.units[unit]
        let part = shard.myPart(of: range)
        return comm.startAllGatherV(send: UnsafeRawPointer(paramShard.pointer + (part.lowerBound - shard.mine.lowerBound)),
                                    recv: UnsafeMutableRawPointer(buffer), counts: shard.pieces(of: range),
                                    dtype: .float32, label: "all-gather of unit \(unit) parameters")
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
        gathers[free] = startGather(unit, into: slots[free].pointer)
    }

    // MARK: ParameterProvider

    public func acquireParameters(unit: Int) -> UnsafeMutablePointer<Float> {
        reducer.progress()
        defer { lastAcquired = unit }
        if unit == 0 {
            if !embeddingResident {
                wait(startGather(0, into: embedding.pointer))
                embeddingResident = true
            }
            // Forward's embedding lookup is followed by block 0; the LM head (acquired right
            // after the final unit) is followed by backward or the next forward.
            if !backwardPass && lastAcquired != layout.finalUnit { prefetch(1) }
            return embedding.pointer
        }
        if !slotUnit.contains(unit) { prefetch(unit) }
        let s = slotUnit.firstIndex(of: unit)!
        if let g = gathers[s] { wait(g); gathers[s] = nil }
        prefetch(backwardPass ? unit - 1 : unit + 1)
        return slots[s].pointer
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
        embeddingResident = false
    }

    public var memory: MemoryReport {
        var w = reducer.workingBytes
        w["gathered embedding unit"] = embedding.byteCount
        w["gathered unit buffers (current + prefetch)"] = slots.reduce(0) { $0 + $1.byteCount }
        return MemoryReport(parameters: paramShard.byteCount, gradients: reducer.gradShard.byteCount,
                            optimizer: optimizer.bytes, working: w)
    }

    public func gatherParameters(into out: UnsafeMutablePointer<Float>) throws(CommError) {
        let full = FloatBuffer(count: shard.padded)
        full.pointer.advanced(by: comm.rank * shard.shardSize).update(from: paramShard.pointer, count: shard.shardSize)
        var ignored = 0.0
        try allGatherParameters(comm: comm, shard: shard, params: full.pointer, seconds: &ignored)
        out.update(from: full.pointer, count: layout.count)
    }
}

import Comm
import Kernels
import Model
import Settings

// MARK: - Gathered parameters (ZeRO-3)

/// The parameters of full sharding: each rank keeps only its shard.
///
/// A unit's parameters are all-gathered into a working buffer when the model acquires it and
/// dropped when it releases it; the next unit in compute order (forward: up, backward: down)
/// is gathered in the background meanwhile. The embedding unit has its own buffer and stays
/// gathered until the next optimizer step, because the tied LM head needs it right after the
/// forward pass and again at the start of backward.
///
/// Under bf16/fp16 the rank also keeps its shard of the 16-bit compute copy, narrowed after
/// every optimizer step and load, and gathers that instead of the fp32 values (FSDP's
/// `param_dtype`): half the gather traffic and half the gathered buffers. The model then
/// takes units through `acquireLow` and never sees fp32 weights.
final class GatheredParameters: ShardedParameters {
    let layout: ParameterLayout
    let shard: ShardLayout
    let comm: Communicator
    /// This rank's fp32 parameters (`shardSize` slots).
    let paramShard: FloatBuffer
    /// The format parameters travel and are gathered in: fp32, or the 16-bit compute format.
    let precision: Precision
    /// This rank's shard of the 16-bit compute copy (empty when gathering fp32).
    private let lowShard: HalfBuffer
    /// Gathered units, in `precision`.
    private let embedding: ParameterBuffer, slots: [ParameterBuffer]
    private var embeddingResident = false
    private var slotUnit: [Int?] = [nil, nil]        // unit gathered (or gathering) in each slot
    private var gathers: [CommRequest?] = [nil, nil]
    private var backwardPass = false
    private var lastAcquired = -1
    var waitSeconds = 0.0

    /// Without `keepsMaster` (frozen parameters, never updated) a 16-bit shard is all a rank
    /// keeps: no fp32 values.
    init(layout: ParameterLayout, shard: ShardLayout, comm: Communicator, precision: Precision, keepsMaster: Bool = true) {
        self.layout = layout; self.shard = shard; self.comm = comm; self.precision = precision
        paramShard = FloatBuffer(count: keepsMaster || !precision.isLow ? shard.shardSize : 0)
        let big = layout.largestNonEmbeddingUnit
        lowShard = HalfBuffer(count: precision.isLow ? shard.shardSize : 0)
        embedding = ParameterBuffer(count: layout.units[0].count, precision: precision)
        slots = [ParameterBuffer(count: big, precision: precision), ParameterBuffer(count: big, precision: precision)]
    }

    // MARK: Loading and updating

    var masterShard: UnsafeMutablePointer<Float> { paramShard.pointer }

    func loadState(_ read: StateReader, into optimizer: ShardedAdam) rethrows {
        try read(.params, shard.mine, paramShard.pointer)
        try optimizer.loadMoments(read)
        parametersChanged()
    }

    func load(from full: UnsafePointer<Float>) {
        guard paramShard.count > 0 else {
            precision.narrow(full + shard.mine.lowerBound, into: lowShard.pointer, shard.mine.count)
            embeddingResident = false
            return
        }
        paramShard.pointer.update(from: full + shard.mine.lowerBound, count: shard.mine.count)
        parametersChanged()
    }

    func update(_ optimizer: ShardedAdam, grads: UnsafeMutablePointer<Float>, step: Int, lr: Float,
                clip: Float) throws(CommError) {
        // AdamW rounds the updated shard into the 16-bit compute copy as it writes it.
        optimizer.update(params: paramShard.pointer, grads: grads, step: step, lr: lr, clip: clip,
                         rounded: precision.isLow ? (into: lowShard.pointer, precision: precision) : nil)
        embeddingResident = false
    }

    /// Re-derives everything computed from the parameter shard: the 16-bit compute copy, and
    /// the embedding unit kept gathered across a step.
    private func parametersChanged() {
        if precision.isLow { precision.narrow(paramShard.pointer, into: lowShard.pointer, shard.shardSize) }
        embeddingResident = false
    }

    func gather(range: Range<Int>, into out: UnsafeMutablePointer<Float>) throws(CommError) {
        try gatherRange(range, of: paramShard.pointer, shard: shard, comm: comm, into: out)
    }

    // MARK: Gathering

    private func startGather(_ unit: Int, into buffer: ParameterBuffer) -> CommRequest {
        let range = layout.units[unit]
        let offset = shard.myPart(of: range).lowerBound - shard.mine.lowerBound
        let send = precision.isLow ? UnsafeRawPointer(lowShard.pointer + offset) : UnsafeRawPointer(paramShard.pointer + offset)
        return comm.startAllGatherV(send: send, recv: buffer.address(0), counts: shard.pieces(of: range),
                                    dtype: buffer.dtype, label: "all-gather of unit \(unit) parameters")
    }

    private func wait(_ r: CommRequest) {
        let t0 = MPIClock.now()
        do { try comm.wait(r) } catch { abortJob(comm, error) }
        waitSeconds += MPIClock.now() - t0
    }

    private func prefetch(_ unit: Int) {
        // Empty units (a LoRA layout's embedding and final units) are never acquired.
        guard unit >= 1, unit < layout.units.count, !layout.units[unit].isEmpty, !slotUnit.contains(unit),
              let free = slotUnit.firstIndex(where: { $0 == nil }) else { return }
        slotUnit[free] = unit
        gathers[free] = startGather(unit, into: slots[free])
    }

    // MARK: The model's view

    func acquire(unit: Int) -> UnsafeMutablePointer<Float> { gathered(unit: unit).wide() }

    func acquireLow(unit: Int, precision requested: Precision) -> UnsafeMutablePointer<UInt16>? {
        // An fp32 gather leaves narrowing to the model; nothing is acquired then.
        precision.isLow ? gathered(unit: unit).low(as: requested) : nil
    }

    private func gathered(unit: Int) -> ParameterBuffer {
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

    func release(unit: Int) {
        guard unit != 0, let s = slotUnit.firstIndex(of: unit) else { return }
        if let g = gathers[s] { wait(g); gathers[s] = nil }
        slotUnit[s] = nil
    }

    func setBackward(_ backward: Bool) { backwardPass = backward }

    /// Nothing is replicated between steps (the embedding unit stays gathered only within one).
    var replica: (values: UnsafeMutableRawPointer, elementBytes: Int)? { nil }

    // MARK: Accounting

    /// Mixed precision follows the ZeRO paper: the parameters are the 16-bit shard, the fp32
    /// master shard is optimizer state (K = 12 with m and v).
    var bytes: (parameters: Int, master: Int, working: [String: Int]) {
        let mixed = precision.isLow
        return (mixed ? lowShard.byteCount : paramShard.byteCount, mixed ? paramShard.byteCount : 0,
                ["gathered embedding unit": embedding.byteCount,
                 "gathered unit buffers (current + prefetch)": slots.reduce(0) { $0 + $1.byteCount }])
    }
}

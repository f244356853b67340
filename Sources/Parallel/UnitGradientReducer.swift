import Comm
import Kernels
import Settings
import Model

// MARK: - UnitGradientReducer

/// Gradients of ZeRO stages 2 and 3: backward writes each unit into a small working buffer,
/// which is reduce-scattered as soon as the unit is done; each rank adds its piece into the
/// gradient shard, the only gradient storage that lives across the step.
///
/// Working memory: the embedding unit's buffer (its gradient is written at both ends of
/// backward, by the tied LM head first and the embedding lookup last) and two rotating
/// buffers of the largest other unit, so one unit's reduction overlaps the next unit's
/// backward; plus receive buffers for each rank's piece. Because the full gradient never
/// exists, every micro-step communicates (as in DeepSpeed's stage 2).
final class UnitGradientReducer: ShardedGradients {
    struct Pending { var request: CommRequest; var recv: UnsafeMutablePointer<Float>; var dest: Int; var count: Int }

    let layout: ParameterLayout
    let shard: ShardLayout
    let comm: Communicator
    /// This rank's reduced gradient, accumulated over micro-steps (`shardSize` slots).
    let gradShard: FloatBuffer
    private let buffers: [FloatBuffer]          // 0, 1: rotating; 2: embedding unit
    private let receives: [FloatBuffer]
    /// The format gradients travel in, and 16-bit send/receive staging per slot.
    let reduce: Precision
    private let lowSend: [HalfBuffer], lowRecv: [HalfBuffer]
    private var pending: [Pending?] = [nil, nil, nil]
    private var slotOfUnit: [Int: Int] = [:]
    private var nextSlot = 0

    init(layout: ParameterLayout, shard: ShardLayout, comm: Communicator, reduce: Precision = .fp32) {
        self.layout = layout; self.shard = shard; self.comm = comm; self.reduce = reduce
        gradShard = FloatBuffer(count: shard.shardSize)
        let big = layout.largestNonEmbeddingUnit
        let u0 = layout.units[0].count
        buffers = [FloatBuffer(count: big), FloatBuffer(count: big), FloatBuffer(count: u0)]
        receives = [FloatBuffer(count: min(big, shard.shardSize)), FloatBuffer(count: min(big, shard.shardSize)),
                    FloatBuffer(count: min(u0, shard.shardSize))]
        let sizes = [big, big, u0]
        lowSend = reduce.isLow ? sizes.map { HalfBuffer(count: $0) } : []
        lowRecv = reduce.isLow ? sizes.map { HalfBuffer(count: min($0, shard.shardSize)) } : []
    }

    /// Bytes of working buffers, by name.
    var workingBytes: [String: Int] {
        ["gradient unit buffers": buffers.reduce(0) { $0 + $1.byteCount },
         "gradient receive buffers": receives.reduce(0) { $0 + $1.byteCount },
         "16-bit gradient staging": (lowSend + lowRecv).reduce(0) { $0 + $1.byteCount }]
    }

    func beginStep() { gradShard.zero() }
    /// Every micro-step communicates: nothing to prepare.
    func beginMicroStep(isLast: Bool) {}

    var bytes: (gradients: Int, working: [String: Int]) { (gradShard.byteCount, workingBytes) }

    /// A zeroed buffer for `unit`'s gradients (waits for the slot's previous reduction).
    func buffer(for unit: Int) throws(CommError) -> UnsafeMutablePointer<Float> {
        let slot: Int
        if unit == 0 { slot = 2 } else { slot = nextSlot; nextSlot ^= 1 }
        try complete(slot, wait: true)
        slotOfUnit[unit] = slot
        let b = buffers[slot]
        b.pointer.update(repeating: 0, count: layout.units[unit].count)
        return b.pointer
    }

    /// Starts reducing `unit`'s gradients; this rank's piece lands in the shard later.
    func produced(unit: Int) {
        guard let slot = slotOfUnit.removeValue(forKey: unit) else { return }
        let range = layout.units[unit]
        let part = shard.myPart(of: range)
        let recv = receives[slot].pointer
        let r: CommRequest
        if reduce.isLow {
            reduce.narrow(buffers[slot].pointer, into: lowSend[slot].pointer, range.count)
            r = comm.startReduceScatterV(send: UnsafeRawPointer(lowSend[slot].pointer),
                                         recv: UnsafeMutableRawPointer(lowRecv[slot].pointer),
                                         counts: shard.pieces(of: range), dtype: reduce.commDType, op: .sum,
                                         label: "reduce-scatter of unit \(unit) gradients")
        } else {
            r = comm.startReduceScatterV(send: UnsafeRawPointer(buffers[slot].pointer), recv: UnsafeMutableRawPointer(recv),
                                         counts: shard.pieces(of: range), dtype: .float32, op: .sum,
                                         label: "reduce-scatter of unit \(unit) gradients")
        }
        pending[slot] = Pending(request: r, recv: recv, dest: part.lowerBound - shard.mine.lowerBound, count: part.count)
        progress()
    }

    /// Lets MPI advance the reductions in flight; folds finished ones into the shard.
    func progress() {
        for slot in 0..<pending.count { try? complete(slot, wait: false) }
    }

    /// Waits for every reduction of the micro-step, adding the time waited to `seconds`.
    func finish(seconds: inout Double) throws(CommError) {
        let t0 = MPIClock.now()
        for slot in 0..<pending.count { try complete(slot, wait: true) }
        seconds += MPIClock.now() - t0
    }

    private func complete(_ slot: Int, wait: Bool) throws(CommError) {
        guard let p = pending[slot] else { return }
        if wait { try comm.wait(p.request) } else if !comm.test(p.request) { return }
        if reduce.isLow { reduce.widen(lowRecv[slot].pointer, into: p.recv, p.count) }
        Vector.add(p.recv, into: gradShard.pointer + p.dest, p.count)
        pending[slot] = nil
    }
}

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
///
/// Under hybrid sharding (`replicas`) each unit's piece of the shard, once its last
/// micro-step is in, is all-reduced across groups while backward goes on (as PyTorch's HSDP
/// does), in the order units were produced, so every group starts them in the same order.
final class UnitGradientReducer: ShardedGradients {
    struct Pending { var request: CommRequest; var recv: UnsafeMutablePointer<Float>; var dest: Int; var count: Int; var sequence: Int }

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
    /// Hybrid sharding: the same shard in the other groups, the shard's 16-bit staging for
    /// their all-reduces, the pieces produced this step (shard offset, count, on the last
    /// micro-step, folded in yet) with the next one to look at, and the all-reduces in flight.
    let replicas: Communicator?
    private let replicaStaging: HalfBuffer
    private var produced: [(dest: Int, count: Int, last: Bool, folded: Bool)] = []
    private var nextAcross = 0
    private var across: [CommRequest] = []
    private var isLastMicroStep = true

    init(layout: ParameterLayout, shard: ShardLayout, comm: Communicator, reduce: Precision = .fp32, replicas: Communicator? = nil) {
        self.layout = layout; self.shard = shard; self.comm = comm; self.reduce = reduce; self.replicas = replicas
        replicaStaging = HalfBuffer(count: replicas != nil && reduce.isLow ? shard.shardSize : 0)
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
            .merging(replicaStaging.count > 0 ? [ZeRO.replicaStagingName: replicaStaging.byteCount] : [:]) { $0 + $1 }
    }

    func beginStep() {
        gradShard.zero()
        produced.removeAll(keepingCapacity: true)
        nextAcross = 0
    }
    /// Every micro-step reduces within the group; only the last also reduces across groups.
    func beginMicroStep(isLast: Bool) { isLastMicroStep = isLast }

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
        let dest = part.lowerBound - shard.mine.lowerBound
        pending[slot] = Pending(request: r, recv: recv, dest: dest, count: part.count, sequence: produced.count)
        produced.append((dest, part.count, isLastMicroStep, false))
        progress()
    }

    /// Lets MPI advance the reductions in flight; folds finished ones into the shard.
    func progress() {
        for slot in 0..<pending.count { try? complete(slot, wait: false) }
        if let replicas { for r in across { _ = replicas.test(r) } }
    }

    /// Waits for every reduction of the micro-step, adding the time waited to `seconds`.
    func finish(seconds: inout Double) throws(CommError) {
        let t0 = MPIClock.now()
        for slot in 0..<pending.count { try complete(slot, wait: true) }
        if let replicas {
            for r in across { try replicas.wait(r) }
            across.removeAll(keepingCapacity: true)
            for p in produced where p.last && p.count > 0 {
                replicas.finishAllReduce(gradShard.pointer + p.dest, count: p.count, wire: reduce, staging: replicaStaging.pointer + p.dest)
            }
        }
        seconds += MPIClock.now() - t0
    }

    private func complete(_ slot: Int, wait: Bool) throws(CommError) {
        guard let p = pending[slot] else { return }
        if wait { try comm.wait(p.request) } else if !comm.test(p.request) { return }
        if reduce.isLow { reduce.widen(lowRecv[slot].pointer, into: p.recv, p.count) }
        Vector.add(p.recv, into: gradShard.pointer + p.dest, p.count)
        pending[slot] = nil
        produced[p.sequence].folded = true
        startAcrossGroups()
    }

    /// Starts the cross-group all-reduce of every piece of the last micro-step folded in, in
    /// the order the pieces were produced (collectives must start in one order on all ranks).
    /// A unit's earlier micro-steps are folded in by then: its slot was waited for before reuse.
    private func startAcrossGroups() {
        guard let replicas else { return }
        while nextAcross < produced.count {
            let p = produced[nextAcross]
            if p.last && !p.folded { break }
            nextAcross += 1
            guard p.last, p.count > 0 else { continue }
            across.append(replicas.startAllReduce(gradShard.pointer + p.dest, count: p.count, wire: reduce,
                                                  staging: replicaStaging.pointer + p.dest, label: "all-reduce of gradient shard across groups"))
        }
    }
}

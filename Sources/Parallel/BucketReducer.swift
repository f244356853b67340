import Comm
import Kernels
import Model
import Settings

// MARK: - BucketReducer

/// Gradient communication of the strategies that accumulate full gradients on every rank
/// (DDP and ZeRO-1): units grouped into buckets, each reduced as soon as backward finishes it
/// on the last micro-step, overlapping the layers still to come.
///
/// DDP all-reduces a bucket in place; ZeRO-1 reduce-scatters it so each rank receives the
/// summed gradient of exactly its shard. Buckets are whole units taken from the end of the
/// flat buffer (the order backward finishes them). Every later hook tests the requests in
/// flight, because Open MPI progresses a nonblocking collective only inside MPI calls.
final class BucketReducer: ShardedGradients {
    /// What a bucket's reduction leaves on this rank.
    enum Collective {
        /// The summed bucket, in place (DDP).
        case allReduce
        /// This rank's part of the summed bucket, in `shard` (ZeRO-1).
        case reduceScatter(ShardLayout, into: FloatBuffer)
    }

    let layout: ParameterLayout
    let comm: Communicator
    let collective: Collective
    /// Full gradients, accumulated over micro-steps.
    let grads: FloatBuffer
    /// Bucket ranges (elements) in the order they are reduced, and each one's lowest unit.
    let buckets: [Range<Int>]
    private let bucketFirstUnit: [Int]
    /// Gradients travel in this format; 16-bit formats halve the bytes sent.
    let reduce: Precision
    /// 16-bit staging of the gradients and of the received shard (only when they travel).
    private let lowGrads: HalfBuffer?, lowShard: HalfBuffer?
    private var inFlight: [CommRequest] = []
    /// Whether the coming backward is the last of the step (the only one that communicates).
    var isLastMicroStep = true

    init(layout: ParameterLayout, comm: Communicator, bucketBytes: Int, reduce: Precision, collective: Collective) {
        self.layout = layout; self.comm = comm; self.reduce = reduce; self.collective = collective
        grads = FloatBuffer(count: layout.count)
        (buckets, bucketFirstUnit) = Self.makeBuckets(layout: layout, bucketBytes: bucketBytes)
        let travels = reduce.isLow && comm.size > 1
        lowGrads = travels ? HalfBuffer(count: layout.count) : nil
        if travels, case .reduceScatter(let shard, _) = collective { lowShard = HalfBuffer(count: shard.shardSize) }
        else { lowShard = nil }
    }

    /// Groups units, last first, into buckets of at least `bucketBytes` (a unit is never split).
    static func makeBuckets(layout: ParameterLayout, bucketBytes: Int) -> ([Range<Int>], [Int]) {
        var ranges: [Range<Int>] = [], firsts: [Int] = []
        var hi = layout.count
        for u in stride(from: layout.units.count - 1, through: 0, by: -1) {
            let lo = layout.units[u].lowerBound
            if (hi - lo) * 4 >= bucketBytes || u == 0 {
                ranges.append(lo..<hi); firsts.append(u)
                hi = lo
            }
        }
        return (ranges, firsts)
    }

    /// Bytes of 16-bit staging buffers.
    var stagingBytes: Int { (lowGrads?.byteCount ?? 0) + (lowShard?.byteCount ?? 0) }

    // MARK: The model's and the step's view

    /// ZeRO-1's reduced shard (the reduce-scatter target).
    var gradShard: FloatBuffer {
        guard case .reduceScatter(_, let into) = collective else { preconditionFailure("an all-reduce has no shard") }
        return into
    }

    func buffer(for unit: Int) -> UnsafeMutablePointer<Float> { grads.pointer + layout.units[unit].lowerBound }
    func beginStep() { grads.zero() }
    func beginMicroStep(isLast: Bool) { isLastMicroStep = isLast }
    func progress() { for r in inFlight { _ = comm.test(r) } }

    var bytes: (gradients: Int, working: [String: Int]) {
        (grads.byteCount, ["gradient shard (reduce-scatter target)": gradShard.byteCount, "16-bit gradient staging": stagingBytes])
    }

    /// Backward has finished `unit`: progress the reductions in flight and start every bucket
    /// whose lowest unit this is.
    func produced(unit: Int) {
        if case .allReduce = collective, comm.size == 1 { return }
        progress()
        guard isLastMicroStep else { return }
        for (i, first) in bucketFirstUnit.enumerated() where first == unit { start(bucket: i) }
    }

    private func start(bucket i: Int) {
        let b = buckets[i]
        var send = UnsafeMutableRawPointer(grads.pointer + b.lowerBound), dtype = CommDType.float32
        if let low = lowGrads {
            reduce.narrow(grads.pointer + b.lowerBound, into: low.pointer + b.lowerBound, b.count)
            send = UnsafeMutableRawPointer(low.pointer + b.lowerBound)
            dtype = reduce.commDType
        }
        switch collective {
        case .allReduce:
            inFlight.append(comm.startAllReduce(send, count: b.count, dtype: dtype, op: .sum,
                                                label: "all-reduce of gradient bucket \(i)"))
        case .reduceScatter(let shard, let into):
            let at = shard.myPart(of: b).lowerBound - shard.mine.lowerBound
            let recv = lowShard.map { UnsafeMutableRawPointer($0.pointer + at) } ?? UnsafeMutableRawPointer(into.pointer + at)
            inFlight.append(comm.startReduceScatterV(send: UnsafeRawPointer(send), recv: recv, counts: shard.pieces(of: b),
                                                     dtype: dtype, op: .sum, label: "reduce-scatter of gradient bucket \(i)"))
        }
    }

    /// Waits for every reduction of the step, adding the time waited to `seconds`, and widens
    /// what arrived in 16 bits.
    func finish(seconds: inout Double) throws(CommError) {
        let t0 = MPIClock.now()
        let reduced = !inFlight.isEmpty
        for r in inFlight { try comm.wait(r) }
        inFlight.removeAll(keepingCapacity: true)
        seconds += MPIClock.now() - t0
        guard reduced else { return }
        switch collective {
        case .allReduce:
            if let low = lowGrads { reduce.widen(low.pointer, into: grads.pointer, layout.count) }
        case .reduceScatter(let shard, let into):
            if let low = lowShard { reduce.widen(low.pointer, into: into.pointer, shard.mine.count) }
        }
    }
}

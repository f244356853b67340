import Comm
import Kernels
import Model
import Optim

#if canImport(Glibc)
import Glibc
#endif

// MARK: - DataParallel (DDP)

/// Replicated training: every rank holds all parameters, gradients and AdamW states.
///
/// Gradients are grouped into buckets of whole units taken from the end of the flat buffer
/// (the order backward finishes them). On the last micro-step, when backward reports the
/// lowest unit of a bucket done, that bucket's all-reduce starts; every later hook tests the
/// requests in flight so Open MPI progresses them while the next layers compute.
public final class DataParallel: TrainingStrategy {
    public let layout: ParameterLayout
    let comm: Communicator
    let adam: AdamW
    let mask: DecayMask
    /// Full parameters, gradients, moments.
    public let params: FloatBuffer, grads: FloatBuffer, m: FloatBuffer, v: FloatBuffer
    let flat: FlatParameters
    /// Bucket ranges (elements) in the order they are reduced.
    public let buckets: [Range<Int>]
    private let bucketFirstUnit: [Int]      // lowest unit index in each bucket
    /// Gradients travel in this format; 16-bit formats halve the bytes sent.
    let reduce: Precision
    /// 16-bit staging copy of the gradients for the reduction.
    private let lowGrads: HalfBuffer?
    private var inFlight: [CommRequest] = []
    private var isLastMicroStep = true
    public var commWaitSeconds: Double = 0

    public var provider: ParameterProvider { flat }

    /// Creates the strategy; `initial` fills the parameters (identical on every rank).
    public init(layout: ParameterLayout, comm: Communicator, adam: AdamW, bucketBytes: Int, reduce: Precision = .fp32) {
        self.reduce = reduce
        lowGrads = reduce.isLow && comm.size > 1 ? HalfBuffer(count: layout.count) : nil
        self.layout = layout
        self.comm = comm
        self.adam = adam
        self.mask = decayMask(for: layout)
        params = FloatBuffer(count: layout.count)
        grads = FloatBuffer(count: layout.count)
        m = FloatBuffer(count: layout.count)
        v = FloatBuffer(count: layout.count)
        flat = FlatParameters(layout: layout, parameters: params.pointer, gradients: grads.pointer)
        (buckets, bucketFirstUnit) = Self.makeBuckets(layout: layout, bucketBytes: bucketBytes)
        flat.onGradientsProduced = { [unowned self] unit in self.unitDone(unit) }
    }

    /// Groups units, last first, into buckets of at least `bucketBytes` (a unit is never split).
    static func makeBuckets(layout: ParameterLayout, bucketBytes: Int) -> ([Range<Int>], [Int]) {
        var ranges: [Range<Int>] = [], firsts: [Int] = []
        var hi = layout.count
        var lo = hi
        for u in stride(from: layout.units.count - 1, through: 0, by: -1) {
            lo = layout.units[u].lowerBound
            if (hi - lo) * 4 >= bucketBytes || u == 0 {
                ranges.append(lo..<hi); firsts.append(u)
                hi = lo
            }
        }
        return (ranges, firsts)
    }

    public func beginStep() { grads.zero() }

    public func beginMicroStep(isLast: Bool) { isLastMicroStep = isLast }

    private func unitDone(_ unit: Int) {
        guard comm.size > 1 else { return }
        for r in inFlight { _ = comm.test(r) }
        guard isLastMicroStep else { return }
        for (i, first) in bucketFirstUnit.enumerated() where first == unit {
            let b = buckets[i]
            var buffer = UnsafeMutableRawPointer(grads.pointer + b.lowerBound), dtype = CommDType.float32
            if let low = lowGrads {
                reduce.narrow(grads.pointer + b.lowerBound, into: low.pointer + b.lowerBound, b.count)
                buffer = UnsafeMutableRawPointer(low.pointer + b.lowerBound)
                dtype = reduce.commDType
            }
            inFlight.append(comm.startAllReduce(buffer, count: b.count, dtype: dtype, op: .sum,
                                                label: "all-reduce of gradient bucket \(i)"))
        }
    }

    public func finishGradients() throws(CommError) {
        let t0 = MPIClock.now()
        let reduced = !inFlight.isEmpty
        for r in inFlight { try comm.wait(r) }
        inFlight.removeAll(keepingCapacity: true)
        commWaitSeconds += MPIClock.now() - t0
        if let low = lowGrads, reduced { reduce.widen(low.pointer, into: grads.pointer, layout.count) }
    }

    public func gradientSquaredNorm() throws(CommError) -> Double {
        Vector.sumOfSquares(grads.pointer, layout.count)
    }

    public func localGradientsFinite() -> Bool { Vector.allFinite(grads.pointer, layout.count) }
    public func poisonGradientForTesting() { grads[0] = .infinity }

    public func optimizerStep(step: Int, lr: Float, clip: Float) throws(CommError) {
        if clip != 1 { Vector.scale(grads.pointer, layout.count, by: clip) }
        mask.forEach(in: 0..<layout.count) { range, decays in
            let o = range.lowerBound
            adam.update(step: step, lr: lr, decay: decays, param: params.pointer + o, grad: grads.pointer + o,
                        m: m.pointer + o, v: v.pointer + o, count: range.count)
        }
    }

    public var memory: MemoryReport {
        MemoryReport(parameters: params.byteCount, gradients: grads.byteCount,
                     optimizer: m.byteCount + v.byteCount,
                     working: lowGrads.map { ["16-bit gradient staging": $0.byteCount] } ?? [:])
    }

    public func statePieces() -> [StatePiece] {
        let shard = ShardLayout(total: layout.count, ranks: comm.size, rank: comm.rank)
        let o = shard.mine.lowerBound
        return pieces(shard, params: params.pointer + o, m: m.pointer + o, v: v.pointer + o)
    }

    public func loadState(_ read: (String, Range<Int>, UnsafeMutablePointer<Float>) throws -> Void) rethrows {
        let all = 0..<layout.count
        try read("params", all, params.pointer)
        try read("adam.m", all, m.pointer)
        try read("adam.v", all, v.pointer)
    }

    public func loadParameters(from full: UnsafePointer<Float>) {
        params.pointer.update(from: full, count: layout.count)
    }

    public func gatherParameters(into out: UnsafeMutablePointer<Float>) throws(CommError) {
        out.update(from: params.pointer, count: layout.count)
    }
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

// MARK: - Communicator

/// Element types a collective can carry.
public enum CommDType: Sendable {
    case float32, float64, int64, byte
    /// 16-bit floats; reductions convert each pair to fp32, add, and round back.
    case bfloat16, float16

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .float32: return 4
        case .float64, .int64: return 8
        case .byte: return 1
        case .bfloat16, .float16: return 2
        }
    }
}

/// Elements one rank sends in each collective, as the ring algorithms the formulas in
/// DESIGN.md assume (all-reduce = reduce-scatter + all-gather = 2·n·(N−1)/N): the
/// communication accounting every communicator reports.
public enum RingTraffic {
    public static func allReduce(count: Int, ranks: Int) -> Int { 2 * count * (ranks - 1) / ranks }
    /// A reduce-scatter or all-gather of equal blocks of `countPerRank`.
    public static func equalBlocks(countPerRank: Int, ranks: Int) -> Int { countPerRank * (ranks - 1) }
    /// A reduce-scatter or all-gather of uneven blocks `counts`.
    public static func blocks(_ counts: [Int], ranks: Int) -> Int { counts.reduce(0, +) * (ranks - 1) / ranks }
    public static func broadcast(count: Int, isRoot: Bool) -> Int { isRoot ? count : 0 }
}

/// Reduction applied by all-reduce and reduce-scatter.
public enum ReduceOp: Sendable { case sum, max }

/// Handle of a collective in flight.
public final class CommRequest: @unchecked Sendable {
    /// Human-readable name for the watchdog ("all-reduce of grad bucket 3").
    public let label: String
    /// Elements this rank sends for the collective (for the communication accounting).
    public let sentElements: Int
    /// Implementation-specific state.
    var handle: AnyObject?
    /// Whether it has completed.
    public internal(set) var done: Bool
    /// Arguments the transport reads until completion (count arrays of V collectives).
    var keepAlive: AnyObject?
    /// When it started, for a profile's timeline (0 when none is recording).
    var traceStart: UInt64 = 0

    /// The collective's kind, its label up to " of " ("all-reduce"), which names its spans.
    public var kind: String {
        label.range(of: " of ").map { String(label[..<$0.lowerBound]) } ?? label
    }

    init(label: String, sentElements: Int, handle: AnyObject?, done: Bool) {
        self.label = label
        self.sentElements = sentElements
        self.handle = handle
        self.done = done
    }
}

/// Errors raised by communicators.
public enum CommError: Error, CustomStringConvertible {
    /// A collective did not finish in time.
    case timeout(label: String, context: String, rank: Int, seconds: Double)
    /// The transport reported a failure.
    case failed(label: String, code: Int32)

    public var description: String {
        switch self {
        case .timeout(let label, let context, let rank, let s):
            return "[rank \(rank)] error: \(label) did not complete within \(Int(s)) s (\(context), waiting rank \(rank)): "
                + "a peer rank is stalled, dead or unreachable; check the other ranks' logs and the network, "
                + "or raise --comm-timeout"
        case .failed(let label, let code):
            return "error: \(label) failed with MPI error \(code) (communicator): check that all ranks are alive"
        }
    }
}

/// The collectives the trainer and the parallel strategies use; nothing above this layer
/// talks to MPI directly.
///
/// All collectives are expressed as *start* + `wait`, so every wait goes through the
/// watchdog; the blocking forms are conveniences built on them. Buffers must stay valid
/// until the request completes.
public protocol Communicator: AnyObject {
    /// This process's index, 0 ..< size. Rank 0 is the coordinator.
    var rank: Int { get }
    /// Number of ranks.
    var size: Int { get }
    /// Seconds a wait may take before the watchdog aborts the job.
    var timeoutSeconds: Double { get set }
    /// What the job is doing (e.g. "step 12"), quoted by the watchdog.
    var context: String { get set }
    /// Elements this rank has sent since the counter was last reset.
    var sentElements: Int { get set }
    /// Bytes this rank has sent since the counter was last reset (elements × element size).
    var sentBytes: Int { get set }

    /// Starts an in-place all-reduce of `count` elements.
    func startAllReduce(_ buffer: UnsafeMutableRawPointer, count: Int, dtype: CommDType, op: ReduceOp,
                        label: String) -> CommRequest
    /// Starts a reduce-scatter: `send` holds `size × countPerRank` elements, `recv` gets this
    /// rank's reduced block.
    func startReduceScatter(send: UnsafeRawPointer, recv: UnsafeMutableRawPointer, countPerRank: Int,
                            dtype: CommDType, op: ReduceOp, label: String) -> CommRequest
    /// Starts an all-gather: every rank's `countPerRank` elements end up in `recv`, in rank order.
    func startAllGather(send: UnsafeRawPointer, recv: UnsafeMutableRawPointer, countPerRank: Int,
                        dtype: CommDType, label: String) -> CommRequest
    /// Starts a reduce-scatter with uneven blocks: `send` holds `counts.reduce(+)` elements in
    /// rank order; `recv` gets this rank's `counts[rank]` reduced elements.
    func startReduceScatterV(send: UnsafeRawPointer, recv: UnsafeMutableRawPointer, counts: [Int],
                             dtype: CommDType, op: ReduceOp, label: String) -> CommRequest
    /// Starts an all-gather with uneven blocks: this rank's `counts[rank]` elements from `send`
    /// land in `recv` at the sum of the earlier ranks' counts.
    func startAllGatherV(send: UnsafeRawPointer, recv: UnsafeMutableRawPointer, counts: [Int],
                         dtype: CommDType, label: String) -> CommRequest
    /// Starts a broadcast of `count` elements from `root`.
    func startBroadcast(_ buffer: UnsafeMutableRawPointer, count: Int, dtype: CommDType, root: Int,
                        label: String) -> CommRequest
    /// Starts a barrier.
    func startBarrier(label: String) -> CommRequest
    /// Drives progress; true when `request` has completed.
    func test(_ request: CommRequest) -> Bool
    /// Blocks until `request` completes or the watchdog fires.
    func wait(_ request: CommRequest) throws(CommError)
    /// Ends the whole job at once (all ranks) with `code`.
    func abort(code: Int32) -> Never

    /// Splits the ranks into sub-communicators (collective over this one): the ranks passing
    /// the same `color` form one, ranked by `key`. A sub-communicator reports its traffic to
    /// this one's counters too and follows its watchdog context and timeout.
    func split(color: Int, key: Int) throws(CommError) -> Communicator
    /// The ranks of this one that share this rank's node (collective).
    func splitByNode() throws(CommError) -> Communicator
}

// MARK: - Settings and counters shared along splits

/// A communicator's watchdog settings and traffic counters. One split from another keeps a
/// state whose parent is the other's: it follows the parent's context and timeout (the trainer
/// sets them on the world) and adds its traffic to the parent's counters too, so the world's
/// counters remain the rank's total.
public final class CommunicatorState {
    let parent: CommunicatorState?
    private var ownTimeout = 300.0, ownContext: String
    var sentElements = 0, sentBytes = 0

    init(context: String = "", parent: CommunicatorState? = nil) { ownContext = context; self.parent = parent }

    var timeoutSeconds: Double {
        get { parent?.timeoutSeconds ?? ownTimeout }
        set { ownTimeout = newValue }
    }
    var context: String {
        get { parent?.context ?? ownContext }
        set { ownContext = newValue }
    }

    /// Adds `sent` elements of `dtype` to these counters and every parent's.
    func count(_ sent: Int, _ dtype: CommDType) {
        sentElements += sent
        sentBytes += sent * dtype.size
        parent?.count(sent, dtype)
    }
}

/// A communicator whose settings and counters live in a `CommunicatorState`.
public protocol StatefulCommunicator: Communicator {
    var state: CommunicatorState { get }
}

extension StatefulCommunicator {
    public var timeoutSeconds: Double {
        get { state.timeoutSeconds }
        set { state.timeoutSeconds = newValue }
    }
    public var context: String {
        get { state.context }
        set { state.context = newValue }
    }
    public var sentElements: Int {
        get { state.sentElements }
        set { state.sentElements = newValue }
    }
    public var sentBytes: Int {
        get { state.sentBytes }
        set { state.sentBytes = newValue }
    }
}

// MARK: - Blocking conveniences

extension Communicator {
    /// In-place all-reduce of floats.
    public func allReduce(_ p: UnsafeMutablePointer<Float>, count: Int, op: ReduceOp = .sum,
                          label: String) throws(CommError) {
        try wait(startAllReduce(UnsafeMutableRawPointer(p), count: count, dtype: .float32, op: op, label: label))
    }

    /// In-place all-reduce of doubles (loss sums, squared norms, flags).
    public func allReduce(_ values: inout [Double], op: ReduceOp = .sum, label: String) throws(CommError) {
        let n = values.count
        let tmp = UnsafeMutablePointer<Double>.allocate(capacity: max(n, 1))
        defer { tmp.deallocate() }
        for i in 0..<n { tmp[i] = values[i] }
        try wait(startAllReduce(UnsafeMutableRawPointer(tmp), count: n, dtype: .float64, op: op, label: label))
        for i in 0..<n { values[i] = tmp[i] }
    }

    /// Broadcast of bytes from `root`; non-roots must pass an array of the same length.
    public func broadcast(_ bytes: inout [UInt8], root: Int, label: String) throws(CommError) {
        let n = bytes.count
        let tmp = UnsafeMutablePointer<UInt8>.allocate(capacity: max(n, 1))
        defer { tmp.deallocate() }
        for i in 0..<n { tmp[i] = bytes[i] }
        try wait(startBroadcast(UnsafeMutableRawPointer(tmp), count: n, dtype: .byte, root: root, label: label))
        for i in 0..<n { bytes[i] = tmp[i] }
    }

    /// Barrier through the watchdog.
    public func barrier(label: String = "barrier") throws(CommError) {
        try wait(startBarrier(label: label))
    }
}

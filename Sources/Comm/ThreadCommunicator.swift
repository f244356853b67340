import Foundation
import Kernels

// MARK: - ThreadCommunicator

/// A world of `size` ranks that are threads of one process: every collective meets at a
/// barrier, each rank computes its own result from every rank's buffers, and a second barrier
/// keeps the buffers alive until all have read them. Collectives complete inside `start*`.
///
/// It exists so the strategies' bucket and shard logic can be tested in milliseconds, without
/// `mpirun`. Reductions add in rank order (16-bit sums round after each addition, as Open
/// MPI's user-defined operator does pairwise), so results are deterministic, though not
/// bit-equal to Open MPI's ring order.
///
/// Each communicator belongs to one thread (hence `@unchecked Sendable`: it is handed over once).
public final class ThreadCommunicator: StatefulCommunicator, @unchecked Sendable {
    public let rank: Int
    public var size: Int { world.size }
    public let state: CommunicatorState
    private let world: ThreadWorld
    /// How many splits this one has made (each names its sub-worlds).
    private var splits = 0

    init(rank: Int, world: ThreadWorld, parent: ThreadCommunicator? = nil) {
        self.rank = rank; self.world = world
        state = CommunicatorState(parent: parent?.state)
    }

    /// Communicators for `size` ranks of one in-process world; hand one to each thread.
    /// `ranksPerNode` consecutive ranks play one node (for `splitByNode`).
    public static func world(size: Int, ranksPerNode: Int? = nil) -> [ThreadCommunicator] {
        let w = ThreadWorld(size: size, ranksPerNode: ranksPerNode ?? size)
        return (0..<size).map { ThreadCommunicator(rank: $0, world: w) }
    }

    /// Runs `body(comm)` on `size` threads, one per rank, and returns their results in rank order.
    public static func run<T>(size: Int, ranksPerNode: Int? = nil,
                              _ body: @escaping @Sendable (ThreadCommunicator) throws -> T) rethrows -> [T] {
        let comms = world(size: size, ranksPerNode: ranksPerNode)
        let results = ResultBox<T>(count: size)
        let group = DispatchGroup()
        for c in comms {
            let thread = Thread { results.set(c.rank, Result { try body(c) }); group.leave() }
            thread.stackSize = 16 << 20
            group.enter()
            thread.start()
        }
        group.wait()
        return try results.values.map { try $0!.get() }
    }

    /// Labels of the collectives this rank started here, in order (tests check which travel where).
    public private(set) var labels: [String] = []

    private func done(_ label: String, sent: Int, dtype: CommDType) -> CommRequest {
        labels.append(label)
        state.count(sent, dtype)
        return CommRequest(label: label, sentElements: sent, handle: nil, done: true)
    }

    // MARK: Sub-communicators

    public func split(color: Int, key: Int) throws(CommError) -> Communicator {
        splits += 1
        var members: [(key: Int, rank: Int)] = []
        [color, key].withUnsafeBufferPointer { mine in
            world.exchange(rank: rank, send: UnsafeRawPointer(mine.baseAddress!)) { sends in
                members = sends.enumerated()
                    .map { (color: $0.element.load(as: Int.self), key: $0.element.load(fromByteOffset: 8, as: Int.self), rank: $0.offset) }
                    .filter { $0.color == color }
                    .map { (key: $0.key, rank: $0.rank) }
                    .sorted { ($0.key, $0.rank) < ($1.key, $1.rank) }
                return {}
            }
        }
        // Every member asks for the same sub-world: the first to ask creates it.
        let sub = world.subworld(id: "\(splits):\(color)", size: members.count)
        return ThreadCommunicator(rank: members.firstIndex { $0.rank == rank }!, world: sub, parent: self)
    }

    public func splitByNode() throws(CommError) -> Communicator {
        try split(color: rank / world.ranksPerNode, key: rank)
    }

    // MARK: Collectives

    public func startAllReduce(_ buffer: UnsafeMutableRawPointer, count: Int, dtype: CommDType, op: ReduceOp,
                               label: String) -> CommRequest {
        world.exchange(rank: rank, send: UnsafeRawPointer(buffer)) { sends in
            let result = Combine.reduce(sends, offset: 0, count: count, dtype: dtype, op: op)
            return { result.copyBytes(to: UnsafeMutableRawBufferPointer(start: buffer, count: result.count)) }
        }
        return done(label, sent: RingTraffic.allReduce(count: count, ranks: size), dtype: dtype)
    }

    public func startReduceScatter(send: UnsafeRawPointer, recv: UnsafeMutableRawPointer, countPerRank: Int,
                                   dtype: CommDType, op: ReduceOp, label: String) -> CommRequest {
        startReduceScatterV(send: send, recv: recv, counts: Array(repeating: countPerRank, count: size), dtype: dtype,
                            op: op, label: label, sent: RingTraffic.equalBlocks(countPerRank: countPerRank, ranks: size))
    }

    public func startReduceScatterV(send: UnsafeRawPointer, recv: UnsafeMutableRawPointer, counts: [Int],
                                    dtype: CommDType, op: ReduceOp, label: String) -> CommRequest {
        startReduceScatterV(send: send, recv: recv, counts: counts, dtype: dtype, op: op, label: label,
                            sent: RingTraffic.blocks(counts, ranks: size))
    }

    private func startReduceScatterV(send: UnsafeRawPointer, recv: UnsafeMutableRawPointer, counts: [Int],
                                     dtype: CommDType, op: ReduceOp, label: String, sent: Int) -> CommRequest {
        let offset = counts[..<rank].reduce(0, +)
        world.exchange(rank: rank, send: send) { sends in
            let result = Combine.reduce(sends, offset: offset, count: counts[rank], dtype: dtype, op: op)
            return { result.copyBytes(to: UnsafeMutableRawBufferPointer(start: recv, count: result.count)) }
        }
        return done(label, sent: sent, dtype: dtype)
    }

    public func startAllGather(send: UnsafeRawPointer, recv: UnsafeMutableRawPointer, countPerRank: Int,
                               dtype: CommDType, label: String) -> CommRequest {
        gather(send: send, recv: recv, counts: Array(repeating: countPerRank, count: size), dtype: dtype)
        return done(label, sent: RingTraffic.equalBlocks(countPerRank: countPerRank, ranks: size), dtype: dtype)
    }

    public func startAllGatherV(send: UnsafeRawPointer, recv: UnsafeMutableRawPointer, counts: [Int],
                                dtype: CommDType, label: String) -> CommRequest {
        gather(send: send, recv: recv, counts: counts, dtype: dtype)
        return done(label, sent: RingTraffic.blocks(counts, ranks: size), dtype: dtype)
    }

    private func gather(send: UnsafeRawPointer, recv: UnsafeMutableRawPointer, counts: [Int], dtype: CommDType) {
        world.exchange(rank: rank, send: send) { sends in
            // Copied out first: `send` may lie inside another rank's `recv` (in-place gathers).
            var all = [UInt8]()
            for (r, p) in sends.enumerated() { all += UnsafeRawBufferPointer(start: p, count: counts[r] * dtype.size) }
            return { all.copyBytes(to: UnsafeMutableRawBufferPointer(start: recv, count: all.count)) }
        }
    }

    public func startBroadcast(_ buffer: UnsafeMutableRawPointer, count: Int, dtype: CommDType, root: Int,
                               label: String) -> CommRequest {
        world.exchange(rank: rank, send: UnsafeRawPointer(buffer)) { sends in
            let bytes = [UInt8](UnsafeRawBufferPointer(start: sends[root], count: count * dtype.size))
            return { bytes.copyBytes(to: UnsafeMutableRawBufferPointer(start: buffer, count: bytes.count)) }
        }
        return done(label, sent: RingTraffic.broadcast(count: count, isRoot: rank == root), dtype: dtype)
    }

    public func startBarrier(label: String) -> CommRequest {
        world.exchange(rank: rank, send: UnsafeRawPointer(bitPattern: 1)!) { _ in {} }
        return done(label, sent: 0, dtype: .byte)
    }

    public func test(_ request: CommRequest) -> Bool { true }
    public func wait(_ request: CommRequest) throws(CommError) {}
    public func abort(code: Int32) -> Never { fatalError("rank \(rank) aborted the in-process world with code \(code)") }
}

// MARK: - The shared meeting point

/// Where the ranks of a `ThreadCommunicator` world meet.
final class ThreadWorld: @unchecked Sendable {
    let size: Int, ranksPerNode: Int
    private let condition = NSCondition()
    private var arrived = 0, generation = 0
    private var sends: [UnsafeRawPointer?]
    private var subworlds: [String: ThreadWorld] = [:]

    init(size: Int, ranksPerNode: Int) {
        self.size = size; self.ranksPerNode = ranksPerNode
        sends = Array(repeating: nil, count: size)
    }

    /// The sub-world `id` of a split, created by the first member that asks.
    func subworld(id: String, size: Int) -> ThreadWorld {
        condition.lock(); defer { condition.unlock() }
        if let w = subworlds[id] { return w }
        let w = ThreadWorld(size: size, ranksPerNode: size)
        subworlds[id] = w
        return w
    }

    /// One collective: every rank posts its send buffer; after all have, each computes its
    /// result from all of them (`compute` returns how to store it); after all have computed,
    /// each stores its result, so no rank overwrites a buffer another is still reading.
    func exchange(rank: Int, send: UnsafeRawPointer, _ compute: ([UnsafeRawPointer]) -> () -> Void) {
        condition.lock(); sends[rank] = send; condition.unlock()
        barrier()
        condition.lock(); let all = sends.map { $0! }; condition.unlock()
        let store = compute(all)
        barrier()
        store()
        barrier()
    }

    private func barrier() {
        condition.lock()
        let g = generation
        arrived += 1
        if arrived == size {
            arrived = 0
            generation += 1
            condition.broadcast()
        } else {
            while generation == g { condition.wait() }
        }
        condition.unlock()
    }
}

/// Element-wise reductions over every rank's buffer, in rank order.
enum Combine {
    static func reduce(_ sends: [UnsafeRawPointer], offset: Int, count: Int, dtype: CommDType, op: ReduceOp) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count * dtype.size)
        out.withUnsafeMutableBytes { dst in
            switch dtype {
            case .float32: fold(Float.self, sends, offset, count, dst, op == .sum ? (+) : { max($0, $1) })
            case .float64: fold(Double.self, sends, offset, count, dst, op == .sum ? (+) : { max($0, $1) })
            case .int64: fold(Int64.self, sends, offset, count, dst, op == .sum ? (&+) : { max($0, $1) })
            case .byte: fold(UInt8.self, sends, offset, count, dst, op == .sum ? (&+) : { max($0, $1) })
            case .bfloat16, .float16:
                precondition(op == .sum, "only sums are defined for 16-bit reductions")
                // The scalar conversions the vectorised kernels are tested against.
                let bf = dtype == .bfloat16
                func widen(_ h: UInt16) -> Float { bf ? Convert.float(bf16: h) : Convert.float(fp16: h) }
                func narrow(_ x: Float) -> UInt16 { bf ? Convert.bf16(x) : Convert.fp16(x) }
                fold(UInt16.self, sends, offset, count, dst) { a, b in narrow(widen(a) + widen(b)) }
            }
        }
        return out
    }

    private static func fold<T>(_: T.Type, _ sends: [UnsafeRawPointer], _ offset: Int, _ count: Int,
                                _ dst: UnsafeMutableRawBufferPointer, _ combine: (T, T) -> T) {
        let out = dst.bindMemory(to: T.self)
        for i in 0..<count {
            var acc = sends[0].load(fromByteOffset: (offset + i) * MemoryLayout<T>.stride, as: T.self)
            for r in 1..<sends.count {
                acc = combine(acc, sends[r].load(fromByteOffset: (offset + i) * MemoryLayout<T>.stride, as: T.self))
            }
            out[i] = acc
        }
    }
}

/// Per-rank results of `ThreadCommunicator.run`.
private final class ResultBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var values: [Result<T, Error>?]
    init(count: Int) { values = Array(repeating: nil, count: count) }
    func set(_ i: Int, _ r: Result<T, Error>) { lock.lock(); values[i] = r; lock.unlock() }
}

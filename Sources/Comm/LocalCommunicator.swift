// MARK: - LocalCommunicator

/// The world of one process: every collective is complete as soon as it starts.
public final class LocalCommunicator: Communicator {
    public let rank = 0
    public let size = 1
    public var timeoutSeconds: Double = 300
    public var context: String = ""
    public var sentElements = 0
    public var sentBytes = 0

    /// Creates the single-rank world.
    public init() {}

    private func done(_ label: String) -> CommRequest { CommRequest(label: label, sentElements: 0, handle: nil, done: true) }

    public func startAllReduce(_ buffer: UnsafeMutableRawPointer, count: Int, dtype: CommDType, op: ReduceOp,
                               label: String) -> CommRequest { done(label) }

    public func startReduceScatter(send: UnsafeRawPointer, recv: UnsafeMutableRawPointer, countPerRank: Int,
                                   dtype: CommDType, op: ReduceOp, label: String) -> CommRequest {
        if UnsafeRawPointer(recv) != send { recv.copyMemory(from: send, byteCount: countPerRank * dtype.size) }
        return done(label)
    }

    public func startAllGather(send: UnsafeRawPointer, recv: UnsafeMutableRawPointer, countPerRank: Int,
                               dtype: CommDType, label: String) -> CommRequest {
        if UnsafeRawPointer(recv) != send { recv.copyMemory(from: send, byteCount: countPerRank * dtype.size) }
        return done(label)
    }

    public func startReduceScatterV(send: UnsafeRawPointer, recv: UnsafeMutableRawPointer, counts: [Int],
                                    dtype: CommDType, op: ReduceOp, label: String) -> CommRequest {
        startReduceScatter(send: send, recv: recv, countPerRank: counts[0], dtype: dtype, op: op, label: label)
    }

    public func startAllGatherV(send: UnsafeRawPointer, recv: UnsafeMutableRawPointer, counts: [Int],
                                dtype: CommDType, label: String) -> CommRequest {
        startAllGather(send: send, recv: recv, countPerRank: counts[0], dtype: dtype, label: label)
    }

    public func startBroadcast(_ buffer: UnsafeMutableRawPointer, count: Int, dtype: CommDType, root: Int,
                               label: String) -> CommRequest { done(label) }

    public func startBarrier(label: String) -> CommRequest { done(label) }

    public func test(_ request: CommRequest) -> Bool { true }

    public func wait(_ request: CommRequest) throws(CommError) {}

    public func abort(code: Int32) -> Never { exit(code) }

    /// A world of one splits into itself.
    public func split(color: Int, key: Int) throws(CommError) -> Communicator { self }
    public func splitByNode() throws(CommError) -> Communicator { self }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

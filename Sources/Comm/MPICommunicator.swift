import CMPI
import Kernels
import Settings
import Tracing
#if canImport(Glibc)
import Glibc
#endif

// MARK: - MPICommunicator

/// Open MPI's `MPI_COMM_WORLD` behind the `Communicator` protocol.
///
/// Every collective is nonblocking (`MPI_I*`). Open MPI 4.1 advances a nonblocking
/// collective only inside MPI calls, so callers that overlap communication with compute call
/// `test` between layers (the DDP hook does), and `wait` spins on `MPI_Test` against the
/// watchdog deadline instead of blocking in `MPI_Wait` forever.
public final class MPICommunicator: StatefulCommunicator {
    public let rank: Int
    public let size: Int
    public let state: CommunicatorState
    private let world: MPI_Comm
    /// The communicator this one was split from (nil for `MPI_COMM_WORLD`).
    private let parent: MPICommunicator?

    private final class Box { var request: MPI_Request?; init(_ r: MPI_Request?) { request = r } }

    /// True when this process was started by `mpirun` (Open MPI sets these variables), so
    /// the binary can skip MPI entirely when run on its own and print no MPI warnings.
    public static var launchedByMPI: Bool {
        getenv("OMPI_COMM_WORLD_SIZE") != nil || getenv("PMIX_RANK") != nil
    }

    /// Initialises MPI (funneled: only the main thread calls MPI).
    public convenience init() {
        var provided: Int32 = 0
        MPI_Init_thread(nil, nil, Int32(MPI_THREAD_FUNNELED), &provided)
        self.init(tessera_mpi_comm_world(), parent: nil)
    }

    private init(_ comm: MPI_Comm, parent: MPICommunicator?) {
        world = comm
        self.parent = parent
        state = CommunicatorState(context: "start-up", parent: parent?.state)
        var r: Int32 = 0, s: Int32 = 0
        MPI_Comm_rank(comm, &r)
        MPI_Comm_size(comm, &s)
        rank = Int(r)
        size = Int(s)
    }

    // MARK: Sub-communicators

    public func split(color: Int, key: Int) throws(CommError) -> Communicator {
        var sub: MPI_Comm?
        let rc = MPI_Comm_split(world, Int32(color), Int32(key), &sub)
        guard rc == MPI_SUCCESS, let sub else { throw CommError.failed(label: "MPI_Comm_split", code: rc) }
        return MPICommunicator(sub, parent: self)
    }

    public func splitByNode() throws(CommError) -> Communicator {
        var sub: MPI_Comm?
        let rc = MPI_Comm_split_type(world, tessera_mpi_comm_type_shared(), Int32(rank), tessera_mpi_info_null(), &sub)
        guard rc == MPI_SUCCESS, let sub else { throw CommError.failed(label: "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)", code: rc) }
        return MPICommunicator(sub, parent: self)
    }

    /// Shuts MPI down; call once, after the last collective.
    public func finalize() { MPI_Finalize() }

    private static func type(_ d: CommDType) -> MPI_Datatype {
        switch d {
        case .float32: return tessera_mpi_float()
        case .float64: return tessera_mpi_double()
        case .int64: return tessera_mpi_int64()
        case .byte: return tessera_mpi_byte()
        case .bfloat16, .float16: return tessera_mpi_uint16()
        }
    }

    private func op(_ o: ReduceOp, _ d: CommDType) -> MPI_Op {
        switch d {
        case .bfloat16:
            precondition(o == .sum, "only sums are defined for 16-bit reductions")
            return bf16Sum
        case .float16:
            precondition(o == .sum, "only sums are defined for 16-bit reductions")
            return fp16Sum
        default: return o == .sum ? tessera_mpi_sum() : tessera_mpi_max()
        }
    }

    // MPI has no bf16/fp16 arithmetic: user-defined sums that widen to fp32, add and round
    // to nearest even, created once after MPI_Init.
    private lazy var bf16Sum: MPI_Op = Self.makeOp(sumBF16)
    private lazy var fp16Sum: MPI_Op = Self.makeOp(sumFP16)

    private static func makeOp(_ f: @escaping @convention(c) (UnsafeMutableRawPointer?, UnsafeMutableRawPointer?,
                                                               UnsafeMutablePointer<Int32>?, UnsafeMutablePointer<MPI_Datatype?>?) -> Void) -> MPI_Op {
        var op: MPI_Op?
        MPI_Op_create(f, 1, &op)
        return op!
    }

    private func request(_ label: String, sent: Int, dtype: CommDType, _ start: (UnsafeMutablePointer<MPI_Request?>) -> Int32) -> CommRequest {
        var r: MPI_Request? = tessera_mpi_request_null()
        let t = Trace.begin()
        let rc = start(&r)
        if rc != MPI_SUCCESS {
            writeStandardError("[rank \(rank)] error: \(label) could not start (MPI error \(rc)) (\(context)): check that all ranks are alive")
            abort(code: 1)
        }
        state.count(sent, dtype)
        let request = CommRequest(label: label, sentElements: sent, handle: Box(r), done: false)
        request.traceStart = t
        return request
    }

    // Elements sent per rank: `RingTraffic`.
    public func startAllReduce(_ buffer: UnsafeMutableRawPointer, count: Int, dtype: CommDType, op: ReduceOp,
                               label: String) -> CommRequest {
        request(label, sent: RingTraffic.allReduce(count: count, ranks: size), dtype: dtype) {
            MPI_Iallreduce(tessera_mpi_in_place(), buffer, Int32(count), Self.type(dtype), self.op(op, dtype), world, $0)
        }
    }

    public func startReduceScatter(send: UnsafeRawPointer, recv: UnsafeMutableRawPointer, countPerRank: Int,
                                   dtype: CommDType, op: ReduceOp, label: String) -> CommRequest {
        request(label, sent: RingTraffic.equalBlocks(countPerRank: countPerRank, ranks: size), dtype: dtype) {
            MPI_Ireduce_scatter_block(send, recv, Int32(countPerRank), Self.type(dtype), self.op(op, dtype), world, $0)
        }
    }

    public func startAllGather(send: UnsafeRawPointer, recv: UnsafeMutableRawPointer, countPerRank: Int,
                               dtype: CommDType, label: String) -> CommRequest {
        // A send block already at this rank's place in `recv` is gathered in place.
        let inPlace = send == UnsafeRawPointer(recv + rank * countPerRank * dtype.size)
        return request(label, sent: RingTraffic.equalBlocks(countPerRank: countPerRank, ranks: size), dtype: dtype) {
            MPI_Iallgather(inPlace ? UnsafeRawPointer(tessera_mpi_in_place()) : send, Int32(countPerRank),
                           Self.type(dtype), recv, Int32(countPerRank), Self.type(dtype), world, $0)
        }
    }

    public func startReduceScatterV(send: UnsafeRawPointer, recv: UnsafeMutableRawPointer, counts: [Int],
                                    dtype: CommDType, op: ReduceOp, label: String) -> CommRequest {
        let box = Counts(counts)
        let r = request(label, sent: RingTraffic.blocks(counts, ranks: size), dtype: dtype) {
            MPI_Ireduce_scatter(send, recv, box.counts, Self.type(dtype), self.op(op, dtype), world, $0)
        }
        r.keepAlive = box
        return r
    }

    public func startAllGatherV(send: UnsafeRawPointer, recv: UnsafeMutableRawPointer, counts: [Int],
                                dtype: CommDType, label: String) -> CommRequest {
        let box = Counts(counts)
        let r = request(label, sent: RingTraffic.blocks(counts, ranks: size), dtype: dtype) {
            MPI_Iallgatherv(send, Int32(counts[rank]), Self.type(dtype), recv, box.counts, box.displacements,
                            Self.type(dtype), world, $0)
        }
        r.keepAlive = box
        return r
    }

    /// Count and displacement arrays that must outlive a nonblocking V collective.
    private final class Counts {
        let counts: UnsafeMutablePointer<Int32>, displacements: UnsafeMutablePointer<Int32>
        init(_ c: [Int]) {
            counts = .allocate(capacity: c.count)
            displacements = .allocate(capacity: c.count)
            var off = 0
            for (i, n) in c.enumerated() { counts[i] = Int32(n); displacements[i] = Int32(off); off += n }
        }
        deinit { counts.deallocate(); displacements.deallocate() }
    }

    public func startBroadcast(_ buffer: UnsafeMutableRawPointer, count: Int, dtype: CommDType, root: Int,
                               label: String) -> CommRequest {
        request(label, sent: RingTraffic.broadcast(count: count, isRoot: rank == root), dtype: dtype) {
            MPI_Ibcast(buffer, Int32(count), Self.type(dtype), Int32(root), world, $0)
        }
    }

    public func startBarrier(label: String) -> CommRequest {
        request(label, sent: 0, dtype: .byte) { MPI_Ibarrier(world, $0) }
    }

    public func test(_ request: CommRequest) -> Bool {
        if request.done { return true }
        let box = request.handle as! Box
        var flag: Int32 = 0
        MPI_Test(&box.request, &flag, tessera_mpi_status_ignore())
        if flag != 0 {
            request.done = true
            Trace.inFlight(request.traceStart, .comm, request.kind,
                           args: ["label": .text(request.label), "elements sent": .int(request.sentElements)])
        }
        return request.done
    }

    public func wait(_ request: CommRequest) throws(CommError) {
        if request.done { return }
        let t = Trace.begin()
        defer { Trace.end(t, .comm, "wait " + request.kind, args: ["label": .text(request.label)]) }
        let deadline = Self.now() + timeoutSeconds
        var spins = 0
        while !test(request) {
            spins += 1
            if spins & 1023 == 0 {
                if Self.now() > deadline {
                    throw CommError.timeout(label: request.label, context: context, rank: rank, seconds: timeoutSeconds)
                }
                sched_yield()
            }
        }
    }

    public func abort(code: Int32) -> Never {
        if let parent { parent.abort(code: code) }
        // Tell the launcher (which may have to end a hung mpirun), and never hang here: if
        // MPI_Abort cannot reach the other hosts, SIGALRM ends this process.
        if let path = getenv("TESSERA_ABORT_FILE") {
            let fd = open(path, O_WRONLY | O_CREAT, 0o644)
            if fd >= 0 { close(fd) }
        }
        alarm(10)
        MPI_Abort(world, code)
        exit(code)
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }
}

// MARK: - 16-bit reduction operators

/// inout[i] = round16(widen(in[i]) + widen(inout[i])), in chunks through fp32 scratch.
private func reduce16(_ a: UnsafeMutableRawPointer?, _ b: UnsafeMutableRawPointer?, _ len: UnsafeMutablePointer<Int32>?,
                      _ format: Precision) {
    guard let a, let b, let len else { return }
    let x = a.assumingMemoryBound(to: UInt16.self), y = b.assumingMemoryBound(to: UInt16.self)
    let n = Int(len.pointee)
    withUnsafeTemporaryAllocation(of: Float.self, capacity: 1024) { fa in
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 1024) { fb in
            var i = 0
            while i < n {
                let c = min(1024, n - i)
                format.widenSerial(x + i, into: fa.baseAddress!, c)
                format.widenSerial(y + i, into: fb.baseAddress!, c)
                for j in 0..<c { fb[j] += fa[j] }
                format.narrowSerial(fb.baseAddress!, into: y + i, c)
                i += c
            }
        }
    }
}

private let sumBF16: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutableRawPointer?, UnsafeMutablePointer<Int32>?,
                                     UnsafeMutablePointer<MPI_Datatype?>?) -> Void = { a, b, len, _ in
    reduce16(a, b, len, .bf16)
}

private let sumFP16: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutableRawPointer?, UnsafeMutablePointer<Int32>?,
                                     UnsafeMutablePointer<MPI_Datatype?>?) -> Void = { a, b, len, _ in
    reduce16(a, b, len, .fp16)
}

import Comm
import Kernels
import Settings

// MARK: - Local SGD (DiLoCo)

/// The outer loop of DiLoCo (Douillard et al., 2023): every rank trains on its own for `H`
/// inner steps, then the ranks average how far they moved and take one outer step.
///
/// At a synchronisation each rank's pseudo-gradient is Δᵣ = θ − θᵣ (θ the parameters all
/// ranks started the round from, θᵣ its own after H inner steps). The mean Δ over ranks drives
/// SGD with Nesterov momentum, as PyTorch's `SGD(nesterov=True)` computes it: b ← μ·b + Δ,
/// θ ← θ − η·(Δ + μ·b); every rank then starts the next round from the new θ. Only Δ travels:
/// fp32, bf16 (an all-reduce in bf16), or int8 with a per-block fp32 scale (an all-gather,
/// averaged in fp32: int8 cannot be summed in transit), so a round sends about 2Ψ·(bytes per
/// element) where synchronous data parallelism sends 8Ψ per step.
public final class LocalSGD {
    /// Elements per int8 block (one fp32 scale each).
    public static let block = 256

    public let count: Int
    public let outerLR: Float, momentum: Float
    public let dtype: SyncDType
    let comm: Communicator
    /// θ (the round's starting point, identical on every rank) and the momentum buffer b.
    public let anchor: FloatBuffer, velocity: FloatBuffer
    private let delta: FloatBuffer
    private let low: HalfBuffer
    private let codes: AlignedBuffer<Int8>, scales: FloatBuffer
    /// Seconds spent waiting in synchronisations since the last reset.
    public var waitSeconds = 0.0

    /// Local SGD over `count` parameters on `comm`'s ranks.
    public init(count: Int, comm: Communicator, outerLR: Float, momentum: Float, dtype: SyncDType) {
        self.count = count; self.comm = comm; self.outerLR = outerLR; self.momentum = momentum; self.dtype = dtype
        anchor = FloatBuffer(count: count)
        velocity = FloatBuffer(count: count)
        delta = FloatBuffer(count: count)
        low = HalfBuffer(count: dtype == .bf16 ? count : 0)
        let blocks = (count + Self.block - 1) / Self.block, n = dtype == .int8 ? comm.size : 0
        codes = AlignedBuffer(count: n * blocks * Self.block)
        scales = FloatBuffer(count: n * blocks)
    }

    /// Bytes held beside the inner strategy's (θ, b, Δ and the wire buffers).
    public var bytes: Int { anchor.byteCount + velocity.byteCount + delta.byteCount + low.byteCount + codes.byteCount + scales.byteCount }
    /// The same, computed before allocating (memory plans).
    public static func bytes(count: Int, ranks: Int, dtype: SyncDType) -> Int {
        let blocks = (count + block - 1) / block
        return 12 * count + (dtype == .bf16 ? 2 * count : 0) + (dtype == .int8 ? ranks * (blocks * block + 4 * blocks) : 0)
    }
    /// Elements and bytes one rank sends in a synchronisation of `count` deltas on `ranks`
    /// ranks, as the ring algorithms count them: an all-reduce (fp32, bf16), or all-gathers of
    /// the padded int8 codes and the per-block scales.
    public static func traffic(count: Int, ranks n: Int, dtype: SyncDType) -> (elements: Double, bytes: Double) {
        guard dtype == .int8 else {
            let ring = 2 * Double(count) * Double(n - 1) / Double(n)
            return (ring, ring * Double(dtype.bytes))
        }
        let blocks = Double((count + block - 1) / block)
        return (blocks * Double(block + 1) * Double(n - 1), blocks * Double(block + 4) * Double(n - 1))
    }

    /// Its name among a run's working buffers.
    public static let workingName = "local SGD (anchor, momentum, delta, wire)"

    /// Starts the first round from `parameters` (identical on every rank).
    public func start(from parameters: UnsafePointer<Float>) {
        anchor.pointer.update(from: parameters, count: count)
        velocity.zero()
    }

    /// Ends a round: averages the ranks' deltas, takes the outer step and overwrites
    /// `parameters` (this rank's θᵣ) with the new θ. Collective.
    public func synchronize(_ parameters: UnsafeMutablePointer<Float>) throws(CommError) {
        let t0 = MPIClock.now()
        let d = delta.pointer, a = anchor.pointer
        for i in 0..<count { d[i] = a[i] - parameters[i] }
        try average(d)
        let mu = momentum, lr = outerLR, b = velocity.pointer
        for i in 0..<count {
            b[i] = mu * b[i] + d[i]
            a[i] -= lr * (d[i] + mu * b[i])
        }
        parameters.update(from: a, count: count)
        waitSeconds += MPIClock.now() - t0
    }

    /// `synchronize` on a DDP worker's parameters, which then rounds its 16-bit compute copy
    /// from the new values.
    public func synchronize(_ worker: DataParallel) throws(CommError) {
        try synchronize(worker.params.pointer)
        worker.parametersChanged()
    }

    /// Replaces `d` by the mean over ranks of every rank's `d`, in the wire format.
    func average(_ d: UnsafeMutablePointer<Float>) throws(CommError) {
        let n = comm.size
        switch dtype {
        case .fp32, .bf16:
            try comm.allReduce(d, count: count, wire: dtype == .bf16 ? .bf16 : .fp32, staging: low.pointer,
                               label: "all-reduce of local SGD deltas (\(dtype.rawValue))")
        case .int8:
            let blocks = (count + Self.block - 1) / Self.block, padded = blocks * Self.block
            let mine = codes.pointer + comm.rank * padded, myScales = scales.pointer + comm.rank * blocks
            Self.quantize(d, count: count, into: mine, scales: myScales)
            try comm.wait(comm.startAllGather(send: UnsafeRawPointer(mine), recv: UnsafeMutableRawPointer(codes.pointer),
                                              countPerRank: padded, dtype: .byte, label: "all-gather of local SGD deltas (int8)"))
            try comm.wait(comm.startAllGather(send: UnsafeRawPointer(myScales), recv: UnsafeMutableRawPointer(scales.pointer),
                                              countPerRank: blocks, dtype: .float32, label: "all-gather of local SGD delta scales"))
            d.update(repeating: 0, count: count)
            // Ranks in order, so every rank adds the same numbers in the same order.
            for r in 0..<n { Self.dequantizeAdd(codes.pointer + r * padded, scales: scales.pointer + r * blocks, count: count, into: d) }
        }
        if n > 1 { Vector.scale(d, count, by: 1 / Float(n)) }
    }

    // MARK: int8 blocks

    /// Symmetric int8 per block: scale = max|x| / 127, code = round(x / scale).
    public static func quantize(_ x: UnsafePointer<Float>, count: Int, into q: UnsafeMutablePointer<Int8>,
                                scales: UnsafeMutablePointer<Float>) {
        for b in 0..<((count + block - 1) / block) {
            let lo = b * block, hi = min(count, lo + block)
            var top: Float = 0
            for i in lo..<hi { top = max(top, abs(x[i])) }
            let scale = top / 127
            scales[b] = scale
            let inv = scale > 0 ? 1 / scale : 0
            for i in lo..<hi { q[i] = Int8((x[i] * inv).rounded()) }
            for i in hi..<(lo + block) { q[i] = 0 }
        }
    }

    /// `out += code × scale` per block.
    public static func dequantizeAdd(_ q: UnsafePointer<Int8>, scales: UnsafePointer<Float>, count: Int,
                                     into out: UnsafeMutablePointer<Float>) {
        for b in 0..<((count + block - 1) / block) {
            let lo = b * block, hi = min(count, lo + block), s = scales[b]
            for i in lo..<hi { out[i] += Float(q[i]) * s }
        }
    }
}

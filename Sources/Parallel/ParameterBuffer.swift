import Comm
import Kernels
import Settings

// MARK: - ParameterBuffer

/// Parameters in the format a stage holds and sends them in: fp32, or a 16-bit compute
/// format (bf16/fp16). One type for both, so a stage's gather and replica buffers are not
/// pairs of which one is always empty.
final class ParameterBuffer {
    /// The element format.
    let precision: Precision
    /// Number of elements.
    let count: Int
    private let storage: UnsafeMutableRawPointer

    /// Allocates `count` zeroed elements of `precision`, 64-byte aligned.
    init(count: Int, precision: Precision) {
        self.count = count
        self.precision = precision
        let n = max(count, 1)
        storage = .allocate(byteCount: n * (precision.isLow ? 2 : 4), alignment: 64)
        if precision.isLow { storage.bindMemory(to: UInt16.self, capacity: n).initialize(repeating: 0, count: n) }
        else { storage.bindMemory(to: Float.self, capacity: n).initialize(repeating: 0, count: n) }
    }

    deinit { storage.deallocate() }

    /// How the elements travel in a collective.
    var dtype: CommDType { precision.isLow ? precision.commDType : .float32 }
    /// Bytes of `n` elements.
    func bytes(_ n: Int) -> Int { n * dtype.size }
    /// Bytes held.
    var byteCount: Int { bytes(count) }
    /// Address of element `i`.
    func address(_ i: Int) -> UnsafeMutableRawPointer { storage + bytes(i) }

    /// fp32 elements from `i`; only for an fp32 buffer.
    func wide(at i: Int = 0) -> UnsafeMutablePointer<Float> {
        precondition(!precision.isLow, "parameters are held as a \(precision) copy; acquire them in 16 bits")
        return address(i).assumingMemoryBound(to: Float.self)
    }

    /// 16-bit elements from `i`, or nil for an fp32 buffer; a 16-bit buffer must hold the
    /// format the model asks for.
    func low(at i: Int = 0, as requested: Precision) -> UnsafeMutablePointer<UInt16>? {
        guard precision.isLow else { return nil }
        precondition(requested == precision, "the model computes in \(requested), parameters are held in \(precision)")
        return address(i).assumingMemoryBound(to: UInt16.self)
    }

    /// Where AdamW stores the values it updates, rounded, from element `i` on: this buffer's
    /// 16-bit elements in its format, or nil for an fp32 buffer.
    func roundedTarget(at i: Int) -> (into: UnsafeMutablePointer<UInt16>, precision: Precision)? {
        guard precision.isLow else { return nil }
        return (address(i).assumingMemoryBound(to: UInt16.self), precision)
    }

    /// Stores `n` fp32 values from element `i` on, rounding them to a 16-bit format.
    func store(_ values: UnsafePointer<Float>, at i: Int, count n: Int) {
        if precision.isLow { precision.narrow(values, into: address(i).assumingMemoryBound(to: UInt16.self), n) }
        else { wide(at: i).update(from: values, count: n) }
    }
}

/// In-place all-gather of equal shards: rank r's `shardSize` elements start at element
/// r·shardSize of `base`, and afterwards every rank holds all of them.
func allGatherInPlace(_ base: UnsafeMutableRawPointer, dtype: CommDType, shard: ShardLayout, comm: Communicator,
                      label: String) throws(CommError) {
    guard comm.size > 1 else { return }
    try comm.wait(comm.startAllGather(send: UnsafeRawPointer(base + shard.rank * shard.shardSize * dtype.size), recv: base,
                                      countPerRank: shard.shardSize, dtype: dtype, label: label))
}

import Comm
import Kernels
import Model
import Settings

// MARK: - Replicated parameters (ZeRO-1 and ZeRO-2)

/// The parameters of a stage that replicates them, in one of two forms.
///
/// - fp32: every rank holds all parameters in fp32; after updating its shard it all-gathers
///   the fp32 values.
/// - bf16/fp16 (the ZeRO paper's mixed precision): every rank holds the 16-bit compute copy
///   of all parameters and the fp32 master values of its shard only; after updating the
///   master shard it narrows it into its slice of the copy and all-gathers 16 bits. The
///   master shard counts as optimizer state (K = 12 bytes per parameter with m and v).
///
/// Both buffers are padded to `ranks × shardSize` so the all-gather has equal blocks.
final class ReplicatedParameters: ShardedParameters {
    let layout: ParameterLayout
    let shard: ShardLayout
    let comm: Communicator
    /// Every parameter, padded: the fp32 values, or the 16-bit compute copy.
    let values: ParameterBuffer
    private let master: FloatBuffer    // fp32 master shard (mixed form), else empty
    var waitSeconds = 0.0

    init(layout: ParameterLayout, shard: ShardLayout, comm: Communicator, precision: Precision) {
        self.layout = layout; self.shard = shard; self.comm = comm
        values = ParameterBuffer(count: shard.padded, precision: precision)
        master = FloatBuffer(count: precision.isLow ? shard.shardSize : 0)
    }

    var isMixed: Bool { values.precision.isLow }
    var precision: Precision { values.precision }

    // MARK: The model's view

    func acquire(unit: Int) -> UnsafeMutablePointer<Float> { values.wide(at: layout.units[unit].lowerBound) }
    func acquireLow(unit: Int, precision: Precision) -> UnsafeMutablePointer<UInt16>? {
        values.low(at: layout.units[unit].lowerBound, as: precision)
    }
    func release(unit: Int) {}
    func setBackward(_ backward: Bool) {}

    /// The fp32 values of this rank's shard (what AdamW updates and checkpoints hold).
    var masterShard: UnsafeMutablePointer<Float> { isMixed ? master.pointer : values.wide(at: shard.mine.lowerBound) }

    // MARK: Updating

    /// Clips and applies AdamW to this rank's master shard with its reduced gradient (in the
    /// mixed form also rounding it into its slice of the compute copy), then brings every
    /// rank the updated values of every shard.
    func update(_ optimizer: ShardedAdam, grads: UnsafeMutablePointer<Float>, step: Int, lr: Float,
                clip: Float) throws(CommError) {
        optimizer.update(params: masterShard, grads: grads, step: step, lr: lr, clip: clip,
                         rounded: values.roundedTarget(at: shard.rank * shard.shardSize))
        try allGather()
    }

    /// Brings every rank the values of every shard after each rank updated its shard of them.
    private func allGather() throws(CommError) {
        let t0 = MPIClock.now()
        try allGatherInPlace(values.address(0), dtype: values.dtype, shard: shard, comm: comm,
                             label: "all-gather of updated parameters")
        waitSeconds += MPIClock.now() - t0
    }

    // MARK: Loading and saving

    /// Loads the parameters and `optimizer`'s moments from a checkpoint.
    func loadState(_ read: StateReader,
                   into optimizer: ShardedAdam) rethrows {
        try loadParameters(read)
        try optimizer.loadMoments(read)
    }

    /// Sets every parameter from a full fp32 vector.
    func load(from full: UnsafePointer<Float>) {
        if isMixed { master.pointer.update(from: full + shard.mine.lowerBound, count: shard.mine.count) }
        values.store(full, at: 0, count: shard.total)
    }

    /// Reads the checkpoint vector "params": all of it (the replica needs every value), in
    /// chunks of a million elements in the mixed form so no full fp32 copy is made.
    private func loadParameters(_ read: StateReader) rethrows {
        guard isMixed else { return try read(.params, 0..<shard.total, values.wide()) }
        try read(.params, shard.mine, master.pointer)
        let scratch = FloatBuffer(count: max(1, min(1 << 20, shard.total)))
        var start = 0
        while start < shard.total {
            let n = min(scratch.count, shard.total - start)
            try read(.params, start..<(start + n), scratch.pointer)
            values.store(scratch.pointer, at: start, count: n)
            start += n
        }
    }

    /// Part of the fp32 parameter vector: a copy of the replica, or an all-gather of the
    /// master shards' pieces (collective: every rank must call it).
    func gather(range: Range<Int>, into out: UnsafeMutablePointer<Float>) throws(CommError) {
        guard isMixed else { return out.update(from: values.wide() + range.lowerBound, count: range.count) }
        try gatherRange(range, of: master.pointer, shard: shard, comm: comm, into: out)
    }

    // MARK: Accounting

    /// Bytes of the replica without padding (the paper's 4Ψ or 2Ψ).
    var replicaBytes: Int { values.bytes(shard.total) }
    /// Bytes of the replica's padding slots.
    var paddingBytes: Int { values.bytes(shard.padded - shard.total) }
    /// Bytes of the fp32 master shard (0 in the fp32 form, where the replica is the master).
    var masterBytes: Int { master.byteCount }

    var replica: (values: UnsafeMutableRawPointer, elementBytes: Int)? { (values.address(0), values.dtype.size) }

    var bytes: (parameters: Int, master: Int, working: [String: Int]) {
        (replicaBytes, masterBytes, ["parameter padding": paddingBytes])
    }
}

import Comm
import Kernels
import Optim
import Settings

// MARK: - ShardedAdam

/// AdamW states for one rank's shard, and the shard-local half of clipping: what every ZeRO
/// stage shares, and DDP with the whole vector as its one shard.
final class ShardedAdam {
    let shard: ShardLayout
    let adam: AdamW
    let mask: DecayMask
    /// First and second moments of this rank's shard (`shardSize` slots each).
    let m: FloatBuffer, v: FloatBuffer

    init(shard: ShardLayout, adam: AdamW, mask: DecayMask) {
        self.shard = shard; self.adam = adam; self.mask = mask
        m = FloatBuffer(count: shard.shardSize)
        v = FloatBuffer(count: shard.shardSize)
    }

    /// Global squared gradient norm from this rank's shard's sum of squares: one all-reduce.
    func globalNormSquared(local: Double, comm: Communicator) throws(CommError) -> Double {
        var s = [local]
        try comm.allReduce(&s, label: "all-reduce of the gradient norm")
        return s[0]
    }

    /// Updates the shard from its gradients times `clip` (applied as AdamW reads each one:
    /// `grads` are left as they are), and with `rounded` stores the updated values there in
    /// that 16-bit format (the stage's compute copy of the shard). Pointers address the first
    /// element of this rank's shard.
    func update(params: UnsafeMutablePointer<Float>, grads: UnsafePointer<Float>,
                step: Int, lr: Float, clip: Float, rounded: (into: UnsafeMutablePointer<UInt16>, precision: Precision)? = nil) {
        let mine = shard.mine
        mask.forEach(in: mine) { range, decays in
            let o = range.lowerBound - mine.lowerBound
            adam.update(step: step, lr: lr, decay: decays, param: params + o, grad: grads + o, gradScale: clip,
                        m: m.pointer + o, v: v.pointer + o, count: range.count,
                        rounded: rounded.map { (into: $0.into + o, precision: $0.precision) })
        }
    }

    var bytes: Int { m.byteCount + v.byteCount }

    // MARK: Checkpoint state

    /// This rank's checkpoint pieces, given the fp32 values of its parameter shard.
    func statePieces(paramShard: UnsafePointer<Float>) -> [StatePiece] {
        pieces(shard, params: paramShard, m: m.pointer, v: v.pointer)
    }

    /// Reads this rank's shard of the moments.
    func loadMoments(_ read: StateReader) rethrows {
        try read(.adamM, shard.mine, m.pointer)
        try read(.adamV, shard.mine, v.pointer)
    }
}

import Kernels
import Settings

// MARK: - Rounded vectors

/// fp32 copies of one unit's vectors (LayerNorm weights and biases, linear biases), widened
/// from the unit's 16-bit compute copy.
///
/// A bf16/fp16 model computes with one rounded copy of every parameter, as FSDP's
/// `param_dtype` does. That way a strategy which only ever holds the 16-bit copy (ZeRO-3
/// gathers nothing else) computes exactly what a replicated one does. Matrix multiplies read
/// the 16-bit weights directly; LayerNorm and the bias adds run in fp32 and read these.
final class RoundedVectors {
    /// Where each vector sits in the unit and in `buffer`.
    private let pieces: [(unitOffset: Int, packedOffset: Int, count: Int)]
    private let packed: [Int: Int]
    private let buffer: FloatBuffer

    /// The vectors (1-D tensors) of `unit`. Every block unit has the same relative layout, so
    /// one instance built from block 0 serves all blocks.
    init(layout: ParameterLayout, unit: Int) {
        let start = layout.units[unit].lowerBound
        var pieces: [(Int, Int, Int)] = [], packed: [Int: Int] = [:], total = 0
        for t in layout.tensors where t.unit == unit && t.shape.count == 1 {
            pieces.append((t.offset - start, total, t.count))
            packed[t.offset - start] = total
            total += t.count
        }
        self.pieces = pieces
        self.packed = packed
        buffer = FloatBuffer(count: total)
    }

    /// Widens the vectors out of `copy`, the unit's 16-bit compute copy in `precision`; returns `self`.
    func filled(from copy: UnsafeRawPointer, precision: Precision) -> RoundedVectors {
        let values = copy.assumingMemoryBound(to: UInt16.self)
        for p in pieces { precision.widen(values + p.unitOffset, into: buffer.pointer + p.packedOffset, p.count) }
        return self
    }

    /// The widened vector that starts at `offset` within the unit.
    subscript(offset: Int) -> UnsafeMutablePointer<Float> { buffer.pointer + packed[offset]! }
}

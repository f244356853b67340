import CKernels

// MARK: - Vector helpers
// Small loops shared by several layers and the optimizer. Double accumulators where a sum
// over many elements feeds a decision (norms), so results do not drift with length.

/// Element-wise helpers over raw `Float` pointers.
public enum Vector {
    /// Sum of squares of `n` elements, accumulated in Double.
    @inlinable
    public static func sumOfSquares(_ x: UnsafePointer<Float>, _ n: Int) -> Double {
        tessera_sum_of_squares(x, Int64(n))
    }

    /// `x *= s` over `n` elements.
    @inlinable
    public static func scale(_ x: UnsafeMutablePointer<Float>, _ n: Int, by s: Float) {
        for i in 0..<n { x[i] *= s }
    }

    /// `y += x` over `n` elements.
    @inlinable
    public static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, _ n: Int) {
        ParallelFor.chunks(n) { lo, hi in for i in lo..<hi { y[i] += x[i] } }
    }

    /// True when every element is finite (no NaN, no ±inf).
    @inlinable
    public static func allFinite(_ x: UnsafePointer<Float>, _ n: Int) -> Bool {
        tessera_all_finite(x, Int64(n)) != 0
    }
}

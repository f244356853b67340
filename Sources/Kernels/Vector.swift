// MARK: - Vector helpers
// Small loops shared by several layers and the optimizer. Double accumulators where a sum
// over many elements feeds a decision (norms), so results do not drift with length.

/// Element-wise helpers over raw `Float` pointers.
public enum Vector {
    /// Sum of squares of `n` elements, accumulated in Double.
    @inlinable
    public static func sumOfSquares(_ x: UnsafePointer<Float>, _ n: Int) -> Double {
        var acc0 = 0.0, acc1 = 0.0, acc2 = 0.0, acc3 = 0.0
        var i = 0
        while i + 4 <= n {
            let a = Double(x[i]), b = Double(x[i + 1]), c = Double(x[i + 2]), d = Double(x[i + 3])
            acc0 += a * a; acc1 += b * b; acc2 += c * c; acc3 += d * d
            i += 4
        }
        while i < n { let a = Double(x[i]); acc0 += a * a; i += 1 }
        return (acc0 + acc1) + (acc2 + acc3)
    }

    /// `x *= s` over `n` elements.
    @inlinable
    public static func scale(_ x: UnsafeMutablePointer<Float>, _ n: Int, by s: Float) {
        for i in 0..<n { x[i] *= s }
    }

    /// `y += x` over `n` elements.
    @inlinable
    public static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, _ n: Int) {
        for i in 0..<n { y[i] += x[i] }
    }

    /// True when every element is finite (no NaN, no ±inf).
    @inlinable
    public static func allFinite(_ x: UnsafePointer<Float>, _ n: Int) -> Bool {
        for i in 0..<n where !x[i].isFinite { return false }
        return true
    }
}

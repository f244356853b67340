import Kernels

// MARK: - GradientSquares

/// The sum of squares of the gradients a rank holds, read from them once per step: the
/// overflow check asks whether it is finite (it is exactly when every element is: squares of
/// finite floats summed in fp64 cannot overflow), and the clipping norm then reuses it instead
/// of reading the gradients again.
struct GradientSquares {
    private var known: Double?

    /// Sums the squares of `n` gradients at `grads` and keeps the sum; whether all are finite.
    mutating func finite(_ grads: UnsafePointer<Float>, _ n: Int) -> Bool {
        let sum = Vector.sumOfSquares(grads, n)
        known = sum
        return sum.isFinite
    }

    /// The kept sum, or the sum taken now if there is none; forgotten afterwards.
    mutating func take(_ grads: UnsafePointer<Float>, _ n: Int) -> Double {
        defer { known = nil }
        return known ?? Vector.sumOfSquares(grads, n)
    }

    /// Forgets the kept sum (the gradients changed).
    mutating func forget() { known = nil }
}

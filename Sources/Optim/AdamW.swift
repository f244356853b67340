import Kernels
import Settings

// MARK: - AdamW

/// AdamW with decoupled weight decay, matching `torch.optim.AdamW`.
///
/// Works on any contiguous slice of the flat buffers, so replicated training updates the
/// whole buffer and a ZeRO rank updates only its shard with the same code.
public struct AdamW: Codable, Equatable, Sendable {
    /// First-moment decay.
    public var beta1: Float
    /// Second-moment decay.
    public var beta2: Float
    /// Denominator guard.
    public var eps: Float
    /// Decoupled weight decay applied to decaying (2-D) tensors only.
    public var weightDecay: Float

    /// Creates the optimizer's hyper-parameters (the learning rate is passed per step).
    public init(beta1: Float = 0.9, beta2: Float = 0.95, eps: Float = 1e-8, weightDecay: Float = 0.1) {
        self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weightDecay = weightDecay
    }

    /// Applies update number `step` (1-based) to `count` elements, from the gradients
    /// `grad[i]·gradScale` (clipping's factor, applied as each is read; `grad` is left as it is).
    ///
    /// `p ← p·(1 − lr·wd)` when `decay`; then Adam with bias correction:
    /// `p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)`. With `rounded`, the updated parameters
    /// are also stored there in that 16-bit format (a model's compute copy).
    public func update(step: Int, lr: Float, decay: Bool,
                       param: UnsafeMutablePointer<Float>, grad: UnsafePointer<Float>, gradScale: Float = 1,
                       m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, count: Int,
                       rounded: (into: UnsafeMutablePointer<UInt16>, precision: Precision)? = nil) {
        let t = Double(step)
        let bc1 = 1 - Float(pow(Double(beta1), t))
        let bc2 = 1 - Float(pow(Double(beta2), t))
        let stepSize = lr / bc1
        let bc2Sqrt = bc2.squareRoot()
        let shrink: Float = decay ? 1 - lr * weightDecay : 1
        Vector.adamW(param: param, grad: grad, gradScale: gradScale, m: m, v: v, count, beta1: beta1, beta2: beta2,
                     stepSize: stepSize, invBias2Sqrt: 1 / bc2Sqrt, eps: eps, shrink: shrink, rounded: rounded)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

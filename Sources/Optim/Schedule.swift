// MARK: - Learning-rate schedule

/// Linear warm-up, then cosine decay to a floor: nanoGPT's `get_lr`.
public struct CosineSchedule: Codable, Equatable, Sendable {
    /// Peak learning rate.
    public var maxLR: Double
    /// Floor reached at `decaySteps`.
    public var minLR: Double
    /// Steps of linear warm-up.
    public var warmupSteps: Int
    /// Step at which the cosine reaches `minLR`.
    public var decaySteps: Int

    /// Creates a schedule.
    public init(maxLR: Double, minLR: Double, warmupSteps: Int, decaySteps: Int) {
        self.maxLR = maxLR; self.minLR = minLR; self.warmupSteps = warmupSteps; self.decaySteps = decaySteps
    }

    /// Learning rate for 0-based optimizer step `step`.
    public func lr(at step: Int) -> Double {
        if step < warmupSteps { return maxLR * Double(step + 1) / Double(warmupSteps + 1) }
        if step > decaySteps || decaySteps <= warmupSteps { return minLR }
        let ratio = Double(step - warmupSteps) / Double(decaySteps - warmupSteps)
        let coeff = 0.5 * (1 + cos(Double.pi * ratio))
        return minLR + coeff * (maxLR - minLR)
    }
}

// MARK: - Gradient clipping

/// Global-norm clipping as `torch.nn.utils.clip_grad_norm_`.
public enum GradientClipping {
    /// The factor to multiply gradients by: `min(1, maxNorm / (norm + 1e-6))`; 1 when
    /// clipping is off (`maxNorm <= 0`).
    public static func coefficient(norm: Double, maxNorm: Double) -> Float {
        guard maxNorm > 0 else { return 1 }
        return Float(min(1.0, maxNorm / (norm + 1e-6)))
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

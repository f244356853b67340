import Settings

// MARK: - Learning-rate schedule

/// Linear warm-up, then the decay `kind` names, reaching a floor at `decaySteps`.
///
/// `.cosine` is nanoGPT's `get_lr`; `.wsd` keeps the peak until its cooldown, the last
/// `cooldownSteps` before `decaySteps`. The learning rate is a pure function of the step, so
/// a resumed run recomputes it from its config instead of storing it.
public struct LRSchedule: Codable, Equatable, Sendable {
    /// The decay after the warm-up.
    public var kind: LRScheduleKind
    /// Peak learning rate.
    public var maxLR: Double
    /// Floor reached at `decaySteps` (not used by `.constant`).
    public var minLR: Double
    /// Steps of linear warm-up.
    public var warmupSteps: Int
    /// Step at which the decay reaches `minLR`.
    public var decaySteps: Int
    /// `.wsd`: steps of cooldown that end at `decaySteps` (clamped to begin after warm-up).
    public var cooldownSteps: Int
    /// `.wsd`: the cooldown's shape.
    public var cooldownShape: CooldownShape

    /// Creates a schedule.
    public init(kind: LRScheduleKind = .cosine, maxLR: Double, minLR: Double, warmupSteps: Int, decaySteps: Int,
                cooldownSteps: Int = 0, cooldownShape: CooldownShape = .sqrt) {
        self.kind = kind; self.maxLR = maxLR; self.minLR = minLR; self.warmupSteps = warmupSteps
        self.decaySteps = decaySteps; self.cooldownSteps = cooldownSteps; self.cooldownShape = cooldownShape
    }

    /// The first step of a `.wsd` cooldown.
    public var cooldownStart: Int { max(warmupSteps, decaySteps - cooldownSteps) }

    /// Learning rate for 0-based optimizer step `step`.
    public func lr(at step: Int) -> Double {
        if step < warmupSteps { return maxLR * Double(step + 1) / Double(warmupSteps + 1) }
        switch kind {
        case .constant:
            return maxLR
        case .cosine, .linear:
            return decayed(step, from: warmupSteps, shape: kind == .cosine ? .cosine : .linear)
        case .wsd:
            return step < cooldownStart ? maxLR : decayed(step, from: cooldownStart, shape: cooldownShape)
        }
    }

    /// From the peak at `start` down to the floor at `decaySteps`, the floor after it.
    private func decayed(_ step: Int, from start: Int, shape: CooldownShape) -> Double {
        if step > decaySteps || decaySteps <= start { return minLR }
        let ratio = Double(step - start) / Double(decaySteps - start)
        let coeff: Double
        switch shape {
        case .cosine: coeff = 0.5 * (1 + cos(Double.pi * ratio))
        case .linear: coeff = 1 - ratio
        case .sqrt: coeff = 1 - ratio.squareRoot()
        }
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

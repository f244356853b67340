// MARK: - Dynamic loss scaling (fp16)

/// Keeps fp16 gradients representable: the loss is multiplied by `scale` before backward
/// and gradients divided by it before the update. An overflow anywhere (on any rank) skips
/// the step and halves the scale; 2000 overflow-free steps in a row double it.
public struct DynamicLossScaler: Codable, Equatable, Sendable {
    /// Current multiplier (starts at 2^16).
    public private(set) var scale: Double
    /// Overflow-free steps since the last change.
    public private(set) var goodSteps: Int
    /// Steps skipped so far.
    public private(set) var skippedSteps: Int
    /// Steps between growths.
    public let growthInterval: Int

    public init(scale: Double = 65_536, goodSteps: Int = 0, skippedSteps: Int = 0, growthInterval: Int = 2000) {
        self.scale = scale; self.goodSteps = goodSteps; self.skippedSteps = skippedSteps; self.growthInterval = growthInterval
    }

    /// Records one step's outcome; returns whether the update must be skipped. Throws when the
    /// scale would fall below 1: gradients overflow even unscaled, training has diverged.
    public mutating func update(overflow: Bool) throws(LossScaleCollapse) -> Bool {
        if overflow {
            guard scale / 2 >= 1 else { throw LossScaleCollapse(skipped: skippedSteps + 1) }
            scale /= 2
            goodSteps = 0
            skippedSteps += 1
            return true
        }
        goodSteps += 1
        if goodSteps >= growthInterval { scale *= 2; goodSteps = 0 }
        return false
    }
}

/// The loss scale reached its floor of 1.
public struct LossScaleCollapse: Error, CustomStringConvertible {
    public let skipped: Int
    public var description: String {
        "error: fp16 loss scale collapsed below 1 after \(skipped) skipped steps (loss scaler): gradients overflow even unscaled; "
            + "lower --lr, use --precision bf16, or resume from an earlier checkpoint"
    }
}

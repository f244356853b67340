import Kernels
import Settings

// MARK: - ParameterProvider

/// How the model reaches its parameters and gradients, one unit at a time.
///
/// The model never assumes the whole flat buffer is resident: before a unit computes it asks
/// for the unit's parameters and says when it is done with them, and after backward has
/// finished a unit's gradients it says so. Replicated training (DDP) answers from full
/// buffers; a fully sharded strategy gathers the unit on `acquireParameters` and frees it on
/// `releaseParameters`; both start gradient communication from `gradientsProduced`. This is
/// the only hook mechanism: every strategy implements it.
public protocol ParameterProvider: AnyObject {
    /// The first element of `unit`'s parameters; valid until `releaseParameters(unit:)`.
    func acquireParameters(unit: Int) -> UnsafeMutablePointer<Float>
    /// The model no longer reads `unit`'s parameters until it acquires them again.
    func releaseParameters(unit: Int)
    /// Where `unit`'s gradients accumulate (same layout as its parameters).
    func gradients(unit: Int) -> UnsafeMutablePointer<Float>
    /// Backward of the current micro-batch has written all of `unit`'s gradients.
    func gradientsProduced(unit: Int)
    /// Backward of the current micro-batch is starting (units are now visited last to first).
    func beginBackward()
    /// A forward pass is starting (units are now visited first to last).
    func beginForward()
    /// `unit`'s parameters already rounded to the 16-bit format `precision`, when the provider
    /// holds that compute copy itself (ZeRO-3 gathers it instead of the fp32 values); `nil`
    /// when the model should narrow `acquireParameters(unit:)` on its own. Released, like the
    /// fp32 form, by `releaseParameters(unit:)`.
    func acquireLowParameters(unit: Int, precision: Precision) -> UnsafeMutablePointer<UInt16>?
}

extension ParameterProvider {
    /// `unit`'s parameters (`count` elements) as `F` operands: the fp32 values themselves
    /// (also returned as `wide`), the provider's own 16-bit copy, or the fp32 values narrowed
    /// into `copy` (asked for only then) — unless `narrowed` says `copy` already holds them.
    func operands<F: ComputeFormat>(_: F.Type, unit: Int, count: Int, copy: @autoclosure () -> UnsafeMutablePointer<F.Element>,
                                    narrowed: Bool = false) -> (operands: UnsafeMutablePointer<F.Element>, wide: UnsafeMutablePointer<Float>?) {
        guard F.isLow else {
            let w = acquireParameters(unit: unit)
            return (F.elements(w), w)
        }
        if let own = acquireLowParameters(unit: unit, precision: F.precision) { return (F.elements(own), nil) }
        let w = acquireParameters(unit: unit), copy = copy()
        if !narrowed { F.commit(w, into: copy, count) }
        return (copy, nil)
    }

    public func beginBackward() {}
    public func beginForward() {}
    public func acquireLowParameters(unit: Int, precision: Precision) -> UnsafeMutablePointer<UInt16>? { nil }
}

/// Full, resident parameter and gradient buffers with no communication: a model used on its
/// own (sampling, tests). Training strategies are providers themselves.
public final class FlatParameters: ParameterProvider {
    /// The layout the buffers follow.
    public let layout: ParameterLayout
    /// Base of the parameter buffer (`layout.count` floats).
    public let parameters: UnsafeMutablePointer<Float>
    /// Base of the gradient buffer (`layout.count` floats).
    public let gradientBase: UnsafeMutablePointer<Float>

    /// Wraps existing buffers; the caller keeps them alive.
    public init(layout: ParameterLayout, parameters: UnsafeMutablePointer<Float>,
                gradients: UnsafeMutablePointer<Float>) {
        self.layout = layout
        self.parameters = parameters
        self.gradientBase = gradients
    }

    public func acquireParameters(unit: Int) -> UnsafeMutablePointer<Float> {
        parameters + layout.units[unit].lowerBound
    }
    public func releaseParameters(unit: Int) {}
    public func gradients(unit: Int) -> UnsafeMutablePointer<Float> {
        gradientBase + layout.units[unit].lowerBound
    }
    public func gradientsProduced(unit: Int) {}
}

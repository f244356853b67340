// MARK: - Compute-optimal sizes

/// A (parameters, tokens) split of a compute budget and its predicted loss.
public struct Allocation: Codable, Equatable, Sendable {
    public var fit: ScalingFit
    /// Training FLOPs, C = 6ND.
    public var flops: Double
    public var params: Double
    public var tokens: Double
    /// Predicted loss (nats/token) and which law gave it.
    public var loss: Double
    public var lossSource: String
    public var tokensPerParam: Double { tokens / params }
}

/// Errors of the calculator: each names the input and the fix.
public struct ScalingError: Error, CustomStringConvertible, Equatable {
    public let input: String, problem: String, fix: String
    public init(_ input: String, _ problem: String, _ fix: String) { self.input = input; self.problem = problem; self.fix = fix }
    public var description: String { "error: \(input) \(problem) (scaling): \(fix)" }

    /// Requires a finite, positive number.
    public static func positive(_ v: Double, _ name: String) throws(ScalingError) {
        guard v.isFinite else { throw ScalingError(name, "is \(v)", "pass a finite number") }
        guard v > 0 else { throw ScalingError(name, "is \(v)", "pass a positive number") }
    }
}

/// Compute-optimal allocations under each fit.
public enum Optimum {
    /// Predicted loss for N parameters and D tokens under a fit (fits without a loss law of
    /// their own use Chinchilla's approach-3 law).
    public static func loss(fit: ScalingFit, params n: Double, tokens d: Double) -> (Double, String) {
        switch fit {
        case .epoch: return (ParametricLoss.epoch.loss(params: n, tokens: d), "epoch")
        case .kaplan: return (KaplanLaw.loss(params: n, tokens: d), "kaplan")
        default: return (ParametricLoss.chinchilla.loss(params: n, tokens: d), "chinchilla")
        }
    }

    /// The optimal split of `flops` (C = 6ND).
    public static func allocate(flops c: Double, fit: ScalingFit, tokensPerParam r: Double = 20) throws(ScalingError) -> Allocation {
        try ScalingError.positive(c, "--flops")
        try ScalingError.positive(r, "--ratio")
        let n: Double
        switch fit {
        case .chinchilla: n = ParametricLoss.chinchilla.optimalParams(flops: c)
        case .epoch: n = ParametricLoss.epoch.optimalParams(flops: c)
        case .chinchillaApproach1: n = chinchillaApproach1.G * pow(c, chinchillaApproach1.a)
        case .tokensPerParam: n = (c / (6 * r)).squareRoot()
        case .kaplan: n = KaplanLaw.frontierCoefficient * pow(c / flopsPerPFDay, KaplanLaw.frontierExponent)
        }
        let d = c / (6 * n)
        guard d >= 1, n >= 1 else {
            throw ScalingError("--flops", "\(c) is too small to train one parameter on one token",
                               "pass a budget of at least 6 FLOPs (realistically > 1e15)")
        }
        let (l, src) = loss(fit: fit, params: n, tokens: d)
        return Allocation(fit: fit, flops: c, params: n, tokens: d, loss: l, lossSource: src)
    }

    /// The budget and token count for which `params` is compute-optimal.
    public static func allocate(params n: Double, fit: ScalingFit, tokensPerParam r: Double = 20) throws(ScalingError) -> Allocation {
        try ScalingError.positive(n, "--params")
        try ScalingError.positive(r, "--ratio")
        let c: Double
        switch fit {
        case .chinchilla: c = ParametricLoss.chinchilla.flops(optimalParams: n)
        case .epoch: c = ParametricLoss.epoch.flops(optimalParams: n)
        case .chinchillaApproach1: c = pow(n / chinchillaApproach1.G, 1 / chinchillaApproach1.a)
        case .tokensPerParam: c = 6 * r * n * n
        case .kaplan: c = flopsPerPFDay * pow(n / KaplanLaw.frontierCoefficient, 1 / KaplanLaw.frontierExponent)
        }
        let d = c / (6 * n)
        let (l, src) = loss(fit: fit, params: n, tokens: d)
        return Allocation(fit: fit, flops: c, params: n, tokens: d, loss: l, lossSource: src)
    }

    /// Loss now and after spending 10× the compute on a 10× larger model or on 10× the data.
    public static func nextTenX(fit: ScalingFit, params n: Double, tokens d: Double) throws(ScalingError)
        -> (now: Double, moreParams: Double, moreTokens: Double, better: String) {
        try ScalingError.positive(n, "--params")
        try ScalingError.positive(d, "--tokens")
        let now = loss(fit: fit, params: n, tokens: d).0
        let p = loss(fit: fit, params: 10 * n, tokens: d).0
        let t = loss(fit: fit, params: n, tokens: 10 * d).0
        return (now, p, t, p < t ? "parameters" : "tokens")
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

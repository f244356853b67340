// MARK: - Scaling-law fits
//
// Every published constant used by the calculator lives in this file, with its source.

/// A scaling law that says how to split a compute budget between parameters and tokens.
public enum ScalingFit: String, CaseIterable, Codable, Sendable {
    /// Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", approach 3:
    /// L(N, D) = E + A/N^α + B/D^β with E = 1.69, A = 406.4, B = 410.7, α = 0.34, β = 0.28
    /// (section 3.3 / equation 10); the optimum under C = 6ND is closed-form.
    case chinchilla
    /// Hoffmann et al. 2022, approach 1: N_opt = G·C^a, D_opt = C/(6·N_opt). a and G are a
    /// least-squares fit (log N on log C) to the nine rows of the paper's Table 3, computed
    /// from `chinchillaTable3` below, so the constants can be checked rather than trusted.
    case chinchillaApproach1 = "chinchilla-approach1"
    /// The rule of thumb D = r·N with r = 20 tokens per parameter (adjustable), C = 6ND.
    case tokensPerParam = "tokens-per-param"
    /// Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt": approach 3
    /// refitted, E = 1.8172, A = 482.01, B = 2085.43, α = 0.3478, β = 0.3658.
    case epoch
    /// Kaplan et al. 2020, "Scaling Laws for Neural Language Models": compute-efficient
    /// frontier N_opt = 1.3e9 · (C / PF-day)^0.73 (section 6.1); loss from equation 1.5,
    /// L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D with N_c = 8.8e13, D_c = 5.4e13,
    /// α_N = 0.076, α_D = 0.095 (N counts non-embedding parameters in the paper).
    case kaplan
}

/// Parameters of a parametric loss L(N, D) = E + A/N^α + B/D^β.
public struct ParametricLoss: Equatable, Sendable {
    public let E: Double, A: Double, B: Double, alpha: Double, beta: Double

    /// Hoffmann et al. 2022, approach 3.
    public static let chinchilla = ParametricLoss(E: 1.69, A: 406.4, B: 410.7, alpha: 0.34, beta: 0.28)
    /// Besiroglu et al. 2024 replication.
    public static let epoch = ParametricLoss(E: 1.8172, A: 482.01, B: 2085.43, alpha: 0.3478, beta: 0.3658)

    /// Predicted loss (nats per token).
    public func loss(params n: Double, tokens d: Double) -> Double {
        E + A / pow(n, alpha) + B / pow(d, beta)
    }

    /// Compute-optimal N for C = 6ND: minimising L along the constraint gives
    /// N_opt = G·(C/6)^(β/(α+β)) with G = (αA/(βB))^(1/(α+β)).
    public func optimalParams(flops c: Double) -> Double {
        let g = pow(alpha * A / (beta * B), 1 / (alpha + beta))
        return g * pow(c / 6, beta / (alpha + beta))
    }

    /// The budget for which `n` is compute-optimal (inverse of `optimalParams`).
    public func flops(optimalParams n: Double) -> Double {
        let g = pow(alpha * A / (beta * B), 1 / (alpha + beta))
        return 6 * pow(n / g, (alpha + beta) / beta)
    }
}

/// Kaplan et al. 2020 constants.
public enum KaplanLaw {
    public static let frontierCoefficient = 1.3e9, frontierExponent = 0.73
    public static let nC = 8.8e13, dC = 5.4e13, alphaN = 0.076, alphaD = 0.095

    /// Loss of N parameters trained on D tokens (equation 1.5).
    public static func loss(params n: Double, tokens d: Double) -> Double {
        pow(pow(nC / n, alphaN / alphaD) + dC / d, alphaD)
    }
}

/// Hoffmann et al. 2022, Table 3: (parameters, FLOPs, tokens) of compute-optimal models.
public let chinchillaTable3: [(params: Double, flops: Double, tokens: Double)] = [
    (400e6, 1.92e19, 8.0e9), (1e9, 1.21e20, 20.2e9), (10e9, 1.23e22, 205.1e9),
    (67e9, 5.76e23, 1.5e12), (175e9, 3.85e24, 3.7e12), (280e9, 9.90e24, 5.9e12),
    (520e9, 3.43e25, 11.0e12), (1e12, 1.27e26, 21.2e12), (10e12, 1.30e28, 216.2e12),
]

/// Approach-1 power law N_opt = G·C^a, least-squares in log space over Table 3.
public let chinchillaApproach1: (a: Double, G: Double) = {
    let xs = chinchillaTable3.map { log($0.flops) }, ys = chinchillaTable3.map { log($0.params) }
    let n = Double(xs.count)
    let mx = xs.reduce(0, +) / n, my = ys.reduce(0, +) / n
    var sxy = 0.0, sxx = 0.0
    for (x, y) in zip(xs, ys) { sxy += (x - mx) * (y - my); sxx += (x - mx) * (x - mx) }
    let a = sxy / sxx
    return (a, exp(my - a * mx))
}()

/// FLOPs in one PF-day: 1e15 FLOP/s for 86,400 s.
public let flopsPerPFDay = 8.64e19

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

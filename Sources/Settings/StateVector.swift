// MARK: - StateVector

/// The flat vectors a checkpoint holds, each `Ψ` fp32 values in parameter-layout order.
///
/// Every checkpoint holds `required`, each element once across the rank files. Local SGD
/// (`--sync-every`) adds the outer momentum (likewise sharded over the rank files) and each
/// rank's own inner AdamW moments (`isLocal`: every rank file holds all Ψ elements of its own).
/// PowerSGD adds its Q factors (packed at each matrix's offset, sharded) and each rank's error
/// feedback (local).
public enum StateVector: String, CaseIterable, Codable, Sendable {
    /// The fp32 (master) parameters.
    case params = "params"
    /// AdamW's first moment.
    case adamM = "adam.m"
    /// AdamW's second moment.
    case adamV = "adam.v"
    /// Local SGD: the outer optimizer's momentum.
    case outerMomentum = "outer.momentum"
    /// Local SGD: this rank's own inner AdamW moments.
    case localAdamM = "local.adam.m"
    case localAdamV = "local.adam.v"
    /// PowerSGD: every compressed matrix's Q (m×r) at the matrix's own offset, zeros elsewhere.
    case powerSGDQ = "powersgd.q"
    /// PowerSGD: this rank's error feedback.
    case powerSGDError = "powersgd.error"

    /// The vectors of every checkpoint.
    public static let required: [StateVector] = [.params, .adamM, .adamV]

    /// Whether each rank file holds the whole vector, its rank's own.
    public var isLocal: Bool { self == .localAdamM || self == .localAdamV || self == .powerSGDError }
}

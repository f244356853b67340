// MARK: - StateVector

/// The flat vectors a checkpoint holds, each `Ψ` fp32 values in parameter-layout order.
public enum StateVector: String, CaseIterable, Codable, Sendable {
    /// The fp32 (master) parameters.
    case params = "params"
    /// AdamW's first moment.
    case adamM = "adam.m"
    /// AdamW's second moment.
    case adamV = "adam.v"
}

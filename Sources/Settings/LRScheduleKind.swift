// MARK: - Learning-rate schedule kinds

/// The shape of the learning rate after the linear warm-up (llm.c's `-k`, torchtitan's
/// `lr_scheduler`).
public enum LRScheduleKind: String, CaseIterable, Codable, Sendable {
    /// Cosine from the peak down to the floor at the decay's end (nanoGPT's `get_lr`).
    case cosine
    /// Straight line from the peak down to the floor at the decay's end.
    case linear
    /// The peak until the end; the floor is never reached.
    case constant
    /// Warmup-stable-decay: the peak, then a cooldown over the last steps before the decay's
    /// end (Hu et al. 2024, MiniCPM; Hägele et al. 2024). A run can be extended during its
    /// stable phase, or a cooldown branched from any stable checkpoint, without a jump in the
    /// learning rate.
    case wsd
}

/// How a warmup-stable-decay schedule's cooldown falls from the peak to the floor, as a
/// function of the cooldown's progress r in [0, 1] (torchtitan's `decay_type`).
public enum CooldownShape: String, CaseIterable, Codable, Sendable {
    /// 1 − √r: the shape Hägele et al. found best, and llm.c's.
    case sqrt
    /// 1 − r.
    case linear
    /// (1 + cos πr) / 2.
    case cosine
}

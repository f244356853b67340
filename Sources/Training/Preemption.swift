import CSignals

// MARK: - Pre-emption

/// Graceful stop on a signal: the current step finishes, every rank writes a checkpoint, and
/// the job exits with `Preemption.exitStatus` (EX_TEMPFAIL, 75), which the resilient launcher
/// and Slurm's requeue treat as "pre-empted, resumable".
public enum Preemption {
    /// Exit status of a job stopped by a signal after committing its checkpoint.
    public static let exitStatus: Int32 = 75

    /// Holds stop signals for polling; call at the top of main, before MPI_Init or any other
    /// library starts threads, so they inherit the block.
    public static func install() {
        tessera_block_stop_signals()
        tessera_install_stop_handler()
    }

    /// The stop signal received, or 0 (polled between steps).
    public static var pending: Int32 { tessera_stop_signal() }
}

/// Thrown after the checkpoint of a signalled job is committed.
public struct Preempted: Error, CustomStringConvertible {
    public let step: Int
    public let signal: Int32
    public let checkpoint: String
    public var description: String {
        "tessera: stopped by signal \(signal) after step \(step); checkpoint committed at \(checkpoint); resume with --resume latest"
    }
}

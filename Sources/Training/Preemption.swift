#if canImport(Glibc)
import Glibc
#endif

// MARK: - Pre-emption

/// Set from a signal handler when SIGTERM, SIGINT or SIGUSR1 arrives; read at step boundaries.
nonisolated(unsafe) private var stopSignal: Int32 = 0

/// Graceful stop on a signal: the current step finishes, every rank writes a checkpoint, and
/// the job exits with `Preemption.exitStatus` (EX_TEMPFAIL, 75), which the resilient launcher
/// and Slurm's requeue treat as "pre-empted, resumable".
public enum Preemption {
    /// Exit status of a job stopped by a signal after committing its checkpoint.
    public static let exitStatus: Int32 = 75

    /// Installs the handlers (call once, before training).
    public static func install() {
        for s in [SIGTERM, SIGINT, SIGUSR1] {
            signal(s) { sig in stopSignal = sig }
        }
    }

    /// The signal received, or 0.
    public static var pending: Int32 { stopSignal }
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

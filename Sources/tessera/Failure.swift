import Checkpoint
import Comm
import Corpus
import Foundation
import Optim
import Training

// MARK: - Exit statuses (DESIGN.md): 0 done, 2 configuration or data error, 64 usage, 1 other.

/// Prints one error line (prefixed with the rank on workers) and exits with the status the
/// error class calls for.
func fail(_ error: Error, rank: Int = 0) -> Never {
    let prefix = rank > 0 ? "[rank \(rank)] " : ""
    switch error {
    case let e as ConfigError:
        writeStandardError(prefix + e.description)
        exit(2)
    case let e as DataError:
        writeStandardError(prefix + "error: " + e.description)
        exit(2)
    case let e as CheckpointError:
        writeStandardError(prefix + e.description)
        exit(2)
    case let e as SaveFailure:
        let text = e.description
        writeStandardError(prefix + (text.hasPrefix("error:") ? text : "error: " + text))
        exit(1)
    case let e as LossScaleCollapse:
        writeStandardError(prefix + e.description)
        exit(1)
    case let e as NonFiniteSteps:
        writeStandardError(prefix + e.description)
        exit(1)
    case let e as ReplicaDivergence:
        writeStandardError(prefix + e.description)
        exit(1)
    case let e as CommError:
        writeStandardError(e.description)
        exit(1)
    default:
        writeStandardError(prefix + "error: \(error)")
        exit(1)
    }
}

/// Writes one line to standard output at once, like the trainer's progress lines: `print`
/// would hold it in C's buffer until exit, after any error written meanwhile (a "continue
/// with …" line used to run into the next `error:` line of a captured log).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

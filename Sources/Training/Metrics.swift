import Foundation
import Scaling

// MARK: - Metrics

/// One line of `RUN/metrics.jsonl`.
public struct StepMetrics: Codable, Equatable, Sendable {
    public var step: Int
    public var loss: Double
    public var val_loss: Double?
    /// A mixture's evaluation: each dataset's loss over its samples of the same batches, by
    /// the dataset as `--data` names it.
    public var val_loss_by_data: [String: Double]? = nil
    /// `--eval-choices` at an evaluation: accuracy by total loss, and by mean loss per choice token.
    public var choice_acc: Double? = nil, choice_acc_norm: Double? = nil
    public var lr: Double
    public var grad_norm: Double
    public var tokens_per_s: Double
    public var ms_per_step: Double
    public var ms_forward: Double
    public var ms_backward: Double
    public var ms_comm_wait: Double
    public var ms_optimizer: Double
    public var world_size: Int
    public var params: Int
    public var sent_elements: Int
    /// Bytes sent by this rank (elements times their wire size: 2 for bf16/fp16).
    public var sent_bytes: Int
    /// fp16 only: the loss scale used this step.
    public var loss_scale: Double?
    /// Whether the update was skipped (a non-finite loss or gradient on some rank), and how
    /// many steps have been skipped so far (when any have).
    public var skipped: Bool?
    public var skipped_steps: Int?
    /// Peak resident memory of the reporting rank (rank 0) so far, in MiB; `memory.json` has
    /// the highest of all ranks at the end.
    public var peak_rss_mb: Double?
    /// Model FLOP utilisation of this rank: 6N + attention FLOPs per token at the step's
    /// speed, against the fp32 (bf16: bf16) GEMM rate measured at start on the rank's threads.
    public var mfu: Double? = nil
    /// Passes over the training split completed after this step (sequential sampling only).
    public var epoch: Double? = nil
}

/// Appends JSON lines to a file (rank 0 only).
final class MetricsWriter {
    private let handle: FileHandle
    private let encoder = JSONEncoder()

    /// Opens the metrics file; after a resume at step k, lines of later steps (from the
    /// interrupted attempt) are dropped so the file reads as one run.
    init(path: String, keepThrough step: Int) throws {
        var kept = Data()
        if step > 0, let old = FileManager.default.contents(atPath: path) {
            for line in old.split(separator: 0x0A) {
                if let obj = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
                   let s = obj["step"] as? Int, s <= step {
                    kept.append(Data(line)); kept.append(0x0A)
                }
            }
        }
        _ = FileManager.default.createFile(atPath: path, contents: kept)
        guard let h = FileHandle(forWritingAtPath: path) else {
            throw ConfigError(flag: "--out", problem: "cannot write \(path)", fix: "choose a writable run directory")
        }
        handle = h
        handle.seekToEndOfFile()
        encoder.outputFormatting = [.sortedKeys]
        // A skipped step's loss may be NaN: written as a string, not dropped.
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    }

    func write(_ m: StepMetrics) {
        guard var d = try? encoder.encode(m) else { return }
        d.append(0x0A)
        handle.write(d)
    }

    deinit { try? handle.close() }
}

/// Human-readable duration: "1m49s", "12s".
func formatDuration(_ s: Double) -> String {
    guard s.isFinite, s >= 0 else { return "?" }
    let t = Int(s.rounded())
    if t >= 3600 { return "\(t / 3600)h\(String(format: "%02d", (t % 3600) / 60))m" }
    if t >= 60 { return "\(t / 60)m\(String(format: "%02d", t % 60))s" }
    return "\(t)s"
}

/// `RUN/memory.json`: what rank 0 holds, by kind, for comparison with the ZeRO formulas
/// (every rank holds the same amounts: shards are equal-sized, padding included).
public struct MemoryFile: Codable, Sendable {
    public var psi: Int, world: Int, zero: Int, rank: Int
    public var parameters: Int, gradients: Int, optimizer: Int
    public var working: [String: Int]
    public var activations: Int
    /// What `tessera scaling memory` predicts for the same run (the formulas of the ZeRO paper).
    public var predicted: MemoryEstimate
    /// The pre-flight plan of the whole process (`train --dry-run`), and the highest resident
    /// memory any rank reached, measured (written when the run ends).
    public var plan: MemoryPlan?
    public var measured_peak_rss: Int?
}

import Checkpoint
import Foundation

// MARK: - A run directory already in use

/// What a finished or interrupted run left in its `--out` directory, so a new run started
/// there by mistake does not replace it: `train` refuses such a directory unless told to
/// resume the run or to start over (Hugging Face's example training scripts refuse a
/// non-empty output directory the same way, unless given `--overwrite_output_dir`).
public enum RunDirectory {
    /// The files a run writes into its directory, beside `checkpoints/`: what starting over
    /// removes (with `tessera plot`'s default output, drawn from the old metrics).
    static let runFiles = ["model.bin", "config.json", "memory.json", "metrics.jsonl", "tb", "loss.svg", "profile", Trainer.bestDirectory]

    /// What a previous run left in `out` that a new run would replace, as words
    /// ("checkpoints of steps 2–10 and model.bin"), or nil when there is nothing to lose: no
    /// directory, or one without a committed checkpoint or `model.bin` (an attempt that
    /// failed before its first save, which a restart should simply begin again).
    public static func previousRun(at out: String) -> String? {
        let steps = CheckpointStore(runDirectory: out).committed().compactMap { CheckpointStore.step(named: $0.lastPathComponent) }
        let model = FileManager.default.fileExists(atPath: (out as NSString).appendingPathComponent("model.bin"))
        var held: [String] = []
        if let last = steps.max(), let first = steps.min() {
            held.append(first == last ? "a checkpoint of step \(last)" : "checkpoints of steps \(first)–\(last)")
        }
        if model { held.append("model.bin") }
        return held.isEmpty ? nil : held.joined(separator: " and ")
    }

    /// Removes the previous run's checkpoints and files from `out`, leaving anything else
    /// there (the user's own files) alone.
    public static func clear(_ out: String) throws {
        let fm = FileManager.default
        for name in ["checkpoints"] + runFiles {
            let path = (out as NSString).appendingPathComponent(name)
            guard fm.fileExists(atPath: path) else { continue }
            do { try fm.removeItem(atPath: path) } catch {
                throw ConfigError(flag: "--overwrite", problem: "could not remove \(path) (\(error.localizedDescription))",
                                  fix: "check the directory's permissions, or choose another --out")
            }
        }
    }

    /// Whether `path` lies inside `directory` (or is it).
    public static func contains(_ directory: String, _ path: String) -> Bool {
        let d = URL(fileURLWithPath: directory).standardizedFileURL.resolvingSymlinksInPath().path
        let p = URL(fileURLWithPath: path).standardizedFileURL.resolvingSymlinksInPath().path
        return p == d || p.hasPrefix(d.hasSuffix("/") ? d : d + "/")
    }
}

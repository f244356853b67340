import Foundation

// MARK: - The best evaluation's weights

extension Trainer {
    /// The folder of `--keep-best`'s weights inside a run directory.
    static let bestDirectory = "best"

    /// What `RUN/best/best.json` records.
    struct BestRecord: Codable {
        var step: Int
        var val_loss: Double
    }

    /// The lowest validation loss a resumed run's `best/` holds (rank 0 reads it, every rank
    /// gets it: another host may not see the file); +∞ for a fresh run or none kept. A record
    /// from a step after the resumed one (a run resumed from an earlier checkpoint) is kept too:
    /// its weights are real and measured on the same batches, and nothing saved is dropped.
    func resumedBestValLoss() throws -> Double {
        guard config.keepBest, !config.resume.isEmpty else { return .infinity }
        var best = [Double.infinity]
        if isCoordinator, let record = try? JSONDecoder().decode(BestRecord.self, from: Data(contentsOf: bestFile("best.json"))) {
            best[0] = record.val_loss
            if record.step > startStep {
                log("tessera: \(bestFile("model.bin").path) is from step \(record.step), after the resumed step \(startStep): "
                    + "it stays until an evaluation beats its val loss \(String(format: "%.4f", record.val_loss))")
            }
        }
        if comm.size > 1 {
            if !isCoordinator { best[0] = -.infinity }
            try comm.allReduce(&best, op: .max, label: "all-reduce of the best validation loss")
        }
        return best[0]
    }

    /// Writes the current weights to `RUN/best/model.bin` (collective, like `model.bin`) and
    /// then `best.json`, each replaced atomically.
    func saveBest(step: Int, valLoss: Double) throws {
        if isCoordinator {
            try FileManager.default.createDirectory(at: bestFile(""), withIntermediateDirectories: true)
        }
        let path = try saveModel(to: bestFile("model.bin").path)
        bestValLoss = valLoss
        guard isCoordinator else { return }
        let enc = JSONEncoder(); enc.outputFormatting = [.sortedKeys]
        try enc.encode(BestRecord(step: step, val_loss: valLoss)).write(to: bestFile("best.json"), options: .atomic)
        log(String(format: "best: step %d, val loss %.4f -> %@", step, valLoss, path))
    }

    private func bestFile(_ name: String) -> URL {
        URL(fileURLWithPath: config.out).appendingPathComponent(Self.bestDirectory).appendingPathComponent(name)
    }
}

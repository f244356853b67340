import ArgumentParser
import Checkpoint
import Comm
import Corpus
import Foundation
import Kernels
import Settings
import Training

/// `tessera eval`: loss, perplexity and bits per byte of trained weights over a whole split,
/// or accuracy on multiple-choice questions (`--choices`, e.g. HellaSwag).
struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Evaluate a checkpoint or model.bin on a dataset split or on multiple-choice questions (single process, or every rank under mpirun).")

    @Option(help: "A checkpoint directory (or run directory, or RUN/checkpoints).") var checkpoint: String?
    @Option(help: "Or a model.bin written by `tessera train`.") var model: String?
    @Option(help: "Prepared data (default: the checkpoint's --data).") var data: String?
    @Option(help: "Split: val or train.") var split: String = "val"
    @Option(help: "Windows (sequences of block-size tokens) per forward pass.") var batchSize: Int = 4
    @Option(help: "Windows of the whole split start every n tokens, each scoring what the one before did not (default: block size, no overlap; smaller: more context per prediction, block size / n times the passes).")
    var stride: Int?
    @Flag(help: "Instead of the whole split, the batches train's validation drew (the checkpoint's seed, batch size and eval steps).")
    var asTrainer = false
    @Option(help: "With --as-trainer: batches (default: the checkpoint's eval steps).") var evalSteps: Int?
    @Option(help: ArgumentHelp("Instead of a split: multiple-choice questions to rank by the model's loss (JSON Lines: HellaSwag's {ctx, endings, label}, or {context, choices, label}).",
                               valueName: "file.jsonl")) var choices: String?
    @Option(help: "With --choices: only the first n questions.") var limit: Int?
    @Option(help: "With --choices: llmc (llm.c's HellaSwag: acc_norm per token) or harness (lm-evaluation-harness's: cleaned text, acc_norm per character).")
    var choicesRules: ChoiceRules = .llmc
    @Option(help: ArgumentHelp("With --choices: also write each question's choice losses and picks here (JSON Lines; a new file).",
                               valueName: "file.jsonl")) var predictions: String?
    @Option(help: "Compute format of the forward passes (bf16/fp16: weights narrowed, fp32 accumulation, as train computes).")
    var precision: Precision = .fp32
    @Option(help: "BLAS threads per rank (0: cores / ranks).") var threads: Int = 0
    @Flag(help: "Print the result as one JSON object.") var json = false

    func validate() throws {
        guard (checkpoint == nil) != (model == nil) else { throw ValidationError("pass exactly one of --checkpoint and --model") }
        guard split == "val" || split == "train" else { throw ValidationError("--split must be val or train, not '\(split)'") }
        guard batchSize >= 1 else { throw ValidationError("--batch-size must be >= 1") }
        if asTrainer && checkpoint == nil {
            throw ValidationError("--as-trainer needs --checkpoint (its config holds the seed and batch shape)")
        }
        if let evalSteps, evalSteps < 1 { throw ValidationError("--eval-steps must be >= 1") }
        if choices != nil {
            if data != nil || asTrainer || split != "val" {
                throw ValidationError("--choices scores questions instead of a split: drop --data, --split and --as-trainer")
            }
        } else if limit != nil || predictions != nil || choicesRules != .llmc {
            throw ValidationError("--limit, --predictions and --choices-rules are for --choices questions: pass --choices")
        }
        if let limit, limit < 1 { throw ValidationError("--limit must be >= 1") }
        if let stride {
            guard stride >= 1 else { throw ValidationError("--stride must be >= 1") }
            if asTrainer || choices != nil { throw ValidationError("--stride sets the whole split's windows: drop --as-trainer and --choices") }
        }
    }

    func run() throws {
        let comm: Communicator = MPICommunicator.launchedByMPI ? MPICommunicator() : LocalCommunicator()
        Gemm.setThreads(threads > 0 ? threads : Coordinator.defaultThreads())
        do {
            var trainConfig: TrainConfig?
            if let checkpoint {
                let (_, manifest) = try CheckpointStore(runDirectory: checkpoint).resolve(checkpoint) { writeStandardError($0) }
                trainConfig = try JSONDecoder().decode(TrainConfig.self, from: JSONEncoder().encode(manifest.config))
            }
            let file = try checkpoint.map { try ModelFile.fromCheckpoint($0) } ?? ModelFile.read(from: model!)
            if let choices { try evaluateChoices(choices, file: file, comm: comm) } else {
                try evaluateSplit(file: file, trainConfig: trainConfig, comm: comm)
            }
        } catch { fail(error, rank: comm.rank) }
        (comm as? MPICommunicator)?.finalize()
    }

    /// The split's loss: every window once, or train's validation batches (`--as-trainer`).
    func evaluateSplit(file: ModelFile, trainConfig: TrainConfig?, comm: Communicator) throws {
        guard let path = data ?? trainConfig?.data else {
            throw ConfigError(flag: "--data", problem: "is missing", fix: "pass the prepared data directory to evaluate on")
        }
        let dataset = try Dataset.open(path, vocabSize: trainConfig.flatMap { $0.vocabSize > 0 ? $0.vocabSize : nil })
        guard dataset.vocabSize <= file.config.vocabSize else {
            throw ConfigError(flag: "--data", problem: "\(path) has a vocabulary of \(dataset.vocabSize), the model \(file.config.vocabSize)",
                              fix: "evaluate on data prepared with the model's tokenizer")
        }
        let tokens = split == "train" ? dataset.train : dataset.val
        if let p = dataset.packing, p.blockSize != file.config.blockSize {
            throw ConfigError(flag: "--data", problem: "\(path) is packed in rows of \(p.blockSize) tokens, the model's context is \(file.config.blockSize)",
                              fix: "evaluate on data prepared with --block-size \(file.config.blockSize)")
        }
        let separator = dataset.packing.map { Int32($0.separator) }
        var result: EvalResult
        if asTrainer, let c = trainConfig {
            let sampler = BatchSampler(seed: c.seed, blockSize: c.blockSize, batchSize: c.batchSize, mode: c.sampling,
                                       rowAligned: dataset.packing != nil)
            result = try Evaluation.asTrainer(model: file, split: tokens, name: split, sampler: sampler,
                                              batches: evalSteps ?? c.evalSteps, micro: c.microBatchSize(worldSize: comm.size), comm: comm,
                                              separator: separator, precision: precision)
        } else {
            if let stride {
                guard stride <= file.config.blockSize else {
                    throw ConfigError(flag: "--stride", problem: "is \(stride), longer than the model's context of \(file.config.blockSize)",
                                      fix: "use at most \(file.config.blockSize) (windows then do not overlap)")
                }
                guard dataset.packing == nil || stride == file.config.blockSize else {
                    throw ConfigError(flag: "--stride", problem: "overlaps windows, and \(path) is packed examples evaluated row by row",
                                      fix: "drop --stride for packed prompt-completion data")
                }
            }
            if let mixture = dataset.mixture {
                result = try Evaluation.whole(model: file, mixture: tokens, names: mixture.paths, name: split, batch: batchSize, comm: comm,
                                              precision: precision, stride: stride)
            } else {
                result = try Evaluation.whole(model: file, split: tokens, name: split, batch: batchSize, comm: comm, separator: separator,
                                              precision: precision, stride: stride)
            }
        }
        result.source = checkpoint ?? model
        if comm.rank == 0 {
            if json {
                try printJSON(result)
            } else {
                let what = result.mode == "whole"
                    ? "\(result.tokens) predicted tokens (the whole \(split) split) in \(result.windows) window(s) of up to \(result.blockSize)"
                        + (result.stride < result.blockSize ? " every \(result.stride)" : "")
                    : "\(result.windows) windows of \(result.blockSize) (train's validation batches)"
                var line = String(format: "eval: loss %.6f | perplexity %.3f", result.loss, result.perplexity)
                if let bpb = result.bitsPerByte { line += String(format: " | bits per byte %.4f", bpb) }
                print(line + " | \(what) on \(result.ranks) rank(s)" + (precision == .fp32 ? "" : " in \(precision)"))
                if let parts = result.lossByData, let mixture = dataset.mixture {
                    print("eval: by dataset: " + mixture.paths.compactMap { p in parts[p].map { "\(p) " + String(format: "%.6f", $0) } }
                        .joined(separator: ", "))
                }
            }
        }
    }

    /// `--choices`: accuracy over the questions, by total and by mean loss per choice token.
    func evaluateChoices(_ path: String, file: ModelFile, comm: Communicator) throws {
        guard let tokenizer = file.tokenizer else {
            throw ConfigError(flag: "--choices", problem: "needs the model's tokenizer, and \(checkpoint ?? model!) has none (it was trained on shards without a tokenizer.json)",
                              fix: "evaluate a model trained on data from `tessera prepare`, or imported with GPT-2's vocab.json and merges.txt")
        }
        // Refused before the passes, which can take an hour, rather than after them.
        if let predictions, FileManager.default.fileExists(atPath: predictions) {
            throw ConfigError(flag: "--predictions", problem: "\(predictions) already exists", fix: "choose a new file, or remove that one first")
        }
        let examples = try ChoiceTask.load(path, tokenizer: tokenizer, limit: limit, rules: choicesRules)
        let losses = try MultipleChoice.losses(examples, model: file, comm: comm, precision: precision)
        var result = MultipleChoice.result(examples, losses, ranks: comm.size)
        result.precision = precision
        result.source = checkpoint ?? model
        result.rules = choicesRules
        guard comm.rank == 0 else { return }
        if let predictions {
            do { try MultipleChoice.predictions(examples, losses).write(to: URL(fileURLWithPath: predictions), options: .withoutOverwriting) } catch {
                throw ConfigError(flag: "--predictions", problem: "\(predictions) cannot be written (\(error.localizedDescription))",
                                  fix: "pass a new file in a writable directory")
            }
        }
        if json {
            try printJSON(result)
        } else {
            print(String(format: "eval: acc %.4f (%d/%d) | acc_norm %.4f (%d/%d)", result.accuracy, result.correct, result.examples,
                         result.normalizedAccuracy, result.correctNormalized, result.examples)
                  + " | \(result.examples) questions from \(path) on \(result.ranks) rank(s)" + (precision == .fp32 ? "" : " in \(precision)"))
        }
    }

    /// `--json`: the result as one line, keys sorted.
    func printJSON<R: Encodable>(_ result: R) throws {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        print(String(decoding: try e.encode(result), as: UTF8.self))
    }
}

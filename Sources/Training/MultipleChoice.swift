import Comm
import Corpus
import Foundation
import Kernels
import Model
import Settings

// MARK: - Multiple-choice evaluation

/// What ranking the choices of multiple-choice questions by the model's likelihood gave.
public struct ChoiceResult: Codable, Sendable {
    /// Questions scored, and how many the model got right by each rule.
    public var examples: Int, correct: Int, correctNormalized: Int
    /// `correct / examples`: the choice with the lowest total loss (nats summed over its tokens).
    public var accuracy: Double
    /// `correctNormalized / examples`: the lowest loss per choice token (llm.c's and
    /// build-nanogpt's HellaSwag `acc_norm`) or per character (lm-evaluation-harness's).
    public var normalizedAccuracy: Double
    public var ranks: Int
    /// The forward passes' compute format.
    public var precision = Precision.fp32
    /// The weights scored (the checkpoint or model file given), when known.
    public var source: String?
    /// How the questions were read and `acc_norm` normalised.
    public var rules = ChoiceRules.llmc
}

/// One choice's loss: nats summed over its tokens, and their number.
public struct ChoiceLoss: Codable, Sendable, Equatable {
    public var nats: Double, tokens: Int
}

/// Ranks each question's choices by the model's loss on them after the context, on any
/// number of ranks (question i on rank i mod N).
///
/// A choice is scored on `context + choice` cut from the left to `blockSize + 1` tokens
/// (lm-evaluation-harness's rule), so a long context loses its oldest tokens; a choice longer
/// than `blockSize` is an error. Each of its tokens adds `log Σ exp(logits) − logit[token]`
/// at the position before it. Ties between choices go to the lower index, as `argmin` breaks them.
public enum MultipleChoice {
    /// Runs the model on `B` rows of `T` tokens, computing the logits of positions
    /// `logitRows` (`b·T + t`, ascending) only; then `logits(i)` reads the i-th of them.
    public typealias Forward = (_ tokens: UnsafePointer<Int32>, _ B: Int, _ T: Int, _ logitRows: [Int]) -> Void
    public typealias Logits = (_ index: Int) -> UnsafePointer<Float>

    /// Every question's choice losses, on every rank. `rows` choices go through one forward
    /// pass. Every rank runs the same number of passes (a rank short of questions repeats a
    /// one-token pass), since a sharded model gathers its weights collectively in each.
    public static func losses(_ examples: [ChoiceExample], blockSize T: Int, vocabSize V: Int, rows: Int, comm: Communicator,
                              forward: Forward, logits: Logits) throws -> [[ChoiceLoss]] {
        try check(examples, blockSize: T, vocabSize: V)
        // Offsets of each question's choices in one flat array every rank fills its part of.
        var offsets = [0]
        for e in examples { offsets.append(offsets.last! + e.choices.count) }
        var nats = [Double](repeating: 0, count: offsets.last!)
        let rows = max(1, rows)
        let tokens = UnsafeMutablePointer<Int32>.allocate(capacity: rows * T)
        defer { tokens.deallocate() }
        let scratch = FloatBuffer(count: V)
        var passes = 0
        for i in stride(from: comm.rank, to: examples.count, by: comm.size) {
            let e = examples[i]
            for lo in stride(from: 0, to: e.choices.count, by: rows) {
                let group = lo..<min(e.choices.count, lo + rows)
                // Each row: the last T + 1 tokens of context + choice, less the last (no target).
                let windows = group.map { k -> ArraySlice<Int32> in
                    let all = e.context + e.choices[k]
                    return all[max(0, all.count - T - 1)...]
                }
                let width = windows.map { $0.count - 1 }.max()!
                for (r, w) in windows.enumerated() {
                    let row = tokens + r * width
                    for (t, id) in w.dropLast().enumerated() { row[t] = id }
                    // Positions after a shorter row's end feed no scored position (attention is causal).
                    for t in (w.count - 1)..<width { row[t] = 0 }
                }
                // Only the positions that predict a choice token need logits.
                let scored = windows.enumerated().map { r, w in (w.count - 1 - e.choices[group.lowerBound + r].count)..<(w.count - 1) }
                forward(tokens, windows.count, width, scored.enumerated().flatMap { r, ts in ts.map { r * width + $0 } })
                passes += 1
                var index = 0
                for (r, w) in windows.enumerated() {
                    var sum = 0.0
                    for t in scored[r] {
                        sum += Evaluation.crossEntropy(logits(index), V, target: Int(w[w.startIndex + t + 1]), scratch: scratch.pointer)
                        index += 1
                    }
                    nats[offsets[i] + group.lowerBound + r] = sum
                }
            }
        }
        // Every rank knows every rank's passes: no collective may come between the passes,
        // which a sharded model's own gathers would then meet out of order.
        let most = (0..<comm.size).map { r in
            stride(from: r, to: examples.count, by: comm.size).reduce(0) { $0 + (examples[$1].choices.count + rows - 1) / rows }
        }.max()!
        var one: Int32 = 0
        for _ in passes..<most { forward(&one, 1, 1, [0]) }
        try comm.allReduce(&nats, label: "all-reduce of multiple-choice losses")
        return examples.indices.map { i in
            examples[i].choices.indices.map { k in ChoiceLoss(nats: nats[offsets[i] + k], tokens: examples[i].choices[k].count) }
        }
    }

    /// Refuses questions the model cannot score: a choice longer than its context, or ids
    /// outside its vocabulary.
    public static func check(_ examples: [ChoiceExample], blockSize T: Int, vocabSize V: Int, flag: String = "--choices") throws {
        for e in examples {
            if let k = e.choices.firstIndex(where: { $0.count > T }) {
                throw ConfigError(flag: flag, problem: "\(e.line) has a choice of \(e.choices[k].count) tokens, more than the model's context of \(T)",
                                  fix: "shorten that choice, or evaluate a model with a longer context")
            }
            if let bad = (e.context + e.choices.joined()).first(where: { $0 < 0 || Int($0) >= V }) {
                throw ConfigError(flag: flag, problem: "\(e.line) encodes to id \(bad), outside the model's vocabulary of \(V)",
                                  fix: "evaluate with the model's own tokenizer")
            }
        }
    }

    /// Accuracy by total and by mean loss.
    public static func result(_ examples: [ChoiceExample], _ losses: [[ChoiceLoss]], ranks: Int) -> ChoiceResult {
        var correct = 0, normalized = 0
        for (e, l) in zip(examples, losses) {
            if argmin(l.map(\.nats)) == e.label { correct += 1 }
            if normalizedPick(e, l) == e.label { normalized += 1 }
        }
        let n = Double(examples.count)
        return ChoiceResult(examples: examples.count, correct: correct, correctNormalized: normalized,
                            accuracy: Double(correct) / n, normalizedAccuracy: Double(normalized) / n, ranks: ranks)
    }

    /// One JSON line per question: where it is, its label, each choice's nats and tokens,
    /// and the choice each rule picks (`pred`: total loss, `pred_norm`: `normalizedPick`).
    public static func predictions(_ examples: [ChoiceExample], _ losses: [[ChoiceLoss]]) throws -> Data {
        struct Line: Encodable {
            let line: String, label: Int, nats: [Double], tokens: [Int], pred: Int, pred_norm: Int
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var out = Data()
        for (e, l) in zip(examples, losses) {
            out += try encoder.encode(Line(line: e.line, label: e.label, nats: l.map(\.nats), tokens: l.map(\.tokens),
                                           pred: argmin(l.map(\.nats)), pred_norm: normalizedPick(e, l)))
            out += Data("\n".utf8)
        }
        return out
    }

    /// The choice `acc_norm` picks: the lowest loss per token (llm.c) or per character (harness).
    public static func normalizedPick(_ e: ChoiceExample, _ losses: [ChoiceLoss]) -> Int {
        argmin(zip(losses, e.normalizers).map { $0.nats / $1 })
    }

    /// The first index of the smallest value.
    public static func argmin(_ values: [Double]) -> Int {
        values.indices.min { values[$0] < values[$1] || (values[$0] == values[$1] && $0 < $1) }!
    }
}

extension MultipleChoice {
    /// Every choice's loss under the weights in `file` (computing in `precision`), all of a question's choices in
    /// one pass.
    public static func losses(_ examples: [ChoiceExample], model file: ModelFile, comm: Communicator,
                              precision: Precision = .fp32) throws -> [[ChoiceLoss]] {
        // The split evaluation's model over read-only weights; `losses` fills its own token rows.
        let runner = Evaluation.Runner(file: file, rows: 0, T: 0, separator: nil, precision: precision)
        return try losses(examples, blockSize: file.config.blockSize, vocabSize: file.config.vocabSize,
                          rows: examples.map(\.choices.count).max() ?? 1, comm: comm,
                          forward: { tokens, B, T, rows in
                              runner.model.forward(tokens: tokens, targets: nil, B: B, T: T, params: runner.flat, logitRows: rows)
                          },
                          logits: { runner.model.logitsRow(index: $0) })
    }
}

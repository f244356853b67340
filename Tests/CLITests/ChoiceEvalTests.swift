import Comm
import Corpus
import Foundation
import Kernels
import Model
import Settings
import Training
import XCTest

/// Multiple-choice evaluation (`eval --choices`): every choice's loss equals what a random
/// `GPT2LMHeadModel` gives in transformers (fixture: `Fixtures/choices/make_choices_fixture.py`,
/// questions in HellaSwag's form and the general one, contexts cut to the model's 32
/// positions), under llm.c's rules and under lm-evaluation-harness's (its own HellaSwag
/// preprocessing code), so do both accuracies; the same on 2 ranks; bad questions name their line.
final class ChoiceEvalTests: XCTestCase {
    static let fixtures = Repo.root.appendingPathComponent("Tests/CLITests/Fixtures/choices").path
    static var questions: String { fixtures + "/questions.jsonl" }

    struct Expected: Decodable {
        struct Question: Decodable { let nats: [Double]; let tokens: [Int]; let label: Int; let pred: Int; let pred_norm: Int }
        struct Rules: Decodable { let questions: [Question]; let correct: Int; let correct_norm: Int }
        let llmc: Rules, harness: Rules
    }
    struct Result: Decodable {
        let examples: Int, correct: Int, correctNormalized: Int, accuracy: Double, normalizedAccuracy: Double, ranks: Int, source: String?
        let rules: String
    }

    /// The fixture's expectations under `rules`.
    func expected(_ rules: ChoiceRules = .llmc) throws -> Expected.Rules {
        let all = try JSONDecoder().decode(Expected.self, from: Data(contentsOf: URL(fileURLWithPath: Self.fixtures + "/expected.json")))
        return rules == .llmc ? all.llmc : all.harness
    }

    /// The fixture's weights with the byte tokenizer its questions were scored in, as a model.bin.
    func modelFile(tokenizer: Tokenizer? = .byte) throws -> String {
        let file = try SafetensorsImport.read(Self.fixtures + "/model")
        let path = try Repo.temporaryDirectory("choices") + "/model.bin"
        try ModelFile(config: file.config, tokenizer: tokenizer, parameters: file.parameters).write(to: path)
        return path
    }

    func testChoiceLossesMatchTransformers() throws {
        let file = try SafetensorsImport.read(Self.fixtures + "/model")
        XCTAssertEqual(file.config.blockSize, 32)
        for rules in ChoiceRules.allCases {
            let ref = try expected(rules)
            let examples = try ChoiceTask.load(Self.questions, tokenizer: .byte, rules: rules)
            XCTAssertEqual(examples.count, ref.questions.count)
            XCTAssertGreaterThan(examples.map { $0.context.count + $0.choices.map(\.count).max()! }.max()!, 33,
                                 "some question is cut to the context")
            let losses = try MultipleChoice.losses(examples, model: file, comm: LocalCommunicator())
            for (i, (mine, theirs)) in zip(losses, ref.questions).enumerated() {
                XCTAssertEqual(mine.map(\.tokens), theirs.tokens, "\(rules) question \(i): tokens per choice")
                for (k, (a, b)) in zip(mine.map(\.nats), theirs.nats).enumerated() {
                    XCTAssertEqual(a, b, accuracy: 1e-5 * b + 1e-5, "\(rules) question \(i) choice \(k)")
                }
                XCTAssertEqual(MultipleChoice.argmin(mine.map(\.nats)), theirs.pred, "\(rules) question \(i)")
                XCTAssertEqual(MultipleChoice.normalizedPick(examples[i], mine), theirs.pred_norm, "\(rules) question \(i)")
            }
            let result = MultipleChoice.result(examples, losses, ranks: 1)
            XCTAssertEqual(result.correct, ref.correct, "\(rules)")
            XCTAssertEqual(result.correctNormalized, ref.correct_norm, "\(rules)")
        }
        XCTAssertNotEqual(try expected(.harness).correct_norm, try expected(.llmc).correct_norm, "the fixture tells the conventions apart")
        let ref = try expected(), examples = try ChoiceTask.load(Self.questions, tokenizer: .byte)
        let losses = try MultipleChoice.losses(examples, model: file, comm: LocalCommunicator())

        // One choice per pass (as train's evaluation can run it) scores the same.
        let model = GPT(config: file.config), none = FloatBuffer(count: 0)
        let flat = FlatParameters(layout: model.layout, parameters: file.parameters.pointer, gradients: none.pointer)
        let single = try MultipleChoice.losses(examples, blockSize: 32, vocabSize: 256, rows: 1, comm: LocalCommunicator(),
                                               forward: { model.forward(tokens: $0, targets: nil, B: $1, T: $2, params: flat, logitRows: $3) },
                                               logits: { model.logitsRow(index: $0) })
        for (a, b) in zip(single.joined(), losses.joined()) { XCTAssertEqual(a.nats, b.nats, accuracy: 1e-6 * b.nats) }

        // 16-bit passes (`eval --precision`): within the formats' rounding of transformers' fp32.
        for (precision, bound) in [(Precision.bf16, 1e-2), (.fp16, 2e-3)] {
            let low = try MultipleChoice.losses(examples, model: file, comm: LocalCommunicator(), precision: precision)
            let worst = zip(low.joined().map(\.nats), ref.questions.flatMap(\.nats)).map { abs($0 - $1) / $1 }.max()!
            XCTAssertLessThan(worst, bound, "\(precision)")
            XCTAssertGreaterThan(worst, 1e-7, "\(precision) computed in 16 bits")
        }
    }

    func testEvalChoicesOnOneAndTwoRanks() throws {
        let ref = try expected(), model = try modelFile()
        func result(_ r: RunResult) throws -> Result {
            XCTAssertEqual(r.status, 0, r.stderr)
            return try JSONDecoder().decode(Result.self, from: Data(r.stdout.utf8))
        }
        let one = try result(try tessera(["eval", "--model", model, "--choices", Self.questions, "--json"]))
        let two = try result(try mpirun(2, ["eval", "--model", model, "--choices", Self.questions, "--json"]))
        for r in [one, two] {
            XCTAssertEqual(r.examples, ref.questions.count)
            XCTAssertEqual(r.correct, ref.correct)
            XCTAssertEqual(r.correctNormalized, ref.correct_norm)
            XCTAssertEqual(r.normalizedAccuracy, Double(ref.correct_norm) / Double(ref.questions.count))
        }
        XCTAssertEqual(two.ranks, 2)
        XCTAssertEqual(one.source, model)
        // --predictions: each question's losses and picks, as the fixture has them; never over a file.
        let out = try Repo.temporaryDirectory("predictions") + "/p.jsonl"
        XCTAssertEqual(try tessera(["eval", "--model", model, "--choices", Self.questions, "--predictions", out]).status, 0)
        struct Line: Decodable { let line: String; let label: Int; let nats: [Double]; let tokens: [Int]; let pred: Int; let pred_norm: Int }
        let written = try Data(contentsOf: URL(fileURLWithPath: out))
        let lines = try String(decoding: written, as: UTF8.self).split(separator: "\n").map { try JSONDecoder().decode(Line.self, from: Data($0.utf8)) }
        XCTAssertEqual(lines.count, ref.questions.count)
        for (i, (l, q)) in zip(lines, ref.questions).enumerated() {
            XCTAssertEqual(l.line, "\(Self.questions):\(i + 1)")
            XCTAssertEqual(l.label, q.label); XCTAssertEqual(l.tokens, q.tokens)
            XCTAssertEqual(l.pred, q.pred); XCTAssertEqual(l.pred_norm, q.pred_norm)
            for (a, b) in zip(l.nats, q.nats) { XCTAssertEqual(a, b, accuracy: 1e-5 * b + 1e-5) }
        }
        let again = try tessera(["eval", "--model", model, "--choices", Self.questions, "--predictions", out, "--limit", "2"])
        XCTAssertEqual(again.status, 2)
        XCTAssertTrue(again.stderr.contains("--predictions \(out) already exists"), again.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: out)), written)

        let bf16 = try tessera(["eval", "--model", model, "--choices", Self.questions, "--precision", "bf16"])
        XCTAssertEqual(bf16.status, 0, bf16.stderr)
        XCTAssertTrue(bf16.stdout.contains("| \(ref.questions.count) questions from \(Self.questions) on 1 rank(s) in bf16"), bf16.stdout)
        // lm-evaluation-harness's conventions: its accuracies, and the JSON says which.
        let harness = try result(try tessera(["eval", "--model", model, "--choices", Self.questions, "--choices-rules", "harness", "--json"]))
        XCTAssertEqual(harness.rules, "harness")
        XCTAssertEqual(harness.correct, try expected(.harness).correct)
        XCTAssertEqual(harness.correctNormalized, try expected(.harness).correct_norm)
        XCTAssertEqual(one.rules, "llmc")
        let text = try tessera(["eval", "--model", model, "--choices", Self.questions, "--limit", "4"])
        XCTAssertEqual(text.status, 0, text.stderr)
        let first4 = ref.questions.prefix(4)
        let c = first4.filter { $0.pred == $0.label }.count, n = first4.filter { $0.pred_norm == $0.label }.count
        XCTAssertTrue(text.stdout.contains(String(format: "eval: acc %.4f (%d/4) | acc_norm %.4f (%d/4) | 4 questions from ", Double(c) / 4, c, Double(n) / 4, n)),
                      text.stdout)
    }

    func testBadQuestionsAreClearErrors() throws {
        let model = try modelFile(), dir = try Repo.temporaryDirectory("badchoices")
        func run(_ lines: [String], _ expected: String, model m: String? = nil, file: StaticString = #filePath, line: UInt = #line) throws {
            let path = dir + "/q.jsonl"
            try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
            let r = try tessera(["eval", "--model", m ?? model, "--choices", path])
            XCTAssertEqual(r.status, 2, r.stderr, file: file, line: line)
            XCTAssertTrue(r.stderr.contains(expected), r.stderr, file: file, line: line)
        }
        let good = #"{"context": "a b", "choices": [" c", " d"], "label": 1}"#
        try run([good, "not json"], "q.jsonl:2: is not a JSON object")
        try run([good, #"{"ctx": "a", "endings": [" c", " d"], "label": 2}"#], "q.jsonl:2: has label 2 but 2 choices")
        try run([#"{"prompt": "a", "choices": [" c", " d"], "label": 0}"#], "q.jsonl:1: lacks a string context and a list of string choices (keys: choices, label, prompt)")
        try run([#"{"context": "a", "choices": [" c"], "label": 0}"#], "has 1 choice(s); give at least two")
        try run([#"{"context": "", "choices": [" c", " d"], "label": 0}"#], "has an empty context")
        try run([#"{"context": "a", "choices": [" \#(String(repeating: "x", count: 40))", " d"], "label": 0}"#],
                "q.jsonl:1 has a choice of 41 tokens, more than the model's context of 32")
        try run([good], "needs the model's tokenizer", model: try modelFile(tokenizer: nil))
        let mixed = try tessera(["eval", "--model", model, "--choices", Self.questions, "--data", dir])
        XCTAssertEqual(mixed.status, 64)
        XCTAssertTrue(mixed.stderr.contains("--choices scores questions instead of a split"), mixed.stderr)
    }

    func testTrainScoresChoicesAtEveryEvaluation() throws {
        let data = try Repo.dataDirectory(), dir = try Repo.temporaryDirectory("trainchoices"), questions = dir + "/q.jsonl"
        let lines = [("the man sat on the", [" mat", " dog", " old hat and"], 0), ("she went to the", [" sea", " house of a man", " end"], 1),
                     ("a dog ran", [" far away", " to me", " home"], 2), ("it was a", [" good day", " night", " man"], 0),
                     ("we are", [" here", " not", " all of us"], 1)]
        try lines.map { #"{"context": "\#($0.0)", "choices": [\#($0.1.map { "\"\($0)\"" }.joined(separator: ", "))], "label": \#($0.2)}"# }
            .joined(separator: "\n").write(toFile: questions, atomically: true, encoding: .utf8)
        struct Line: Decodable { let step: Int; let val_loss: Double?; let choice_acc: Double?; let choice_acc_norm: Double? }
        for (n, extra) in [(1, [String]()), (2, ["--zero", "3", "--micro-batch", "2"])] {
            let run = dir + "/run\(n)"
            let args = tinyArgs(data: data, out: run, steps: 4) + ["--eval-every", "2", "--eval-choices", questions] + extra
            let r = n == 1 ? try tessera(args) : try mpirun(2, args)
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stdout.contains("step     2/4") && r.stdout.contains("| choices acc "), r.stdout)
            let metrics = try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
                .map { try JSONDecoder().decode(Line.self, from: Data($0.utf8)) }
            XCTAssertEqual(metrics.map(\.step), [1, 2, 3, 4])
            XCTAssertEqual(metrics.map { $0.choice_acc != nil }, [false, true, false, true], "at every evaluation, with val_loss")
            XCTAssertEqual(metrics.map { $0.choice_acc_norm != nil }, metrics.map { $0.val_loss != nil })
            // TensorBoard's events carry both tags (a Summary.Value's tag: field 1, its length, its bytes).
            let events = try FileManager.default.contentsOfDirectory(atPath: run + "/tb")
                .map { try Data(contentsOf: URL(fileURLWithPath: run + "/tb/" + $0)) }.reduce(Data(), +)
            for tag in ["val/choice_acc", "val/choice_acc_norm"] {
                XCTAssertNotNil(events.range(of: Data([0x0A, UInt8(tag.utf8.count)] + Array(tag.utf8))), "\(tag) in the event files")
            }
            // The trained weights, scored again by `eval`: the same accuracies.
            let e = try tessera(["eval", "--model", run + "/model.bin", "--choices", questions, "--json"])
            XCTAssertEqual(e.status, 0, e.stderr)
            let result = try JSONDecoder().decode(Result.self, from: Data(e.stdout.utf8))
            XCTAssertEqual(result.examples, 5)
            XCTAssertEqual(metrics.last!.choice_acc, result.accuracy, "np \(n) \(extra)")
            XCTAssertEqual(metrics.last!.choice_acc_norm, result.normalizedAccuracy, "np \(n) \(extra)")
        }
        // A resume scores the run's questions; moved away, they are named, and '' stops them.
        let resumed = try tessera(["train", "--out", dir + "/run1", "--resume", "latest", "--max-steps", "6"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(resumed.stdout.contains("| choices acc "), resumed.stdout)
        try FileManager.default.moveItem(atPath: questions, toPath: questions + ".moved")
        let lost = try tessera(["train", "--out", dir + "/run1", "--resume", "latest", "--max-steps", "8"])
        XCTAssertEqual(lost.status, 2)
        XCTAssertTrue(lost.stderr.contains("--eval-choices \(questions) cannot be read"), lost.stderr)
        let off = try tessera(["train", "--out", dir + "/run1", "--resume", "latest", "--max-steps", "8", "--eval-choices", ""])
        XCTAssertEqual(off.status, 0, off.stderr)
        XCTAssertTrue(off.stdout.contains("step     8/8") && !off.stdout.contains("choices acc"), off.stdout)

        // A bad question file is refused before --overwrite removes anything.
        let run = dir + "/run1", before = try Data(contentsOf: URL(fileURLWithPath: run + "/model.bin"))
        try "{\"context\": \"a\"}\n".write(toFile: dir + "/bad.jsonl", atomically: true, encoding: .utf8)
        let bad = try tessera(tinyArgs(data: data, out: run, steps: 4) + ["--eval-choices", dir + "/bad.jsonl", "--overwrite"])
        XCTAssertEqual(bad.status, 2)
        XCTAssertTrue(bad.stderr.contains("bad.jsonl:1: lacks a string context and a list of string choices"), bad.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: run + "/model.bin")), before)
    }
}

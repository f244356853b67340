import Foundation

// MARK: - Multiple-choice tasks

/// One multiple-choice question, tokenized: a context and the continuations to rank by the
/// model's likelihood of each after it.
public struct ChoiceExample: Sendable {
    /// The context's ids (never empty: each choice's first token is predicted from it).
    public let context: [Int32]
    /// Each choice's ids (none empty).
    public let choices: [[Int32]]
    /// The index of the right choice.
    public let label: Int
    /// `FILE:LINE`, for errors.
    public let line: String
}

/// A JSON Lines file of multiple-choice questions (`eval --choices`, `train --eval-choices`).
///
/// Two forms of a line are read:
/// - HellaSwag's own (`{"ctx": …, "endings": [4 strings], "label": 0…3}`, other keys ignored):
///   each ending is scored as `" " + ending`, the context and ending encoded separately and
///   joined, as llm.c's and build-nanogpt's HellaSwag evaluation do (GPT-2 124M: acc_norm
///   0.2955 there).
/// - A general one (`{"context": …, "choices": [strings], "label": n}`): each choice is scored
///   exactly as written after the context, so the file decides the spacing.
public enum ChoiceTask {
    /// Reads and tokenizes the first `limit` questions of `path` (all with nil).
    public static func load(_ path: String, tokenizer: Tokenizer, limit: Int? = nil) throws(DataError) -> [ChoiceExample] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw DataError.missing(path: path, fix: "pass an existing JSON Lines file of questions (HellaSwag's, or {\"context\", \"choices\", \"label\"} per line)")
        }
        var out: [ChoiceExample] = []
        for (n, line) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            if let limit, out.count == limit { break }
            guard !line.allSatisfy(\.isWhitespace) else { continue }
            out.append(try example(line, at: "\(path):\(n + 1)", tokenizer: tokenizer))
        }
        guard !out.isEmpty else {
            throw DataError.invalid(path: path, problem: "holds no questions", fix: "write one JSON object per line")
        }
        return out
    }

    /// One line's question; errors name the line and what it lacks.
    static func example(_ line: Substring, at where_: String, tokenizer: Tokenizer) throws(DataError) -> ChoiceExample {
        let forms = "{\"ctx\", \"endings\", \"label\"} (HellaSwag) or {\"context\", \"choices\", \"label\"}"
        guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            throw DataError.invalid(path: where_, problem: "is not a JSON object", fix: "write one \(forms) object per line")
        }
        let context: String, choices: [String]
        if let c = object["ctx"] as? String, let e = object["endings"] as? [String] {
            context = c; choices = e.map { " " + $0 }
        } else if let c = object["context"] as? String, let e = object["choices"] as? [String] {
            context = c; choices = e
        } else {
            throw DataError.invalid(path: where_, problem: "lacks a string context and a list of string choices (keys: \(object.keys.sorted().joined(separator: ", ")))",
                                    fix: "write \(forms)")
        }
        // HellaSwag's files have integer labels; some copies hold them as strings.
        let label: Int
        if let l = object["label"] as? Int { label = l } else if let s = object["label"] as? String, let l = Int(s) { label = l } else {
            throw DataError.invalid(path: where_, problem: "lacks an integer \"label\" (the index of the right choice)",
                                    fix: "add \"label\": the 0-based index of the right choice")
        }
        guard choices.count >= 2 else {
            throw DataError.invalid(path: where_, problem: "has \(choices.count) choice(s)", fix: "give at least two choices to rank")
        }
        guard (0..<choices.count).contains(label) else {
            throw DataError.invalid(path: where_, problem: "has label \(label) but \(choices.count) choices",
                                    fix: "use a 0-based label below \(choices.count)")
        }
        func encode(_ text: String) throws(DataError) -> [Int32] {
            do { return try tokenizer.encodeWide(text).map { Int32($0) } } catch .unknownCharacter(let c) {
                throw DataError.invalid(path: where_, problem: "has the character \(c.debugDescription), which the model's \(tokenizer.kind.rawValue) vocabulary lacks",
                                        fix: "evaluate a model whose vocabulary covers the questions' text (a byte-level one: gpt2, bpe, byte)")
            }
        }
        var contextIds = try encode(context)
        if contextIds.isEmpty {
            // Nothing to predict the first choice token from: start the text as a document
            // starts, after <|endoftext|> (as lm-evaluation-harness does), where there is one.
            guard let eot = tokenizer.documentSeparator else {
                throw DataError.invalid(path: where_, problem: "has an empty context, and a \(tokenizer.kind.rawValue) vocabulary has no <|endoftext|> to stand for it",
                                        fix: "give each question a context")
            }
            contextIds = [Int32(eot)]
        }
        var choiceIds: [[Int32]] = []
        for (k, choice) in choices.enumerated() {
            let ids = try encode(choice)
            guard !ids.isEmpty else {
                throw DataError.invalid(path: where_, problem: "has an empty choice \(k)", fix: "give every choice some text")
            }
            choiceIds.append(ids)
        }
        return ChoiceExample(context: contextIds, choices: choiceIds, label: label, line: where_)
    }
}

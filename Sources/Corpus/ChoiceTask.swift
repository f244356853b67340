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
    /// What `acc_norm` divides each choice's loss by: its tokens (llm.c) or its characters
    /// (lm-evaluation-harness).
    public let normalizers: [Double]
    /// `FILE:LINE`, for errors.
    public let line: String
}

/// How questions become token sequences and what `acc_norm` divides by: the two conventions
/// GPT-2's published HellaSwag numbers come from.
public enum ChoiceRules: String, CaseIterable, Codable, Sendable {
    /// llm.c's and build-nanogpt's: HellaSwag's `ctx` as given, each ending scored as
    /// `" " + ending` encoded apart from the context; `acc_norm` divides by the choice's tokens
    /// (GPT-2 124M: acc 0.2859, acc_norm 0.2955).
    case llmc
    /// lm-evaluation-harness's: HellaSwag's query `activity_label: ctx_a Ctx_b` and endings
    /// cleaned of WikiHow's bracket tags, each ending scored as `" " + ending` encoded together
    /// with the context (trailing spaces moved to the continuation); `acc_norm` divides by the
    /// choice's characters (GPT-2 124M: acc 0.2892, acc_norm 0.3114).
    case harness
}

/// A JSON Lines file of multiple-choice questions (`eval --choices`, `train --eval-choices`).
///
/// Two forms of a line are read:
/// - HellaSwag's own (`{"ctx": …, "endings": [4 strings], "label": 0…3}`, other keys ignored),
///   turned into a context and continuations by `ChoiceRules`.
/// - A general one (`{"context": …, "choices": [strings], "label": n}`): each choice is scored
///   exactly as written after the context, so the file decides the spacing.
public enum ChoiceTask {
    /// Reads and tokenizes the first `limit` questions of `path` (all with nil).
    public static func load(_ path: String, tokenizer: Tokenizer, limit: Int? = nil, rules: ChoiceRules = .llmc) throws(DataError) -> [ChoiceExample] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw DataError.missing(path: path, fix: "pass an existing JSON Lines file of questions (HellaSwag's, or {\"context\", \"choices\", \"label\"} per line)")
        }
        var out: [ChoiceExample] = []
        for (n, line) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            if let limit, out.count == limit { break }
            guard !line.allSatisfy(\.isWhitespace) else { continue }
            out.append(try example(line, at: "\(path):\(n + 1)", tokenizer: tokenizer, rules: rules))
        }
        guard !out.isEmpty else {
            throw DataError.invalid(path: path, problem: "holds no questions", fix: "write one JSON object per line")
        }
        return out
    }

    /// One line's question; errors name the line and what it lacks.
    static func example(_ line: Substring, at where_: String, tokenizer: Tokenizer, rules: ChoiceRules) throws(DataError) -> ChoiceExample {
        let forms = "{\"ctx\", \"endings\", \"label\"} (HellaSwag) or {\"context\", \"choices\", \"label\"}"
        guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            throw DataError.invalid(path: where_, problem: "is not a JSON object", fix: "write one \(forms) object per line")
        }
        // The context, each choice as acc_norm measures it, and the text scored after the context.
        var context: String, choices: [String], continuations: [String]
        if let c = object["ctx"] as? String, let e = object["endings"] as? [String] {
            switch rules {
            case .llmc:
                context = c; choices = e
            case .harness:
                guard let label = object["activity_label"] as? String, let a = object["ctx_a"] as? String, let b = object["ctx_b"] as? String else {
                    throw DataError.invalid(path: where_, problem: "lacks HellaSwag's \"activity_label\", \"ctx_a\" and \"ctx_b\", which the harness rules build the query from",
                                            fix: "use HellaSwag's own lines, or --choices-rules llmc")
                }
                context = harnessClean(label + ": " + a + " " + pythonCapitalized(b)); choices = e.map(harnessClean)
            }
            continuations = choices.map { " " + $0 }
        } else if let c = object["context"] as? String, let e = object["choices"] as? [String] {
            context = c; choices = e; continuations = e
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
        if rules == .harness, !context.isEmpty {
            // The harness moves the context's trailing spaces to each continuation.
            let kept = context.unicodeScalars.reversed().drop { $0.properties.isWhitespace }.count
            let moved = String(context.unicodeScalars.dropFirst(kept))
            context = String(context.unicodeScalars.prefix(kept))
            continuations = continuations.map { moved + $0 }
        }
        var contextIds = try encode(context)
        let emptyContext = contextIds.isEmpty
        if emptyContext {
            // Nothing to predict the first choice token from: start the text as a document
            // starts, after <|endoftext|> (as lm-evaluation-harness does), where there is one.
            guard let eot = tokenizer.documentSeparator else {
                throw DataError.invalid(path: where_, problem: "has an empty context, and a \(tokenizer.kind.rawValue) vocabulary has no <|endoftext|> to stand for it",
                                        fix: "give each question a context")
            }
            contextIds = [Int32(eot)]
        }
        var choiceIds: [[Int32]] = []
        for (k, continuation) in continuations.enumerated() {
            // llm.c encodes the continuation alone; the harness encodes context + continuation
            // and takes what follows the context's own tokens.
            let ids = rules == .harness && !emptyContext ? Array(try encode(context + continuation).dropFirst(contextIds.count))
                                                         : try encode(continuation)
            guard !ids.isEmpty else {
                throw DataError.invalid(path: where_, problem: "has an empty choice \(k)", fix: "give every choice some text")
            }
            choiceIds.append(ids)
        }
        let normalizers = rules == .harness ? choices.map { Double($0.unicodeScalars.count) } : choiceIds.map { Double($0.count) }
        return ChoiceExample(context: contextIds, choices: choiceIds, label: label, normalizers: normalizers, line: where_)
    }

    // MARK: lm-evaluation-harness's HellaSwag text

    /// The harness's `preprocess`: strip, `" [title]"` → `". "`, drop `[…]` tags (not across a
    /// newline, shortest first), then each pair of spaces → one.
    static func harnessClean(_ text: String) -> String {
        let s = Array(text.trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: " [title]", with: ". ").unicodeScalars)
        var out = String.UnicodeScalarView(), i = 0
        while i < s.count {
            if s[i] == "[", let close = s[(i + 1)...].firstIndex(where: { $0 == "]" || $0 == "\n" }), s[close] == "]" {
                i = close + 1
                continue
            }
            out.append(s[i]); i += 1
        }
        return String(out).replacingOccurrences(of: "  ", with: " ")
    }

    /// Python's `str.capitalize()`: the first character upper case, the rest lower case.
    static func pythonCapitalized(_ text: String) -> String {
        guard let first = text.first else { return text }
        return first.uppercased() + text.dropFirst().lowercased()
    }
}

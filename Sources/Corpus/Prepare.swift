import Foundation

// MARK: - Preparing a corpus

/// Summary of a `prepare` run.
public struct PrepareSummary: Sendable {
    public let vocabSize: Int
    public let trainTokens: Int
    public let valTokens: Int
}

/// Turns a text file into a data directory, as nanoGPT's `prepare.py`: the first
/// (1 − valFraction) of the tokens train, the rest validate.
public enum Prepare {
    /// Reads `input`, tokenizes it and writes `train.bin`, `val.bin` and `tokenizer.json`.
    public static func run(input: String, output: String, kind: Tokenizer.Kind,
                           valFraction: Double) throws(DataError) -> PrepareSummary {
        guard FileManager.default.fileExists(atPath: input) else {
            throw DataError.missing(path: input, fix: "pass an existing text file to --input")
        }
        guard let raw = FileManager.default.contents(atPath: input) else {
            throw DataError.malformed(path: input, problem: "cannot be read")
        }
        let text = String(decoding: raw, as: UTF8.self)
        let tokenizer = kind == .byte ? Tokenizer.byte : Tokenizer.char(corpus: text)
        guard tokenizer.vocabSize <= 65_536 else { throw DataError.vocabTooLarge(vocab: tokenizer.vocabSize) }
        let ids = try tokenizer.encode(text)
        let nVal = Int((Double(ids.count) * valFraction).rounded())
        let nTrain = ids.count - nVal
        guard nTrain >= 2, nVal >= 2 else {
            throw DataError.tooShort(path: input, tokens: ids.count, needed: 4)
        }
        let out = URL(fileURLWithPath: output)
        do {
            try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
            try TokenShard(tokens: Array(ids[..<nTrain]), vocabSize: tokenizer.vocabSize)
                .write(to: out.appendingPathComponent(Dataset.trainFile))
            try TokenShard(tokens: Array(ids[nTrain...]), vocabSize: tokenizer.vocabSize)
                .write(to: out.appendingPathComponent(Dataset.valFile))
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys]
            try enc.encode(tokenizer).write(to: out.appendingPathComponent(Dataset.tokenizerFile), options: .atomic)
        } catch {
            throw DataError.missing(path: output, fix: "make sure the output directory is writable (\(error.localizedDescription))")
        }
        return PrepareSummary(vocabSize: tokenizer.vocabSize, trainTokens: nTrain, valTokens: nVal)
    }
}

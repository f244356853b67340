import ArgumentParser
import Corpus

/// `tessera prepare`: text file → token shards and vocabulary.
struct Prepare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Tokenize a text file into train/val token shards.")

    @Option(help: "Text file to tokenize.") var input: String
    @Option(help: "Directory to write train.bin, val.bin and tokenizer.json into.") var out: String
    @Option(help: "Tokenizer: char (vocabulary of the corpus's characters) or byte (256).")
    var tokenizer: Tokenizer.Kind = .char
    @Option(help: "Fraction of tokens kept for validation (the end of the text).") var valFraction: Double = 0.1

    func validate() throws {
        guard valFraction > 0, valFraction < 1 else {
            throw ValidationError("--val-fraction must be in (0, 1), got \(valFraction)")
        }
    }

    func run() throws {
        do {
            let s = try Corpus.Prepare.run(input: input, output: out, kind: tokenizer, valFraction: valFraction)
            print("prepared \(out): vocabulary \(s.vocabSize) (\(tokenizer.rawValue)), "
                  + "\(s.trainTokens) train tokens, \(s.valTokens) val tokens")
        } catch { fail(error) }
    }
}

extension Tokenizer.Kind: ExpressibleByArgument {}

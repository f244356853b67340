import ArgumentParser
import Corpus
import Foundation

/// `tessera prepare`: text → token shards and vocabulary.
struct Prepare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Tokenize text into train/val token shards (llm.c's format).",
        discussion: """
        Inputs are text files (one document each, or cut by --split-on), JSON Lines files (one \
        document per line), directories of .txt/.jsonl files, or - for stdin. Each document \
        starts with <|endoftext|> when the vocabulary has it; validation takes every k-th whole \
        document (k = 1/--val-fraction), or the last --val-fraction of the tokens when there \
        are fewer documents than k.
        """)

    @Option(name: .customLong("input"), parsing: .singleValue, help: "Text file, .jsonl file, directory, or - (stdin); repeatable.")
    var inputs: [String] = []
    @Option(help: "Directory to write train_NNNNNN.bin, val_NNNNNN.bin and tokenizer.json into.") var out: String
    @Option(help: "Tokenizer: char (the corpus's characters), byte (256), gpt2 (GPT-2's BPE from --vocab/--merges), bpe (learn one of --vocab-size).")
    var tokenizer: Tokenizer.Kind = .char
    @Option(help: "gpt2: the vocabulary, GPT-2's encoder.json or a Hugging Face vocab.json.") var vocab: String?
    @Option(help: "gpt2: the merges, GPT-2's vocab.bpe or a Hugging Face merges.txt.") var merges: String?
    @Option(help: "bpe: ids to learn, <|endoftext|> included.") var vocabSize: Int = 4096
    @Option(help: "Fraction held out for validation.") var valFraction: Double = 0.1
    @Option(help: "Tokens per shard file.") var shardTokens: Int = 100_000_000
    @Option(help: "Input format: auto (.jsonl by extension, else text), txt, jsonl, or prompt-completion (JSON Lines examples packed into --block-size rows whose loss counts only the completions).")
    var format: InputFormat = .auto
    @Option(help: "prompt-completion: the field holding an example's prompt.") var promptField: String = "prompt"
    @Option(help: "prompt-completion: the field holding an example's completion.") var completionField: String = "completion"
    @Option(help: "prompt-completion: tokens per packed row (the --block-size you will train with).") var blockSize: Int?
    @Option(help: "JSON Lines: the field holding a document's text.") var textField: String = "text"
    @Option(help: "Text files: a regular expression that separates documents (a separator must not span a line break followed by a non-space).")
    var splitOn: String?
    @Option(help: "Encoding threads (0: all cores).") var threads: Int = 0

    func validate() throws {
        guard !inputs.isEmpty else { throw ValidationError("pass at least one --input (a file, a directory, or - for stdin)") }
        guard valFraction > 0, valFraction < 1 else {
            throw ValidationError("--val-fraction must be in (0, 1), got \(valFraction)")
        }
        guard shardTokens >= 1 else { throw ValidationError("--shard-tokens must be at least 1, got \(shardTokens)") }
        guard shardTokens <= ShardWriter.maxTokens else {
            throw ValidationError("--shard-tokens must be at most \(ShardWriter.maxTokens) (the shard header's int32 count), got \(shardTokens)")
        }
        guard threads >= 0, threads <= 1024 else { throw ValidationError("--threads must be in 0...1024, got \(threads)") }
        if format == .promptCompletion {
            guard let blockSize else { throw ValidationError("--format prompt-completion needs --block-size (the context you will train with)") }
            guard blockSize >= 2 else { throw ValidationError("--block-size must be at least 2, got \(blockSize)") }
        } else if blockSize != nil {
            throw ValidationError("--block-size is for --format prompt-completion (plain text is cut into windows at training time)")
        }
        if tokenizer == .bpe {
            guard vocabSize >= BPETrainer.minimumVocab, vocabSize <= 1 << 20 else {
                throw ValidationError("--vocab-size must be in \(BPETrainer.minimumVocab)...\(1 << 20) (256 bytes, merges, <|endoftext|>), got \(vocabSize)")
            }
        }
        if tokenizer == .gpt2 {
            guard vocab != nil, merges != nil else {
                throw ValidationError("--tokenizer gpt2 needs --vocab (encoder.json or vocab.json) and --merges (vocab.bpe or merges.txt)")
            }
        } else if vocab != nil || merges != nil {
            throw ValidationError("--vocab and --merges are for --tokenizer gpt2")
        }
    }

    func run() throws {
        var o = PrepareOptions(inputs: inputs, output: out)
        o.kind = tokenizer; o.vocabPath = vocab; o.mergesPath = merges; o.vocabSize = vocabSize
        o.valFraction = valFraction; o.shardTokens = shardTokens; o.format = format; o.textField = textField
        o.splitOn = splitOn
        o.promptField = promptField; o.completionField = completionField; o.blockSize = blockSize
        if threads > 0 { o.threads = threads }
        do {
            if format == .promptCompletion {
                let (s, p) = try Corpus.Prepare.prepareInstructions(o, files: try DocumentReader(inputs: inputs).files())
                print("prepared \(out): vocabulary \(s.vocabSize) (\(tokenizer.rawValue)), \(p.examples) example(s) packed into "
                      + "\(p.tokens / p.blockSize) row(s) of \(p.blockSize) tokens (\(s.trainTokens / p.blockSize) train, \(s.valTokens / p.blockSize) val); "
                      + String(format: "%.1f%% of targets count (completions)", 100 * Double(p.countedTargets) / Double(max(p.tokens, 1)))
                      + (p.truncated > 0 ? "; \(p.truncated) completion(s) cut to fit a row" : ""))
                print("train with the same --block-size \(p.blockSize); prompts and padding are masked out of the loss")
                return
            }
            let s = try Corpus.Prepare.run(o)
            let mb = Double(s.bytes) / 1e6
            print("prepared \(out): vocabulary \(s.vocabSize) (\(tokenizer.rawValue)), \(s.documents) document(s), "
                  + "\(s.trainTokens) train tokens, \(s.valTokens) val tokens in \(s.shards) shard(s)")
            print(String(format: "encoded %.1f MB in %.2f s (%.1f MB/s on %d thread(s))", mb, s.encodeSeconds,
                         mb / max(s.encodeSeconds, 1e-9), o.threads))
        } catch { fail(error) }
    }
}

import ArgumentParser
import Comm
import Foundation
import Training

/// `tessera generate`: sample text from a trained model.
struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Sample text from a trained model.bin.")

    @Option(help: "A checkpoint directory (or run directory, or RUN/checkpoints).") var checkpoint: String?
    @Option(help: "Or a model.bin written by `tessera train`.") var model: String?
    @Option(help: "Text to continue.") var prompt: String?
    @Option(help: "Or a file holding the text to continue (nanoGPT's start=\"FILE:...\").") var promptFile: String?
    @Option(help: "Samples to draw; sample k uses seed + k, so each can be drawn again alone.") var numSamples: Int = 1
    @Option(help: "Samples drawn together, each step reading the weights once for all of them (default: --num-samples, at most 8, as memory allows).")
    var batchSize: Int?
    @Option(help: "Memory this process may use, e.g. 8G (default: what the kernel reports available); bounds how many samples' key/value caches are held at once.")
    var memoryLimit: String?
    @Flag(name: .customLong("stop-at-eot"), help: "End a sample where the model draws <|endoftext|> (a fine-tuned completion's end; not printed).")
    var stopAtEOT = false
    @Option(help: "Tokens to generate.") var maxNewTokens: Int = 200
    @Option(help: "Softmax temperature; 0 is greedy.") var temperature: Double = 0.8
    @Option(help: "Keep only the K most likely tokens (0: all).") var topK: Int = 0
    @Option(help: "Keep the smallest set of tokens whose probability reaches P (1: all).") var topP: Double = 1
    @Option(help: "Sampling seed.") var seed: UInt64 = 1337

    func validate() throws {
        guard (checkpoint == nil) != (model == nil) else { throw ValidationError("pass exactly one of --checkpoint and --model") }
        guard maxNewTokens >= 0 else { throw ValidationError("--max-new-tokens must be >= 0") }
        guard temperature >= 0, temperature.isFinite else { throw ValidationError("--temperature must be >= 0") }
        guard topK >= 0 else { throw ValidationError("--top-k must be >= 0") }
        guard topP > 0, topP <= 1 else { throw ValidationError("--top-p must be in (0, 1]") }
        guard prompt == nil || promptFile == nil else { throw ValidationError("pass at most one of --prompt and --prompt-file") }
        guard numSamples >= 1 else { throw ValidationError("--num-samples must be >= 1") }
        guard (batchSize ?? 1) >= 1 else { throw ValidationError("--batch-size must be >= 1") }
    }

    /// How many samples are drawn together: `--batch-size` (no more than `--num-samples`), or
    /// up to 8 of `--num-samples`, as many as half the memory holds key/value caches for (the
    /// rest is left to the weights, the full forwards past the context and everything else).
    /// Checked before any cache is allocated: an explicit `--batch-size` whose samples drawn
    /// together do not fit is refused.
    func samplesTogether(cacheBytesPerSample perSample: Int) throws -> Int {
        let limit = try MemoryLimit.resolve(memoryLimit ?? "")
        let fit = limit.bytes / 2 / perSample
        if let batchSize {
            // Only the samples there are are drawn together, so only their caches are held.
            let together = min(batchSize, numSamples)
            guard together <= max(fit, 1) else {
                let drawn = together < batchSize ? " (\(together) drawn together with --num-samples \(numSamples))" : ""
                throw ConfigError(flag: "--batch-size", problem: "is \(batchSize)\(drawn): their key/value caches need "
                                  + "\(gibText(together * perSample)), more than half of the \(gibText(limit.bytes)) available "
                                  + "(\(limit.source))",
                                  fix: "use --batch-size \(max(fit, 1)) or less")
            }
            return together
        }
        let wanted = min(numSamples, 8), together = max(1, min(wanted, fit))
        if together < wanted {
            writeStandardError("tessera: drawing \(together) sample(s) at a time: the key/value caches of \(wanted) "
                               + "(\(gibText(wanted * perSample))) would take more than half of the \(gibText(limit.bytes)) available (\(limit.source))")
        }
        return together
    }

    /// Unbuffered, so text appears as it is generated even through a pipe.
    func write(_ text: String) { FileHandle.standardOutput.write(Data(text.utf8)) }

    func run() throws {
        do {
            let file = try checkpoint.map { try ModelFile.fromCheckpoint($0) } ?? ModelFile.read(from: model!)
            let start: String
            if let promptFile {
                guard let text = try? String(contentsOfFile: promptFile, encoding: .utf8) else {
                    throw ConfigError(flag: "--prompt-file", problem: "\(promptFile) cannot be read as UTF-8 text",
                                      fix: "pass an existing text file")
                }
                start = text
            } else {
                start = prompt ?? "\n"
            }
            var stop: Int?
            if stopAtEOT {
                guard let eot = file.tokenizer?.documentSeparator else {
                    throw ConfigError(flag: "--stop-at-eot", problem: "needs a vocabulary with <|endoftext|>, and this model's has none",
                                      fix: "drop --stop-at-eot (a char or byte tokenizer has no end-of-text token)")
                }
                stop = Int(eot)
            }
            let sampler = Sampler(file: file)
            let c = file.config
            let together = try samplesTogether(cacheBytesPerSample: 2 * c.nLayer * c.blockSize * c.nEmbd * MemoryLayout<Float>.size)
            for first in stride(from: 0, to: numSamples, by: together) {
                let count = min(together, numSamples - first)
                // The first sample of each group is written as it is generated, the others
                // when the group ends. A byte-level token can end inside a character, whose
                // decoding then ends in U+FFFD until the rest arrives: such text waits for
                // the next token.
                write(start)
                var shown = 0
                let texts = try sampler.generate(prompt: start, samples: count, maxNewTokens: maxNewTokens,
                                                 options: .init(temperature: temperature, topK: topK, topP: topP, seed: seed &+ UInt64(first)),
                                                 stop: stop) { ids in
                    let decoded = sampler.decode(ids)
                    let bytes = Array(decoded.utf8)
                    guard decoded.unicodeScalars.last != "\u{FFFD}", bytes.count >= shown else { return }
                    write(String(decoding: bytes[shown...], as: UTF8.self))
                    shown = bytes.count
                }
                for (k, text) in texts.enumerated() {
                    if k == 0 {
                        write(String(decoding: Array(text.utf8)[shown...], as: UTF8.self) + "\n")
                    } else {
                        write(start + text + "\n")
                    }
                    // nanoGPT's sample.py separates its samples the same way.
                    if numSamples > 1 { write("---------------\n") }
                }
            }
        } catch { fail(error) }
    }
}

import ArgumentParser
import Foundation
import Training

/// `tessera import`: a Hugging Face GPT-2 as a tessera model.bin (to sample, evaluate or
/// start a run from).
struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Import a Hugging Face GPT-2 directory (config.json + model.safetensors; f32, f16 or bf16) into OUT/model.bin.")

    @Argument(help: "The Hugging Face model directory (vocab.json + merges.txt beside it are imported as its tokenizer).")
    var source: String
    @Option(help: "Directory to write model.bin into (created).") var out: String

    func run() throws {
        do {
            let model = try SafetensorsImport.read(source)
            let path = (out as NSString).appendingPathComponent("model.bin")
            guard !FileManager.default.fileExists(atPath: path) else {
                throw ConfigError(flag: "--out", problem: "\(path) already exists", fix: "choose a new directory; nothing was overwritten")
            }
            do { try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true) } catch {
                throw ConfigError(flag: "--out", problem: "cannot create \(out)", fix: "choose a writable directory")
            }
            try model.write(to: path)
            let c = model.config
            print("imported \(source): \(model.parameters.count) parameters (n_layer \(c.nLayer), n_head \(c.nHead), n_embd \(c.nEmbd), "
                  + "block_size \(c.blockSize), vocabulary \(c.vocabSize)), tokenizer: \(model.tokenizer == nil ? "none (ids only)" : "GPT-2 BPE")")
            print("written to \(path); start a run from it with: tessera train --init-from \(out) --data DIR ...")
        } catch { fail(error) }
    }
}

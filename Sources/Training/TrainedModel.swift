import Checkpoint
import Corpus
import Foundation
import Kernels
import Model

// MARK: - Loading trained weights

extension ModelFile {
    /// The weights of a committed checkpoint (any world size or stage), verified first.
    public static func fromCheckpoint(_ path: String) throws -> ModelFile {
        let (dir, manifest) = try CheckpointStore(runDirectory: path).resolve(path) { writeWarning($0) }
        func int(_ k: String) throws -> Int {
            guard case .unsigned(let u) = manifest.model[k], let v = Int(exactly: u) else {
                throw CheckpointError(dir.path, "manifest lacks model.\(k)", "use a checkpoint written by tessera")
            }
            return v
        }
        var bias = true
        if case .bool(let b) = manifest.model["bias"] { bias = b }
        let config = GPTConfig(nLayer: try int("nLayer"), nHead: try int("nHead"), nEmbd: try int("nEmbd"),
                               blockSize: try int("blockSize"), vocabSize: try int("vocabSize"), bias: bias)
        // A run on shards without a tokenizer.json (llm.c's, nanoGPT's) has none.
        var tokenizer: Tokenizer?
        if let tokText = manifest.tokenizer {
            guard let t = try? JSONDecoder().decode(Tokenizer.self, from: Data(tokText.utf8)) else {
                throw CheckpointError(dir.path, "manifest's tokenizer cannot be read", "use a checkpoint written by tessera train")
            }
            tokenizer = t
        }
        do { try config.validate() } catch {
            throw CheckpointError(dir.path, "manifest's model is invalid (\(error.description))", "the manifest is inconsistent")
        }
        if let run = try? JSONDecoder().decode(TrainConfig.self, from: JSONEncoder().encode(manifest.config)), let lora = run.lora {
            let adapters = try LoRACheckpoint.adapters(dir: dir, manifest: manifest, lora: lora, model: config)
            let merged = try LoRACheckpoint.base(of: run, model: config, checkpoint: dir.path)
            lora.merge(adapters.pointer, into: merged.pointer, model: config)
            return ModelFile(config: config, tokenizer: tokenizer, parameters: merged)
        }
        guard ParameterLayout(config).count == manifest.parameterCount else {
            throw CheckpointError(dir.path, "model shape does not match its parameter count", "the manifest is inconsistent")
        }
        let params = FloatBuffer(count: manifest.parameterCount)
        try CheckpointReader.VectorReader(directory: dir, manifest: manifest)
            .read(.params, range: 0..<manifest.parameterCount, into: params.pointer)
        return ModelFile(config: config, tokenizer: tokenizer, parameters: params)
    }
}

/// The two halves of a LoRA checkpoint: its adapters, and the frozen base it names.
public enum LoRACheckpoint {
    /// The adapters' fp32 values (`lora.layout(for: model)`).
    public static func adapters(dir: URL, manifest: Manifest, lora: LoRAConfig, model: GPTConfig) throws -> FloatBuffer {
        guard lora.layout(for: model).count == manifest.parameterCount else {
            throw CheckpointError(dir.path, "holds \(manifest.parameterCount) values but rank-\(lora.rank) adapters on "
                                  + lora.targets.map(\.rawValue).joined(separator: ",") + " need \(lora.parameterCount(for: model))",
                                  "the manifest is inconsistent")
        }
        let values = FloatBuffer(count: manifest.parameterCount)
        try CheckpointReader.VectorReader(directory: dir, manifest: manifest)
            .read(.params, range: 0..<manifest.parameterCount, into: values.pointer)
        return values
    }

    /// The base weights `run` adapted (its `initFrom`), checked against the checksum it recorded.
    public static func base(of run: TrainConfig, model: GPTConfig, checkpoint: String) throws -> FloatBuffer {
        let values: FloatBuffer
        do { values = try InitialWeights.parameters(InitialWeights.load(run.initFrom), for: model) } catch {
            throw CheckpointError(checkpoint, "holds LoRA adapters whose base \(run.initFrom) cannot be read (\(error))",
                                  "put the base back at that path")
        }
        let checksum = InitialWeights.checksum(values)
        guard checksum == run.loraBase else {
            throw CheckpointError(checkpoint, "holds LoRA adapters trained on a base with checksum \(run.loraBase), but \(run.initFrom) "
                                  + "now has checksum \(checksum)", "restore the base the adapters were trained on")
        }
        return values
    }
}

func writeWarning(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }

import Checkpoint
import Corpus
import Foundation
import Kernels
import Model

// MARK: - Loading trained weights

extension ModelFile {
    /// The weights of a committed checkpoint (any world size or stage), verified first; a
    /// LoRA checkpoint's adapters merged into the base it names.
    public static func fromCheckpoint(_ path: String) throws -> ModelFile {
        let (dir, manifest, config, tokenizer) = try checkpointModel(path)
        if let adapters = try LoRACheckpoint.read(dir: dir, manifest: manifest, model: config, tokenizer: tokenizer) {
            return try adapters.merged(checkpoint: dir.path)
        }
        guard ParameterLayout(config).count == manifest.parameterCount else {
            throw CheckpointError(dir.path, "model shape does not match its parameter count", "the manifest is inconsistent")
        }
        let params = FloatBuffer(count: manifest.parameterCount)
        try CheckpointReader.VectorReader(directory: dir, manifest: manifest)
            .read(.params, range: 0..<manifest.parameterCount, into: params.pointer)
        return ModelFile(config: config, tokenizer: tokenizer, parameters: params)
    }

    /// A committed checkpoint's directory, manifest, model shape and tokenizer.
    static func checkpointModel(_ path: String) throws -> (URL, Manifest, GPTConfig, Tokenizer?) {
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
        return (dir, manifest, config, tokenizer)
    }
}

/// The two halves of a LoRA checkpoint: its adapters, and the frozen base it names.
public struct LoRACheckpoint {
    /// The run that trained the adapters (its `initFrom` is the base).
    public let run: TrainConfig
    public let lora: LoRAConfig
    /// The base's shape and tokenizer.
    public let model: GPTConfig
    public let tokenizer: Tokenizer?
    /// The adapters' fp32 values (`lora.layout(for: model)`).
    public let values: FloatBuffer

    /// The adapters of the checkpoint at `path` (a run or checkpoint directory), or nil when
    /// it trained the whole model.
    public static func read(_ path: String) throws -> LoRACheckpoint? {
        let (dir, manifest, config, tokenizer) = try ModelFile.checkpointModel(path)
        return try read(dir: dir, manifest: manifest, model: config, tokenizer: tokenizer)
    }

    static func read(dir: URL, manifest: Manifest, model: GPTConfig, tokenizer: Tokenizer?) throws -> LoRACheckpoint? {
        guard let run = try? JSONDecoder().decode(TrainConfig.self, from: JSONEncoder().encode(manifest.config)),
              let lora = run.lora else { return nil }
        let values = try adapters(dir: dir, manifest: manifest, lora: lora, model: model)
        return LoRACheckpoint(run: run, lora: lora, model: model, tokenizer: tokenizer, values: values)
    }

    /// The base's weights with the adapters merged in.
    public func merged(checkpoint: String) throws -> ModelFile {
        let values = try Self.base(of: run, model: model, checkpoint: checkpoint)
        lora.merge(self.values.pointer, into: values.pointer, model: model)
        return ModelFile(config: model, tokenizer: tokenizer, parameters: values)
    }

    static func adapters(dir: URL, manifest: Manifest, lora: LoRAConfig, model: GPTConfig) throws -> FloatBuffer {
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

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
        guard ParameterLayout(config).count == manifest.parameterCount else {
            throw CheckpointError(dir.path, "model shape does not match its parameter count", "the manifest is inconsistent")
        }
        let params = FloatBuffer(count: manifest.parameterCount)
        try CheckpointReader.VectorReader(directory: dir, manifest: manifest)
            .read(.params, range: 0..<manifest.parameterCount, into: params.pointer)
        return ModelFile(config: config, tokenizer: tokenizer, parameters: params)
    }
}

func writeWarning(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }

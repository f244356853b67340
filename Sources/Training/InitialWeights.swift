import Foundation
import Kernels
import Model

// MARK: - Starting from trained weights

/// Weights a new run starts from (`train --init-from`): a Hugging Face GPT-2 directory, a
/// tessera run or checkpoint, or a `model.bin`.
public enum InitialWeights {
    /// The weights at `source`: a directory with `model.safetensors` (Hugging Face), a run
    /// directory or checkpoint (its latest committed checkpoint), a directory with a
    /// `model.bin` (`tessera import`'s output), or a `model.bin` file.
    public static func load(_ source: String) throws -> ModelFile {
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        guard fm.fileExists(atPath: source, isDirectory: &isDirectory) else {
            throw ConfigError(flag: "--init-from", problem: "\(source) does not exist",
                              fix: "pass a Hugging Face GPT-2 directory, a run or checkpoint directory, or a model.bin")
        }
        guard isDirectory.boolValue else { return try ModelFile.read(from: source) }
        let dir = URL(fileURLWithPath: source)
        if fm.fileExists(atPath: dir.appendingPathComponent("model.safetensors").path) { return try SafetensorsImport.read(source) }
        if fm.fileExists(atPath: dir.appendingPathComponent("manifest.json").path)
            || fm.fileExists(atPath: dir.appendingPathComponent("checkpoints").path) {
            return try ModelFile.fromCheckpoint(source)
        }
        let bin = dir.appendingPathComponent("model.bin").path
        guard fm.fileExists(atPath: bin) else {
            throw ConfigError(flag: "--init-from", problem: "\(source) holds no model.safetensors, checkpoint or model.bin",
                              fix: "pass a Hugging Face GPT-2 directory, a run or checkpoint directory, or a model.bin")
        }
        return try ModelFile.read(from: bin)
    }

    /// The identity of a base model's weights (as the run uses them): FNV-1a 64 of their fp32
    /// bytes, in hex. LoRA checkpoints record it, and adapters load only onto the same base.
    public static func checksum(_ values: FloatBuffer) -> String {
        String(format: "%016llx", Checksum.fnv1a(UnsafeRawBufferPointer(start: values.pointer, count: values.byteCount)))
    }

    /// `source`'s parameters in the layout of `shape`, which must be its shape except for a
    /// shorter context (the first `blockSize` position embeddings are taken, as nanoGPT's
    /// `crop_block_size` does).
    static func parameters(_ source: ModelFile, for shape: GPTConfig) throws -> FloatBuffer {
        let s = source.config
        var differences: [String] = []
        if s.nLayer != shape.nLayer { differences.append("n_layer \(s.nLayer) vs \(shape.nLayer)") }
        if s.nHead != shape.nHead { differences.append("n_head \(s.nHead) vs \(shape.nHead)") }
        if s.nEmbd != shape.nEmbd { differences.append("n_embd \(s.nEmbd) vs \(shape.nEmbd)") }
        if s.bias != shape.bias { differences.append("bias \(s.bias) vs \(shape.bias)") }
        if s.vocabSize != shape.vocabSize { differences.append("vocabulary \(s.vocabSize) vs \(shape.vocabSize)") }
        if shape.blockSize > s.blockSize { differences.append("block_size \(s.blockSize) < \(shape.blockSize)") }
        guard differences.isEmpty else {
            throw ConfigError(flag: "--init-from", problem: "the weights do not fit this run (weights vs run: \(differences.joined(separator: ", ")))",
                              fix: "drop the model flags (the run takes the weights' shape), keep --block-size at most \(s.blockSize)")
        }
        let from = ParameterLayout(s), to = ParameterLayout(shape)
        let out = FloatBuffer(count: to.count)
        for t in to.tensors {
            guard let f = from.tensor(named: t.name) else {
                throw ConfigError(flag: "--init-from", problem: "the weights lack \(t.name)", fix: "pass a GPT-2-shaped model")
            }
            // Every tensor has the same shape except wpe, whose first rows are taken.
            (out.pointer + t.offset).update(from: source.parameters.pointer + f.offset, count: t.count)
        }
        return out
    }
}

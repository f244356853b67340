import Foundation
import Kernels
import Model

// MARK: - Hugging Face export

/// Writes trained weights as `model.safetensors` + `config.json` in Hugging Face's GPT-2
/// layout, loadable by `GPT2LMHeadModel`.
///
/// safetensors: an 8-byte little-endian header length, a JSON header mapping each tensor to
/// its dtype, shape and byte range, then the raw little-endian data. GPT-2's checkpoints use
/// `Conv1D`, whose weights are stored (in, out): tessera's (out, in) linear weights are
/// transposed. The LM head is tied to `wte` and not stored. A model trained without biases is
/// exported with zero biases, which GPT-2 requires and which compute the same function.
public enum SafetensorsExport {
    public enum DType: String, CaseIterable, Sendable { case f32, bf16 }

    /// Exports into `directory` (created); returns the tensor names written.
    @discardableResult
    public static func write(_ model: ModelFile, to directory: String, dtype: DType) throws -> [String] {
        let c = model.config, C = c.nEmbd
        let layout = ParameterLayout(c)
        let p = model.parameters.pointer
        var tensors: [(name: String, shape: [Int], values: [Float])] = []
        func get(_ name: String) -> [Float] {
            guard let t = layout.tensor(named: name) else { return [] }
            return Array(UnsafeBufferPointer(start: p + t.offset, count: t.count))
        }
        func transposed(_ name: String, out: Int, inp: Int) -> [Float] {
            let w = get(name)
            var r = [Float](repeating: 0, count: w.count)
            for o in 0..<out { for i in 0..<inp { r[i * out + o] = w[o * inp + i] } }
            return r
        }
        func biasOrZero(_ name: String, _ n: Int) -> [Float] { c.bias ? get(name) : [Float](repeating: 0, count: n) }
        tensors.append(("transformer.wte.weight", [c.vocabSize, C], get("wte.weight")))
        tensors.append(("transformer.wpe.weight", [c.blockSize, C], get("wpe.weight")))
        for l in 0..<c.nLayer {
            let s = "h.\(l).", h = "transformer.h.\(l)."
            tensors.append((h + "ln_1.weight", [C], get(s + "ln_1.weight")))
            tensors.append((h + "ln_1.bias", [C], biasOrZero(s + "ln_1.bias", C)))
            tensors.append((h + "attn.c_attn.weight", [C, 3 * C], transposed(s + "attn.c_attn.weight", out: 3 * C, inp: C)))
            tensors.append((h + "attn.c_attn.bias", [3 * C], biasOrZero(s + "attn.c_attn.bias", 3 * C)))
            tensors.append((h + "attn.c_proj.weight", [C, C], transposed(s + "attn.c_proj.weight", out: C, inp: C)))
            tensors.append((h + "attn.c_proj.bias", [C], biasOrZero(s + "attn.c_proj.bias", C)))
            tensors.append((h + "ln_2.weight", [C], get(s + "ln_2.weight")))
            tensors.append((h + "ln_2.bias", [C], biasOrZero(s + "ln_2.bias", C)))
            tensors.append((h + "mlp.c_fc.weight", [C, 4 * C], transposed(s + "mlp.c_fc.weight", out: 4 * C, inp: C)))
            tensors.append((h + "mlp.c_fc.bias", [4 * C], biasOrZero(s + "mlp.c_fc.bias", 4 * C)))
            tensors.append((h + "mlp.c_proj.weight", [4 * C, C], transposed(s + "mlp.c_proj.weight", out: C, inp: 4 * C)))
            tensors.append((h + "mlp.c_proj.bias", [C], biasOrZero(s + "mlp.c_proj.bias", C)))
        }
        tensors.append(("transformer.ln_f.weight", [C], get("ln_f.weight")))
        tensors.append(("transformer.ln_f.bias", [C], biasOrZero("ln_f.bias", C)))

        let dir = URL(fileURLWithPath: directory)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try safetensors(tensors, dtype: dtype).write(to: dir.appendingPathComponent("model.safetensors"), options: .atomic)
        let config: [String: Any] = [
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": c.nLayer, "n_head": c.nHead,
            "n_embd": C, "n_positions": c.blockSize, "n_ctx": c.blockSize, "vocab_size": c.vocabSize,
            "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", "tie_word_embeddings": true,
            "torch_dtype": dtype == .f32 ? "float32" : "bfloat16", "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        ]
        try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
            .write(to: dir.appendingPathComponent("config.json"), options: .atomic)
        return tensors.map(\.name)
    }

    /// A safetensors file: the header with byte ranges, then the data in the same order.
    static func safetensors(_ tensors: [(name: String, shape: [Int], values: [Float])], dtype: DType) -> Data {
        let width = dtype == .f32 ? 4 : 2
        var header = "{\"__metadata__\":{\"format\":\"pt\"}"
        var offset = 0
        for t in tensors {
            let n = t.values.count * width
            header += ",\"\(t.name)\":{\"dtype\":\"\(dtype == .f32 ? "F32" : "BF16")\",\"shape\":[\(t.shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(offset),\(offset + n)]}"
            offset += n
        }
        header += "}"
        while (header.utf8.count + 8) % 8 != 0 { header += " " }   // pad so data starts 8-aligned
        var out = Data()
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: header.utf8)
        for t in tensors {
            if dtype == .f32 {
                t.values.withUnsafeBytes { out.append(contentsOf: $0) }
            } else {
                var half = t.values.map { Convert.bf16($0).littleEndian }
                half.withUnsafeMutableBytes { out.append(contentsOf: $0) }
            }
        }
        return out
    }

    // MARK: PEFT adapters

    /// Writes LoRA adapters as Hugging Face PEFT saves them for a `GPT2LMHeadModel`:
    /// `adapter_model.safetensors` with `base_model.model.transformer.h.N.<module>.lora_A.weight`
    /// (r × in) and `lora_B.weight` (out × r) — PEFT keeps nn.Linear's (out, in) for the
    /// adapters even on GPT-2's Conv1D, whose (in, out) weight it marks `fan_in_fan_out` —
    /// and `adapter_config.json` (targets as module-name suffixes, so `attn.c_proj` does not
    /// also catch `mlp.c_proj`). Returns the tensor names.
    @discardableResult
    public static func writePEFT(_ lora: LoRAConfig, adapters: UnsafePointer<Float>, model: GPTConfig, base: String,
                                 to directory: String, dtype: DType = .f32) throws -> [String] {
        let layout = lora.layout(for: model)
        let tensors = layout.tensors.map { t in
            ("base_model.model.transformer." + t.name, t.shape, Array(UnsafeBufferPointer(start: adapters + t.offset, count: t.count)))
        }
        let dir = URL(fileURLWithPath: directory)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try safetensors(tensors, dtype: dtype).write(to: dir.appendingPathComponent("adapter_model.safetensors"), options: .atomic)
        let config: [String: Any] = [
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "r": lora.rank,
            "lora_alpha": lora.alpha, "lora_dropout": 0.0, "target_modules": lora.targets.map(\.module),
            "fan_in_fan_out": true, "bias": "none", "inference_mode": true, "init_lora_weights": true,
            "use_rslora": false, "use_dora": false, "modules_to_save": NSNull(),
        ]
        try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
            .write(to: dir.appendingPathComponent("adapter_config.json"), options: .atomic)
        return tensors.map(\.0)
    }
}

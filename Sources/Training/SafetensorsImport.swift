import Corpus
import Foundation
import Kernels
import Model

// MARK: - Hugging Face import

/// Reads a Hugging Face GPT-2 directory (`config.json` + `model.safetensors`, and the
/// tokenizer's `vocab.json` + `merges.txt` when present) into tessera's parameter layout:
/// the inverse of `SafetensorsExport`.
///
/// Tensors may be F32, F16 or BF16 (widened exactly), named as `GPT2LMHeadModel` saves them
/// (`transformer.h.0…`) or as `GPT2Model` does (`h.0…`). `Conv1D` weights (in, out) are
/// transposed to tessera's (out, in). The LM head must be tied to `wte` (an `lm_head.weight`
/// that differs is refused); GPT-2's causal-mask buffers (`attn.bias`, `attn.masked_bias`)
/// are not parameters and are skipped.
public enum SafetensorsImport {
    /// The model in `directory`.
    public static func read(_ directory: String) throws -> ModelFile {
        let dir = URL(fileURLWithPath: directory)
        func bad(_ problem: String, _ fix: String = "pass a Hugging Face GPT-2 directory (config.json, model.safetensors)") -> ConfigError {
            ConfigError(flag: "import", problem: "\(directory): \(problem)", fix: fix)
        }
        guard let configData = FileManager.default.contents(atPath: dir.appendingPathComponent("config.json").path),
              let hf = try? JSONSerialization.jsonObject(with: configData) as? [String: Any] else {
            throw bad("config.json is missing or not JSON")
        }
        guard (hf["model_type"] as? String ?? "gpt2") == "gpt2" else {
            throw bad("model_type is \(hf["model_type"]!), not gpt2", "only GPT-2-architecture models can be imported")
        }
        func int(_ keys: String...) throws -> Int {
            for k in keys { if let v = hf[k] as? Int { return v } }
            throw bad("config.json lacks \(keys.joined(separator: " or "))")
        }
        let act = hf["activation_function"] as? String ?? "gelu_new"
        guard ["gelu_new", "gelu_pytorch_tanh"].contains(act) else {
            throw bad("activation_function is \(act)", "tessera computes GPT-2's tanh GELU (gelu_new)")
        }
        if let inner = hf["n_inner"] as? Int, inner != 4 * ((hf["n_embd"] as? Int) ?? 0) {
            throw bad("n_inner is \(inner)", "tessera's MLP is 4 × n_embd wide, as GPT-2's")
        }
        if hf["scale_attn_weights"] as? Bool == false || hf["scale_attn_by_inverse_layer_idx"] as? Bool == true {
            throw bad("attention scores are scaled other than by 1/√head_size", "import a model with GPT-2's attention scaling")
        }
        if let eps = hf["layer_norm_epsilon"] as? Double, abs(eps - 1e-5) > 1e-12 {
            throw bad("layer_norm_epsilon is \(eps)", "tessera's LayerNorm uses 1e-5, as GPT-2")
        }
        let config = GPTConfig(nLayer: try int("n_layer"), nHead: try int("n_head"), nEmbd: try int("n_embd"),
                               blockSize: try int("n_positions", "n_ctx"), vocabSize: try int("vocab_size"), bias: true)
        do { try config.validate() } catch { throw bad("config.json describes an invalid model (\(error))") }

        let file = try SafetensorsFile(dir.appendingPathComponent("model.safetensors").path) { bad($0) }
        // GPT2LMHeadModel's names start with "transformer.", GPT2Model's do not.
        var names: [String: String] = [:]
        for name in file.entries.keys { names[name.hasPrefix("transformer.") ? String(name.dropFirst("transformer.".count)) : name] = name }

        /// A tensor widened to fp32, checked against its expected shape.
        func tensor(_ name: String, _ shape: [Int]) throws -> [Float] {
            guard let stored = names[name] else { throw bad("model.safetensors lacks \(name)") }
            return try file.values(stored, shape: shape)
        }

        let layout = ParameterLayout(config), C = config.nEmbd
        let params = FloatBuffer(count: layout.count)
        func put(_ ours: String, _ values: [Float]) throws {
            guard let t = layout.tensor(named: ours), t.count == values.count else { throw bad("no room for \(ours)") }
            values.withUnsafeBufferPointer { (params.pointer + t.offset).update(from: $0.baseAddress!, count: t.count) }
        }
        /// A Conv1D weight stored (in, out), as tessera's (out, in).
        func conv(_ name: String, inp: Int, out: Int) throws -> [Float] {
            let w = try tensor(name, [inp, out])
            var r = [Float](repeating: 0, count: w.count)
            for i in 0..<inp { for o in 0..<out { r[o * inp + i] = w[i * out + o] } }
            return r
        }
        let wte = try tensor("wte.weight", [config.vocabSize, C])
        try put("wte.weight", wte)
        try put("wpe.weight", try tensor("wpe.weight", [config.blockSize, C]))
        for l in 0..<config.nLayer {
            let h = "h.\(l)."
            try put(h + "ln_1.weight", try tensor(h + "ln_1.weight", [C]))
            try put(h + "ln_1.bias", try tensor(h + "ln_1.bias", [C]))
            try put(h + "attn.c_attn.weight", try conv(h + "attn.c_attn.weight", inp: C, out: 3 * C))
            try put(h + "attn.c_attn.bias", try tensor(h + "attn.c_attn.bias", [3 * C]))
            try put(h + "attn.c_proj.weight", try conv(h + "attn.c_proj.weight", inp: C, out: C))
            try put(h + "attn.c_proj.bias", try tensor(h + "attn.c_proj.bias", [C]))
            try put(h + "ln_2.weight", try tensor(h + "ln_2.weight", [C]))
            try put(h + "ln_2.bias", try tensor(h + "ln_2.bias", [C]))
            try put(h + "mlp.c_fc.weight", try conv(h + "mlp.c_fc.weight", inp: C, out: 4 * C))
            try put(h + "mlp.c_fc.bias", try tensor(h + "mlp.c_fc.bias", [4 * C]))
            try put(h + "mlp.c_proj.weight", try conv(h + "mlp.c_proj.weight", inp: 4 * C, out: C))
            try put(h + "mlp.c_proj.bias", try tensor(h + "mlp.c_proj.bias", [C]))
        }
        try put("ln_f.weight", try tensor("ln_f.weight", [C]))
        try put("ln_f.bias", try tensor("ln_f.bias", [C]))
        if names["lm_head.weight"] != nil, try tensor("lm_head.weight", [config.vocabSize, C]) != wte {
            throw bad("lm_head.weight differs from wte.weight", "tessera ties the LM head to the token embedding: import a tied model")
        }

        // GPT-2's tokenizer files beside the weights, if any.
        var tokenizer: Tokenizer?
        let vocab = dir.appendingPathComponent("vocab.json").path, merges = dir.appendingPathComponent("merges.txt").path
        if FileManager.default.fileExists(atPath: vocab), FileManager.default.fileExists(atPath: merges) {
            let bpe = try BytePairEncoder.load(vocab: vocab, merges: merges)
            guard bpe.vocabSize <= config.vocabSize else {
                throw bad("the tokenizer has \(bpe.vocabSize) tokens, the model \(config.vocabSize)", "import the tokenizer of this model")
            }
            tokenizer = Tokenizer(kind: .gpt2, bpe: bpe)
        }
        return ModelFile(config: config, tokenizer: tokenizer, parameters: params)
    }
}

/// The tensors of one safetensors file (an 8-byte little-endian header length, a JSON header
/// of dtype, shape and byte range per tensor, then the data), widened to fp32 on request.
struct SafetensorsFile {
    struct Entry: Decodable { let dtype: String; let shape: [Int]; let data_offsets: [Int] }
    /// Header entries by stored name.
    let entries: [String: Entry]
    private let bytes: Data
    private let dataStart: Int
    private let bad: (String) -> Error

    /// Reads `path`; `bad(problem)` makes the error for anything wrong with it.
    init(_ path: String, bad: @escaping (String) -> Error) throws {
        self.bad = bad
        let name = URL(fileURLWithPath: path).lastPathComponent
        guard let bytes = FileManager.default.contents(atPath: path) else { throw bad("\(name) is missing") }
        guard bytes.count >= 8 else { throw bad("\(name) is too short") }
        let headerLength = bytes.withUnsafeBytes { Int(UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))) }
        guard headerLength > 0, headerLength <= bytes.count - 8 else { throw bad("\(name) has a damaged header length") }
        guard var raw = try? JSONSerialization.jsonObject(with: bytes.subdata(in: 8..<(8 + headerLength))) as? [String: Any] else {
            throw bad("\(name) has a header that is not JSON")
        }
        raw["__metadata__"] = nil
        var entries: [String: Entry] = [:]
        for (tensor, value) in raw {
            guard let d = try? JSONSerialization.data(withJSONObject: value), let e = try? JSONDecoder().decode(Entry.self, from: d),
                  e.data_offsets.count == 2 else { throw bad("tensor \(tensor) has a malformed header entry") }
            entries[tensor] = e
        }
        self.entries = entries
        self.bytes = bytes
        dataStart = 8 + headerLength
    }

    /// Tensor `name` widened to fp32 (F32, F16 or BF16), checked against `shape` when given.
    func values(_ name: String, shape: [Int]? = nil) throws -> [Float] {
        guard let e = entries[name] else { throw bad("lacks \(name)") }
        if let shape, e.shape != shape { throw bad("\(name) has shape \(e.shape), config.json implies \(shape)") }
        let n = e.shape.reduce(1, *)
        let width: Int
        switch e.dtype {
        case "F32": width = 4
        case "F16", "BF16": width = 2
        default: throw bad("\(name) is \(e.dtype), not F32, F16 or BF16 (export the model in float32, float16 or bfloat16)")
        }
        let lo = dataStart + e.data_offsets[0], hi = dataStart + e.data_offsets[1]
        guard e.data_offsets[0] >= 0, hi - lo == n * width, hi <= bytes.count else { throw bad("\(name)'s data range is wrong") }
        return bytes.withUnsafeBytes { p in
            (0..<n).map { i -> Float in
                let at = lo + i * width
                switch e.dtype {
                case "F32": return Float(bitPattern: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: at, as: UInt32.self)))
                case "BF16": return Convert.float(bf16: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: at, as: UInt16.self)))
                default: return Convert.float(fp16: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: at, as: UInt16.self)))
                }
            }
        }
    }
}

extension SafetensorsImport {
    /// Every tensor of a safetensors file by name, with its shape, widened to fp32.
    public static func tensors(_ path: String) throws -> [String: (shape: [Int], values: [Float])] {
        let file = try SafetensorsFile(path) { ConfigError(flag: "safetensors", problem: "\(path): \($0)", fix: "pass a safetensors file") }
        var out: [String: (shape: [Int], values: [Float])] = [:]
        for (name, e) in file.entries { out[name] = (e.shape, try file.values(name)) }
        return out
    }
}

// MARK: - GPTConfig

/// Shape of a GPT-2 style decoder-only transformer.
public struct GPTConfig: Codable, Equatable, Sendable {
    /// Number of transformer blocks.
    public var nLayer: Int
    /// Attention heads per block; must divide `nEmbd`.
    public var nHead: Int
    /// Width of the residual stream.
    public var nEmbd: Int
    /// Longest context (number of learned positions).
    public var blockSize: Int
    /// Number of token ids.
    public var vocabSize: Int
    /// Whether linear layers and LayerNorms carry biases (nanoGPT's `bias`).
    public var bias: Bool

    /// Creates a configuration; call `validate()` before building a model from user input.
    public init(nLayer: Int, nHead: Int, nEmbd: Int, blockSize: Int, vocabSize: Int, bias: Bool = true) {
        self.nLayer = nLayer; self.nHead = nHead; self.nEmbd = nEmbd
        self.blockSize = blockSize; self.vocabSize = vocabSize; self.bias = bias
    }

    /// Width of one attention head.
    public var headSize: Int { nEmbd / nHead }

    /// Checks the shape; the error names the field and how to fix it.
    public func validate() throws(ModelError) {
        func need(_ ok: Bool, _ what: String, _ fix: String) throws(ModelError) {
            if !ok { throw ModelError.invalidConfig("\(what): \(fix)") }
        }
        try need(nLayer >= 1, "n_layer is \(nLayer)", "use at least 1")
        try need(nHead >= 1, "n_head is \(nHead)", "use at least 1")
        try need(nEmbd >= 1, "n_embd is \(nEmbd)", "use at least 1")
        try need(nEmbd % nHead == 0, "n_embd \(nEmbd) is not divisible by n_head \(nHead)",
                 "choose n_embd a multiple of n_head")
        try need(blockSize >= 1, "block_size is \(blockSize)", "use at least 1")
        try need(vocabSize >= 2, "vocab_size is \(vocabSize)", "use at least 2")
        try need(vocabSize <= 65_536, "vocab_size \(vocabSize) exceeds the uint16 token range",
                 "use a vocabulary of at most 65536 tokens")
    }
}

/// Errors from model construction and use.
public enum ModelError: Error, CustomStringConvertible, Equatable {
    /// The configuration cannot describe a model.
    case invalidConfig(String)
    /// A token id is outside the vocabulary.
    case tokenOutOfRange(token: Int, vocab: Int)

    public var description: String {
        switch self {
        case .invalidConfig(let s): return "invalid model config (\(s))"
        case .tokenOutOfRange(let t, let v): return "token id \(t) is outside the vocabulary of \(v)"
        }
    }
}

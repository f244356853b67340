import Kernels
import Settings

// MARK: - GPT

/// A GPT-2 style decoder: token + position embeddings, pre-LayerNorm blocks of causal
/// self-attention and a 4× GELU MLP, a final LayerNorm and an LM head tied to `wte`.
///
/// Parameters and gradients live outside the model, reached through a `ParameterProvider`;
/// the model owns only activations. `forward` then `backward` computes gradients for one
/// micro-batch and *adds* them to the gradient buffer.
public final class GPT {
    /// The model shape.
    public let config: GPTConfig
    /// Where each parameter lives.
    public let layout: ParameterLayout
    /// Format of matrix-multiply operands and saved activations; parameters, gradients and
    /// accumulation stay fp32.
    public let precision: Precision
    /// Which activations backward recomputes instead of keeping.
    public let recompute: Recompute
    /// How causal attention is computed.
    public let attention: AttentionKernel
    /// Dropout of training passes (those given sequence keys); nil when p = 0.
    public let dropout: Dropout?
    /// Low-rank adapters on a frozen base, if any; `adapterLayout` is where their parameters live.
    public let lora: LoRAConfig?
    /// The adapters' flat layout (unit for unit with `layout`); nil without LoRA.
    public let adapterLayout: ParameterLayout?
    /// Packed instruction data's `<|endoftext|>`: each sequence is then several documents,
    /// each starting after one, with positions from 0 and attention only within it (fused
    /// attention). nil: every sequence is one document.
    public var documentSeparator: Int32?
    /// The layer sequence in that format.
    private let body: any ModelBody

    private var lastB = 0, lastT = 0
    /// How many logit rows the last forward computed, when it was given `logitRows`.
    private var computedRows: Int?
    private var tokens: UnsafeMutablePointer<Int32>
    private var targets: UnsafeMutablePointer<Int32>
    private var tokenCapacity = 0
    private var keys: UnsafeMutablePointer<UInt64>
    private var keyCapacity = 0

    /// Creates a model for a validated configuration.
    public init(config: GPTConfig, precision: Precision = .fp32, recompute: Recompute = .none,
                attention: AttentionKernel = .fused, dropout: Float = 0, lora: LoRAConfig? = nil) {
        precondition(dropout == 0 || attention == .fused, "dropout needs the fused attention kernel")
        self.config = config
        self.dropout = dropout > 0 ? Dropout(p: dropout) : nil
        self.precision = precision
        self.recompute = recompute
        self.attention = attention
        let layout = ParameterLayout(config)
        self.layout = layout
        self.lora = lora
        adapterLayout = lora?.layout(for: config)
        switch precision {
        case .fp32: body = Transformer<FP32>(config: config, layout: layout, attention: attention, lora: lora)
        case .bf16: body = Transformer<BF16>(config: config, layout: layout, attention: attention, lora: lora)
        case .fp16: body = Transformer<FP16>(config: config, layout: layout, attention: attention, lora: lora)
        }
        tokens = .allocate(capacity: 1)
        targets = .allocate(capacity: 1)
        keys = .allocate(capacity: 1)
    }

    deinit { tokens.deallocate(); targets.deallocate(); keys.deallocate() }

    /// Bytes of activations kept for backward, and of all activation buffers with scratch.
    public var activationBytes: (saved: Int, total: Int) { body.activationBytes }

    /// Makes sure activations hold a `B`×`T` micro-batch (allocates only when it grows).
    public func reserve(B: Int, T: Int) {
        body.reserve(B: B, T: T, recompute: recompute)
        if B * T > tokenCapacity {
            tokens.deallocate(); targets.deallocate()
            tokenCapacity = B * T
            tokens = .allocate(capacity: tokenCapacity)
            targets = .allocate(capacity: tokenCapacity)
        }
    }

    // MARK: Forward

    /// Runs the model on `B` sequences of `T` tokens.
    ///
    /// With `targets`, also computes the cross-entropy and returns its sum over counted
    /// positions (targets < 0 are ignored) and their number, leaving probabilities for
    /// `backward`. Without targets the logits are left in place for `logitsRow`.
    /// `sequenceKeys` (one per sequence, `Dropout.sequenceKey`) make it a training pass with
    /// dropout; without them (evaluation, generation) there is none. A LoRA model reads its
    /// frozen base from `params` and its adapters from `adapters` (required then).
    ///
    /// `logitRows` (without targets): only these positions' logits are computed (positions
    /// `b·T + t`, ascending), read back with `logitsRow(index:)`; scoring a few positions of
    /// each sequence (multiple-choice questions, the next token) then skips most of the LM
    /// head's work.
    @discardableResult
    public func forward(tokens inTokens: UnsafePointer<Int32>, targets inTargets: UnsafePointer<Int32>?,
                        B: Int, T: Int, params: ParameterProvider, adapters: ParameterProvider? = nil,
                        sequenceKeys: UnsafePointer<UInt64>? = nil, logitRows: [Int]? = nil) -> (sum: Double, count: Int) {
        precondition(T <= config.blockSize, "sequence length \(T) exceeds block_size \(config.blockSize)")
        if let logitRows {
            precondition(inTargets == nil, "logitRows is for passes without targets")
            precondition(zip(logitRows, logitRows.dropFirst()).allSatisfy { $0 < $1 }
                         && (logitRows.first ?? -1) >= 0 && (logitRows.last ?? 0) < B * T,
                         "logitRows must be one or more ascending positions below B·T")
        }
        computedRows = logitRows?.count
        reserve(B: B, T: T)
        let BT = B * T
        tokens.update(from: inTokens, count: BT)
        if let inTargets { targets.update(from: inTargets, count: BT) }
        lastB = B; lastT = T
        var pass: DropoutPass?
        if let dropout, let sequenceKeys {
            if B > keyCapacity { keys.deallocate(); keys = .allocate(capacity: B); keyCapacity = B }
            keys.update(from: sequenceKeys, count: B)
            pass = DropoutPass(dropout: dropout, keys: keys)
        }
        return (logitRows ?? []).withUnsafeBufferPointer { rows in
            body.forward(tokens: tokens, targets: inTargets == nil ? nil : UnsafePointer(targets), B: B, T: T,
                         params: params, adapters: adapters, dropout: pass, separator: documentSeparator,
                         logitRows: logitRows == nil ? nil : rows)
        }
    }

    /// Logits of sequence `b` at position `t` after a forward without targets (of every row).
    public func logitsRow(b: Int, t: Int) -> UnsafePointer<Float> {
        precondition(computedRows == nil, "the last forward computed only its logitRows: read them by index")
        return UnsafePointer(body.logits + (b * lastT + t) * config.vocabSize)
    }

    /// Logits of the `index`-th of the last forward's `logitRows`.
    public func logitsRow(index: Int) -> UnsafePointer<Float> {
        precondition(index >= 0 && index < computedRows ?? 0, "row \(index) of \(computedRows ?? 0) computed")
        return UnsafePointer(body.logits + index * config.vocabSize)
    }

    // MARK: Backward

    /// Adds the gradient of `lossScale × (summed loss)` to the gradient buffers (a LoRA
    /// model's: the adapters' provider given to `forward`; the base has none).
    ///
    /// Must follow a `forward` with targets. The trainer passes `1 / (tokens in the global
    /// batch)` so that micro-batches and ranks sum to the gradient of the global mean loss.
    public func backward(lossScale: Float, params: ParameterProvider) {
        body.backward(lossScale: lossScale, tokens: tokens, targets: targets, B: lastB, T: lastT, params: params)
    }
}

// MARK: - The format-erased body

/// What `GPT` needs of a `Transformer<F>`, whatever `F`.
protocol ModelBody: AnyObject {
    var activationBytes: (saved: Int, total: Int) { get }
    var logits: UnsafeMutablePointer<Float> { get }
    func reserve(B: Int, T: Int, recompute: Recompute)
    func forward(tokens: UnsafePointer<Int32>, targets: UnsafePointer<Int32>?, B: Int, T: Int,
                 params: ParameterProvider, adapters: ParameterProvider?, dropout: DropoutPass?,
                 separator: Int32?, logitRows: UnsafeBufferPointer<Int>?) -> (sum: Double, count: Int)
    func backward(lossScale: Float, tokens: UnsafePointer<Int32>, targets: UnsafePointer<Int32>, B: Int, T: Int,
                  params: ParameterProvider)
}

extension Transformer: ModelBody {
    var activationBytes: (saved: Int, total: Int) {
        let branch = lora?.bytes ?? (saved: 0, total: 0)
        return activations.map { ($0.savedBytes + branch.saved, $0.totalBytes + branch.total) } ?? (0, 0)
    }
    var logits: UnsafeMutablePointer<Float> { activations!.logits.pointer }
}

import Kernels
import Settings

// MARK: - LoRA

/// A linear map of a block that LoRA can adapt.
public enum LoRATarget: String, CaseIterable, Codable, Sendable {
    /// The fused query/key/value projection (`attn.c_attn`).
    case attn
    /// Attention's output projection (`attn.c_proj`).
    case attnProj = "attn-proj"
    /// The MLP's expansion (`mlp.c_fc`).
    case mlp
    /// The MLP's output projection (`mlp.c_proj`).
    case mlpProj = "mlp-proj"

    /// The module's name inside a block, as GPT-2 (and PEFT) spell it.
    public var module: String {
        switch self {
        case .attn: return "attn.c_attn"
        case .attnProj: return "attn.c_proj"
        case .mlp: return "mlp.c_fc"
        case .mlpProj: return "mlp.c_proj"
        }
    }

    /// (inputs, outputs) of the map for residual width `C`.
    public func shape(C: Int) -> (input: Int, output: Int) {
        switch self {
        case .attn: return (C, 3 * C)
        case .attnProj: return (C, C)
        case .mlp: return (C, 4 * C)
        case .mlpProj: return (4 * C, C)
        }
    }

    /// Parses a comma-separated list such as `attn,attn-proj` (each at most once, in
    /// block order afterwards).
    public static func list(_ text: String) throws(ModelError) -> [LoRATarget] {
        var set = Set<LoRATarget>()
        for part in text.split(separator: ",").map({ String($0.filter { !$0.isWhitespace }) }) where !part.isEmpty {
            guard let t = LoRATarget(rawValue: part) else {
                throw .invalidConfig("LoRA target '\(part)' is unknown: use a comma-separated list of "
                                     + allCases.map(\.rawValue).joined(separator: ", "))
            }
            set.insert(t)
        }
        guard !set.isEmpty else {
            throw .invalidConfig("no LoRA target given: use a comma-separated list of " + allCases.map(\.rawValue).joined(separator: ", "))
        }
        return allCases.filter(set.contains)
    }
}

/// Low-rank adapters on a frozen GPT (Hu et al., 2021): each targeted map W (out × in) of
/// every block computes W·x + (alpha / r)·B·A·x, with A (r × in) and B (out × r) trainable.
public struct LoRAConfig: Codable, Equatable, Sendable {
    /// The rank r.
    public var rank: Int
    /// The scale numerator: updates are multiplied by alpha / r.
    public var alpha: Double
    /// Which maps of every block carry adapters.
    public var targets: [LoRATarget]

    public init(rank: Int, alpha: Double, targets: [LoRATarget]) {
        self.rank = rank; self.alpha = alpha; self.targets = targets
    }

    /// alpha / r.
    public var scale: Float { Float(alpha / Double(rank)) }

    /// Checks the adapter shape against the model's.
    public func validate(for c: GPTConfig) throws(ModelError) {
        guard rank >= 1 else { throw .invalidConfig("LoRA rank is \(rank): use a rank of at least 1, e.g. 8") }
        let smallest = maximumRank(for: c)
        guard rank <= smallest else {
            throw .invalidConfig("LoRA rank \(rank) is larger than the dimension \(smallest) of the adapted maps: "
                                 + "use a rank below \(smallest) (low rank is the point; 4 to 64 is usual)")
        }
        guard alpha > 0, alpha.isFinite else { throw .invalidConfig("LoRA alpha is \(alpha): use a positive value, e.g. 16") }
        guard !targets.isEmpty else { throw .invalidConfig("no LoRA target given") }
    }

    /// The largest rank the targets allow: the smallest dimension of the adapted maps.
    public func maximumRank(for c: GPTConfig) -> Int {
        targets.map { min($0.shape(C: c.nEmbd).input, $0.shape(C: c.nEmbd).output) }.min() ?? c.nEmbd
    }

    /// Bytes `LoRABranch` keeps for `rows` rows per map in a model of `nLayer` blocks computing
    /// in `precision` (its saved su per layer and target), and with its N × r scratch.
    public func activationBytes(rows: Int, nLayer: Int, precision: Precision) -> (saved: Int, total: Int) {
        let e = precision.bytes, saved = e * nLayer * targets.count * rows * rank
        return (saved, saved + 4 * rows * rank + (precision.isLow ? e * rows * rank : 0))
    }

    /// The adapters' layout, unit for unit with `ParameterLayout(c)`: empty embedding and final
    /// units, and per block `h.L.<module>.lora_A.weight` (r × in) then `lora_B.weight` (out × r)
    /// for each target.
    public func layout(for c: GPTConfig) -> ParameterLayout {
        let blocks = (0..<c.nLayer).map { l in
            targets.flatMap { t -> [(name: String, shape: [Int])] in
                let (i, o) = t.shape(C: c.nEmbd), p = "h.\(l).\(t.module)."
                return [(p + "lora_A.weight", [rank, i]), (p + "lora_B.weight", [o, rank])]
            }
        }
        return ParameterLayout(units: [[]] + blocks + [[]])
    }

    /// Offsets of (A, B) inside a block unit of `layout(for:)`, by target.
    func offsets(in layout: ParameterLayout) -> [LoRATarget: (a: Int, b: Int)] {
        var o: [LoRATarget: (a: Int, b: Int)] = [:]
        for t in targets {
            o[t] = (layout.offsetInUnit("h.0.\(t.module).lora_A.weight")!, layout.offsetInUnit("h.0.\(t.module).lora_B.weight")!)
        }
        return o
    }

    /// Trainable parameters for a model shape.
    public func parameterCount(for c: GPTConfig) -> Int {
        c.nLayer * targets.reduce(0) { let s = $1.shape(C: c.nEmbd); return $0 + rank * (s.input + s.output) }
    }
}

// MARK: Initialisation

extension LoRAConfig {
    /// Elements `range` of the adapters' initial vector (`layout(for:)`), into
    /// `out[0..<range.count]`: A ~ U(−1/√in, 1/√in) (PEFT's Kaiming-uniform default with
    /// a = √5), B = 0, so the adapted model starts as the base. As for `GPT.initialize`, each
    /// tensor has its own stream seeded by (seed, tensor index) and element i takes word i,
    /// so any shard is initialised on its own.
    public func initialize(_ out: UnsafeMutablePointer<Float>, elements range: Range<Int>, layout: ParameterLayout,
                           seed: UInt64) {
        for (index, spec) in layout.tensors.enumerated() {
            let lo = max(spec.offset, range.lowerBound), hi = min(spec.offset + spec.count, range.upperBound)
            guard lo < hi else { continue }
            let p = out + (lo - range.lowerBound), n = hi - lo
            guard spec.name.hasSuffix("lora_A.weight") else { p.update(repeating: 0, count: n); continue }
            let bound = 1 / Double(spec.shape[1]).squareRoot()
            var rng = SplitMix64(seed: SplitMix64.hash(seed, 0x4C6F_5241, UInt64(index)))
            rng.state = rng.state &+ 0x9E37_79B9_7F4A_7C15 &* UInt64(lo - spec.offset)   // skip to element lo
            for i in 0..<n { p[i] = Float((2 * rng.nextUniform() - 1) * bound) }
        }
    }
}

// MARK: Merging

extension LoRAConfig {
    /// Adds (alpha/r)·B·A of every adapted map to its weight: `adapters` follow
    /// `layout(for: model)`, `base` follows `ParameterLayout(model)`. The result computes what
    /// the adapted model does (up to rounding), with no adapters.
    public func merge(_ adapters: UnsafePointer<Float>, into base: UnsafeMutablePointer<Float>, model: GPTConfig) {
        let baseLayout = ParameterLayout(model), mine = layout(for: model)
        for l in 0..<model.nLayer {
            for t in targets {
                let p = "h.\(l).\(t.module)."
                guard let w = baseLayout.tensor(named: p + "weight"), let a = mine.tensor(named: p + "lora_A.weight"),
                      let b = mine.tensor(named: p + "lora_B.weight") else { preconditionFailure("layouts disagree at \(p)") }
                let (i, o) = t.shape(C: model.nEmbd)
                // W (o × i) += scale · B (o × r) · A (r × i)
                FP32.gemm(.none, .none, m: o, n: i, k: rank, alpha: scale, a: adapters + b.offset, lda: rank,
                          b: adapters + a.offset, ldb: i, beta: 1, c: base + w.offset, ldc: i)
            }
        }
    }
}

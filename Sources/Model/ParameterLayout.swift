// MARK: - ParameterLayout

/// One named tensor inside the flat parameter buffer.
public struct TensorSpec: Codable, Equatable, Sendable {
    /// GPT-2 style name, e.g. `h.0.attn.c_attn.weight`.
    public let name: String
    /// Shape in PyTorch `nn.Linear` convention: weights are (out, in).
    public let shape: [Int]
    /// Offset of the first element in the flat buffer.
    public let offset: Int
    /// Index of the unit (embeddings, block i, final LayerNorm) that owns this tensor.
    public let unit: Int

    /// Number of elements.
    public var count: Int { shape.reduce(1, *) }
    /// AdamW decays 2-D tensors only (weights and embeddings), as nanoGPT does.
    public var decays: Bool { shape.count >= 2 }
}

/// Where every tensor of a flat fp32 buffer lives, grouped into units.
///
/// A GPT's layout (`init(_:)`) orders units as the model computes them: embeddings (`wte`,
/// `wpe`), then each block, then the final LayerNorm. Units are contiguous, so a unit can be
/// gathered, bucketed or sharded as one range, and backward finishes units from the end of
/// the buffer towards its start. LoRA adapters (`LoRALayout`) use the same unit numbering,
/// with empty embedding and final units, so a strategy treats them like any parameters.
public struct ParameterLayout: Sendable {
    /// All tensors in buffer order.
    public let tensors: [TensorSpec]
    /// Element range of each unit in buffer order: 0 = embeddings, 1...nLayer = blocks,
    /// nLayer + 1 = final LayerNorm.
    public let units: [Range<Int>]
    /// Total number of parameters.
    public let count: Int

    /// Lays out `units` (each a list of named tensor shapes) one after another.
    public init(units spec: [[(name: String, shape: [Int])]]) {
        var tensors: [TensorSpec] = [], units: [Range<Int>] = []
        var offset = 0
        for (unit, members) in spec.enumerated() {
            let start = offset
            for (name, shape) in members {
                tensors.append(TensorSpec(name: name, shape: shape, offset: offset, unit: unit))
                offset += shape.reduce(1, *)
            }
            units.append(start..<offset)
        }
        self.tensors = tensors
        self.units = units
        self.count = offset
    }

    /// The layout of a GPT: GPT-2's tensor names and nn.Linear shapes.
    public init(_ c: GPTConfig) {
        let C = c.nEmbd
        func withBias(_ prefix: String, _ shape: [Int], _ out: Int) -> [(String, [Int])] {
            [(prefix + ".weight", shape)] + (c.bias ? [(prefix + ".bias", [out])] : [])
        }
        let blocks = (0..<c.nLayer).map { l -> [(name: String, shape: [Int])] in
            let p = "h.\(l)."
            return withBias(p + "ln_1", [C], C) + withBias(p + "attn.c_attn", [3 * C, C], 3 * C)
                + withBias(p + "attn.c_proj", [C, C], C) + withBias(p + "ln_2", [C], C)
                + withBias(p + "mlp.c_fc", [4 * C, C], 4 * C) + withBias(p + "mlp.c_proj", [C, 4 * C], C)
        }
        self.init(units: [[("wte.weight", [c.vocabSize, C]), ("wpe.weight", [c.blockSize, C])]] + blocks
                    + [withBias("ln_f", [C], C)])
    }

    /// Index of the unit holding block `layer`.
    public func blockUnit(_ layer: Int) -> Int { layer + 1 }
    /// Index of the final-LayerNorm unit.
    public var finalUnit: Int { units.count - 1 }

    /// Elements of the largest unit after the embedding (a block, or the final LayerNorm):
    /// what one working buffer for "any other unit" must hold.
    public var largestNonEmbeddingUnit: Int { units[1...].map(\.count).max() ?? 0 }

    /// The tensor with a given name, if any.
    public func tensor(named name: String) -> TensorSpec? { tensors.first { $0.name == name } }

    /// Offset of tensor `name` from the start of its unit (nil when the layout has none).
    public func offsetInUnit(_ name: String) -> Int? {
        tensor(named: name).map { $0.offset - units[$0.unit].lowerBound }
    }
}

/// Offsets of a GPT's tensors within their unit (the same for every block), which the
/// layer code reads weights at.
struct GPTOffsets {
    let ln1w: Int, ln1b: Int?, qkvw: Int, qkvb: Int?, projw: Int, projb: Int?
    let ln2w: Int, ln2b: Int?, fcw: Int, fcb: Int?, fcprojw: Int, fcprojb: Int?
    /// Offsets inside the final unit.
    let lnfw: Int, lnfb: Int?
    /// Offset of `wpe` inside the embedding unit (`wte` is at 0).
    let wpe: Int

    init(_ layout: ParameterLayout) {
        func at(_ name: String) -> Int? { layout.offsetInUnit(name) }
        ln1w = at("h.0.ln_1.weight")!; ln1b = at("h.0.ln_1.bias")
        qkvw = at("h.0.attn.c_attn.weight")!; qkvb = at("h.0.attn.c_attn.bias")
        projw = at("h.0.attn.c_proj.weight")!; projb = at("h.0.attn.c_proj.bias")
        ln2w = at("h.0.ln_2.weight")!; ln2b = at("h.0.ln_2.bias")
        fcw = at("h.0.mlp.c_fc.weight")!; fcb = at("h.0.mlp.c_fc.bias")
        fcprojw = at("h.0.mlp.c_proj.weight")!; fcprojb = at("h.0.mlp.c_proj.bias")
        lnfw = at("ln_f.weight")!; lnfb = at("ln_f.bias")
        wpe = at("wpe.weight")!
    }
}

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

/// Where every parameter lives in the one flat fp32 buffer.
///
/// Order is by *unit*: embeddings (`wte`, `wpe`), then each block, then the final LayerNorm.
/// Units are contiguous, so a unit can be gathered, bucketed or sharded as one range, and
/// backward finishes units from the end of the buffer towards its start.
public struct ParameterLayout: Sendable {
    /// All tensors in buffer order.
    public let tensors: [TensorSpec]
    /// Element range of each unit in buffer order: 0 = embeddings, 1...nLayer = blocks,
    /// nLayer + 1 = final LayerNorm.
    public let units: [Range<Int>]
    /// Total number of parameters.
    public let count: Int

    // Offsets of block tensors relative to the start of their block (same for every block).
    public let ln1w: Int, ln1b: Int?, qkvw: Int, qkvb: Int?, projw: Int, projb: Int?
    public let ln2w: Int, ln2b: Int?, fcw: Int, fcb: Int?, fcprojw: Int, fcprojb: Int?
    /// Offsets inside the final unit.
    public let lnfw: Int, lnfb: Int?
    /// Offset of `wpe` inside the embedding unit (`wte` is at 0).
    public let wpe: Int

    /// Builds the layout for a configuration.
    public init(_ c: GPTConfig) {
        var tensors: [TensorSpec] = []
        var units: [Range<Int>] = []
        var offset = 0
        var unitStart = 0
        var unit = 0
        @discardableResult
        func add(_ name: String, _ shape: [Int]) -> Int {
            let rel = offset - unitStart
            tensors.append(TensorSpec(name: name, shape: shape, offset: offset, unit: unit))
            offset += shape.reduce(1, *)
            return rel
        }
        func endUnit() { units.append(unitStart..<offset); unitStart = offset; unit += 1 }
        let C = c.nEmbd
        add("wte.weight", [c.vocabSize, C])
        wpe = add("wpe.weight", [c.blockSize, C])
        endUnit()
        var o: [Int?] = []
        for l in 0..<c.nLayer {
            let p = "h.\(l)."
            o = [
                add(p + "ln_1.weight", [C]),
                c.bias ? add(p + "ln_1.bias", [C]) : nil,
                add(p + "attn.c_attn.weight", [3 * C, C]),
                c.bias ? add(p + "attn.c_attn.bias", [3 * C]) : nil,
                add(p + "attn.c_proj.weight", [C, C]),
                c.bias ? add(p + "attn.c_proj.bias", [C]) : nil,
                add(p + "ln_2.weight", [C]),
                c.bias ? add(p + "ln_2.bias", [C]) : nil,
                add(p + "mlp.c_fc.weight", [4 * C, C]),
                c.bias ? add(p + "mlp.c_fc.bias", [4 * C]) : nil,
                add(p + "mlp.c_proj.weight", [C, 4 * C]),
                c.bias ? add(p + "mlp.c_proj.bias", [C]) : nil,
            ]
            endUnit()
        }
        ln1w = o[0]!; ln1b = o[1]; qkvw = o[2]!; qkvb = o[3]; projw = o[4]!; projb = o[5]
        ln2w = o[6]!; ln2b = o[7]; fcw = o[8]!; fcb = o[9]; fcprojw = o[10]!; fcprojb = o[11]
        lnfw = add("ln_f.weight", [C])
        lnfb = c.bias ? add("ln_f.bias", [C]) : nil
        endUnit()
        self.tensors = tensors
        self.units = units
        self.count = offset
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
}

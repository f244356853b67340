import Kernels

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
    /// Format of matrix-multiply operands; parameters and gradients stay fp32.
    public let precision: Precision
    /// Activation storage (sized by the largest micro-batch seen so far): fp32 models.
    public private(set) var activations: Activations?
    /// Activation storage of bf16/fp16 models.
    public private(set) var lowActivations: LowPrecisionActivations?
    /// 16-bit compute copies of the parameters being used (one block or final unit; the
    /// embedding unit, whose `wte` is also the tied LM head), when the provider has none.
    var lowBlock = HalfBuffer(count: 0), lowEmbedding = HalfBuffer(count: 0)
    /// The compute copy's LayerNorm and bias vectors widened to fp32 (bf16/fp16 models).
    lazy var blockVectors = RoundedVectors(layout: layout, unit: layout.blockUnit(0))
    lazy var finalVectors = RoundedVectors(layout: layout, unit: layout.finalUnit)

    private var lastB = 0, lastT = 0
    private var tokens: UnsafeMutablePointer<Int32>
    private var targets: UnsafeMutablePointer<Int32>
    private var tokenCapacity = 0

    /// Creates a model for a validated configuration.
    public init(config: GPTConfig, precision: Precision = .fp32) {
        self.config = config
        self.precision = precision
        self.layout = ParameterLayout(config)
        if precision.isLow {
            lowBlock = HalfBuffer(count: layout.units[1...].map(\.count).max() ?? 0)
            lowEmbedding = HalfBuffer(count: layout.units[0].count)
        }
        tokens = .allocate(capacity: 1)
        targets = .allocate(capacity: 1)
    }

    deinit { tokens.deallocate(); targets.deallocate() }

    /// Bytes of activations kept for backward, and of all activation buffers with scratch.
    public var activationBytes: (saved: Int, total: Int) {
        if let a = lowActivations { return (a.savedBytes, a.totalBytes) }
        if let a = activations { return (a.savedBytes, a.totalBytes) }
        return (0, 0)
    }

    /// Makes sure activations hold a `B`×`T` micro-batch (allocates only when it grows).
    public func reserve(B: Int, T: Int) {
        let (haveB, haveT) = precision.isLow ? (lowActivations?.maxB ?? 0, lowActivations?.maxT ?? 0)
                                              : (activations?.maxB ?? 0, activations?.maxT ?? 0)
        if haveB >= B, haveT >= T { return }
        if precision.isLow {
            lowActivations = LowPrecisionActivations(config: config, maxB: max(B, haveB), maxT: max(T, haveT))
        } else {
            activations = Activations(config: config, maxB: max(B, haveB), maxT: max(T, haveT))
        }
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
    @discardableResult
    public func forward(tokens inTokens: UnsafePointer<Int32>, targets inTargets: UnsafePointer<Int32>?,
                        B: Int, T: Int, params: ParameterProvider) -> (sum: Double, count: Int) {
        precondition(T <= config.blockSize, "sequence length \(T) exceeds block_size \(config.blockSize)")
        reserve(B: B, T: T)
        let C = config.nEmbd, NH = config.nHead, V = config.vocabSize, BT = B * T
        let lay = layout
        tokens.update(from: inTokens, count: BT)
        if let inTargets { targets.update(from: inTargets, count: BT) }
        lastB = B; lastT = T
        if precision.isLow {
            return lowForward(tokens: tokens, targets: inTargets == nil ? nil : UnsafePointer(targets), B: B, T: T, params: params)
        }
        let a = activations!

        let emb = params.acquireParameters(unit: 0)
        Layers.embeddingForward(out: a.residual[0].pointer, tokens: tokens, wte: emb, wpe: emb + lay.wpe,
                                B: B, T: T, C: C)
        params.releaseParameters(unit: 0)

        for l in 0..<config.nLayer {
            let unit = lay.blockUnit(l)
            let p = params.acquireParameters(unit: unit)
            let x = a.residual[l].pointer
            Layers.layerNormForward(out: a.ln1[l].pointer, mean: a.ln1Mean[l].pointer, rstd: a.ln1Rstd[l].pointer,
                                    inp: x, weight: p + lay.ln1w, bias: lay.ln1b.map { p + $0 }, N: BT, C: C)
            Layers.linearForward(out: a.qkv[l].pointer, inp: a.ln1[l].pointer, weight: p + lay.qkvw,
                                 bias: lay.qkvb.map { p + $0 }, N: BT, IC: C, OC: 3 * C)
            Layers.attentionForward(out: a.atty[l].pointer, att: a.att[l].pointer, qkv: a.qkv[l].pointer,
                                    B: B, T: T, C: C, NH: NH, workers: a.attentionWorkers)
            let r2 = a.res2[l].pointer
            Layers.linearForward(out: r2, inp: a.atty[l].pointer, weight: p + lay.projw,
                                 bias: lay.projb.map { p + $0 }, N: BT, IC: C, OC: C)
            Vector.add(x, into: r2, BT * C)
            Layers.layerNormForward(out: a.ln2[l].pointer, mean: a.ln2Mean[l].pointer, rstd: a.ln2Rstd[l].pointer,
                                    inp: r2, weight: p + lay.ln2w, bias: lay.ln2b.map { p + $0 }, N: BT, C: C)
            Layers.linearForward(out: a.fch[l].pointer, inp: a.ln2[l].pointer, weight: p + lay.fcw,
                                 bias: lay.fcb.map { p + $0 }, N: BT, IC: C, OC: 4 * C)
            Layers.geluForward(out: a.fcg[l].pointer, inp: a.fch[l].pointer, n: BT * 4 * C)
            let out = a.residual[l + 1].pointer
            Layers.linearForward(out: out, inp: a.fcg[l].pointer, weight: p + lay.fcprojw,
                                 bias: lay.fcprojb.map { p + $0 }, N: BT, IC: 4 * C, OC: C)
            Vector.add(r2, into: out, BT * C)
            params.releaseParameters(unit: unit)
        }

        let f = params.acquireParameters(unit: lay.finalUnit)
        Layers.layerNormForward(out: a.lnf.pointer, mean: a.lnfMean.pointer, rstd: a.lnfRstd.pointer,
                                inp: a.residual[config.nLayer].pointer, weight: f + lay.lnfw,
                                bias: lay.lnfb.map { f + $0 }, N: BT, C: C)
        params.releaseParameters(unit: lay.finalUnit)

        let wte = params.acquireParameters(unit: 0)
        Layers.linearForward(out: a.logits.pointer, inp: a.lnf.pointer, weight: wte, bias: nil,
                             N: BT, IC: C, OC: V)
        params.releaseParameters(unit: 0)
        guard inTargets != nil else { return (0, 0) }
        return Layers.softmaxCrossEntropyForward(logits: a.logits.pointer, targets: targets, N: BT, V: V)
    }

    /// Logits of sequence `b` at position `t` after a forward without targets.
    public func logitsRow(b: Int, t: Int) -> UnsafePointer<Float> {
        let logits = precision.isLow ? lowActivations!.logits.pointer : activations!.logits.pointer
        return UnsafePointer(logits + (b * lastT + t) * config.vocabSize)
    }

    // MARK: Backward

    /// Adds the gradient of `lossScale × (summed loss)` to the gradient buffers.
    ///
    /// Must follow a `forward` with targets. The trainer passes `1 / (tokens in the global
    /// batch)` so that micro-batches and ranks sum to the gradient of the global mean loss.
    public func backward(lossScale: Float, params: ParameterProvider) {
        if precision.isLow {
            params.beginBackward()
            return lowBackward(lossScale: lossScale, tokens: tokens, targets: targets, B: lastB, T: lastT, params: params)
        }
        let a = activations!
        let B = lastB, T = lastT, BT = B * T
        let C = config.nEmbd, NH = config.nHead, V = config.vocabSize
        let lay = layout
        let dres = a.dres.pointer, dln = a.dln.pointer

        params.beginBackward()
        Layers.softmaxCrossEntropyBackward(probs: a.logits.pointer, targets: targets, N: BT, V: V, scale: lossScale)
        let wte = params.acquireParameters(unit: 0)
        let gEmb = params.gradients(unit: 0)
        Layers.linearBackward(dinp: dln, dweight: gEmb, dbias: nil, dout: a.logits.pointer, inp: a.lnf.pointer,
                              weight: wte, N: BT, IC: C, OC: V)
        params.releaseParameters(unit: 0)

        let f = params.acquireParameters(unit: lay.finalUnit)
        let gf = params.gradients(unit: lay.finalUnit)
        dres.update(repeating: 0, count: BT * C)
        Layers.layerNormBackward(dinp: dres, dweight: gf + lay.lnfw, dbias: lay.lnfb.map { gf + $0 }, dout: dln,
                                 inp: a.residual[config.nLayer].pointer, weight: f + lay.lnfw,
                                 mean: a.lnfMean.pointer, rstd: a.lnfRstd.pointer, N: BT, C: C)
        params.releaseParameters(unit: lay.finalUnit)
        params.gradientsProduced(unit: lay.finalUnit)

        for l in stride(from: config.nLayer - 1, through: 0, by: -1) {
            let unit = lay.blockUnit(l)
            let p = params.acquireParameters(unit: unit)
            let g = params.gradients(unit: unit)
            let dfc = a.dfc.pointer, dqkv = a.dqkv.pointer
            // MLP: out = r2 + fcproj(gelu(fc(ln2(r2))))
            Layers.linearBackward(dinp: dfc, dweight: g + lay.fcprojw, dbias: lay.fcprojb.map { g + $0 },
                                  dout: dres, inp: a.fcg[l].pointer, weight: p + lay.fcprojw,
                                  N: BT, IC: 4 * C, OC: C)
            Layers.geluBackward(dinp: dfc, inp: a.fch[l].pointer, dout: dfc, n: BT * 4 * C)
            Layers.linearBackward(dinp: dln, dweight: g + lay.fcw, dbias: lay.fcb.map { g + $0 }, dout: dfc,
                                  inp: a.ln2[l].pointer, weight: p + lay.fcw, N: BT, IC: C, OC: 4 * C)
            Layers.layerNormBackward(dinp: dres, dweight: g + lay.ln2w, dbias: lay.ln2b.map { g + $0 }, dout: dln,
                                     inp: a.res2[l].pointer, weight: p + lay.ln2w,
                                     mean: a.ln2Mean[l].pointer, rstd: a.ln2Rstd[l].pointer, N: BT, C: C)
            // Attention: r2 = x + proj(attn(qkv(ln1(x))))
            Layers.linearBackward(dinp: dln, dweight: g + lay.projw, dbias: lay.projb.map { g + $0 }, dout: dres,
                                  inp: a.atty[l].pointer, weight: p + lay.projw, N: BT, IC: C, OC: C)
            Layers.attentionBackward(dqkv: dqkv, dout: dln, qkv: a.qkv[l].pointer, att: a.att[l].pointer,
                                     scratch: a.dattScratch.pointer, B: B, T: T, C: C, NH: NH,
                                     workers: a.attentionWorkers)
            Layers.linearBackward(dinp: dln, dweight: g + lay.qkvw, dbias: lay.qkvb.map { g + $0 }, dout: dqkv,
                                  inp: a.ln1[l].pointer, weight: p + lay.qkvw, N: BT, IC: C, OC: 3 * C)
            Layers.layerNormBackward(dinp: dres, dweight: g + lay.ln1w, dbias: lay.ln1b.map { g + $0 }, dout: dln,
                                     inp: a.residual[l].pointer, weight: p + lay.ln1w,
                                     mean: a.ln1Mean[l].pointer, rstd: a.ln1Rstd[l].pointer, N: BT, C: C)
            params.releaseParameters(unit: unit)
            params.gradientsProduced(unit: unit)
        }

        Layers.embeddingBackward(dwte: gEmb, dwpe: gEmb + lay.wpe, dout: dres, tokens: tokens, B: B, T: T, C: C)
        params.gradientsProduced(unit: 0)
    }
}

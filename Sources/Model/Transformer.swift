import Kernels
import Settings
import Tracing

// MARK: - Transformer

/// The GPT layer sequence, written once for every compute format `F` (llm.c's `floatX`).
///
/// Parameters are used as one copy in `F`, unit by unit: fp32 reads the master values; a
/// 16-bit format reads the provider's own 16-bit copy (ZeRO-3 gathers it) or narrows the fp32
/// unit into the model's buffer. LayerNorm and bias adds read that copy widened back to fp32,
/// so every strategy computes with the same rounded parameters (FSDP's `param_dtype`).
///
/// With LoRA the base parameters are frozen: backward computes input gradients through them
/// but no gradients of their own, and `LoRABranch` adds the adapters' terms, whose parameters
/// and gradients come from a second provider.
final class Transformer<F: ComputeFormat> {
    let config: GPTConfig
    let layout: ParameterLayout
    /// Where the layer code finds each tensor within its unit.
    private let at: GPTOffsets
    /// Low-rank adapters on the frozen base, if any.
    let lora: LoRABranch<F>?
    /// The adapters' provider during a pass (nil without LoRA).
    private var adapters: ParameterProvider?
    /// Packed documents of the current pass: each position's document start (nil: one
    /// document per row), and its capacity.
    private var starts: UnsafeMutablePointer<Int32>?
    private var startCapacity = 0
    /// How attention is computed.
    let attentionKernel: AttentionKernel
    private(set) var activations: Activations<F>?
    /// Dropout of the current forward pass and its backward (nil: none, as in eval).
    private var pass: DropoutPass?
    /// 16-bit compute copies of the parameters in use (one block or final unit; the embedding
    /// unit, whose `wte` is also the tied LM head), made on first use: only where the provider
    /// has no copy of its own (training's strategies all have one). Empty in fp32.
    private lazy var unitCopy = AlignedBuffer<F.Element>(count: F.isLow ? layout.largestNonEmbeddingUnit : 0)
    private lazy var embeddingCopy = AlignedBuffer<F.Element>(count: F.isLow ? layout.units[0].count : 0)
    /// The compute copy's LayerNorm and bias vectors widened to fp32 (16-bit formats).
    private lazy var blockVectors = RoundedVectors(layout: layout, unit: layout.blockUnit(0))
    private lazy var finalVectors = RoundedVectors(layout: layout, unit: layout.finalUnit)

    init(config: GPTConfig, layout: ParameterLayout, attention: AttentionKernel, lora: LoRAConfig?) {
        self.config = config
        self.layout = layout
        at = GPTOffsets(layout)
        self.lora = lora.map { LoRABranch(config: $0, model: config) }
        attentionKernel = attention
    }

    /// Makes sure activations hold a `B`×`T` micro-batch (allocates only when it grows).
    func reserve(B: Int, T: Int, recompute: Recompute) {
        let haveB = activations?.maxB ?? 0, haveT = activations?.maxT ?? 0
        if haveB >= B, haveT >= T, activations?.recompute == recompute { return }
        activations = nil
        activations = Activations(config: config, maxB: max(B, haveB), maxT: max(T, haveT), recompute: recompute,
                                  attention: attentionKernel)
        lora?.reserve(rows: max(B, haveB) * max(T, haveT))
    }

    // MARK: Parameters in the compute format

    /// A unit's parameters as operands (matrices) and as fp32 vectors (LayerNorm, biases).
    struct Weights {
        let operands: UnsafeMutablePointer<F.Element>
        let vectors: UnsafeMutablePointer<Float>?
        let rounded: RoundedVectors?
        /// The operand matrix starting at `offset` within the unit.
        func matrix(_ offset: Int) -> UnsafePointer<F.Element> { UnsafePointer(operands + offset) }
        /// The fp32 vector starting at `offset` within the unit.
        func vector(_ offset: Int) -> UnsafeMutablePointer<Float> { vectors.map { $0 + offset } ?? rounded![offset] }
        func vector(_ offset: Int?) -> UnsafeMutablePointer<Float>? { offset.map { vector($0) } }
    }

    /// `unit`'s parameters in `F`. `narrowed` says the model's copy of the embedding unit
    /// already holds them: it is narrowed once at the start of a forward pass, and the tied LM
    /// head of that forward and of its backward reuse it (parameters change only in an
    /// optimizer step, never between a forward pass and its backward).
    private func acquire(_ params: ParameterProvider, unit: Int, narrowed: Bool = false,
                         vectors: RoundedVectors? = nil) -> Weights {
        let (operands, wide) = params.operands(F.self, unit: unit, count: layout.units[unit].count,
                                               copy: unit == 0 ? embeddingCopy.pointer : unitCopy.pointer, narrowed: narrowed)
        return Weights(operands: operands, vectors: wide,
                       rounded: wide == nil ? vectors?.filled(from: operands, precision: F.precision) : nil)
    }

    /// Block `unit`'s adapters as operands (nil without LoRA).
    private func acquireAdapters(unit: Int) -> UnsafePointer<F.Element>? {
        guard let lora, let adapters else { return nil }
        return UnsafePointer(lora.acquire(adapters, unit: unit))
    }

    // MARK: Forward

    /// Runs `B`×`T` tokens through the model; with `targets`, returns the summed loss over
    /// counted positions and their number, leaving probabilities for `backward`. `adapters`
    /// provides the LoRA parameters (required with LoRA, `params` then being the frozen base).
    /// With `logitRows` (ascending positions `b·T + t`, no targets), only those rows' logits
    /// are computed, stored one after another.
    func forward(tokens: UnsafePointer<Int32>, targets: UnsafePointer<Int32>?, B: Int, T: Int,
                 params: ParameterProvider, adapters: ParameterProvider?, dropout: DropoutPass?,
                 separator: Int32?, logitRows: UnsafeBufferPointer<Int>? = nil) -> (sum: Double, count: Int) {
        precondition((lora == nil) == (adapters == nil), "a LoRA model needs its adapters' provider, and only it does")
        precondition(separator == nil || attentionKernel == .fused, "packed documents need the fused attention kernel")
        pass = dropout
        markDocuments(tokens, B: B, T: T, separator: separator)
        self.adapters = adapters
        params.beginForward()
        adapters?.beginForward()
        let a = activations!
        let C = config.nEmbd, V = config.vocabSize, BT = B * T
        let lay = layout

        var span = Trace.begin()
        let emb = acquire(params, unit: 0)
        Layers.embeddingForward(F.self, out: a.residual[0].pointer, tokens: tokens, wte: emb.matrix(0),
                                wpe: emb.matrix(at.wpe), B: B, T: T, C: C, starts: starts)
        params.releaseParameters(unit: 0)
        pass?.apply(a.residual[0].pointer, B: B, T: T, C: C, site: .embedding, layer: 0)
        Trace.end(span, .compute, "embedding")

        for l in 0..<config.nLayer {
            let block = Trace.begin()
            let unit = lay.blockUnit(l)
            let w = acquire(params, unit: unit, vectors: blockVectors)
            blockForward(l, w, acquireAdapters(unit: unit), B: B, T: T, complete: true)
            adapters?.releaseParameters(unit: unit)
            params.releaseParameters(unit: unit)
            Trace.end(block, .compute, "block forward", args: ["layer": .int(l)])
        }

        span = Trace.begin()
        let f = acquire(params, unit: lay.finalUnit, vectors: finalVectors)
        normalize(a.residual[config.nLayer].pointer, into: a.lnf, mean: a.lnfMean, rstd: a.lnfRstd,
                  weight: f.vector(at.lnfw), bias: f.vector(at.lnfb), N: BT)
        params.releaseParameters(unit: lay.finalUnit)

        // Only the rows asked for go through the head (the largest GEMM at GPT-2's vocabulary):
        // moved to the front of lnf in order, each to a place at or before its own.
        var rows = BT
        if let logitRows {
            for (i, r) in logitRows.enumerated() where i != r {
                (a.lnf.pointer + i * C).update(from: a.lnf.pointer + r * C, count: C)
            }
            rows = logitRows.count
        }
        let head = acquire(params, unit: 0, narrowed: true)
        Layers.linearForward(F.self, out: a.logits.pointer, inp: a.lnf.pointer, weight: head.matrix(0), bias: nil,
                             N: rows, IC: C, OC: V)
        params.releaseParameters(unit: 0)
        Trace.end(span, .compute, "lm head")
        guard let targets else { return (0, 0) }
        return Trace.span(.compute, "cross-entropy") {
            Layers.softmaxCrossEntropyForward(logits: a.logits.pointer, targets: targets, N: BT, V: V)
        }
    }

    /// Block `l` from its input `residual[l]`: r2 = x + proj(attn(qkv(ln1(x)))), then
    /// out = r2 + fcproj(gelu(fc(ln2(r2)))) into `residual[l + 1]`. With `complete` false it
    /// stops after the GELU (full recomputation needs the block's tensors, not its output,
    /// which is kept).
    /// `lw` are the block's adapters (LoRA), added to each targeted map's output.
    private func blockForward(_ l: Int, _ w: Weights, _ lw: UnsafePointer<F.Element>?, B: Int, T: Int, complete: Bool) {
        let a = activations!
        let C = config.nEmbd, BT = B * T
        let wide = a.wide.pointer
        let x = a.residual[l].pointer
        var span = Trace.begin()
        normalize(x, into: a.ln1[l], mean: a.ln1Mean[l], rstd: a.ln1Rstd[l], weight: w.vector(at.ln1w),
                  bias: w.vector(at.ln1b), N: BT)
        // qkv straight from a GEMM that rounds as it stores, where the format has one and no
        // adapter adds to the fp32 result first.
        if lw != nil || !F.linearRounded(into: a.qkv[l].pointer, inp: a.ln1[l].pointer, weight: w.matrix(at.qkvw),
                                         bias: w.vector(at.qkvb), N: BT, IC: C, OC: 3 * C, scratch: wide) {
            let y = F.workspace(for: a.qkv[l].pointer, scratch: wide)
            Layers.linearForward(F.self, out: y, inp: a.ln1[l].pointer, weight: w.matrix(at.qkvw),
                                 bias: w.vector(at.qkvb), N: BT, IC: C, OC: 3 * C)
            if let lw { lora!.forward(.attn, layer: l, out: y, inp: a.ln1[l].pointer, weights: lw, N: BT) }
            F.commit(y, into: a.qkv[l].pointer, BT * 3 * C)
        }
        Trace.end(span, .compute, "qkv")
        Trace.span(.compute, "attention") { attention(l, B: B, T: T) }
        span = Trace.begin()
        let r2 = a.res2[l].pointer
        Layers.linearForward(F.self, out: r2, inp: a.atty[l].pointer, weight: w.matrix(at.projw),
                             bias: w.vector(at.projb), N: BT, IC: C, OC: C)
        if let lw { lora!.forward(.attnProj, layer: l, out: r2, inp: a.atty[l].pointer, weights: lw, N: BT) }
        pass?.apply(r2, B: B, T: T, C: C, site: .attentionOutput, layer: l)
        // The residual r2 += x, formed as LayerNorm reads it.
        Layers.layerNormForward(F.self, out: a.ln2[l].pointer, mean: a.ln2Mean[l].pointer, rstd: a.ln2Rstd[l].pointer,
                                sum: r2, adding: x, weight: w.vector(at.ln2w), bias: w.vector(at.ln2b), N: BT, C: C)
        Trace.end(span, .compute, "attention proj")
        span = Trace.begin()
        // Likewise fc's pre-activation, GELU then reading it in 16 bits.
        if lw == nil && F.linearRounded(into: a.fch[l].pointer, inp: a.ln2[l].pointer, weight: w.matrix(at.fcw),
                                        bias: w.vector(at.fcb), N: BT, IC: C, OC: 4 * C, scratch: wide) {
            F.geluForward(storedPre: a.fch[l].pointer, out: a.fcg[l].pointer, n: BT * 4 * C)
        } else {
            let y = F.workspace(for: a.fch[l].pointer, scratch: wide)
            Layers.linearForward(F.self, out: y, inp: a.ln2[l].pointer, weight: w.matrix(at.fcw),
                                 bias: w.vector(at.fcb), N: BT, IC: C, OC: 4 * C)
            if let lw { lora!.forward(.mlp, layer: l, out: y, inp: a.ln2[l].pointer, weights: lw, N: BT) }
            F.geluForward(pre: a.fch[l].pointer, out: a.fcg[l].pointer, inp: y, n: BT * 4 * C)
        }
        Trace.end(span, .compute, "mlp fc")
        guard complete else { return }
        span = Trace.begin()
        let out = a.residual[l + 1].pointer
        Layers.linearForward(F.self, out: out, inp: a.fcg[l].pointer, weight: w.matrix(at.fcprojw),
                             bias: w.vector(at.fcprojb), N: BT, IC: 4 * C, OC: C)
        if let lw { lora!.forward(.mlpProj, layer: l, out: out, inp: a.fcg[l].pointer, weights: lw, N: BT) }
        pass?.apply(out, B: B, T: T, C: C, site: .mlpOutput, layer: l)
        Vector.add(r2, into: out, BT * C)
        Trace.end(span, .compute, "mlp proj")
    }

    /// Attention output `atty[l]` from `qkv[l]`, and what backward needs besides: the
    /// probabilities `att[l]` (unfused) or the row log-sum-exps `lse[l]` (fused).
    private func attention(_ l: Int, B: Int, T: Int) {
        let a = activations!, BT = B * T
        let y = F.workspace(for: a.atty[l].pointer, scratch: a.wide.pointer)
        switch attentionKernel {
        case .fused:
            // A 16-bit format stores the output rounded as the kernel finishes each row.
            FusedAttention.forward(F.self, out: y, rounded: F.isLow ? (bits(a.atty[l].pointer), F.precision) : nil,
                                   lse: a.lse[l].pointer,
                                   qkv: a.qkv[l].pointer, scratch: a.scores.pointer,
                                   B: B, T: T, C: config.nEmbd, NH: config.nHead, workers: a.attentionWorkers,
                                   dropout: pass, layer: l, starts: starts)
            if F.isLow { return }
        case .unfused:
            precondition(pass == nil, "dropout needs the fused attention kernel")
            Layers.attentionForward(F.self, out: y, att: a.att[l].pointer, qkv: a.qkv[l].pointer, scores: a.scores.pointer,
                                    B: B, T: T, C: config.nEmbd, NH: config.nHead, workers: a.attentionWorkers)
        }
        F.commit(y, into: a.atty[l].pointer, BT * config.nEmbd)
    }

    /// Refills what the recompute mode did not keep for layer `l`, bit for bit as its forward
    /// computed it (the same kernels on the same inputs): the whole block (`full`), or the
    /// LayerNorm outputs, attention probabilities (unfused attention; the fused kernel keeps
    /// none) and GELU output (`selective`).
    private func recompute(_ l: Int, _ w: Weights, _ lw: UnsafePointer<F.Element>?, B: Int, T: Int) {
        let a = activations!, BT = B * T
        let span = a.recompute == .none ? 0 : Trace.begin()
        defer { Trace.end(span, .compute, "recompute") }
        switch a.recompute {
        case .none: return
        case .full: blockForward(l, w, lw, B: B, T: T, complete: false)
        case .selective:
            normalize(a.residual[l].pointer, into: a.ln1[l], mean: a.ln1Mean[l], rstd: a.ln1Rstd[l],
                      weight: w.vector(at.ln1w), bias: w.vector(at.ln1b), N: BT)
            if attentionKernel == .unfused { attention(l, B: B, T: T) }
            normalize(a.res2[l].pointer, into: a.ln2[l], mean: a.ln2Mean[l], rstd: a.ln2Rstd[l],
                      weight: w.vector(at.ln2w), bias: w.vector(at.ln2b), N: BT)
            F.geluForward(storedPre: a.fch[l].pointer, out: a.fcg[l].pointer, n: BT * 4 * config.nEmbd)
        }
    }

    /// With a separator, where each position's document starts: after every separator token a
    /// new document begins, whose positions count from 0 and whose queries see none of the
    /// earlier documents' keys (packed examples computed as if alone). Without one, nil.
    private func markDocuments(_ tokens: UnsafePointer<Int32>, B: Int, T: Int, separator: Int32?) {
        guard let separator else { starts = nil; return }
        if B * T > startCapacity {
            starts?.deallocate()
            startCapacity = B * T
            starts = .allocate(capacity: startCapacity)
        } else if starts == nil {
            starts = .allocate(capacity: max(startCapacity, 1))
        }
        let s = starts!
        for b in 0..<B {
            var start: Int32 = 0
            for t in 0..<T {
                if t > 0 && tokens[b * T + t - 1] == separator { start = Int32(t) }
                s[b * T + t] = start
            }
        }
    }

    deinit { starts?.deallocate() }

    /// A 16-bit tensor's elements as the `UInt16` bits the kernels write.
    private func bits(_ p: UnsafeMutablePointer<F.Element>) -> UnsafeMutablePointer<UInt16> {
        UnsafeMutableRawPointer(p).assumingMemoryBound(to: UInt16.self)
    }

    /// LayerNorm of `N` rows of `x` kept in `F` in `out` (statistics in fp32 for backward).
    private func normalize(_ x: UnsafePointer<Float>, into out: AlignedBuffer<F.Element>, mean: FloatBuffer,
                           rstd: FloatBuffer, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?, N: Int) {
        Layers.layerNormForward(F.self, out: out.pointer, mean: mean.pointer, rstd: rstd.pointer, inp: x, weight: weight,
                                bias: bias, N: N, C: config.nEmbd)
    }

    // MARK: Backward

    /// Where backward accumulates a unit's gradients: the provider's buffer, or nowhere for a
    /// frozen base (LoRA), whose maps and LayerNorms then pass input gradients only.
    struct Gradients {
        let base: UnsafeMutablePointer<Float>?
        func at(_ offset: Int) -> UnsafeMutablePointer<Float>? { base.map { $0 + offset } }
        func at(_ offset: Int?) -> UnsafeMutablePointer<Float>? { offset.flatMap { at($0) } }
    }

    /// Adds the gradient of `lossScale × (summed loss)` to the provider's gradients (with
    /// LoRA: to the adapters' provider, the base being frozen); follows a `forward` of the same
    /// tokens with targets.
    func backward(lossScale: Float, tokens: UnsafePointer<Int32>, targets: UnsafePointer<Int32>, B: Int, T: Int,
                  params: ParameterProvider) {
        let a = activations!
        let BT = B * T, C = config.nEmbd, NH = config.nHead, V = config.vocabSize
        let lay = layout
        let dres = a.dres.pointer, dln = a.dln.pointer, dfc = a.dfc.pointer, dqkv = a.dqkv.pointer
        let narrow = a.narrow.pointer
        let attention = Layers.AttentionScratch<F>(scores: a.scores.pointer, probs: a.probs.pointer,
                                                   gradient: a.scoresLow.pointer)
        let frozen = lora != nil
        func gradients(_ unit: Int) -> Gradients { Gradients(base: frozen ? nil : params.gradients(unit: unit)) }
        func produced(_ unit: Int) {
            if frozen { adapters!.gradientsProduced(unit: unit) } else { params.gradientsProduced(unit: unit) }
        }

        params.beginBackward()
        adapters?.beginBackward()
        var span = Trace.begin()
        // The LM head has no bias, so its products read only the gradient's operand: a 16-bit
        // model gets it rounded straight from the cross-entropy backward (the logits then keep
        // the probabilities, which nothing reads again).
        Layers.softmaxCrossEntropyBackward(probs: a.logits.pointer, targets: targets, N: BT, V: V, scale: lossScale,
                                           rounded: F.isLow ? (bits(narrow), F.precision) : nil)
        var d = F.isLow ? UnsafePointer(narrow) : F.operand(a.logits.pointer, scratch: narrow, BT * V)
        let head = acquire(params, unit: 0, narrowed: true)
        let gEmb = gradients(0)
        Layers.linearBackward(F.self, dinp: dln, dweight: gEmb.at(0), dbias: nil, dout: a.logits.pointer, doutOperand: d,
                              inp: a.lnf.pointer, weight: head.matrix(0), N: BT, IC: C, OC: V)
        params.releaseParameters(unit: 0)

        let f = acquire(params, unit: lay.finalUnit, vectors: finalVectors)
        let gf = gradients(lay.finalUnit)
        dres.update(repeating: 0, count: BT * C)
        // Without dropout the residual gradient is the next product's output gradient as it is:
        // 16-bit formats round it into that operand as LayerNorm's backward finishes each row.
        let roundsResidual = F.isLow && pass == nil
        let residualOperand = roundsResidual ? (into: bits(narrow), precision: F.precision) : nil
        Layers.layerNormBackward(dinp: dres, dweight: gf.at(at.lnfw), dbias: gf.at(at.lnfb), dout: dln,
                                 inp: a.residual[config.nLayer].pointer, weight: f.vector(at.lnfw),
                                 mean: a.lnfMean.pointer, rstd: a.lnfRstd.pointer, N: BT, C: C, rounded: residualOperand)
        params.releaseParameters(unit: lay.finalUnit)
        produced(lay.finalUnit)
        Trace.end(span, .compute, "lm head backward")

        for l in stride(from: config.nLayer - 1, through: 0, by: -1) {
            let block = Trace.begin()
            let unit = lay.blockUnit(l)
            let w = acquire(params, unit: unit, vectors: blockVectors)
            let lw = acquireAdapters(unit: unit)
            recompute(l, w, lw, B: B, T: T)
            let g = gradients(unit)
            let lg = adapters?.gradients(unit: unit)
            /// The adapters' part of a map's backward, after the base's wrote `dinp`.
            func adapt(_ t: LoRATarget, dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<F.Element>,
                       inp: UnsafePointer<F.Element>) {
                if let lw, let lg { lora!.backward(t, layer: l, dinp: dinp, dout: dout, inp: inp, weights: lw, grads: lg, N: BT) }
            }
            // MLP: out = r2 + fcproj(gelu(fc(ln2(r2)))); with dropout on fcproj's output its
            // gradient is dres times the mask (in dln, free until fc's backward writes it).
            span = Trace.begin()
            var branch = dres
            if let pass {
                dln.update(from: dres, count: BT * C)
                pass.apply(dln, B: B, T: T, C: C, site: .mlpOutput, layer: l)
                branch = dln
            }
            d = roundsResidual ? UnsafePointer(narrow) : F.operand(branch, scratch: narrow, BT * C)
            Layers.linearBackward(F.self, dinp: dfc, dweight: g.at(at.fcprojw), dbias: g.at(at.fcprojb),
                                  dout: branch, doutOperand: d, inp: a.fcg[l].pointer, weight: w.matrix(at.fcprojw),
                                  N: BT, IC: 4 * C, OC: C)
            adapt(.mlpProj, dinp: dfc, dout: d, inp: a.fcg[l].pointer)
            Trace.end(span, .compute, "mlp proj backward")
            span = Trace.begin()
            // fc's backward reads the fp32 gradient only to sum its bias gradient.
            let fcBias = g.at(at.fcb)
            d = F.geluBackward(dinp: dfc, scratch: narrow, pre: a.fch[l].pointer, dout: dfc, n: BT * 4 * C,
                               keepFP32: fcBias != nil)
            Layers.linearBackward(F.self, dinp: dln, dweight: g.at(at.fcw), dbias: fcBias, dout: dfc,
                                  doutOperand: d, inp: a.ln2[l].pointer, weight: w.matrix(at.fcw), N: BT, IC: C, OC: 4 * C)
            adapt(.mlp, dinp: dln, dout: d, inp: a.ln2[l].pointer)
            Layers.layerNormBackward(dinp: dres, dweight: g.at(at.ln2w), dbias: g.at(at.ln2b), dout: dln,
                                     inp: a.res2[l].pointer, weight: w.vector(at.ln2w),
                                     mean: a.ln2Mean[l].pointer, rstd: a.ln2Rstd[l].pointer, N: BT, C: C,
                                     rounded: residualOperand)
            Trace.end(span, .compute, "mlp fc backward")
            span = Trace.begin()
            // Attention: r2 = x + proj(attn(qkv(ln1(x)))); the masked gradient of proj's output
            // goes in dqkv, free until attention's backward writes it.
            branch = dres
            if let pass {
                dqkv.update(from: dres, count: BT * C)
                pass.apply(dqkv, B: B, T: T, C: C, site: .attentionOutput, layer: l)
                branch = dqkv
            }
            d = roundsResidual ? UnsafePointer(narrow) : F.operand(branch, scratch: narrow, BT * C)
            // Attention's output gradient straight from proj's GEMM as the operand attention reads
            // (in narrow's last quarter: d is in its first, and 16-bit attention writes dQKV's
            // operand into the first three), where it rounds as it stores and no adapter adds to
            // it first; otherwise in fp32 in dln.
            let attentionGradient = narrow + 3 * BT * C
            // The fused kernel rounds dQKV into the next product's operand (narrow's first three
            // quarters) as it finishes each head, in every 16-bit format.
            let attentionRounds = F.isLow && attentionKernel == .fused
            let rounded = lw == nil && attentionRounds
                && F.inputGradientRounded(into: attentionGradient, dout: d, weight: w.matrix(at.projw), N: BT, IC: C, OC: C)
            Layers.linearBackward(F.self, dinp: rounded ? nil : dln, dweight: g.at(at.projw), dbias: g.at(at.projb),
                                  dout: branch, doutOperand: d, inp: a.atty[l].pointer, weight: w.matrix(at.projw),
                                  N: BT, IC: C, OC: C)
            adapt(.attnProj, dinp: dln, dout: d, inp: a.atty[l].pointer)
            Trace.end(span, .compute, "attention proj backward")
            span = Trace.begin()
            switch attentionKernel {
            case .fused:
                d = rounded ? UnsafePointer(attentionGradient) : F.operand(dln, scratch: attentionGradient, BT * C)
                FusedAttention.backward(F.self, dqkv: dqkv, rounded: attentionRounds ? (bits(narrow), F.precision) : nil, dout: d,
                                        out: a.atty[l].pointer, lse: a.lse[l].pointer, qkv: a.qkv[l].pointer,
                                        scratch: a.scores.pointer,
                                        B: B, T: T, C: C, NH: NH, workers: a.attentionWorkers, dropout: pass, layer: l,
                                        starts: starts)
            case .unfused:
                d = F.operand(dln, scratch: narrow, BT * C)
                Layers.attentionBackward(F.self, dqkv: dqkv, dout: d, qkv: a.qkv[l].pointer, att: a.att[l].pointer,
                                         scratch: attention, B: B, T: T, C: C, NH: NH, workers: a.attentionWorkers)
            }
            Trace.end(span, .compute, "attention backward")
            span = Trace.begin()
            d = attentionRounds ? UnsafePointer(narrow) : F.operand(dqkv, scratch: narrow, BT * 3 * C)
            Layers.linearBackward(F.self, dinp: dln, dweight: g.at(at.qkvw), dbias: g.at(at.qkvb), dout: dqkv,
                                  doutOperand: d, inp: a.ln1[l].pointer, weight: w.matrix(at.qkvw), N: BT, IC: C, OC: 3 * C)
            adapt(.attn, dinp: dln, dout: d, inp: a.ln1[l].pointer)
            Layers.layerNormBackward(dinp: dres, dweight: g.at(at.ln1w), dbias: g.at(at.ln1b), dout: dln,
                                     inp: a.residual[l].pointer, weight: w.vector(at.ln1w),
                                     mean: a.ln1Mean[l].pointer, rstd: a.ln1Rstd[l].pointer, N: BT, C: C,
                                     rounded: l > 0 ? residualOperand : nil)
            Trace.end(span, .compute, "qkv backward")
            adapters?.releaseParameters(unit: unit)
            params.releaseParameters(unit: unit)
            produced(unit)
            Trace.end(block, .compute, "block backward", args: ["layer": .int(l)])
        }

        span = Trace.begin()
        defer { Trace.end(span, .compute, "embedding backward") }
        if let gE = gEmb.base {
            pass?.apply(dres, B: B, T: T, C: C, site: .embedding, layer: 0)
            Layers.embeddingBackward(dwte: gE, dwpe: gE + at.wpe, dout: dres, tokens: tokens, B: B, T: T, C: C, starts: starts)
        }
        produced(0)
    }
}

import Kernels

// MARK: - bf16 / fp16 forward and backward
//
// The same computation as the fp32 path in GPT.swift, with every matrix multiply taking
// 16-bit operands. Parameters are used as one 16-bit compute copy, unit by unit: narrowed
// from the fp32 master values as a unit is acquired, or taken as the provider holds it
// (ZeRO-3 gathers the copy itself). LayerNorm and bias adds read that copy widened back to
// fp32, so every strategy computes with the same rounded parameters. Activations are
// narrowed as they are produced and kept in 16 bits.

extension GPT {
    func lowForward(tokens: UnsafePointer<Int32>, targets: UnsafePointer<Int32>?, B: Int, T: Int,
                    params: ParameterProvider) -> (sum: Double, count: Int) {
        let a = lowActivations!, p = precision
        let C = config.nEmbd, NH = config.nHead, V = config.vocabSize, BT = B * T
        let lay = layout
        let wide = a.wide.pointer

        let emb = acquireLow(params, unit: 0)
        Layers.lowEmbeddingForward(p, out: a.residual[0].pointer, tokens: tokens, wte: emb, wpe: emb + lay.wpe, B: B, T: T, C: C)
        params.releaseParameters(unit: 0)

        for l in 0..<config.nLayer {
            let unit = lay.blockUnit(l)
            let h = acquireLow(params, unit: unit)
            let w = blockVectors.filled(from: h, precision: p)
            let x = a.residual[l].pointer
            Layers.layerNormForward(out: wide, mean: a.ln1Mean[l].pointer, rstd: a.ln1Rstd[l].pointer, inp: x,
                                    weight: w[lay.ln1w], bias: lay.ln1b.map { w[$0] }, N: BT, C: C)
            p.narrow(wide, into: a.ln1[l].pointer, BT * C)
            Layers.lowLinearForward(p, out: wide, inp: a.ln1[l].pointer, weight: h + lay.qkvw, bias: lay.qkvb.map { w[$0] },
                                    N: BT, IC: C, OC: 3 * C)
            p.narrow(wide, into: a.qkv[l].pointer, BT * 3 * C)
            Layers.lowAttentionForward(p, out: wide, att: a.att[l].pointer, qkv: a.qkv[l].pointer, scores: a.scores.pointer,
                                       B: B, T: T, C: C, NH: NH, workers: a.attentionWorkers)
            p.narrow(wide, into: a.atty[l].pointer, BT * C)
            let r2 = a.res2[l].pointer
            Layers.lowLinearForward(p, out: r2, inp: a.atty[l].pointer, weight: h + lay.projw, bias: lay.projb.map { w[$0] },
                                    N: BT, IC: C, OC: C)
            Vector.add(x, into: r2, BT * C)
            Layers.layerNormForward(out: wide, mean: a.ln2Mean[l].pointer, rstd: a.ln2Rstd[l].pointer, inp: r2,
                                    weight: w[lay.ln2w], bias: lay.ln2b.map { w[$0] }, N: BT, C: C)
            p.narrow(wide, into: a.ln2[l].pointer, BT * C)
            Layers.lowLinearForward(p, out: wide, inp: a.ln2[l].pointer, weight: h + lay.fcw, bias: lay.fcb.map { w[$0] },
                                    N: BT, IC: C, OC: 4 * C)
            // GELU reads the stored (rounded) pre-activation, as its backward will.
            Layers.lowGeluForward(p, pre: a.fch[l].pointer, out: a.fcg[l].pointer, inp: wide, n: BT * 4 * C)
            let out = a.residual[l + 1].pointer
            Layers.lowLinearForward(p, out: out, inp: a.fcg[l].pointer, weight: h + lay.fcprojw,
                                    bias: lay.fcprojb.map { w[$0] }, N: BT, IC: 4 * C, OC: C)
            Vector.add(r2, into: out, BT * C)
            params.releaseParameters(unit: unit)
        }

        let f = finalVectors.filled(from: acquireLow(params, unit: lay.finalUnit), precision: p)
        Layers.layerNormForward(out: wide, mean: a.lnfMean.pointer, rstd: a.lnfRstd.pointer,
                                inp: a.residual[config.nLayer].pointer, weight: f[lay.lnfw],
                                bias: lay.lnfb.map { f[$0] }, N: BT, C: C)
        p.narrow(wide, into: a.lnf.pointer, BT * C)
        params.releaseParameters(unit: lay.finalUnit)

        let wte = acquireLow(params, unit: 0, narrowed: true)
        Layers.lowLinearForward(p, out: a.logits.pointer, inp: a.lnf.pointer, weight: wte, bias: nil,
                                N: BT, IC: C, OC: V)
        params.releaseParameters(unit: 0)
        guard let targets else { return (0, 0) }
        return Layers.softmaxCrossEntropyForward(logits: a.logits.pointer, targets: targets, N: BT, V: V)
    }

    func lowBackward(lossScale: Float, tokens: UnsafePointer<Int32>, targets: UnsafePointer<Int32>, B: Int, T: Int,
                     params: ParameterProvider) {
        let a = lowActivations!, p = precision
        let BT = B * T, C = config.nEmbd, NH = config.nHead, V = config.vocabSize
        let lay = layout
        let dres = a.dres.pointer, dln = a.dln.pointer, narrow = a.narrow.pointer
        let wide2 = a.wide2.pointer

        Layers.softmaxCrossEntropyBackward(probs: a.logits.pointer, targets: targets, N: BT, V: V, scale: lossScale)
        p.narrow(a.logits.pointer, into: narrow, BT * V)
        let wte = acquireLow(params, unit: 0, narrowed: true)
        let gEmb = params.gradients(unit: 0)
        Layers.lowLinearBackward(p, dinp: dln, dweight: gEmb, dbias: nil, dout: a.logits.pointer, doutLow: narrow,
                                 inp: a.lnf.pointer, weight: wte, N: BT, IC: C, OC: V)
        params.releaseParameters(unit: 0)

        let f = finalVectors.filled(from: acquireLow(params, unit: lay.finalUnit), precision: p)
        let gf = params.gradients(unit: lay.finalUnit)
        dres.update(repeating: 0, count: BT * C)
        Layers.layerNormBackward(dinp: dres, dweight: gf + lay.lnfw, dbias: lay.lnfb.map { gf + $0 }, dout: dln,
                                 inp: a.residual[config.nLayer].pointer, weight: f[lay.lnfw],
                                 mean: a.lnfMean.pointer, rstd: a.lnfRstd.pointer, N: BT, C: C)
        params.releaseParameters(unit: lay.finalUnit)
        params.gradientsProduced(unit: lay.finalUnit)

        for l in stride(from: config.nLayer - 1, through: 0, by: -1) {
            let unit = lay.blockUnit(l)
            let h = acquireLow(params, unit: unit)
            let w = blockVectors.filled(from: h, precision: p)
            let g = params.gradients(unit: unit)
            // MLP
            p.narrow(dres, into: narrow, BT * C)
            Layers.lowLinearBackward(p, dinp: wide2, dweight: g + lay.fcprojw, dbias: lay.fcprojb.map { g + $0 }, dout: dres,
                                     doutLow: narrow, inp: a.fcg[l].pointer, weight: h + lay.fcprojw, N: BT, IC: 4 * C, OC: C)
            Layers.lowGeluBackward(p, dinp: wide2, dinpLow: narrow, pre: a.fch[l].pointer, dout: wide2, n: BT * 4 * C)
            Layers.lowLinearBackward(p, dinp: dln, dweight: g + lay.fcw, dbias: lay.fcb.map { g + $0 }, dout: wide2,
                                     doutLow: narrow, inp: a.ln2[l].pointer, weight: h + lay.fcw, N: BT, IC: C, OC: 4 * C)
            Layers.layerNormBackward(dinp: dres, dweight: g + lay.ln2w, dbias: lay.ln2b.map { g + $0 }, dout: dln,
                                     inp: a.res2[l].pointer, weight: w[lay.ln2w],
                                     mean: a.ln2Mean[l].pointer, rstd: a.ln2Rstd[l].pointer, N: BT, C: C)
            // Attention
            p.narrow(dres, into: narrow, BT * C)
            Layers.lowLinearBackward(p, dinp: dln, dweight: g + lay.projw, dbias: lay.projb.map { g + $0 }, dout: dres,
                                     doutLow: narrow, inp: a.atty[l].pointer, weight: h + lay.projw, N: BT, IC: C, OC: C)
            p.narrow(dln, into: narrow, BT * C)
            Layers.lowAttentionBackward(p, dqkv: a.dqkv.pointer, doutLow: narrow, qkv: a.qkv[l].pointer, att: a.att[l].pointer,
                                        scores: a.scores.pointer, probs32: a.scores2.pointer, scoresLow: a.scoresHalf.pointer,
                                        B: B, T: T, C: C, NH: NH, workers: a.attentionWorkers)
            p.narrow(a.dqkv.pointer, into: narrow, BT * 3 * C)
            Layers.lowLinearBackward(p, dinp: dln, dweight: g + lay.qkvw, dbias: lay.qkvb.map { g + $0 }, dout: a.dqkv.pointer,
                                     doutLow: narrow, inp: a.ln1[l].pointer, weight: h + lay.qkvw, N: BT, IC: C, OC: 3 * C)
            Layers.layerNormBackward(dinp: dres, dweight: g + lay.ln1w, dbias: lay.ln1b.map { g + $0 }, dout: dln,
                                     inp: a.residual[l].pointer, weight: w[lay.ln1w],
                                     mean: a.ln1Mean[l].pointer, rstd: a.ln1Rstd[l].pointer, N: BT, C: C)
            params.releaseParameters(unit: unit)
            params.gradientsProduced(unit: unit)
        }

        Layers.embeddingBackward(dwte: gEmb, dwpe: gEmb + lay.wpe, dout: dres, tokens: tokens, B: B, T: T, C: C)
        params.gradientsProduced(unit: 0)
    }

    /// `unit`'s 16-bit compute copy: the provider's own, or the fp32 parameters narrowed into
    /// the model's buffer for that unit. `narrowed` says that buffer already holds the copy:
    /// the embedding unit is narrowed once at the start of a forward pass, and the tied LM
    /// head of that forward and of its backward reuse it (parameters change only in an
    /// optimizer step, never between a forward pass and its backward).
    private func acquireLow(_ params: ParameterProvider, unit: Int, narrowed: Bool = false) -> UnsafeMutablePointer<UInt16> {
        if let copy = params.acquireLowParameters(unit: unit, precision: precision) { return copy }
        let dst = unit == 0 ? lowEmbedding.pointer : lowBlock.pointer
        let w = params.acquireParameters(unit: unit)
        if !narrowed { precision.narrow(w, into: dst, layout.units[unit].count) }
        return dst
    }
}

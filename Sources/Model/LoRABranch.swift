import Kernels
import Settings

// MARK: - LoRA branch

/// The adapters' part of a model pass in compute format `F`: for a targeted map
/// y = W·x (+ b) of block l it adds (alpha/r)·B·A·x, and in backward it accumulates dA and dB
/// and adds the branch's share of dx. The base W is frozen: the model skips its gradients.
///
/// Forward keeps su = (alpha/r)·A·x (N × r per target and layer, in `F`), so backward needs
/// no recomputation of the branch under any recompute mode; the scale is applied to su
/// rather than to the GEMMs because the 16-bit GEMMs have no alpha with accumulation.
final class LoRABranch<F: ComputeFormat> {
    let config: LoRAConfig
    let layout: ParameterLayout
    private let offsets: [LoRATarget: (a: Int, b: Int)]
    private let nLayer: Int, C: Int
    /// Saved su, one buffer per (layer, target index).
    private var saved: [AlignedBuffer<F.Element>] = []
    private var rows = 0
    /// N × r fp32 results before rounding or scaling, and their rounded operand form.
    private var wide = FloatBuffer(count: 0)
    private var narrow = AlignedBuffer<F.Element>(count: 0)
    /// 16-bit copy of a block's adapters, made on first use: only where the provider holds
    /// none (training's strategies all hold one).
    private lazy var copy = AlignedBuffer<F.Element>(count: F.isLow ? layout.largestNonEmbeddingUnit : 0)

    init(config: LoRAConfig, model: GPTConfig) {
        self.config = config
        layout = config.layout(for: model)
        offsets = config.offsets(in: layout)
        nLayer = model.nLayer
        C = model.nEmbd
    }

    /// Makes room for `N` rows per map.
    func reserve(rows N: Int) {
        guard N > rows else { return }
        rows = N
        let r = config.rank
        saved = (0..<(nLayer * config.targets.count)).map { _ in AlignedBuffer(count: N * r) }
        wide = FloatBuffer(count: N * r)
        narrow = AlignedBuffer(count: F.isLow ? N * r : 0)
    }

    /// Bytes of the saved branch activations, and with scratch.
    var bytes: (saved: Int, total: Int) {
        let s = saved.reduce(0) { $0 + $1.byteCount }
        return (s, s + wide.byteCount + narrow.byteCount)
    }

    /// Block `unit`'s adapters as operands: the provider's 16-bit copy, or narrowed here.
    func acquire(_ adapters: ParameterProvider, unit: Int) -> UnsafeMutablePointer<F.Element> {
        adapters.operands(F.self, unit: unit, count: layout.units[unit].count, copy: copy.pointer).operands
    }

    private func su(_ l: Int, _ t: LoRATarget) -> UnsafeMutablePointer<F.Element> {
        saved[l * config.targets.count + config.targets.firstIndex(of: t)!].pointer
    }

    /// `out (N × OC) += B·(scale·A·inp)` for `target` of layer `l`, keeping su for backward.
    func forward(_ t: LoRATarget, layer l: Int, out: UnsafeMutablePointer<Float>, inp: UnsafePointer<F.Element>,
                 weights w: UnsafePointer<F.Element>, N: Int) {
        guard let o = offsets[t] else { return }
        let r = config.rank, (IC, OC) = t.shape(C: C)
        let keep = su(l, t)
        let u = F.workspace(for: keep, scratch: wide.pointer)
        F.gemm(.none, .transpose, m: N, n: r, k: IC, alpha: 1, a: inp, lda: IC, b: w + o.a, ldb: IC,
               beta: 0, c: u, ldc: r)
        Vector.scale(u, N * r, by: config.scale)
        F.commit(u, into: keep, N * r)
        F.gemm(.none, .transpose, m: N, n: OC, k: r, alpha: 1, a: keep, lda: r, b: w + o.b, ldb: r,
               beta: 1, c: out, ldc: OC)
    }

    /// Accumulates dA, dB of `target` in layer `l` into `grads` (the block's adapter gradients)
    /// and adds the branch's input gradient to `dinp`; `dout` is the map's output gradient as
    /// an operand, `inp` its saved input.
    func backward(_ t: LoRATarget, layer l: Int, dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<F.Element>,
                  inp: UnsafePointer<F.Element>, weights w: UnsafePointer<F.Element>, grads g: UnsafeMutablePointer<Float>,
                  N: Int) {
        guard let o = offsets[t] else { return }
        let r = config.rank, (IC, OC) = t.shape(C: C)
        let keep = UnsafePointer(su(l, t))
        // dB += doutᵀ · su
        F.gemm(.transpose, .none, m: OC, n: r, k: N, alpha: 1, a: dout, lda: OC, b: keep, ldb: r,
               beta: 1, c: g + o.b, ldc: r)
        // du = scale · dout · B, then dA += duᵀ · inp and dinp += du · A
        F.gemm(.none, .none, m: N, n: r, k: OC, alpha: 1, a: dout, lda: OC, b: w + o.b, ldb: r,
               beta: 0, c: wide.pointer, ldc: r)
        Vector.scale(wide.pointer, N * r, by: config.scale)
        let du = F.operand(wide.pointer, scratch: narrow.pointer, N * r)
        F.gemm(.transpose, .none, m: r, n: IC, k: N, alpha: 1, a: du, lda: r, b: inp, ldb: IC,
               beta: 1, c: g + o.a, ldc: IC)
        F.gemm(.none, .none, m: N, n: IC, k: r, alpha: 1, a: du, lda: r, b: w + o.a, ldb: IC,
               beta: 1, c: dinp, ldc: IC)
    }

}

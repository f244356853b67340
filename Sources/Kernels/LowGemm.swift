import CKernels
import Settings

// MARK: - Low-precision GEMM

extension Gemm {
    /// Whether the native bf16 path (oneDNN matmul) works on this machine: `bf16IsNative`'s probe
    /// finds out, and a product that fails later turns it off.
    nonisolated(unsafe) static var bf16Native: Bool? = nil
    /// Set when oneDNN would not build or run a bf16-destination matmul: later calls of
    /// `bf16RoundedGemm` then decline at once instead of trying to build one on every forward.
    nonisolated(unsafe) static var bf16RoundedFailed = false
    nonisolated(unsafe) static var scratchA = FloatBuffer(count: 0)
    nonisolated(unsafe) static var scratchB = FloatBuffer(count: 0)
    /// Inside `reusingWidenedOperands`: the stored regions `scratchA`/`scratchB` hold widened.
    nonisolated(unsafe) static var reuse = false
    nonisolated(unsafe) static var widenedA: WidenedRegion? = nil, widenedB: WidenedRegion? = nil

    /// A 16-bit operand region as the widening fallback copied it.
    struct WidenedRegion: Equatable {
        let base: UnsafeRawPointer, rows: Int, cols: Int, ld: Int, precision: Precision
    }

    /// Runs `body`, whose 16-bit GEMMs do not change their operands' contents, letting the
    /// widening fallback reuse an operand it widened for an earlier product of `body` (a linear
    /// map's backward multiplies the same output gradient twice) instead of widening it again.
    public static func reusingWidenedOperands<R>(_ body: () throws -> R) rethrows -> R {
        reuse = true
        defer { reuse = false; widenedA = nil; widenedB = nil }
        return try body()
    }

    /// Whether `lowGemm` in `precision` may run from several `ParallelFor.tasks` at once: on
    /// the native bf16 path (per-thread oneDNN primitives, once known to work at a dispatch
    /// level that takes it) and on the packing GEMM (per-thread panels); not on the widening
    /// fallback, which shares its scratch buffers.
    public static func lowGemmIsReentrant(_ precision: Precision) -> Bool {
        (precision == .bf16 && bf16IsNative) || packsWhileWidening
    }

    /// Whether 16-bit products without bf16 dot products run on the GEMM that widens operands
    /// while it packs them (`tessera_packed_gemm`: 6×16 AVX2/FMA tiles, 6×32 AVX-512 tiles)
    /// rather than on fp32 copies of whole operands handed to `sgemm`: everywhere but the
    /// baseline level (no FMA). Against the libraries' sgemm on widened copies, on Zen 4, steps
    /// take as long within the VM's noise (capped at AVX2, `small` bf16: 4–8% faster in 2 of 3
    /// runs; capped at AVX-512 without BF16, three interleaved runs: `small` bf16 2,619–2,672
    /// against 2,542–2,723 tokens/s, `gpt2` 240–246 against 240–252, fp16 `small` 2,531–2,730
    /// against 2,631–2,755; forward 3–5% faster, backward 3–5% slower) and peak memory drops by
    /// the fp32 copies (`gpt2` bf16 2.70 GB against 3.11–3.13, `small` 1.94 against 2.20).
    public static var packsWhileWidening: Bool { CPU.isa >= .avx2 }

    /// Whether bf16 products run on native bf16 dot products at the current dispatch level:
    /// the CPU has AVX512-BF16 (and `TESSERA_ISA` does not lower it) and oneDNN's matmul works,
    /// which a 1×1×1 product finds out on first call, so every caller decides alike from the
    /// start. Call outside `ParallelFor.tasks` (the answer is cached in a shared variable).
    public static var bf16IsNative: Bool {
        guard CPU.isa >= .avx512bf16 else { return false }
        if bf16Native == nil {
            var one: UInt16 = 0x3F80, product: Float = 0
            bf16Native = tessera_bf16_gemm(0, 0, 1, 1, 1, &one, 1, &one, 1, 0, &product, 1) == 0 && product == 1
        }
        return bf16Native == true
    }

    /// Whether bf16 products all run on AMX tiles (`ISA.amx`): GEMMs on oneDNN's matmul, which
    /// outran tessera's AVX512-BF16 kernels 3–8× on a Xeon family 6 model 207 (Sapphire/Emerald
    /// Rapids), so the weight-gradient kernel declines; attention's blocks on tessera's AMX
    /// kernel (`blockBF16Gemm`).
    public static var bf16OnAMX: Bool { CPU.isa >= .amx && bf16IsNative }

    /// `C = op(A)·op(B) + beta·C` with 16-bit operands and fp32 accumulation and output.
    ///
    /// bf16 runs on oneDNN's matmul on CPUs with AVX512-BF16 dot products (elsewhere oneDNN
    /// emulates them at a third of the fp32 rate: measured 76 against 211 GFLOP/s on Zen 4
    /// capped at AVX512_CORE). fp16, and bf16 without them, multiply in fp32 the operands
    /// widened from 16 bits (the product of two 16-bit values is exact in fp32, so this is the
    /// same function): with AVX2 or AVX-512 in a GEMM that widens while it packs its panels,
    /// which it copies anyway, so widening costs no extra pass over memory (`packsWhileWidening`);
    /// at the baseline level by widening whole operands for `sgemm`.
    public static func lowGemm(_ precision: Precision, _ transA: Transpose, _ transB: Transpose,
                               m: Int, n: Int, k: Int,
                               a: UnsafePointer<UInt16>, lda: Int, b: UnsafePointer<UInt16>, ldb: Int,
                               beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        if precision == .bf16 && bf16IsNative {
            // A weight gradient as linear layers store it: dense operands, where the kernel
            // keeps oneDNN's bits (strided ones take another oneDNN implementation).
            if transA == .transpose && transB == .none && beta == 1 && lda == m && ldb == n && ldc == n
                && weightGradientBF16(m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, c: c, ldc: ldc) {
                return
            }
            let rc = tessera_bf16_gemm(transA.flag, transB.flag, Int64(m), Int64(n), Int64(k), a, Int64(lda),
                                       b, Int64(ldb), beta, c, Int64(ldc))
            if rc == 0 { return }
            bf16Native = false
        }
        if packsWhileWidening {
            let rc = tessera_packed_gemm(precision.packedFormat, transA.flag, transB.flag, Int64(m), Int64(n), Int64(k),
                                         a, Int64(lda), b, Int64(ldb), beta, c, Int64(ldc), Int64(ParallelFor.threads))
            precondition(rc == 0, "packed \(precision) GEMM failed for \(m)×\(n)×\(k) (out of memory for its panels)")
            return
        }
        // Widen the stored region of each operand to a contiguous fp32 copy.
        let (ra, ca) = transA == .none ? (m, k) : (k, m)
        let (rb, cb) = transB == .none ? (k, n) : (n, k)
        let regionA = WidenedRegion(base: UnsafeRawPointer(a), rows: ra, cols: ca, ld: lda, precision: precision)
        let regionB = WidenedRegion(base: UnsafeRawPointer(b), rows: rb, cols: cb, ld: ldb, precision: precision)
        if !(reuse && widenedA == regionA) {
            if scratchA.count < ra * ca { scratchA = FloatBuffer(count: ra * ca) }
            widenRegion(precision, a, rows: ra, cols: ca, ld: lda, into: scratchA.pointer)
            widenedA = reuse ? regionA : nil
        }
        if !(reuse && widenedB == regionB) {
            if scratchB.count < rb * cb { scratchB = FloatBuffer(count: rb * cb) }
            widenRegion(precision, b, rows: rb, cols: cb, ld: ldb, into: scratchB.pointer)
            widenedB = reuse ? regionB : nil
        }
        sgemm(transA, transB, m: m, n: n, k: k, a: scratchA.pointer, lda: ca, b: scratchB.pointer, ldb: cb,
              beta: beta, c: c, ldc: ldc)
    }

    /// Whether `weightGradientBF16` takes a product of this shape: a depth of at least 1,024
    /// rows and at least 65,536 elements of C, where it beat oneDNN's matmul in a harness on
    /// 2 Zen 5 threads (`small`'s weight gradients, depth 16,384: 1.1–1.15× its rate; `gpt2`'s,
    /// depth 1,024: 1.02–1.05×); on `tiny`'s (depth 768, 128 × 128 to 512 × 128) it was
    /// 4–9% slower.
    public static func takesWeightGradient(m: Int, n: Int, k: Int) -> Bool { k >= 1024 && m * n >= 1 << 16 }

    /// `C += Aᵀ·B` for bf16 A (k×m) and B (k×n), a linear map's weight gradient `doutᵀ·inp`,
    /// on tessera's weight-gradient kernel (`tessera_bf16_weight_gemm`): the depth in blocks of
    /// 512, each summed from zero on bf16 dot products, the block sums added in order, C added
    /// last, which are the bits of oneDNN's matmul (`matmulBF16Gemm`) for dense operands (lda =
    /// m, ldb = ldc = n, as linear layers store them; `lowGemm` routes only those here: oneDNN
    /// runs strided ones another way, with other bits).
    /// On `ParallelFor.threads` threads (one inside a task). False, with C untouched, where it
    /// declines: at levels other than `ISA.avx512bf16`, or for a shape `takesWeightGradient`
    /// leaves to oneDNN.
    public static func weightGradientBF16(m: Int, n: Int, k: Int, a: UnsafePointer<UInt16>, lda: Int,
                                          b: UnsafePointer<UInt16>, ldb: Int, c: UnsafeMutablePointer<Float>,
                                          ldc: Int) -> Bool {
        guard takesWeightGradient(m: m, n: n, k: k) else { return false }
        let rc = tessera_bf16_weight_gemm(Int64(m), Int64(n), Int64(k), a, Int64(lda), b, Int64(ldb), c, Int64(ldc),
                                          Int64(ParallelFor.threads))
        // Out of memory after part of C was added would leave C wrong: stop rather than go on.
        precondition(rc != 1, "bf16 weight-gradient GEMM \(m)×\(n)×\(k): out of memory for its buffers")
        return rc == 0
    }

    /// Bytes the weight-gradient kernel keeps (packing and partial-sum buffers, per thread,
    /// for the process's life) once it has run products of these shapes (m, n, k) on
    /// `threads` threads: 0 where bf16 products do not run on it.
    public static func weightGradientScratchBytes(_ shapes: [(m: Int, n: Int, k: Int)], threads: Int) -> Int {
        guard bf16IsNative && !bf16OnAMX else { return 0 }
        let taken = shapes.filter { takesWeightGradient(m: $0.m, n: $0.n, k: $0.k) }.flatMap { [$0.m, $0.n, $0.k].map(Int64.init) }
        return Int(tessera_bf16_weight_gemm_scratch(taken, Int64(taken.count / 3), Int64(threads)))
    }

    /// `C = op(A)·op(B) + bias` (one fp32 value per column of C, or none) rounded to bf16 as
    /// oneDNN's matmul stores it, where bf16 products run on bf16 dot products: the same bits as
    /// `lowGemm` into fp32, the bias added in fp32, then rounded to nearest even (the matmul
    /// accumulates alike whichever its destination), one pass over C instead of two (three with
    /// a bias). Returns false where it does not run, and the caller computes C the fp32 way,
    /// which overwrites whatever a failed run left. Call outside `ParallelFor.tasks`.
    public static func bf16RoundedGemm(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
                                       a: UnsafePointer<UInt16>, lda: Int, b: UnsafePointer<UInt16>, ldb: Int,
                                       bias: UnsafePointer<Float>?, c: UnsafeMutablePointer<UInt16>, ldc: Int) -> Bool {
        guard bf16IsNative && !bf16RoundedFailed else { return false }
        let rc = tessera_bf16_gemm_rounded(transA.flag, transB.flag, Int64(m), Int64(n), Int64(k), a, Int64(lda),
                                           b, Int64(ldb), bias, c, Int64(ldc))
        if rc != 0 { bf16RoundedFailed = true }
        return rc == 0
    }

    /// `C = op(A)·op(B) + bias` rounded to `precision` (bf16 or fp16) on the packing GEMM, where
    /// 16-bit products run on it (`packsWhileWidening`, and not on bf16 dot products): the bits
    /// of `lowGemm` into fp32, the bias added in fp32, then rounded to nearest even, each tile
    /// rounded as it is finished instead of a pass over an fp32 C. `partial` (m×n floats, row
    /// stride n) holds the sums of earlier depth blocks when the depth takes several. Returns
    /// false where it does not run, and the caller computes C the fp32 way.
    public static func packedRoundedGemm(_ precision: Precision, _ transA: Transpose, _ transB: Transpose,
                                         m: Int, n: Int, k: Int, a: UnsafePointer<UInt16>, lda: Int,
                                         b: UnsafePointer<UInt16>, ldb: Int, bias: UnsafePointer<Float>?,
                                         c: UnsafeMutablePointer<UInt16>, ldc: Int,
                                         partial: UnsafeMutablePointer<Float>) -> Bool {
        guard precision.isLow && !(precision == .bf16 && bf16IsNative) && packsWhileWidening && k > 0 else { return false }
        let rc = tessera_packed_gemm_rounded(precision.packedFormat, transA.flag, transB.flag, Int64(m), Int64(n),
                                             Int64(k), a, Int64(lda), b, Int64(ldb), bias, c, Int64(ldc), partial,
                                             Int64(n), Int64(ParallelFor.threads))
        precondition(rc != 1, "packed \(precision) GEMM failed for \(m)×\(n)×\(k) (out of memory for its panels)")
        return rc == 0
    }

    /// The code that runs products in `precision` (16-bit) here, as `bench` labels its peak:
    /// "oneDNN" on bf16 dot products, "packing GEMM", or "widened + oneDNN sgemm".
    public static func lowGemmPath(_ precision: Precision) -> String {
        if precision == .bf16 && bf16IsNative { return "oneDNN" }
        if packsWhileWidening { return "packing GEMM" }
        return "widened + \(backend == .openblas ? "OpenBLAS" : "oneDNN") sgemm"
    }

    /// How products in `precision` run on this CPU, for a run's start-up lines (nil for fp32).
    /// Without 16-bit dot products the 16-bit formats keep their storage and traffic savings
    /// but at best fp32's speed, and a user choosing a format should hear so before a long run.
    public static func precisionNote(_ precision: Precision) -> String? {
        switch precision {
        case .fp32: return nil
        case .bf16 where bf16OnAMX:
            return "bf16 products run on this CPU's bf16 dot products (AMX tiles: oneDNN's matmul, and tessera's for "
                + "attention's blocks), accumulated in fp32"
        case .bf16 where bf16IsNative:
            return "bf16 products run on this CPU's bf16 dot products (AVX512-BF16), accumulated in fp32"
        default:
            let why = precision == .fp16 ? "there are no fp16 dot products on CPUs here"
                : CPU.hardwareISA < .avx512bf16 ? "this CPU has no bf16 dot products (AVX512-BF16)"
                : CPU.isa < .avx512bf16 ? "TESSERA_ISA=\(CPU.isa) keeps kernels below this CPU's bf16 dot products (AVX512-BF16)"
                : "oneDNN's bf16 matmul does not run here"
            let measure = "(`tessera bench --precision fp32 --precision \(precision)` measures both here)"
            let how = "\(precision): \(why), so GEMMs and attention compute in fp32 on operands widened from their 16-bit storage"
            if packsWhileWidening {
                return how + " as the GEMM packs them (the same products): activation memory and 16-bit traffic keep their "
                    + "savings, and steps take about as long as with --precision fp32 \(measure)"
            }
            return how + " (the same products): activation memory and 16-bit traffic keep their savings, but the conversions "
                + "make steps slower than with --precision fp32 \(measure); where memory allows, fp32 is faster"
        }
    }

    /// A small bf16 product inside a `ParallelFor.tasks` task (an attention block), single-
    /// threaded in its task: on tessera's tiles (`blockBF16Gemm`), or on oneDNN's matmul should
    /// they decline. Only where `bf16IsNative`.
    @inlinable
    public static func taskBF16Gemm(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
                                    a: UnsafePointer<UInt16>, lda: Int, b: UnsafePointer<UInt16>, ldb: Int,
                                    beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        if blockBF16Gemm(transA, transB, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc) {
            return
        }
        matmulBF16Gemm(transA, transB, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
    }

    /// `C = op(A)·op(B) + beta·C` for bf16 operands without oneDNN's cost per call, for
    /// attention's block products (64–128 on a side). At `ISA.avx512bf16` on AVX512-BF16 dot
    /// products in a register tile, with the bits of oneDNN's matmul (`matmulBF16Gemm`): 1.2–1.7×
    /// as fast in a harness on Zen 5. At `ISA.amx` on AMX tiles, the depth 32 at a time into an
    /// accumulator that starts at C or zero, which are oneDNN's bits on attention's blocks at
    /// head size 64: 1.3–3× as fast on a Xeon family 6 model 207. False, with C untouched, where
    /// it declines: below `ISA.avx512bf16`, or for a beta other than 0 and 1.
    @inlinable
    public static func blockBF16Gemm(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
                                     a: UnsafePointer<UInt16>, lda: Int, b: UnsafePointer<UInt16>, ldb: Int,
                                     beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) -> Bool {
        tessera_bf16_block_gemm(transA.flag, transB.flag, Int64(m), Int64(n), Int64(k), a, Int64(lda),
                                b, Int64(ldb), beta, c, Int64(ldc)) == 0
    }

    /// `C = op(A)·op(B) + beta·C` for bf16 operands on this thread's cached oneDNN matmul
    /// primitive. Only where `bf16IsNative`.
    @inlinable
    public static func matmulBF16Gemm(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
                                      a: UnsafePointer<UInt16>, lda: Int, b: UnsafePointer<UInt16>, ldb: Int,
                                      beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        let rc = tessera_bf16_gemm(transA.flag, transB.flag, Int64(m), Int64(n), Int64(k), a, Int64(lda),
                                   b, Int64(ldb), beta, c, Int64(ldc))
        precondition(rc == 0, "oneDNN bf16 matmul failed for \(m)×\(n)×\(k)")
    }

    /// Widens a rows×cols region with row stride `ld` into a contiguous copy: a contiguous
    /// region in one call (split over threads when large), otherwise row by row.
    static func widenRegion(_ precision: Precision, _ src: UnsafePointer<UInt16>, rows: Int, cols: Int, ld: Int,
                            into dst: UnsafeMutablePointer<Float>) {
        if ld == cols { precision.widen(src, into: dst, rows * cols); return }
        ParallelFor.chunks(rows * cols) { lo, hi in
            for r in (lo / cols)..<((hi + cols - 1) / cols) {
                let from = max(lo, r * cols), to = min(hi, (r + 1) * cols)
                precision.widenSerial(src + r * ld + (from - r * cols), into: dst + from, to - from)
            }
        }
    }
}

extension Precision {
    /// This format's operand code for `tessera_packed_gemm`.
    var packedFormat: Int32 {
        switch self {
        case .fp32: Int32(TESSERA_F32)
        case .bf16: Int32(TESSERA_BF16)
        case .fp16: Int32(TESSERA_F16)
        }
    }
}

import Kernels
import Model
import Settings
import XCTest

/// LayerNorm runs in C at the CPU's level. Its bits are fixed: at every level they equal a
/// plain Swift statement of the same arithmetic (each row's sums in 16 lanes added in order
/// from −0, then the last C mod 16 elements; no multiply-add fused), so a wider level or an
/// FMA unit cannot change a trajectory.
final class LayerNormTests: XCTestCase {
    override func tearDown() { CPU.use(nil) }

    /// The reference: one row at a time, scalar Swift.
    struct Reference {
        var out: [Float], mean: [Float], rstd: [Float], dinp: [Float], dweight: [Float], dbias: [Float]

        init(x: [Float], w: [Float], b: [Float]?, dy: [Float], dinp start: [Float], N: Int, C: Int) {
            let whole = C / 16 * 16
            func rowSum(_ term: (Int) -> Float) -> Float {
                var lanes = [Float](repeating: 0, count: 16)
                for i0 in stride(from: 0, to: whole, by: 16) { for q in 0..<16 { lanes[q] += term(i0 + q) } }
                var s: Float = -0.0
                for q in 0..<16 { s += lanes[q] }
                for i in whole..<C { s += term(i) }
                return s
            }
            out = [Float](repeating: 0, count: N * C); mean = [Float](repeating: 0, count: N); rstd = mean
            dinp = start; dweight = [Float](repeating: 0, count: C); dbias = dweight
            for r in 0..<N {
                let o = r * C
                let m = rowSum { x[o + $0] } / Float(C)
                let v = rowSum { (x[o + $0] - m) * (x[o + $0] - m) } / Float(C)
                let s = 1 / (v + Layers.layerNormEps).squareRoot()
                mean[r] = m; rstd[r] = s
                for i in 0..<C {
                    let n = (x[o + i] - m) * s * w[i]
                    out[o + i] = b.map { n + $0[i] } ?? n
                }
                let dm = rowSum { w[$0] * dy[o + $0] } / Float(C)
                let dnm = rowSum { (w[$0] * dy[o + $0]) * ((x[o + $0] - m) * s) } / Float(C)
                for i in 0..<C {
                    let norm = (x[o + i] - m) * s, dnorm = w[i] * dy[o + i]
                    dinp[o + i] += (dnorm - dm - norm * dnm) * s
                }
            }
            // The weight and bias gradients: blocks of 256 rows, each summed in row order, the
            // blocks' sums added in order.
            for lo in stride(from: 0, to: N, by: 256) {
                var pw = [Float](repeating: 0, count: C), pb = pw
                for r in lo..<min(N, lo + 256) {
                    for i in 0..<C {
                        pw[i] += (x[r * C + i] - mean[r]) * rstd[r] * dy[r * C + i]
                        pb[i] += dy[r * C + i]
                    }
                }
                for i in 0..<C { dweight[i] += pw[i]; dbias[i] += pb[i] }
            }
        }
    }

    func random(_ n: Int, seed: UInt64, offset: Float = 0, spread: Float = 1) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<n).map { _ in offset + spread * Float(rng.nextUniform() * 2 - 1) }
    }

    func bits(_ a: [Float]) -> [UInt32] { a.map(\.bitPattern) }

    func rounded(_ a: [Float], _ p: Precision) -> [UInt16] {
        var out = [UInt16](repeating: 0, count: a.count)
        p.narrowSerial(a, into: &out, a.count)
        return out
    }

    func testEveryLevelGivesTheReferencesBits() {
        Gemm.setThreads(2)
        defer { Gemm.setThreads(1) }
        // 600 rows: three blocks of the weight gradient's partial sums, the last one short.
        // Widths below one lane group, with a remainder, and the benchmark's.
        for (C, bias) in [(8, true), (77, true), (64, false), (384, true)] {
            let N = 600
            // Rows with a large mean against their spread, where the order of the sums shows.
            // x = xa + xb: the residual-sum form is given both parts.
            let xa = random(N * C, seed: UInt64(C), offset: 3, spread: 0.5), xb = random(N * C, seed: 6, spread: 0.25)
            let x = zip(xa, xb).map { $0 + $1 }, w = random(C, seed: 2, offset: 1)
            let b = bias ? random(C, seed: 3) : nil, dy = random(N * C, seed: 4), start = random(N * C, seed: 5)
            let ref = Reference(x: x, w: w, b: b, dy: dy, dinp: start, N: N, C: C)
            XCTAssertGreaterThan(ref.dweight.map(abs).max()!, 0.1, "the weight gradient is not trivially zero")
            for level in CPU.runnableLevels {
                CPU.use(level)
                let at = "C \(C), \(level)"
                var mean = [Float](repeating: 0, count: N), rstd = mean, out = [Float](repeating: 0, count: N * C)
                Layers.layerNormForward(FP32.self, out: &out, mean: &mean, rstd: &rstd, inp: x, weight: w, bias: b,
                                        N: N, C: C)
                XCTAssertEqual(bits(out), bits(ref.out), "\(at): output")
                XCTAssertEqual(bits(mean), bits(ref.mean), "\(at): mean")
                XCTAssertEqual(bits(rstd), bits(ref.rstd), "\(at): 1/std")
                var sum = xa
                out = [Float](repeating: 0, count: N * C)
                mean = [Float](repeating: 0, count: N)
                rstd = mean
                Layers.layerNormForward(FP32.self, out: &out, mean: &mean, rstd: &rstd, sum: &sum, adding: xb, weight: w,
                                        bias: b, N: N, C: C)
                XCTAssertEqual(bits(sum), bits(x), "\(at): residual sum")
                XCTAssertEqual(bits(out), bits(ref.out), "\(at): output of the residual sum")
                XCTAssertEqual(bits(mean), bits(ref.mean), "\(at): mean of the residual sum")
                XCTAssertEqual(bits(rstd), bits(ref.rstd), "\(at): 1/std of the residual sum")
                for p in [Precision.bf16, .fp16] {
                    var low = [UInt16](repeating: 0, count: N * C)
                    sum = xa
                    if p == .bf16 {
                        Layers.layerNormForward(BF16.self, out: &low, mean: &mean, rstd: &rstd, sum: &sum, adding: xb,
                                                weight: w, bias: b, N: N, C: C)
                    } else {
                        Layers.layerNormForward(FP16.self, out: &low, mean: &mean, rstd: &rstd, sum: &sum, adding: xb,
                                                weight: w, bias: b, N: N, C: C)
                    }
                    XCTAssertEqual(low, rounded(ref.out, p), "\(at): \(p) output of the residual sum")
                    XCTAssertEqual(bits(sum), bits(x), "\(at): residual sum (\(p))")
                    if p == .bf16 {
                        Layers.layerNormForward(BF16.self, out: &low, mean: &mean, rstd: &rstd, inp: x, weight: w,
                                                bias: b, N: N, C: C)
                    } else {
                        Layers.layerNormForward(FP16.self, out: &low, mean: &mean, rstd: &rstd, inp: x, weight: w,
                                                bias: b, N: N, C: C)
                    }
                    XCTAssertEqual(low, rounded(ref.out, p), "\(at): \(p) output")
                }
                for p in [nil, Precision.bf16, .fp16] {
                    var dx = start, dw = [Float](repeating: 0, count: C), db = dw
                    var low = [UInt16](repeating: 0, count: N * C)
                    dx.withUnsafeMutableBufferPointer { dx in
                        dw.withUnsafeMutableBufferPointer { dw in
                            db.withUnsafeMutableBufferPointer { db in
                                low.withUnsafeMutableBufferPointer { l in
                                    Layers.layerNormBackward(dinp: dx.baseAddress!, dweight: dw.baseAddress!,
                                                             dbias: bias ? db.baseAddress! : nil, dout: dy, inp: x,
                                                             weight: w, mean: ref.mean, rstd: ref.rstd, N: N, C: C,
                                                             rounded: p.map { (into: l.baseAddress!, precision: $0) })
                                }
                            }
                        }
                    }
                    XCTAssertEqual(bits(dx), bits(ref.dinp), "\(at): input gradient")
                    XCTAssertEqual(bits(dw), bits(ref.dweight), "\(at): weight gradient")
                    if bias { XCTAssertEqual(bits(db), bits(ref.dbias), "\(at): bias gradient") }
                    if let p { XCTAssertEqual(low, rounded(ref.dinp, p), "\(at): input gradient in \(p)") }
                }
            }
        }
    }
}

import Comm
import Foundation
import Kernels
import Parallel
import Settings

// MARK: - Choosing the GEMM backend

/// Picks the library for a run's large fp32 GEMMs by timing both on the run's own shapes.
///
/// Which is faster depends on the CPU (on AVX-512 parts oneDNN's kernels lead; on AVX2-only
/// AMD Zen 3 OpenBLAS's Haswell kernel does) and on the shapes, so neither default is right
/// everywhere. Every rank times both at once (so they compete for the node as the run will),
/// the times are summed over ranks and every rank takes the same answer. The answer is cached
/// per CPU, kernel level, thread count and shape list in `~/.cache/tessera/gemm.json`, and a
/// run records it in its config, so a resumed run computes with the same library.
public enum GemmChoice {
    /// One product `op(A)·op(B)`, m×k times k×n.
    struct Shape: Hashable {
        let transA: Transpose, transB: Transpose, m: Int, n: Int, k: Int
    }

    /// The forward and backward products of every linear layer of a model with width `C`
    /// and vocabulary `V`, over 2048 rows: a model gets one answer whatever its micro-batch,
    /// so runs of it that differ only in batching (DDP against ZeRO with accumulation) compute
    /// with the same library.
    static func shapes(C: Int, V: Int) -> [Shape] {
        let N = 2048
        return [(3 * C, C), (C, C), (4 * C, C), (C, 4 * C), (V, C)].flatMap { (OC, IC) in
            [Shape(transA: .none, transB: .transpose, m: N, n: OC, k: IC),   // forward
             Shape(transA: .none, transB: .none, m: N, n: IC, k: OC),        // input gradient
             Shape(transA: .transpose, transB: .none, m: OC, n: IC, k: N)]   // weight gradient
        }
    }

    /// Seconds of one pass over `shapes` on `backend`: the better of two after a warm-up pass.
    static func seconds(_ shapes: [Shape], on backend: GemmBackend) -> Double {
        let saved = Gemm.backend
        defer { Gemm.backend = saved }
        Gemm.backend = backend
        let largest = shapes.map { max($0.m * $0.k, $0.k * $0.n, $0.m * $0.n) }.max() ?? 1
        let a = FloatBuffer(count: largest), b = FloatBuffer(count: largest), c = FloatBuffer(count: largest)
        for i in 0..<largest { a[i] = Float(i % 17) * 0.01; b[i] = Float(i % 13) * 0.01 }
        var best = Double.infinity
        for rep in 0..<3 {
            let t0 = MPIClock.now()
            for s in shapes {
                Gemm.sgemm(s.transA, s.transB, m: s.m, n: s.n, k: s.k, a: a.pointer, lda: s.transA == .none ? s.k : s.m,
                           b: b.pointer, ldb: s.transB == .none ? s.n : s.k, c: c.pointer, ldc: s.n)
            }
            if rep > 0 { best = min(best, MPIClock.now() - t0) }
        }
        return best
    }

    /// The backend for a run, and a line saying how it was chosen.
    public static func resolve(_ policy: GemmPolicy, C: Int, V: Int, comm: Communicator) throws -> (GemmBackend, String) {
        if let forced = Gemm.forced { return (forced, "GEMM backend \(forced.rawValue) (TESSERA_GEMM)") }
        switch policy {
        case .onednn: return (.onednn, "GEMM backend onednn (--gemm, or the resumed run's choice)")
        case .openblas: return (.openblas, "GEMM backend openblas (--gemm, or the resumed run's choice)")
        case .auto: break
        }
        let list = shapes(C: C, V: V)
        let key = "\(CPU.model) | \(CPU.isa) | \(Gemm.threads) thread(s) | "
            + list.map { "\($0.transA == .none ? "N" : "T")\($0.transB == .none ? "N" : "T")\($0.m)x\($0.n)x\($0.k)" }.joined(separator: ",")
        let cache = Cache()
        let cached = cache.times(key)
        var times = cached ?? GemmBackend.allCases.map { seconds(list, on: $0) }
        let measured = cached == nil
        try comm.allReduce(&times, op: .sum, label: "all-reduce of GEMM timings")
        if measured && comm.rank == 0 { cache.store(key, times.map { $0 / Double(comm.size) }) }
        // OpenBLAS only when it is clearly faster: near a tie, noise (and the difference
        // between these rows and a run's) would otherwise pick it where a run is slower with
        // it (measured: 5.1% faster here, 14% slower in the run, `small` on 1 thread of Zen 4).
        let pick: GemmBackend = times[1] < 0.9 * times[0] ? .openblas : .onednn
        let timing = String(format: "oneDNN %.2f ms, OpenBLAS %.2f ms per pass", 1000 * times[0] / Double(comm.size),
                            1000 * times[1] / Double(comm.size))
        return (pick, "GEMM backend \(pick.rawValue) (measured on this run's shapes: \(timing)"
                + (measured ? ")" : "; cached in \(cache.path))"))
    }

    /// Timings by key, in a JSON file; unreadable or unwritable files are simply not used.
    struct Cache {
        let path: String

        init() {
            let env = ProcessInfo.processInfo.environment
            let base = env["XDG_CACHE_HOME"] ?? ((env["HOME"] ?? NSTemporaryDirectory()) + "/.cache")
            path = base + "/tessera/gemm.json"
        }

        private func load() -> [String: [Double]] {
            guard let d = FileManager.default.contents(atPath: path),
                  let o = try? JSONDecoder().decode([String: [Double]].self, from: d) else { return [:] }
            return o
        }

        func times(_ key: String) -> [Double]? {
            guard let t = load()[key], t.count == GemmBackend.allCases.count, t.allSatisfy({ $0.isFinite && $0 > 0 }) else { return nil }
            return t
        }

        func store(_ key: String, _ times: [Double]) {
            var all = load()
            all[key] = times
            let url = URL(fileURLWithPath: path)
            try? FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try? JSONEncoder().encode(all).write(to: url, options: .atomic)
        }
    }
}

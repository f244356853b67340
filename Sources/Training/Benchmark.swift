import Comm
import Corpus
import Foundation
import Kernels
import Model
import Parallel
import Scaling
import Settings

// MARK: - Benchmark

/// One benchmark configuration (the shapes of issue #10 / nanoGPT).
public struct BenchShape: Codable, Sendable {
    public var name: String
    public var nLayer: Int, nHead: Int, nEmbd: Int, blockSize: Int, batch: Int, vocab: Int, bias: Bool

    public static let all: [BenchShape] = [
        BenchShape(name: "tiny", nLayer: 4, nHead: 4, nEmbd: 128, blockSize: 64, batch: 12, vocab: 65, bias: false),
        BenchShape(name: "small", nLayer: 6, nHead: 6, nEmbd: 384, blockSize: 256, batch: 64, vocab: 65, bias: false),
        BenchShape(name: "gpt2", nLayer: 12, nHead: 12, nEmbd: 768, blockSize: 256, batch: 4, vocab: 50257, bias: true),
        // GPT-2's own context: attention is a tenth of the FLOPs and, unfused, 48 MiB per layer.
        BenchShape(name: "gpt2-1k", nLayer: 12, nHead: 12, nEmbd: 768, blockSize: 1024, batch: 1, vocab: 50257, bias: true),
        // 59M parameters: the ZeRO memory comparison (issue #5) on 4 ranks.
        BenchShape(name: "m59", nLayer: 12, nHead: 10, nEmbd: 640, blockSize: 256, batch: 8, vocab: 65, bias: false),
    ]

    /// The global batch a run on `ranks` ranks measures: the shape's (or the shape's on each
    /// rank, `perRank`), and at least one sequence per rank, since a rank without one would
    /// idle and its share of the machine would count as lost (gpt2-1k's batch of 1 on 2 ranks).
    public func globalBatch(ranks: Int, perRank: Bool) -> Int {
        perRank ? batch * ranks : max(batch, ranks)
    }
}

/// What one configuration measured (rank 0's view; times are per optimizer step).
public struct BenchResult: Codable, Sendable {
    public var config: String, precision: String, zero: Int, recompute: String, attention: String
    /// The CPU (vendor, family, model, name) and the element-wise kernel level used.
    public var cpu = CPU.model, isa = CPU.isa.description
    /// The library the large GEMMs ran on (chosen by measurement unless TESSERA_GEMM is set).
    public var gemm = Gemm.backend.rawValue
    public var ranks: Int, threadsPerRank: Int
    public var params: Int, tokensPerStep: Int
    /// Medians over the timed steps (the step time's range beside it).
    public var tokensPerSecond: Double, msPerStep: Double, msPerStepMin: Double, msPerStepMax: Double
    public var msForward: Double, msBackward: Double, msOptimizer: Double, msCommWait: Double
    public var flopsPerToken: Double
    /// Achieved model FLOP/s per rank, and as a fraction of the measured GEMM peak for the
    /// threads this rank uses.
    public var gflopsPerRank: Double, mfu: Double, peakGflops: Double

    /// Takes MFU against `peak` (GFLOP/s per rank).
    public mutating func setPeak(_ peak: Double) {
        peakGflops = peak
        mfu = gflopsPerRank / peak
    }
    public var peakRSSMB: Double
    public var activationMB: Double
    /// Local SGD's period (nil: synchronous), and bytes one rank sent per step (mean over the
    /// timed steps; with local SGD its tokens/s is also over them all: the synchronisations
    /// are the point).
    public var syncEvery: Int?, sentBytesPerStep: Double = 0
    /// Hybrid sharding's groups (nil: none), and the bytes one rank sent across groups per step.
    public var shardGroup: String? = nil, crossGroupBytesPerStep: Double? = nil
    /// PowerSGD's rank (nil: exact gradients).
    public var powerSGDRank: Int? = nil
}

/// The parallelism `bench` runs besides the ZeRO stage.
public struct BenchParallelism: Sendable {
    public var syncEvery = 0, syncDtype = SyncDType.bf16, shardGroup = ShardGroup.world
    /// PowerSGD's rank (0: off); bench compresses from the first step.
    public var powerSGDRank = 0
    /// As `train`'s flags of the same names (defaults: train's).
    public var outerLR = TrainConfig().outerLR, outerMomentum = TrainConfig().outerMomentum
    public var bucketMB = TrainConfig().bucketMB, reduceDtype: Precision? = nil
    public init(syncEvery: Int = 0, syncDtype: SyncDType = .bf16, shardGroup: ShardGroup = .world, powerSGDRank: Int = 0) {
        self.syncEvery = syncEvery; self.syncDtype = syncDtype; self.shardGroup = shardGroup; self.powerSGDRank = powerSGDRank
    }
    /// The training configuration a bench run starts from: stage `zero` with these flags
    /// (PowerSGD compressing from the first step) and no evaluations.
    public func config(zero: ZeroStage) -> TrainConfig {
        var c = TrainConfig()
        c.zero = zero; c.evalEvery = 0
        c.syncEvery = syncEvery; c.syncDtype = syncDtype; c.shardGroup = shardGroup
        c.powerSGDRank = powerSGDRank; c.powerSGDStart = 0
        c.outerLR = outerLR; c.outerMomentum = outerMomentum
        c.bucketMB = bucketMB; c.reduceDtype = reduceDtype
        return c
    }

    /// "DDP", "ZeRO-3", "ZeRO-3 shard groups: node", "local SGD H=50 bf16".
    public func name(_ zero: ZeroStage) -> String {
        if syncEvery > 0 { return "local SGD H=\(syncEvery) \(syncDtype.rawValue)" }
        if powerSGDRank > 0 { return "DDP PowerSGD rank \(powerSGDRank)" }
        return shardGroup == .world ? zero.name : "\(zero.name) shard groups: \(shardGroup)"
    }
}

public enum Benchmark {
    /// The GEMM rate MFU is taken against for a run computing in `precision`: the bf16 one for
    /// bf16, else fp32's (fp16 multiplies in fp32).
    public static func peakGFLOPS(for precision: Precision, n: Int = 2048, reps: Int = 5) -> Double {
        precision == .bf16 ? bf16PeakGFLOPS(n: n, reps: reps) : sgemmPeakGFLOPS(n: n, reps: reps)
    }

    /// Best-of-`reps` single-precision GEMM rate at n³ on the current thread setting.
    public static func sgemmPeakGFLOPS(n: Int = 2048, reps: Int = 5) -> Double {
        let a = FloatBuffer(count: n * n), b = FloatBuffer(count: n * n), c = FloatBuffer(count: n * n)
        var rng = SplitMix64(seed: 1)
        for i in 0..<(n * n) { a[i] = Float(rng.nextUniform()) - 0.5; b[i] = Float(rng.nextUniform()) - 0.5 }
        var best = Double.infinity
        for _ in 0..<reps {
            let t0 = MPIClock.now()
            Gemm.sgemm(.none, .none, m: n, n: n, k: n, a: a.pointer, lda: n, b: b.pointer, ldb: n, beta: 0, c: c.pointer, ldc: n)
            best = min(best, MPIClock.now() - t0)
        }
        return 2 * Double(n * n * n) / best / 1e9
    }

    /// Best-of-`reps` bf16 GEMM rate (fp32 accumulation) at n³.
    public static func bf16PeakGFLOPS(n: Int = 2048, reps: Int = 5) -> Double {
        let a = HalfBuffer(count: n * n), b = HalfBuffer(count: n * n), c = FloatBuffer(count: n * n)
        for i in 0..<(n * n) { a.pointer[i] = Convert.bf16(Float(i % 13) * 0.01); b.pointer[i] = Convert.bf16(Float(i % 7) * 0.01) }
        var best = Double.infinity
        for _ in 0..<reps {
            let t0 = MPIClock.now()
            Gemm.lowGemm(.bf16, .none, .none, m: n, n: n, k: n, a: a.pointer, lda: n, b: b.pointer, ldb: n, c: c.pointer, ldc: n)
            best = min(best, MPIClock.now() - t0)
        }
        return 2 * Double(n * n * n) / best / 1e9
    }

    /// Peak resident set size of this process so far, in MiB (Linux reports kilobytes).
    public static func peakRSSMB() -> Double {
        var u = rusage()
        getrusage(RUSAGE_SELF.rawValue, &u)
        return Double(u.ru_maxrss) / 1024
    }

    /// Warm-up then timed steps of one configuration with synthetic tokens.
    public static func run(_ shape: BenchShape, precision: Precision, zero: ZeroStage, recompute: Recompute = .none,
                           attention: AttentionKernel = .fused, parallelism: BenchParallelism = BenchParallelism(),
                           comm: Communicator, threads: Int, perRankBatch: Bool, warmup: Int, steps: Int, peakGflops: Double) throws -> BenchResult {
        var c = parallelism.config(zero: zero)
        c.nLayer = shape.nLayer; c.nHead = shape.nHead; c.nEmbd = shape.nEmbd; c.blockSize = shape.blockSize
        c.bias = shape.bias; c.batchSize = shape.globalBatch(ranks: comm.size, perRank: perRankBatch)
        c.maxSteps = warmup + steps; c.warmupSteps = 2; c.evalSteps = 1; c.data = "synthetic"
        c.precision = precision; c.recompute = recompute; c.attention = attention
        c.out = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-bench").path
        let data = Dataset.synthetic(vocab: shape.vocab, tokens: 200_000, seed: 7)
        let trainer = try Trainer(config: c, comm: comm, dataset: data)
        trainer.log = { _ in }
        var timed: [StepMetrics] = []
        var crossGroupBytes = 0
        for s in 0..<(warmup + steps) {
            if s == warmup { crossGroupBytes = trainer.groups.replicas?.sentBytes ?? 0 }
            let m = try trainer.trainStep(s)
            if s >= warmup { timed.append(m) }
        }
        crossGroupBytes = (trainer.groups.replicas?.sentBytes ?? 0) - crossGroupBytes
        // Medians: one slow step (a page fault storm, a noisy neighbour) does not move them.
        func median(_ f: (StepMetrics) -> Double) -> Double {
            let v = timed.map(f).sorted(), n = v.count
            return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2
        }
        // Local SGD's steps differ by design (most send nothing, every H-th synchronises):
        // its rate is over all timed steps, not the median step.
        let local = parallelism.syncEvery > 0
        let ms = local ? timed.map(\.ms_per_step).reduce(0, +) / Double(timed.count) : median(\.ms_per_step)
        let steps = timed.map(\.ms_per_step)
        let tokens = c.batchSize * c.blockSize
        let params = trainer.model.layout.count
        let fpt = Compute.flopsPerToken(params: Double(params), nLayer: c.nLayer, nEmbd: c.nEmbd, seq: c.blockSize)
        let perRank = fpt * Double(tokens) / (ms / 1000) / Double(comm.size) / 1e9
        var rss = [peakRSSMB()]
        try comm.allReduce(&rss, op: .max, label: "bench rss")
        var result = BenchResult(config: shape.name, precision: precision.rawValue, zero: zero.rawValue, recompute: recompute.rawValue,
                           attention: attention.rawValue, ranks: comm.size, threadsPerRank: threads,
                           params: params, tokensPerStep: tokens, tokensPerSecond: Double(tokens) / (ms / 1000), msPerStep: ms,
                           msPerStepMin: steps.min()!, msPerStepMax: steps.max()!,
                           msForward: median(\.ms_forward), msBackward: median(\.ms_backward), msOptimizer: median(\.ms_optimizer),
                           msCommWait: median(\.ms_comm_wait), flopsPerToken: fpt, gflopsPerRank: perRank,
                           mfu: 0, peakGflops: 0, peakRSSMB: rss[0],
                           activationMB: Double(trainer.model.activationBytes.saved) / 1_048_576,
                           syncEvery: local ? parallelism.syncEvery : nil,
                           sentBytesPerStep: Double(timed.map(\.sent_bytes).reduce(0, +)) / Double(timed.count),
                           shardGroup: trainer.groups.replicas == nil ? nil : parallelism.shardGroup.description,
                           crossGroupBytesPerStep: trainer.groups.replicas == nil ? nil : Double(crossGroupBytes) / Double(timed.count),
                           powerSGDRank: parallelism.powerSGDRank > 0 ? parallelism.powerSGDRank : nil)
        result.setPeak(peakGflops)
        return result
    }
}

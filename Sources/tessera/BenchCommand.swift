import ArgumentParser
import Comm
import Foundation
import Kernels
import Settings
import Training

/// `tessera bench`: throughput, step-time breakdown, MFU and memory per configuration.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmark training steps (synthetic tokens); run under mpirun for several ranks.")
    @Option(help: "Configurations: tiny, small, gpt2, gpt2-1k, m59 (repeatable).") var config: [String] = ["tiny", "small"]
    @Option(help: "Precisions (repeatable): fp32, bf16, fp16.") var precision: [Precision] = [.fp32]
    @Option(help: "ZeRO stage: 0 = DDP.") var zero: ZeroStage = .ddp
    @Option(help: "Local SGD (as train): ranks synchronise every N steps; tokens/s is then over all timed steps (use a multiple of N).")
    var syncEvery: Int = 0
    @Option(help: "Local SGD: how deltas travel (fp32, bf16, int8).") var syncDtype: SyncDType = .bf16
    @Option(help: "Hybrid sharding (as train): the ZeRO stage shards within groups (node, or N ranks).") var shardGroup: ShardGroup = .world
    @Option(name: .customLong("powersgd-rank"), help: "PowerSGD (as train, compressing from the first step): DDP's gradients as rank-R factors.")
    var powerSGDRank: Int = 0
    @Option(name: .customLong("outer-lr"), help: "Local SGD: the outer Nesterov SGD's learning rate (as train).") var outerLR: Double?
    @Option(help: "Local SGD: the outer optimizer's momentum (as train).") var outerMomentum: Double?
    @Option(name: .customLong("bucket-mb"), help: "DDP/ZeRO-1 gradient bucket size in MiB (as train).") var bucketMB: Double?
    @Option(help: "Gradient communication format (as train; default: the precision).") var reduceDtype: Precision?
    @Option(help: "Activation recomputation modes (repeatable): none, selective, full.") var recompute: [Recompute] = [.none]
    @Option(help: "Attention kernels (repeatable): fused, unfused.") var attention: [AttentionKernel] = [.fused]
    @Option(help: "BLAS threads per rank (0: cores / ranks).") var threads: Int = 0
    @Flag(help: "Keep the per-rank batch fixed (global batch × ranks): weak scaling.") var perRankBatch = false
    @Option(help: "Untimed steps first.") var warmup: Int = 3
    @Option(help: "Timed steps.") var steps: Int = 10
    @Option(help: "Append results as JSON lines to this file.") var json: String?
    @Option(help: "PyTorch reference results (JSON lines from Benchmarks/reference/torch_gpt.py) to compare with.")
    var reference: String?

    func validate() throws {
        for c in config where !BenchShape.all.contains(where: { $0.name == c }) {
            throw ValidationError("--config '\(c)' is not one of \(BenchShape.all.map(\.name).joined(separator: ", "))")
        }
        guard steps >= 1, warmup >= 0 else { throw ValidationError("--steps must be >= 1 and --warmup >= 0") }
        // Train's own checks of these flags (the world size is not known yet: mpirun's is
        // checked when the run starts).
        do { try parallelism.config(zero: zero).validateParallelism(worldSize: nil) } catch { throw ValidationError("\(error.flag) \(error.problem): \(error.fix)") }
        // Given explicitly, the outer optimizer's flags are checked without --sync-every too.
        if let outerLR, !(outerLR > 0 && outerLR.isFinite) { throw ValidationError("--outer-lr must be positive (DiLoCo: 0.7)") }
        if let outerMomentum, !(outerMomentum >= 0 && outerMomentum < 1) { throw ValidationError("--outer-momentum must be in [0, 1) (DiLoCo: 0.9)") }
        guard syncEvery == 0 || (steps % syncEvery == 0 && warmup % syncEvery == 0) else {
            throw ValidationError("with --sync-every \(syncEvery), --warmup and --steps must be multiples of it (whole rounds, each ending with its synchronisation)")
        }
    }

    /// The flags beside the ZeRO stage, as `train` takes them.
    var parallelism: BenchParallelism {
        var p = BenchParallelism(syncEvery: syncEvery, syncDtype: syncDtype, shardGroup: shardGroup, powerSGDRank: powerSGDRank)
        if let outerLR { p.outerLR = outerLR }
        if let outerMomentum { p.outerMomentum = outerMomentum }
        if let bucketMB { p.bucketMB = bucketMB }
        p.reduceDtype = reduceDtype
        return p
    }

    func run() throws {
        let comm: Communicator = MPICommunicator.launchedByMPI ? MPICommunicator() : LocalCommunicator()
        let t = threads > 0 ? threads : Coordinator.defaultThreads()
        Gemm.setThreads(t)
        do {
            let backend = Gemm.backend
            Gemm.backend = .openblas
            let openblasPeak = Benchmark.sgemmPeakGFLOPS()
            Gemm.backend = backend
            // The VM's speed wanders, and one measurement can catch a slow moment (MFU over
            // 100%): the peak is measured again after each row, and MFU is against the best yet.
            var peak = Benchmark.sgemmPeakGFLOPS()
            var bf16Peak = Benchmark.bf16PeakGFLOPS()
            var refs: [String: Double] = [:]
            if let reference, let text = try? String(contentsOfFile: reference, encoding: .utf8) {
                for line in text.split(separator: "\n") {
                    guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                          let c = o["config"] as? String, let p = o["precision"] as? String, let tps = o["tokensPerSecond"] as? Double
                    else { continue }
                    // Several runs of a configuration: compare with PyTorch at its best.
                    refs["\(c)/\(p)"] = max(refs["\(c)/\(p)"] ?? 0, tps)
                }
            }
            if comm.rank == 0 {
                print("cpu: \(CPU.model); element-wise kernels: \(CPU.isa) (this CPU runs up to \(CPU.hardwareISA); TESSERA_ISA lowers it)")
                for p in precision { if let note = Gemm.precisionNote(p) { print(note) } }
                // Without bf16 dot products the bf16 peak measures the packing GEMM or widening + sgemm.
                print(String(format: "GEMM 2048³ peak, %d thread(s) per rank: fp32 oneDNN %.0f, fp32 OpenBLAS %.0f, ", t, peak, openblasPeak)
                      + "bf16 \(Gemm.lowGemmPath(.bf16)) " + String(format: "%.0f", bf16Peak) + " GFLOP/s (MFU is against the "
                      + (Gemm.bf16IsNative ? "oneDNN peak of the precision" : "peak of the precision: fp32 oneDNN's, or the bf16 one above")
                      + ", the best of this and a measurement after each row)")
                print("parallelism: " + parallelism.name(zero))
                print("config   prec  recomp     attn     gemm      ranks×thr  tokens/s  ms/step (min-max)      fwd     bwd   optim   comm  GFLOP/s/rank    MFU  RSS MB  act MB  sent MB/step  vs PyTorch")
            }
            for name in config {
                for p in precision {
                for mode in recompute {
                for kernel in attention {
                    let shape = BenchShape.all.first { $0.name == name }!
                    var r = try Benchmark.run(shape, precision: p, zero: zero, recompute: mode, attention: kernel,
                                              parallelism: parallelism,
                                              comm: comm, threads: t, perRankBatch: perRankBatch,
                                              warmup: warmup, steps: steps, peakGflops: p == .bf16 ? bf16Peak : peak)
                    let again = Benchmark.peakGFLOPS(for: p)
                    if p == .bf16 { bf16Peak = max(bf16Peak, again) } else { peak = max(peak, again) }
                    r.setPeak(p == .bf16 ? bf16Peak : peak)
                    guard comm.rank == 0 else { continue }
                    let measured = shape.globalBatch(ranks: comm.size, perRank: perRankBatch)
                    if !perRankBatch && measured != shape.batch {
                        print("note: \(name)'s batch of \(shape.batch) is below the \(comm.size) ranks: measured at global batch "
                              + "\(measured), one sequence per rank")
                    }
                    let ratio = refs["\(name)/\(p.rawValue)"].map { String(format: "%.2f×", r.tokensPerSecond / $0) } ?? "-"
                    func pad(_ s: String, _ n: Int) -> String { s.padding(toLength: max(n, s.count), withPad: " ", startingAt: 0) }
                    print(pad(name, 7) + "  " + pad(p.rawValue, 4) + "  " + pad(mode.rawValue, 9) + "  " + pad(kernel.rawValue, 7) + "  " + pad(r.gemm, 8)
                          + "  " + pad("\(r.ranks)×\(r.threadsPerRank)", 9)
                          + String(format: "  %8.0f  %7.1f ", r.tokensPerSecond, r.msPerStep)
                          + pad(String(format: "(%.0f-%.0f)", r.msPerStepMin, r.msPerStepMax), 13)
                          + String(format: "  %6.1f  %6.1f  %6.1f  %5.1f  %12.1f  %5.1f%%  %6.0f  %6.1f  ",
                                   r.msForward, r.msBackward, r.msOptimizer, r.msCommWait,
                                   r.gflopsPerRank, 100 * r.mfu, r.peakRSSMB, r.activationMB)
                          + pad(String(format: "%12.2f", r.sentBytesPerStep / 1e6), 12) + "  " + ratio
                          + (r.crossGroupBytesPerStep.map { String(format: "  (across groups: %.2f MB/step)", $0 / 1e6) } ?? ""))
                    if let json {
                        let e = JSONEncoder(); e.outputFormatting = [.sortedKeys]
                        var line = try e.encode(r); line.append(0x0A)
                        if let h = FileHandle(forWritingAtPath: json) { h.seekToEndOfFile(); h.write(line); try h.close() }
                        else { try line.write(to: URL(fileURLWithPath: json)) }
                    }
                }
                }
                }
            }
        } catch { fail(error, rank: comm.rank) }
        (comm as? MPICommunicator)?.finalize()
    }
}

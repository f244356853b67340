import ArgumentParser
import Foundation
import Scaling
import Settings
import Training

/// `tessera scaling`: sizing estimates before training.
struct Scaling: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Scaling-law calculator: compute-optimal sizes, loss, FLOPs, memory, shapes, budgets.",
        subcommands: [Optimal.self, Loss.self, ComputeCmd.self, MemoryCmd.self, Shape.self, Budget.self])
}

extension ScalingFit: ExpressibleByArgument {}

// MARK: - Output helpers

/// 1.23e+19 style for FLOPs; 1.50B / 3.70T style for counts.
func sci(_ x: Double) -> String { String(format: "%.3g", x) }
func count(_ x: Double) -> String {
    let units: [(Double, String)] = [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")]
    for (u, s) in units where abs(x) >= u { return String(format: "%.2f%@", x / u, s) }
    return String(format: "%.0f", x)
}
func bytes(_ b: Int) -> String {
    let x = Double(b)
    if x >= 1e9 { return String(format: "%.2f GB", x / 1e9) }
    if x >= 1e6 { return String(format: "%.2f MB", x / 1e6) }
    return String(format: "%.1f KB", x / 1e3)
}
func printJSON<T: Encodable>(_ v: T) throws {
    let e = JSONEncoder(); e.outputFormatting = [.prettyPrinted, .sortedKeys]
    print(String(decoding: try e.encode(v), as: UTF8.self))
}
func table(_ rows: [[String]]) {
    let widths = rows[0].indices.map { c in rows.map { $0[c].count }.max()! }
    for (i, r) in rows.enumerated() {
        print(r.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  "))
        if i == 0 { print(widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")) }
    }
}
/// Runs a calculator body, turning its errors into one line and exit status 2.
func calculator(_ body: () throws -> Void) {
    do { try body() } catch let e as ScalingError { writeLine(e.description); Foundation.exit(2) } catch {
        writeLine("error: \(error)"); Foundation.exit(1)
    }
}
func writeLine(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }

// MARK: - optimal

struct Optimal: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compute-optimal parameters and tokens for a budget (or the budget for a model size).")
    @Option(help: "Training compute budget in FLOPs.") var flops: Double?
    @Option(help: "Or: budget as device-hours (with --peak-flops and --mfu).") var hours: Double?
    @Option(help: "Peak FLOP/s of one device (e.g. 312e12 for an A100 in bf16).") var peakFlops: Double?
    @Option(help: "Model-FLOPs utilisation to assume with --hours.") var mfu: Double = 0.4
    @Option(help: "Or: the model size whose optimal budget you want.") var params: Double?
    @Option(help: "Fit: \(ScalingFit.allCases.map(\.rawValue).joined(separator: ", ")); repeat for a comparison.")
    var fit: [ScalingFit] = [.chinchilla]
    @Option(help: "Tokens per parameter for the tokens-per-param fit.") var ratio: Double = 20
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        calculator {
            var budget = flops
            if let h = hours {
                guard flops == nil else { throw ScalingError("--hours", "given with --flops", "pass one of them") }
                guard let peak = peakFlops else { throw ScalingError("--hours", "needs --peak-flops", "add --peak-flops P") }
                try ScalingError.positive(h, "--hours"); try ScalingError.positive(peak, "--peak-flops")
                guard mfu > 0, mfu <= 1 else { throw ScalingError("--mfu", "is \(mfu)", "pass a fraction in (0, 1]") }
                budget = h * 3600 * peak * mfu
                if !json { print("budget: \(h) device-hours × \(sci(peak)) FLOP/s × MFU \(mfu) = \(sci(budget!)) FLOPs") }
            }
            let result: [Allocation]
            if let c = budget {
                guard params == nil else { throw ScalingError("--params", "given with a budget", "pass either a budget or --params") }
                result = try fit.map { try Optimum.allocate(flops: c, fit: $0, tokensPerParam: ratio) }
            } else if let n = params {
                result = try fit.map { try Optimum.allocate(params: n, fit: $0, tokensPerParam: ratio) }
            } else {
                throw ScalingError("optimal", "needs a budget", "pass --flops C, --hours H --peak-flops P, or --params N")
            }
            if json { try printJSON(result); return }
            table([["fit", "params", "tokens", "tokens/param", "FLOPs", "PF-days", "loss"]] + result.map {
                [$0.fit.rawValue, count($0.params), count($0.tokens), String(format: "%.1f", $0.tokensPerParam),
                 sci($0.flops), sci(Compute.pfDays($0.flops)), String(format: "%.3f (%@)", $0.loss, $0.lossSource)]
            })
        }
    }
}

// MARK: - loss

struct Loss: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Predicted loss for N parameters and D tokens.")
    @Option(help: "Parameters.") var params: Double
    @Option(help: "Training tokens.") var tokens: Double
    @Option(help: "Fit whose loss law to use.") var fit: ScalingFit = .chinchilla
    @Flag(help: "Print JSON.") var json = false

    struct Output: Codable { var fit: ScalingFit; var params: Double; var tokens: Double; var loss: Double
        var lossWith10xParams: Double; var lossWith10xTokens: Double; var betterUseOf10xCompute: String }

    func run() throws {
        calculator {
            let r = try Optimum.nextTenX(fit: fit, params: params, tokens: tokens)
            let o = Output(fit: fit, params: params, tokens: tokens, loss: r.now, lossWith10xParams: r.moreParams,
                           lossWith10xTokens: r.moreTokens, betterUseOf10xCompute: r.better)
            if json { try printJSON(o); return }
            print(String(format: "predicted loss: %.4f nats/token (%@ law)", r.now, Optimum.loss(fit: fit, params: 1, tokens: 1).1))
            print(String(format: "next 10× compute: 10× parameters → %.4f, 10× tokens → %.4f; spend it on %@",
                         r.moreParams, r.moreTokens, r.better))
        }
    }
}

// MARK: - compute

struct ComputeCmd: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "compute", abstract: "Training FLOPs, PF-days and wall-clock.")
    @Option(help: "Parameters (or use --model).") var params: Double?
    @Option(help: "Preset (\(ModelShape.presets.keys.sorted().joined(separator: ", "))) or a run's config.json.") var model: String?
    @Option(help: "Vocabulary size for --model files.") var vocab: Int?
    @Option(help: "Training tokens.") var tokens: Double
    @Option(help: "Sequence length for the attention term (default: the model's block size).") var seq: Int?
    @Option(help: "Measured tokens/s for a wall-clock estimate.") var throughput: Double?
    @Option(help: "Peak FLOP/s for a wall-clock estimate.") var peakFlops: Double?
    @Option(help: "MFU with --peak-flops.") var mfu: Double = 0.4
    @Flag(help: "Print JSON.") var json = false

    struct Output: Codable { var params: Double; var tokens: Double; var flops6ND: Double; var flopsDetailed: Double?
        var pfDays: Double; var seconds: Double? }

    func run() throws {
        calculator {
            try ScalingError.positive(tokens, "--tokens")
            var n = params, detailed: Double?
            if let m = model {
                let s = try ModelShape.parse(m, vocabSize: vocab) { FileManager.default.contents(atPath: $0).map(Array.init) }
                n = Double(s.params)
                detailed = Compute.flopsPerToken(params: n!, nLayer: s.nLayer, nEmbd: s.nEmbd, seq: seq ?? s.blockSize) * tokens
            }
            guard let n else { throw ScalingError("compute", "needs a model size", "pass --params N or --model CONFIG") }
            try ScalingError.positive(n, "--params")
            let f = Compute.flops6ND(params: n, tokens: tokens)
            var secs: Double?
            if let t = throughput { try ScalingError.positive(t, "--throughput"); secs = Compute.seconds(tokens: tokens, tokensPerSecond: t) }
            if let p = peakFlops {
                try ScalingError.positive(p, "--peak-flops")
                guard mfu > 0, mfu <= 1 else { throw ScalingError("--mfu", "is \(mfu)", "pass a fraction in (0, 1]") }
                secs = Compute.seconds(flops: detailed ?? f, peak: p, mfu: mfu)
            }
            let o = Output(params: n, tokens: tokens, flops6ND: f, flopsDetailed: detailed, pfDays: Compute.pfDays(detailed ?? f), seconds: secs)
            if json { try printJSON(o); return }
            print("training FLOPs (6ND): \(sci(f))")
            if let d = detailed { print("training FLOPs (6N + 12·L·C·T per token): \(sci(d))") }
            print("PF-days: \(sci(o.pfDays))")
            if let s = secs { print(String(format: "wall-clock: %.1f hours (%.2f days)", s / 3600, s / 86400)) }
        }
    }
}

// MARK: - memory

struct MemoryCmd: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "memory", abstract: "Per-rank memory under DDP and ZeRO 1/2/3.")
    @Option(help: "Parameters (or use --model).") var params: Double?
    @Option(help: "Preset or a run's config.json.") var model: String?
    @Option(help: "Vocabulary size for --model files.") var vocab: Int?
    @Option(help: "Ranks.") var world: Int = 1
    @Option(help: "ZeRO stage, 0 = DDP (default: all four).") var zero: ZeroStage?
    @Option(help: "fp32, bf16 or fp16.") var precision: Precision = .fp32
    @Option(help: "Micro-batch (sequences) for the activation estimate.") var microBatch: Int?
    @Option(help: "Sequence length for the activation estimate.") var seq: Int?
    @Option(help: "With --model and --micro-batch: the recompute mode of the trainer's plan.") var recompute: Recompute = .none
    @Option(help: "With --model: LoRA adapters of this rank on a frozen base (0: full training).") var loraRank: Int = 0
    @Option(help: "With --lora-rank: the adapted maps (attn, attn-proj, mlp, mlp-proj).") var loraTargets: String = "attn"
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        calculator {
            var psi = params, act = 0
            var plans: [MemoryPlan] = []
            if let m = model {
                let s = try ModelShape.parse(m, vocabSize: vocab) { FileManager.default.contents(atPath: $0).map(Array.init) }
                if let b = microBatch, b > 0 { plans = trainerPlans(s, microBatch: b) }
                psi = Double(s.params)
                if let b = microBatch {
                    guard b > 0 else { throw ScalingError("--micro-batch", "is \(b)", "pass a positive size") }
                    act = MemoryModel.activations(shape: s, batch: b, seq: seq ?? s.blockSize,
                                                  elementBytes: precision.bytes)
                }
            }
            guard let psi else { throw ScalingError("memory", "needs a model size", "pass --params N or --model CONFIG") }
            try ScalingError.positive(psi, "--params")
            let stages = zero.map { [$0] } ?? ZeroStage.allCases
            let rows = try stages.map { try MemoryModel.perRank(params: Int(psi), world: world, stage: $0, precision: precision, activations: act) }
            let lora = try loraRows(stages: stages, psi: Int(psi), activations: act)
            if json {
                var out = Dictionary(uniqueKeysWithValues: zip(stages.map { "zero\($0.rawValue)" }, rows.map { PlanOrRow.row($0) }))
                for p in plans { out["plan_zero\(p.stage.rawValue)"] = .plan(p) }
                if let lora {
                    for (st, r) in zip(stages, lora.rows) { out["lora_zero\(st.rawValue)"] = .row(r) }
                    out["lora_adapters"] = .count(lora.adapters)
                }
                try printJSON(out); return
            }
            print("per-rank memory for \(count(psi)) parameters on \(world) rank(s), \(precision.rawValue)")
            table([["mode", "parameters", "gradients", "optimizer", "activations", "total"]] + zip(stages, rows).map { st, r in
                [st.name, bytes(r.parameters), bytes(r.gradients), bytes(r.optimizer),
                 r.activations > 0 ? bytes(r.activations) : "-", bytes(r.total)]
            })
            if let lora {
                print("LoRA rank \(loraRank) on \(loraTargets): \(count(Double(lora.adapters))) trainable adapter parameters; "
                      + "the base is frozen in \(precision.rawValue), without gradients or optimizer state")
                table([["mode", "parameters", "gradients", "optimizer", "activations", "total", "grad+optim vs full"]]
                      + zip(stages, zip(lora.rows, rows)).map { st, pair in
                    let (r, f) = pair
                    return [st.name, bytes(r.parameters), bytes(r.gradients), bytes(r.optimizer),
                            r.activations > 0 ? bytes(r.activations) : "-", bytes(r.total),
                            String(format: "%.2f%%", 100 * Double(r.gradients + r.optimizer) / Double(f.gradients + f.optimizer))]
                })
            }
            guard !plans.isEmpty else { return }
            print("the trainer's plan (train --dry-run), micro-batch \(microBatch ?? 0), recompute \(recompute.rawValue): "
                  + "adds working buffers (a 16-bit model's compute copy among them), collective temporaries, saving and the runtime")
            table([["mode", "working", "activations", "collectives", "saving", "peak per rank"]] + plans.map { p in
                [p.stage.name, bytes(p.working), bytes(p.activations), bytes(p.collectives), bytes(p.save), bytes(p.peakPerRank)]
            })
        }
    }

    /// With `--lora-rank`: the adapters' count and each stage's bytes with a frozen base.
    private func loraRows(stages: [ZeroStage], psi: Int, activations: Int) throws -> (adapters: Int, rows: [MemoryEstimate])? {
        guard loraRank != 0 else { return nil }
        guard let m = model else { throw ScalingError("--lora-rank", "needs the model's shape", "pass --model PRESET or a run's config.json") }
        let s = try ModelShape.parse(m, vocabSize: vocab) { FileManager.default.contents(atPath: $0).map(Array.init) }
        var c = TrainConfig()
        c.nLayer = s.nLayer; c.nHead = s.nHead; c.nEmbd = s.nEmbd; c.blockSize = s.blockSize; c.bias = s.bias
        c.loraRank = loraRank; c.loraTargets = loraTargets
        do { try c.validateLoRAShape() } catch { throw ScalingError(error.flag, error.problem, error.fix) }
        let adapters = c.lora!.parameterCount(for: c.model(vocabSize: s.vocabSize))
        // The same (ZeRO paper's) accounting as the full-training rows, for the adapters.
        return (adapters, try stages.map {
            try MemoryModel.lora(base: psi, adapters: adapters, world: world, stage: $0, precision: precision,
                                 basePrecision: precision, activations: activations)
        })
    }

    /// The trainer's own plan (`MemoryPlan`) for each stage asked for: one memory model for
    /// `train` and this calculator.
    private func trainerPlans(_ s: ModelShape, microBatch b: Int) -> [MemoryPlan] {
        var c = TrainConfig()
        c.nLayer = s.nLayer; c.nHead = s.nHead; c.nEmbd = s.nEmbd; c.blockSize = seq ?? s.blockSize; c.bias = s.bias
        c.microBatch = b; c.batchSize = b * world; c.precision = precision; c.recompute = recompute
        c.loraRank = loraRank; c.loraTargets = loraTargets
        return (zero.map { [$0] } ?? ZeroStage.allCases).map { stage in
            c.zero = stage
            return MemoryPlan.make(config: c, vocabSize: s.vocabSize, worldSize: world, ranksPerNode: 1, threads: 1)
        }
    }

    /// A JSON value of either model.
    enum PlanOrRow: Encodable {
        case row(MemoryEstimate), plan(MemoryPlan), count(Int)
        func encode(to encoder: Encoder) throws {
            switch self {
            case .row(let r): try r.encode(to: encoder)
            case .plan(let p): try p.encode(to: encoder)
            case .count(let n): var c = encoder.singleValueContainer(); try c.encode(n)
            }
        }
    }
}

// MARK: - shape

struct Shape: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "A conventional GPT shape close to a parameter count.")
    @Option(help: "Target parameters.") var params: Double
    @Option(help: "Vocabulary size.") var vocab: Int = 50257
    @Option(help: "Context length.") var seq: Int = 1024
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        calculator {
            let s = try ModelShape.near(params: params, vocabSize: vocab, blockSize: seq)
            if json { try printJSON(s); return }
            print("n_layer \(s.nLayer), n_head \(s.nHead), n_embd \(s.nEmbd), block_size \(s.blockSize), vocab \(s.vocabSize)")
            print("exact parameters: \(s.params) (\(count(Double(s.params)))), target \(count(params))")
            print("train with: --n-layer \(s.nLayer) --n-head \(s.nHead) --n-embd \(s.nEmbd) --block-size \(s.blockSize)")
        }
    }
}

// MARK: - budget

struct Budget: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "From a measured run: the compute-optimal model this cluster can train in H hours.")
    @Option(help: "RUN/metrics.jsonl of a tessera run.") var metrics: String
    @Option(help: "Wall-clock hours available.") var hours: Double
    @Option(help: "Ranks to train on (each as fast as the measured ones).") var ranks: Int
    @Option(help: "Fit.") var fit: ScalingFit = .chinchilla
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        calculator {
            guard let d = FileManager.default.contents(atPath: metrics) else {
                throw ScalingError("--metrics", "file \(metrics) not found", "pass RUN/metrics.jsonl of a training run")
            }
            let m = try MeasuredThroughput.read(metricsJSONL: Array(d), path: metrics)
            let p = try BudgetPlan.plan(measured: m, ranks: ranks, hours: hours, fit: fit)
            if json { try printJSON(p); return }
            print(String(format: "measured: %.0f tokens/s on %d rank(s) for a %@-parameter model = %@ FLOP/s per rank",
                         m.tokensPerSecond, m.worldSize, count(m.params), sci(m.flopsPerRank)))
            print("budget: \(ranks) ranks × \(hours) h = \(sci(p.allocation.flops)) FLOPs")
            let a = p.allocation
            print(String(format: "compute-optimal (%@): %@ parameters on %@ tokens, predicted loss %.3f",
                         fit.rawValue, count(a.params), count(a.tokens), a.loss))
            if let s = try? ModelShape.near(params: a.params, vocabSize: 50257, blockSize: 1024) {
                print("a shape: --n-layer \(s.nLayer) --n-head \(s.nHead) --n-embd \(s.nEmbd) (\(count(Double(s.params))) parameters)")
            }
        }
    }
}

import Corpus
import Foundation
import Kernels
import Parallel
import Scaling

// MARK: - RunReporter

/// What rank 0 tells the user about a run: `RUN/config.json`, `RUN/memory.json` (held bytes
/// beside the calculator's prediction), the start-up lines, progress lines and
/// `RUN/metrics.jsonl`.
final class RunReporter {
    private let config: TrainConfig
    /// The run's mixture of datasets, if it trains on one (for per-dataset losses' names).
    private let mixture: MixtureSpec?
    private let metrics: MetricsWriter
    private let events: TensorBoard.Writer?
    private let log: (String) -> Void

    /// Writes the run files and prints the start-up lines.
    init(trainer t: Trainer) throws {
        config = t.config
        mixture = t.data.mixture
        log = t.log
        let outDir = URL(fileURLWithPath: config.out)
        let enc = JSONEncoder(); enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        do {
            try FileManager.default.createDirectory(at: outDir, withIntermediateDirectories: true)
            try enc.encode(config).write(to: outDir.appendingPathComponent("config.json"), options: .atomic)
        } catch {
            throw ConfigError(flag: "--out", problem: "cannot create \(outDir.path)", fix: "choose a writable run directory")
        }
        metrics = try MetricsWriter(path: outDir.appendingPathComponent("metrics.jsonl").path, keepThrough: t.startStep)
        events = config.tensorboard ? try TensorBoard.Writer(directory: outDir.appendingPathComponent("tb").path, keepThrough: t.startStep) : nil
        let strategy = t.strategy, psi = t.model.layout.count, world = t.comm.size
        // The ZeRO stage shards over one group (the world, unless sharding is hybrid).
        let group = t.groups.groupSize
        var mem = strategy.memory
        // Gradients accumulate in fp32 under every strategy. With LoRA the strategy holds the
        // adapters, and the frozen base adds its values (and gather buffers).
        let predicted: MemoryEstimate
        if let frozen = t.frozen {
            mem.parameters += frozen.bytes.parameters
            mem.working.merge(frozen.bytes.working) { $0 + $1 }
            predicted = try MemoryModel.lora(base: psi, adapters: strategy.layout.count, world: group, stage: strategy.stage,
                                             precision: strategy.parameterPrecision, basePrecision: t.config.precision,
                                             gradientBytes: 4)
        } else {
            // The stage divides state over its group (a local SGD worker: DDP over its group).
            predicted = try MemoryModel.perRank(params: psi, world: group, stage: strategy.stage,
                                                precision: strategy.parameterPrecision, gradientBytes: 4)
        }
        if let local = t.localSGD { mem.working[LocalSGD.workingName] = local.bytes }
        let activations = t.model.activationBytes.total
        var report = MemoryFile(psi: psi, world: world, zero: strategy.stage.rawValue, rank: 0,
                                parameters: mem.parameters, gradients: mem.gradients, optimizer: mem.optimizer,
                                working: mem.working, activations: activations, predicted: predicted)
        report.plan = MemoryPlan.make(config: config, vocabSize: t.model.config.vocabSize, worldSize: world,
                                      ranksPerNode: Coordinator.ranksPerNode(),
                                      threads: ParallelFor.threads)
        memoryFile = report
        try writeMemoryFile()
        func mib(_ b: Int) -> String { String(format: "%.1f MiB", Double(b) / 1_048_576) }
        log("tessera: \(strategy.name), per-rank state: parameters \(mib(mem.parameters)), "
            + "gradients \(mib(mem.gradients)), optimizer \(mib(mem.optimizer)), working \(mib(mem.working.values.reduce(0, +))), "
            + "activations \(mib(activations))")
        log("tessera: " + t.gemmNote)
        if let note = Gemm.precisionNote(config.precision) { log("tessera: " + note) }
        if t.localSGD != nil {
            let workers = t.groups.replicas?.size ?? 1
            log("tessera: local SGD: \(workers) worker(s) of \(group) rank(s)" + (group > 1 ? " (DDP within each)" : "")
                + ", synchronising every \(config.syncEvery) steps")
        } else if let replicas = t.groups.replicas {
            log("tessera: hybrid sharding: \(strategy.name) within \(replicas.size) groups of \(group) ranks, gradient shards all-reduced across groups"
                + (t.groups.withinNodes == true ? " (each group within one node)"
                   : "; groups span nodes, so parameter and gradient traffic of the stage crosses the network (--shard-group node keeps it in each node)"))
        } else if config.shardGroup != .world {
            log("tessera: --shard-group \(config.shardGroup) makes one group of all \(world) ranks: plain \(strategy.name)")
        }
        log("tessera: \(world) rank(s), \(psi) parameters (\(String(format: "%.2f", Double(psi) / 1e6))M), "
            + "global batch \(config.batchSize) × \(config.blockSize) tokens, micro-batch \(t.micro) × "
            + "\((t.myIndices.count + t.micro - 1) / max(t.micro, 1)) accumulation step(s) on rank 0")
        if let blend = t.data.train.mixture?.blend, let spec = mixture {
            let parts = zip(blend.counts, spec.paths).map { "\(String(format: "%.1f", Double($0) / Double(Blend.cycle) * 100))% \($1)" }
            log("tessera: data: a mixture of \(parts.count) datasets, samples shared \(parts.joined(separator: ", "))")
        }
        if config.batchSize < world {
            // Sample i goes to rank i mod N, so the last ranks get none; they only join the
            // reductions. Allowed (any world resumes any run), but rarely what was meant.
            let idle = config.batchSize == world - 1 ? "rank \(world - 1) gets no sequence and idles"
                : "ranks \(config.batchSize)–\(world - 1) get no sequence and idle"
            log("tessera: note: global batch \(config.batchSize) is smaller than the \(world) ranks: \(idle) each step, "
                + "joining only the reductions (--batch-size \(world) or more keeps every rank busy)")
        }
    }

    private var memoryFile: MemoryFile?

    private func writeMemoryFile() throws {
        let enc = JSONEncoder(); enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try enc.encode(memoryFile).write(to: URL(fileURLWithPath: config.out).appendingPathComponent("memory.json"), options: .atomic)
    }

    /// Adds the measured peak resident memory (the highest of any rank) to `memory.json`.
    func runEnded(peakResidentBytes: Int) throws {
        memoryFile?.measured_peak_rss = peakResidentBytes
        try writeMemoryFile()
        if let plan = memoryFile?.plan {
            log("tessera: peak resident memory \(gibText(peakResidentBytes)) per rank (planned \(gibText(plan.peakPerRank)))")
        }
    }

    /// What TensorBoard shows of a step, under TensorBoard-style group/name tags.
    static func scalars(_ m: StepMetrics, mixture: MixtureSpec? = nil) -> [(tag: String, value: Double)] {
        var s: [(tag: String, value: Double)] = [("train/loss", m.loss), ("train/lr", m.lr), ("train/grad_norm", m.grad_norm),
                                                 ("perf/tokens_per_s", m.tokens_per_s), ("perf/ms_per_step", m.ms_per_step),
                                                 ("perf/ms_comm_wait", m.ms_comm_wait)]
        if let v = m.val_loss { s.append(("val/loss", v)) }
        if let parts = m.val_loss_by_data, let mixture {
            for (path, name) in zip(mixture.paths, mixture.names) { if let v = parts[path] { s.append(("val/loss_by_data/\(name)", v)) } }
        }
        if let a = m.choice_acc, let n = m.choice_acc_norm { s += [("val/choice_acc", a), ("val/choice_acc_norm", n)] }
        if let u = m.mfu { s.append(("perf/mfu", u)) }
        if let l = m.loss_scale { s.append(("train/loss_scale", l)) }
        s.append(("train/skipped_steps", Double(m.skipped_steps ?? 0)))
        if let r = m.peak_rss_mb { s.append(("memory/peak_rss_mb", r)) }
        if let e = m.epoch { s.append(("train/epoch", e)) }
        return s
    }

    /// Records step `step` (0-based) and prints a progress line when one is due.
    func stepDone(_ m: StepMetrics, step: Int, elapsed: Double) {
        metrics.write(m)
        events?.write(step: m.step, Self.scalars(m, mixture: mixture))
        let lastStep = step == config.maxSteps - 1
        guard step % config.logEvery == 0 || lastStep || m.val_loss != nil || m.skipped == true else { return }
        let eta = elapsed / Double(step + 1) * Double(config.maxSteps - step - 1)
        var s = String(format: "step %5d/%d | loss %.4f | lr %.2e | %8.0f tok/s | %7.1f ms/step | ETA %@",
                       step + 1, config.maxSteps, m.loss, m.lr, m.tokens_per_s, m.ms_per_step, formatDuration(eta))
        if let e = m.epoch { s += String(format: " | epoch %.3f", e) }
        if let v = m.val_loss { s += String(format: " | val %.4f", v) }
        if let parts = m.val_loss_by_data, let spec = mixture {
            s += " (" + zip(spec.paths, spec.names).compactMap { p, name in parts[p].map { "\(name) " + String(format: "%.4f", $0) } }
                .joined(separator: ", ") + ")"
        }
        if let a = m.choice_acc, let n = m.choice_acc_norm { s += String(format: " | choices acc %.4f acc_norm %.4f", a, n) }
        if m.skipped == true { s += " | skipped: non-finite loss or gradient" + (m.loss_scale != nil ? " (loss scale lowered)" : "") }
        log(s)
    }
}

import ArgumentParser
import Checkpoint
import Comm
import Corpus
import Foundation
import Kernels
import Optim
import Training

/// `tessera train`: one training job; under `mpirun` every rank runs this command.
struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a GPT on prepared data (single process, or every rank under mpirun).")

    @Option(help: "JSON file of config keys (as in RUN/config.json); flags override it.") var config: String?
    @Option(help: "Resume from 'latest' (in --out), a run directory or a checkpoint directory.") var resume: String?
    @OptionGroup(title: "Run configuration (each writes the config key of the same name)") var options: TrainOptions
    @Flag(help: "Print the memory, communication and compute plan of the run and exit without training.") var dryRun = false
    @Flag(help: "Start a new run in an --out that holds one: first remove that run's checkpoints, model.bin, metrics and TensorBoard logs.")
    var overwrite = false

    func validate() throws {
        if overwrite && resume != nil {
            throw ValidationError("--overwrite starts a new run and --resume continues one: pass one of them")
        }
    }

    /// The effective configuration: defaults, or the checkpoint's config when resuming, or a
    /// JSON file; then flags.
    func effectiveConfig() throws -> TrainConfig {
        var c = TrainConfig()
        if let resume {
            guard config == nil else {
                throw ConfigError(flag: "--config", problem: "cannot be combined with --resume",
                                  fix: "a resumed run takes its config from the checkpoint; override single flags instead")
            }
            let store = CheckpointStore(runDirectory: options.out ?? c.out)
            let (dir, manifest) = try store.resolve(resume, repair: true) { writeStandardError($0) }
            let base = try JSONDecoder().decode(TrainConfig.self, from: JSONEncoder().encode(manifest.config))
            c = try apply(to: base)
            guard c.sameModel(as: base) else {
                throw ConfigError(flag: "--resume", problem: "checkpoint \(dir.path) holds a different model (mismatched model config: "
                                  + "n_layer \(base.nLayer), n_head \(base.nHead), n_embd \(base.nEmbd), block_size \(base.blockSize), bias \(base.bias))",
                                  fix: "drop the model flags when resuming")
            }
            c.resume = dir.path
            noteScheduleChange(from: base, to: c, step: manifest.step)
            return c
        }
        if let config {
            guard let d = FileManager.default.contents(atPath: config) else {
                throw ConfigError(flag: "--config", problem: "file \(config) not found", fix: "pass an existing JSON file")
            }
            do { c = try JSONDecoder().decode(TrainConfig.self, from: d) } catch let e as ConfigError { throw e } catch {
                throw ConfigError(flag: "--config", problem: "\(config) is not a valid config (\(error))",
                                  fix: "use the keys of a run's config.json")
            }
        }
        c.resume = ""
        var fresh = try apply(to: c)
        // Starting from trained weights: their shape, unless a flag says otherwise (then the
        // trainer names the mismatch; a shorter --block-size is allowed).
        if !fresh.initFrom.isEmpty {
            let shape = try InitialWeights.load(fresh.initFrom).config
            c.nLayer = shape.nLayer; c.nHead = shape.nHead; c.nEmbd = shape.nEmbd; c.blockSize = shape.blockSize; c.bias = shape.bias
            fresh = try apply(to: c)
        }
        return fresh
    }

    /// Flags given on the command line override `base`.
    func apply(to base: TrainConfig) throws -> TrainConfig {
        if let h = options.syncEvery, h <= 0 {
            throw ConfigError(flag: "--sync-every", problem: "is \(h)",
                              fix: "use a positive number of inner steps such as 50, or leave out --sync-every for synchronous training")
        }
        if let r = options.loraRank, r <= 0 {
            throw ConfigError(flag: "--lora-rank", problem: "is \(r)",
                              fix: "use a positive rank such as 8, or leave out --lora-rank to train the whole model")
        }
        var c = base
        options.write(into: &c)
        // A LoRA run reads its base again on resume and for eval/export: keep where it is
        // independent of the working directory.
        if c.loraRank > 0 && !c.initFrom.isEmpty { c.initFrom = URL(fileURLWithPath: c.initFrom).standardizedFileURL.path }
        return c
    }

    func run() throws {
        Preemption.install()
        let comm: Communicator = MPICommunicator.launchedByMPI ? MPICommunicator() : LocalCommunicator()
        let config: TrainConfig
        do {
            config = try Coordinator.agree(on: { () throws -> TrainConfig in
                let c = try effectiveConfig()
                try c.validate(worldSize: comm.size)
                try preflight(c, worldSize: comm.size)
                if !dryRun { try claim(c.out, initFrom: c.initFrom, resuming: c.resume) }
                return c
            }, comm: comm)
        } catch { finish(comm, error) }
        if dryRun {
            (comm as? MPICommunicator)?.finalize()
            return
        }
        comm.timeoutSeconds = config.commTimeout
        Gemm.setThreads(config.threads > 0 ? config.threads : Coordinator.defaultThreads())
        do {
            let trainer = try Trainer(config: config, comm: comm)
            if comm.rank != 0 { trainer.log = { _ in } }
            let result = try trainer.run()
            if comm.rank == 0 {
                say("done: \(config.maxSteps) steps in \(String(format: "%.1f", result.seconds)) s; "
                      + "final val loss \(result.valLosses.last.map { String(format: "%.4f", $0.loss) } ?? "n/a")")
                say("model written to \(result.modelPath)")
                say("checkpoint: \(config.out)/checkpoints/latest; continue with: tessera train --out \(config.out) --resume latest --max-steps N")
                say("metrics in \(config.out)/metrics.jsonl; sample with: tessera generate --model \(result.modelPath) --prompt \"...\"")
            }
        } catch { finish(comm, error) }
        (comm as? MPICommunicator)?.finalize()
    }

    /// The coordinator's memory plan, before any rank allocates: printed with `--dry-run`,
    /// otherwise a run that cannot fit on its nodes is refused with the cheapest change that fits.
    func preflight(_ c: TrainConfig, worldSize: Int) throws {
        let data = try Dataset.open(c.data, vocabSize: c.vocabSize > 0 ? c.vocabSize : nil), vocab = data.vocabSize
        _ = try Trainer.choiceQuestions(config: c, data: data, model: c.model(vocabSize: vocab))
        let threads = c.threads > 0 ? c.threads : Coordinator.defaultThreads()
        let limit = try MemoryLimit.resolve(c.memoryLimit)
        let perNode = Coordinator.ranksPerNode()
        func check() throws(ConfigError) -> MemoryPlan {
            try MemoryPlan.check(config: c, vocabSize: vocab, worldSize: worldSize, ranksPerNode: perNode,
                                 threads: threads, limit: limit)
        }
        guard dryRun else { _ = try check(); return }
        let plan = MemoryPlan.make(config: c, vocabSize: vocab, worldSize: worldSize, ranksPerNode: perNode,
                                   threads: threads)
        say(plan.description)
        do {
            _ = try check()
            say("fits: \(gibText(plan.peakPerNode)) of \(gibText(limit.bytes)) available on the node (\(limit.source))")
        } catch { say("does not fit: \(error.description)") }
    }

    /// A resumed run whose flags move the learning rate of its next step (a longer
    /// `--max-steps` stretches a cosine; a cooldown branched from a stable `wsd` checkpoint
    /// lowers it) says so once, so a jump is never a surprise.
    func noteScheduleChange(from old: TrainConfig, to new: TrainConfig, step: Int) {
        let before = old.schedule.lr(at: step), after = new.schedule.lr(at: step)
        guard before != after else { return }
        say(String(format: "tessera: the schedule changed on resume: step %d's learning rate is %.3e (the checkpoint's config gave %.3e)",
                   step + 1, after, before))
    }

    /// A new run does not replace one that `out` holds: it is refused, unless `--overwrite`
    /// says to remove the old run first (after every other check has passed, so bad input
    /// loses nothing). Resuming from a checkpoint of `out` writes on into the run, as meant;
    /// resuming from another run's checkpoint branches a new run into `out`, which must not
    /// hold one.
    func claim(_ out: String, initFrom: String, resuming checkpoint: String) throws {
        if !checkpoint.isEmpty && RunDirectory.contains(out, checkpoint) { return }
        guard let held = RunDirectory.previousRun(at: out) else { return }
        if !checkpoint.isEmpty {
            throw ConfigError(flag: "--out", problem: "\(out) already holds a run (\(held)), and --resume \(checkpoint) belongs to another",
                              fix: "branch into a new --out, or continue \(out) with --resume latest")
        }
        guard overwrite else {
            throw ConfigError(flag: "--out", problem: "\(out) already holds a run (\(held))",
                              fix: "continue it with --resume latest, choose another --out, "
                                + "or pass --overwrite to remove it and start over")
        }
        if !initFrom.isEmpty && RunDirectory.contains(out, initFrom) {
            throw ConfigError(flag: "--overwrite", problem: "would remove the weights --init-from \(initFrom) reads",
                              fix: "start from a copy of them outside \(out), or choose another --out")
        }
        try RunDirectory.clear(out)
        say("tessera: --overwrite: removed the previous run in \(out) (\(held))")
    }

    /// Reports an error and ends every rank: a communication failure aborts the job (the
    /// peers may be blocked in a collective); a config/data error found identically on every
    /// rank exits with 2 everywhere.
    private func finish(_ comm: Communicator, _ error: Error) -> Never {
        if let p = error as? Preempted {
            if comm.rank == 0 { FileHandle.standardOutput.write(Data((p.description + "\n").utf8)) }
            (comm as? MPICommunicator)?.finalize()
            Foundation._exit(Preemption.exitStatus)
        }
        if let e = error as? CommError {
            writeStandardError(e.description)
            comm.abort(code: 1)
        }
        // Errors every rank meets identically are printed once, by the coordinator.
        let shared = error is ConfigError || error is SaveFailure || error is CheckpointError || error is LossScaleCollapse
            || error is NonFiniteSteps || error is ReplicaDivergence
        if comm.rank == 0 || !shared { fail(error, rank: comm.rank) }
        Foundation.exit(error is SaveFailure || error is LossScaleCollapse || error is NonFiniteSteps || error is ReplicaDivergence ? 1 : 2)
    }
}

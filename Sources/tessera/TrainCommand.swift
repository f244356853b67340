import ArgumentParser
import Checkpoint
import Comm
import Foundation
import Kernels
import Optim
import Training

/// `tessera train`: one training job; under `mpirun` every rank runs this command.
struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a GPT on prepared data (single process, or every rank under mpirun).")

    @Option(help: "JSON file of config keys (as in RUN/config.json); flags override it.") var config: String?
    @Option(help: "Data directory written by `tessera prepare`.") var data: String?
    @Option(help: "Run directory for config.json, metrics.jsonl and model.bin.") var out: String?
    @Option(help: "Transformer blocks.") var nLayer: Int?
    @Option(help: "Attention heads.") var nHead: Int?
    @Option(help: "Embedding width.") var nEmbd: Int?
    @Option(help: "Context length.") var blockSize: Int?
    @Flag(help: "Drop biases from linear layers and LayerNorms.") var noBias = false
    @Option(help: "Dropout probability (only 0 is implemented).") var dropout: Double?
    @Option(help: "Global batch size in sequences (split over ranks).") var batchSize: Int?
    @Option(help: "Sequences per forward/backward on a rank (0: the rank's whole share).") var microBatch: Int?
    @Option(help: "Optimizer steps.") var maxSteps: Int?
    @Option(help: "Peak learning rate.") var lr: Double?
    @Option(help: "Final learning rate of the cosine decay.") var minLr: Double?
    @Option(help: "Linear warm-up steps.") var warmupSteps: Int?
    @Option(help: "AdamW beta1.") var beta1: Double?
    @Option(help: "AdamW beta2.") var beta2: Double?
    @Option(help: "AdamW decoupled weight decay (2-D tensors only).") var weightDecay: Double?
    @Option(help: "Global gradient-norm clip (0: off).") var gradClip: Double?
    @Option(help: "Evaluate every N steps (and at the end).") var evalEvery: Int?
    @Option(help: "Validation batches per evaluation.") var evalSteps: Int?
    @Option(help: "Print a progress line every N steps.") var logEvery: Int?
    @Option(help: "Random seed (initialisation and batches).") var seed: UInt64?
    @Option(help: "BLAS threads per rank (0: cores / ranks on the node).") var threads: Int?
    @Option(help: "ZeRO stage: 0 = DDP.") var zero: Int?
    @Option(help: "DDP gradient bucket size in MiB.") var bucketMb: Double?
    @Option(help: "Seconds a collective may wait before the watchdog aborts the job.") var commTimeout: Double?
    @Option(help: "Save a checkpoint every N steps (0: only at the end).") var saveEvery: Int?
    @Option(help: "Keep only the newest K checkpoints (0: all).") var keepLast: Int?
    @Flag(help: "Write checkpoints on a background thread while training goes on.") var asyncSave = false
    @Option(help: "zstd level for checkpoints (1-19).") var ckptLevel: Int?
    @Option(help: "Matmul precision: fp32, bf16 or fp16 (fp32 master weights and optimizer).") var precision: String?
    @Option(help: "Gradient communication format: fp32, bf16 or fp16 (default: the --precision).") var reduceDtype: String?
    @Option(help: ArgumentHelp("Testing aid: STEP:RANK writes +inf into that rank's gradient.", visibility: .hidden))
    var debugInjectInf: String?
    @Option(help: "Resume from 'latest' (in --out), a run directory or a checkpoint directory.") var resume: String?

    /// The effective configuration: defaults, or the checkpoint's config when resuming, or a
    /// JSON file; then flags.
    func effectiveConfig() throws -> TrainConfig {
        var c = TrainConfig()
        if let resume {
            guard config == nil else {
                throw ConfigError(flag: "--config", problem: "cannot be combined with --resume",
                                  fix: "a resumed run takes its config from the checkpoint; override single flags instead")
            }
            let store = CheckpointStore(runDirectory: out ?? c.out)
            let (dir, manifest) = try store.resolve(resume) { writeStandardError($0) }
            let base = try JSONDecoder().decode(TrainConfig.self, from: JSONEncoder().encode(manifest.config))
            c = try apply(to: base)
            guard c.sameModel(as: base) else {
                throw ConfigError(flag: "--resume", problem: "checkpoint \(dir.path) holds a different model (mismatched model config: "
                                  + "n_layer \(base.nLayer), n_head \(base.nHead), n_embd \(base.nEmbd), block_size \(base.blockSize), bias \(base.bias))",
                                  fix: "drop the model flags when resuming")
            }
            c.resume = dir.path
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
        return try apply(to: c)
    }

    /// Flags given on the command line override `base`.
    func apply(to base: TrainConfig) throws -> TrainConfig {
        var c = base
        if let data { c.data = data }
        if let out { c.out = out }
        if let nLayer { c.nLayer = nLayer }
        if let nHead { c.nHead = nHead }
        if let nEmbd { c.nEmbd = nEmbd }
        if let blockSize { c.blockSize = blockSize }
        if noBias { c.bias = false }
        if let dropout { c.dropout = dropout }
        if let batchSize { c.batchSize = batchSize }
        if let microBatch { c.microBatch = microBatch }
        if let maxSteps { c.maxSteps = maxSteps }
        if let lr { c.lr = lr }
        if let minLr { c.minLR = minLr }
        if let warmupSteps { c.warmupSteps = warmupSteps }
        if let beta1 { c.beta1 = beta1 }
        if let beta2 { c.beta2 = beta2 }
        if let weightDecay { c.weightDecay = weightDecay }
        if let gradClip { c.gradClip = gradClip }
        if let evalEvery { c.evalEvery = evalEvery }
        if let evalSteps { c.evalSteps = evalSteps }
        if let logEvery { c.logEvery = logEvery }
        if let seed { c.seed = seed }
        if let threads { c.threads = threads }
        if let zero { c.zero = zero }
        if let bucketMb { c.bucketMB = bucketMb }
        if let commTimeout { c.commTimeout = commTimeout }
        if let saveEvery { c.saveEvery = saveEvery }
        if let keepLast { c.keepLast = keepLast }
        if asyncSave { c.asyncSave = true }
        if let ckptLevel { c.ckptLevel = ckptLevel }
        if let precision { c.precision = precision }
        if let reduceDtype { c.reduceDtype = reduceDtype }
        if let debugInjectInf { c.debugInjectInf = debugInjectInf }
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
                return c
            }, comm: comm)
        } catch { finish(comm, error) }
        comm.timeoutSeconds = config.commTimeout
        Gemm.setThreads(config.threads > 0 ? config.threads : Coordinator.defaultThreads())
        do {
            let trainer = try Trainer(config: config, comm: comm)
            if comm.rank != 0 { trainer.log = { _ in } }
            let result = try trainer.run()
            if comm.rank == 0 {
                print("done: \(config.maxSteps) steps in \(String(format: "%.1f", result.seconds)) s; "
                      + "final val loss \(result.valLosses.last.map { String(format: "%.4f", $0.loss) } ?? "n/a")")
                print("model written to \(result.modelPath)")
                print("checkpoint: \(config.out)/checkpoints/latest; continue with: tessera train --out \(config.out) --resume latest --max-steps N")
                print("metrics in \(config.out)/metrics.jsonl; sample with: tessera generate --model \(result.modelPath) --prompt \"...\"")
            }
        } catch { finish(comm, error) }
        (comm as? MPICommunicator)?.finalize()
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
        if comm.rank == 0 || !shared { fail(error, rank: comm.rank) }
        Foundation.exit(error is SaveFailure || error is LossScaleCollapse ? 1 : 2)
    }
}

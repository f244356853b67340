import Checkpoint
import Comm
import Data
import Foundation
import Kernels
import Model
import Optim
import Parallel
import Scaling

// MARK: - Trainer

/// Losses and timings of a finished run (rank 0's view; workers see the same numbers).
public struct TrainResult: Sendable {
    public var losses: [Double] = []
    public var valLosses: [(step: Int, loss: Double)] = []
    public var modelPath: String = ""
    public var seconds: Double = 0
    /// Seconds the loop was blocked by each save (and async commit).
    public var saveStalls: [Double] = []
}

/// Runs one training job on every rank of a communicator.
///
/// Rank 0 is the coordinator: it alone prints progress and writes files, from numbers
/// reduced over all ranks. Every rank computes the same schedule, so no control messages
/// are needed beyond the collectives of each step.
public final class Trainer {
    public let config: TrainConfig
    let comm: Communicator
    let data: Dataset
    public let model: GPT
    public let strategy: TrainingStrategy
    let sampler: BatchSampler
    let schedule: CosineSchedule
    /// Where progress lines go (rank 0 only); tests silence it.
    public var log: (String) -> Void = { FileHandle.standardOutput.write(Data(($0 + "\n").utf8)) }

    private var isCoordinator: Bool { comm.rank == 0 }
    // Per-rank sample plan: indices of the global batch this rank owns, in micro-batches.
    private let myIndices: [Int]
    private let micro: Int
    private var x: UnsafeMutablePointer<Int32>, y: UnsafeMutablePointer<Int32>
    /// fp16's dynamic loss scaler (restored on resume).
    public private(set) var scaler: DynamicLossScaler?
    /// Set when some rank received a stop signal during the last step.
    private var stopRequested: Int32 = 0
    /// First step to run (> 0 after a resume).
    public private(set) var startStep = 0
    private var checkpointer: Checkpointer!

    /// Loads the data, builds the model and the strategy, and initialises parameters.
    public convenience init(config: TrainConfig, comm: Communicator) throws {
        try config.validate(worldSize: comm.size)
        try self.init(config: config, comm: comm, dataset: try Dataset.load(directory: config.data))
    }

    /// Builds a trainer over an in-memory dataset (benchmarks use synthetic tokens).
    public init(config: TrainConfig, comm: Communicator, dataset: Dataset) throws {
        self.config = config
        self.comm = comm
        data = dataset
        let vocab = data.tokenizer.vocabSize
        guard data.observedVocab <= vocab else {
            throw DataError.malformed(path: config.data, problem: "token id \(data.observedVocab - 1) exceeds vocabulary \(vocab)")
        }
        for (name, shard) in [("train.bin", data.train), ("val.bin", data.val)] where shard.tokens.count <= config.blockSize {
            throw DataError.tooShort(path: config.data + "/" + name, tokens: shard.tokens.count, needed: config.blockSize + 1)
        }
        let gpt = config.model(vocabSize: vocab)
        do { try gpt.validate() } catch { throw ConfigError(flag: "model", problem: error.description, fix: "adjust the model flags") }
        model = GPT(config: gpt, precision: Kernels.Precision(rawValue: config.precision) ?? .fp32)
        sampler = BatchSampler(seed: config.seed, blockSize: config.blockSize)
        schedule = CosineSchedule(maxLR: config.lr, minLR: config.minLR, warmupSteps: config.warmupSteps,
                                  decaySteps: config.maxSteps)
        let adam = AdamW(beta1: Float(config.beta1), beta2: Float(config.beta2), eps: 1e-8,
                         weightDecay: Float(config.weightDecay))
        strategy = makeStrategy(stage: config.zero, layout: model.layout, comm: comm, adam: adam,
                                bucketBytes: Int(config.bucketMB * 1_048_576),
                                reduce: Kernels.Precision(rawValue: config.effectiveReduceDtype) ?? .fp32,
                                compute: model.precision)
        let initial = FloatBuffer(count: model.layout.count)
        GPT.initialize(initial.pointer, layout: model.layout, config: gpt, seed: config.seed)
        // Like PyTorch DDP, start every replica from rank 0's parameters.
        if comm.size > 1 {
            try comm.wait(comm.startBroadcast(UnsafeMutableRawPointer(initial.pointer), count: initial.count,
                                              dtype: .float32, root: 0, label: "broadcast of initial parameters"))
        }
        strategy.loadParameters(from: initial.pointer)
        if !config.resume.isEmpty {
            let dir = URL(fileURLWithPath: config.resume)
            let manifest = try CheckpointReader.manifest(directory: dir)
            try Checkpointer.load(directory: dir, manifest: manifest, layout: model.layout, strategy: strategy)
            startStep = manifest.step
            if config.precision == "fp16" {
                scaler = DynamicLossScaler(scale: manifest.lossScale ?? 65_536, goodSteps: manifest.lossScaleGoodSteps ?? 0,
                                           skippedSteps: manifest.skippedSteps)
            }
        }
        if config.precision == "fp16" && scaler == nil { scaler = DynamicLossScaler() }
        myIndices = Array(stride(from: comm.rank, to: config.batchSize, by: comm.size))
        let share = (config.batchSize + comm.size - 1) / comm.size
        micro = max(1, config.microBatch > 0 ? min(config.microBatch, share) : share)
        x = .allocate(capacity: micro * config.blockSize)
        y = .allocate(capacity: micro * config.blockSize)
        model.reserve(B: micro, T: config.blockSize)
    }

    deinit { x.deallocate(); y.deallocate() }

    /// Total tokens of one global batch.
    var tokensPerStep: Int { config.batchSize * config.blockSize }

    // MARK: Loop

    /// Trains for `config.maxSteps` steps; returns the loss trajectory.
    public func run() throws -> TrainResult {
        var result = TrainResult()
        let outDir = URL(fileURLWithPath: config.out)
        var metrics: MetricsWriter?
        if isCoordinator {
            do {
                try FileManager.default.createDirectory(at: outDir, withIntermediateDirectories: true)
                let enc = JSONEncoder(); enc.outputFormatting = [.prettyPrinted, .sortedKeys]
                try enc.encode(config).write(to: outDir.appendingPathComponent("config.json"), options: .atomic)
            } catch {
                throw ConfigError(flag: "--out", problem: "cannot create \(outDir.path)", fix: "choose a writable run directory")
            }
            metrics = try MetricsWriter(path: outDir.appendingPathComponent("metrics.jsonl").path, keepThrough: startStep)
            let mem = strategy.memory
            // Sharded stages hold parameters as the ZeRO paper's mixed precision does (16-bit
            // copy, fp32 master with the optimizer); DDP keeps fp32 parameters as PyTorch AMP
            // does. Gradients accumulate in fp32 everywhere.
            let held: Scaling.Precision = config.zero >= 1 ? Scaling.Precision(rawValue: config.precision) ?? .fp32 : .fp32
            let predicted = try MemoryModel.perRank(params: model.layout.count, world: comm.size, zero: config.zero,
                                                    precision: held, gradientBytes: 4)
            let report = MemoryFile(psi: model.layout.count, world: comm.size, zero: config.zero, rank: 0,
                                    parameters: mem.parameters, gradients: mem.gradients, optimizer: mem.optimizer,
                                    working: mem.working, activations: model.activationBytes.total,
                                    predicted: predicted)
            let enc = JSONEncoder(); enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            try enc.encode(report).write(to: outDir.appendingPathComponent("memory.json"), options: .atomic)
            let p = model.layout.count
            func mib(_ b: Int) -> String { String(format: "%.1f MiB", Double(b) / 1_048_576) }
            log("tessera: \(config.zero == 0 ? "DDP" : "ZeRO-\(config.zero)"), per-rank state: parameters \(mib(mem.parameters)), "
                + "gradients \(mib(mem.gradients)), optimizer \(mib(mem.optimizer)), working \(mib(mem.working.values.reduce(0, +))), "
                + "activations \(mib(model.activationBytes.total))")
            log("tessera: \(comm.size) rank(s), \(p) parameters (\(String(format: "%.2f", Double(p) / 1e6))M), "
                + "global batch \(config.batchSize) × \(config.blockSize) tokens, micro-batch \(micro) × "
                + "\((myIndices.count + micro - 1) / max(micro, 1)) accumulation step(s) on rank 0")
        }
        checkpointer = Checkpointer(comm: comm, runDirectory: config.out, level: config.ckptLevel, keepLast: config.keepLast,
                                    async: config.asyncSave, log: log)
        if isCoordinator && startStep > 0 { log("tessera: resumed from \(config.resume) at step \(startStep)") }
        let start = MPIClock.now()
        for step in startStep..<max(config.maxSteps, startStep) {
            comm.context = "step \(step)"
            let m = try trainStep(step)
            result.losses.append(m.loss)
            var line = m
            let lastStep = step == config.maxSteps - 1
            if (config.evalEvery > 0 && (step + 1) % config.evalEvery == 0) || lastStep {
                let v = try evaluate(batchOffset: 0)
                line.val_loss = v
                result.valLosses.append((step + 1, v))
            }
            if isCoordinator {
                metrics?.write(line)
                if step % config.logEvery == 0 || lastStep || line.val_loss != nil {
                    let elapsed = MPIClock.now() - start
                    let eta = elapsed / Double(step + 1) * Double(config.maxSteps - step - 1)
                    var s = String(format: "step %5d/%d | loss %.4f | lr %.2e | %8.0f tok/s | %7.1f ms/step | ETA %@",
                                   step + 1, config.maxSteps, m.loss, m.lr, m.tokens_per_s, m.ms_per_step,
                                   formatDuration(eta))
                    if let v = line.val_loss { s += String(format: " | val %.4f", v) }
                    log(s)
                }
            }
            if stopRequested != 0 && !lastStep {
                try saveCheckpoint(completedSteps: step + 1)
                try checkpointer.finishPending(wait: true)
                result.modelPath = try saveModel(to: outDir.appendingPathComponent("model.bin").path)
                // No rank may exit before rank 0 has committed: mpirun ends the whole job as
                // soon as one rank exits with a non-zero status.
                try comm.barrier(label: "barrier after the pre-emption checkpoint")
                throw Preempted(step: step + 1, signal: stopRequested,
                                checkpoint: CheckpointStore(runDirectory: config.out).directory(step: step + 1).path)
            }
            if lastStep { continue }
            try checkpointer.finishPending(wait: false)
            if config.saveEvery > 0 && (step + 1) % config.saveEvery == 0 { try saveCheckpoint(completedSteps: step + 1) }
        }
        try saveCheckpoint(completedSteps: max(config.maxSteps, startStep))
        try checkpointer.finishPending(wait: true)
        result.seconds = MPIClock.now() - start
        result.saveStalls = checkpointer.stallSeconds
        result.modelPath = try saveModel(to: outDir.appendingPathComponent("model.bin").path)
        return result
    }

    /// One optimizer step over the global batch.
    public func trainStep(_ step: Int) throws -> StepMetrics {
        let t0 = MPIClock.now()
        let T = config.blockSize
        let scale = scaler?.scale ?? 1
        let lossScale = Float(scale / Double(tokensPerStep))
        strategy.beginStep()
        strategy.commWaitSeconds = 0
        comm.sentElements = 0
        comm.sentBytes = 0
        var lossSum = 0.0
        var fwd = 0.0, bwd = 0.0
        var i = 0
        while i < myIndices.count {
            let chunk = myIndices[i..<min(i + micro, myIndices.count)]
            i += chunk.count
            sampler.fill(x: x, y: y, shard: data.train, split: .train, batch: step, indices: chunk)
            strategy.beginMicroStep(isLast: i >= myIndices.count)
            let a = MPIClock.now()
            lossSum += model.forward(tokens: x, targets: y, B: chunk.count, T: T, params: strategy.provider).sum
            let b = MPIClock.now()
            model.backward(lossScale: lossScale, params: strategy.provider)
            bwd += MPIClock.now() - b
            fwd += b - a
        }
        if myIndices.isEmpty { strategy.beginMicroStep(isLast: true) }
        try strategy.finishGradients()
        if let inject = config.injectAt, inject.step == step + 1, inject.rank == comm.rank { strategy.poisonGradientForTesting() }
        let o0 = MPIClock.now()
        // One all-reduce carries the loss and, under fp16, whether any rank overflowed.
        let overflowHere = scaler != nil && !strategy.localGradientsFinite()
        // ... and whether any rank has been asked to stop (a signal reaches ranks at different
        // times; agreeing here makes every rank stop after the same step).
        var reduced = [lossSum, overflowHere ? 1 : 0, Double(Preemption.pending)]
        try comm.allReduce(&reduced, op: .sum, label: "all-reduce of the loss, overflow and stop flags")
        stopRequested = reduced[2] > 0 ? Int32(Preemption.pending == 0 ? SIGTERM : Preemption.pending) : 0
        let lr = schedule.lr(at: step)
        var norm = 0.0
        var skipped: Bool?
        if var s = scaler {
            skipped = try s.update(overflow: reduced[1] > 0)
            scaler = s
        }
        if skipped != true {
            norm = try strategy.gradientSquaredNorm().squareRoot() / scale
            let clip = GradientClipping.coefficient(norm: norm, maxNorm: config.gradClip) / Float(scale)
            // The AdamW step count is the number of updates applied (skipped steps excluded).
            try strategy.optimizerStep(step: step + 1 - (scaler?.skippedSteps ?? 0), lr: Float(lr), clip: clip)
        }
        let t1 = MPIClock.now()
        let ms = (t1 - t0) * 1000
        return StepMetrics(step: step + 1, loss: reduced[0] / Double(tokensPerStep), val_loss: nil, lr: lr,
                           grad_norm: norm, tokens_per_s: Double(tokensPerStep) / (t1 - t0), ms_per_step: ms,
                           ms_forward: fwd * 1000, ms_backward: bwd * 1000,
                           ms_comm_wait: strategy.commWaitSeconds * 1000, ms_optimizer: (t1 - o0) * 1000,
                           world_size: comm.size, params: model.layout.count, sent_elements: comm.sentElements,
                           sent_bytes: comm.sentBytes,
                           loss_scale: scaler.map { _ in scale }, skipped: skipped)
    }

    /// Mean validation loss over `evalSteps` fixed global batches, spread over the ranks.
    public func evaluate(batchOffset: Int) throws -> Double {
        let T = config.blockSize
        var sum = 0.0
        for j in 0..<config.evalSteps {
            var i = 0
            while i < myIndices.count {
                let chunk = myIndices[i..<min(i + micro, myIndices.count)]
                i += chunk.count
                sampler.fill(x: x, y: y, shard: data.val, split: .val, batch: batchOffset + j, indices: chunk)
                sum += model.forward(tokens: x, targets: y, B: chunk.count, T: T, params: strategy.provider).sum
            }
        }
        var r = [sum]
        try comm.allReduce(&r, label: "all-reduce of validation loss")
        return r[0] / Double(config.evalSteps * tokensPerStep)
    }

    /// Saves the full training state after `completedSteps` optimizer steps.
    func saveCheckpoint(completedSteps: Int) throws {
        let enc = JSONEncoder()
        let cfg = try JSONDecoder().decode([String: JSONValue].self, from: enc.encode(config))
        let g = model.config
        var shape: [String: JSONValue] = [:]
        shape["nLayer"] = .unsigned(UInt64(g.nLayer))
        shape["nHead"] = .unsigned(UInt64(g.nHead))
        shape["nEmbd"] = .unsigned(UInt64(g.nEmbd))
        shape["blockSize"] = .unsigned(UInt64(g.blockSize))
        shape["vocabSize"] = .unsigned(UInt64(g.vocabSize))
        shape["bias"] = .bool(g.bias)
        let tensors = model.layout.tensors.map { TensorEntry(name: $0.name, shape: $0.shape, dtype: "f32", offset: $0.offset) }
        var manifest = Manifest(
            formatVersion: Manifest.currentVersion, step: completedSteps, config: cfg,
            model: shape,
            worldSize: comm.size, zeroStage: config.zero, precision: config.precision, parameterCount: model.layout.count,
            dataPosition: completedSteps, seed: config.seed, scheduleStep: completedSteps,
            adamStep: completedSteps - (scaler?.skippedSteps ?? 0),
            lossScale: scaler?.scale, lossScaleGoodSteps: scaler?.goodSteps, skippedSteps: scaler?.skippedSteps ?? 0,
            compressionLevel: config.ckptLevel,
            tensors: tensors, files: [])
        let enc2 = JSONEncoder(); enc2.outputFormatting = [.sortedKeys]
        manifest.tokenizer = String(decoding: try enc2.encode(data.tokenizer), as: UTF8.self)
        try checkpointer.save(manifest: manifest, strategy: strategy)
    }

    /// Writes the trained weights (rank 0) and returns the path.
    func saveModel(to path: String) throws -> String {
        let n = model.layout.count
        let buf = FloatBuffer(count: n)
        try strategy.gatherParameters(into: buf.pointer)
        if isCoordinator {
            try ModelFile(config: model.config, tokenizer: data.tokenizer, parameters: buf).write(to: path)
        }
        return path
    }
}

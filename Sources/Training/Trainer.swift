import Checkpoint
import Comm
import Corpus
import Foundation
import Kernels
import Model
import Optim
import Parallel
import Scaling
import Settings

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
/// are needed beyond the collectives of each step. This file builds the job (model,
/// strategy, initial or resumed state); `Trainer+Loop.swift` runs it and `RunReporter`
/// reports it.
public final class Trainer {
    public private(set) var config: TrainConfig
    let comm: Communicator
    let data: Dataset
    public let model: GPT
    /// Holds and synchronises what trains: the model's parameters, or with LoRA its adapters.
    public let strategy: TrainingStrategy
    /// LoRA's frozen base (nil when the whole model trains).
    public let frozen: FrozenParameters?
    /// Local SGD's outer loop (`--sync-every`); the strategy is then each worker's own (a
    /// rank's, or its group's).
    public let localSGD: LocalSGD?
    /// The ranks the strategy runs over, and the same positions in the other groups (hybrid
    /// sharding's replicas, or local SGD's workers).
    public let groups: ShardGroups
    let sampler: BatchSampler
    /// `--eval-choices`' questions, tokenized with the data's tokenizer.
    let choiceQuestions: [ChoiceExample]?
    let schedule: LRSchedule
    /// Where progress lines go (rank 0 only); tests silence it.
    public var log: (String) -> Void = { FileHandle.standardOutput.write(Data(($0 + "\n").utf8)) }

    var isCoordinator: Bool { comm.rank == 0 }
    /// Indices of the global batch this rank owns, taken in micro-batches of `micro`.
    let myIndices: [Int]
    let micro: Int
    let x: UnsafeMutablePointer<Int32>, y: UnsafeMutablePointer<Int32>
    /// Dropout keys of a micro-batch's sequences (from their global sample index).
    let keys: UnsafeMutablePointer<UInt64>
    /// fp16's dynamic loss scaler (restored on resume).
    public internal(set) var scaler: DynamicLossScaler?
    /// fp32/bf16: steps skipped because a loss or gradient was not finite (restored on resume),
    /// and how many of the latest steps in a row were.
    var guardSkipped = 0, badInARow = 0
    /// Steps whose update was skipped, by the fp16 scaler or the non-finite guard.
    var skippedSteps: Int { scaler?.skippedSteps ?? guardSkipped }
    /// Set when some rank received a stop signal during the last step.
    var stopRequested: Int32 = 0
    /// `--keep-best`: the lowest validation loss whose weights `RUN/best/` holds.
    var bestValLoss = Double.infinity
    /// First step to run (> 0 after a resume).
    public private(set) var startStep = 0
    var checkpointer: Checkpointer!
    /// GEMM rate of this rank's threads in the run's precision (for MFU): the best of a
    /// measurement at start and one every `peakRemeasureSeconds` between steps, since a VM's
    /// speed wanders and a single measurement can catch a slow moment (MFU over 100%); and
    /// the model FLOPs of one token.
    var peakGFLOPS: Double
    let flopsPerToken: Double
    /// When the GEMM rate was last measured.
    var peakMeasuredAt: Double
    /// Seconds between measurements of the GEMM rate (each about 20 ms on 2 threads).
    static let peakRemeasureSeconds = 60.0
    /// How the GEMM library was chosen (printed at start).
    let gemmNote: String

    /// Loads the data, builds the model and the strategy, and initialises parameters.
    public convenience init(config: TrainConfig, comm: Communicator) throws {
        try self.init(config: config, comm: comm,
                      dataset: try Dataset.open(config.data, vocabSize: config.vocabSize > 0 ? config.vocabSize : nil))
    }

    /// Builds a trainer over an in-memory dataset (benchmarks use synthetic tokens).
    public init(config: TrainConfig, comm: Communicator, dataset: Dataset) throws {
        // Every rank checks the same config, so an invalid one stops all of them alike rather
        // than leaving some in a collective the others never reach.
        try config.validate(worldSize: comm.size)
        // The GEMM library first: a run records the one it chose, so a resume computes alike.
        var config = config
        let (backend, how) = try GemmChoice.resolve(config.gemm, C: config.nEmbd, V: dataset.vocabSize, comm: comm)
        Gemm.backend = backend
        config.gemm = backend == .onednn ? .onednn : .openblas
        gemmNote = how
        self.config = config
        self.comm = comm
        data = dataset
        if let p = dataset.packing {
            guard p.blockSize == config.blockSize else {
                throw ConfigError(flag: "--block-size", problem: "is \(config.blockSize) but \(config.data) is packed in rows of \(p.blockSize) tokens",
                                  fix: "train with --block-size \(p.blockSize), or prepare the examples again with --block-size \(config.blockSize)")
            }
            guard config.attention == .fused else {
                throw ConfigError(flag: "--attention", problem: "is unfused, and packed examples need attention that stops at each example's start",
                                  fix: "drop --attention unfused (the fused kernel keeps packed examples apart)")
            }
        }
        sampler = BatchSampler(seed: config.seed, blockSize: config.blockSize, batchSize: config.batchSize,
                               mode: config.sampling, rowAligned: dataset.packing != nil)
        // Weights to start from: the run takes their vocabulary (the data's ids must fit it).
        // LoRA's base is read on resume too: checkpoints hold only the adapters.
        let lora = config.lora
        var initial = (config.resume.isEmpty || lora != nil) && !config.initFrom.isEmpty ? try InitialWeights.load(config.initFrom) : nil
        if let initial, dataset.vocabSize > initial.config.vocabSize {
            throw ConfigError(flag: "--init-from", problem: "the data's vocabulary (\(dataset.vocabSize)) is larger than the weights' (\(initial.config.vocabSize))",
                              fix: "prepare the data with the model's tokenizer")
        }
        let gpt = try Self.modelShape(config: config, data: dataset, sampler: sampler, vocabSize: initial?.config.vocabSize)
        choiceQuestions = try Self.choiceQuestions(config: config, data: dataset, model: gpt)
        model = GPT(config: gpt, precision: config.precision, recompute: config.recompute, attention: config.attention,
                    dropout: Float(config.dropout), lora: lora)
        model.documentSeparator = dataset.packing.map { Int32($0.separator) }
        schedule = config.schedule
        let adam = AdamW(beta1: Float(config.beta1), beta2: Float(config.beta2), eps: 1e-8,
                         weightDecay: Float(config.weightDecay))
        do { groups = try ShardGroups(world: comm, group: config.workerGroup) } catch let e as ShardGroupError {
            throw ConfigError(flag: "--shard-group", problem: "is \(config.shardGroup): \(e)",
                              fix: "start the same number of ranks on every node, or use --shard-group N with N dividing the ranks")
        }
        // Local SGD: every rank (or group, training with DDP inside) is a worker of its own
        // between synchronisations, which average over the workers.
        let local = config.syncEvery > 0
        strategy = makeStrategy(stage: config.zero, layout: model.adapterLayout ?? model.layout,
                                comm: local && groups.shard.size == 1 ? LocalCommunicator() : groups.shard, adam: adam,
                                bucketBytes: Int(config.bucketMB * 1_048_576), reduce: config.effectiveReduceDtype,
                                compute: config.precision, replicas: local ? nil : groups.replicas,
                                powerSGD: config.powerSGDRank > 0 ? (config.powerSGDRank, config.powerSGDStart) : nil)
        localSGD = local
            ? LocalSGD(count: strategy.layout.count, comm: groups.replicas ?? LocalCommunicator(), outerLR: Float(config.outerLR),
                       momentum: Float(config.outerMomentum), dtype: config.syncDtype) : nil
        myIndices = Array(stride(from: comm.rank, to: config.batchSize, by: comm.size))
        micro = config.microBatchSize(worldSize: comm.size)
        x = .allocate(capacity: micro * config.blockSize)
        y = .allocate(capacity: micro * config.blockSize)
        keys = .allocate(capacity: micro)
        peakGFLOPS = Self.measurePeak(config.precision)
        peakMeasuredAt = MPIClock.now()
        // A frozen base costs 4 FLOPs per parameter and token (forward, and backward's input
        // gradients only); what trains costs 6.
        let computed = lora == nil ? Double(model.layout.count)
            : Double(model.layout.count) * 4 / 6 + Double(strategy.layout.count)
        flopsPerToken = Compute.flopsPerToken(params: computed, nLayer: gpt.nLayer, nEmbd: gpt.nEmbd, seq: config.blockSize)
        var resumed: CheckpointReader.VectorReader?
        if let lora, let initial {
            let base = try InitialWeights.parameters(initial, for: gpt)
            let checksum = InitialWeights.checksum(base)
            if !config.resume.isEmpty && config.loraBase != checksum {
                throw ConfigError(flag: "--init-from", problem: "\(config.initFrom) has weights checksum \(checksum), but the adapters in "
                                  + "\(config.resume) were trained on a base with checksum \(config.loraBase)",
                                  fix: "pass the base the adapters were trained on (adapters only fit their own base)")
            }
            self.config.loraBase = checksum
            frozen = FrozenParameters(layout: model.layout, stage: config.zero, comm: groups.shard, precision: config.precision)
            frozen!.load(from: base.pointer)
            if config.resume.isEmpty {
                let layout = strategy.layout, seed = config.seed
                startFresh { dest, range in lora.initialize(dest, elements: range, layout: layout, seed: seed) }
            } else {
                resumed = try resume(from: URL(fileURLWithPath: config.resume))
            }
        } else if let initial {
            frozen = nil
            let values = try InitialWeights.parameters(initial, for: gpt)
            startFresh { dest, range in dest.update(from: values.pointer + range.lowerBound, count: range.count) }
        } else if config.resume.isEmpty {
            frozen = nil
            let layout = model.layout, seed = config.seed
            startFresh { dest, range in GPT.initialize(dest, elements: range, layout: layout, config: gpt, seed: seed) }
        } else {
            frozen = nil
            resumed = try resume(from: URL(fileURLWithPath: config.resume))
        }
        if let localSGD {
            localSGD.start(from: localWorker.params.pointer)
            if let resumed { try resumeLocalSGD(localSGD, reader: resumed) }
        }
        if let powerSGD = (strategy as? DataParallel)?.powerSGD {
            powerSGD.step = startStep
            if let resumed { try resumePowerSGD(powerSGD, reader: resumed) }
        }
        if config.precision == .fp16 && scaler == nil { scaler = DynamicLossScaler() }
        // The weights read for the start are in the strategy (or the frozen base) now: let
        // them go before the activations arrive, so the two never add up.
        initial = nil
        model.reserve(B: micro, T: config.blockSize)
    }

    deinit { x.deallocate(); y.deallocate(); keys.deallocate() }

    /// `--eval-choices`' questions in the data's tokenizer, checked against the model's
    /// context and vocabulary (nil without the flag). `train` checks them before it writes
    /// anything.
    public static func choiceQuestions(config: TrainConfig, data: Dataset, model: GPTConfig) throws -> [ChoiceExample]? {
        guard !config.evalChoices.isEmpty else { return nil }
        guard let tokenizer = data.tokenizer else {
            throw ConfigError(flag: "--eval-choices", problem: "needs the data's tokenizer to encode the questions, and \(config.data) has no tokenizer.json",
                              fix: "train on data from `tessera prepare`, or drop --eval-choices and score a model.bin later with `tessera eval --choices`")
        }
        guard FileManager.default.isReadableFile(atPath: config.evalChoices) else {
            throw ConfigError(flag: "--eval-choices", problem: "\(config.evalChoices) cannot be read",
                              fix: "pass an existing JSON Lines file of questions (a resumed run takes its path from the run: "
                                + "put the file back, pass --eval-choices with its new path, or --eval-choices '' to stop scoring them)")
        }
        let questions = try ChoiceTask.load(config.evalChoices, tokenizer: tokenizer,
                                            limit: config.evalChoicesLimit > 0 ? config.evalChoicesLimit : nil, rules: config.evalChoicesRules)
        try MultipleChoice.check(questions, blockSize: model.blockSize, vocabSize: model.vocabSize, flag: "--eval-choices")
        return questions
    }

    /// The model shape for the data's vocabulary, after checking the data can feed it.
    private static func modelShape(config: TrainConfig, data: Dataset, sampler: BatchSampler, vocabSize: Int?) throws -> GPTConfig {
        // A mixture draws from each dataset alone: each must hold a window.
        for (name, split) in [("train", data.train), ("val", data.val)] {
            for part in split.parts where sampler.windows(in: part) == 0 {
                let longest = part.shards.max { $0.count < $1.count }!
                throw DataError.tooShort(path: "\(config.data) (\(name) split, e.g. \(longest.path))", tokens: longest.count,
                                         needed: config.blockSize + 1)
            }
        }
        let gpt = config.model(vocabSize: vocabSize ?? data.vocabSize)
        do { try gpt.validate() } catch { throw ConfigError(flag: "model", problem: "\(error)", fix: "adjust the model flags") }
        return gpt
    }

    /// Step 0's state: `parameters(dest, range)` writes the parameter elements `range` that
    /// this rank's strategy holds (a ZeRO-3 rank its shard), so no rank builds a vector it does
    /// not keep: from the seed, the values a full initialisation gives them
    /// (`GPT.initialize(_:elements:)`, the same on every replica without a broadcast), or
    /// from `--init-from`'s weights. AdamW's moments start at zero.
    private func startFresh(parameters: (UnsafeMutablePointer<Float>, Range<Int>) -> Void) {
        strategy.loadState { vector, range, dest in
            if vector == .params { parameters(dest, range) } else { dest.update(repeating: 0, count: range.count) }
        }
    }

    /// Loads a verified checkpoint's state, position and loss scaler; returns its reader.
    private func resume(from dir: URL) throws -> CheckpointReader.VectorReader {
        let manifest = try CheckpointReader.manifest(directory: dir)
        let reader = try Checkpointer.load(directory: dir, manifest: manifest, layout: strategy.layout, strategy: strategy)
        startStep = manifest.step
        guardSkipped = config.precision == .fp16 ? 0 : manifest.skippedSteps
        if config.precision == .fp16 {
            scaler = DynamicLossScaler(scale: manifest.lossScale ?? 65_536, goodSteps: manifest.lossScaleGoodSteps ?? 0,
                                       skippedSteps: manifest.skippedSteps)
        }
        return reader
    }

    /// Local SGD's own state after `resume` loaded θ and the mean inner moments (through
    /// `reader`): the outer momentum, and at the world size that saved it each rank's own inner
    /// moments.
    private func resumeLocalSGD(_ local: LocalSGD, reader: CheckpointReader.VectorReader) throws {
        let manifest = reader.manifest, psi = strategy.layout.count
        guard reader.holds(.outerMomentum) else {
            throw ConfigError(flag: "--resume", problem: "\(config.resume) was not written by a local SGD run (no outer momentum)",
                              fix: "resume it without --sync-every, or start the local SGD run from its weights with --init-from")
        }
        try reader.read(.outerMomentum, range: 0..<psi, into: local.velocity.pointer)
        guard manifest.worldSize == comm.size, reader.holds(.localAdamM) else {
            if isCoordinator {
                log("tessera: local SGD resumed on \(comm.size) rank(s) from \(manifest.worldSize): every worker starts from the mean inner AdamW moments")
            }
            return
        }
        try reader.read(.localAdamM, range: 0..<psi, into: localWorker.m.pointer, rank: comm.rank)
        try reader.read(.localAdamV, range: 0..<psi, into: localWorker.v.pointer, rank: comm.rank)
    }

    /// PowerSGD's state after `resume`: Q (whatever the world size), and at the world size
    /// that saved it each rank's error feedback; without them the compressor starts afresh.
    private func resumePowerSGD(_ powerSGD: PowerSGD, reader: CheckpointReader.VectorReader) throws {
        let psi = strategy.layout.count
        guard reader.holds(.powerSGDQ) else {
            if isCoordinator { log("tessera: \(config.resume) holds no PowerSGD state: Q starts from its seed, error feedback from zero") }
            return
        }
        try powerSGD.loadQ { range, dest in try reader.read(.powerSGDQ, range: range, into: dest) }
        guard reader.manifest.worldSize == comm.size, reader.holds(.powerSGDError) else {
            if isCoordinator { log("tessera: PowerSGD resumed on \(comm.size) rank(s) from \(reader.manifest.worldSize): error feedback starts from zero") }
            return
        }
        try reader.read(.powerSGDError, range: 0..<psi, into: powerSGD.error.pointer, rank: comm.rank)
    }

    /// Local SGD's worker: the strategy, a `DataParallel` over a world of one (or its group).
    var localWorker: DataParallel {
        guard let worker = strategy as? DataParallel else { preconditionFailure("local SGD's workers are DataParallel") }
        return worker
    }

    /// What the model reads its parameters from (with LoRA: the frozen base), and its
    /// adapters' provider (LoRA only: the strategy).
    var modelParameters: ParameterProvider { frozen ?? strategy.provider }
    var modelAdapters: ParameterProvider? { frozen == nil ? nil : strategy.provider }

    /// Total tokens of one global batch.
    var tokensPerStep: Int { config.batchSize * config.blockSize }
}

// MARK: - The GEMM rate for MFU

extension Trainer {
    /// Best-of-three GEMM rate at 1024³ in the run's precision.
    static func measurePeak(_ precision: Precision) -> Double { Benchmark.peakGFLOPS(for: precision, n: 1024, reps: 3) }

    /// Measures the GEMM rate again if `peakRemeasureSeconds` have passed, keeping the best.
    func refreshPeak() {
        let now = MPIClock.now()
        guard now - peakMeasuredAt >= Self.peakRemeasureSeconds else { return }
        peakGFLOPS = max(peakGFLOPS, Self.measurePeak(config.precision))
        peakMeasuredAt = MPIClock.now()
    }
}

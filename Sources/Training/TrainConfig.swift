import Corpus
import Foundation
import Model
import Optim
import Settings

// MARK: - TrainConfig

/// Everything that defines a training run. Flags map 1:1 to fields (nanoGPT names with
/// dashes); a JSON file with the same keys can supply them too. The effective config is
/// written to `RUN/config.json`.
public struct TrainConfig: Codable, Equatable, Sendable {
    // Model
    public var nLayer = 4, nHead = 4, nEmbd = 128, blockSize = 64
    public var bias = true
    public var dropout = 0.0
    // Optimisation
    public var batchSize = 12
    public var microBatch = 0            // 0: as large as the rank's share allows
    public var maxSteps = 2000
    public var lr = 1e-3, minLR = 1e-4
    public var warmupSteps = 100
    /// The decay after warm-up; `lrDecaySteps` is where it reaches `minLR` (nanoGPT's
    /// `lr_decay_iters`; 0: `maxSteps`).
    public var lrSchedule = LRScheduleKind.cosine, lrDecaySteps = 0
    /// `wsd`: steps of cooldown ending at the decay's end (0: a fifth of it, llm.c's), and
    /// their shape.
    public var cooldownSteps = 0, cooldownShape = CooldownShape.sqrt
    public var beta1 = 0.9, beta2 = 0.99
    public var weightDecay = 0.1
    public var gradClip = 1.0
    /// Consecutive steps with a non-finite loss or gradient (skipped) that stop the job.
    public var maxBadSteps = 10
    /// Compare replicated parameters across ranks every N steps (0: never).
    public var checkReplicas = 200
    /// Memory a node offers to this job ("": what the kernel reports available).
    public var memoryLimit = ""
    // Evaluation and logging
    public var evalEvery = 250
    public var evalSteps = 20
    /// Multiple-choice questions scored at every evaluation (`--eval-choices`, e.g.
    /// HellaSwag's JSON Lines; "" for none), and how many of them (0: all).
    public var evalChoices = "", evalChoicesLimit = 0
    /// Their conventions (`ChoiceRules`).
    public var evalChoicesRules = ChoiceRules.llmc
    /// Write TensorBoard event files to `RUN/tb/` (rank 0).
    public var tensorboard = true
    public var logEvery = 10
    /// Steps to profile, "FROM-TO" (1-based, inclusive) or "STEP"; "" for none. Their spans
    /// go to `RUN/profile/steps-FROM-TO.trace.json` (Chrome's trace-event format).
    public var profile = ""
    // Run
    public var seed: UInt64 = 1337
    public var data = ""
    /// Ids the data uses, for shards that do not say (llm.c's, nanoGPT's); 0: from the data.
    public var vocabSize = 0
    /// How training windows are drawn: random starts (nanoGPT) or one pass after another (llm.c).
    public var sampling = Sampling.random
    public var out = "runs/default"
    public var threads = 0               // 0: the rank's share of the cores
    /// The library of the large fp32 GEMMs; a run records the one `auto` chose.
    public var gemm = GemmPolicy.auto
    // Parallelism
    public var zero = ZeroStage.ddp
    /// Hybrid sharding: the ZeRO stage shards within groups of ranks (a node's, or blocks of
    /// N) and gradients are all-reduced across groups; `world` is plain ZeRO.
    public var shardGroup = ShardGroup.world
    /// Local SGD (DiLoCo): ranks train alone and synchronise every N steps (0: every step,
    /// synchronous data parallelism).
    public var syncEvery = 0
    /// DiLoCo's outer optimizer: SGD with Nesterov momentum on the averaged deltas.
    public var outerLR = 0.7, outerMomentum = 0.9
    /// How the deltas travel.
    public var syncDtype = SyncDType.bf16
    /// PowerSGD: DDP's gradients travel as rank-r factors (0: exact all-reduce), from step
    /// `powerSGDStart` on (the first steps all-reduce exactly, as PyTorch's hook does).
    public var powerSGDRank = 0, powerSGDStart = 10
    public var bucketMB = 25.0
    public var commTimeout = 300.0
    // Checkpoints
    public var saveEvery = 0             // 0: only at the end
    public var keepLast = 0              // 0: keep all
    public var asyncSave = false
    /// Keep the weights of the evaluation with the lowest validation loss in
    /// `RUN/best/model.bin` (nanoGPT's `always_save_checkpoint = False`).
    public var keepBest = false
    public var ckptLevel = 3
    public var resume = ""               // resolved checkpoint directory, "" for a fresh run
    /// Weights a fresh run starts from (step 0, new optimizer and schedule); "" for random.
    /// With LoRA, the frozen base (read again on resume).
    public var initFrom = ""
    // LoRA
    /// Adapter rank (0: no LoRA, the whole model trains).
    public var loraRank = 0
    /// Adapter scale numerator (updates × alpha / rank); PEFT's default.
    public var loraAlpha = 8.0
    /// Maps of every block that carry adapters: attn, attn-proj, mlp, mlp-proj.
    public var loraTargets = "attn"
    /// Checksum of the frozen base's weights (written by the trainer; a resume must match it).
    public var loraBase = ""
    // Precision
    public var precision = Precision.fp32
    /// Activations backward recomputes instead of keeping.
    public var recompute = Recompute.none
    /// How causal attention is computed (fused: O(T) memory per head).
    public var attention = AttentionKernel.fused
    public var reduceDtype: Precision?   // gradient wire format; nil: the compute precision
    /// Testing aid: "STEP:RANK" writes +inf into that rank's gradient at that (1-based) step.
    public var debugInjectInf = ""
    /// Testing aid: "FROM-TO:RANK" (or "STEP:RANK") makes that rank's loss and a gradient NaN
    /// at those (1-based) steps.
    public var debugInjectNaN = ""
    /// Testing aid: "STEP:RANK" flips one bit of that rank's replicated parameters after that
    /// (1-based) step's update.
    public var debugFlipBit = ""
    /// Testing aid: the background checkpoint writer waits this long before writing.
    public var debugSlowSaveMs = 0

    public init() {}

    // MARK: Decoding with defaults

    enum CodingKeys: String, CodingKey, CaseIterable {
        case nLayer, nHead, nEmbd, blockSize, bias, dropout, batchSize, microBatch, maxSteps, lr, minLR,
             warmupSteps, lrSchedule, lrDecaySteps, cooldownSteps, cooldownShape, beta1, beta2, weightDecay, gradClip, maxBadSteps, checkReplicas, memoryLimit, evalEvery, evalSteps, evalChoices, evalChoicesLimit, evalChoicesRules, logEvery, tensorboard, profile, seed, data, vocabSize, sampling, out,
             threads, gemm, zero, shardGroup, syncEvery, outerLR, outerMomentum, syncDtype, powerSGDRank, powerSGDStart, bucketMB, commTimeout, saveEvery, keepLast, asyncSave, keepBest, ckptLevel, resume, initFrom,
             loraRank, loraAlpha, loraTargets, loraBase,
             precision, recompute, attention, reduceDtype, debugInjectInf, debugInjectNaN, debugFlipBit, debugSlowSaveMs
    }

    /// Keys missing from a JSON config keep their defaults; unknown keys are an error (a typo
    /// would otherwise be silently ignored).
    public init(from decoder: Decoder) throws {
        self.init()
        struct AnyKey: CodingKey {
            var stringValue: String; var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }
        let all = try decoder.container(keyedBy: AnyKey.self)
        let known = Set(CodingKeys.allCases.map(\.rawValue))
        if let unknown = all.allKeys.first(where: { !known.contains($0.stringValue) }) {
            throw ConfigError(flag: "--config", problem: "has unknown key '\(unknown.stringValue)'",
                              fix: "use the keys of a run's config.json (\(known.sorted().joined(separator: ", ")))")
        }
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func get<T: Decodable>(_ k: CodingKeys, _ v: inout T) throws { if let x = try c.decodeIfPresent(T.self, forKey: k) { v = x } }
        try get(.nLayer, &nLayer); try get(.nHead, &nHead); try get(.nEmbd, &nEmbd); try get(.blockSize, &blockSize)
        try get(.bias, &bias); try get(.dropout, &dropout); try get(.batchSize, &batchSize)
        try get(.microBatch, &microBatch); try get(.maxSteps, &maxSteps); try get(.lr, &lr); try get(.minLR, &minLR)
        try get(.warmupSteps, &warmupSteps); try get(.beta1, &beta1); try get(.beta2, &beta2)
        try get(.lrSchedule, &lrSchedule); try get(.lrDecaySteps, &lrDecaySteps)
        try get(.cooldownSteps, &cooldownSteps); try get(.cooldownShape, &cooldownShape)
        try get(.weightDecay, &weightDecay); try get(.gradClip, &gradClip); try get(.evalEvery, &evalEvery)
        try get(.evalSteps, &evalSteps); try get(.evalChoices, &evalChoices); try get(.evalChoicesLimit, &evalChoicesLimit)
        try get(.evalChoicesRules, &evalChoicesRules)
        try get(.logEvery, &logEvery); try get(.tensorboard, &tensorboard); try get(.profile, &profile); try get(.seed, &seed); try get(.data, &data)
        try get(.vocabSize, &vocabSize); try get(.sampling, &sampling)
        try get(.out, &out); try get(.threads, &threads); try get(.gemm, &gemm); try get(.zero, &zero); try get(.shardGroup, &shardGroup); try get(.bucketMB, &bucketMB)
        try get(.syncEvery, &syncEvery); try get(.outerLR, &outerLR); try get(.outerMomentum, &outerMomentum); try get(.syncDtype, &syncDtype)
        try get(.powerSGDRank, &powerSGDRank); try get(.powerSGDStart, &powerSGDStart)
        try get(.commTimeout, &commTimeout)
        try get(.saveEvery, &saveEvery); try get(.keepLast, &keepLast); try get(.asyncSave, &asyncSave); try get(.keepBest, &keepBest)
        try get(.ckptLevel, &ckptLevel); try get(.resume, &resume); try get(.initFrom, &initFrom)
        try get(.loraRank, &loraRank); try get(.loraAlpha, &loraAlpha); try get(.loraTargets, &loraTargets)
        try get(.loraBase, &loraBase)
        try get(.precision, &precision); try get(.recompute, &recompute); try get(.attention, &attention); try get(.debugInjectInf, &debugInjectInf); try get(.debugInjectNaN, &debugInjectNaN)
        try get(.maxBadSteps, &maxBadSteps); try get(.checkReplicas, &checkReplicas); try get(.debugFlipBit, &debugFlipBit)
        try get(.debugSlowSaveMs, &debugSlowSaveMs); try get(.memoryLimit, &memoryLimit)
        // Older runs wrote "" for "same as the compute precision".
        if let r = try c.decodeIfPresent(String.self, forKey: .reduceDtype), !r.isEmpty {
            guard let p = Precision(rawValue: r) else {
                throw ConfigError(flag: "--config", problem: "has reduceDtype '\(r)'", fix: "use fp32, bf16 or fp16")
            }
            reduceDtype = p
        }
    }

    /// The learning rate of every step.
    public var schedule: LRSchedule {
        let end = lrDecaySteps > 0 ? lrDecaySteps : maxSteps
        let cooldown = cooldownSteps > 0 ? cooldownSteps : Int((Double(end) * 0.2).rounded())
        return LRSchedule(kind: lrSchedule, maxLR: lr, minLR: minLR, warmupSteps: warmupSteps, decaySteps: end,
                          cooldownSteps: cooldown, cooldownShape: cooldownShape)
    }

    /// The model shape for a vocabulary.
    public func model(vocabSize: Int) -> GPTConfig {
        GPTConfig(nLayer: nLayer, nHead: nHead, nEmbd: nEmbd, blockSize: blockSize, vocabSize: vocabSize, bias: bias)
    }

    /// The run's adapters (nil without LoRA, or with an unparsable target list, which
    /// `validate` refuses).
    public var lora: LoRAConfig? {
        guard loraRank != 0, let targets = try? LoRATarget.list(loraTargets) else { return nil }
        return LoRAConfig(rank: loraRank, alpha: loraAlpha, targets: targets)
    }

    /// The format gradients are communicated in: `reduceDtype`, else the compute precision.
    public var effectiveReduceDtype: Precision { reduceDtype ?? precision }

    /// Parsed `debugInjectInf`.
    public var injectAt: (step: Int, rank: Int)? { Self.stepAndRank(debugInjectInf) }
    /// Parsed `debugFlipBit`.
    public var flipAt: (step: Int, rank: Int)? { Self.stepAndRank(debugFlipBit) }

    static func stepAndRank(_ text: String) -> (step: Int, rank: Int)? {
        let parts = text.split(separator: ":").compactMap { Int($0) }
        return parts.count == 2 ? (parts[0], parts[1]) : nil
    }

    /// Sequences per forward/backward on `n` ranks: `microBatch`, at most a rank's share of
    /// the global batch, which is also the default.
    public func microBatchSize(worldSize n: Int) -> Int {
        let share = (batchSize + n - 1) / n
        return max(1, microBatch > 0 ? min(microBatch, share) : share)
    }

    /// Micro-steps each rank takes per optimizer step: rank r trains sequences r, r+N, … of the
    /// global batch, `microBatch` (or its whole share) at a time.
    public func microSteps(worldSize n: Int) -> [Int] {
        let micro = microBatchSize(worldSize: n)
        return (0..<n).map { r in (max(0, batchSize - r + n - 1) / n + micro - 1) / micro }
    }

    /// Parsed `profile`: the 1-based steps of the window.
    public var profileSteps: ClosedRange<Int>? {
        let bounds = profile.split(separator: "-", omittingEmptySubsequences: false).map { Int($0) }
        guard (1...2).contains(bounds.count), let first = bounds[0], let last = bounds.last!, first >= 1, first <= last else { return nil }
        return first...last
    }

    /// Parsed `debugInjectNaN`: the steps and the rank.
    public var injectNaN: (steps: ClosedRange<Int>, rank: Int)? {
        let parts = debugInjectNaN.split(separator: ":")
        guard parts.count == 2, let rank = Int(parts[1]) else { return nil }
        let bounds = parts[0].split(separator: "-").compactMap { Int($0) }
        guard (1...2).contains(bounds.count), bounds[0] <= bounds.last! else { return nil }
        return (bounds[0]...bounds.last!, rank)
    }

    /// Whether two configs describe the same model (what a checkpoint's parameters mean).
    public func sameModel(as o: TrainConfig) -> Bool {
        nLayer == o.nLayer && nHead == o.nHead && nEmbd == o.nEmbd && blockSize == o.blockSize && bias == o.bias
    }

    /// Checks everything that does not need the data; errors name the flag and the fix.
    public func validate(worldSize: Int = 1) throws(ConfigError) {
        try need(nLayer >= 1, "--n-layer", "is \(nLayer)", "use at least 1")
        try need(nHead >= 1, "--n-head", "is \(nHead)", "use at least 1")
        try need(nEmbd >= 1 && nEmbd % nHead == 0, "--n-embd",
                 "\(nEmbd) is not divisible by n_head \(nHead)", "choose n_embd a multiple of n_head")
        try need(blockSize >= 1, "--block-size", "is \(blockSize)", "use at least 1")
        try need(dropout >= 0 && dropout < 1, "--dropout", "is \(dropout)", "use a probability in [0, 1), e.g. 0.1 or 0.2")
        try need(dropout == 0 || attention == .fused, "--dropout", "is \(dropout) with --attention unfused",
                 "dropout of attention probabilities is implemented in the fused kernel: drop --attention unfused")
        try need(batchSize >= 1, "--batch-size", "is \(batchSize)", "use at least 1")
        try need(microBatch >= 0, "--micro-batch", "is \(microBatch)", "use 0 (automatic) or a positive size")
        try need(maxSteps >= 0, "--max-steps", "is \(maxSteps)", "use 0 or more")
        try need(lr > 0 && lr.isFinite, "--lr", "is \(lr)", "use a positive learning rate")
        try need(minLR >= 0 && minLR <= lr, "--min-lr", "is \(minLR)", "use a value in [0, lr]")
        try need(warmupSteps >= 0, "--warmup-steps", "is \(warmupSteps)", "use 0 or more")
        try validateSchedule()
        try need(beta1 >= 0 && beta1 < 1, "--beta1", "is \(beta1)", "use a value in [0, 1)")
        try need(beta2 >= 0 && beta2 < 1, "--beta2", "is \(beta2)", "use a value in [0, 1)")
        try need(weightDecay >= 0, "--weight-decay", "is \(weightDecay)", "use 0 or more")
        try need(gradClip >= 0, "--grad-clip", "is \(gradClip)", "use 0 (off) or a positive norm")
        try need(evalEvery >= 0, "--eval-every", "is \(evalEvery)", "use 0 (only at the end) or more")
        // An evaluation of billions of batches would never end: a bound far above any real use.
        try need(evalSteps >= 1 && evalSteps <= 1_000_000, "--eval-steps", "is \(evalSteps)", "use 1 to 1000000 batches per evaluation")
        try need(evalChoicesLimit >= 0, "--eval-choices-limit", "is \(evalChoicesLimit)", "use 0 (every question) or more")
        try need(logEvery >= 1, "--log-every", "is \(logEvery)", "use at least 1")
        try need(profile.isEmpty || profileSteps != nil, "--profile", "is '\(profile)'",
                 "use FROM-TO (1-based steps, e.g. 5-8) or one STEP")
        // A window's spans are kept in memory until it closes (a few hundred per step).
        try need(profileSteps.map { $0.count <= 1000 } ?? true, "--profile", "spans \(profileSteps?.count ?? 0) steps",
                 "profile at most 1000 steps at a time (a few steps show a steady state)")
        try need(!data.isEmpty, "--data", "is missing", "pass a directory written by `tessera prepare`")
        try need(vocabSize >= 0, "--vocab-size", "is \(vocabSize)", "use the number of ids the data was tokenized with")
        try need(commTimeout > 0, "--comm-timeout", "is \(commTimeout)", "use a positive number of seconds")
        try need(saveEvery >= 0, "--save-every", "is \(saveEvery)", "use 0 (only at the end) or more")
        try need(keepLast >= 0, "--keep-last", "is \(keepLast)", "use 0 (keep all) or more")
        try need((1...19).contains(ckptLevel), "--ckpt-level", "is \(ckptLevel)", "use a zstd level from 1 to 19")
        try need(debugInjectInf.isEmpty || injectAt != nil, "--debug-inject-inf", "is \(debugInjectInf)", "use STEP:RANK")
        try need(debugInjectNaN.isEmpty || injectNaN != nil, "--debug-inject-nan", "is \(debugInjectNaN)", "use FROM-TO:RANK")
        try need(maxBadSteps >= 1, "--max-bad-steps", "is \(maxBadSteps)", "use 1 or more")
        try need(checkReplicas >= 0, "--check-replicas", "is \(checkReplicas)", "use 0 (off) or a number of steps")
        try need(debugFlipBit.isEmpty || flipAt != nil, "--debug-flip-bit", "is \(debugFlipBit)", "use STEP:RANK")
        try need((0...1024).contains(threads), "--threads", "is \(threads)", "use 0 (automatic) or a count up to 1024")
        try validateLoRA()
        try validateParallelism(worldSize: worldSize)
        // A rank with no sample has no micro-step at all, whatever --micro-batch says.
        try need(!zero.shardsGradients || batchSize >= worldSize, "--batch-size",
                 "is \(batchSize), below the \(worldSize) ranks, which \(zero.name) cannot run: a rank without a sequence "
                    + "has no micro-step, and the stage reduces gradients after every micro-step",
                 "use --batch-size \(worldSize) or more, or --zero 1 (whose idle ranks join the one reduction)")
        let steps = microSteps(worldSize: worldSize)
        try need(!zero.shardsGradients || steps.min() == steps.max(), "--micro-batch",
                 "gives the \(worldSize) ranks different numbers of micro-steps (\(steps.min() ?? 0) to \(steps.max() ?? 0)) "
                    + "for batch \(batchSize), which \(zero.name) cannot run: it reduces gradients after every micro-step",
                 "choose a --batch-size that splits evenly into micro-batches on every rank, or --micro-batch 0")
    }
}

extension TrainConfig {
    /// Throws a `ConfigError` naming `flag`, the problem and the fix unless `ok`: the form of
    /// every check of the `validate` family.
    func need(_ ok: Bool, _ flag: String, _ what: String, _ fix: String) throws(ConfigError) {
        if !ok { throw ConfigError(flag: flag, problem: what, fix: fix) }
    }

    /// The schedule's flags: a decay end and a cooldown that fit between warm-up and that end.
    func validateSchedule() throws(ConfigError) {
        try need(lrDecaySteps >= 0, "--lr-decay-steps", "is \(lrDecaySteps)", "use 0 (decay until --max-steps) or a step count")
        try need(cooldownSteps >= 0, "--cooldown-steps", "is \(cooldownSteps)", "use 0 (a fifth of the decay) or a step count")
        try need(cooldownSteps == 0 || lrSchedule == .wsd, "--cooldown-steps", "is \(cooldownSteps) with --lr-schedule \(lrSchedule.rawValue)",
                 "a cooldown belongs to --lr-schedule wsd: pass that, or --cooldown-steps 0")
        let end = schedule.decaySteps
        try need(cooldownSteps <= max(0, end - warmupSteps), "--cooldown-steps",
                 "is \(cooldownSteps), more than the \(max(0, end - warmupSteps)) steps between warm-up (\(warmupSteps)) and the decay's end (\(end))",
                 "use at most \(max(0, end - warmupSteps)), or raise --max-steps or --lr-decay-steps")
    }

    /// LoRA's flags: adapters that fit the model (`validateLoRAShape`), and a base to adapt.
    func validateLoRA() throws(ConfigError) {
        try validateLoRAShape()
        guard loraRank != 0, initFrom.isEmpty else { return }
        throw ConfigError(flag: "--lora-rank", problem: "is \(loraRank) without --init-from",
                          fix: "LoRA adapts trained weights: pass --init-from HF_DIR|RUN|CKPT|model.bin")
    }

    /// A positive rank up to the adapted maps' smallest dimension, known targets, a positive alpha.
    public func validateLoRAShape() throws(ConfigError) {
        guard loraRank != 0 else { return }
        guard loraRank > 0 else {
            throw ConfigError(flag: "--lora-rank", problem: "is \(loraRank)", fix: "use 0 (no LoRA) or a positive rank such as 8")
        }
        let targets: [LoRATarget]
        do { targets = try LoRATarget.list(loraTargets) } catch {
            throw ConfigError(flag: "--lora-targets", problem: "is '\(loraTargets)'",
                              fix: "use a comma-separated list of " + LoRATarget.allCases.map(\.rawValue).joined(separator: ", "))
        }
        let smallest = LoRAConfig(rank: loraRank, alpha: loraAlpha, targets: targets).maximumRank(for: model(vocabSize: 2))
        guard loraRank <= smallest else {
            throw ConfigError(flag: "--lora-rank", problem: "is \(loraRank), larger than \(smallest), the smallest dimension of the adapted maps "
                              + "(n_embd \(nEmbd))", fix: "use a rank from 1 to \(smallest); low rank is the point (4 to 64 is usual)")
        }
        guard loraAlpha > 0 && loraAlpha.isFinite else {
            throw ConfigError(flag: "--lora-alpha", problem: "is \(loraAlpha)", fix: "use a positive scale numerator, e.g. 16")
        }
    }
}

extension TrainConfig {
    /// Local SGD's flags: a positive period, each rank (or group) its own unsharded worker, evaluations
    /// at synchronisations (when every rank holds the same weights).
    func validateLocalSGD() throws(ConfigError) {
        guard syncEvery != 0 else { return }
        try need(syncEvery > 0, "--sync-every", "is \(syncEvery)", "use a positive number of inner steps, e.g. 50 (leave it out for synchronous training)")
        try need(zero == .ddp, "--sync-every", "is \(syncEvery) with --zero \(zero.rawValue)",
                 "local SGD runs every rank (or --shard-group) as its own worker holding the whole model: use --zero 0")
        try need(outerLR > 0 && outerLR.isFinite, "--outer-lr", "is \(outerLR)", "use a positive outer learning rate (DiLoCo: 0.7)")
        try need(outerMomentum >= 0 && outerMomentum < 1, "--outer-momentum", "is \(outerMomentum)", "use a value in [0, 1) (DiLoCo: 0.9)")
        try need(evalEvery % syncEvery == 0, "--eval-every", "is \(evalEvery), not a multiple of --sync-every \(syncEvery)",
                 "evaluate at synchronisations, when every rank holds the same weights: use a multiple of \(syncEvery) (or 0)")
        try need(saveEvery % syncEvery == 0, "--save-every", "is \(saveEvery), not a multiple of --sync-every \(syncEvery)",
                 "save at synchronisations, when every rank holds the same weights: use a multiple of \(syncEvery) (or 0)")
    }
}

extension TrainConfig {
    /// The parallelism flags (what `bench` shares with `train`): buckets, local SGD, shard
    /// groups (their fit to the world when `worldSize` is known) and PowerSGD.
    public func validateParallelism(worldSize: Int?) throws(ConfigError) {
        guard bucketMB > 0 else { throw ConfigError(flag: "--bucket-mb", problem: "is \(bucketMB)", fix: "use a positive size in MiB") }
        try validateLocalSGD()
        try validateShardGroup(worldSize: worldSize)
        try validatePowerSGD()
    }

    /// Hybrid sharding's flag: a ZeRO stage to shard, and groups that divide the world.
    func validateShardGroup(worldSize: Int?) throws(ConfigError) {
        switch shardGroup {
        case .world: return
        case .node: break
        case .ranks(let g):
            if let worldSize, worldSize % g != 0 {
                throw ConfigError(flag: "--shard-group", problem: "is \(g), which does not divide the \(worldSize) ranks",
                                  fix: "use a divisor of \(worldSize), usually the ranks per node (or: node)")
            }
        }
        // Local SGD's workers may be groups (DDP inside each); otherwise a stage shards within them.
        guard zero != .ddp || syncEvery > 0 else {
            throw ConfigError(flag: "--shard-group", problem: "is \(shardGroup) with --zero 0 (DDP shards nothing)",
                              fix: "shard within groups with --zero 1, 2 or 3 (3: HSDP), make each group a local SGD worker with --sync-every H, or leave --shard-group out")
        }
    }

    /// PowerSGD's flags: a positive rank, on DDP's synchronous all-reduce.
    func validatePowerSGD() throws(ConfigError) {
        guard powerSGDRank != 0 else { return }
        guard powerSGDRank > 0 else {
            throw ConfigError(flag: "--powersgd-rank", problem: "is \(powerSGDRank)", fix: "use 0 (exact gradients) or a positive rank such as 4")
        }
        guard zero == .ddp && syncEvery == 0 else {
            throw ConfigError(flag: "--powersgd-rank", problem: "is \(powerSGDRank) with " + (syncEvery > 0 ? "--sync-every \(syncEvery)" : "--zero \(zero.rawValue)"),
                              fix: "PowerSGD compresses DDP's gradient all-reduce: use --zero 0 without --sync-every")
        }
        guard powerSGDStart >= 0 else {
            throw ConfigError(flag: "--powersgd-start", problem: "is \(powerSGDStart)", fix: "use 0 or more steps of exact all-reduce first")
        }
    }

    /// The groups the strategy runs within: `shardGroup`, except that local SGD's workers
    /// are single ranks unless groups are asked for.
    public var workerGroup: ShardGroup { syncEvery > 0 && shardGroup == .world ? .ranks(1) : shardGroup }

    /// Ranks per shard group (local SGD: per worker) on `worldSize` ranks, `ranksPerNode` per node.
    public func shardGroupSize(worldSize: Int, ranksPerNode: Int) -> Int {
        switch workerGroup {
        case .world: return worldSize
        case .node: return min(ranksPerNode, worldSize)
        case .ranks(let g): return g
        }
    }
}

/// A configuration problem: exit status 2, restarting will not help.
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public let flag: String, problem: String, fix: String
    public init(flag: String, problem: String, fix: String) { self.flag = flag; self.problem = problem; self.fix = fix }
    public var description: String { "error: \(flag) \(problem) (config): \(fix)" }
}

import ArgumentParser
import Corpus
import Settings
import Training

/// The flags of `train` that set a `TrainConfig` key. Each is optional: a flag that is not
/// given leaves the key as the defaults, the `--config` file or the resumed checkpoint set it.
/// Flag names are the config keys in kebab case (`--min-lr` sets `minLR`).
struct TrainOptions: ParsableArguments {
    // MARK: Data and run
    @Option(help: "Data: a directory written by `tessera prepare`, a directory or glob of llm.c shards ('DIR/*_train_*.bin'), or nanoGPT's train.bin/val.bin directory.")
    var data: String?
    @Option(help: "Ids the data was tokenized with, for shards that do not say (llm.c's: 50257 for GPT-2; nanoGPT's headerless files).")
    var vocabSize: Int?
    @Option(help: "Windows: random (nanoGPT's get_batch) or sequential (llm.c's pass over the shards, epoch after epoch).")
    var sampling: Sampling?
    @Option(help: "Run directory for config.json, metrics.jsonl, checkpoints and model.bin.") var out: String?
    @Option(help: "Random seed (initialisation and batches).") var seed: UInt64?
    @Option(help: "BLAS threads per rank (0: cores / ranks on the node).") var threads: Int?
    @Option(help: "Start from trained weights (step 0, fresh optimizer): a Hugging Face GPT-2 directory, a run or checkpoint directory, or a model.bin.")
    var initFrom: String?
    @Option(help: "Library of the large GEMMs: auto (time oneDNN and OpenBLAS on this run's shapes, cached), onednn, openblas.")
    var gemm: GemmPolicy?

    // MARK: Model
    @Option(help: "Transformer blocks.") var nLayer: Int?
    @Option(help: "Attention heads.") var nHead: Int?
    @Option(help: "Embedding width.") var nEmbd: Int?
    @Option(help: "Context length.") var blockSize: Int?
    @Flag(inversion: .prefixedNo, help: "Biases in linear layers and LayerNorms.") var bias: Bool?
    @Option(help: "Dropout probability on embeddings, attention probabilities and residual branches (nanoGPT's sites); off in eval and generate.") var dropout: Double?

    // MARK: LoRA
    @Option(help: "Train rank-r LoRA adapters on a frozen --init-from base instead of the whole model (0: off).")
    var loraRank: Int?
    @Option(help: "LoRA scale numerator: adapter updates are multiplied by alpha / rank.") var loraAlpha: Double?
    @Option(help: "Maps of every block that carry adapters: a comma-separated list of attn, attn-proj, mlp, mlp-proj.")
    var loraTargets: String?

    // MARK: Optimisation
    @Option(help: "Global batch size in sequences (split over ranks).") var batchSize: Int?
    @Option(help: "Sequences per forward/backward on a rank (0: the rank's whole share).") var microBatch: Int?
    @Option(help: "Optimizer steps.") var maxSteps: Int?
    @Option(help: "Peak learning rate.") var lr: Double?
    @Option(name: .customLong("min-lr"), help: "Learning rate at the decay's end (cosine, linear, wsd).") var minLR: Double?
    @Option(help: "Linear warm-up steps.") var warmupSteps: Int?
    @Option(help: "After warm-up: cosine (nanoGPT), linear, constant, or wsd (the peak, then a cooldown before the decay's end).")
    var lrSchedule: LRScheduleKind?
    @Option(help: "Step at which the decay reaches --min-lr (nanoGPT's lr_decay_iters; 0: --max-steps).") var lrDecaySteps: Int?
    @Option(help: "wsd: cooldown steps ending at the decay's end (0: a fifth of the decay's end).") var cooldownSteps: Int?
    @Option(help: "wsd: the cooldown's shape: sqrt (1 - sqrt(progress)), linear or cosine.") var cooldownShape: CooldownShape?
    @Option(help: "AdamW beta1.") var beta1: Double?
    @Option(help: "AdamW beta2.") var beta2: Double?
    @Option(help: "AdamW decoupled weight decay (2-D tensors only).") var weightDecay: Double?
    @Option(help: "Global gradient-norm clip (0: off).") var gradClip: Double?
    @Option(help: "Consecutive steps with a non-finite loss or gradient (each skipped on every rank) that stop the job.")
    var maxBadSteps: Int?
    @Option(help: "Compare replicated parameters across ranks every N steps; a difference stops the job (0: never).")
    var checkReplicas: Int?
    @Option(help: "Memory one node offers this job, e.g. 20G (default: what the kernel reports available).")
    var memoryLimit: String?

    // MARK: Evaluation and logging
    @Option(help: "Evaluate every N steps (and at the end).") var evalEvery: Int?
    @Option(help: "Validation batches per evaluation.") var evalSteps: Int?
    @Option(help: ArgumentHelp("Also score these multiple-choice questions at every evaluation (JSON Lines: HellaSwag's {ctx, endings, label}, or {context, choices, label}).",
                               valueName: "file.jsonl")) var evalChoices: String?
    @Option(help: "With --eval-choices: only the first N questions (0: all).") var evalChoicesLimit: Int?
    @Option(help: "With --eval-choices: llmc (acc_norm per token) or harness (lm-evaluation-harness's text and acc_norm per character).")
    var evalChoicesRules: ChoiceRules?
    @Option(help: "Print a progress line every N steps.") var logEvery: Int?
    @Option(help: ArgumentHelp("Record a timeline of these steps (FROM-TO, 1-based, or STEP) on every rank: RUN/profile/steps-FROM-TO.trace.json for Perfetto or chrome://tracing, and a table of where the time went.",
                               valueName: "from-to")) var profile: String?
    @Flag(inversion: .prefixedNo, help: "Write TensorBoard event files to RUN/tb (tensorboard --logdir RUN/tb).") var tensorboard: Bool?

    // MARK: Parallelism and precision
    @Option(help: "ZeRO stage (0 = DDP).") var zero: ZeroStage?
    @Option(help: "Hybrid sharding: shard the ZeRO stage within groups (node: each node's ranks, or N consecutive ranks) and all-reduce gradients across groups (world: plain ZeRO).")
    var shardGroup: ShardGroup?
    @Option(help: "Local SGD (DiLoCo): each rank takes N inner steps alone, then the ranks average their parameter deltas and take an outer step.")
    var syncEvery: Int?
    @Option(name: .customLong("outer-lr"), help: "Local SGD: the outer Nesterov SGD's learning rate.") var outerLR: Double?
    @Option(help: "Local SGD: the outer optimizer's momentum.") var outerMomentum: Double?
    @Option(help: "Local SGD: how deltas travel (fp32, bf16, int8 with a scale per 256 values).") var syncDtype: SyncDType?
    @Option(name: .customLong("powersgd-rank"), help: "PowerSGD: DDP's gradients travel as rank-R factors with error feedback (0: exact).")
    var powerSGDRank: Int?
    @Option(name: .customLong("powersgd-start"), help: "PowerSGD: steps of exact all-reduce before compressing (default 10).")
    var powerSGDStart: Int?
    @Option(name: .customLong("bucket-mb"), help: "DDP/ZeRO-1 gradient bucket size in MiB.") var bucketMB: Double?
    @Option(help: "Seconds a collective may wait before the watchdog aborts the job.") var commTimeout: Double?
    @Option(help: "Compute precision of matmuls and saved activations (master weights and optimizer stay fp32).") var precision: Precision?
    @Option(help: "Gradient communication format (default: the --precision).") var reduceDtype: Precision?
    @Option(help: "Activations backward recomputes: none, selective (LayerNorm outputs, attention probabilities, GELU) or full (whole blocks).")
    var recompute: Recompute?
    @Option(help: "Attention kernel: fused (blocked, online softmax, O(T) memory per head) or unfused (keeps T×T probabilities).")
    var attention: AttentionKernel?

    // MARK: Checkpoints
    @Option(help: "Save a checkpoint every N steps (0: only at the end).") var saveEvery: Int?
    @Option(help: "Keep only the newest K checkpoints (0: all).") var keepLast: Int?
    @Flag(inversion: .prefixedNo, help: "Write checkpoints on a background thread while training goes on.") var asyncSave: Bool?
    @Flag(inversion: .prefixedNo, help: "Keep the weights of the evaluation with the lowest validation loss in RUN/best/model.bin.")
    var keepBest: Bool?
    @Option(help: "zstd level for checkpoints (1-19).") var ckptLevel: Int?
    @Option(help: ArgumentHelp("Testing aid: STEP:RANK writes +inf into that rank's gradient.", visibility: .hidden))
    var debugInjectInf: String?
    @Option(name: .customLong("debug-inject-nan"),
            help: ArgumentHelp("Testing aid: FROM-TO:RANK makes that rank's loss and gradient NaN.", visibility: .hidden))
    var debugInjectNaN: String?
    @Option(help: ArgumentHelp("Testing aid: STEP:RANK flips a bit of that rank's replicated parameters.", visibility: .hidden))
    var debugFlipBit: String?
    @Option(help: ArgumentHelp("Testing aid: the async checkpoint writer waits this many ms.", visibility: .hidden))
    var debugSlowSaveMs: Int?

    /// Writes every given flag into its key of `config`.
    func write(into config: inout TrainConfig) {
        func set<T>(_ key: WritableKeyPath<TrainConfig, T>, _ value: T?) { if let value { config[keyPath: key] = value } }
        set(\.data, data); set(\.vocabSize, vocabSize); set(\.sampling, sampling); set(\.out, out); set(\.seed, seed); set(\.threads, threads); set(\.gemm, gemm); set(\.initFrom, initFrom)
        set(\.nLayer, nLayer); set(\.nHead, nHead); set(\.nEmbd, nEmbd); set(\.blockSize, blockSize)
        set(\.bias, bias); set(\.dropout, dropout)
        set(\.loraRank, loraRank); set(\.loraAlpha, loraAlpha); set(\.loraTargets, loraTargets)
        set(\.batchSize, batchSize); set(\.microBatch, microBatch); set(\.maxSteps, maxSteps); set(\.lr, lr)
        set(\.minLR, minLR); set(\.warmupSteps, warmupSteps); set(\.lrSchedule, lrSchedule); set(\.lrDecaySteps, lrDecaySteps)
        set(\.cooldownSteps, cooldownSteps); set(\.cooldownShape, cooldownShape); set(\.beta1, beta1); set(\.beta2, beta2)
        set(\.weightDecay, weightDecay); set(\.gradClip, gradClip); set(\.maxBadSteps, maxBadSteps)
        set(\.checkReplicas, checkReplicas); set(\.memoryLimit, memoryLimit)
        set(\.evalEvery, evalEvery); set(\.evalSteps, evalSteps); set(\.evalChoices, evalChoices); set(\.evalChoicesLimit, evalChoicesLimit); set(\.evalChoicesRules, evalChoicesRules); set(\.logEvery, logEvery); set(\.tensorboard, tensorboard); set(\.profile, profile)
        set(\.zero, zero); set(\.shardGroup, shardGroup); set(\.syncEvery, syncEvery); set(\.outerLR, outerLR); set(\.outerMomentum, outerMomentum)
        set(\.syncDtype, syncDtype); set(\.powerSGDRank, powerSGDRank); set(\.powerSGDStart, powerSGDStart); set(\.bucketMB, bucketMB); set(\.commTimeout, commTimeout); set(\.precision, precision); set(\.recompute, recompute)
        set(\.attention, attention)
        set(\.reduceDtype, reduceDtype.map(Optional.some))
        set(\.saveEvery, saveEvery); set(\.keepLast, keepLast); set(\.asyncSave, asyncSave); set(\.keepBest, keepBest); set(\.ckptLevel, ckptLevel)
        set(\.debugInjectInf, debugInjectInf); set(\.debugInjectNaN, debugInjectNaN); set(\.debugFlipBit, debugFlipBit)
        set(\.debugSlowSaveMs, debugSlowSaveMs)
    }
}

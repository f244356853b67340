import Checkpoint
import Comm
import Foundation
import Kernels
import Model
import Parallel
import Scaling
import Settings

// MARK: - MemoryPlan

/// A run's peak memory per rank, worked out before anything is allocated: the strategy's
/// state and working buffers (`predictedMemory`, equal to what the strategy reports once
/// built), the activations (`Activations.bytes`, equal to the allocation; token shards are
/// memory-mapped and each batch's pages released, so they hold no memory of their own),
/// the start-up transient (none for a fresh run, which initialises each rank's own elements
/// in place; a resume's frame buffers) and the runtime's own share (libraries, MPI, oneDNN:
/// 48 MiB, measured as the peak of minimal runs less their buffers; with bf16 dot products,
/// the buffers of tessera's weight-gradient kernel beside them) and Open MPI's
/// temporaries for the gradient collectives in flight.
public struct MemoryPlan: Codable, Sendable {
    public var stage: ZeroStage, precision: Precision, recompute: Recompute, worldSize: Int, ranksPerNode: Int, microBatch: Int
    public var parameters: Int, gradients: Int, optimizer: Int, working: Int
    public var activations: Int, startup: Int, save: Int, runtime: Int
    /// Open MPI's temporaries for the gradient collectives in flight (see `make`).
    public var collectives: Int
    /// Elements each rank sends per step, and the bytes they take on the wire.
    public var sentElementsPerStep: Int, sentBytesPerStep: Int
    /// Hybrid sharding: ranks per shard group, and the bytes of each rank's per-step
    /// all-reduce across groups (part of `sentBytesPerStep`; the only traffic leaving a group).
    public var shardGroupSize: Int? = nil, crossGroupBytesPerStep: Int? = nil
    /// Model FLOPs of one optimizer step (6N per token plus attention, all ranks).
    public var flopsPerStep: Double

    /// Bytes the runtime holds beside tessera's buffers.
    public static let runtimeBytes = 48 << 20

    /// The state held between steps plus the larger of the start-up transient and what a
    /// step holds (activations, and at a save the save's buffers): the high-water mark one
    /// rank reaches.
    public var peakPerRank: Int {
        runtime + parameters + gradients + optimizer + working + max(startup, activations + collectives + save)
    }
    public var peakPerNode: Int { peakPerRank * ranksPerNode }

    /// The plan for `config` on `worldSize` ranks (`ranksPerNode` of them sharing a node).
    public static func make(config: TrainConfig, vocabSize: Int, worldSize n: Int, ranksPerNode: Int,
                            threads: Int) -> MemoryPlan {
        let shape = config.model(vocabSize: vocabSize)
        let layout = ParameterLayout(shape)
        // With LoRA only the adapters train; the frozen base adds its values and gather buffers.
        let trained = config.lora?.layout(for: shape) ?? layout
        // A local SGD worker's strategy is DDP over its group (one rank by default), beside
        // the outer loop's buffers.
        let local = config.syncEvery > 0
        // Hybrid sharding: the stage shards over groups of g ranks, and R groups replicate it.
        let g = config.shardGroupSize(worldSize: n, ranksPerNode: ranksPerNode), groups = n / g
        // Local SGD's workers are those groups (single ranks by default), DDP inside each.
        var m = predictedMemory(stage: config.zero, layout: trained, worldSize: g, groups: local ? 1 : groups,
                                reduce: config.effectiveReduceDtype, compute: config.precision)
        if local { m.working[LocalSGD.workingName] = LocalSGD.bytes(count: trained.count, ranks: groups, dtype: config.syncDtype) }
        let compressed = config.powerSGDRank > 0 && n > 1
        if compressed { m.working[PowerSGD.workingName] = PowerSGD.plan(layout: trained, rank: config.powerSGDRank).bytes }
        if config.lora != nil {
            let f = predictedFrozenMemory(stage: config.zero, layout: layout, worldSize: g, compute: config.precision)
            m.parameters += f.parameters
            m.working.merge(f.working) { $0 + $1 }
        }
        let micro = config.microBatchSize(worldSize: n)
        var acts: Int
        switch config.precision {
        case .fp32: acts = Activations<FP32>.bytes(config: shape, maxB: micro, maxT: config.blockSize, workers: threads,
                                                              recompute: config.recompute, attention: config.attention).total
        case .bf16: acts = Activations<BF16>.bytes(config: shape, maxB: micro, maxT: config.blockSize, workers: threads,
                                                              recompute: config.recompute, attention: config.attention).total
        case .fp16: acts = Activations<FP16>.bytes(config: shape, maxB: micro, maxT: config.blockSize, workers: threads,
                                                              recompute: config.recompute, attention: config.attention).total
        }
        // Every strategy holds the 16-bit compute copy a 16-bit model reads (DDP's among its
        // working buffers), and so does the frozen base under LoRA: neither the model nor the
        // LoRA branch makes copies of its own.
        if let lora = config.lora {
            // The LoRA branch's saved su with its scratch.
            acts += lora.activationBytes(rows: micro * config.blockSize, nLayer: shape.nLayer, precision: config.precision).total
        }
        // bf16 weight gradients on tessera's kernel keep its buffers (per thread) for the
        // process's life, sized by the largest products: the runtime's share grows by them.
        let rows = micro * config.blockSize, C = shape.nEmbd
        let weightProducts = config.precision == .bf16 && config.lora == nil
            ? [(m: 3 * C, n: C, k: rows), (C, C, rows), (4 * C, C, rows), (C, 4 * C, rows), (shape.vocabSize, C, rows)] : []
        let gemmScratch = Gemm.weightGradientScratchBytes(weightProducts, threads: threads)
        // Everything below that scales with what trains (state, saves, gradient traffic).
        let psi = trained.count
        // A fresh run initialises straight into the strategy's own buffers. A resume verifies
        // its checkpoint files in 16 MiB reads, then decompresses one frame at a time (the
        // compressed frame and the shuffled one beside the destination).
        let shardElements = (psi + n - 1) / n, frameBytes = 4 * min(shardElements, CheckpointWriter.frameElements)
        var startup = config.resume.isEmpty ? 0 : (16 << 20) + 2 * frameBytes
        // `--init-from` (and LoRA's base, read again on resume) reads the weights whole (the
        // file, then its fp32 values, then them in this run's layout): twice the model in fp32
        // at once, before the activations exist.
        if !config.initFrom.isEmpty && (config.resume.isEmpty || config.lora != nil) { startup = max(startup, 8 * layout.count) }
        // Saving, while activations are still held: a checkpoint compresses one frame at a
        // time (shuffled and compressed copies), after an async save has snapshotted this
        // rank's share of the three vectors; the model.bin export gathers the parameters in
        // pieces of at most 16M. One after the other: the larger counts.
        let snapshot = config.asyncSave ? 3 * 4 * shardElements : 0
        // Open MPI's nonblocking collectives (libnbc) allocate a temporary the size of their
        // message. DDP and ZeRO-1 start a bucket's reduction as soon as backward has produced
        // it, so nearly all gradients are in flight at once: their wire size again (measured:
        // 0.4 GB per rank on the gpt2 shape). ZeRO-2/3 reduce one unit at a time: the largest.
        let wireBytes = config.effectiveReduceDtype.bytes
        let inFlight = config.zero.shardsGradients ? max(trained.units[0].count, trained.largestNonEmbeddingUnit) : psi
        // Local SGD's one blocking collective at a synchronisation: the deltas on the wire.
        // Hybrid sharding's all-reduce of the gradient shard comes after the group's reductions.
        let groupShard = (psi + g - 1) / g
        let collectives = n <= 1 ? 0 : local ? max(groups > 1 ? config.syncDtype.bytes * psi : 0, g > 1 ? wireBytes * inFlight : 0)
            : wireBytes * max(g > 1 ? inFlight : 0, groups > 1 ? groupShard : 0)
        // Local SGD's saves also average the ranks' inner moments (2Ψ) first.
        let save = max(snapshot + 2 * frameBytes + (local ? 8 * psi : 0), 4 * min(psi, 1 << 24))
        // Per rank and step, as the ring algorithms send: DDP all-reduces gradients once; the
        // ZeRO stages reduce-scatter gradients (ZeRO-2/3 after every micro-step) and all-gather
        // parameters in the format they hold them: once after the update (ZeRO-1/2), or for
        // forward and again for backward in every micro-step (ZeRO-3).
        // Under hybrid sharding the stage's collectives run within a group of g, and each rank
        // all-reduces its gradient shard of ⌈Ψ/g⌉ across the R groups: 2⌈Ψ/g⌉(R−1)/R more.
        let ring = Double(psi) * Double(g - 1) / Double(g)
        let wire = Double(config.effectiveReduceDtype.bytes), held = Double(config.precision.bytes)
        let steps = Double(config.zero.shardsGradients ? config.microSteps(worldSize: n).max() ?? 1 : 1)
        let (reduced, gathered): (Double, Double)
        switch config.zero {
        case .ddp: (reduced, gathered) = (2 * ring, 0)
        case .one, .two: (reduced, gathered) = (ring * steps, ring)
        case .three: (reduced, gathered) = (ring * steps, 2 * ring * steps)
        }
        // LoRA's frozen base at stage 3 is gathered like trainable parameters, never reduced.
        let baseRing = Double(layout.count) * Double(g - 1) / Double(g)
        let baseGathered = config.lora != nil && config.zero == .three ? 2 * baseRing * steps : 0
        var sentElements = Int(reduced + gathered + baseGathered)
        var sentBytes = Int(reduced * wire + gathered * (config.zero == .ddp ? 4 : held) + baseGathered * held)
        if compressed {
            // After its first exact steps PowerSGD sends factors (fp32) instead of gradients.
            sentElements = PowerSGD.sentElements(layout: trained, rank: config.powerSGDRank, ranks: n)
            sentBytes = 4 * sentElements
        }
        let crossGroup = groups > 1 && !local ? RingTraffic.allReduce(count: groupShard, ranks: groups) : 0
        sentElements += crossGroup
        sentBytes += crossGroup * Int(wire)
        if local {
            // One synchronisation across the workers per `syncEvery` steps, averaged over
            // them, beside the gradient all-reduce of DDP within a worker's group.
            let perSync = LocalSGD.traffic(count: psi, ranks: groups, dtype: config.syncDtype)
            sentBytes = Int(perSync.bytes / Double(config.syncEvery) + reduced * wire)
            sentElements = Int(perSync.elements / Double(config.syncEvery) + reduced)
        }
        let tokens = Double(config.batchSize * config.blockSize)
        // A frozen base costs 4 FLOPs per parameter and token (no weight gradients), as the trainer counts.
        let computed = config.lora == nil ? Double(psi) : Double(layout.count) * 4 / 6 + Double(psi)
        let flops = Compute.flopsPerToken(params: computed, nLayer: shape.nLayer, nEmbd: shape.nEmbd,
                                          seq: config.blockSize) * tokens
        var plan = MemoryPlan(stage: config.zero, precision: config.precision, recompute: config.recompute, worldSize: n, ranksPerNode: ranksPerNode,
                          microBatch: micro, parameters: m.parameters, gradients: m.gradients, optimizer: m.optimizer,
                          working: m.working.values.reduce(0, +), activations: acts,
                          startup: startup, save: save, runtime: runtimeBytes + gemmScratch, collectives: collectives, sentElementsPerStep: n > 1 ? sentElements : 0,
                          sentBytesPerStep: n > 1 ? sentBytes : 0, flopsPerStep: flops)
        if groups > 1 && !local && config.shardGroup != .world { plan.shardGroupSize = g; plan.crossGroupBytesPerStep = crossGroup * Int(wire) }
        return plan
    }

    // MARK: Fitting

    /// Refuses a plan whose ranks on one node need more than `limit` bytes, naming the
    /// cheapest change that fits: a higher ZeRO stage first (more communication, same
    /// arithmetic), then smaller micro-batches (more accumulation steps).
    public static func check(config: TrainConfig, vocabSize: Int, worldSize n: Int, ranksPerNode: Int,
                             threads: Int, limit: MemoryLimit) throws(ConfigError) -> MemoryPlan {
        // Shapes whose parameter count alone dwarfs the node are refused before any exact
        // (integer) accounting, which such sizes could overflow.
        let C = Double(config.nEmbd), L = Double(config.nLayer)
        let psi = 12 * L * C * C + Double(vocabSize + config.blockSize) * C
        if 16 * psi / Double(n) > Double(limit.bytes) * Double(n) || psi > 1e15 {
            throw ConfigError(flag: "model", problem: String(format: "has about %.3g parameters, whose fp32 state alone needs "
                                                                + "%.3g bytes even divided over %d rank(s); %@ are available (%@) (memory plan)",
                                                              psi, 16 * psi / Double(n), n, gibText(limit.bytes), limit.source),
                              fix: "choose a smaller model (tessera scaling shape --params N) or many more nodes")
        }
        func plan(_ c: TrainConfig) -> MemoryPlan {
            make(config: c, vocabSize: vocabSize, worldSize: n, ranksPerNode: ranksPerNode, threads: threads)
        }
        let p = plan(config)
        guard p.peakPerNode > limit.bytes else { return p }
        var fix = "no ZeRO stage, recompute mode or micro-batch fits: use more nodes (fewer ranks per node) or a smaller model"
        // Cheapest first: a higher stage (more communication, same arithmetic), then
        // recomputation (selective before full: less repeated arithmetic), then smaller
        // micro-batches (more accumulation steps).
        let modes = Recompute.allCases.filter { $0 == config.recompute || config.recompute == .none || $0 == .full }
        search: for micro in [p.microBatch] + Array(sequence(first: p.microBatch / 2, next: { $0 > 1 ? $0 / 2 : nil })).filter({ $0 >= 1 }) {
            for mode in modes {
                for stage in ZeroStage.allCases where stage >= config.zero {
                    var c = config
                    c.zero = stage; c.microBatch = micro; c.recompute = mode
                    if (try? c.validate(worldSize: n)) == nil { continue }
                    let q = plan(c)
                    if q.peakPerNode <= limit.bytes {
                        var changes: [String] = []
                        if stage != config.zero { changes.append("--zero \(stage.rawValue)") }
                        if mode != config.recompute { changes.append("--recompute \(mode.rawValue)") }
                        if micro != p.microBatch { changes.append("--micro-batch \(micro)") }
                        fix = "use \(changes.joined(separator: " ")) (\(gibText(q.peakPerRank)) per rank)"
                        break search
                    }
                }
            }
        }
        throw ConfigError(flag: "--memory-limit",
                          problem: "is exceeded: \(p.stage.name) needs \(gibText(p.peakPerRank)) per rank × \(ranksPerNode) rank(s) on this "
                            + "node = \(gibText(p.peakPerNode)), but \(gibText(limit.bytes)) are available (\(limit.source)) "
                            + "(memory plan; `train --dry-run` shows it)",
                          fix: fix)
    }

    /// A table of the plan, for `train --dry-run`.
    public var description: String {
        var rows = [("parameters", parameters), ("gradients", gradients), ("optimizer states", optimizer),
                    ("working buffers", working), ("activations (micro-batch \(microBatch))", activations)]
        if collectives > 0 { rows.append(("MPI collective temporaries", collectives)) }
        rows += [("saving (checkpoint, model.bin)", save), ("start-up transient", startup),
                 ("runtime", runtime)]
        var out = "memory plan: \(stage.name), \(precision), recompute \(recompute.rawValue), \(worldSize) rank(s), \(ranksPerNode) per node\n"
        for (name, bytes) in rows { out += "  " + name.padding(toLength: 34, withPad: " ", startingAt: 0) + gibText(bytes) + "\n" }
        out += "  peak per rank (state + max(start-up, activations + collectives + saving))  \(gibText(peakPerRank)); "
            + "per node \(gibText(peakPerNode))\n"
        out += "communication per step and rank: \(sentElementsPerStep) elements, \(gibText(sentBytesPerStep))\n"
        if let g = shardGroupSize, let x = crossGroupBytesPerStep {
            out += "hybrid sharding: groups of \(g) ranks; across groups per step and rank: \(gibText(x))\n"
        }
        out += String(format: "compute per step: %.3g FLOPs", flopsPerStep)
        return out
    }
}

/// The memory a node offers: `--memory-limit`, or what the kernel says is available (the
/// cgroup's limit when lower).
public struct MemoryLimit: Sendable {
    public var bytes: Int, source: String

    /// `--memory-limit` (bytes, or with a K/M/G/T suffix), else this node's available memory.
    public static func resolve(_ flag: String) throws(ConfigError) -> MemoryLimit {
        if !flag.isEmpty {
            guard let b = parseBytes(flag), b > 0 else {
                throw ConfigError(flag: "--memory-limit", problem: "is '\(flag)'", fix: "use bytes or a size like 20G or 512M")
            }
            return MemoryLimit(bytes: b, source: "--memory-limit")
        }
        var best = MemoryLimit(bytes: Int.max, source: "unknown")
        if let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8),
           let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemAvailable:") }),
           let kb = Int(line.split(separator: " ").dropFirst().first ?? "") {
            best = MemoryLimit(bytes: kb * 1024, source: "MemAvailable")
        }
        if let text = try? String(contentsOfFile: "/sys/fs/cgroup/memory.max", encoding: .utf8),
           let b = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)), b < best.bytes {
            best = MemoryLimit(bytes: b, source: "cgroup memory.max")
        }
        return best
    }

    static func parseBytes(_ s: String) -> Int? {
        let units: [Character: Double] = ["K": 1024, "M": 1_048_576, "G": 1_073_741_824, "T": 1_099_511_627_776]
        var text = s.uppercased(), scale = 1.0
        if text.hasSuffix("B") { text.removeLast() }
        if let u = text.last, let f = units[u] { scale = f; text.removeLast() }
        guard let v = Double(text), v.isFinite, v * scale < 9e18 else { return nil }
        return Int(v * scale)
    }
}

/// "1.25 GiB" / "640.0 MiB".
public func gibText(_ bytes: Int) -> String {
    bytes >= 1 << 30 ? String(format: "%.2f GiB", Double(bytes) / Double(1 << 30)) : String(format: "%.1f MiB", Double(bytes) / Double(1 << 20))
}

import Checkpoint
import Comm
import Corpus
import Foundation
import Kernels
import Model
import Optim
import Parallel
import Settings
import Tracing

// MARK: - The training loop

extension Trainer {
    /// Trains for `config.maxSteps` steps; returns the loss trajectory.
    public func run() throws -> TrainResult {
        var result = TrainResult()
        let reporter = isCoordinator ? try RunReporter(trainer: self) : nil
        checkpointer = Checkpointer(comm: comm, runDirectory: config.out, level: config.ckptLevel, keepLast: config.keepLast,
                                    async: config.asyncSave, log: log)
        checkpointer.slowWriteSeconds = Double(config.debugSlowSaveMs) / 1000
        if isCoordinator && startStep > 0 { log("tessera: resumed from \(config.resume) at step \(startStep)") }
        bestValLoss = try resumedBestValLoss()
        let start = MPIClock.now()
        var profiledFrom = 0
        for step in startStep..<max(config.maxSteps, startStep) {
            comm.context = "step \(step)"
            if profileOpens(before: step) {
                try openProfile()
                profiledFrom = step + 1
            }
            var m = try Trace.span(.step, "step", args: ["step": .int(step + 1)]) { try trainStep(step) }
            result.losses.append(m.loss)
            let lastStep = step == config.maxSteps - 1
            if (config.evalEvery > 0 && (step + 1) % config.evalEvery == 0) || lastStep {
                let (v, byData) = try Trace.span(.eval, "evaluation") { try evaluateByData(batchOffset: 0) }
                m.val_loss = v
                m.val_loss_by_data = byData
                result.valLosses.append((step + 1, v))
                if config.keepBest && v < bestValLoss { try saveBest(step: step + 1, valLoss: v) }
                if let questions = choiceQuestions {
                    let r = try Trace.span(.eval, "multiple-choice evaluation") { try evaluateChoices(questions) }
                    m.choice_acc = r.accuracy
                    m.choice_acc_norm = r.normalizedAccuracy
                }
            }
            reporter?.stepDone(m, step: step, elapsed: MPIClock.now() - start)
            // Under local SGD the ranks agree only right after a synchronisation.
            if config.checkReplicas > 0 && (step + 1) % config.checkReplicas == 0 && (localSGD == nil || synchronizes(step)) {
                try checkReplicas(afterStep: step + 1)
            }
            if badInARow >= config.maxBadSteps {
                // Skipped steps left the parameters as the last good step did: save them.
                try saveCheckpoint(completedSteps: step + 1)
                try checkpointer.finishPending(wait: true)
                throw NonFiniteSteps(first: step + 2 - badInARow, last: step + 1,
                                     checkpoint: CheckpointStore(runDirectory: config.out).directory(step: step + 1).path)
            }
            if stopRequested != 0 && !lastStep {
                try saveCheckpoint(completedSteps: step + 1)
                try checkpointer.finishPending(wait: true)
                result.modelPath = try saveModel(to: URL(fileURLWithPath: config.out).appendingPathComponent("model.bin").path)
                // No rank may exit before rank 0 has committed: mpirun ends the whole job as
                // soon as one rank exits with a non-zero status.
                try comm.barrier(label: "barrier after the pre-emption checkpoint")
                throw Preempted(step: step + 1, signal: stopRequested,
                                checkpoint: CheckpointStore(runDirectory: config.out).directory(step: step + 1).path)
            }
            if lastStep { continue }
            try checkpointer.finishPending(wait: false)
            if config.saveEvery > 0 && (step + 1) % config.saveEvery == 0 { try saveCheckpoint(completedSteps: step + 1) }
            if profileCloses(after: step) { try closeProfile(firstStep: profiledFrom, lastStep: step + 1) }
        }
        try saveCheckpoint(completedSteps: max(config.maxSteps, startStep))
        try checkpointer.finishPending(wait: true)
        // A window that runs to the last step includes the final save.
        if Trace.isEnabled { try closeProfile(firstStep: profiledFrom, lastStep: config.maxSteps) }
        result.seconds = MPIClock.now() - start
        var peak = [Benchmark.peakRSSMB() * 1_048_576]
        try comm.allReduce(&peak, op: .max, label: "all-reduce of peak resident memory")
        try reporter?.runEnded(peakResidentBytes: Int(peak[0]))
        result.saveStalls = checkpointer.stallSeconds
        result.modelPath = try saveModel(to: URL(fileURLWithPath: config.out).appendingPathComponent("model.bin").path)
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
        frozen?.waitSeconds = 0
        comm.sentElements = 0
        comm.sentBytes = 0
        var lossSum = 0.0, counted = 0
        var fwd = 0.0, bwd = 0.0
        var i = 0
        while i < myIndices.count {
            let chunk = myIndices[i..<min(i + micro, myIndices.count)]
            i += chunk.count
            let filling = Trace.begin()
            try sampler.fill(x: x, y: y, split: data.train, which: .train, batch: step, indices: chunk, vocabSize: data.vocabSize)
            Trace.end(filling, .data, "data")
            strategy.beginMicroStep(isLast: i >= myIndices.count)
            if config.dropout > 0 {
                for (r, sample) in chunk.enumerated() { keys[r] = Dropout.sequenceKey(seed: config.seed, step: step, sample: sample) }
            }
            let a = MPIClock.now()
            let f = Trace.span(.compute, "forward", args: ["sequences": .int(chunk.count)]) {
                model.forward(tokens: x, targets: y, B: chunk.count, T: T, params: modelParameters,
                              adapters: modelAdapters, sequenceKeys: config.dropout > 0 ? keys : nil)
            }
            lossSum += f.sum
            counted += f.count
            let b = MPIClock.now()
            Trace.span(.compute, "backward") { model.backward(lossScale: lossScale, params: modelParameters) }
            bwd += MPIClock.now() - b
            fwd += b - a
        }
        if myIndices.isEmpty {
            // No sample of this step's batch is ours (a global batch smaller than the world):
            // join every gradient reduction anyway, with zero gradients and in backward's unit
            // order, or the other ranks' reductions would meet the next collective instead.
            strategy.beginMicroStep(isLast: true)
            for unit in stride(from: strategy.layout.units.count - 1, through: 0, by: -1) {
                strategy.provider.gradientsProduced(unit: unit)
            }
        }
        try Trace.span(.step, "finish gradients") { try strategy.finishGradients() }
        if let inject = config.injectAt, inject.step == step + 1, inject.rank == comm.rank { strategy.poisonGradientForTesting() }
        if let inject = config.injectNaN, inject.steps.contains(step + 1), inject.rank == comm.rank {
            lossSum = .nan
            strategy.poisonGradientForTesting()
        }
        let o0 = MPIClock.now()
        // One all-reduce carries the loss and whether any rank's loss or gradients are not
        // finite (an fp16 overflow, or divergence or corrupted arithmetic in any precision).
        let overflowHere = !lossSum.isFinite || !strategy.localGradientsFinite()
        // ... and whether any rank has been asked to stop (a signal reaches ranks at different
        // times; agreeing here makes every rank stop after the same step), and how many
        // targets counted (all of them, unless a loss mask leaves prompts out).
        var reduced = [lossSum, overflowHere ? 1 : 0, Double(Preemption.pending), Double(counted)]
        try comm.allReduce(&reduced, op: .sum, label: "all-reduce of the loss, overflow and stop flags")
        stopRequested = reduced[2] > 0 ? Int32(Preemption.pending == 0 ? SIGTERM : Preemption.pending) : 0
        let lr = schedule.lr(at: step)
        var norm = 0.0
        var skipped: Bool?
        if var s = scaler {
            skipped = try s.update(overflow: reduced[1] > 0)
            scaler = s
        } else if reduced[1] > 0 {
            // fp32/bf16 have no scale to lower: skip the update on every rank and count it.
            skipped = true
            guardSkipped += 1
        }
        badInARow = skipped == true && scaler == nil ? badInARow + 1 : 0
        if skipped != true {
            // Backward scaled by 1/(tokens in the batch), before the count of targets that
            // count was known: a loss mask's mean over fewer targets is `r` times that. A
            // local SGD worker averages over its own targets (a group's: summed over it).
            let r = Double(tokensPerStep) / max(localSGD == nil ? reduced[3] : try workerTargets(counted), 1)
            norm = try Trace.span(.optimizer, "gradient norm") { try strategy.gradientSquaredNorm() }.squareRoot() / scale * r
            let clip = GradientClipping.coefficient(norm: norm, maxNorm: config.gradClip) / Float(scale / r)
            // The AdamW step count is the number of updates applied (skipped steps excluded).
            try Trace.span(.optimizer, "optimizer step") {
                try strategy.optimizerStep(step: step + 1 - skippedSteps, lr: Float(lr), clip: clip)
            }
        }
        if let localSGD, synchronizes(step) {
            localSGD.waitSeconds = 0
            try Trace.span(.comm, "local SGD synchronisation") { try localSGD.synchronize(localWorker) }
            strategy.commWaitSeconds += localSGD.waitSeconds
        }
        if let f = config.flipAt, f.step == step + 1, f.rank == comm.rank { strategy.corruptReplicaForTesting() }
        let t1 = MPIClock.now()
        var m = StepMetrics(step: step + 1, loss: reduced[0] / max(reduced[3], 1), val_loss: nil, lr: lr,
                           grad_norm: norm, tokens_per_s: Double(tokensPerStep) / (t1 - t0), ms_per_step: (t1 - t0) * 1000,
                           ms_forward: fwd * 1000, ms_backward: bwd * 1000,
                           ms_comm_wait: (strategy.commWaitSeconds + (frozen?.waitSeconds ?? 0)) * 1000, ms_optimizer: (t1 - o0) * 1000,
                           world_size: comm.size, params: model.layout.count, sent_elements: comm.sentElements,
                           sent_bytes: comm.sentBytes,
                           loss_scale: scaler.map { _ in scale }, skipped: skipped,
                           skipped_steps: skippedSteps > 0 ? skippedSteps : nil,
                           peak_rss_mb: isCoordinator ? (Benchmark.peakRSSMB() * 10).rounded() / 10 : nil)
        refreshPeak()   // after t1: outside this step's time and the next one's
        m.mfu = (flopsPerToken * m.tokens_per_s / Double(comm.size) / 1e9 / peakGFLOPS * 1e4).rounded() / 1e4
        if config.sampling == .sequential { m.epoch = (sampler.epoch(batch: step + 1, split: data.train) * 1000).rounded() / 1000 }
        return m
    }

    /// Targets that count in a local SGD worker's share of the batch: this rank's, or its group's.
    private func workerTargets(_ counted: Int) throws -> Double {
        guard groups.shard.size > 1 else { return Double(counted) }
        var c = [Double(counted)]
        try groups.shard.allReduce(&c, label: "all-reduce of the worker's target count")
        return c[0]
    }

    /// Whether local SGD synchronises after `step` (0-based): every `syncEvery` steps, at the
    /// end, and before any unplanned save (a stop signal, the divergence guard), so every
    /// checkpoint is taken where all ranks hold θ.
    func synchronizes(_ step: Int) -> Bool {
        (step + 1) % config.syncEvery == 0 || step + 1 == config.maxSteps || stopRequested != 0 || badInARow >= config.maxBadSteps
    }

    /// Mean validation loss over `evalSteps` fixed global batches, spread over the ranks.
    public func evaluate(batchOffset: Int) throws -> Double { try evaluateByData(batchOffset: batchOffset).loss }

    /// The mean validation loss and, for a mixture, each dataset's over its own samples of
    /// the same batches (a batch's rows are taken dataset by dataset, so each forward holds
    /// one dataset's rows; the blend decides which rows those are, as in training).
    func evaluateByData(batchOffset: Int) throws -> (loss: Double, byData: [String: Double]?) {
        let T = config.blockSize
        let blend = data.val.mixture?.blend, sources = blend?.counts.count ?? 1
        var sums = [Double](repeating: 0, count: 2 * sources)
        for j in 0..<config.evalSteps {
            var rowsBySource = blend == nil ? [myIndices] : Array(repeating: [Int](), count: sources)
            if let blend {
                for r in myIndices { rowsBySource[blend.source(of: (batchOffset + j) * config.batchSize + r).source].append(r) }
            }
            for (s, rows) in rowsBySource.enumerated() {
                var i = 0
                while i < rows.count {
                    let chunk = rows[i..<min(i + micro, rows.count)]
                    i += chunk.count
                    try sampler.fill(x: x, y: y, split: data.val, which: .val, batch: batchOffset + j, indices: chunk,
                                     vocabSize: data.vocabSize)
                    let f = model.forward(tokens: x, targets: y, B: chunk.count, T: T, params: modelParameters, adapters: modelAdapters)
                    sums[2 * s] += f.sum
                    sums[2 * s + 1] += Double(f.count)
                }
            }
        }
        // Over the targets that count: all of them, unless a loss mask leaves prompts out.
        try comm.allReduce(&sums, label: "all-reduce of validation loss")
        let total = stride(from: 0, to: sums.count, by: 2).reduce(0.0) { $0 + sums[$1] }
        let counted = stride(from: 1, to: sums.count, by: 2).reduce(0.0) { $0 + sums[$1] }
        guard let spec = data.mixture else { return (total / max(counted, 1), nil) }
        var byData: [String: Double] = [:]
        for (s, path) in spec.paths.enumerated() where sums[2 * s + 1] > 0 { byData[path] = sums[2 * s] / sums[2 * s + 1] }
        return (total / max(counted, 1), byData)
    }

    /// Accuracy on multiple-choice questions with the weights of this step, at most a
    /// micro-batch of choices per pass (the activations' size).
    public func evaluateChoices(_ questions: [ChoiceExample]) throws -> ChoiceResult {
        let rows = min(micro, questions.map(\.choices.count).max() ?? 1)
        let losses = try MultipleChoice.losses(questions, blockSize: config.blockSize, vocabSize: model.config.vocabSize, rows: rows, comm: comm,
                                               forward: { tokens, B, T, rows in
                                                   self.model.forward(tokens: tokens, targets: nil, B: B, T: T, params: self.modelParameters,
                                                                      adapters: self.modelAdapters, logitRows: rows)
                                               },
                                               logits: { self.model.logitsRow(index: $0) })
        return MultipleChoice.result(questions, losses, ranks: comm.size)
    }

    /// Saves the full training state after `completedSteps` optimizer steps.
    func saveCheckpoint(completedSteps: Int) throws {
        let span = Trace.begin()
        defer { Trace.end(span, .checkpoint, "checkpoint save", args: ["step": .int(completedSteps)]) }
        let local = try localSGD.map { try localSGDState($0) }
        try checkpointer.save(step: completedSteps, config: config, model: model.config, layout: strategy.layout,
                              tokenizer: data.tokenizer, scaler: scaler, skippedSteps: skippedSteps, strategy: strategy,
                              pieces: local?.pieces)
        withExtendedLifetime(local?.mean) {}
    }

    /// Local SGD's state at a synchronisation (every rank's parameters are θ): θ, the outer
    /// momentum and the ranks' mean inner moments sharded like any checkpoint's vectors (what
    /// a resume at another world size starts from), and each rank's own inner moments whole
    /// (what a resume at the same world size restores, bit for bit). `mean` backs pieces.
    func localSGDState(_ local: LocalSGD) throws -> (pieces: [StatePiece], mean: FloatBuffer) {
        let inner = localWorker, psi = strategy.layout.count, n = comm.size
        let mean = FloatBuffer(count: 2 * psi)
        mean.pointer.update(from: inner.m.pointer, count: psi)
        (mean.pointer + psi).update(from: inner.v.pointer, count: psi)
        try comm.allReduce(mean.pointer, count: 2 * psi, label: "all-reduce of inner AdamW moments for the checkpoint")
        Vector.scale(mean.pointer, 2 * psi, by: 1 / Float(n))
        let mine = ShardLayout(total: psi, ranks: n, rank: comm.rank).mine, o = mine.lowerBound
        func piece(_ v: StateVector, _ p: UnsafePointer<Float>) -> StatePiece {
            v.isLocal ? StatePiece(vector: v, start: 0, count: psi, pointer: p) : StatePiece(vector: v, start: o, count: mine.count, pointer: p + o)
        }
        return ([piece(.params, local.anchor.pointer), piece(.adamM, mean.pointer), piece(.adamV, mean.pointer + psi),
                 piece(.outerMomentum, local.velocity.pointer), piece(.localAdamM, inner.m.pointer), piece(.localAdamV, inner.v.pointer)],
                mean)
    }

    /// Writes the trained weights (rank 0) and returns the path, gathering them in pieces of
    /// at most 16M parameters, so no rank holds a full copy it does not already keep.
    func saveModel(to path: String) throws -> String {
        if let lora = model.lora { return try saveMergedModel(lora, to: path) }
        let count = model.layout.count, piece = min(count, 1 << 24)
        let writer = isCoordinator ? try ModelFile.Writer(path: path, config: model.config, tokenizer: data.tokenizer, count: count) : nil
        let buf = FloatBuffer(count: piece)
        for lo in stride(from: 0, to: count, by: piece) {
            let range = lo..<min(count, lo + piece)
            try strategy.gatherParameters(range: range, into: buf.pointer)
            try writer?.append(buf.pointer, count: range.count)
        }
        try writer?.finish()
        return path
    }
}

extension Trainer {
    /// LoRA's model.bin: the base (read again from `initFrom`, in fp32) with the adapters
    /// merged in, so `generate`, `eval` and `export` take it like any model.
    func saveMergedModel(_ lora: LoRAConfig, to path: String) throws -> String {
        let adapters = FloatBuffer(count: strategy.layout.count)
        try strategy.gatherParameters(into: adapters.pointer)
        guard isCoordinator else { return path }
        let merged = try LoRACheckpoint(run: config, lora: lora, model: model.config, tokenizer: data.tokenizer, values: adapters)
            .merged(checkpoint: config.out)
        let writer = try ModelFile.Writer(path: path, config: model.config, tokenizer: data.tokenizer, count: model.layout.count)
        try writer.append(merged.parameters.pointer, count: model.layout.count)
        try writer.finish()
        return path
    }
}

/// Too many consecutive steps had a non-finite loss or gradient: training diverged, or a
/// node computes garbage. The job stops with the last good state saved.
public struct NonFiniteSteps: Error, CustomStringConvertible {
    public let first: Int, last: Int
    public let checkpoint: String
    public var description: String {
        "error: steps \(first)-\(last): \(last - first + 1) consecutive steps had a non-finite loss or gradient on some rank "
            + "(divergence guard; each was skipped on every rank): the last good state is saved at \(checkpoint); "
            + "lower --lr or check the data and the nodes, then continue with --resume latest"
    }
}

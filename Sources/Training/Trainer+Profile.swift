import Comm
import Foundation
import Tracing

// MARK: - Profile windows

extension Trainer {
    /// Whether a profile window opens before 0-based `step`: at the window's first step, or at
    /// the first step this run takes when it resumed inside the window.
    func profileOpens(before step: Int) -> Bool {
        guard let w = config.profileSteps, step + 1 <= w.upperBound else { return false }
        return step + 1 == max(w.lowerBound, startStep + 1)
    }

    /// Whether the open window closes after 0-based `step` (its last step, or the run's).
    func profileCloses(after step: Int) -> Bool {
        guard Trace.isEnabled, let w = config.profileSteps else { return false }
        return step + 1 == min(w.upperBound, config.maxSteps)
    }

    /// Opens the window on every rank at once (a barrier, so their clocks start together).
    func openProfile() throws {
        try comm.barrier(label: "barrier before profiling")
        Trace.start(threadName: "training")
    }

    /// Closes the window: rank 0 gathers every rank's spans into one trace file and prints
    /// its own table of where the time went.
    func closeProfile(firstStep: Int, lastStep: Int) throws {
        let recorded = Trace.stop()
        let mine = TraceFile.Rank(rank: comm.rank, events: recorded.events, threads: recorded.threads)
        var ranks = [mine]
        if comm.size > 1 {
            // Every rank's recording as JSON, one broadcast per rank (a window holds kilobytes
            // to a few megabytes per rank).
            let bytes = Array(try TraceFile.encode(mine))
            var lengths = [Double](repeating: 0, count: comm.size)
            lengths[comm.rank] = Double(bytes.count)
            try comm.allReduce(&lengths, label: "all-reduce of profile sizes")
            for r in 1..<comm.size {
                var buffer = r == comm.rank ? bytes : [UInt8](repeating: 0, count: Int(lengths[r]))
                try comm.broadcast(&buffer, root: r, label: "broadcast of rank \(r)'s profile")
                if isCoordinator, let rank = TraceFile.decode(buffer) { ranks.append(rank) }
            }
        }
        guard isCoordinator else { return }
        let dir = URL(fileURLWithPath: config.out).appendingPathComponent("profile")
        let name = firstStep == lastStep ? "step-\(firstStep).trace.json" : "steps-\(firstStep)-\(lastStep).trace.json"
        let file = dir.appendingPathComponent(name)
        let text = TraceFile.json(ranks, metadata: [
            "steps": "\(firstStep)-\(lastStep)", "world_size": "\(comm.size)", "zero": "\(config.zero.rawValue)",
            "precision": config.precision.rawValue, "model": "\(config.nLayer)L/\(config.nEmbd)/T\(config.blockSize)",
        ])
        do {
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            try Data(text.utf8).write(to: file, options: .atomic)
        } catch {
            // A profile is an aid: a run does not stop because it could not be written.
            log("warning: the profile of steps \(firstStep)–\(lastStep) could not be written to \(file.path) (\(error.localizedDescription))")
            return
        }
        let summary = TraceSummary(recorded.events)
        log("profile of steps \(firstStep)–\(lastStep) on \(comm.size) rank(s) -> \(file.path) "
            + "(open in https://ui.perfetto.dev or chrome://tracing); rank 0, mean of \(summary.steps) step(s):")
        log(summary.table())
        if ranks.count > 1 { log(TraceSummary.ranks(ranks.map { ($0.rank, TraceSummary($0.events)) })) }
    }
}

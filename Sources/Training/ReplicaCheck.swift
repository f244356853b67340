import Comm
import Foundation
import Parallel

// MARK: - Replica divergence check

extension Trainer {
    /// Compares a checksum of every replicated tensor across ranks. Replicas that differ mean
    /// one node computed or stored something else (silent data corruption, a faulty core, a
    /// non-deterministic kernel); training on would spread it, so the job stops.
    func checkReplicas(afterStep step: Int) throws {
        guard comm.size > 1, let mine = strategy.replicaChecksums() else { return }
        let k = mine.count, n = comm.size
        let send = mine.map { Int64(bitPattern: $0) }
        var all = [Int64](repeating: 0, count: k * n)
        try send.withUnsafeBytes { s in
            try all.withUnsafeMutableBytes { r in
                try comm.wait(comm.startAllGather(send: s.baseAddress!, recv: r.baseAddress!, countPerRank: k, dtype: .int64,
                                                  label: "all-gather of replica checksums"))
            }
        }
        for t in 0..<k {
            let values = (0..<n).map { all[$0 * k + t] }
            guard values.contains(where: { $0 != values[0] }) else { continue }
            // The value most ranks hold is taken as right; a tie keeps rank 0's.
            var counts: [Int64: Int] = [:]
            for v in values { counts[v, default: 0] += 1 }
            let most = counts.values.max()!
            let right = counts[values[0]] == most ? values[0] : values.first { counts[$0] == most }!
            throw ReplicaDivergence(step: step, tensor: strategy.layout.tensors[t].name,
                                    ranks: (0..<n).filter { values[$0] != right }, agreeing: counts[right]!, world: n)
        }
    }
}

/// Ranks' replicated parameters differ: the job stops (status 1) without saving the
/// corrupted state.
public struct ReplicaDivergence: Error, CustomStringConvertible {
    public let step: Int, tensor: String, ranks: [Int], agreeing: Int, world: Int
    public var description: String {
        "error: after step \(step), tensor \(tensor) on rank(s) \(ranks.map(String.init).joined(separator: ", ")) differs from "
            + "the other \(agreeing) of \(world) ranks (replica check): silent data corruption or a faulty node; the job "
            + "stopped without saving this state: check that node, then continue with --resume latest"
    }
}

import Comm
import Foundation

// MARK: - Coordinator duties

/// Rank 0's part in starting a job.
public enum Coordinator {
    /// Rank 0 builds and validates the configuration, then broadcasts it, so every rank runs
    /// the coordinator's config. When validation fails on rank 0, every rank gets the same
    /// `ConfigError` (workers stay silent; rank 0 prints it).
    public static func agree(on make: () throws -> TrainConfig, comm: Communicator) throws -> TrainConfig {
        var payload: [UInt8] = []
        var failure: Error?
        if comm.rank == 0 {
            do {
                let c = try make()
                let enc = JSONEncoder(); enc.outputFormatting = [.sortedKeys]
                payload = [1] + Array(try enc.encode(c))
            } catch {
                failure = error
                payload = [0] + Array(String(describing: error).utf8)
            }
        }
        if comm.size > 1 {
            var length = [Double(payload.count)]
            try comm.allReduce(&length, op: .max, label: "broadcast of config length")
            payload = payload.count == Int(length[0]) ? payload : [UInt8](repeating: 0, count: Int(length[0]))
            try comm.broadcast(&payload, root: 0, label: "broadcast of config")
        }
        if let failure { throw failure }
        guard payload.first == 1 else {
            throw ConfigError(flag: "config", problem: "rejected by the coordinator", fix: "see rank 0's error")
        }
        return try JSONDecoder().decode(TrainConfig.self, from: Data(payload.dropFirst()))
    }

    /// Ranks of this job on this node (Open MPI's local size; 1 without mpirun).
    public static func ranksPerNode() -> Int {
        ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_LOCAL_SIZE"].flatMap(Int.init) ?? 1
    }

    /// BLAS threads for this rank: the node's cores divided among the ranks on it.
    public static func defaultThreads() -> Int {
        let cores = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        return max(1, cores / max(1, ranksPerNode()))
    }
}

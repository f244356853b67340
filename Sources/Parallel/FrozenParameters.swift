import Comm
import Kernels
import Model
import Settings

// MARK: - Frozen parameters

/// Parameters that training reads but never updates: the base model under LoRA.
///
/// They are held in the compute precision only (no fp32 master, gradients or optimizer
/// state): replicated on every rank under DDP and ZeRO-1/2, and under ZeRO-3 sharded and
/// gathered unit by unit exactly as trainable parameters are (`GatheredParameters`), so a
/// model that DDP cannot hold can still carry adapters.
public final class FrozenParameters: ParameterProvider {
    /// Where each parameter lives.
    public let layout: ParameterLayout
    private enum Storage { case replicated(ParameterBuffer), sharded(GatheredParameters) }
    private let storage: Storage
    let comm: Communicator

    /// Frozen parameters of `layout` in `precision`, sharded when `stage` shards parameters.
    public init(layout: ParameterLayout, stage: ZeroStage, comm: Communicator, precision: Precision) {
        self.layout = layout
        self.comm = comm
        if stage.shardsParameters {
            let shard = ShardLayout(total: layout.count, ranks: comm.size, rank: comm.rank)
            storage = .sharded(GatheredParameters(layout: layout, shard: shard, comm: comm, precision: precision,
                                                  keepsMaster: false))
        } else {
            storage = .replicated(ParameterBuffer(count: layout.count, precision: precision))
        }
    }

    /// Sets the values from a full fp32 vector (the same on every rank); a sharded rank keeps its shard.
    public func load(from full: UnsafePointer<Float>) {
        switch storage {
        case .replicated(let values): values.store(full, at: 0, count: layout.count)
        case .sharded(let gathered): gathered.load(from: full)
        }
    }

    /// Bytes held between steps, and working buffers by name.
    public var bytes: (parameters: Int, working: [String: Int]) {
        switch storage {
        case .replicated(let values): return (values.byteCount, [:])
        case .sharded(let gathered):
            let b = gathered.bytes
            return (b.parameters, Dictionary(uniqueKeysWithValues: b.working.map { ("frozen base: " + $0.key, $0.value) }))
        }
    }

    /// Seconds spent waiting for gathers since the last reset.
    public var waitSeconds: Double {
        get { if case .sharded(let g) = storage { return g.waitSeconds } else { return 0 } }
        set { if case .sharded(let g) = storage { g.waitSeconds = newValue } }
    }

    // MARK: ParameterProvider

    public func acquireParameters(unit: Int) -> UnsafeMutablePointer<Float> {
        switch storage {
        case .replicated(let values): return values.wide(at: layout.units[unit].lowerBound)
        case .sharded(let gathered): return gathered.acquire(unit: unit)
        }
    }

    public func acquireLowParameters(unit: Int, precision: Precision) -> UnsafeMutablePointer<UInt16>? {
        switch storage {
        case .replicated(let values): return values.low(at: layout.units[unit].lowerBound, as: precision)
        case .sharded(let gathered): return gathered.acquireLow(unit: unit, precision: precision)
        }
    }

    public func releaseParameters(unit: Int) {
        if case .sharded(let gathered) = storage { gathered.release(unit: unit) }
    }

    public func beginForward() {
        if case .sharded(let gathered) = storage { gathered.setBackward(false) }
    }

    public func beginBackward() {
        if case .sharded(let gathered) = storage { gathered.setBackward(true) }
    }

    public func gradients(unit: Int) -> UnsafeMutablePointer<Float> {
        preconditionFailure("frozen parameters have no gradients")
    }

    public func gradientsProduced(unit: Int) {}
}

// MARK: - Budget from a measured run

/// What a tessera run measured, read from its metrics.jsonl.
public struct MeasuredThroughput: Codable, Equatable, Sendable {
    /// Median tokens/s over the steps after warm-up (the first 10%, at least one step).
    public var tokensPerSecond: Double
    public var params: Double
    public var worldSize: Int
    /// Achieved model FLOP/s per rank by 6N per token.
    public var flopsPerRank: Double { 6 * params * tokensPerSecond / Double(worldSize) }

    /// Parses metrics lines (one JSON object each).
    public static func read(metricsJSONL bytes: [UInt8], path: String) throws(ScalingError) -> MeasuredThroughput {
        var tps: [Double] = []
        var params: Double?, world: Int?
        for line in bytes.split(separator: 0x0A) {
            let l = Array(line)
            guard let t = JSONLite.number("tokens_per_s", in: l) else { continue }
            tps.append(t)
            params = params ?? JSONLite.number("params", in: l)
            world = world ?? JSONLite.number("world_size", in: l).map { Int($0) }
        }
        guard !tps.isEmpty, let p = params, let w = world, w > 0 else {
            throw ScalingError("--metrics", "\(path) has no tessera step metrics (tokens_per_s, params, world_size)",
                               "pass RUN/metrics.jsonl of a tessera training run")
        }
        let steady = Array(tps.dropFirst(max(1, tps.count / 10)))
        let s = (steady.isEmpty ? tps : steady).sorted()
        return MeasuredThroughput(tokensPerSecond: s[s.count / 2], params: p, worldSize: w)
    }
}

/// The compute-optimal run a cluster of `ranks` such ranks can finish in `hours`, assuming
/// the measured per-rank FLOP rate holds (same MFU at the larger size, linear scaling).
public struct BudgetPlan: Codable, Equatable, Sendable {
    public var measured: MeasuredThroughput
    public var ranks: Int
    public var hours: Double
    public var clusterFlopsPerSecond: Double
    public var allocation: Allocation

    public static func plan(measured: MeasuredThroughput, ranks: Int, hours: Double, fit: ScalingFit) throws(ScalingError) -> BudgetPlan {
        try ScalingError.positive(hours, "--hours")
        guard ranks > 0 else { throw ScalingError("--ranks", "is \(ranks)", "pass a positive number of ranks") }
        let rate = measured.flopsPerRank * Double(ranks)
        let alloc = try Optimum.allocate(flops: rate * hours * 3600, fit: fit)
        return BudgetPlan(measured: measured, ranks: ranks, hours: hours, clusterFlopsPerSecond: rate, allocation: alloc)
    }
}

import Foundation

// MARK: - Blend

/// How a mixture of datasets shares out samples: Megatron-LM's blended datasets, with a
/// schedule that is a pure function of the sample's number.
///
/// Weights are kept to 1/`cycle` (1/1000): each cycle of 1000 consecutive samples gives
/// source i 1000·wᵢ of them to within one (largest remainders), spread through the cycle by
/// smooth weighted round-robin (nginx's), so a batch's share is close to the weights too. The
/// source of sample n, and how many samples that source gave before it, are read from one
/// cycle's tables, so any rank, any step and a resumed run agree without a saved position.
public struct Blend: Sendable, Equatable {
    /// Samples per cycle.
    public static let cycle = 1000
    /// Weights as given, normalised to sum to 1.
    public let weights: [Double]
    /// Samples per cycle of each source.
    public let counts: [Int]
    /// The source of each position in a cycle.
    private let order: [UInt16]
    /// prefix[r·S + i]: samples source i gets in a cycle's positions 0..<r.
    private let prefix: [Int32]

    /// A blend of sources weighted by `weights` (positive; normalised here). Nil when a
    /// weight's share of a cycle rounds to 0.
    public init?(weights raw: [Double]) {
        let total = raw.reduce(0, +), S = raw.count, D = Self.cycle
        guard S >= 1, S < Int(UInt16.max), raw.allSatisfy({ $0 > 0 && $0.isFinite }), total.isFinite else { return nil }
        let w = raw.map { $0 / total }
        let floors = w.map { Int(($0 * Double(D)).rounded(.down)) }
        let remainders = w.indices.sorted {
            let a = w[$0] * Double(D) - Double(floors[$0]), b = w[$1] * Double(D) - Double(floors[$1])
            return a != b ? a > b : $0 < $1
        }
        var counts = floors
        for i in remainders.prefix(D - floors.reduce(0, +)) { counts[i] += 1 }
        guard counts.allSatisfy({ $0 > 0 }) else { return nil }
        weights = w
        self.counts = counts
        var current = [Int](repeating: 0, count: S), sequence: [UInt16] = [], prefix = [Int32](repeating: 0, count: (D + 1) * S)
        for r in 0..<D {
            for i in 0..<S { current[i] += counts[i] }
            let pick = (0..<S).max { current[$0] != current[$1] ? current[$0] < current[$1] : $0 > $1 }!
            current[pick] -= D
            sequence.append(UInt16(pick))
            for i in 0..<S { prefix[(r + 1) * S + i] = prefix[r * S + i] + (i == pick ? 1 : 0) }
        }
        self.order = sequence
        self.prefix = prefix
    }

    /// The source of sample `n` and how many samples that source gave before it.
    public func source(of n: Int) -> (source: Int, k: Int) {
        let i = Int(order[n % Self.cycle])
        return (i, samples(of: i, before: n))
    }

    /// Samples source `i` gets among the first `n`.
    public func samples(of i: Int, before n: Int) -> Int {
        let D = Self.cycle
        return (n / D) * counts[i] + Int(prefix[(n % D) * counts.count + i])
    }
}

// MARK: - A mixture's sources

/// `--data` naming several datasets with weights: `0.7:data/web,0.3:data/code` (weight
/// first, as Megatron-LM's `--data-path`), each part any `--data` form.
public struct MixtureSpec: Sendable, Equatable {
    public var weights: [Double]
    public var paths: [String]

    public init(weights: [Double], paths: [String]) { self.weights = weights; self.paths = paths }

    /// Short names for displays (progress lines, TensorBoard tags): each path's last
    /// component, or the whole paths when two would share one.
    public var names: [String] {
        let last = paths.map { ($0 as NSString).lastPathComponent }
        return Set(last).count == last.count ? last : paths
    }

    /// The parts of `spec`, or nil when it names one dataset (no comma and no leading weight).
    public static func parse(_ spec: String) throws(DataError) -> MixtureSpec? {
        let parts = spec.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard parts.count > 1 || spec.range(of: #"^[0-9.eE+-]+:"#, options: .regularExpression) != nil else { return nil }
        var out = MixtureSpec(weights: [], paths: [])
        for p in parts {
            guard let colon = p.firstIndex(of: ":"), let w = Double(p[..<colon]), w > 0, w.isFinite,
                  !p[p.index(after: colon)...].isEmpty else {
                throw DataError.invalid(path: spec, problem: "has the part '\(p)', not WEIGHT:DATA",
                                        fix: "name each dataset with a positive weight, e.g. --data 0.7:data/web,0.3:data/code")
            }
            let path = String(p[p.index(after: colon)...])
            guard !out.paths.contains(path) else {
                throw DataError.invalid(path: spec, problem: "names \(path) twice", fix: "give each dataset one WEIGHT:DATA part")
            }
            out.weights.append(w)
            out.paths.append(path)
        }
        return out
    }
}

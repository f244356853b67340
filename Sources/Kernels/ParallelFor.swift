import Dispatch

// MARK: - Element-wise parallelism

/// Splits element-wise work over the threads a rank owns.
///
/// The split is a fixed function of (count, threads), so results are reproducible run to run;
/// loops that accumulate across rows are not split here. GEMMs parallelise themselves and are
/// never called from inside a split.
public enum ParallelFor {
    /// Threads to use (set with the GEMM thread count).
    public nonisolated(unsafe) static var threads = 1

    /// Calls `body(lo, hi)` on disjoint chunks covering 0..<count, in parallel when the work is
    /// large enough to pay for the hand-off.
    @inlinable
    public static func chunks(_ count: Int, minimum: Int = 32_768, _ body: (Int, Int) -> Void) {
        let k = min(threads, max(1, count / minimum))
        if k <= 1 { body(0, count); return }
        let step = (count + k - 1) / k
        // The chunks touch disjoint memory; the closure only runs until concurrentPerform returns.
        withoutActuallyEscaping(body) { run in
            nonisolated(unsafe) let run = run
            DispatchQueue.concurrentPerform(iterations: k) { i in
                let lo = i * step, hi = min(count, lo + step)
                if lo < hi { run(lo, hi) }
            }
        }
    }
}

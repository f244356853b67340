import CKernels

// MARK: - Element-wise parallelism

/// Splits element-wise work over the threads a rank owns.
///
/// The split is a fixed function of (count, threads), so results are reproducible run to run;
/// loops that accumulate across rows are not split here. GEMMs parallelise themselves and are
/// never called from inside a split; `tasks` is the exception, running independent pieces of
/// work (attention heads) that each call single-threaded GEMMs.
public enum ParallelFor {
    /// Threads to use (set with the GEMM thread count).
    public nonisolated(unsafe) static var threads = 1

    /// Threads a new split may use: just the caller's own inside a `tasks` region, where
    /// every thread of the team is already running a task.
    @usableFromInline static var freeThreads: Int { tessera_in_parallel() != 0 ? 1 : threads }

    /// Calls `body(lo, hi)` on disjoint chunks covering 0..<count, in parallel when the work is
    /// large enough to pay for the hand-off.
    @inlinable
    public static func chunks(_ count: Int, minimum: Int = 32_768, _ body: (Int, Int) -> Void) {
        let k = min(freeThreads, max(1, count / minimum))
        if k <= 1 { body(0, count); return }
        let step = (count + k - 1) / k
        // On the OpenMP team the GEMMs use, not a second thread pool: right after a GEMM its
        // threads spin waiting for more work and would take the cores from other threads.
        tasks(k, workers: k) { i, _ in
            let lo = i * step, hi = min(count, lo + step)
            if lo < hi { body(lo, hi) }
        }
    }

    /// Calls `body(index, worker)` for every index in 0..<count, spread over up to `workers`
    /// threads of the rank's OpenMP team (`worker` < `workers` names per-thread scratch).
    ///
    /// GEMMs inside run single-threaded on their task's thread, and splits started inside a
    /// task (`chunks`, `blocks`, nested `tasks`) run inline on it, since every thread is
    /// already busy; so many small products cost no fork/join each. Tasks must touch disjoint
    /// memory. Which thread runs which index varies, so a task's result must not depend on its
    /// worker.
    public static func tasks(_ count: Int, workers: Int, _ body: (Int, Int) -> Void) {
        if min(workers, freeThreads) <= 1 || count <= 1 {
            for i in 0..<count { body(i, 0) }
            return
        }
        withoutActuallyEscaping(body) { run in
            var job = run
            withUnsafeMutablePointer(to: &job) { context in
                tessera_parallel_tasks(Int64(count), Int64(workers), { context, index, worker in
                    let run = context!.assumingMemoryBound(to: ((Int, Int) -> Void).self).pointee
                    run(Int(index), Int(worker))
                }, context)
            }
        }
    }

    /// Calls `body(lo, hi, block)` for fixed blocks of `size` rows covering 0..<count, spread
    /// over the rank's threads. The blocks do not depend on the thread count, so per-block
    /// partial sums added in block order give the same bits with any number of threads.
    public static func blocks(_ count: Int, size: Int, _ body: (Int, Int, Int) -> Void) {
        tasks(blockCount(count, size: size), workers: threads) { b, _ in body(b * size, min(count, (b + 1) * size), b) }
    }

    /// Number of blocks `blocks(count, size:)` uses.
    public static func blockCount(_ count: Int, size: Int) -> Int { (count + size - 1) / size }
}

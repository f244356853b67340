import Foundation

// MARK: - Trace

/// A timeline of what this process does: spans of the training step, the model's layers,
/// communication waits and collectives in flight, recorded only while a profile window is
/// open (`train --profile`) and written in Chrome's trace-event format, which Perfetto and
/// chrome://tracing open.
///
/// Off, a span costs one load of `isEnabled`: `begin()` returns 0 without reading the
/// clock and `end` returns at once, its name (an autoclosure) never built. Recording takes
/// a lock, as the checkpoint writer's thread records too; spans are coarse (tens per layer
/// per step), never per element.
public enum Trace {
    /// What a span is spent on; the summary adds self time up by category.
    public enum Category: String, Codable, Sendable, CaseIterable {
        /// The whole step, micro-steps, and what no other category covers.
        case step
        /// Filling a batch.
        case data
        /// Forward and backward arithmetic.
        case compute
        /// Waiting for a collective (the span) and collectives in flight (async spans).
        case comm
        /// Gradient norm, clipping and the optimizer's update.
        case optimizer
        /// Validation and multiple-choice evaluation.
        case eval
        /// Saving and writing checkpoints.
        case checkpoint
    }

    nonisolated(unsafe) private static var enabled = false
    nonisolated(unsafe) private static var events: [TraceEvent] = []
    nonisolated(unsafe) private static var threads: [UInt: Int] = [:]
    nonisolated(unsafe) private static var threadNames: [Int: String] = [:]
    nonisolated(unsafe) private static var origin: UInt64 = 0
    nonisolated(unsafe) private static var nextAsyncID = 0
    private static let lock = NSLock()

    /// Whether spans are being recorded.
    @inline(__always) public static var isEnabled: Bool { enabled }

    /// Starts recording, with time 0 now (call right after a barrier, so every rank's 0 is
    /// the same moment to within the barrier's exit skew). The calling thread is thread 0,
    /// named `threadName`.
    public static func start(threadName: String) {
        lock.lock(); defer { lock.unlock() }
        events = []; threads = [:]; threadNames = [:]; nextAsyncID = 0
        threadNames[threadID()] = threadName
        origin = now()
        enabled = true
    }

    /// Stops recording and returns what was recorded, and the threads' names by id.
    public static func stop() -> (events: [TraceEvent], threads: [Int: String]) {
        lock.lock(); defer { lock.unlock() }
        enabled = false
        let out = (events, threadNames)
        events = []
        return out
    }

    /// A span's start: the clock when recording, else 0.
    @inline(__always) public static func begin() -> UInt64 { enabled ? now() : 0 }

    /// Ends the span begun at `start` (nothing if that was 0, or recording stopped since).
    @inline(__always)
    public static func end(_ start: UInt64, _ category: Category, _ name: @autoclosure () -> String,
                           args: @autoclosure () -> [String: TraceValue] = [:]) {
        guard start != 0, enabled else { return }
        record(TraceEvent(name: name(), category: category, start: start, end: now(), thread: 0, async: nil, args: args()))
    }

    /// Runs `body` inside a span.
    @inline(__always) @discardableResult
    public static func span<T>(_ category: Category, _ name: @autoclosure () -> String,
                               args: @autoclosure () -> [String: TraceValue] = [:], _ body: () throws -> T) rethrows -> T {
        let t = begin()
        defer { end(t, category, name(), args: args()) }
        return try body()
    }

    /// Something that was in flight from `start` until now on no thread in particular (a
    /// nonblocking collective): drawn on a track of its own, beside the threads.
    public static func inFlight(_ start: UInt64, _ category: Category, _ name: @autoclosure () -> String,
                                args: @autoclosure () -> [String: TraceValue] = [:]) {
        guard start != 0, enabled else { return }
        lock.lock(); let id = nextAsyncID; nextAsyncID += 1; lock.unlock()
        record(TraceEvent(name: name(), category: category, start: start, end: now(), thread: 0, async: id, args: args()))
    }

    /// Names the calling thread in the timeline ("training", "checkpoint writer").
    public static func nameThread(_ name: String) {
        guard enabled else { return }
        lock.lock(); defer { lock.unlock() }
        threadNames[threadID()] = name
    }

    private static func record(_ e: TraceEvent) {
        lock.lock(); defer { lock.unlock() }
        guard enabled, e.start >= origin else { return }
        var e = e
        e.thread = threadID()
        e.start -= origin; e.end -= origin
        events.append(e)
    }

    /// Small ids for threads, in the order they first recorded (under the lock).
    private static func threadID() -> Int {
        #if canImport(Glibc)
        let key = UInt(pthread_self())
        #else
        let key = UInt(bitPattern: pthread_self())
        #endif
        if let id = threads[key] { return id }
        let id = threads.count
        threads[key] = id
        return id
    }

    /// Monotonic nanoseconds (never 0).
    @inline(__always) static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec) + 1
    }
}

// MARK: - Events

/// A value attached to a span (shown when the span is selected in the viewer).
public enum TraceValue: Codable, Equatable, Sendable {
    case int(Int)
    case text(String)
}

/// One recorded span; times are nanoseconds since the window opened.
public struct TraceEvent: Codable, Equatable, Sendable {
    public var name: String
    public var category: Trace.Category
    public var start: UInt64, end: UInt64
    /// The recording thread's id (0: the thread that opened the window, the training loop).
    public var thread: Int
    /// Set for work in flight (a collective), drawn as an async span with this id.
    public var async: Int?
    public var args: [String: TraceValue]

    public init(name: String, category: Trace.Category, start: UInt64, end: UInt64, thread: Int, async: Int?,
                args: [String: TraceValue]) {
        self.name = name; self.category = category; self.start = start; self.end = end
        self.thread = thread; self.async = async; self.args = args
    }

    public var duration: UInt64 { end - start }
}

import Foundation
import Kernels
import Settings
import XCTest

/// `ParallelFor.tasks` runs every index exactly once, on at most `workers` threads that it
/// names 0..<workers, and `chunks` inside a task runs inline.
final class ParallelTasksTests: XCTestCase {
    override func setUp() { Gemm.setThreads(2) }
    override func tearDown() { Gemm.setThreads(1) }

    func testEveryIndexRunsOnceOnTheNamedWorkers() {
        let count = 64
        let seen = UnsafeMutablePointer<Int>.allocate(capacity: count)
        let workerOf = UnsafeMutablePointer<Int>.allocate(capacity: count)
        let chunkCalls = UnsafeMutablePointer<Int>.allocate(capacity: count)
        defer { seen.deallocate(); workerOf.deallocate(); chunkCalls.deallocate() }
        seen.initialize(repeating: 0, count: count)
        chunkCalls.initialize(repeating: 0, count: count)
        ParallelFor.tasks(count, workers: 2) { i, worker in
            seen[i] += 1
            workerOf[i] = worker
            usleep(500)   // long enough that the second thread takes some tasks
            ParallelFor.chunks(1 << 20, minimum: 1) { _, _ in chunkCalls[i] += 1 }
        }
        XCTAssertEqual((0..<count).map { seen[$0] }, Array(repeating: 1, count: count))
        XCTAssertEqual(Set((0..<count).map { workerOf[$0] }), [0, 1], "both workers took tasks")
        XCTAssertEqual((0..<count).map { chunkCalls[$0] }, Array(repeating: 1, count: count), "chunks ran inline")
    }
}

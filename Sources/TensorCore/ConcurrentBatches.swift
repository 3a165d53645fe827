import Dispatch
import Foundation
import Synchronization

/// Planning work spread over the machine's cores while its results are still taken in order:
/// `transform` runs concurrently over a batch of indices, `consume` on the calling thread in
/// index order, so only one batch of results is held. A plan of 400,000 chunk reads spends most
/// of its time finding the reads (independent per box) and little appending them.
///
/// Errors surface as a sequential loop's would: the first failing index in order, after every
/// earlier index was consumed.
public enum ConcurrentBatches {
    public static let defaultWorkers = max(1, min(ProcessInfo.processInfo.activeProcessorCount, 8))

    public static func forEach<T>(count: Int, batchSize: Int = 4096, workers: Int = defaultWorkers,
                                  _ transform: @Sendable (Int) throws -> T, consume: (Int, T) throws -> Void) throws {
        guard workers > 1, count >= 256 else {
            for index in 0..<count { try consume(index, try transform(index)) }
            return
        }
        let slots = Slots<T>(count: min(batchSize, count))
        defer { slots.release() }
        var start = 0
        while start < count {
            let (first, end) = (start, min(start + batchSize, count))
            let next = Atomic<Int>(first)
            DispatchQueue.concurrentPerform(iterations: workers) { _ in
                while true {
                    let index = next.wrappingAdd(1, ordering: .relaxed).oldValue
                    guard index < end else { return }
                    slots.store(Result { try transform(index) }, at: index - first)
                }
            }
            for index in start..<end { try consume(index, try slots.take(index - start).get()) }
            start = end
        }
    }

    /// One batch of results, each slot written by one worker and read after they all finish
    /// (`concurrentPerform` returning orders the two).
    private final class Slots<T>: @unchecked Sendable {
        private let buffer: UnsafeMutableBufferPointer<Result<T, any Error>?>

        init(count: Int) {
            buffer = .allocate(capacity: count)
            buffer.initialize(repeating: nil)
        }

        func store(_ result: Result<T, any Error>, at index: Int) { buffer[index] = result }

        func take(_ index: Int) -> Result<T, any Error> {
            defer { buffer[index] = nil }
            return buffer[index]!
        }

        func release() {
            buffer.deinitialize()
            buffer.deallocate()
        }
    }
}

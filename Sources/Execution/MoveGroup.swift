import Dispatch
#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import TensorCore

/// Sees a group's bytes in order, zeros included: for checksums computed while copying, so an
/// output is never read back just to hash it.
public protocol StreamObserver: AnyObject, Sendable {
    func consume(_ bytes: UnsafeRawBufferPointer) throws
    /// Called once after the last byte.
    func finish() throws
}

/// An ordered list of copies into one sink, done by one worker from start to end, so an
/// observer sees the group's bytes in order (a tensor, or a checkpoint chunk).
public struct MoveGroup: Sendable {
    public enum Step: Sendable {
        case copy(source: ReadOnlyFile, range: ByteRange, destinationOffset: Int64)
        /// Bytes that read as zero in the output without being written (a fresh file's hole),
        /// shown to the observer all the same.
        case zeros(count: Int64)
        /// A column slice of a row-major block: `rows` rows starting at `firstRow` (a file
        /// offset), `rowStride` bytes apart; from each, `segmentBytes` bytes at `segmentOffset`.
        /// The segments land back to back at `destinationOffset` (a tensor-parallel row split).
        case strided(source: ReadOnlyFile, firstRow: Int64, rowStride: Int64, segmentOffset: Int64, segmentBytes: Int64,
                     rows: Int64, destinationOffset: Int64)
    }

    public let sink: any ByteSink
    public let steps: [Step]
    public let observer: (any StreamObserver)?
    /// Groups writing one file share a lane; workers keep to their own lane while it has work,
    /// because writes to one file serialize on its inode lock in the kernel.
    public let lane: Int

    public init(sink: any ByteSink, steps: [Step], observer: (any StreamObserver)? = nil, lane: Int = 0) {
        self.sink = sink
        self.steps = steps
        self.observer = observer
        self.lane = lane
    }

    public var byteCount: Int64 {
        steps.reduce(0) { total, step in
            switch step {
            case .copy(_, let range, _): total + range.count
            case .zeros(let count): total + count
            case .strided(_, _, _, _, let segment, let rows, _): total + segment * rows
            }
        }
    }
}

extension MoveExecutor {
    /// Runs groups on the worker pool, largest first; each group's steps in order on one worker.
    /// Without an observer and in `.kernel` mode copies go through `copy_file_range`.
    public func run(groups: [MoveGroup], progress: ProgressCounter? = nil) throws {
        // One queue per lane, largest group first; a worker takes from its own lane, then steals.
        let lanes = Dictionary(grouping: groups.indices, by: { groups[$0].lane }).sorted { $0.key < $1.key }
            .map { $0.value.sorted { groups[$0].byteCount > groups[$1].byteCount } }
        let queues = Mutex(lanes)
        @Sendable func take(_ worker: Int) -> Int? {
            queues.withLock { queues in
                guard !queues.isEmpty else { return nil }
                for offset in 0..<queues.count {
                    let lane = (worker + offset) % queues.count
                    if !queues[lane].isEmpty { return queues[lane].removeFirst() }
                }
                return nil
            }
        }
        let failure = Mutex<(any Error)?>(nil)
        let chunk = chunkBytes
        let mode = self.mode
        let pool = self.pool
        runLock.withLock { _ in
            DispatchQueue.concurrentPerform(iterations: min(workers, max(groups.count, 1))) { worker in
                let buffer = pool.buffer(worker)
                while failure.withLock({ $0 == nil }) {
                    guard let index = take(worker) else { return }
                    let group = groups[index]
                    do {
                        for step in group.steps {
                            switch step {
                            case .zeros(var left):
                                guard let observer = group.observer else { continue }
                                let zeroed = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(min(left, Int64(chunk)))])
                                zeroed.initializeMemory(as: UInt8.self, repeating: 0)
                                while left > 0 {
                                    let count = Int(min(left, Int64(zeroed.count)))
                                    try observer.consume(UnsafeRawBufferPointer(rebasing: zeroed[0..<count]))
                                    left -= Int64(count)
                                }
                            case .strided(let source, let firstRow, let stride, let segmentOffset, let segment, let rows, let destination):
                                // Whole rows are read in blocks and compacted in place, so a column
                                // slice costs one read per block, not one per row.
                                let rowsPerBlock = stride <= Int64(chunk) ? max(1, Int64(chunk) / stride) : 0
                                var row: Int64 = 0
                                var written: Int64 = 0
                                while row < rows {
                                    let count: Int64
                                    if rowsPerBlock > 0 {
                                        count = min(rowsPerBlock, rows - row)
                                        let block = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(count * stride)])
                                        try source.read(into: block, at: firstRow + row * stride)
                                        for index in 0..<Int(count) {
                                            let from = buffer.baseAddress! + index * Int(stride) + Int(segmentOffset)
                                            let to = buffer.baseAddress! + index * Int(segment)
                                            if from != to { memmove(to, from, Int(segment)) }
                                        }
                                    } else {
                                        count = 1
                                        precondition(segment <= Int64(chunk), "a row segment larger than the buffer")
                                        let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(segment)])
                                        try source.read(into: piece, at: firstRow + row * stride + segmentOffset)
                                    }
                                    let bytes = UnsafeRawBufferPointer(rebasing: buffer[0..<Int(count * segment)])
                                    try group.sink.write(bytes, at: destination + written)
                                    try group.observer?.consume(bytes)
                                    progress?.add(Int64(bytes.count))
                                    written += Int64(bytes.count)
                                    row += count
                                }
                            case .copy(let source, let range, let destination):
                                if mode == .kernel, group.observer == nil,
                                    try group.sink.copy(from: source, range: range, to: destination)
                                {
                                    progress?.add(range.count)
                                    continue
                                }
                                var done: Int64 = 0
                                while done < range.count {
                                    let count = Int(min(Int64(chunk), range.count - done))
                                    let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count])
                                    try source.read(into: slice, at: range.offset + done)
                                    try group.sink.write(UnsafeRawBufferPointer(slice), at: destination + done)
                                    try group.observer?.consume(UnsafeRawBufferPointer(slice))
                                    done += Int64(count)
                                    progress?.add(Int64(count))
                                }
                            }
                        }
                        try group.observer?.finish()
                    } catch {
                        failure.withLock { if $0 == nil { $0 = error } }
                        return
                    }
                }
            }
        }
        if let error = failure.withLock({ $0 }) { throw error }
    }
}

import Dispatch
import Synchronization
import TensorCore

/// Runs byte moves into an output file with a fixed number of workers. Memory is bounded by
/// `workers × chunkBytes` (buffers allocated once and reused: first touch of fresh memory is
/// slow), never by the size of a tensor or a model.
public final class MoveExecutor: Sendable {
    public enum CopyMode: String, Sendable, CaseIterable {
        /// `copy_file_range` inside the kernel, falling back to `buffered` where unsupported.
        case kernel
        /// `pread` into a pooled buffer, then `pwrite`.
        case buffered
    }

    public let workers: Int
    public let chunkBytes: Int
    public let mode: CopyMode
    let pool: BufferPool
    /// One run at a time: the workers of a run own the pool's buffers (a second run on the same
    /// executor from another thread waits instead of sharing them).
    let runLock = Mutex(())

    public init(workers: Int = 2, chunkBytes: Int = 16 << 20, mode: CopyMode = .kernel) {
        precondition(workers > 0 && chunkBytes > 0)
        self.workers = workers
        self.chunkBytes = chunkBytes
        self.mode = mode
        pool = BufferPool(count: workers, size: chunkBytes)
    }

    /// Peak bytes this executor holds, whatever the model size (a cast adds twice as much scratch).
    public var bufferBytes: Int { workers * chunkBytes }

    /// Copies every move into `output`, in parallel. The first failure stops the run and is thrown.
    public func run(_ moves: [ByteMove], into output: some ByteSink, progress: ProgressCounter? = nil) throws {
        var pieces: [ByteMove] = []
        for move in moves {
            var done: Int64 = 0
            while done < move.range.count {
                let length = min(Int64(chunkBytes), move.range.count - done)
                pieces.append(ByteMove(
                    source: move.source, range: move.range.slice(from: done, count: length),
                    destinationOffset: move.destinationOffset + done))
                done += length
            }
        }
        let work = pieces
        let next = Atomic<Int>(0)
        let failure = Mutex<(any Error)?>(nil)
        let mode = self.mode
        let pool = self.pool
        runLock.withLock { _ in
            DispatchQueue.concurrentPerform(iterations: min(workers, max(work.count, 1))) { worker in
                let buffer = pool.buffer(worker)
                while failure.withLock({ $0 == nil }) {
                    let index = next.wrappingAdd(1, ordering: .relaxed).oldValue
                    guard index < work.count else { return }
                    let piece = work[index]
                    do {
                        var copied = false
                        if mode == .kernel {
                            copied = try output.copy(from: piece.source, range: piece.range, to: piece.destinationOffset)
                        }
                        if !copied {
                            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(piece.range.count)])
                            try piece.source.read(into: slice, at: piece.range.offset)
                            try output.write(UnsafeRawBufferPointer(slice), at: piece.destinationOffset)
                        }
                        progress?.add(piece.range.count)
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

/// Buffers allocated once per executor and handed one to each worker.
final class BufferPool: @unchecked Sendable {
    private let buffers: [UnsafeMutableRawBufferPointer]
    /// Per worker, room for a buffer's bytes once converted (a cast at most doubles them). Pages
    /// never touched cost no memory, so a run without casts does not pay for these.
    private let scratches: [UnsafeMutableRawBufferPointer]

    init(count: Int, size: Int) {
        buffers = (0..<count).map { _ in UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 4096) }
        scratches = (0..<count).map { _ in UnsafeMutableRawBufferPointer.allocate(byteCount: 2 * size, alignment: 4096) }
    }

    deinit {
        buffers.forEach { $0.deallocate() }
        scratches.forEach { $0.deallocate() }
    }

    func buffer(_ index: Int) -> UnsafeMutableRawBufferPointer { buffers[index] }
    func scratch(_ index: Int) -> UnsafeMutableRawBufferPointer { scratches[index] }
}

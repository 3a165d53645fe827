import Synchronization

/// A growable in-memory `ByteSink`, for small archives (object items, `data.pkl` records).
public final class MemoryByteSink: ByteSink {
    private let storage = Mutex<[UInt8]>([])

    public init() {}

    public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws {
        storage.withLock { buffer in
            let end = Int(offset) + bytes.count
            if buffer.count < end { buffer.append(contentsOf: repeatElement(0, count: end - buffer.count)) }
            buffer.withUnsafeMutableBytes { target in
                UnsafeMutableRawBufferPointer(rebasing: target[Int(offset)..<end]).copyMemory(from: bytes)
            }
        }
    }

    public func copy(from source: ReadOnlyFile, range: ByteRange, to offset: Int64) throws -> Bool { false }

    /// Memory has no holes: the zeros are stored.
    public func leaveZeros(at offset: Int64, count: Int64) throws {
        storage.withLock { buffer in
            let end = Int(offset + count)
            if buffer.count < end { buffer.append(contentsOf: repeatElement(0, count: end - buffer.count)) }
            buffer.withUnsafeMutableBytes { target in
                UnsafeMutableRawBufferPointer(rebasing: target[Int(offset)..<end]).initializeMemory(as: UInt8.self, repeating: 0)
            }
        }
    }

    /// Everything written so far.
    public var bytes: [UInt8] { storage.withLock { $0 } }
}

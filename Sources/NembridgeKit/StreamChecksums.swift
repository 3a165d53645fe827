import Execution
import Synchronization
import TensorCore
import TorchZip

/// Checksums of one group's bytes computed while they are copied: XXH3-64 for the manifest, and
/// CRC-32 for a zip record when `onFinish` wants it.
final class StreamChecksums: StreamObserver, @unchecked Sendable {
    private let xxh3 = XXH3Hasher()
    /// CRC-32 of the bytes before the current run, and of the current run (zeros between runs are
    /// folded in arithmetically instead of being checksummed byte by byte).
    private var crcBefore: UInt32 = 0
    private var crc = CRC32()
    private var runCount: Int64 = 0
    private var count: Int64 = 0
    private let wantsCRC: Bool
    private let onFinish: (_ xxh3: UInt64, _ crc: UInt32, _ count: Int64) throws -> Void

    init(crc wantsCRC: Bool = false, onFinish: @escaping (_ xxh3: UInt64, _ crc: UInt32, _ count: Int64) throws -> Void) {
        self.wantsCRC = wantsCRC
        self.onFinish = onFinish
    }

    func consume(_ bytes: UnsafeRawBufferPointer) throws {
        xxh3.update(bytes)
        if wantsCRC { crc.update(bytes) }
        runCount += Int64(bytes.count)
        count += Int64(bytes.count)
    }

    /// Zeros (padding, holes): XXH3 sees them from a page of zeros, CRC-32 folds them in by
    /// `CRC32.zeros`, which costs a few matrix products whatever their length.
    func consumeZeros(_ zeros: Int64) throws {
        var left = zeros
        while left > 0 {
            let step = Int(min(left, Int64(ZeroPage.bytes.count)))
            xxh3.update(UnsafeRawBufferPointer(rebasing: ZeroPage.bytes[0..<step]))
            left -= Int64(step)
        }
        if wantsCRC {
            crcBefore = CRC32.combine(CRC32.combine(crcBefore, crc.value, runCount), CRC32.zeros(count: zeros), zeros)
            crc = CRC32()
            runCount = 0
        }
        count += zeros
    }

    func finish() throws {
        try onFinish(xxh3.digest, wantsCRC ? CRC32.combine(crcBefore, crc.value, runCount) : 0, count)
    }
}

/// Collects digests from many workers, by position.
final class DigestTable: Sendable {
    private let values: Mutex<[UInt64?]>

    init(count: Int) { values = Mutex([UInt64?](repeating: nil, count: count)) }

    func set(_ index: Int, _ value: UInt64) { values.withLock { $0[index] = value } }

    var all: [UInt64] { values.withLock { $0.map { $0! } } }

    /// The digest at `index`, nil while unset (an item of a file kept from an interrupted run).
    func get(_ index: Int) -> UInt64? { values.withLock { $0[index] } }
}

/// Where planned bytes land: positional writes, and kernel-side copies where the sink allows.
public protocol ByteSink: Sendable {
    /// Writes all of `bytes` at absolute file `offset`.
    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws
    /// Copies `range` of `source` to `offset` without user-space buffers; false if unsupported.
    func copy(from source: ReadOnlyFile, range: ByteRange, to offset: Int64) throws -> Bool
    /// `count` bytes at `offset` that are zeros and are not written: a fresh file reads as zeros
    /// there (a hole, as `cp --sparse` leaves one). The sink still counts them as written.
    func leaveZeros(at offset: Int64, count: Int64) throws
}

extension ByteSink {
    /// A fresh file needs nothing: its writer gives it its full length before publishing.
    public func leaveZeros(at offset: Int64, count: Int64) throws {}
}

extension AtomicOutputFile: ByteSink {}

/// The sink of an output kept from an interrupted run: the plan has no moves into it, so any
/// write is a planning bug.
public struct KeptFileSink: ByteSink {
    public var name: String
    public init(name: String) { self.name = name }
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws {
        preconditionFailure("a write into \(name), which was kept from the interrupted run")
    }
    public func copy(from source: ReadOnlyFile, range: ByteRange, to offset: Int64) throws -> Bool {
        preconditionFailure("a copy into \(name), which was kept from the interrupted run")
    }
}

/// A half-open range of bytes `[offset, offset + count)` inside one file.
public struct ByteRange: Hashable, Sendable, CustomStringConvertible {
    public var offset: Int64
    public var count: Int64

    /// A range whose bounds are known to be valid; traps otherwise. Offsets and lengths read
    /// from input go through `init?(validatingOffset:count:)` instead.
    public init(offset: Int64, count: Int64) {
        precondition(offset >= 0 && count >= 0, "byte range must be non-negative")
        precondition(offset <= Int64.max - count, "byte range end overflows")
        self.offset = offset
        self.count = count
    }

    /// The range `[offset, offset + count)` when both are non-negative and the end fits
    /// `Int64`; nil otherwise. For offsets and lengths read from input.
    public init?(validatingOffset offset: Int64, count: Int64) {
        guard offset >= 0, count >= 0, offset <= Int64.max - count else { return nil }
        self.offset = offset
        self.count = count
    }

    public var end: Int64 { offset + count }

    /// The sub-range `[offset + start, offset + start + length)`; traps if it leaves this range.
    public func slice(from start: Int64, count length: Int64) -> ByteRange {
        precondition(start >= 0 && length >= 0 && length <= count && start <= count - length, "slice outside range")
        return ByteRange(offset: offset + start, count: length)
    }

    public var description: String { "[\(offset), \(end))" }
}

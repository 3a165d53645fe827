#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `SEEK_DATA` (3 on Linux and Darwin); Glibc exports it only under `_GNU_SOURCE`.
private let seekData: Int32 = 3

extension ReadOnlyFile {
    /// Whether `range` holds no stored data at all (a hole of a sparse file, which reads as zeros):
    /// `lseek(seekData)` from its start finds the next data at or past its end. False when the
    /// file system cannot tell (it then reports data everywhere) and for ranges past the end of
    /// the file, so that the read reports those. The descriptor's file position is not used by
    /// the positional reads, so the seek does not disturb them.
    public func isHole(_ range: ByteRange) -> Bool {
        guard range.count > 0, range.end <= size else { return false }
        let next = lseek(rawDescriptor, off_t(range.offset), seekData)
        if next < 0 { return errno == ENXIO }  // no data from here to the end of the file
        return Int64(next) >= range.end
    }
}

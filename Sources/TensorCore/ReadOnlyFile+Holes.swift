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

extension ReadOnlyFile {
    /// Tells the kernel that reads will be small and scattered (`posix_fadvise(RANDOM)`), so it
    /// does not read ahead: opening 450,000 checkpoint items reads a few KiB of each, and the
    /// default readahead of ~128 KiB per read turned that into 100+ GB of page-cache traffic.
    /// Bulk copies go through their own reads and are not slowed by it.
    public func adviseRandomAccess() {
        #if os(Linux)
        _ = posix_fadvise(rawDescriptor, 0, 0, Int32(POSIX_FADV_RANDOM))
        #endif
    }
}

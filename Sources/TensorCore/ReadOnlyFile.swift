import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A file opened read-only for positional reads (`pread`), so any byte range of any tensor can be
/// fetched without loading the file and from several threads at once. The source of a conversion
/// is only ever opened through this type, so it is never modified.
public final class ReadOnlyFile: Sendable {
    public let path: String
    public let size: Int64
    private let descriptor: FileDescriptor

    /// Opens `path`, which must be a regular file (or a symlink to one: hub-cache snapshots are
    /// symlinks into `blobs/`). A directory, FIFO, socket or device throws `notARegularFile`:
    /// the open is non-blocking, so a FIFO without a writer cannot hang it, and the type comes
    /// from `fstat` on the opened descriptor, so it cannot change between the check and the use.
    public init(path: String) throws {
        self.path = path
        let opened: FileDescriptor
        do {
            opened = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec, .nonBlocking])
        } catch let errno as Errno {
            throw FileIOError(path: path, operation: .open, errno: errno)
        }
        var status = stat()
        guard fstat(opened.rawValue, &status) == 0 else {
            let failure = Errno(rawValue: errno)
            try? opened.close()
            throw FileIOError(path: path, operation: .stat, errno: failure)
        }
        guard status.st_mode & S_IFMT == S_IFREG else {
            try? opened.close()
            throw FileIOError.notARegularFile(path: path, kind: Self.kind(status.st_mode))
        }
        // Reads of a regular file never block; the flag is cleared so the descriptor behaves
        // as a plain one for `pread` and `copy_file_range`.
        let flags = fcntl(opened.rawValue, F_GETFL)
        guard flags >= 0, fcntl(opened.rawValue, F_SETFL, flags & ~O_NONBLOCK) == 0 else {
            let failure = Errno(rawValue: errno)
            try? opened.close()
            throw FileIOError(path: path, operation: .open, errno: failure)
        }
        descriptor = opened
        size = Int64(status.st_size)
    }

    static func kind(_ mode: mode_t) -> FileIOError.FileKind {
        switch mode & S_IFMT {
        case S_IFDIR: .directory
        case S_IFIFO: .fifo
        case S_IFSOCK: .socket
        case S_IFCHR: .characterDevice
        case S_IFBLK: .blockDevice
        default: .other
        }
    }

    /// The whole contents of the regular file at `path`, for small inputs read at once
    /// (`config.json`, `metadata.json`, the tracker file, the manifest). A file longer than
    /// `limit` bytes throws `tooLarge` without being read.
    public static func contents(atPath path: String, limit: Int64 = 1 << 30) throws -> [UInt8] {
        let file = try ReadOnlyFile(path: path)
        guard file.size <= limit else { throw FileIOError.tooLarge(path: path, size: file.size, limit: limit) }
        return try file.readBytes(ByteRange(offset: 0, count: file.size))
    }

    deinit { try? descriptor.close() }

    /// Fills `buffer` from `offset`; a read past the end of the file is an error.
    /// The corresponding C function is `pread`, retried until the buffer is full.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws {
        var done = 0
        while done < buffer.count {
            let target = UnsafeMutableRawBufferPointer(rebasing: buffer[done...])
            let count: Int
            do {
                count = try descriptor.read(fromAbsoluteOffset: offset + Int64(done), into: target)
            } catch let errno as Errno {
                throw FileIOError(path: path, operation: .read, offset: offset + Int64(done), errno: errno)
            }
            if count == 0 {
                throw FileIOError(path: path, operation: .read, offset: offset + Int64(done), errno: nil)
            }
            done += count
        }
    }

    /// Reads `range` into a new array. For headers and small pieces; bulk data goes through pools.
    /// A range that leaves the file throws before anything is allocated, so a length read from
    /// a hostile header costs no more memory than the file has bytes.
    public func readBytes(_ range: ByteRange) throws -> [UInt8] {
        guard range.end <= size else {
            throw FileIOError(path: path, operation: .read, offset: max(range.offset, size), errno: nil)
        }
        precondition(range.count <= Int64(Int.max))
        return try [UInt8](unsafeUninitializedCapacity: Int(range.count)) { buffer, initialized in
            try read(into: UnsafeMutableRawBufferPointer(buffer), at: range.offset)
            initialized = Int(range.count)
        }
    }

    /// Maps `range` read-only (`mmap`), for callers that prefer page-cache access over copies.
    public func map(_ range: ByteRange) throws -> MappedRegion {
        try MappedRegion(file: self, range: range)
    }

    /// The open descriptor, for kernel-side copies (`copy_file_range`).
    public var rawDescriptor: CInt { descriptor.rawValue }
}

/// A read-only memory mapping of a byte range of a `ReadOnlyFile`; unmapped on deinit.
public final class MappedRegion: @unchecked Sendable {
    /// The bytes of the requested range.
    public let bytes: UnsafeRawBufferPointer
    private let base: UnsafeMutableRawPointer?
    private let mappedLength: Int

    fileprivate init(file: ReadOnlyFile, range: ByteRange) throws {
        guard range.end <= file.size else {
            throw FileIOError(path: file.path, operation: .map, offset: range.offset, errno: nil)
        }
        if range.count == 0 {
            base = nil
            mappedLength = 0
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        let page = Int64(sysconf(Int32(_SC_PAGESIZE)))
        let alignedOffset = range.offset - range.offset % page
        let lead = Int(range.offset - alignedOffset)
        let length = lead + Int(range.count)
        let pointer = mmap(nil, length, PROT_READ, MAP_PRIVATE, file.rawDescriptor, off_t(alignedOffset))
        guard let pointer, pointer != MAP_FAILED else {
            throw FileIOError(path: file.path, operation: .map, offset: range.offset, errno: Errno(rawValue: errno))
        }
        base = pointer
        mappedLength = length
        bytes = UnsafeRawBufferPointer(start: pointer + lead, count: Int(range.count))
    }

    deinit {
        if let base { munmap(base, mappedLength) }
    }
}

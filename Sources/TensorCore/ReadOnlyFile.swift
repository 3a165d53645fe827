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
    /// What the file was when opened, to tell later whether it changed under the reader.
    private let identity: Identity
    private let isOwnTemporary: Bool

    /// Device and inode (the file behind the path), size, and modification and status-change
    /// times (ctime moves on every write and cannot be set back by a user).
    struct Identity: Equatable, Sendable {
        let device: UInt64
        let inode: UInt64
        let size: Int64
        let modified: timespec
        let changed: timespec

        init(_ status: stat) {
            device = UInt64(status.st_dev)
            inode = UInt64(status.st_ino)
            size = Int64(status.st_size)
            modified = status.st_mtim
            changed = status.st_ctim
        }

        static func == (a: Identity, b: Identity) -> Bool {
            a.device == b.device && a.inode == b.inode && a.size == b.size
                && a.modified.tv_sec == b.modified.tv_sec && a.modified.tv_nsec == b.modified.tv_nsec
                && a.changed.tv_sec == b.changed.tv_sec && a.changed.tv_nsec == b.changed.tv_nsec
        }
    }

    /// Opens `path`, which must be a regular file (or a symlink to one: hub-cache snapshots are
    /// symlinks into `blobs/`). A directory, FIFO, socket or device throws `notARegularFile`:
    /// the open is non-blocking, so a FIFO without a writer cannot hang it, and the type comes
    /// from `fstat` on the opened descriptor, so it cannot change between the check and the use.
    ///
    /// `isOwnTemporary` is for a file nembridge itself made (a decoded zstd item, unlinked right
    /// after opening): not a source, so `checkUnchanged` does not look at it.
    public init(path: String, isOwnTemporary: Bool = false) throws {
        self.path = path
        self.isOwnTemporary = isOwnTemporary
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
        identity = Identity(status)
    }

    /// The file's identity when opened (device, inode, size, modification and change times), as
    /// text: what a record of work done from this file is tied to.
    public var identityText: String {
        "\(identity.device):\(identity.inode):\(identity.size):\(identity.modified.tv_sec).\(identity.modified.tv_nsec):"
            + "\(identity.changed.tv_sec).\(identity.changed.tv_nsec)"
    }

    /// Throws `changedWhileReading` if the file was written to, truncated or extended since it
    /// was opened (its descriptor's size, mtime or ctime moved), or if the path now names
    /// another file (replaced by a rename). Called once a conversion has read what it needs and
    /// before it publishes anything.
    public func checkUnchanged() throws {
        guard !isOwnTemporary else { return }
        var now = stat()
        guard fstat(descriptor.rawValue, &now) == 0 else {
            throw FileIOError(path: path, operation: .stat, errno: Errno(rawValue: errno))
        }
        let current = Identity(now)
        if current.size != identity.size {
            throw FileIOError.changedWhileReading(path: path, what: "its size went from \(identity.size) to \(current.size) bytes")
        }
        if current != identity {
            throw FileIOError.changedWhileReading(path: path, what: "it was written to")
        }
        var named = stat()
        guard stat(path, &named) == 0 else {
            throw FileIOError.changedWhileReading(path: path, what: "it was removed")
        }
        if UInt64(named.st_dev) != identity.device || UInt64(named.st_ino) != identity.inode {
            throw FileIOError.changedWhileReading(path: path, what: "it was replaced by another file")
        }
    }

    /// `checkUnchanged` on each distinct file.
    public static func checkUnchanged(_ files: some Sequence<ReadOnlyFile>) throws {
        var seen = Set<ObjectIdentifier>()
        for file in files where seen.insert(ObjectIdentifier(file)).inserted { try file.checkUnchanged() }
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

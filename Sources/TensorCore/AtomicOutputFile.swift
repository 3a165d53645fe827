import CPlatform
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An output file written under a temporary name beside its target and published by rename, so a
/// reader never sees a half-written file under the final name. Writes are positional (`pwrite`).
public final class AtomicOutputFile: @unchecked Sendable {
    /// Where the file appears once published.
    public let path: String
    /// Where it is written until then.
    public let temporaryPath: String
    private var descriptor: FileDescriptor?
    /// One write into the file at a time. The kernel serializes buffered writes to one file on its
    /// inode lock anyway, but a second writer there spins on that lock (`rwsem_spin_on_owner`:
    /// a quarter of an export's CPU when both workers wrote its one large shard); here it sleeps,
    /// after reading and hashing its next piece, and leaves the core to the writer and writeback.
    /// (A plain futex mutex: `Synchronization.Mutex` is a priority-inheritance futex, whose
    /// waiter spins in the kernel's `rt_mutex_slowlock` while the owner runs, no better.)
    private let writeLock = FileWriteLock()
    /// Bytes per `pwrite`. A larger write has the kernel put it in page-cache folios of 2 MiB and
    /// more, taken from the high-order free blocks that a VM's free page reporting (virtio-balloon)
    /// has handed back to the host: each then faults on the host, and writing a 1 GB shard took
    /// 1.3-2.4 s of system time instead of 0.2 (`dd` at bs=2M/4M/16M against 256K/1M, same file,
    /// same state). Half a mebibyte costs ~2,000 syscalls a GB, nothing beside the copy.
    static let largestWrite = 1 << 19

    public init(path: String) throws {
        self.path = path
        let target = FilePath(path)
        let name = target.lastComponent?.string ?? "output"
        let directory = target.removingLastComponent()
        temporaryPath = directory.appending(".\(name).nembridge-partial-\(getpid())").string
        do {
            descriptor = try FileDescriptor.open(
                FilePath(temporaryPath), .writeOnly, options: [.create, .truncate, .closeOnExec],
                permissions: [.ownerReadWrite, .groupRead, .otherRead])
        } catch let errno as Errno {
            throw FileIOError(path: temporaryPath, operation: .open, errno: errno)
        }
    }

    deinit { discard() }

    /// Writes all of `bytes` at `offset`. The corresponding C function is `pwrite`.
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws {
        guard let descriptor else { preconditionFailure("write after publish or discard") }
        try writeLock.withLock {
            var done = 0
            while done < bytes.count {
                let piece = UnsafeRawBufferPointer(rebasing: bytes[done..<min(bytes.count, done + Self.largestWrite)])
                do {
                    done += try descriptor.write(toAbsoluteOffset: offset + Int64(done), piece)
                } catch let errno as Errno {
                    throw FileIOError(path: temporaryPath, operation: .write, offset: offset + Int64(done), errno: errno)
                }
            }
        }
    }

    /// Copies `range` of `source` to `offset` inside the kernel (`copy_file_range`), without
    /// passing the bytes through user memory. Returns false where the kernel cannot do it for
    /// these files (then nothing was written and the caller copies through a buffer).
    public func copy(from source: ReadOnlyFile, range: ByteRange, to offset: Int64) throws -> Bool {
        guard let descriptor else { preconditionFailure("copy after publish or discard") }
        return try writeLock.withLock { try copyLocked(descriptor, from: source, range: range, to: offset) }
    }

    private func copyLocked(_ descriptor: FileDescriptor, from source: ReadOnlyFile, range: ByteRange, to offset: Int64) throws -> Bool {
        var sourceOffset = range.offset
        var targetOffset = offset
        var remaining = Int(range.count)
        while remaining > 0 {
            let copied = nembridge_copy_file_range(
                source.rawDescriptor, &sourceOffset, descriptor.rawValue, &targetOffset, remaining)
            if copied < 0 {
                let failure = Errno(rawValue: errno)
                if failure == .interrupted { continue }
                if remaining == Int(range.count),
                    [EXDEV, EINVAL, ENOSYS, EOPNOTSUPP, EBADF].contains(failure.rawValue)
                {
                    return false
                }
                throw FileIOError(path: temporaryPath, operation: .write, offset: Int64(targetOffset), errno: failure)
            }
            if copied == 0 {
                throw FileIOError(path: source.path, operation: .read, offset: Int64(sourceOffset), errno: nil)
            }
            remaining -= copied
        }
        return true
    }

    public func write(_ bytes: [UInt8], at offset: Int64) throws {
        try bytes.withUnsafeBytes { try write($0, at: offset) }
    }

    /// Makes the file at least `size` bytes long (`ftruncate`), leaving a hole for unwritten bytes.
    public func extend(to size: Int64) throws {
        guard let descriptor else { preconditionFailure("extend after publish or discard") }
        var status = stat()
        guard fstat(descriptor.rawValue, &status) == 0 else {
            throw FileIOError(path: temporaryPath, operation: .stat, errno: Errno(rawValue: errno))
        }
        if Int64(status.st_size) < size, ftruncate(descriptor.rawValue, off_t(size)) != 0 {
            throw FileIOError(path: temporaryPath, operation: .write, offset: size, errno: Errno(rawValue: errno))
        }
    }

    /// Flushes the data (`fsync`), closes it and renames it to `path`.
    public func publish() throws {
        guard let descriptor else { preconditionFailure("publish twice") }
        self.descriptor = nil
        let synced = fsync(descriptor.rawValue) == 0 ? nil : Errno(rawValue: errno)
        try? descriptor.close()
        if let synced {
            unlink(temporaryPath)
            throw FileIOError(path: temporaryPath, operation: .sync, errno: synced)
        }
        guard rename(temporaryPath, path) == 0 else {
            let failure = Errno(rawValue: errno)
            unlink(temporaryPath)
            throw FileIOError(path: path, operation: .rename, errno: failure)
        }
    }

    /// Removes the temporary file; nothing appears under `path`. Safe to call more than once.
    public func discard() {
        guard let descriptor else { return }
        self.descriptor = nil
        try? descriptor.close()
        unlink(temporaryPath)
    }
}

/// A mutex whose waiters sleep in the kernel (`pthread_mutex_t` of the default kind).
final class FileWriteLock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func withLock<Result>(_ body: () throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

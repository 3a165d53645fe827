import SystemPackage

/// A failed file-system call, naming the file, what was being done and where; or an input path
/// that is not a regular file (a directory, FIFO, socket or device where a file is expected).
public enum FileIOError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Operation: String, Sendable {
        case open, read, write, stat, sync, rename, remove, createDirectory = "create directory"
        case map
    }

    /// What a path that is not a regular file is, as `fstat` reports it.
    public enum FileKind: String, Sendable {
        case directory
        case fifo = "FIFO"
        case socket
        case characterDevice = "character device"
        case blockDevice = "block device"
        case other = "special file"
    }

    /// `operation` on `path` failed; `offset` for reads and writes, `errno` nil for a short read
    /// at the end of the file.
    case failed(path: String, operation: Operation, offset: Int64?, errno: Errno?)
    /// An input opened as a file is something else. Reading a directory would trust its size,
    /// and opening a FIFO blocks until a writer appears.
    case notARegularFile(path: String, kind: FileKind)
    /// A file read whole (a config, a manifest) is larger than any such file can be.
    case tooLarge(path: String, size: Int64, limit: Int64)
    /// A source file changed while a conversion read it (`what`: how), so its output may mix old
    /// and new bytes and is not published.
    case changedWhileReading(path: String, what: String)

    public init(path: String, operation: Operation, offset: Int64? = nil, errno: Errno?) {
        self = .failed(path: path, operation: operation, offset: offset, errno: errno)
    }

    public var path: String {
        switch self {
        case .failed(let path, _, _, _), .notARegularFile(let path, _), .tooLarge(let path, _, _),
            .changedWhileReading(let path, _): path
        }
    }

    /// The call that failed (`open` for a path that is not a regular file).
    public var operation: Operation {
        switch self {
        case .failed(_, let operation, _, _): operation
        case .notARegularFile: .open
        case .tooLarge, .changedWhileReading: .read
        }
    }

    /// Byte offset of a failed read or write, when there is one.
    public var offset: Int64? {
        if case .failed(_, _, let offset, _) = self { return offset }
        return nil
    }

    /// The OS error, or nil for a short read at end of file.
    public var errno: Errno? {
        if case .failed(_, _, _, let errno) = self { return errno }
        return nil
    }

    public var description: String {
        switch self {
        case .failed(let path, let operation, let offset, let errno):
            var text = "\(MessageText.path(path)): \(operation.rawValue) failed"
            if let offset { text += " at offset \(offset)" }
            if let errno { text += ": \(errno.description)" } else { text += ": unexpected end of file" }
            return text
        case .notARegularFile(let path, let kind):
            return "\(MessageText.path(path)): not a regular file (it is a \(kind.rawValue))"
        case .tooLarge(let path, let size, let limit):
            return "\(MessageText.path(path)): file of \(size) bytes is larger than the \(limit) bytes accepted for it"
        case .changedWhileReading(let path, let what):
            return "\(MessageText.path(path)): the source changed while it was being read (\(what)); nothing was published, run again on a stable source"
        }
    }
}

import Synchronization
import TensorCore

/// A safetensors file opened for reading: its validated header, and positional reads of any byte
/// range of any tensor. Only the header is read up front; tensor bytes are read on request.
public final class SafetensorsFile: Sendable {
    public let file: ReadOnlyFile
    public let header: SafetensorsHeader
    /// How the file is named in messages (the path, or a name relative to its folder).
    public let displayName: String
    /// Tensor positions by name, built on first lookup (a folder looks names up through its own
    /// index, so a 225-file model does not build 225 of these).
    private let index = Mutex<[String: Int]?>(nil)

    public init(path: String, displayName: String? = nil) throws {
        file = try ReadOnlyFile(path: path)
        self.displayName = displayName ?? path
        header = try SafetensorsHeader.read(from: file, displayName: self.displayName)
    }

    public var path: String { file.path }
    public var tensors: [SafetensorsTensorInfo] { header.tensors }

    private func position(of name: String) -> Int? {
        index.withLock { index in
            if index == nil {
                index = Dictionary(header.tensors.enumerated().map { ($1.name, $0) }, uniquingKeysWith: { a, _ in a })
            }
            return index![name]
        }
    }

    public func tensor(named name: String) throws -> SafetensorsTensorInfo {
        guard let position = position(of: name) else {
            throw SafetensorsError.tensorNotFound(file: displayName, tensor: name)
        }
        return header.tensors[position]
    }

    public func contains(_ name: String) -> Bool { position(of: name) != nil }

    /// Where the tensor's bytes are in the file.
    public func fileRange(of tensor: SafetensorsTensorInfo) -> ByteRange {
        ByteRange(offset: header.dataStart + tensor.dataOffsets.offset, count: tensor.dataOffsets.count)
    }

    /// Reads `buffer.count` bytes of `tensor` starting `offset` bytes into it.
    public func read(
        _ tensor: SafetensorsTensorInfo, from offset: Int64 = 0, into buffer: UnsafeMutableRawBufferPointer
    ) throws {
        guard offset >= 0, offset <= tensor.byteCount, Int64(buffer.count) <= tensor.byteCount - offset else {
            throw SafetensorsError.rangeOutsideTensor(
                file: displayName, tensor: tensor.name, offset: offset, count: Int64(buffer.count),
                tensorBytes: tensor.byteCount)
        }
        try file.read(into: buffer, at: fileRange(of: tensor).offset + offset)
    }

    /// A tensor's bytes (or a sub-range of them) as a new array; for small tensors and tests.
    public func bytes(of tensor: SafetensorsTensorInfo, range: ByteRange? = nil) throws -> [UInt8] {
        let wanted = range ?? ByteRange(offset: 0, count: tensor.byteCount)
        return try [UInt8](unsafeUninitializedCapacity: Int(wanted.count)) { buffer, count in
            try read(tensor, from: wanted.offset, into: UnsafeMutableRawBufferPointer(buffer))
            count = Int(wanted.count)
        }
    }

    /// Maps a tensor's bytes read-only instead of copying them.
    public func map(_ tensor: SafetensorsTensorInfo) throws -> MappedRegion {
        try file.map(fileRange(of: tensor))
    }
}

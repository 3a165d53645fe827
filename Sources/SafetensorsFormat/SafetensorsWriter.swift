import Synchronization
import TensorCore

/// Writes one safetensors file in the reference layout without holding it: the header goes out
/// first, then tensor bytes arrive in pieces, in any order and from any thread, each at its place.
/// The file is written under a temporary name and appears under its own only on `finish()`.
public final class SafetensorsWriter: ByteSink {
    public let layout: SafetensorsLayout
    public let path: String
    private let output: AtomicOutputFile
    private let positions: [String: Int]
    /// Bytes received per tensor, to refuse publishing an incomplete file.
    private let written: Mutex<[Int64]>

    /// `metadata` defaults to `{"format": "pt"}`, which transformers 4.x loaders check for.
    public init(
        path: String, tensors: [TensorDeclaration],
        metadata: [(key: String, value: String)]? = [("format", "pt")]
    ) throws {
        self.path = path
        layout = try SafetensorsLayout(tensors: tensors, metadata: metadata, file: path)
        positions = Dictionary(uniqueKeysWithValues: layout.tensors.enumerated().map { ($1.name, $0) })
        written = Mutex([Int64](repeating: 0, count: layout.tensors.count))
        output = try AtomicOutputFile(path: path)
        try output.write(layout.headerBytes, at: 0)
    }

    /// The placed tensor called `name`.
    public func tensor(named name: String) throws -> SafetensorsTensorInfo {
        guard let position = positions[name] else {
            throw SafetensorsError.tensorNotFound(file: path, tensor: name)
        }
        return layout.tensors[position]
    }

    /// Writes `bytes` into tensor `name` starting `offset` bytes into it. Pieces must not overlap.
    public func write(tensor name: String, at offset: Int64 = 0, bytes: UnsafeRawBufferPointer) throws {
        guard let position = positions[name] else {
            throw SafetensorsError.tensorNotFound(file: path, tensor: name)
        }
        let tensor = layout.tensors[position]
        guard offset >= 0, offset + Int64(bytes.count) <= tensor.byteCount else {
            throw SafetensorsError.rangeOutsideTensor(
                file: path, tensor: name, offset: offset, count: Int64(bytes.count), tensorBytes: tensor.byteCount)
        }
        try output.write(bytes, at: layout.dataStart + tensor.dataOffsets.offset + offset)
        written.withLock { $0[position] += Int64(bytes.count) }
    }

    public func write(tensor name: String, at offset: Int64 = 0, bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write(tensor: name, at: offset, bytes: $0) }
    }

    /// The tensor whose data holds absolute file offset `offset`, if any.
    private func position(containing offset: Int64) -> Int? {
        let relative = offset - layout.dataStart
        var low = 0
        var high = layout.tensors.count
        while low < high {
            let middle = (low + high) / 2
            if layout.tensors[middle].dataOffsets.end <= relative { low = middle + 1 } else { high = middle }
        }
        return low < layout.tensors.count && layout.tensors[low].dataOffsets.offset <= relative ? low : nil
    }

    /// Absolute-offset write for executors (`ByteSink`); must stay inside one tensor's data.
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws {
        let tensor = try tensorSpanning(offset: offset, count: Int64(bytes.count))
        try write(tensor: tensor.name, at: offset - layout.dataStart - tensor.dataOffsets.offset, bytes: bytes)
    }

    /// Kernel-side copy into one tensor's data (`ByteSink`).
    public func copy(from source: ReadOnlyFile, range: ByteRange, to offset: Int64) throws -> Bool {
        let tensor = try tensorSpanning(offset: offset, count: range.count)
        guard try output.copy(from: source, range: range, to: offset) else { return false }
        written.withLock { $0[positions[tensor.name]!] += range.count }
        return true
    }

    /// Zeros left as a hole of the fresh file (`ByteSink`): counted as written; `finish()` gives
    /// the file its full length.
    public func leaveZeros(at offset: Int64, count: Int64) throws {
        let tensor = try tensorSpanning(offset: offset, count: count)
        written.withLock { $0[positions[tensor.name]!] += count }
    }

    private func tensorSpanning(offset: Int64, count: Int64) throws -> SafetensorsTensorInfo {
        guard let position = position(containing: offset) else {
            throw SafetensorsError.rangeOutsideTensor(file: path, tensor: "", offset: offset, count: count, tensorBytes: 0)
        }
        let tensor = layout.tensors[position]
        let start = offset - layout.dataStart - tensor.dataOffsets.offset
        guard start + count <= tensor.byteCount else {
            throw SafetensorsError.rangeOutsideTensor(
                file: path, tensor: tensor.name, offset: start, count: count, tensorBytes: tensor.byteCount)
        }
        return tensor
    }

    /// Checks that every tensor is complete, flushes, and publishes the file under `path`.
    public func finish() throws {
        let counts = written.withLock { $0 }
        for (tensor, count) in zip(layout.tensors, counts) where count != tensor.byteCount {
            output.discard()
            throw SafetensorsError.incompleteTensor(
                file: path, tensor: tensor.name, written: count, expected: tensor.byteCount)
        }
        // Trailing zeros left as a hole must still give the file its length.
        try output.extend(to: layout.dataStart + (layout.tensors.map(\.dataOffsets.end).max() ?? 0))
        try output.publish()
    }

    /// Abandons the file; nothing appears under `path`.
    public func discard() { output.discard() }
}

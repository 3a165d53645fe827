import TensorCore

/// One piece of a box: `source` bytes of `file` land at `destinationOffset` bytes into the box
/// laid out row-major (C order).
public struct TensorBoxPiece: Sendable {
    public let file: ReadOnlyFile
    public let source: ByteRange
    public let destinationOffset: Int64
}

/// Global tensors stored as chunks, wherever the chunks are: a torch_dist checkpoint's items, or
/// the rank files of a legacy checkpoint placed in their global tensors by a layout.
public protocol GlobalTensorSource: Sendable {
    /// The file errors about the set name (`.metadata`, or the legacy iteration directory).
    var metadataPath: String { get }
    /// Every tensor with its global shape, dtype and chunks, in a stable order.
    var globalTensors: [(fqn: String, metadata: DCPTensorMetadata)] { get }
    func tensor(_ key: String) throws -> DCPTensorMetadata
    /// Where the bytes of one chunk of `key` are.
    func chunkData(key: String, chunk: DCPChunk) throws -> ChunkData
}

/// Assembling any box of a global tensor from the chunks that overlap it, by byte ranges:
/// Python's `DefaultLoadPlanner` + `narrow_tensor_by_index`, without loading items.
extension GlobalTensorSource {
    public typealias BoxPiece = TensorBoxPiece

    /// Bytes of a box of `key` with `sizes`, in the tensor's dtype; `tensorTooLarge` when they
    /// do not fit `Int64`.
    public func boxByteCount(key: String, sizes: [Int]) throws -> Int64 {
        let tensor = try self.tensor(key)
        guard let elementSize = TorchDistCheckpoint.torchElementSize(tensor.dtype) else {
            throw MegatronCheckpointError.unsupportedDType(key: key, dtype: tensor.dtype.safetensorsName)
        }
        guard let elements = ShapeArithmetic.elementCount(sizes) else {
            throw MegatronCheckpointError.tensorTooLarge(file: metadataPath, key: key, shape: sizes, dtype: tensor.dtype)
        }
        let (bytes, overflow) = elements.multipliedReportingOverflow(by: elementSize)
        guard !overflow else {
            throw MegatronCheckpointError.tensorTooLarge(file: metadataPath, key: key, shape: sizes, dtype: tensor.dtype)
        }
        return Int64(bytes)
    }

    /// The reads that fill the box at `offsets` with `sizes` of tensor `key`, sorted by
    /// destination, adjacent reads merged. Throws `boxNotCovered` when the chunks leave part
    /// of the box uncovered (DCP itself would silently leave it uninitialised).
    public func boxPieces(key: String, offsets: [Int], sizes: [Int]) throws -> [BoxPiece] {
        let tensor = try self.tensor(key)
        precondition(offsets.count == tensor.size.count && sizes.count == tensor.size.count,
                     "box rank \(offsets.count)/\(sizes.count) for `\(key)` of rank \(tensor.size.count)")
        let box = DCPChunk(offsets: offsets, sizes: sizes)
        func notCovered(_ missing: Int) -> MegatronCheckpointError {
            .boxNotCovered(file: metadataPath, key: key, offsets: offsets, sizes: sizes, shape: tensor.size, missingElements: missing)
        }
        // Inside the tensor (whose byte size was checked at open), so no volume below overflows.
        let inside = offsets.indices.allSatisfy {
            offsets[$0] >= 0 && sizes[$0] >= 0 && offsets[$0] <= tensor.size[$0] && sizes[$0] <= tensor.size[$0] - offsets[$0]
        }
        guard inside else { throw notCovered(ShapeArithmetic.elementCount(sizes) ?? Int.max) }
        let total = BoxGeometry.volume(sizes)
        if total == 0 { return [] }
        guard let elementSize = TorchDistCheckpoint.torchElementSize(tensor.dtype) else {
            throw MegatronCheckpointError.unsupportedDType(key: key, dtype: tensor.dtype.safetensorsName)
        }
        var pieces: [BoxPiece] = []
        var covered = 0
        for chunk in tensor.chunks {
            guard let overlap = BoxGeometry.intersection(box, chunk) else { continue }
            covered += BoxGeometry.volume(overlap.sizes)
            let data = try chunkData(key: key, chunk: chunk)
            BoxGeometry.forEachRun(of: overlap, outer: box, inner: chunk) { boxElement, chunkElement, count in
                let sources = data.sources(from: Int64(chunkElement * elementSize), count: Int64(count * elementSize))
                for (source, offset) in sources {
                    pieces.append(BoxPiece(file: data.file, source: source, destinationOffset: Int64(boxElement * elementSize) + offset))
                }
            }
        }
        // Chunks do not overlap (checked at open), so covered volume == box volume means covered.
        guard covered == total else { throw notCovered(total - covered) }
        pieces.sort { $0.destinationOffset < $1.destinationOffset }
        var merged: [BoxPiece] = []
        merged.reserveCapacity(pieces.count)
        for piece in pieces {
            if let previous = merged.last, previous.file === piece.file, previous.source.end == piece.source.offset,
                previous.destinationOffset + previous.source.count == piece.destinationOffset {
                merged[merged.count - 1] = BoxPiece(
                    file: previous.file, source: ByteRange(offset: previous.source.offset, count: previous.source.count + piece.source.count),
                    destinationOffset: previous.destinationOffset)
            } else {
                merged.append(piece)
            }
        }
        return merged
    }

    /// Reads the box at `offsets` with `sizes` of tensor `key` into `buffer` (row-major, exactly
    /// `boxByteCount` bytes).
    public func readBox(key: String, offsets: [Int], sizes: [Int], into buffer: UnsafeMutableRawBufferPointer) throws {
        let pieces = try boxPieces(key: key, offsets: offsets, sizes: sizes)
        let expected = try boxByteCount(key: key, sizes: sizes)
        precondition(Int64(buffer.count) == expected, "readBox buffer of \(buffer.count) bytes for a box of \(expected)")
        for piece in pieces {
            let start = Int(piece.destinationOffset)
            try piece.file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[start..<(start + Int(piece.source.count))]),
                                at: piece.source.offset)
        }
    }

    /// The whole global tensor `key`, row-major. For tests and small tensors.
    public func readTensor(key: String) throws -> [UInt8] {
        let tensor = try self.tensor(key)
        let count = Int(try boxByteCount(key: key, sizes: tensor.size))
        return try [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            try readBox(key: key, offsets: tensor.size.map { _ in 0 }, sizes: tensor.size, into: UnsafeMutableRawBufferPointer(buffer))
            initialized = count
        }
    }
}

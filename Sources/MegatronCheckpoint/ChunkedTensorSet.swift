import TensorCore

/// Global tensors whose chunks are already located: each chunk's bytes are runs in some file.
/// What a legacy checkpoint becomes once a layout has placed each rank's local tensors in their
/// global tensors; boxes are then read exactly as from a torch_dist checkpoint.
public final class ChunkedTensorSet: GlobalTensorSource {
    public let metadataPath: String
    public let globalTensors: [(fqn: String, metadata: DCPTensorMetadata)]
    let index: [String: Int]
    let chunks: [DCPStorageKey: ChunkData]

    /// `tensors` in order, each chunk with its data. Checks that chunks lie inside their tensor,
    /// do not overlap, match their data's dtype and byte count (errors name `path`).
    public init(path: String, tensors: [(key: String, dtype: DType, size: [Int], chunks: [ChunkData])]) throws {
        metadataPath = path
        var global: [(fqn: String, metadata: DCPTensorMetadata)] = []
        var chunks: [DCPStorageKey: ChunkData] = [:]
        var index: [String: Int] = [:]
        for tensor in tensors {
            let metadata = DCPTensorMetadata(dtype: tensor.dtype, size: tensor.size, chunks: tensor.chunks.map(\.chunk))
            try TorchDistCheckpoint.checkSize(metadata, key: tensor.key, metadataPath: path)
            for data in tensor.chunks {
                let chunk = data.chunk
                let inside = chunk.offsets.count == tensor.size.count && chunk.sizes.count == tensor.size.count
                    && chunk.offsets.indices.allSatisfy {
                        chunk.offsets[$0] >= 0 && chunk.sizes[$0] >= 0 && chunk.offsets[$0] <= tensor.size[$0]
                            && chunk.sizes[$0] <= tensor.size[$0] - chunk.offsets[$0]
                    }
                guard inside else {
                    throw MegatronCheckpointError.chunkOutOfBounds(file: data.dataFile, key: tensor.key, offsets: chunk.offsets.array, sizes: chunk.sizes.array, shape: tensor.size)
                }
                guard data.dtype == tensor.dtype else {
                    throw MegatronCheckpointError.dtypeMismatch(file: data.dataFile, key: tensor.key, expected: tensor.dtype, actual: data.dtype)
                }
                let expected = Int64(BoxGeometry.volume(chunk.sizes.array) * data.elementSize)
                precondition(data.byteCount == expected, "chunk data of \(data.byteCount) bytes for a box of \(expected)")
                chunks[DCPStorageKey(fqn: tensor.key, offsets: chunk.offsets.array)] = data
            }
            if let (first, second) = BoxGeometry.firstOverlap(metadata.chunks) {
                throw MegatronCheckpointError.overlappingChunks(file: path, key: tensor.key, first: first.offsets.array, second: second.offsets.array)
            }
            index[tensor.key] = global.count
            global.append((tensor.key, metadata))
        }
        globalTensors = global
        self.index = index
        self.chunks = chunks
    }

    public func tensor(_ key: String) throws -> DCPTensorMetadata {
        guard let position = index[key] else { throw MegatronCheckpointError.keyNotFound(file: metadataPath, key: key) }
        return globalTensors[position].metadata
    }

    public func chunkData(key: String, chunk: DCPChunk) throws -> ChunkData {
        guard let data = chunks[DCPStorageKey(fqn: key, offsets: chunk.offsets.array)] else {
            throw MegatronCheckpointError.missingStorage(file: metadataPath, key: key, offsets: chunk.offsets.array)
        }
        return data
    }
}

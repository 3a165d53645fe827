import TensorCore
import TorchPickle
import TorchZip

/// Reading tensor chunks: each chunk is an independent `torch.save` zip at its item's offset
/// (formats.md §3.3). Python: `FileSystemReader.read_data` → `torch.load(slice)` → `narrow_tensor_by_index`.
extension TorchDistCheckpoint {
    /// Bytes per stored torch element: `float4_e2m1fn_x2` packs two FP4 values in one element.
    public static func torchElementSize(_ dtype: DType) -> Int? {
        dtype == .float4E2M1 ? 1 : dtype.byteWidth
    }

    /// Where the bytes of `chunk` of tensor `key` are, after checking that the stored tensor has
    /// the metadata's dtype and the chunk's sizes and that its storage holds every element.
    /// Parses the item's zip directory and `data.pkl` (a few KiB); the last few thousand are remembered.
    public func chunkData(key: String, chunk: DCPChunk) throws -> ChunkData {
        let index = try tensorPosition(key)
        // The few chunks meeting its axis-0 extent, not all of them: a tensor has up to thousands.
        let chunks = metadata.tensors[index].metadata.chunks
        guard let position = candidateChunkIndices(tensor: index, box: chunk).first(where: { chunks[$0] == chunk }) else {
            throw MegatronCheckpointError.missingStorage(file: metadataPath, key: key, offsets: chunk.offsets.array)
        }
        return try chunkData(tensor: index, chunk: position)
    }

    /// `chunkData` of chunk `position` of tensor `index` (of `metadata.tensors`).
    func chunkData(tensor index: Int, chunk position: Int) throws -> ChunkData {
        let (key, tensor) = metadata.tensors[index]
        let chunk = tensor.chunks[position]
        if itemOpening == .oncePerLayout,
            let assumed = assumedLikeOpened(key: key, tensor: tensor, chunk: chunk, info: storageInfo(tensor: index, chunk: position)) {
            return assumed
        }
        let storageKey = DCPStorageKey(fqn: key, offsets: chunk.offsets.array)
        if let cached = cache.withLock({ $0.chunks[storageKey] }) { return cached }
        let (archive, info, decoded) = try itemArchive(storageKey)
        let path = dataFile(info).path
        func fail(_ reason: String) -> MegatronCheckpointError {
            .invalidItem(file: path, key: key, offset: info.offset, reason: reason + (decoded ? " (in the zstd-decoded item)" : ""))
        }
        let pickle = try record("data.pkl", of: archive, info: info, key: key, decoded: decoded)
        // What data.pkl says depends on its bytes only, and chunks of one shape and dtype have the same.
        let saved: TorchSavedTensor
        let digest = pickle.withUnsafeBytes { XXH3Hasher.hash($0) }
        if let known = cache.withLock({ $0.savedTensors[digest] }), known.pickle == pickle {
            saved = known.tensor
        } else {
            do {
                saved = try TorchSavedTensor(dataPickle: pickle, context: path)
            } catch MegatronCheckpointError.invalidItem(_, _, _, let reason) {
                throw fail("data.pkl: \(reason)")
            }
            cache.withLock { cache in
                if cache.savedTensors.count >= 4096 { cache.savedTensors.removeAll(keepingCapacity: true) }
                cache.savedTensors[digest] = (pickle, saved)
            }
        }
        guard saved.dtype == tensor.dtype else {
            throw MegatronCheckpointError.dtypeMismatch(file: path, key: key, expected: tensor.dtype, actual: saved.dtype)
        }
        guard saved.shape == chunk.sizes else {
            throw fail("the stored tensor has shape \(saved.shape), the chunk in .metadata has sizes \(chunk.sizes)")
        }
        guard let elementSize = Self.torchElementSize(saved.dtype) else {
            throw MegatronCheckpointError.unsupportedDType(key: key, dtype: saved.dtype.safetensorsName)
        }
        guard let storageEntry = archive.record("data/\(saved.storageKey)") else {
            throw fail("no storage record `data/\(saved.storageKey)` in the archive")
        }
        let storage: ByteRange
        do {
            storage = try archive.storedDataRange(of: storageEntry)
        } catch let error as ZipError {
            throw itemError(error, info: info, key: key, decoded: decoded)
        }
        let runs = try Self.runs(of: saved, elementSize: elementSize, storage: storage, fail: fail)
        let data = ChunkData(file: archive.file, dataFile: path, key: key, chunk: chunk, dtype: saved.dtype,
                             elementSize: elementSize, runs: runs, isDecoded: decoded)
        if itemOpening == .oncePerLayout, !decoded {
            let layout = ItemLayoutKey(dtype: tensor.dtype, sizes: chunk.sizes, length: info.length)
            let relative = runs.map { ChunkData.Run(source: ByteRange(offset: $0.source.offset - info.offset, count: $0.source.count),
                                                    destinationOffset: $0.destinationOffset) }
            cache.withLock { $0.layouts[layout] = ItemLayout(elementSize: elementSize, runs: relative) }
        }
        cache.withLock { cache in
            // Bounded: a plan over 450,000 chunks asks for each once or twice, in order.
            if cache.chunks.count >= 8192 { cache.chunks.removeAll(keepingCapacity: true) }
            cache.chunks[storageKey] = data
        }
        return data
    }

    /// For a plan only (`ItemOpening.oncePerLayout`): the chunk data of an item not opened, taken
    /// from an opened item of the same dtype, sizes and length, whose `torch.save` archive has the
    /// same records at the same item-relative offsets when both come from one writer. Nil when no
    /// such item was opened yet, or the item is compressed.
    func assumedLikeOpened(key: String, tensor: DCPTensorMetadata, chunk: DCPChunk, info: DCPStorageInfo) -> ChunkData? {
        guard info.transformDescriptors?.isEmpty ?? true else { return nil }
        let layoutKey = ItemLayoutKey(dtype: tensor.dtype, sizes: chunk.sizes, length: info.length)
        let found: ItemLayout? = cache.withLock { cache in
            guard let layout = cache.layouts[layoutKey] else { return nil }
            cache.itemsAssumed += 1
            return layout
        }
        guard let layout = found else { return nil }
        let file = dataFile(info)
        let runs = layout.runs.map { ChunkData.Run(source: ByteRange(offset: $0.source.offset + info.offset, count: $0.source.count),
                                                   destinationOffset: $0.destinationOffset) }
        return ChunkData(file: file, dataFile: file.path, key: key, chunk: chunk, dtype: tensor.dtype,
                         elementSize: layout.elementSize, runs: runs)
    }

    /// The contiguous runs of a saved tensor's elements inside its storage record, in row-major
    /// order of the tensor. One run when the strides are row-major.
    static func runs(of saved: TorchSavedTensor, elementSize: Int, storage: ByteRange,
                     fail: (String) -> MegatronCheckpointError) throws -> [ChunkData.Run] {
        // Counting a zero dimension as one: a view with no elements must still have a shape whose
        // rows can be measured by the planners.
        guard let count = ShapeArithmetic.elementCount(saved.shape), ShapeArithmetic.elementCount(saved.shape.map { max($0, 1) }) != nil,
            count.multipliedReportingOverflow(by: elementSize).overflow == false
        else { throw fail("shape \(saved.shape) has no valid element count") }
        if count == 0 { return [] }
        guard saved.strides.allSatisfy({ $0 >= 0 }) else { throw fail("negative strides \(saved.strides)") }
        // The highest element index the view touches must lie inside the storage.
        var last = saved.storageOffset
        for (size, stride) in zip(saved.shape, saved.strides) {
            let (product, overflow) = (size - 1).multipliedReportingOverflow(by: stride)
            let (sum, sumOverflow) = last.addingReportingOverflow(product)
            guard !overflow, !sumOverflow else { throw fail("strides \(saved.strides) overflow") }
            last = sum
        }
        let (end, endOverflow) = last.addingReportingOverflow(1)
        let (needed, overflow) = end.multipliedReportingOverflow(by: elementSize)
        guard !endOverflow, !overflow, Int64(needed) <= storage.count else {
            throw fail("the view (offset \(saved.storageOffset), shape \(saved.shape), strides \(saved.strides)) needs more bytes than the storage record's \(storage.count)")
        }
        let contiguous = ShapeArithmetic.strides(saved.shape)
        if saved.strides == contiguous || count == 1 {
            return [ChunkData.Run(source: ByteRange(offset: storage.offset + Int64(saved.storageOffset * elementSize),
                                                    count: Int64(count * elementSize)), destinationOffset: 0)]
        }
        // Strided: walk the row-major order, one element-run per innermost row (merged while
        // the source continues).
        let rank = saved.shape.count
        var runs: [ChunkData.Run] = []
        var index = [Int](repeating: 0, count: rank)
        let rowLength = saved.shape[rank - 1]
        let innerContiguous = saved.strides[rank - 1] == 1
        var destination: Int64 = 0
        func append(_ source: Int64, _ length: Int64) {
            if let previous = runs.last, previous.source.end == source,
                previous.destinationOffset + previous.source.count == destination {
                runs[runs.count - 1].source.count += length
            } else {
                runs.append(ChunkData.Run(source: ByteRange(offset: source, count: length), destinationOffset: destination))
            }
            destination += length
        }
        while true {
            var base = saved.storageOffset
            for axis in 0..<(rank - 1) { base += index[axis] * saved.strides[axis] }
            if innerContiguous {
                append(storage.offset + Int64(base * elementSize), Int64(rowLength * elementSize))
            } else {
                for element in 0..<rowLength {
                    append(storage.offset + Int64((base + element * saved.strides[rank - 1]) * elementSize), Int64(elementSize))
                }
            }
            var axis = rank - 2
            while axis >= 0 {
                index[axis] += 1
                if index[axis] < saved.shape[axis] { break }
                index[axis] = 0
                axis -= 1
            }
            if axis < 0 { break }
        }
        return runs
    }
}

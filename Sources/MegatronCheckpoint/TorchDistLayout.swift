import TensorCore
import TorchZip

/// Where every item of a torch_dist checkpoint will be, decided before any byte is written: each
/// tensor chunk is its own `torch.save` archive and each object a bytes item, back to back in
/// `__<i>_0.distcp` files. A planner can therefore send tensor bytes straight to their final
/// offsets, in any order, from any thread.
///
/// The layout is compact: chunks are not stored one by one but as regular grids (one per layer
/// or expert slice of a tensor: a box cut into equal parts along one axis), from which a chunk's
/// offsets, sizes and item are computed; per item only its file offset, file and archive shape
/// are kept (12 bytes). A checkpoint of 450,000 chunks takes ~6 MB here, where one record per
/// chunk with its offset arrays, key string and storage-dictionary entry took ~110 MB.
public struct TorchDistLayout: Sendable {
    /// A tensor key: global shape, dtype, its chunk grids and its items (contiguous).
    public struct Key: Sendable {
        public let fqn: String
        public let dtype: DType
        public let size: [Int]
        /// Indices into the layout's grids.
        public let grids: Range<Int>
        /// Its tensor items (chunks), in `.metadata` order.
        public let items: Range<Int>
    }

    /// Chunks of one key forming a regular grid: the box at `origin` with `extent`, cut into
    /// `parts` equal chunks along `axis` (when `parts` > 1). Item `firstItem + p` is part `p`.
    public struct ChunkGrid: Sendable, Hashable {
        public let key: Int32
        /// Start of `origin` then `extent` (`rank` values each) in the layout's dimension pool.
        let dims: Int32
        public let rank: Int32
        public let axis: Int32
        public let parts: Int32
        public let firstItem: Int32
        /// Which `Builder.add` call made it (0 for the first).
        public let order: Int32
    }

    /// One tensor item, materialized (allocates its chunk arrays: for reports and tests; bulk
    /// paths use the per-item accessors).
    public struct TensorItem: Sendable {
        public let key: String
        public let chunk: DCPChunk
        public let dtype: DType
        public let file: Int
        /// Offset of the item (its zip archive) in its file.
        public let itemOffset: Int64
        public let archive: TorchSaveArchive.TensorArchivePlan

        public var itemLength: Int64 { archive.layout.totalSize }
        public var byteCount: Int64 { archive.layout.entries[archive.dataEntry].size }
        /// Absolute offset in the file of the chunk's first data byte.
        public var dataOffset: Int64 { itemOffset + archive.layout.entries[archive.dataEntry].dataOffset }
    }

    public struct ObjectItem: Sendable {
        public let key: String
        public let bytes: [UInt8]
        public let file: Int
        public let itemOffset: Int64
    }

    public let fileNames: [String]
    public let fileSizes: [Int64]
    public let keys: [Key]
    public let grids: [ChunkGrid]
    public let objectItems: [ObjectItem]
    /// Distinct archive layouts (by dtype and chunk shape): 40,000 expert chunks share a few.
    public let archives: [TorchSaveArchive.TensorArchivePlan]
    private let dimensions: [Int]
    private let itemOffsets: [Int64]
    private let itemFiles: [UInt16]
    private let itemArchives: [UInt16]
    private let keyIndex: [String: Int]
    /// Per archive: its data entry's offset in the item and its size.
    private let archiveData: [(offset: Int64, size: Int64, length: Int64)]

    /// Collects chunk grids in any order; `layout(objects:fileCount:)` numbers the items key by
    /// key (keys in order of first appearance, grids of a key in the order added).
    public struct Builder: Sendable {
        var keys: [(fqn: String, dtype: DType, size: [Int], grids: [Int])] = []
        var keyIndex: [String: Int] = [:]
        var grids: [(key: Int32, dims: Int32, rank: Int32, axis: Int32, parts: Int32)] = []
        var dimensions: [Int] = []

        public init() {}

        /// Adds the chunks of `key` in the box at `origin` with `extent` (global coordinates), cut
        /// into `parts` equal chunks along `axis` (nil or `parts == 1`: one chunk). A key seen
        /// before must have the same dtype and size.
        public mutating func add(key fqn: String, dtype: DType, size: [Int], origin: [Int], extent: [Int], axis: Int? = nil,
                                 parts: Int = 1) {
            precondition(origin.count == size.count && extent.count == size.count, "grid rank of `\(fqn)`")
            precondition(parts >= 1 && (parts == 1 || (axis != nil && extent[axis!] % parts == 0)), "grid parts of `\(fqn)`")
            let key: Int
            if let known = keyIndex[fqn] {
                key = known
                precondition(keys[key].dtype == dtype && keys[key].size == size, "key `\(fqn)` declared twice differently")
            } else {
                key = keys.count
                keyIndex[fqn] = key
                keys.append((fqn, dtype, size, []))
            }
            keys[key].grids.append(grids.count)
            grids.append((Int32(key), Int32(dimensions.count), Int32(size.count), Int32(parts == 1 ? -1 : axis!), Int32(parts)))
            dimensions.append(contentsOf: origin)
            dimensions.append(contentsOf: extent)
        }

        /// Adds explicit chunks of a key (a source's own chunking), one grid each.
        public mutating func add(key fqn: String, metadata: DCPTensorMetadata) {
            for chunk in metadata.chunks {
                add(key: fqn, dtype: metadata.dtype, size: metadata.size, origin: chunk.offsets.array, extent: chunk.sizes.array)
            }
        }

        /// Declares a key with no chunks yet (kept in order; an empty key has no items).
        public mutating func declare(key fqn: String, dtype: DType, size: [Int]) {
            guard keyIndex[fqn] == nil else { return }
            keyIndex[fqn] = keys.count
            keys.append((fqn, dtype, size, []))
        }

        /// Objects go first into file 0; tensor chunks then go, in order, to the least-filled file,
        /// so `fileCount` writers share the bytes evenly.
        public func layout(objects: [(key: String, bytes: [UInt8])], fileCount: Int = 1) throws -> TorchDistLayout {
            try TorchDistLayout(self, objects: objects, fileCount: fileCount)
        }
    }

    private init(_ builder: Builder, objects: [(key: String, bytes: [UInt8])], fileCount: Int) throws {
        let count = max(1, fileCount)
        precondition(count <= Int(UInt16.max), "too many data files")
        fileNames = (0..<count).map { "__\($0)_0.distcp" }
        var sizes = [Int64](repeating: 0, count: count)
        var objectItems: [ObjectItem] = []
        objectItems.reserveCapacity(objects.count)
        for object in objects {
            objectItems.append(ObjectItem(key: object.key, bytes: object.bytes, file: 0, itemOffset: sizes[0]))
            sizes[0] += Int64(object.bytes.count)
        }
        var keys: [Key] = []
        var grids: [ChunkGrid] = []
        grids.reserveCapacity(builder.grids.count)
        var itemOffsets: [Int64] = []
        var itemFiles: [UInt16] = []
        var itemArchives: [UInt16] = []
        var archives: [TorchSaveArchive.TensorArchivePlan] = []
        var archiveData: [(offset: Int64, size: Int64, length: Int64)] = []
        var archiveIndex: [ArchiveShape: Int] = [:]
        let total = builder.grids.reduce(0) { $0 + Int($1.parts) }
        itemOffsets.reserveCapacity(total)
        itemFiles.reserveCapacity(total)
        itemArchives.reserveCapacity(total)
        var keyIndex: [String: Int] = [:]
        for (position, key) in builder.keys.enumerated() {
            keyIndex[key.fqn] = position
            let firstGrid = grids.count
            let firstItem = itemOffsets.count
            for source in key.grids {
                let grid = builder.grids[source]
                let start = Int(grid.dims), rank = Int(grid.rank)
                var shape = Array(builder.dimensions[(start + rank)..<(start + 2 * rank)])
                if grid.parts > 1 { shape[Int(grid.axis)] /= Int(grid.parts) }
                let shapeKey = ArchiveShape(dtype: key.dtype, shape: shape)
                let archive: Int
                if let known = archiveIndex[shapeKey] {
                    archive = known
                } else {
                    let plan = try TorchSaveArchive.tensorArchivePlan(dtype: key.dtype, shape: shape)
                    archive = archives.count
                    precondition(archive < Int(UInt16.max), "too many distinct chunk shapes")
                    archives.append(plan)
                    let entry = plan.layout.entries[plan.dataEntry]
                    archiveData.append((entry.dataOffset, entry.size, plan.layout.totalSize))
                    archiveIndex[shapeKey] = archive
                }
                grids.append(ChunkGrid(key: Int32(position), dims: grid.dims, rank: grid.rank, axis: grid.axis, parts: grid.parts,
                                       firstItem: Int32(itemOffsets.count), order: Int32(source)))
                for _ in 0..<Int(grid.parts) {
                    var file = 0
                    for candidate in 1..<count where sizes[candidate] < sizes[file] { file = candidate }
                    itemOffsets.append(sizes[file])
                    itemFiles.append(UInt16(file))
                    itemArchives.append(UInt16(archive))
                    sizes[file] += archiveData[archive].length
                }
            }
            precondition(itemOffsets.count <= Int(Int32.max), "too many chunks")
            keys.append(Key(fqn: key.fqn, dtype: key.dtype, size: key.size, grids: firstGrid..<grids.count,
                            items: firstItem..<itemOffsets.count))
        }
        fileSizes = sizes
        self.keys = keys
        self.grids = grids
        self.objectItems = objectItems
        self.archives = archives
        self.archiveData = archiveData
        dimensions = builder.dimensions
        self.itemOffsets = itemOffsets
        self.itemFiles = itemFiles
        self.itemArchives = itemArchives
        self.keyIndex = keyIndex
    }

    /// One chunk per key, as the whole tensors `tensors` list them (each chunk its own grid).
    public init(tensors: [(key: String, metadata: DCPTensorMetadata)], objects: [(key: String, bytes: [UInt8])],
                fileCount: Int = 1) throws {
        var builder = Builder()
        for (key, tensor) in tensors {
            builder.declare(key: key, dtype: tensor.dtype, size: tensor.size)
            builder.add(key: key, metadata: tensor)
        }
        self = try builder.layout(objects: objects, fileCount: fileCount)
    }

    private struct ArchiveShape: Hashable {
        let dtype: DType
        let shape: [Int]
    }

    // MARK: Items

    public var tensorItemCount: Int { itemOffsets.count }
    public var tensorItemIndices: Range<Int> { 0..<itemOffsets.count }

    /// The grid holding tensor item `item`, and the item's part in it.
    public func grid(item: Int) -> (grid: Int, part: Int) {
        var low = 0, high = grids.count
        while high - low > 1 {
            let middle = (low + high) / 2
            if Int(grids[middle].firstItem) <= item { low = middle } else { high = middle }
        }
        return (low, item - Int(grids[low].firstItem))
    }

    /// The key index of tensor item `item`.
    public func keyIndex(item: Int) -> Int { Int(grids[grid(item: item).grid].key) }
    public func key(item: Int) -> String { keys[keyIndex(item: item)].fqn }
    public func dtype(item: Int) -> DType { keys[keyIndex(item: item)].dtype }
    public func file(item: Int) -> Int { Int(itemFiles[item]) }
    public func itemOffset(item: Int) -> Int64 { itemOffsets[item] }
    public func itemLength(item: Int) -> Int64 { archiveData[Int(itemArchives[item])].length }
    public func byteCount(item: Int) -> Int64 { archiveData[Int(itemArchives[item])].size }
    /// Absolute offset in its file of the chunk's first data byte.
    public func dataOffset(item: Int) -> Int64 { itemOffsets[item] + archiveData[Int(itemArchives[item])].offset }
    public func archive(item: Int) -> TorchSaveArchive.TensorArchivePlan { archives[Int(itemArchives[item])] }
    /// Index into `archives` of item `item`'s archive plan.
    public func archiveIndex(item: Int) -> Int { Int(itemArchives[item]) }

    /// The chunk of grid `grid`'s part `part`.
    public func chunk(grid index: Int, part: Int) -> DCPChunk {
        let grid = grids[index]
        let start = Int(grid.dims), rank = Int(grid.rank)
        var offsets = Array(dimensions[start..<(start + rank)])
        var sizes = Array(dimensions[(start + rank)..<(start + 2 * rank)])
        if grid.parts > 1 {
            let axis = Int(grid.axis)
            sizes[axis] /= Int(grid.parts)
            offsets[axis] += part * sizes[axis]
        }
        return DCPChunk(offsets: offsets, sizes: sizes)
    }

    public func chunk(item: Int) -> DCPChunk {
        let (grid, part) = grid(item: item)
        return chunk(grid: grid, part: part)
    }

    public func tensorItem(_ item: Int) -> TensorItem {
        TensorItem(key: key(item: item), chunk: chunk(item: item), dtype: dtype(item: item), file: file(item: item),
                   itemOffset: itemOffsets[item], archive: archive(item: item))
    }

    /// The key called `fqn`.
    public func key(named fqn: String) -> Key? { keyIndex[fqn].map { keys[$0] } }

    /// The tensor item holding the chunk of `key` at `offsets`: the grid that contains the
    /// offsets, then the part, computed (no per-chunk dictionary).
    public func item(key fqn: String, offsets: [Int]) -> Int? {
        guard let key = keyIndex[fqn] else { return nil }
        for index in keys[key].grids {
            let grid = grids[index]
            let start = Int(grid.dims), rank = Int(grid.rank)
            guard offsets.count == rank else { return nil }
            var inside = true
            for axis in 0..<rank {
                let origin = dimensions[start + axis], extent = dimensions[start + rank + axis]
                if offsets[axis] < origin || offsets[axis] >= origin + max(extent, 1) { inside = false; break }
            }
            guard inside else { continue }
            let part: Int
            if grid.parts > 1 {
                let axis = Int(grid.axis)
                let size = dimensions[start + rank + axis] / Int(grid.parts)
                let delta = offsets[axis] - dimensions[start + axis]
                guard delta % size == 0 else { return nil }
                part = delta / size
            } else {
                part = 0
            }
            let item = Int(grid.firstItem) + part
            return chunk(grid: index, part: part).offsets == offsets ? item : nil
        }
        return nil
    }

    public var totalBytes: Int64 { fileSizes.reduce(0, +) }
    /// Bytes of tensor data (without the archives' headers).
    public var tensorBytes: Int64 { itemArchives.reduce(0) { $0 + archiveData[Int($1)].size } }

    /// Where each item is stored, as `.metadata`'s `storage_data` says it: plain items.
    public func storageInfo(item: Int) -> DCPStorageInfo {
        DCPStorageInfo(relativePath: fileNames[file(item: item)], offset: itemOffsets[item], length: itemLength(item: item))
    }

    /// The `.metadata` of this layout as a value (allocates per chunk: for small checkpoints and
    /// tests; writers stream it with `DCPMetadataWriter`).
    public var metadata: DCPMetadata {
        var tensors: [(fqn: String, metadata: DCPTensorMetadata)] = []
        var storage: [DCPStorageKey: DCPStorageInfo] = [:]
        for key in keys {
            var chunks: [DCPChunk] = []
            for item in key.items {
                let chunk = self.chunk(item: item)
                chunks.append(chunk)
                storage[DCPStorageKey(fqn: key.fqn, offsets: chunk.offsets.array)] = storageInfo(item: item)
            }
            tensors.append((key.fqn, DCPTensorMetadata(dtype: key.dtype, size: key.size, chunks: chunks)))
        }
        for object in objectItems {
            storage[DCPStorageKey(fqn: object.key, offsets: nil)] = DCPStorageInfo(
                relativePath: fileNames[object.file], offset: object.itemOffset, length: Int64(object.bytes.count))
        }
        return DCPMetadata(tensors: tensors, bytesItems: objectItems.map(\.key), storage: storage)
    }
}

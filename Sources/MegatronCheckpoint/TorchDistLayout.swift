import TensorCore
import TorchZip

/// Where every item of a torch_dist checkpoint will be, decided before any byte is written: each
/// tensor chunk is its own `torch.save` archive and each object a bytes item, back to back in
/// `__<i>_0.distcp` files. A planner can therefore send tensor bytes straight to their final
/// offsets, in any order, from any thread.
public struct TorchDistLayout: Sendable {
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
    public let tensorItems: [TensorItem]
    public let objectItems: [ObjectItem]
    /// The `.metadata` this layout produces.
    public let metadata: DCPMetadata
    private let itemIndex: [DCPStorageKey: Int]

    /// Objects go first into file 0; tensor chunks then go, in order, to the least-filled file,
    /// so `fileCount` writers share the bytes evenly.
    public init(tensors: [(key: String, metadata: DCPTensorMetadata)], objects: [(key: String, bytes: [UInt8])],
                fileCount: Int = 1) throws {
        let count = max(1, fileCount)
        fileNames = (0..<count).map { "__\($0)_0.distcp" }
        var sizes = [Int64](repeating: 0, count: count)
        var storage: [DCPStorageKey: DCPStorageInfo] = [:]
        var objectItems: [ObjectItem] = []
        for object in objects {
            objectItems.append(ObjectItem(key: object.key, bytes: object.bytes, file: 0, itemOffset: sizes[0]))
            storage[DCPStorageKey(fqn: object.key, offsets: nil)] = DCPStorageInfo(
                relativePath: fileNames[0], offset: sizes[0], length: Int64(object.bytes.count))
            sizes[0] += Int64(object.bytes.count)
        }
        var tensorItems: [TensorItem] = []
        var index: [DCPStorageKey: Int] = [:]
        // An archive's layout depends only on dtype and shape: 40,000 expert chunks share a few
        // dozen, so each is built once and shared (a layout with its zip entries is ~2 KB).
        var archives: [ArchiveShape: TorchSaveArchive.TensorArchivePlan] = [:]
        for (key, tensor) in tensors {
            for chunk in tensor.chunks {
                let shapeKey = ArchiveShape(dtype: tensor.dtype, shape: chunk.sizes)
                let archive: TorchSaveArchive.TensorArchivePlan
                if let known = archives[shapeKey] {
                    archive = known
                } else {
                    archive = try TorchSaveArchive.tensorArchivePlan(dtype: tensor.dtype, shape: chunk.sizes)
                    archives[shapeKey] = archive
                }
                let file = sizes.indices.min { sizes[$0] < sizes[$1] }!
                let item = TensorItem(key: key, chunk: chunk, dtype: tensor.dtype, file: file, itemOffset: sizes[file], archive: archive)
                let storageKey = DCPStorageKey(fqn: key, offsets: chunk.offsets)
                storage[storageKey] = DCPStorageInfo(relativePath: fileNames[file], offset: item.itemOffset, length: item.itemLength)
                index[storageKey] = tensorItems.count
                tensorItems.append(item)
                sizes[file] += item.itemLength
            }
        }
        fileSizes = sizes
        self.tensorItems = tensorItems
        self.objectItems = objectItems
        itemIndex = index
        metadata = DCPMetadata(tensors: tensors.map { ($0.key, $0.metadata) }, bytesItems: objects.map(\.key), storage: storage)
    }

    private struct ArchiveShape: Hashable {
        let dtype: DType
        let shape: [Int]
    }

    /// The tensor item holding the chunk of `key` at `offsets`.
    public func item(key: String, offsets: [Int]) -> Int? { itemIndex[DCPStorageKey(fqn: key, offsets: offsets)] }

    public var totalBytes: Int64 { fileSizes.reduce(0, +) }
}

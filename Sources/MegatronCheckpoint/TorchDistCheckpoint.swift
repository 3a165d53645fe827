import Foundation
import Synchronization
import TensorCore
import TorchPickle
import TorchZip

/// A PyTorch DCP checkpoint as Megatron-Core's `torch_dist` writes it, opened for reading any
/// box of any tensor and any object item, without loading whole items.
///
/// Opening reads `.metadata`, checks that every chunk lies inside its tensor and that no two
/// chunks of a key overlap (what DCP's saver checks in `_validate_global_plan`), that every item
/// has a storage entry and that its data file exists and is long enough. Item archives are
/// parsed on first use and remembered.
///
/// Python: `torch.distributed.checkpoint.FileSystemReader` + `DefaultLoadPlanner`, and
/// Megatron's `TorchDistLoadShardedStrategy`.
public final class TorchDistCheckpoint: GlobalTensorSource {
    /// The directory holding `.metadata` and the data files.
    public let directory: String
    /// `directory/.metadata`, as errors name it.
    public let metadataPath: String
    public let metadata: DCPMetadata
    /// The Megatron folder, when opened through one (nil for `init(directory:)`).
    public let folder: MegatronCheckpointFolder?
    /// Data files by `relative_path`.
    let files: [String: ReadOnlyFile]
    /// `files` by the storage table's path index (`DCPStorageTable.paths`).
    let filesByPath: [ReadOnlyFile?]
    let tensorIndex: [String: Int]
    /// The `storage_data` entry of each chunk (`metadata.storage.info(record:)`), tensor by tensor
    /// in `.metadata` order: chunk `c` of tensor `t` at `chunkRecords[chunkStarts[t] + c]`. Found
    /// once when opening (4 bytes a chunk), not looked up by fqn and offsets at every use.
    let chunkRecords: [Int32]
    let chunkStarts: [Int]
    /// `metadata.bytesItems` as a set (42,000 per-expert `_extra_state` objects are looked up one by one).
    let bytesItemKeys: Set<String>
    let cache = Mutex(ItemCache())
    /// Whether every item archive is opened, or (for a plan that is only printed) one per layout.
    public let itemOpening: ItemOpening

    /// How `chunkData` finds where an item's bytes are.
    public enum ItemOpening: Sendable, Equatable {
        /// Open and check every item's archive (what any run that reads data does).
        case every
        /// Open one item per (dtype, chunk sizes, item length) and take the others' layout from
        /// it: a dry run of 400,000 chunks would otherwise spend seconds in 800,000 header reads.
        /// The run itself opens and checks every item.
        case oncePerLayout
    }

    struct ItemLayoutKey: Hashable {
        var dtype: DType
        var sizes: DCPChunk.Dims
        var length: Int64

        // By hand: the synthesized forms went through the dtype's raw `String` and the dims'
        // generic iterator, 6,000 instructions a lookup, once per chunk of a dry run.
        static func == (a: ItemLayoutKey, b: ItemLayoutKey) -> Bool {
            guard a.length == b.length, a.sizes.count == b.sizes.count, a.dtype == b.dtype else { return false }
            for axis in 0..<a.sizes.count where a.sizes[axis] != b.sizes[axis] { return false }
            return true
        }

        func hash(into hasher: inout Hasher) {
            hasher.combine(length)
            for axis in 0..<sizes.count { hasher.combine(sizes[axis]) }
        }
    }

    /// An opened item's runs, relative to the item's start.
    struct ItemLayout {
        var elementSize: Int
        var runs: [ChunkData.Run]
    }

    /// Lookups answered from an opened item's layout (`ItemOpening.oncePerLayout`).
    public var itemsAssumed: Int { cache.withLock { $0.itemsAssumed } }

    /// The line a printed plan carries when items were assumed.
    public var assumedItemsNote: String {
        let layouts = cache.withLock { $0.layouts.count }
        return "source items: one opened per layout (\(layouts) layouts of dtype, chunk sizes and item length); the others are taken to be laid out alike for this plan (a run opens and checks every one)"
    }

    struct ItemCache {
        var layouts: [ItemLayoutKey: ItemLayout] = [:]
        var itemsAssumed = 0
        var chunks: [DCPStorageKey: ChunkData] = [:]
        var decoded: [DCPStorageKey: ReadOnlyFile] = [:]
        /// Per tensor (by index) with many chunks: its chunks by start on axis 0.
        var axisIndex: [Int: AxisZeroIndex] = [:]
        /// Parsed `data.pkl`s by their bytes (bounded).
        var savedTensors: [UInt64: (pickle: [UInt8], tensor: TorchSavedTensor)] = [:]
    }

    public var globalTensors: [(fqn: String, metadata: DCPTensorMetadata)] { metadata.tensors }

    /// Tensor keys in `.metadata` order.
    public var tensorKeys: [String] { metadata.tensors.map(\.fqn) }
    /// Bytes-item keys (ShardedObjects, common state) in `.metadata` order.
    public var objectKeys: [String] { metadata.bytesItems }

    /// Opens the checkpoint at `path`: a Megatron save directory, an iteration directory or a
    /// plain DCP directory (see `MegatronCheckpointFolder`).
    public convenience init(path: String) throws {
        try self.init(folder: try MegatronCheckpointFolder(path: path))
    }

    public convenience init(folder: MegatronCheckpointFolder, itemOpening: ItemOpening = .every) throws {
        try self.init(directory: folder.directory, folder: folder, itemOpening: itemOpening)
    }

    /// Opens the DCP checkpoint in `directory` (which must hold `.metadata`).
    public init(directory: String, folder: MegatronCheckpointFolder? = nil, itemOpening: ItemOpening = .every) throws {
        self.directory = directory
        self.itemOpening = itemOpening
        self.folder = folder
        metadataPath = (directory as NSString).appendingPathComponent(".metadata")
        let file: ReadOnlyFile
        do {
            file = try ReadOnlyFile(path: metadataPath)
        } catch let error as FileIOError {
            // A missing or unreadable .metadata means this is no DCP directory; a .metadata that
            // is a directory or a FIFO is reported as such.
            guard case .failed(_, .open, _, _) = error else { throw error }
            throw MegatronCheckpointError.notACheckpoint(path: directory, reason: "no readable .metadata (\(error))")
        }
        metadata = try DCPMetadata(file: file)
        tensorIndex = Dictionary(metadata.tensors.enumerated().map { ($0.element.fqn, $0.offset) }, uniquingKeysWith: { first, _ in first })
        bytesItemKeys = Set(metadata.bytesItems)
        (files, chunkRecords, chunkStarts) = try Self.validate(metadata, tensorIndex: tensorIndex, bytesItemKeys: bytesItemKeys, metadataPath: metadataPath, directory: directory)
        filesByPath = metadata.storage.paths.map { [files] in files[$0] }
    }

    /// The checks of `init`, in order: per tensor, chunk bounds, overlaps and storage entries;
    /// then bytes items; then data files (existence, item ranges inside the file). Returns the
    /// data files and each chunk's storage entry (see `chunkRecords`).
    static func validate(_ metadata: DCPMetadata, tensorIndex: [String: Int], bytesItemKeys: Set<String>, metadataPath: String, directory: String) throws
        -> (files: [String: ReadOnlyFile], chunkRecords: [Int32], chunkStarts: [Int])
    {
        var chunkRecords: [Int32] = []
        var chunkStarts: [Int] = []
        chunkStarts.reserveCapacity(metadata.tensors.count + 1)
        chunkRecords.reserveCapacity(metadata.tensors.reduce(0) { $0 + $1.metadata.chunks.count })
        // Each tensor's checks are independent (a 409,000-chunk checkpoint spends a fifth of a
        // second in them): made on every core, taken in order so the first fault is the one a
        // sequential walk reports. A key is listed twice where `tensorIndex` (first listing wins)
        // names an earlier position.
        try ConcurrentBatches.forEach(count: metadata.tensors.count, batchSize: 512, { index in
            Result { () throws -> [Int32] in
                let (fqn, tensor) = metadata.tensors[index]
                try checkSize(tensor, key: fqn, metadataPath: metadataPath)
                for chunk in tensor.chunks {
                    let inside = chunk.offsets.indices.allSatisfy { axis in
                        chunk.offsets[axis] >= 0 && chunk.sizes[axis] >= 0 && chunk.offsets[axis] <= tensor.size[axis]
                            && chunk.sizes[axis] <= tensor.size[axis] - chunk.offsets[axis]
                    }
                    guard inside else {
                        throw MegatronCheckpointError.chunkOutOfBounds(
                            file: metadataPath, key: fqn, offsets: chunk.offsets.array, sizes: chunk.sizes.array, shape: tensor.size)
                    }
                }
                if let (first, second) = BoxGeometry.firstOverlap(tensor.chunks) {
                    throw MegatronCheckpointError.overlappingChunks(file: metadataPath, key: fqn, first: first.offsets.array, second: second.offsets.array)
                }
                let fqnHash = fqn.hashValue
                return try tensor.chunks.map { chunk in
                    guard let record = metadata.storage.record(fqn: fqn, fqnHash: fqnHash, offsets: chunk.offsets) else {
                        throw MegatronCheckpointError.missingStorage(file: metadataPath, key: fqn, offsets: chunk.offsets.array)
                    }
                    return Int32(record)
                }
            }
        }, consume: { index, records in
            let fqn = metadata.tensors[index].fqn
            guard tensorIndex[fqn] == index else {
                throw MegatronCheckpointError.invalidMetadata(file: metadataPath, reason: "key `\(MessageText.quoted(fqn))` is listed twice")
            }
            chunkStarts.append(chunkRecords.count)
            chunkRecords.append(contentsOf: try records.get())
        })
        chunkStarts.append(chunkRecords.count)
        // A bytes item repeats only when `bytesItemKeys` has fewer members than the list.
        let bytesItemsDistinct = bytesItemKeys.count == metadata.bytesItems.count
        var seen = Set<String>()
        var bytesItemRecords: [Int32] = []
        bytesItemRecords.reserveCapacity(metadata.bytesItems.count)
        for fqn in metadata.bytesItems {
            guard tensorIndex[fqn] == nil, bytesItemsDistinct || seen.insert(fqn).inserted else {
                throw MegatronCheckpointError.invalidMetadata(file: metadataPath, reason: "key `\(MessageText.quoted(fqn))` is listed twice")
            }
            guard let record = metadata.storage.record(bytesItem: fqn) else {
                throw MegatronCheckpointError.missingStorage(file: metadataPath, key: fqn, offsets: nil)
            }
            bytesItemRecords.append(Int32(record))
        }
        // The entries again, in the same order, for their files.
        var files: [String: ReadOnlyFile] = [:]
        // Entries come file by file: the last file is reused without hashing its name.
        var last: (name: String, file: ReadOnlyFile)?
        func checkFile(_ fqn: String, _ info: DCPStorageInfo) throws {
            let file: ReadOnlyFile
            if let last, last.name == info.relativePath {
                file = last.file
            } else if let open = files[info.relativePath] {
                file = open
            } else {
                let path = (directory as NSString).appendingPathComponent(info.relativePath)
                guard FileManager.default.fileExists(atPath: path) else {
                    throw MegatronCheckpointError.missingDataFile(metadata: metadataPath, key: fqn, file: info.relativePath)
                }
                file = try ReadOnlyFile(path: path)
                file.adviseRandomAccess()  // items are opened by their few KiB of headers
                files[info.relativePath] = file
            }
            last = (info.relativePath, file)
            guard info.length <= file.size, info.offset <= file.size - info.length else {
                throw MegatronCheckpointError.invalidItem(
                    file: file.path, key: fqn, offset: info.offset,
                    reason: "the item's \(info.length) bytes at offset \(info.offset) run past the end of the file (\(file.size) bytes; truncated?)")
            }
        }
        for (index, (fqn, _)) in metadata.tensors.enumerated() {
            for record in chunkRecords[chunkStarts[index]..<chunkStarts[index + 1]] {
                try checkFile(fqn, metadata.storage.info(record: Int(record)))
            }
        }
        for (fqn, record) in zip(metadata.bytesItems, bytesItemRecords) { try checkFile(fqn, metadata.storage.info(record: Int(record))) }
        return (files, chunkRecords, chunkStarts)
    }

    /// The storage entry of chunk `chunk` (an index into the tensor's chunks) of tensor `tensor`
    /// (an index into `metadata.tensors`).
    public func storageInfo(tensor: Int, chunk: Int) -> DCPStorageInfo {
        metadata.storage.info(record: Int(chunkRecords[chunkStarts[tensor] + chunk]))
    }

    /// A tensor's global size must be non-negative, and its bytes (counting a zero dimension as
    /// one, so that every box of it can be measured) must fit `Int64`: then no chunk or box
    /// arithmetic on it can overflow.
    static func checkSize(_ tensor: DCPTensorMetadata, key: String, metadataPath: String) throws {
        guard tensor.size.allSatisfy({ $0 >= 0 }) else {
            throw MegatronCheckpointError.invalidMetadata(
                file: metadataPath, reason: "`\(MessageText.quoted(key))` has a negative size \(tensor.size)")
        }
        var bytes = torchElementSize(tensor.dtype) ?? 1
        for dimension in tensor.size {
            let (product, overflow) = bytes.multipliedReportingOverflow(by: max(dimension, 1))
            guard !overflow, product <= Int(Int64.max) else {
                throw MegatronCheckpointError.tensorTooLarge(file: metadataPath, key: key, shape: tensor.size, dtype: tensor.dtype)
            }
            bytes = product
        }
    }

    /// The metadata of tensor `key`.
    public func tensor(_ key: String) throws -> DCPTensorMetadata {
        metadata.tensors[try tensorPosition(key)].metadata
    }

    /// The chunks of `key` whose axis-0 extent meets the box's (indexed for tensors of many chunks).
    public func candidateChunks(key: String, box: DCPChunk) throws -> [DCPChunk] {
        let index = try tensorPosition(key)
        let chunks = metadata.tensors[index].metadata.chunks
        return candidateChunkIndices(tensor: index, box: box).map { chunks[$0] }
    }

    /// The chunks meeting `box`, each with its data: one key lookup for the box, the chunks by
    /// index and their storage entries from `chunkRecords`.
    public func overlappingChunks(key: String, box: DCPChunk) throws -> [(chunk: DCPChunk, overlap: DCPChunk, data: ChunkData)] {
        let index = try tensorPosition(key)
        let tensor = metadata.tensors[index].metadata
        var result: [(chunk: DCPChunk, overlap: DCPChunk, data: ChunkData)] = []
        for position in candidateChunkIndices(tensor: index, box: box) {
            let chunk = tensor.chunks[position]
            guard let overlap = BoxGeometry.intersection(box, chunk) else { continue }
            result.append((chunk, overlap, try chunkData(tensor: index, chunk: position)))
        }
        return result
    }

    func tensorPosition(_ key: String) throws -> Int {
        guard let index = tensorIndex[key] else { throw MegatronCheckpointError.keyNotFound(file: metadataPath, key: key) }
        return index
    }

    /// Indices (ascending) of the chunks of tensor `index` whose axis-0 extent meets the box's.
    func candidateChunkIndices(tensor index: Int, box: DCPChunk) -> [Int] {
        let chunks = metadata.tensors[index].metadata.chunks
        guard chunks.count > 16, !box.offsets.isEmpty else { return Array(chunks.indices) }
        let axis = cache.withLock { cache in
            if let known = cache.axisIndex[index] { return known }
            let built = AxisZeroIndex(chunks)
            cache.axisIndex[index] = built
            return built
        }
        return axis.candidates(in: chunks, low: box.offsets[0], high: box.offsets[0] + max(box.sizes[0], 1))
    }

    /// The storage entry of a chunk (`offsets`) or bytes item (nil).
    public func storageInfo(key: String, offsets: [Int]?) throws -> DCPStorageInfo {
        guard let info = metadata.storage[DCPStorageKey(fqn: key, offsets: offsets)] else {
            throw MegatronCheckpointError.missingStorage(file: metadataPath, key: key, offsets: offsets)
        }
        return info
    }

    /// The data file of an item, opened at `init`.
    func dataFile(_ info: DCPStorageInfo) -> ReadOnlyFile {
        guard let file = files[info.relativePath] else { preconditionFailure("data file \(info.relativePath) not opened at init") }
        return file
    }

    /// The item's bytes as they were before any transform: the `.distcp` range itself, or for a
    /// zstd item, an unlinked temporary file holding the decoded bytes (decoded once, kept).
    func itemBytes(_ key: DCPStorageKey) throws -> (file: ReadOnlyFile, range: ByteRange, decoded: Bool) {
        guard let info = metadata.storage[key] else {
            throw MegatronCheckpointError.missingStorage(file: metadataPath, key: key.fqn, offsets: key.offsets)
        }
        let file = dataFile(info)
        let range = ByteRange(offset: info.offset, count: info.length)
        let transforms = info.transformDescriptors ?? []
        if transforms.isEmpty { return (file, range, false) }
        guard transforms == [ZstdStreamDecoder.descriptor] else {
            let other = transforms.first { $0 != ZstdStreamDecoder.descriptor } ?? transforms.joined(separator: ", ")
            throw MegatronCheckpointError.unsupportedTransform(file: file.path, key: key.fqn, transform: other)
        }
        if let decoded = cache.withLock({ $0.decoded[key] }) {
            return (decoded, ByteRange(offset: 0, count: decoded.size), true)
        }
        let decoded = try ZstdStreamDecoder.decodeToTemporaryFile(file: file, range: range, key: key.fqn, limit: decodedLimit(key))
        cache.withLock { $0.decoded[key] = decoded }
        return (decoded, ByteRange(offset: 0, count: decoded.size), true)
    }

    /// The most a compressed item may decode to, so that a zstd bomb is refused after a bounded
    /// amount of work and temporary disk. A chunk: twice the bytes `.metadata` gives it plus
    /// 1 MiB (room for the archive's records and for a saved view whose storage outgrows the
    /// chunk, never the orders of magnitude of a bomb). An object: `objectDecodedLimit`.
    func decodedLimit(_ key: DCPStorageKey) -> ZstdStreamDecoder.Limit {
        guard let offsets = key.offsets, let index = tensorIndex[key.fqn],
            let chunk = metadata.tensors[index].metadata.chunks.first(where: { $0.offsets == offsets })
        else {
            return .init(bytes: Self.objectDecodedLimit, holder: "an object item (nembridge decodes at most that)")
        }
        let dtype = metadata.tensors[index].metadata.dtype
        // `validate` bounded the tensor's bytes by Int64.max, so the chunk's fit; the margin saturates.
        let element = Int64(Self.torchElementSize(dtype) ?? 1)
        let bytes = chunk.sizes.reduce(element) { $0 * Int64($1) }
        let (doubled, overflow) = bytes.multipliedReportingOverflow(by: 2)
        let (limit, sumOverflow) = doubled.addingReportingOverflow(1 << 20)
        return .init(bytes: overflow || sumOverflow ? Int64.max : limit,
                     holder: "a chunk of sizes \(chunk.sizes) and dtype \(dtype) (\(bytes) bytes) can hold with its archive")
    }

    /// Objects Megatron-Core saves (common state, `_extra_state`) are KiB; 256 MiB is far beyond
    /// any of them and small enough to decode in a second or two.
    public static let objectDecodedLimit: Int64 = 256 << 20

    /// Opens the `torch.save` zip of an item, turning zip faults into `invalidItem` errors that
    /// name the `.distcp` file, the key and the item's offset.
    func itemArchive(_ key: DCPStorageKey) throws -> (archive: ZipArchive, info: DCPStorageInfo, decoded: Bool) {
        let (file, range, decoded) = try itemBytes(key)
        let info = metadata.storage[key]!
        do {
            return (try ZipArchive(file: file, range: range, name: key.fqn), info, decoded)
        } catch let error as ZipError {
            throw itemError(error, info: info, key: key.fqn, decoded: decoded)
        }
    }

    /// `invalidItem` for a zip fault inside an item; offsets in the reason are in the decoded
    /// stream for zstd items.
    func itemError(_ error: ZipError, info: DCPStorageInfo, key: String, decoded: Bool) -> MegatronCheckpointError {
        var reason = error.description
        let prefix = "\(error.archive): "
        if reason.hasPrefix(prefix) { reason.removeFirst(prefix.count) }
        if decoded { reason += " (in the zstd-decoded item)" }
        return .invalidItem(file: dataFile(info).path, key: key, offset: info.offset, reason: reason)
    }

    /// Reads `data.pkl` (or another small record) of an item's archive.
    func record(_ name: String, of archive: ZipArchive, info: DCPStorageInfo, key: String, decoded: Bool) throws -> [UInt8] {
        guard let entry = archive.record(name) else {
            throw MegatronCheckpointError.invalidItem(
                file: dataFile(info).path, key: key, offset: info.offset, reason: "not a torch.save archive: no `\(name)` record")
        }
        do {
            return try archive.contents(of: entry)
        } catch let error as ZipError {
            throw itemError(error, info: info, key: key, decoded: decoded)
        }
    }
}

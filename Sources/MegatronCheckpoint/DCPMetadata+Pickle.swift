import TensorCore
import TorchPickle

/// Reading and writing `.metadata` pickles. Shapes follow torch 2.13's pickling (formats.md §3.2):
/// dataclasses as `NEWOBJ` + `BUILD(__dict__)`, `TensorProperties` with a 5-tuple state, sizes as
/// `REDUCE(torch.Size, (tuple,))`, dtypes as bare globals.
extension DCPMetadata {
    static let metadataModule = "torch.distributed.checkpoint.metadata"

    /// Parses a `.metadata` file's bytes. Unknown extra fields (Megatron's `all_local_plans`,
    /// `mcore_data`, `planner_data`, `storage_meta`) are ignored.
    ///
    /// `DCPMetadataReader` reads the usual shapes straight into this value; a file it does not
    /// follow (or a DCP-level fault, for the wording) is read again by the generic reader.
    /// Parses a `.metadata` file, read through a window: its bytes are held whole only when the
    /// generic reader must read it.
    public init(file: ReadOnlyFile) throws {
        switch Result(catching: { () throws(DCPMetadataReader.Stop) in try DCPMetadataReader.read(file: file, globals: CheckpointGlobals.policy) }) {
        case .success(let metadata):
            self = metadata
        case .failure(.pickle(let error)):
            throw MegatronCheckpointError.invalidMetadata(file: file.path, reason: "\(error)")
        case .failure(.file(let error)):
            throw error
        case .failure(.unusual):
            try self.init(genericPickle: try file.readBytes(ByteRange(offset: 0, count: file.size)), file: file.path)
        }
    }

    public init(pickle bytes: [UInt8], file: String) throws {
        let fast = bytes.withUnsafeBytes { buffer in
            Result { () throws(DCPMetadataReader.Stop) in try DCPMetadataReader.read(buffer, globals: CheckpointGlobals.policy) }
        }
        switch fast {
        case .success(let metadata):
            self = metadata
        case .failure(.pickle(let error)):
            throw MegatronCheckpointError.invalidMetadata(file: file, reason: "\(error)")
        case .failure(.unusual):
            try self.init(genericPickle: bytes, file: file)
        case .failure(.file(let error)):
            throw error
        }
    }

    /// Parses a `.metadata` file's bytes through the generic `PickleReader` and its value tree:
    /// every pickle the checkpoint globals allow, in memory proportional to its values.
    public init(genericPickle bytes: [UInt8], file: String) throws {
        let root: PickleValue
        do {
            root = try PickleReader.read(bytes, globals: CheckpointGlobals.policy)
        } catch {
            throw MegatronCheckpointError.invalidMetadata(file: file, reason: "\(error)")
        }
        func fail(_ reason: String) -> MegatronCheckpointError { .invalidMetadata(file: file, reason: reason) }
        guard let object = root.object, let className = object.className else {
            throw fail("the root is not a Metadata object")
        }
        guard className.hasSuffix("Metadata") else { throw fail("the root is a `\(MessageText.quoted(className))`, not a DCP Metadata") }
        rootClass = className
        guard case .dict(let stateDictEntries)? = root["state_dict_metadata"] else {
            throw fail("no `state_dict_metadata` dict")
        }
        var tensors: [(fqn: String, metadata: DCPTensorMetadata)] = []
        var bytesItems: [String] = []
        for entry in stateDictEntries {
            guard let fqn = entry.key.stringValue else { throw fail("a state_dict_metadata key is not a string") }
            guard let className = entry.value.object?.className else { throw fail("`\(MessageText.quoted(fqn))`: entry is not an object") }
            if className.hasSuffix("BytesStorageMetadata") {
                bytesItems.append(fqn)
                continue
            }
            guard className.hasSuffix("TensorStorageMetadata") else { throw fail("`\(MessageText.quoted(fqn))`: unexpected entry class `\(MessageText.quoted(className))`") }
            guard let properties = entry.value["properties"] else { throw fail("`\(MessageText.quoted(fqn))`: no properties") }
            let (dtype, requiresGrad) = try Self.parseProperties(properties, fqn: fqn, fail: fail)
            guard let size = entry.value["size"].flatMap(Self.parseSize) else { throw fail("`\(MessageText.quoted(fqn))`: no size") }
            guard case .list(let chunkValues)? = entry.value["chunks"] else { throw fail("`\(MessageText.quoted(fqn))`: no chunks list") }
            let chunks = try chunkValues.map { chunk -> DCPChunk in
                guard let offsets = chunk["offsets"].flatMap(Self.parseSize), let sizes = chunk["sizes"].flatMap(Self.parseSize),
                    offsets.count == size.count, sizes.count == size.count
                else { throw fail("`\(MessageText.quoted(fqn))`: malformed chunk") }
                return DCPChunk(offsets: offsets, sizes: sizes)
            }
            tensors.append((fqn, DCPTensorMetadata(dtype: dtype, size: size, chunks: chunks, requiresGrad: requiresGrad)))
        }
        guard case .dict(let storageEntries)? = root["storage_data"] else { throw fail("no `storage_data` dict") }
        var storage = DCPStorageTable()
        storage.reserveCapacity(storageEntries.count)
        for entry in storageEntries {
            guard let fqn = entry.key["fqn"]?.stringValue else { throw fail("a storage_data key has no fqn") }
            let offsetValue = entry.key["offset"]
            let offsets: [Int]? = (offsetValue == nil || offsetValue == PickleValue.none) ? nil : offsetValue.flatMap(Self.parseSize)
            guard let path = entry.value["relative_path"]?.stringValue,
                let offset = entry.value["offset"]?.int64Value, let length = entry.value["length"]?.int64Value,
                offset >= 0, length >= 0
            else { throw fail("`\(MessageText.quoted(fqn))`: malformed _StorageInfo") }
            guard !path.contains("/"), !path.contains("\0"), path != "..", path != ".", !path.isEmpty else { throw fail("`\(MessageText.quoted(fqn))`: data file `\(MessageText.quoted(path))` is not a plain file name") }
            var transforms: [String]?
            if let value = entry.value["transform_descriptors"], value != .none {
                guard case .list(let items) = value else { throw fail("`\(MessageText.quoted(fqn))`: transform_descriptors is not a list") }
                transforms = try items.map { item in
                    guard let text = item.stringValue else { throw fail("`\(MessageText.quoted(fqn))`: transform descriptor is not a string") }
                    return text
                }
            }
            storage[DCPStorageKey(fqn: fqn, offsets: offsets)] = DCPStorageInfo(
                relativePath: path, offset: offset, length: length, transformDescriptors: transforms)
        }
        self.tensors = tensors
        self.bytesItems = bytesItems
        self.storage = storage
        version = root["version"]?.stringValue
    }

    /// `torch.Size((d0, d1, …))` → `[d0, d1, …]`; also accepts a bare tuple or list.
    static func parseSize(_ value: PickleValue) -> [Int]? {
        func ints(_ items: [PickleValue]) -> [Int]? {
            let numbers = items.compactMap(\.intValue)
            return numbers.count == items.count ? numbers : nil
        }
        switch value {
        case .tuple(let items), .list(let items): return ints(items)
        case .object(let object):
            guard object.args.count == 1 else { return nil }
            return parseSize(object.args[0])
        default: return nil
        }
    }

    /// `TensorProperties`: a 5-tuple state `(dtype, layout, requires_grad, memory_format, pin_memory)`
    /// from `__getstate__`, or a `__dict__` in older pickles.
    static func parseProperties(
        _ value: PickleValue, fqn: String, fail: (String) -> MegatronCheckpointError
    ) throws -> (DType, Bool) {
        var dtypeValue: PickleValue?
        var requiresGrad = false
        if case .tuple(let parts)? = value.object?.state, parts.count >= 3 {
            dtypeValue = parts[0]
            requiresGrad = parts[2].boolValue ?? false
        } else {
            dtypeValue = value["dtype"]
            requiresGrad = value["requires_grad"]?.boolValue ?? false
        }
        guard let global = dtypeValue?.globalName, global.module == "torch" else { throw fail("`\(MessageText.quoted(fqn))`: no dtype in properties") }
        guard let dtype = DType(torchName: global.name) else { throw fail("`\(MessageText.quoted(fqn))`: unknown dtype torch.\(global.name)") }
        return (dtype, requiresGrad)
    }

    // MARK: Writing

    static func size(_ dims: [Int]) -> PickleValue {
        .reduce(.global("torch", "Size"), [.tuple(dims.map { .int(Int64($0)) })])
    }

    static func dataclass(_ module: String, _ name: String, _ fields: KeyValuePairs<String, PickleValue>) -> PickleValue {
        .newObject(.global(module, name), [], .stringDict(fields))
    }

    /// The pickle torch writes for this metadata (protocol 2 here; DCP's loader takes any).
    public func pickleBytes() throws -> [UInt8] {
        var entries: [(key: PickleValue, value: PickleValue)] = []
        for (fqn, tensor) in tensors {
            guard let torchName = tensor.dtype.torchName else { throw MegatronCheckpointError.unsupportedDType(key: fqn, dtype: tensor.dtype.safetensorsName) }
            let properties = PickleValue.newObject(.global(Self.metadataModule, "TensorProperties"), [], .tuple([
                .global("torch", torchName),
                .reduce(.global("torch.serialization", "_get_layout"), [.string("torch.strided")]),
                .bool(tensor.requiresGrad),
                .reduce(.global(Self.metadataModule, "_MEM_FORMAT_ENCODING"), [.int(0)]),
                .bool(false),
            ]))
            let chunks = PickleValue.list(tensor.chunks.map { chunk in
                Self.dataclass(Self.metadataModule, "ChunkStorageMetadata", ["offsets": Self.size(chunk.offsets.array), "sizes": Self.size(chunk.sizes.array)])
            })
            entries.append((.string(fqn), Self.dataclass(Self.metadataModule, "TensorStorageMetadata", [
                "properties": properties, "size": Self.size(tensor.size), "chunks": chunks,
            ])))
        }
        for fqn in bytesItems {
            entries.append((.string(fqn), .newObject(.global(Self.metadataModule, "BytesStorageMetadata"))))
        }
        // Tensor chunks first in tensor order, then bytes items: a deterministic file.
        var keys: [DCPStorageKey] = []
        for (fqn, tensor) in tensors { keys.append(contentsOf: tensor.chunks.map { DCPStorageKey(fqn: fqn, offsets: $0.offsets.array) }) }
        keys.append(contentsOf: bytesItems.map { DCPStorageKey(fqn: $0, offsets: nil) })
        var storageEntries: [(key: PickleValue, value: PickleValue)] = []
        for key in keys {
            guard let info = storage[key] else { throw MegatronCheckpointError.missingStorage(file: ".metadata", key: key.fqn, offsets: key.offsets) }
            var indexFields: [(key: PickleValue, value: PickleValue)] = [(.string("fqn"), .string(key.fqn))]
            if let offsets = key.offsets { indexFields.append((.string("offset"), Self.size(offsets))) }
            indexFields.append((.string("index"), .none))
            var infoFields: [(key: PickleValue, value: PickleValue)] = [
                (.string("relative_path"), .string(info.relativePath)),
                (.string("offset"), .int(info.offset)),
                (.string("length"), .int(info.length)),
            ]
            if let transforms = info.transformDescriptors {
                infoFields.append((.string("transform_descriptors"), .list(transforms.map { .string($0) })))
            }
            storageEntries.append((
                .newObject(.global(Self.metadataModule, "MetadataIndex"), [], .dict(indexFields)),
                .newObject(.global("torch.distributed.checkpoint.filesystem", "_StorageInfo"), [], .dict(infoFields))
            ))
        }
        let root = PickleValue.newObject(.global(Self.metadataModule, "Metadata"), [], .dict([
            (.string("state_dict_metadata"), .dict(entries)),
            (.string("planner_data"), .none),
            (.string("storage_data"), .dict(storageEntries)),
            (.string("storage_meta"), .none),
            (.string("version"), version.map { .string($0) } ?? .none),
        ]))
        return PickleWriter.write(root)
    }
}

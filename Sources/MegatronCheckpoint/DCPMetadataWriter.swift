import TensorCore
import TorchPickle

/// Writes a layout's `.metadata` pickle as it goes, chunk by chunk, into a bounded buffer: the
/// same document as `DCPMetadata.pickleBytes()` (torch 2.13's shapes, formats.md §3.2), with
/// repeated globals, field names, keys and file names fetched from the memo as Python's pickler
/// does. A value tree of 450,000 chunks would take gigabytes; this takes the buffer.
public enum DCPMetadataWriter {
    static let module = DCPMetadata.metadataModule

    /// Writes the `.metadata` of `layout` into `sink` from offset 0; `storage(item)` says where
    /// tensor item `item` is stored (nil: as the layout places it) and `objectStorage(index)` the
    /// same for object items. Returns the size written.
    @discardableResult
    public static func write(
        _ layout: TorchDistLayout, to sink: some ByteSink,
        storage: ((Int) -> DCPStorageInfo)? = nil, objectStorage: ((Int) -> DCPStorageInfo)? = nil
    ) throws -> Int64 {
        var position: Int64 = 0
        var out = try PickleStreamWriter { bytes in
            try bytes.withUnsafeBytes { try sink.write($0, at: position) }
            position += Int64(bytes.count)
        }
        // The batch bodies get the writer inout; these helpers take it the same way.
        func newObject(_ name: String, module: String = Self.module, _ out: inout PickleStreamWriter) throws {
            try out.memoizedGlobal(module, name)
            try out.op(.emptyTuple)
            try out.op(.newObj)
        }
        func size(_ dims: [Int], _ out: inout PickleStreamWriter) throws {
            try out.memoizedGlobal("torch", "Size")
            try out.intTuple(dims)
            try out.op(.tuple1)
            try out.op(.reduce)
        }
        try newObject("Metadata", &out)
        try out.op(.emptyDict)
        try out.op(.mark)

        // state_dict_metadata: tensors in layout order, then bytes items.
        try out.memoizedString("state_dict_metadata")
        try out.op(.emptyDict)
        var entries = PickleBatch.dict()
        var remaining = layout.keys.count + layout.objectItems.count
        for key in layout.keys {
            guard let torchName = key.dtype.torchName else {
                throw MegatronCheckpointError.unsupportedDType(key: key.fqn, dtype: key.dtype.safetensorsName)
            }
            try entries.item(&out, remaining: remaining) { out in
                try out.memoizedString(key.fqn)
                try newObject("TensorStorageMetadata", &out)
                try out.op(.emptyDict)
                try out.op(.mark)
                try out.memoizedString("properties")
                try newObject("TensorProperties", &out)
                try out.op(.mark)
                try out.memoizedGlobal("torch", torchName)
                try out.memoizedGlobal("torch.serialization", "_get_layout")
                try out.memoizedString("torch.strided")
                try out.op(.tuple1)
                try out.op(.reduce)
                try out.op(.newFalse)
                try out.memoizedGlobal(Self.module, "_MEM_FORMAT_ENCODING")
                try out.int(0)
                try out.op(.tuple1)
                try out.op(.reduce)
                try out.op(.newFalse)
                try out.op(.tuple)
                try out.op(.build)
                try out.memoizedString("size")
                try size(key.size, &out)
                try out.memoizedString("chunks")
                try out.op(.emptyList)
                var chunks = PickleBatch.list()
                var left = key.items.count
                for item in key.items {
                    let chunk = layout.chunk(item: item)
                    try chunks.item(&out, remaining: left) { out in
                        try newObject("ChunkStorageMetadata", &out)
                        try out.op(.emptyDict)
                        try out.op(.mark)
                        try out.memoizedString("offsets")
                        try size(chunk.offsets.array, &out)
                        try out.memoizedString("sizes")
                        try size(chunk.sizes.array, &out)
                        try out.op(.setItems)
                        try out.op(.build)
                    }
                    left -= 1
                }
                try out.op(.setItems)
                try out.op(.build)
            }
            remaining -= 1
        }
        for object in layout.objectItems {
            try entries.item(&out, remaining: remaining) { out in
                try out.memoizedString(object.key)
                try newObject("BytesStorageMetadata", &out)
            }
            remaining -= 1
        }
        try out.memoizedString("planner_data")
        try out.op(.none)

        // storage_data: tensor chunks in tensor order, then bytes items.
        try out.memoizedString("storage_data")
        try out.op(.emptyDict)
        var storageEntries = PickleBatch.dict()
        remaining = layout.tensorItemCount + layout.objectItems.count
        func storageEntry(fqn: String, offsets: [Int]?, info: DCPStorageInfo) throws {
            try storageEntries.item(&out, remaining: remaining) { out in
                try newObject("MetadataIndex", &out)
                try out.op(.emptyDict)
                try out.op(.mark)
                try out.memoizedString("fqn")
                try out.memoizedString(fqn)
                if let offsets {
                    try out.memoizedString("offset")
                    try size(offsets, &out)
                }
                try out.memoizedString("index")
                try out.op(.none)
                try out.op(.setItems)
                try out.op(.build)
                try newObject("_StorageInfo", module: "torch.distributed.checkpoint.filesystem", &out)
                try out.op(.emptyDict)
                try out.op(.mark)
                try out.memoizedString("relative_path")
                try out.memoizedString(info.relativePath)
                try out.memoizedString("offset")
                try out.int(info.offset)
                try out.memoizedString("length")
                try out.int(info.length)
                if let transforms = info.transformDescriptors {
                    try out.memoizedString("transform_descriptors")
                    try out.op(.emptyList)
                    var list = PickleBatch.list()
                    for (index, transform) in transforms.enumerated() {
                        try list.item(&out, remaining: transforms.count - index) { try $0.memoizedString(transform) }
                    }
                }
                try out.op(.setItems)
                try out.op(.build)
            }
            remaining -= 1
        }
        for key in layout.keys {
            for item in key.items {
                try storageEntry(fqn: key.fqn, offsets: layout.chunk(item: item).offsets.array,
                                 info: storage?(item) ?? layout.storageInfo(item: item))
            }
        }
        for (index, object) in layout.objectItems.enumerated() {
            let info = objectStorage?(index) ?? DCPStorageInfo(
                relativePath: layout.fileNames[object.file], offset: object.itemOffset, length: Int64(object.bytes.count))
            try storageEntry(fqn: object.key, offsets: nil, info: info)
        }
        try out.memoizedString("storage_meta")
        try out.op(.none)
        try out.memoizedString("version")
        try out.string("1.0.0")
        try out.op(.setItems)
        try out.op(.build)
        return try out.finish()
    }
}

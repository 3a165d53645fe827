import Execution
import MegatronCheckpoint
import SafetensorsFormat
import TensorCore
import TorchZip

/// The two ways a command writes planned bytes: safetensors shards, and torch_dist items. Each
/// tensor (or chunk) is one group of copies done in order by one worker, one lane per file, its
/// checksums computed as the bytes pass; the results are the manifest's entries.
enum PlannedWriting {
    /// Writes every shard; `steps(tensor, dataStart)` says where each tensor's bytes come from,
    /// with destinations counted from `dataStart`, the tensor's first byte in its file.
    static func writeSafetensors(
        shards: [(path: String, name: String, tensors: [TensorDeclaration], metadata: [(key: String, value: String)]?)],
        executor: MoveExecutor, progress: ProgressCounter?,
        casts: [String: (from: DType, to: DType)] = [:],
        steps: (SafetensorsTensorInfo, Int64) throws -> [MoveGroup.Step]
    ) throws -> [ChecksumManifest.Entry] {
        let writers = try shards.map { try SafetensorsWriter(path: $0.path, tensors: $0.tensors, metadata: $0.metadata) }
        let digests = writers.map { DigestTable(count: $0.layout.tensors.count) }
        var groups: [MoveGroup] = []
        do {
            for (lane, writer) in writers.enumerated() {
                let table = digests[lane]
                for (index, tensor) in writer.layout.tensors.enumerated() {
                    let start = writer.layout.dataStart + tensor.dataOffsets.offset
                    let checksums = StreamChecksums { xxh3, _, _ in table.set(index, xxh3) }
                    if let cast = casts[tensor.name] {
                        // Source-dtype bytes at tensor-relative offsets, cast on their way to the file.
                        groups.append(MoveGroup(sink: CastingSink(base: writer, start: start, from: cast.from, to: cast.to),
                                                steps: try steps(tensor, 0),
                                                observer: CastingObserver(observer: checksums, from: cast.from, to: cast.to), lane: lane))
                    } else {
                        groups.append(MoveGroup(sink: writer, steps: try steps(tensor, start), observer: checksums, lane: lane))
                    }
                }
            }
            try executor.run(groups: groups, progress: progress)
            for writer in writers { try writer.finish() }
        } catch {
            writers.forEach { $0.discard() }
            throw error
        }
        var entries: [ChecksumManifest.Entry] = []
        for (shard, (writer, table)) in zip(shards, zip(writers, digests)) {
            for (tensor, digest) in zip(writer.layout.tensors, table.all) {
                entries.append(ChecksumManifest.Entry(
                    name: tensor.name, file: shard.name,
                    range: ByteRange(offset: writer.layout.dataStart + tensor.dataOffsets.offset, count: tensor.byteCount),
                    xxh3: digest, dtype: tensor.dtype, shape: tensor.shape))
            }
        }
        return entries
    }

    /// Writes a torch_dist directory from `layout`; `steps(item, dataStart)` fills each tensor
    /// item, destinations counted from the absolute offset of its data. Returns one manifest entry
    /// per chunk, named `key[offsets]`, with files relative to the save directory.
    static func writeTorchDist(
        directory: String, iterationName: String, layout: TorchDistLayout, executor: MoveExecutor, progress: ProgressCounter?,
        steps: (Int, Int64) throws -> [MoveGroup.Step]
    ) throws -> [ChecksumManifest.Entry] {
        let writer = try TorchDistWriter(directory: directory, layout: layout)
        let digests = DigestTable(count: layout.tensorItems.count)
        do {
            var groups: [MoveGroup] = []
            for index in layout.tensorItems.indices {
                let (file, base) = writer.dataDestination(item: index)
                let observer = StreamChecksums(crc: true) { xxh3, crc, count in
                    try writer.recordData(item: index, at: 0, count: count, crc: crc)
                    digests.set(index, xxh3)
                }
                groups.append(MoveGroup(sink: file, steps: try steps(index, base), observer: observer, lane: layout.tensorItems[index].file))
            }
            try executor.run(groups: groups, progress: progress)
            try writer.finish()
        } catch {
            writer.discard()
            throw error
        }
        return zip(layout.tensorItems, digests.all).map { item, digest in
            ChecksumManifest.Entry(name: "\(item.key)\(item.chunk.offsets)", file: "\(iterationName)/\(layout.fileNames[item.file])",
                                   range: ByteRange(offset: item.dataOffset, count: item.byteCount), xxh3: digest,
                                   dtype: item.dtype, shape: item.chunk.sizes)
        }
    }
}

import Execution
import MegatronCheckpoint
import SafetensorsFormat
import TensorCore
import TorchZip

/// The two ways a command writes planned bytes: safetensors shards, and torch_dist items. Each
/// tensor (or chunk) is one group of a `ConversionPlan`, done in order by one worker, one lane
/// per file, its checksums computed as the bytes pass; the results are the manifest's entries.
enum PlannedWriting {
    /// Writes every shard; `moves(tensor, &plan)` appends the moves that fill each tensor, in data
    /// order (the plan's groups are the tensors, shard by shard).
    static func writeSafetensors(
        shards: [(path: String, name: String, tensors: [TensorDeclaration], metadata: [(key: String, value: String)]?)],
        executor: MoveExecutor, progress: ProgressCounter?,
        casts: [String: ElementCast] = [:],
        moves: (SafetensorsTensorInfo, inout ConversionPlan) throws -> Void
    ) throws -> [ChecksumManifest.Entry] {
        let writers = try shards.map { try SafetensorsWriter(path: $0.path, tensors: $0.tensors, metadata: $0.metadata) }
        var plan = ConversionPlan()
        var slots: [(shard: Int, tensor: Int)] = []
        do {
            for (shard, writer) in writers.enumerated() {
                for (index, tensor) in writer.layout.tensors.enumerated() {
                    // A cast tensor's moves read source-dtype bytes; the executor converts them.
                    try moves(tensor, &plan)
                    plan.endGroup(output: shard, offset: writer.layout.dataStart + tensor.dataOffsets.offset, cast: casts[tensor.name])
                    slots.append((shard, index))
                }
            }
            let digests = DigestTable(count: plan.groupCount)
            try executor.run(plan, sinks: writers, observer: { group in
                StreamChecksums { xxh3, _, _ in digests.set(group, xxh3) }
            }, progress: progress)
            for writer in writers { try writer.finish() }
            return zip(slots, digests.all).map { slot, digest in
                let writer = writers[slot.shard]
                let tensor = writer.layout.tensors[slot.tensor]
                return ChecksumManifest.Entry(
                    name: tensor.name, file: shards[slot.shard].name,
                    range: ByteRange(offset: writer.layout.dataStart + tensor.dataOffsets.offset, count: tensor.byteCount),
                    xxh3: digest, dtype: tensor.dtype, shape: tensor.shape)
            }
        } catch {
            writers.forEach { $0.discard() }
            throw error
        }
    }

    /// Writes a torch_dist directory from `layout`, group `i` of `plan` filling tensor item `i`,
    /// and the checksum manifest at `manifestPath`: one entry per chunk, named `key[offsets]`,
    /// with files relative to the save directory, streamed (nothing per chunk is held but its
    /// digest).
    static func writeTorchDist(
        directory: String, iterationName: String, layout: TorchDistLayout, plan: ConversionPlan, executor: MoveExecutor,
        progress: ProgressCounter?
    ) throws -> ChecksumManifest.Streamed {
        precondition(plan.groupCount == layout.tensorItemCount, "a plan of \(plan.groupCount) groups for \(layout.tensorItemCount) chunks")
        let writer = try TorchDistWriter(directory: directory, layout: layout)
        let digests = DigestTable(count: layout.tensorItemCount)
        do {
            try executor.run(plan, sinks: writer.files, observer: { item in
                StreamChecksums(crc: true) { xxh3, crc, count in
                    try writer.recordData(item: item, at: 0, count: count, crc: crc)
                    digests.set(item, xxh3)
                }
            }, progress: progress)
            try writer.finish()
        } catch {
            writer.discard()
            throw error
        }
        let all = digests.all
        return ChecksumManifest.Streamed(kind: .megatronTorchDist, count: layout.tensorItemCount) { item in
            let chunk = layout.chunk(item: item)
            return ChecksumManifest.Entry(name: "\(layout.key(item: item))\(chunk.offsets)", file: "\(iterationName)/\(layout.fileNames[layout.file(item: item)])",
                                          range: ByteRange(offset: layout.dataOffset(item: item), count: layout.byteCount(item: item)),
                                          xxh3: all[item], dtype: layout.dtype(item: item), shape: chunk.sizes)
        }
    }
}

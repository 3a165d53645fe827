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
    /// order (the plan's groups are the tensors, shard by shard), and returns the tensor's element
    /// transform when it has one other than its cast (a quantized weight's codes or scales). Each shard is published as soon
    /// as its tensors are written and, with `records`, recorded; shards `records` keeps are
    /// neither planned into nor written, their entries come from their records.
    static func writeSafetensors(
        shards: [(path: String, name: String, tensors: [TensorDeclaration], metadata: [(key: String, value: String)]?)],
        executor: MoveExecutor, progress: ProgressCounter?,
        casts: [String: ElementCast] = [:], records: StagingRecords? = nil,
        moves: (SafetensorsTensorInfo, inout ConversionPlan) throws -> ElementTransform?
    ) throws -> [ChecksumManifest.Entry] {
        // The shards this process does not write: kept ones, and in a job the other ranks' shares.
        let kept = try records?.skipped(names: shards.map(\.name), bytes: shards.map { $0.tensors.reduce(Int64(0)) { $0 + $1.byteCount } },
                                         progress: progress) ?? []
        let writers = try shards.enumerated().map { index, shard in
            kept.contains(index) ? nil : try SafetensorsWriter(path: shard.path, tensors: shard.tensors, metadata: shard.metadata)
        }
        var plan = ConversionPlan()
        var slots: [(shard: Int, tensor: Int)] = []
        var firstSlot: [Int] = []
        do {
            for (shard, writer) in writers.enumerated() {
                firstSlot.append(slots.count)
                guard let writer else { continue }
                for (index, tensor) in writer.layout.tensors.enumerated() {
                    // A cast tensor's moves read source-dtype bytes; the executor converts them.
                    let transform = try moves(tensor, &plan) ?? casts[tensor.name].map(ElementTransform.cast)
                    plan.endGroup(output: shard, offset: writer.layout.dataStart + tensor.dataOffsets.offset, transform: transform)
                    slots.append((shard, index))
                }
            }
            firstSlot.append(slots.count)
            let digests = DigestTable(count: plan.groupCount)
            let allSlots = slots, bounds = firstSlot, names = shards.map(\.name)
            @Sendable func entry(_ slot: Int, _ digest: UInt64) -> ChecksumManifest.Entry {
                let writer = writers[allSlots[slot].shard]!
                let tensor = writer.layout.tensors[allSlots[slot].tensor]
                return ChecksumManifest.Entry(
                    name: tensor.name, file: names[allSlots[slot].shard],
                    range: ByteRange(offset: writer.layout.dataStart + tensor.dataOffsets.offset, count: tensor.byteCount),
                    xxh3: digest, dtype: tensor.dtype, shape: tensor.shape)
            }
            var sinks: [any ByteSink] = []
            for writer in writers {
                if let writer { sinks.append(writer) } else { sinks.append(KeptFileSink(name: "a kept shard")) }
            }
            let observer: @Sendable (Int) throws -> (any StreamObserver)? = { group in
                StreamChecksums { xxh3, _, _ in digests.set(group, xxh3) }
            }
            let done: @Sendable (Int) throws -> Void = { shard in
                try writers[shard]!.finish()
                let entries = (bounds[shard]..<bounds[shard + 1]).map { entry($0, digests.get($0)!) }
                try records?.record(names[shard], entries: entries)
            }
            try executor.run(plan, sinks: sinks, observer: observer, progress: progress, skipping: kept, outputDone: done)
            try records?.completeShare(progress: progress)
            let digestsBySlot = digests.all
            var entries: [ChecksumManifest.Entry] = []
            let keptRecords = records?.kept ?? [:]
            for shard in shards.indices {
                if let record = keptRecords[shards[shard].name] {
                    entries += record.entries
                } else {
                    entries += (bounds[shard]..<bounds[shard + 1]).map { entry($0, digestsBySlot[$0]) }
                }
            }
            return entries
        } catch {
            writers.forEach { $0?.discard() }
            throw error
        }
    }

    /// Writes a torch_dist directory from `layout`, group `i` of `plan` filling tensor item `i`,
    /// and the checksum manifest at `manifestPath`: one entry per chunk, named `key[offsets]`,
    /// with files relative to the save directory, streamed (nothing per chunk is held but its
    /// digest). Each data file is completed as soon as its items are written and, with
    /// `records`, recorded; files `records` keeps are not written, their entries come from their
    /// records.
    static func writeTorchDist(
        directory: String, iterationName: String, layout: TorchDistLayout, plan: ConversionPlan, executor: MoveExecutor,
        progress: ProgressCounter?, records: StagingRecords? = nil
    ) throws -> ChecksumManifest.Streamed {
        precondition(plan.groupCount == layout.tensorItemCount, "a plan of \(plan.groupCount) groups for \(layout.tensorItemCount) chunks")
        let names = layout.fileNames.map { "\(iterationName)/\($0)" }
        var fileBytes = [Int64](repeating: 0, count: names.count)
        for group in 0..<plan.groupCount { fileBytes[plan.output(group: group)] += plan.outputByteCount(group: group) }
        let kept = try records?.skipped(names: names, bytes: fileBytes, progress: progress) ?? []
        let writer = try TorchDistWriter(directory: directory, layout: layout, keeping: kept)
        let digests = DigestTable(count: layout.tensorItemCount)
        @Sendable func entry(_ item: Int, _ digest: UInt64) -> ChecksumManifest.Entry {
            let chunk = layout.chunk(item: item)
            return ChecksumManifest.Entry(name: "\(layout.key(item: item))\(chunk.offsets)", file: names[layout.file(item: item)],
                                          range: ByteRange(offset: layout.dataOffset(item: item), count: layout.byteCount(item: item)),
                                          xxh3: digest, dtype: layout.dtype(item: item), shape: chunk.sizes.array)
        }
        do {
            try executor.run(plan, sinks: writer.sinks, observer: { item in
                StreamChecksums(crc: true) { xxh3, crc, count in
                    try writer.recordData(item: item, at: 0, count: count, crc: crc)
                    digests.set(item, xxh3)
                }
            }, progress: progress, skipping: kept, outputDone: { file in
                try writer.finishFile(file)
                guard let records else { return }
                let items = layout.tensorItemIndices.filter { layout.file(item: $0) == file }
                try records.record(names[file], count: items.count, entry: { entry(items[$0], digests.get(items[$0])!) })
            })
            // In a job, rank 0 waits here for the other ranks' files; the others end here.
            try records?.completeShare(progress: progress)
            try writer.finish()
        } catch {
            writer.discard()
            throw error
        }
        // A kept file's entries, by name, from its record.
        var recorded: [String: ChecksumManifest.Entry] = [:]
        let keptRecords = records?.kept ?? [:]
        for file in kept { for item in keptRecords[names[file]]!.entries { recorded[item.name] = item } }
        let keptEntries = recorded
        return ChecksumManifest.Streamed(kind: .megatronTorchDist, count: layout.tensorItemCount) { item in
            guard kept.contains(layout.file(item: item)) else { return entry(item, digests.get(item)!) }
            let name = "\(layout.key(item: item))\(layout.chunk(item: item).offsets)"
            guard let recordedEntry = keptEntries[name] else { preconditionFailure("the record of \(names[layout.file(item: item)]) lacks \(name)") }
            return recordedEntry
        }
    }
}

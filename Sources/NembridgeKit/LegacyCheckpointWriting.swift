import Execution
import Foundation
import MegatronCheckpoint
import TensorCore
import TorchPickle
import WeightMapping

/// A legacy (`--ckpt-format torch`) checkpoint to write in a target layout: one
/// `mp_rank_…/model_optim_rng.pt` per tensor/pipeline/expert rank with that rank's local state
/// dict, its tensors filled box by box from any source (HF files at import, a checkpoint at
/// reshard). Only model weights and the run's arguments are written: no optimizer, RNG or
/// scheduler state, so Megatron-LM loads it as a release (or with --no-load-optim --no-load-rng).
public struct LegacyCheckpointPlan: Sendable {
    public let layout: LegacyLayout
    public let files: [LegacyRankFilePlan]
    /// The moves: one group per tensor, file by file, output = the file's index.
    public let plan: ConversionPlan

    /// - Parameters:
    ///   - arguments: the `args` Namespace; its parallel sizes and format are set to the layout's.
    ///   - dtype: the stored dtype of a global key.
    ///   - fill: appends to the plan the moves that fill one box of a global key, in data order
    ///     (`wholeTensor`: the box is all of the tensor, so its group may be interleaved).
    ///   - cast: the conversion a global key's moves go through (`import --dtype`, or
    ///     dequantization): the file holds its output elements (`dtype` gives their dtype).
    ///   - vocabDivisor: Megatron-LM's `make_vocab_size_divisible_by`: the vocabulary is padded
    ///     for the target's tensor-parallel size as Megatron-LM builds that model.
    public init(mapping: MappingPlan, sizes: ParallelSizes, spec: MegatronSpec, arguments: PickleValue, iteration: Int,
                vocabDivisor: Int, dtype: (String) throws -> DType, cast: (String) -> ElementTransform? = { _ in nil },
                fill: (LegacyLayout.Piece, _ wholeTensor: Bool, inout ConversionPlan) throws -> Void) throws {
        let renames = mapping.model.table.stateDictRenames[spec] ?? []
        layout = try LegacyLayout(mapping: mapping, sizes: sizes, expertNaming: spec == .local ? .sequential : .grouped,
                                  moduleRenames: renames, vocabDivisor: vocabDivisor)
        var sizeFields: [(name: String, value: PickleValue)] = [
            ("tensor_model_parallel_size", .int(Int64(sizes.tensor))), ("pipeline_model_parallel_size", .int(Int64(sizes.pipeline))),
            ("expert_model_parallel_size", .int(Int64(sizes.expert))), ("ckpt_format", .string("torch")),
        ] + sizes.pipelineSplitArguments(for: arguments)
        if sizes.expertTensor != sizes.tensor || arguments["expert_tensor_parallel_size"] != nil {
            sizeFields.append(("expert_tensor_parallel_size", .int(Int64(sizes.expertTensor))))
        }
        if let padded = layout.paddedVocabSize {
            sizeFields.append(("padded_vocab_size", .int(Int64(padded))))
            sizeFields.append(("make_vocab_size_divisible_by", .int(Int64(vocabDivisor))))
        }
        let args = arguments.settingNamespaceFields(sizeFields)
        var files: [LegacyRankFilePlan] = []
        var conversion = ConversionPlan()
        for rank in layout.ranks {
            let entries = layout.entries[rank] ?? []
            var model: [(name: String, entry: LegacyRankFilePlan.ModelEntry)] = []
            for entry in entries {
                switch entry.content {
                case .extraState: model.append((entry.name, .none))
                case .tensor(let shape, let pieces):
                    let types = Set(try pieces.map { try dtype($0.key) })
                    guard types.count == 1, let type = types.first else {
                        throw MappingError.dtypeConflict(tensor: entry.name, dtypes: types.sorted { $0.rawValue < $1.rawValue },
                                                         reason: "the parts of one rank file entry")
                    }
                    model.append((entry.name, .tensor(dtype: type, shape: shape)))
                }
            }
            let plan = try LegacyRankFilePlan(rank: rank, pipelineSize: sizes.pipeline, expertSize: sizes.expert, topLevel: [
                ("args", args), ("checkpoint_version", .float(3.0)), ("iteration", .int(Int64(iteration))), ("model", nil),
                ("num_floating_point_operations_so_far", .int(0)),
            ], model: model)
            var tensorIndex = 0
            for entry in entries {
                guard case .tensor(let shape, let pieces) = entry.content else { continue }
                let type = plan.tensors[tensorIndex].dtype
                // One group per entry, so one cast for all of its pieces.
                let pieceCasts = Set(pieces.filter { !$0.isPadding }.map { cast($0.key) })
                guard pieceCasts.count <= 1 else {
                    throw MappingError.dtypeConflict(tensor: entry.name, dtypes: [type],
                                                     reason: "the parts of one rank file entry are cast differently (\(pieceCasts.map { $0?.description ?? "none" }.sorted()))")
                }
                let entryCast = pieceCasts.first ?? nil
                for piece in pieces {
                    if piece.isPadding {
                        // Padding rows stay a hole of the fresh file, which reads as zeros.
                        let written = Int64(ShapeArithmetic.byteCount(piece.sizes, type) ?? 0)
                        let ratio = entryCast?.outputBytes(1 << 20) ?? (1 << 20)  // output bytes per MiB of source
                        conversion.append(.zeros(written * (1 << 20) / ratio))
                    } else {
                        try fill(piece, pieces.count == 1, &conversion)
                    }
                }
                let range = plan.tensorDataRange(tensorIndex)
                conversion.endGroup(output: files.count, offset: range.offset, transform: entryCast)
                precondition(conversion.outputByteCount(group: conversion.groupCount - 1) == range.count,
                             "pieces of \(entry.name) \(shape) do not fill it")
                tensorIndex += 1
            }
            files.append(plan)
        }
        self.files = files
        self.plan = conversion
    }

    public var totalBytes: Int64 { files.reduce(0) { $0 + $1.tensorBytes } }

    /// Writes every rank file into `iterationPath` (each tensor one group of moves, checksummed
    /// as it is written; each file published, and with `records` recorded, as soon as its tensors
    /// are). Returns one manifest entry per tensor, files relative to the save directory; files
    /// `records` keeps are not written and their entries come from their records.
    public func write(iterationPath: String, iterationName: String, executor: MoveExecutor, progress: ProgressCounter?,
                      records: StagingRecords? = nil) throws -> [ChecksumManifest.Entry] {
        let names = files.map { "\(iterationName)/\($0.relativePath)" }
        let kept = try records?.skipped(names: names, bytes: files.map(\.tensorBytes), progress: progress) ?? []
        let writer = try LegacyTorchWriter(directory: iterationPath, plans: files, keeping: kept)
        var indices: [(file: Int, tensor: Int)] = []
        var bounds: [Int] = []
        for (file, plan) in files.enumerated() {
            bounds.append(indices.count)
            for tensor in plan.tensors.indices { indices.append((file, tensor)) }
        }
        bounds.append(indices.count)
        let digests = DigestTable(count: indices.count)
        precondition(indices.count == plan.groupCount)
        let slots = indices, fileBounds = bounds, files = self.files, sizes = layout.sizes
        @Sendable func entry(_ slot: Int, _ digest: UInt64) -> ChecksumManifest.Entry {
            let plan = files[slots[slot].file]
            let tensor = plan.tensors[slots[slot].tensor]
            return ChecksumManifest.Entry(name: "\(plan.rank.directoryName(pipelineSize: sizes.pipeline, expertSize: sizes.expert)):\(tensor.name)",
                                          file: names[slots[slot].file], range: plan.tensorDataRange(slots[slot].tensor),
                                          xxh3: digest, dtype: tensor.dtype, shape: tensor.shape)
        }
        do {
            try executor.run(plan, sinks: writer.sinks, observer: { slot in
                StreamChecksums(crc: true) { xxh3, crc, count in
                    try writer.recordData(file: slots[slot].file, tensor: slots[slot].tensor, at: 0, count: count, crc: crc)
                    digests.set(slot, xxh3)
                }
            }, progress: progress, skipping: kept, outputDone: { file in
                try writer.finishFile(file)
                let first = fileBounds[file]
                try records?.record(names[file], count: fileBounds[file + 1] - first, entry: { entry(first + $0, digests.get(first + $0)!) })
            })
            // In a job, rank 0 waits here for the other ranks' files; the others end here.
            try records?.completeShare(progress: progress)
            try writer.finish()
        } catch {
            writer.discard()
            throw error
        }
        var entries: [ChecksumManifest.Entry] = []
        let keptRecords = records?.kept ?? [:]
        for file in files.indices {
            if let record = keptRecords[names[file]] {
                entries += record.entries
            } else {
                entries += (fileBounds[file]..<fileBounds[file + 1]).map { entry($0, digests.get($0)!) }
            }
        }
        return entries
    }

    public func planText() -> String { PlanTextOutput.collect(writePlanText) }

    /// Each rank file with its tensors, the global boxes that fill them and their bytes.
    public func writePlanText(to out: PlanTextOutput) {
        var lines = ["legacy layout: \(layout.sizes); stages hold layers \(layout.stageLayers.map { "\($0.lowerBound)..<\($0.upperBound)" }.joined(separator: ", "))"]
        for (plan, rank) in zip(files, layout.ranks) {
            lines.append("  \(plan.relativePath) (\(rank)): \(plan.tensors.count) tensors, \(formatBytes(plan.tensorBytes)), file \(formatBytes(plan.fileSize))")
            var index = 0
            for entry in layout.entries[rank] ?? [] {
                switch entry.content {
                case .extraState:
                    lines.append("    \(entry.name) = None")
                case .tensor(let shape, let pieces):
                    let boxes = pieces.map { $0.isPadding ? "zeros \($0.sizes)" : "\($0.key)\($0.offsets)+\($0.sizes)" }.joined(separator: " ; ")
                    lines.append("    \(entry.name) \(formatShape(shape)) \(plan.tensors[index].dtype) <- \(boxes)")
                    index += 1
                }
            }
            for line in lines { out.line(line) }
            lines.removeAll()
        }
        for line in lines { out.line(line) }
        out.line(self.plan.summary)
    }
}

extension LegacyRankFilePlan {
    public var tensorBytes: Int64 { tensors.indices.reduce(0) { $0 + tensorDataRange($1).count } }
}

/// The Megatron checkpoint formats nembridge writes (`--ckpt-format`, as Megatron-LM spells them).
public enum MegatronOutputFormat: String, Sendable, CaseIterable {
    case torchDist = "torch_dist"
    /// The legacy per-rank files, `mp_rank_…/model_optim_rng.pt`.
    case torch
}

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
    /// Per file, per tensor: the moves that fill it, destinations absolute in the file.
    let fills: [[[MoveGroup.Step]]]

    /// - Parameters:
    ///   - arguments: the `args` Namespace; its parallel sizes and format are set to the layout's.
    ///   - dtype: the stored dtype of a global key.
    ///   - steps: the moves that fill one box of a global key, destinations counted from `base`.
    ///   - vocabDivisor: Megatron-LM's `make_vocab_size_divisible_by`: the vocabulary is padded
    ///     for the target's tensor-parallel size as Megatron-LM builds that model.
    public init(mapping: MappingPlan, sizes: ParallelSizes, spec: MegatronSpec, arguments: PickleValue, iteration: Int,
                vocabDivisor: Int, dtype: (String) throws -> DType,
                steps: (LegacyLayout.Piece, Int64) throws -> [MoveGroup.Step]) throws {
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
        var fills: [[[MoveGroup.Step]]] = []
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
            var fileFills: [[MoveGroup.Step]] = []
            var tensorIndex = 0
            for entry in entries {
                guard case .tensor(let shape, let pieces) = entry.content else { continue }
                var base = plan.tensorDataRange(tensorIndex).offset
                var moves: [MoveGroup.Step] = []
                let type = plan.tensors[tensorIndex].dtype
                for piece in pieces {
                    let count = Int64(ShapeArithmetic.byteCount(piece.sizes, type) ?? 0)
                    // Padding rows stay a hole of the fresh file, which reads as zeros.
                    moves.append(contentsOf: piece.isPadding ? [.zeros(count: count)] : try steps(piece, base))
                    base += count
                }
                precondition(base == plan.tensorDataRange(tensorIndex).end, "pieces of \(entry.name) \(shape) do not fill it")
                fileFills.append(moves)
                tensorIndex += 1
            }
            files.append(plan)
            fills.append(fileFills)
        }
        self.files = files
        self.fills = fills
    }

    public var totalBytes: Int64 { files.reduce(0) { $0 + $1.tensorBytes } }

    /// Every file the moves read, for the check that none changed before publishing.
    public var sourceFiles: [ReadOnlyFile] {
        fills.joined().joined().compactMap { step in
            switch step {
            case .copy(let source, _, _): source
            case .strided(let source, _, _, _, _, _, _): source
            case .zeros: nil
            }
        }
    }

    /// Writes every rank file into `iterationPath` (each tensor one group of moves, checksummed
    /// as it is written). Returns one manifest entry per tensor, files relative to the save directory.
    public func write(iterationPath: String, iterationName: String, executor: MoveExecutor, progress: ProgressCounter?) throws -> [ChecksumManifest.Entry] {
        let writer = try LegacyTorchWriter(directory: iterationPath, plans: files)
        var indices: [(file: Int, tensor: Int)] = []
        for (file, plan) in files.enumerated() { for tensor in plan.tensors.indices { indices.append((file, tensor)) } }
        let digests = DigestTable(count: indices.count)
        do {
            var groups: [MoveGroup] = []
            for (slot, (file, tensor)) in indices.enumerated() {
                let observer = StreamChecksums(crc: true) { xxh3, crc, count in
                    try writer.recordData(file: file, tensor: tensor, at: 0, count: count, crc: crc)
                    digests.set(slot, xxh3)
                }
                groups.append(MoveGroup(sink: writer.files[file], steps: fills[file][tensor], observer: observer, lane: file))
            }
            try executor.run(groups: groups, progress: progress)
            try writer.finish()
        } catch {
            writer.discard()
            throw error
        }
        return zip(indices, digests.all).map { slot, digest in
            let plan = files[slot.file]
            let tensor = plan.tensors[slot.tensor]
            return ChecksumManifest.Entry(name: "\(plan.rank.directoryName(pipelineSize: layout.sizes.pipeline, expertSize: layout.sizes.expert)):\(tensor.name)",
                                          file: "\(iterationName)/\(plan.relativePath)", range: plan.tensorDataRange(slot.tensor),
                                          xxh3: digest, dtype: tensor.dtype, shape: tensor.shape)
        }
    }

    /// Each rank file with its tensors, the global boxes that fill them and their bytes.
    public func planText() -> String {
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
        }
        return lines.joined(separator: "\n")
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

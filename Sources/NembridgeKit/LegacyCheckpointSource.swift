import Foundation
import MegatronCheckpoint
import Synchronization
import TensorCore
import TorchPickle
import WeightMapping

/// A legacy checkpoint seen as global tensors: each rank file's local entries placed, by the
/// mapping and the layout the files were written in, as chunks of the torch_dist keys. Reading a
/// box then works exactly as for a torch_dist checkpoint, so export and reshard need nothing else.
///
/// The layout comes from the files: tensor/pipeline/expert sizes from the rank directories, the
/// layers of each stage from the stage's layer numbers, the spec from `args.transformer_impl`
/// and the expert naming from the names. Every entry of every file must be placed (or be an
/// `_extra_state`); each global chunk is read from one rank (tensor rank 0 for replicated tensors).
public struct LegacyCheckpointSource: Sendable {
    public let checkpoint: LegacyTorchCheckpoint
    public let mapping: MappingPlan
    public let layout: LegacyLayout
    public let tensors: ChunkedTensorSet

    public init(checkpoint: LegacyTorchCheckpoint, model baseModel: ResolvedModel) throws {
        self.checkpoint = checkpoint
        let args = checkpoint.args
        let spec: MegatronSpec = args?["transformer_impl"]?.stringValue == "local" ? .local : .transformerEngine
        let model = spec == baseModel.spec ? baseModel
            : try ResolvedModel(table: baseModel.table, config: baseModel.config, configPath: baseModel.configPath, spec: spec)
        var byRank: [LegacyRank: LegacyRankFile] = [:]
        var tensorsByRank: [LegacyRank: [String: LegacyTensor]] = [:]
        for file in checkpoint.ranks {
            byRank[file.rank] = file
            for (name, value) in file.model { if case .tensor(let tensor) = value { tensorsByRank[file.rank, default: [:]][name] = tensor } }
        }
        // Counts in the args are pickle ints from the file: bounded before they size anything.
        func count(_ name: String, in range: ClosedRange<Int>) throws -> Int? {
            guard let value = args?[name], !value.isNone else { return nil }
            guard let number = value.intValue, range.contains(number) else {
                let shown = value.int64Value.map(String.init) ?? value.kindName
                throw LegacyLayoutError.unsupportedLayout(
                    reason: "\(MessageText.path(checkpoint.ranks.first?.path ?? checkpoint.directory)): args.\(name) is \(shown), not in \(range.lowerBound)...\(range.upperBound)")
            }
            return number
        }
        let sizes = ParallelSizes(tensor: checkpoint.tensorParallelSize, pipeline: checkpoint.pipelineParallelSize,
                                  expert: checkpoint.expertParallelSize,
                                  expertTensor: try count("expert_tensor_parallel_size", in: 1...Self.largestParallelSize) ?? checkpoint.tensorParallelSize)
        // Each stage's layers: the split the args describe (even, or first/last given), when the
        // layer numbers each stage's files hold fit it; else the layer numbers alone (a layer with
        // no tensors at all, a DeciLM no-op block, is invisible in the files).
        var observed: [Int] = []
        for stage in 0..<sizes.pipeline {
            let names = byRank[LegacyRank(tensor: 0, pipeline: stage, expert: 0)]?.model.map(\.name) ?? []
            // (A layer number beyond any model's is left to be reported as an unexpected entry.)
            observed.append(names.compactMap { name -> Int? in
                guard let prefix = model.table.megatronLayerPrefix, name.hasPrefix(prefix) else { return nil }
                return Int(name.dropFirst(prefix.count).prefix { $0 != "." }).flatMap { $0 < Self.largestLayerNumber ? $0 : nil }
            }.max().map { $0 + 1 } ?? 0)
        }
        var recorded = sizes
        recorded.firstStageLayers = try count("decoder_first_pipeline_num_layers", in: 0...max(0, model.layerCount))
        recorded.lastStageLayers = try count("decoder_last_pipeline_num_layers", in: 0...max(0, model.layerCount))
        var stageLayers: [Range<Int>] = []
        if let split = try? recorded.stageLayers(layerCount: model.layerCount, config: model.configPath, field: "num_layers"),
            zip(split, observed).allSatisfy({ $0.count >= $1 }) {
            stageLayers = split
        } else {
            var next = 0
            for count in observed {
                stageLayers.append(next..<(next + count))
                next += count
            }
            guard next == model.layerCount else {
                throw LegacyLayoutError.unsupportedLayout(
                    reason: "\(checkpoint.directory): the stages hold \(observed) layers, \(next) in all; the config has \(model.layerCount)")
            }
        }
        let allNames = checkpoint.ranks.flatMap { $0.model.map(\.name) }
        let sequential = model.table.legacyExpertNames.map { "." + $0.sequential }
        let naming: LegacyLayout.ExpertNaming = sequential.map { marker in allNames.contains { $0.contains(marker) } } == true ? .sequential : .grouped
        let renames = model.table.stateDictRenames[spec] ?? []
        let expertCount = model.table.expertCountArgument.flatMap { model.argument($0)?.intValue }
        let namer = LocalNamer(table: model.table, stageLayers: stageLayers, expertsPerRank: expertCount.map { $0 / max(1, sizes.expert) },
                               expertNaming: naming, renames: renames)
        let localShapes = tensorsByRank
        let paths = Dictionary(checkpoint.ranks.map { ($0.rank, $0.path) }, uniquingKeysWith: { first, _ in first })
        // A name the layout cannot place is an error of its own, not a missing tensor: the
        // planner's callback cannot throw, so the first such error is kept and thrown in place of
        // the planner's.
        let namingError = Mutex<(any Error)?>(nil)
        do {
            mapping = try MappingPlan(model: model, direction: .fromLocalShards(
                localShape: { name in
                    let placed: (name: String, stage: Int, expertRank: Int?)
                    do {
                        placed = try namer.local(name)
                    } catch {
                        namingError.withLock { $0 = $0 ?? error }
                        return nil
                    }
                    return localShapes[LegacyRank(tensor: 0, pipeline: placed.stage, expert: placed.expertRank ?? 0)]?[placed.name]?.shape
                }, tensorParallel: sizes.tensor, expertTensorParallel: sizes.expertTensor))
        } catch let error as MappingError {
            if let naming = namingError.withLock({ $0 }) { throw naming }
            // Global shapes come from the tensor-rank-0 files: name the file and entry the message is about.
            // (Names the layout has no local name for, such as stacked keys, name no file.)
            let places = error.tensorNames.filter { model.table.makesMegatronName($0, spec: spec) }.compactMap { name -> String? in
                let local: String, stage: Int, expertRank: Int?
                do { (local, stage, expertRank) = try namer.local(name) } catch { return nil }
                guard let path = paths[LegacyRank(tensor: 0, pipeline: stage, expert: expertRank ?? 0)] else { return nil }
                return "`\(MessageText.quoted(local))` in \(MessageText.path(path))"
            }
            throw LegacyLayoutError.inconsistentShards(directory: checkpoint.directory, reason: error.description, entries: places)
        }
        layout = try LegacyLayout(mapping: mapping, sizes: sizes, stageLayers: stageLayers, expertNaming: naming, moduleRenames: renames)

        // Place every primary entry's rows as chunks of their keys.
        let specs = Dictionary(mapping.megatronTensors.map { ($0.key, $0) }, uniquingKeysWith: { first, _ in first })
        var chunks: [String: [ChunkData]] = [:]
        var dtypes: [String: DType] = [:]
        for file in checkpoint.ranks {
            let expected = layout.entries[file.rank] ?? []
            let expectedNames = Set(expected.map(\.name))
            let unexpected = file.model.map(\.name).filter { !expectedNames.contains($0) && !$0.hasSuffix("._extra_state") }
            if !unexpected.isEmpty { throw LegacyLayoutError.unexpectedEntries(file: file.path, names: unexpected) }
            let present = tensorsByRank[file.rank] ?? [:]
            var missing: [String] = []
            for entry in expected {
                guard case .tensor(let shape, let pieces) = entry.content else { continue }
                guard let tensor = present[entry.name] else { missing.append(entry.name); continue }
                guard tensor.shape == shape else {
                    throw LegacyLayoutError.shapeMismatch(file: file.path, name: entry.name, expected: shape, actual: tensor.shape)
                }
                guard entry.isPrimary else { continue }
                guard let elementSize = TorchDistCheckpoint.torchElementSize(tensor.dtype) else {
                    throw MegatronCheckpointError.unsupportedDType(key: entry.name, dtype: tensor.dtype.safetensorsName)
                }
                let rowBytes = Int64(shape.dropFirst().reduce(1, *) * elementSize)
                var row: Int64 = 0
                for piece in pieces {
                    let prefixCount = specs[piece.key]?.prefix.count ?? 0
                    let rows = Int64(piece.sizes.count > prefixCount ? piece.sizes[prefixCount] : 1)
                    let data = ChunkData(file: file.file, dataFile: file.path, key: piece.key,
                                         chunk: DCPChunk(offsets: piece.offsets, sizes: piece.sizes), dtype: tensor.dtype,
                                         elementSize: elementSize, runs: Self.slice(tensor.runs, from: row * rowBytes, count: rows * rowBytes))
                    if let earlier = dtypes[piece.key], earlier != tensor.dtype {
                        throw MegatronCheckpointError.dtypeMismatch(file: file.path, key: entry.name, expected: earlier, actual: tensor.dtype)
                    }
                    dtypes[piece.key] = tensor.dtype
                    chunks[piece.key, default: []].append(data)
                    row += rows
                }
            }
            if !missing.isEmpty { throw LegacyLayoutError.missingEntries(file: file.path, names: missing) }
        }
        var seen = Set<String>()
        var tensors: [(key: String, dtype: DType, size: [Int], chunks: [ChunkData])] = []
        for spec in mapping.megatronTensors where seen.insert(spec.key).inserted {
            guard let dtype = dtypes[spec.key] else { continue }
            tensors.append((spec.key, dtype, spec.globalShape, chunks[spec.key] ?? []))
        }
        self.tensors = try ChunkedTensorSet(path: checkpoint.directory, tensors: tensors)
        // Every box of every key must be covered by the placed chunks (a missing rank would leave holes).
        for tensor in tensors {
            let covered = tensor.chunks.reduce(0) { $0 + $1.chunk.sizes.reduce(1, *) }
            let total = tensor.size.reduce(1, *)
            guard covered == total else {
                throw MegatronCheckpointError.boxNotCovered(file: checkpoint.directory, key: tensor.key, offsets: tensor.size.map { _ in 0 },
                                                           sizes: tensor.size, shape: tensor.size, missingElements: total - covered)
            }
        }
    }

    /// Bounds on counts read from rank files, far beyond any real model's: what keeps the
    /// arithmetic on them from overflowing.
    static let largestParallelSize = 1 << 16
    static let largestLayerNumber = 1 << 20

    /// The runs covering bytes `[start, start + count)` of a tensor laid out by `runs`, rebased to 0.
    static func slice(_ runs: [ChunkData.Run], from start: Int64, count: Int64) -> [ChunkData.Run] {
        var result: [ChunkData.Run] = []
        for run in runs {
            let low = max(start, run.destinationOffset), high = min(start + count, run.destinationOffset + run.source.count)
            guard low < high else { continue }
            result.append(ChunkData.Run(source: ByteRange(offset: run.source.offset + (low - run.destinationOffset), count: high - low),
                                        destinationOffset: low - start))
        }
        return result
    }
}

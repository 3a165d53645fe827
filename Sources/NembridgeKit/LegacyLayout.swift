import Foundation
import MegatronCheckpoint
import TensorCore
import TorchPickle
import WeightMapping

/// Tensor-, pipeline-, expert- and expert-tensor-parallel sizes of a Megatron layout.
public struct ParallelSizes: Sendable, Hashable, CustomStringConvertible {
    public var tensor: Int
    public var pipeline: Int
    public var expert: Int
    /// Megatron-Core's default is the tensor-parallel size.
    public var expertTensor: Int
    /// Layers of the first / last pipeline stage when they differ from the even split
    /// (Megatron-LM's `--decoder-first-pipeline-num-layers` / `--decoder-last-pipeline-num-layers`).
    public var firstStageLayers: Int?
    public var lastStageLayers: Int?

    public init(tensor: Int = 1, pipeline: Int = 1, expert: Int = 1, expertTensor: Int? = nil,
                firstStageLayers: Int? = nil, lastStageLayers: Int? = nil) {
        self.tensor = tensor
        self.pipeline = pipeline
        self.expert = expert
        self.expertTensor = expertTensor ?? tensor
        self.firstStageLayers = firstStageLayers
        self.lastStageLayers = lastStageLayers
    }

    public var description: String { "tp \(tensor), pp \(pipeline), ep \(expert), etp \(expertTensor)" }

    /// The global layers of each pipeline stage, as Megatron-Core assigns them: the first and last
    /// stage get their given counts, the other stages split the remaining layers evenly (all
    /// stages, when neither is given). Throws the rule that is broken, naming `config`.
    public func stageLayers(layerCount: Int, config: String, field: String) throws -> [Range<Int>] {
        func fail(_ reason: String) -> MappingError { .invalidConfigValue(config: config, field: field, reason: reason) }
        guard pipeline >= 1 else { throw fail("the pipeline-parallel size must be >= 1, not \(pipeline)") }
        if (firstStageLayers != nil || lastStageLayers != nil) && pipeline == 1 {
            throw fail("first/last pipeline-stage layer counts need a pipeline-parallel size > 1")
        }
        let first = firstStageLayers ?? 0, last = lastStageLayers ?? 0
        guard first >= 0, last >= 0, first + last <= layerCount else {
            throw fail("\(first) + \(last) layers on the first and last stage exceed the model's \(layerCount)")
        }
        let middleStages = pipeline - (firstStageLayers == nil ? 0 : 1) - (lastStageLayers == nil ? 0 : 1)
        let middleLayers = layerCount - first - last
        if middleStages == 0 {
            guard middleLayers == 0 else {
                throw fail("the first and last stage hold \(first + last) of \(layerCount) layers and no stage is left for the rest")
            }
        } else {
            guard middleLayers % middleStages == 0 else {
                let what = firstStageLayers == nil && lastStageLayers == nil ? "\(layerCount) layers" : "the \(middleLayers) layers between the first and last stage"
                throw fail("\(what) cannot be split evenly over \(middleStages) pipeline stages (Megatron-Core requires it)")
            }
        }
        let perMiddle = middleStages == 0 ? 0 : middleLayers / middleStages
        var ranges: [Range<Int>] = []
        var next = 0
        for stage in 0..<pipeline {
            let count = stage == 0 && firstStageLayers != nil ? first
                : (stage == pipeline - 1 && lastStageLayers != nil ? last : perMiddle)
            ranges.append(next..<(next + count))
            next += count
        }
        return ranges
    }

    /// The Megatron-LM arguments describing this split, to set in `arguments`: the counts given,
    /// and `None` where `arguments` records a count this split does not have (args without them
    /// are left as they are).
    func pipelineSplitArguments(for arguments: PickleValue) -> [(name: String, value: PickleValue)] {
        [("decoder_first_pipeline_num_layers", firstStageLayers), ("decoder_last_pipeline_num_layers", lastStageLayers)].compactMap { name, count in
            if let count { return (name, .int(Int64(count))) }
            if let recorded = arguments[name], !recorded.isNone { return (name, .none) }
            return nil
        }
    }
}

public enum LegacyLayoutError: Error, Equatable, CustomStringConvertible {
    case unsupportedLayout(reason: String)
    /// A rank file's state dict does not hold what the layout expects there.
    case unexpectedEntries(file: String, names: [String])
    case missingEntries(file: String, names: [String])
    case shapeMismatch(file: String, name: String, expected: [Int], actual: [Int])
    /// The shards' shapes do not fit the model (the mapping's message, and the entries it is about).
    case inconsistentShards(directory: String, reason: String, entries: [String])

    public var description: String {
        // Entry names come from the rank files: quoted, one line.
        let p = { (path: String) in MessageText.path(path) }, q = { (text: String) in MessageText.quoted(text) }
        let r = { (text: String) in MessageText.quoted(text, limit: nil) }
        return switch self {
        case .unsupportedLayout(let reason): "cannot use this layout: \(r(reason))"
        case .unexpectedEntries(let file, let names):
            "\(p(file)): \(names.count) model entr\(names.count == 1 ? "y" : "ies") the mapping does not place: \(names.prefix(8).map(q).joined(separator: ", "))\(names.count > 8 ? ", …" : "")"
        case .missingEntries(let file, let names):
            "\(p(file)): \(names.count) model entr\(names.count == 1 ? "y is" : "ies are") missing: \(names.prefix(8).map(q).joined(separator: ", "))\(names.count > 8 ? ", …" : "")"
        case .shapeMismatch(let file, let name, let expected, let actual):
            "\(p(file)): `\(q(name))` has shape \(actual), the layout expects \(expected) for this rank"
        case .inconsistentShards(let directory, let reason, let entries):
            "\(p(directory)): the rank files' tensors do not fit the model: \(r(reason))" + (entries.isEmpty ? "" : " (read as \(r(entries.joined(separator: ", "))))")
        }
    }
}

/// What each rank of a legacy (`--ckpt-format torch`) checkpoint holds, in terms of the global
/// checkpoint keys the mapping produces: every local state-dict entry is one or more boxes of
/// global tensors, concatenated along its first axis (a tensor-parallel shard is one box; the
/// SwiGLU `[W_r; V_r]` is two; Mamba's `in_proj` is one per component). Layer numbers are local
/// to the pipeline stage, expert ids local to the expert-parallel rank, as
/// `state_dict_for_save_checkpoint()` names them.
public struct LegacyLayout: Sendable {
    /// One box of a global tensor: `key` at `offsets` with `sizes` (prepended axes included), or
    /// zero rows of that shape (`isPadding`: vocabulary rows the target's padding adds beyond the key).
    public struct Piece: Sendable, Hashable {
        public let key: String
        public let offsets: [Int]
        public let sizes: [Int]
        public var isPadding = false
    }

    public struct Entry: Sendable {
        public enum Content: Sendable {
            /// Local shape and the boxes that fill it, in row order.
            case tensor(shape: [Int], pieces: [Piece])
            /// An `_extra_state` entry (saved as `None`).
            case extraState
        }

        public let name: String
        public let content: Content
        /// Whether this rank's copy is the one read when converting from the layout: a tensor
        /// held whole by every tensor-parallel rank (or every expert-parallel rank) is read from
        /// rank 0 only; the tied output layer of the last stage is a copy of the embedding.
        public let isPrimary: Bool
    }

    public let sizes: ParallelSizes
    /// Rows of the vocabulary-parallel tensors: the vocabulary padded as Megatron-LM pads it for
    /// the target's tensor-parallel size (nil without vocabulary-parallel tensors).
    public let paddedVocabSize: Int?
    /// Global layer numbers of each pipeline stage.
    public let stageLayers: [Range<Int>]
    public let ranks: [LegacyRank]
    public let entries: [LegacyRank: [Entry]]

    /// How experts are named: Transformer Engine's grouped linear (`linear_fc1.weight<k>`), or
    /// the local spec's `SequentialMLP` (`local_experts.<k>.linear_fc1.weight`).
    public enum ExpertNaming: Sendable { case grouped, sequential }

    /// - Parameters:
    ///   - stageLayers: nil to split the layers over the pipeline stages as `sizes` says.
    ///   - moduleRenames: checkpoint-key fragment → state-dict fragment, for specs whose modules are
    ///     named differently from the checkpoint keys (the local spec's separate norms).
    ///   - vocabDivisor: Megatron-LM's `make_vocab_size_divisible_by`; vocabulary-parallel tensors
    ///     get `vocab_size` rounded up to a multiple of it × the tensor-parallel size (zero rows
    ///     added, or padding rows of the source dropped), as the target's model is built. Nil keeps
    ///     the source's rows.
    public init(mapping: MappingPlan, sizes: ParallelSizes, stageLayers: [Range<Int>]? = nil, expertNaming: ExpertNaming,
                moduleRenames: [(key: String, module: String)], vocabDivisor: Int? = nil) throws {
        self.sizes = sizes
        let layerCount = mapping.model.layerCount
        self.stageLayers = try stageLayers
            ?? sizes.stageLayers(layerCount: layerCount, config: mapping.model.configPath, field: mapping.model.table.layerCountArgument)
        guard sizes.expertTensor == sizes.tensor || sizes.expertTensor == 1 else {
            throw LegacyLayoutError.unsupportedLayout(
                reason: "legacy files are written per tensor-parallel rank; an expert tensor-parallel size of \(sizes.expertTensor) must be 1 or the tensor-parallel size \(sizes.tensor)")
        }
        var ranks: [LegacyRank] = []
        for pipeline in 0..<sizes.pipeline {
            for expert in 0..<sizes.expert {
                for tensor in 0..<sizes.tensor { ranks.append(LegacyRank(tensor: tensor, pipeline: pipeline, expert: expert)) }
            }
        }
        self.ranks = ranks
        let expertCount = mapping.megatronTensors.first(where: \.isRoutedExpert)?.prefixSizes.last
        let namer = LocalNamer(table: mapping.model.table, stageLayers: self.stageLayers,
                               expertsPerRank: expertCount.map { $0 / max(1, sizes.expert) }, expertNaming: expertNaming, renames: moduleRenames)
        var padded: Int?
        if let divisor = vocabDivisor, let vocab = mapping.model.argument("vocab_size")?.intValue,
            mapping.megatronTensors.contains(where: { $0.split == .vocab }) {
            let multiple = divisor * sizes.tensor
            padded = (vocab + multiple - 1) / multiple * multiple
        }
        paddedVocabSize = padded ?? mapping.megatronTensors.first { $0.split == .vocab }?.shape.first
        var entries: [LegacyRank: [Entry]] = [:]
        var named: [LegacyRank: [String: Int]] = [:]
        func add(_ rank: LegacyRank, _ name: String, _ shape: [Int], _ pieces: [Piece], primary: Bool) {
            if let index = named[rank]?[name], case .tensor(let earlier, let earlierPieces) = entries[rank]![index].content {
                // Components of one parameter (Mamba's in_proj z|x|B|C|dt) stack on the first axis.
                let rows = (earlier.first ?? 0) + (shape.first ?? 0)
                entries[rank]![index] = Entry(name: name, content: .tensor(shape: [rows] + shape.dropFirst(), pieces: earlierPieces + pieces),
                                              isPrimary: entries[rank]![index].isPrimary)
                return
            }
            named[rank, default: [:]][name] = entries[rank, default: []].count
            entries[rank, default: []].append(Entry(name: name, content: .tensor(shape: shape, pieces: pieces), isPrimary: primary))
        }
        var embeddingPieces: [Int: (shape: [Int], pieces: [Piece])] = [:]
        let output = mapping.model.table.outputLayer
        let tied = output.map { output in !mapping.megatronTensors.contains { $0.key == output.weight } } ?? false
        for spec in mapping.megatronTensors {
            let isExpert = spec.isRoutedExpert
            let parallel = isExpert ? sizes.expertTensor : sizes.tensor
            let (name, stage, expertRank) = try namer.local(spec.name)
            if spec.split == .vocab, let padded, padded != spec.shape.first {
                // Rows of the target's padded vocabulary: the key's rows, then zeros.
                guard padded % sizes.tensor == 0, spec.shape.count == 2 else {
                    throw MappingError.cannotSplit(what: "`\(spec.name)`", reason: "\(padded) vocabulary rows over \(sizes.tensor) ranks")
                }
                let rowsPerRank = padded / sizes.tensor, keyRows = spec.shape[0], columns = spec.shape[1]
                for rank in ranks where rank.pipeline == stage {
                    let low = rank.tensor * rowsPerRank, high = low + rowsPerRank
                    var pieces: [Piece] = []
                    if low < keyRows { pieces.append(Piece(key: spec.key, offsets: [low, 0], sizes: [min(high, keyRows) - low, columns])) }
                    if high > keyRows {
                        let first = max(low, keyRows)
                        pieces.append(Piece(key: spec.key, offsets: [first, 0], sizes: [high - first, columns], isPadding: true))
                    }
                    add(rank, name, [rowsPerRank, columns], pieces, primary: rank.expert == 0)
                    if spec.key == output?.tiedTo, rank.expert == 0 { embeddingPieces[rank.tensor] = ([rowsPerRank, columns], pieces) }
                }
                continue
            }
            let plans = try HFImport.chunkPlans(spec, parallel: parallel)
            for rank in ranks where rank.pipeline == stage && (expertRank == nil || rank.expert == expertRank) {
                let shardRank = isExpert && sizes.expertTensor == 1 ? 0 : rank.tensor
                let mine = plans.filter { $0.tensorParallelRank == nil || $0.tensorParallelRank == shardRank }
                let pieces = mine.map { Piece(key: spec.key, offsets: $0.offsets, sizes: $0.sizes) }
                let trailing = mine.first.map { Array($0.sizes.dropFirst(spec.prefix.count + 1)) } ?? []
                let rows = mine.reduce(0) { $0 + ($1.sizes.count > spec.prefix.count ? $1.sizes[spec.prefix.count] : 1) }
                let shape = spec.shape.isEmpty ? [] : [rows] + trailing
                let whole = mine.allSatisfy { $0.tensorParallelRank == nil } || (isExpert && sizes.expertTensor == 1)
                let primary = (!whole || rank.tensor == 0) && (expertRank != nil || rank.expert == 0)
                add(rank, name, shape, pieces, primary: primary)
                if spec.key == output?.tiedTo, rank.expert == 0 { embeddingPieces[rank.tensor] = (shape, pieces) }
            }
        }
        // Tied embeddings with more than one stage: the last stage keeps its own output layer,
        // a copy of the embedding (Megatron-Core synchronises them at start-up).
        if tied, let output, sizes.pipeline > 1, !embeddingPieces.isEmpty {
            for rank in ranks where rank.pipeline == sizes.pipeline - 1 {
                if let (shape, pieces) = embeddingPieces[rank.tensor] { add(rank, output.weight, shape, pieces, primary: false) }
            }
        }
        var extraModules = mapping.extraState.map(\.module)
        // The output layer is a column-parallel linear: its state dict has an `_extra_state` (dist
        // checkpoints do not ask for it).
        if !extraModules.isEmpty, let module = output?.module, !extraModules.contains(module) { extraModules.append(module) }
        for module in extraModules {
            let (name, stage, expertRank) = try namer.local(module + "._extra_state")
            let owner = String(name.dropLast("_extra_state".count))
            for rank in ranks where rank.pipeline == stage && (expertRank == nil || rank.expert == expertRank) {
                guard named[rank]?[name] == nil, let list = entries[rank] else { continue }
                // Right after the module's own tensors, where `state_dict()` puts it.
                guard let last = list.lastIndex(where: { $0.name.hasPrefix(owner) }) else { continue }
                entries[rank]!.insert(Entry(name: name, content: .extraState, isPrimary: false), at: last + 1)
                named[rank]![name] = last + 1
            }
        }
        self.entries = entries
    }

    /// The rank files' directory names use the pipeline/expert fields only when those sizes are > 1.
    public func relativePath(_ rank: LegacyRank) -> String {
        rank.directoryName(pipelineSize: sizes.pipeline, expertSize: sizes.expert) + "/" + LegacyTorchCheckpoint.fileName
    }
}

/// Global per-layer state-dict names → a rank's local names. Where a name carries its layer and
/// expert, and which modules sit on the first stage, come from the table.
struct LocalNamer: Sendable {
    let stageLayers: [Range<Int>]
    var expertsPerRank: Int?
    let expertNaming: LegacyLayout.ExpertNaming
    let renames: [(key: String, module: String)]
    let layerPrefix: String?
    let firstStageNames: Set<String>
    let expertNames: LegacyExpertNames?

    init(table: MappingTable, stageLayers: [Range<Int>], expertsPerRank: Int?, expertNaming: LegacyLayout.ExpertNaming,
         renames: [(key: String, module: String)]) {
        self.stageLayers = stageLayers
        self.expertsPerRank = expertsPerRank
        self.expertNaming = expertNaming
        self.renames = renames
        layerPrefix = table.megatronLayerPrefix
        firstStageNames = table.firstStageMegatronNames
        expertNames = table.legacyExpertNames
    }

    /// The local name, the pipeline stage that holds it, and the expert-parallel rank (experts only).
    func local(_ global: String) throws -> (name: String, stage: Int, expertRank: Int?) {
        var name = global
        // Split factories save one parameter as several keys (`in_proj.weight.z`): one local tensor.
        var parts = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        if parts.count >= 3, ["weight", "bias"].contains(parts[parts.count - 2]) {
            parts.removeLast()
            name = parts.joined(separator: ".")
        }
        var stage = firstStageNames.contains(global) ? 0 : stageLayers.count - 1
        if let layerPrefix, name.hasPrefix(layerPrefix) {
            let rest = name.dropFirst(layerPrefix.count)
            guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]) else {
                throw LegacyLayoutError.unsupportedLayout(reason: "`\(global)` has no layer number")
            }
            guard let owner = stageLayers.firstIndex(where: { $0.contains(layer) }) else {
                throw LegacyLayoutError.unsupportedLayout(reason: "layer \(layer) of `\(global)` is in no pipeline stage")
            }
            stage = owner
            name = layerPrefix + String(layer - stageLayers[owner].lowerBound) + String(rest[dot...])
        }
        var expertRank: Int?
        if let expertNames, let range = name.range(of: "." + expertNames.key) {
            let rest = name[range.upperBound...]
            guard let dot = rest.firstIndex(of: "."), let expert = Int(rest[..<dot]), let perRank = expertsPerRank, perRank > 0 else {
                throw LegacyLayoutError.unsupportedLayout(reason: "`\(global)` has no expert number")
            }
            expertRank = expert / perRank
            let localExpert = expert % perRank
            let tail = String(rest[rest.index(after: dot)...])
            switch expertNaming {
            case .sequential:
                name = String(name[..<range.lowerBound]) + "." + expertNames.sequential + "\(localExpert)." + tail
            case .grouped:
                // TEGroupedMLP: one grouped linear per layer, `weight<k>` per local expert, one `_extra_state`.
                if tail.hasSuffix("._extra_state") {
                    name = String(name[..<range.lowerBound]) + "." + expertNames.grouped + tail
                } else {
                    name = String(name[..<range.lowerBound]) + "." + expertNames.grouped + tail + "\(localExpert)"
                }
            }
        }
        for rename in renames where name.contains(rename.key) {
            name = name.replacingOccurrences(of: rename.key, with: rename.module)
        }
        return (name, stage, expertRank)
    }
}

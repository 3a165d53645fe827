import Execution
import Foundation
import MegatronCheckpoint
import SafetensorsFormat
import TensorCore
import TorchPickle
import TorchZip
import WeightMapping

/// `nembridge import`: a Hugging Face folder → a Megatron-Core torch_dist checkpoint, as a plan of
/// byte moves. Only headers and config are read while planning; tensor bytes go straight from the
/// safetensors files to their final offsets in the `.distcp` files.
public struct HFImport: Sendable {
    public struct Options: Sendable {
        /// Vocabulary rows are padded to a multiple of this × `tensorParallel` (Megatron-LM's
        /// `--make-vocab-size-divisible-by`, default 128).
        public var vocabDivisor = 128
        public var tensorParallel = 1
        /// Target expert-parallel size: the routed experts must divide evenly. Experts are stored
        /// one chunk each, so every EP rank reads whole items whatever the size.
        public var expertParallel = 1
        /// Expert tensor-parallel size (Megatron-Core's default: the tensor-parallel size).
        public var expertTensorParallel: Int?
        /// nil writes a `release/` checkpoint (what Megatron-LM loads for fine-tuning; its tracker
        /// file must hold `release` or an iteration > 0).
        public var iteration: Int?
        public var spec: MegatronSpec = .transformerEngine
        /// Number of `.distcp` files (parallel writers).
        public var fileCount = 2
        public var mappingsDirectory: String?
        /// zstd level for compressed items (`--compress zstd[:LEVEL]`); nil writes them plain.
        public var zstdLevel: Int32?
        /// Pipeline-parallel size: recorded in the args of a torch_dist checkpoint (its keys do
        /// not depend on it); the legacy format writes one file per stage.
        public var pipelineParallel = 1
        /// Layers of the first / last pipeline stage when not the even split (Megatron-LM's
        /// `--decoder-first-pipeline-num-layers` / `--decoder-last-pipeline-num-layers`).
        public var firstStageLayers: Int?
        public var lastStageLayers: Int?
        public var format: MegatronOutputFormat = .torchDist

        /// The target layout.
        public var parallelSizes: ParallelSizes {
            ParallelSizes(tensor: tensorParallel, pipeline: pipelineParallel, expert: expertParallel, expertTensor: expertTensorParallel,
                          firstStageLayers: firstStageLayers, lastStageLayers: lastStageLayers)
        }

        public init() {}
    }

    public let source: HFCheckpointFolder
    public let outputPath: String
    public let options: Options
    public let mapping: MappingPlan
    public let layout: TorchDistLayout
    public let commonState: PickleValue
    /// Per tensor item: the moves that fill it and the zero rows.
    let fills: [ItemFill]
    /// The rank files written instead of `layout` for `--ckpt-format torch`: each rank's tensors
    /// are chunks of `layout`, filled by the same moves.
    public private(set) var legacy: LegacyCheckpointPlan?
    public let warnings: [String]
    /// How the source spells the table's HF names (recorded for export).
    public let dialect: HFNameDialect

    /// How one chunk's data record is filled, in data order.
    struct ItemFill: Sendable {
        enum Step: Sendable {
            /// Bytes of the source file at `source` (an index into the folder's files).
            case copy(source: Int, range: ByteRange)
            /// A column slice of source rows (tensor-parallel row splits).
            case strided(source: Int, firstRow: Int64, rowStride: Int64, segmentOffset: Int64, segmentBytes: Int64, rows: Int64)
            case zeros(count: Int64)
        }

        var steps: [(dataOffset: Int64, step: Step)] = []
    }

    public var iterationDirectoryName: String { options.iteration.map { String(format: "iter_%07d", $0) } ?? "release" }

    public init(source path: String, output: String, options: Options = Options()) throws {
        source = try HFCheckpointFolder(directory: path)
        outputPath = output
        self.options = options
        guard let config = source.config else {
            throw MappingError.missingConfigField(config: (path as NSString).appendingPathComponent("config.json"),
                                                  field: "config.json", neededFor: "choosing the architecture")
        }
        let tables = try MappingTable.load(directory: options.mappingsDirectory)
        let model = try ResolvedModel.resolve(tables: tables, config: config.document, configPath: config.path, spec: options.spec)
        let dialect = HFNameDialect.detect(source.tensors.map(\.info.name), table: model.table)
        self.dialect = dialect
        var shapes: [String: [Int]] = [:]
        var dtypes: [String: DType] = [:]
        for entry in source.tensors {
            shapes[dialect.toTable(entry.info.name)] = entry.info.shape
            dtypes[dialect.toTable(entry.info.name)] = entry.info.dtype
        }
        try model.checkTensorParallel(options.tensorParallel)
        _ = try options.parallelSizes.stageLayers(layerCount: model.layerCount, config: config.path, field: model.table.layerCountArgument)
        mapping = try MappingPlan(model: model, direction: .fromHF(
            shapes: shapes, vocabDivisor: options.vocabDivisor, tensorParallel: options.tensorParallel))
        try Self.checkExpertParallel(mapping, options.expertParallel)

        // Each Megatron tensor keeps its sources' dtype; mixing dtypes in one tensor would need a cast.
        var megatronDType: [String: DType] = [:]
        for item in mapping.correspondences {
            let dtype = dtypes[item.hf.tensor]!
            if let earlier = megatronDType[item.megatron.tensor], earlier != dtype {
                throw MappingError.dtypeConflict(tensor: item.hf.tensor, dtypes: [earlier, dtype].sorted { $0.rawValue < $1.rawValue },
                                                 reason: "\(dtype) differs from \(earlier) of the other sources of `\(item.megatron.tensor)`")
            }
            megatronDType[item.megatron.tensor] = dtype
        }
        // DCP tensors: stacked keys gather their layers (and experts) on prepended axes; one chunk
        // per layer (expert) slice, split further as the target's tensor-parallel ranks hold it.
        var tensors: [(key: String, metadata: DCPTensorMetadata)] = []
        var keyPosition: [String: Int] = [:]
        var chunkPlans: [String: [ChunkPlan]] = [:]
        for spec in mapping.megatronTensors {
            let dtype = megatronDType[spec.name]!
            let isExpert = spec.routedExpert
            let parallel = isExpert ? (options.expertTensorParallel ?? options.tensorParallel) : options.tensorParallel
            let plans = try Self.chunkPlans(spec, parallel: parallel)
            chunkPlans[spec.name] = plans
            let chunks = plans.map { DCPChunk(offsets: $0.offsets, sizes: $0.sizes) }
            if let position = keyPosition[spec.key] {
                tensors[position].metadata.chunks.append(contentsOf: chunks)
            } else {
                keyPosition[spec.key] = tensors.count
                tensors.append((spec.key, DCPTensorMetadata(dtype: dtype, size: spec.globalShape, chunks: chunks)))
            }
        }
        let warnings = Self.ropeWarnings(config: config)
        self.warnings = warnings
        commonState = Self.commonState(model: model, mapping: mapping, options: options, dtype: megatronDType.values.first)
        var objects: [(key: String, bytes: [UInt8])] = [
            ("common_state/shard_0_1", try TorchSaveArchive.objectArchive(.list([commonState]))),
        ]
        objects.append(contentsOf: try Self.extraStateObjects(mapping))
        layout = try TorchDistLayout(tensors: tensors, objects: objects, fileCount: options.fileCount)

        // Row correspondences → byte moves into each chunk's data record.
        var fills = [ItemFill](repeating: ItemFill(), count: layout.tensorItems.count)
        var byTensor: [String: [RowCorrespondence]] = [:]
        for item in mapping.correspondences { byTensor[item.megatron.tensor, default: []].append(item) }
        let zerosByTensor = Dictionary(grouping: mapping.zeroFills, by: \.tensor)
        for spec in mapping.megatronTensors {
            let dtype = megatronDType[spec.name]!
            let rowBytes = try Self.rowBytes(spec.shape, dtype, tensor: spec.name)
            for plan in chunkPlans[spec.name]! {
                let index = layout.item(key: spec.key, offsets: plan.offsets)!
                // Bytes of one chunk row: the whole row, or the chunk's column slice of it.
                let segment = plan.columns.map { Int64($0.count) * rowBytes / Int64(spec.shape[1]) } ?? rowBytes
                let segmentOffset = plan.columns.map { Int64($0.lowerBound) * rowBytes / Int64(spec.shape[1]) } ?? 0
                for item in byTensor[spec.name] ?? [] {
                    let overlap = item.megatron.rows.clamped(to: plan.rows)
                    guard !overlap.isEmpty else { continue }
                    let (file, info) = try source.locate(dialect.toSource(item.hf.tensor))
                    let fileIndex = source.files.firstIndex { $0 === file }!
                    let firstHFRow = item.hf.rows.lowerBound + (overlap.lowerBound - item.megatron.rows.lowerBound)
                    let start = file.fileRange(of: info).offset + Int64(firstHFRow) * rowBytes
                    let dataOffset = Int64(overlap.lowerBound - plan.rows.lowerBound) * segment
                    if plan.columns == nil {
                        fills[index].steps.append((dataOffset, .copy(source: fileIndex, range: ByteRange(offset: start, count: Int64(overlap.count) * rowBytes))))
                    } else {
                        fills[index].steps.append((dataOffset, .strided(source: fileIndex, firstRow: start, rowStride: rowBytes,
                                                                        segmentOffset: segmentOffset, segmentBytes: segment,
                                                                        rows: Int64(overlap.count))))
                    }
                }
                for zero in zerosByTensor[spec.name] ?? [] {
                    let overlap = zero.rows.clamped(to: plan.rows)
                    guard !overlap.isEmpty else { continue }
                    fills[index].steps.append((Int64(overlap.lowerBound - plan.rows.lowerBound) * segment,
                                               .zeros(count: Int64(overlap.count) * segment)))
                }
                fills[index].steps.sort { $0.dataOffset < $1.dataOffset }
            }
        }
        self.fills = fills
        if options.format == .torch { legacy = try makeLegacyPlan() }
    }

    /// Megatron-Core's rules for `--ep`: the routed experts divide evenly over it, and a model
    /// without routed experts has no expert-parallel dimension.
    static func checkExpertParallel(_ mapping: MappingPlan, _ expertParallel: Int) throws {
        let model = mapping.model
        let argument = model.table.expertCountArgument ?? "num_moe_experts"
        let experts = model.argument(argument)?.intValue
        guard let experts, mapping.megatronTensors.contains(where: \.routedExpert) else {
            guard expertParallel == 1 else {
                throw MappingError.invalidConfigValue(
                    config: model.configPath, field: argument,
                    reason: "the model has no routed experts, so --ep \(expertParallel) has nothing to split (Megatron-LM requires num_experts when expert_model_parallel_size > 1)")
            }
            return
        }
        guard expertParallel >= 1, experts % expertParallel == 0 else {
            throw MappingError.invalidConfigValue(
                config: model.configPath, field: argument,
                reason: "\(experts) experts cannot be split evenly over --ep \(expertParallel) (Megatron-Core requires num_moe_experts % expert_model_parallel_size == 0)")
        }
    }

    /// The `_extra_state` objects Megatron-Core asks for (each `torch.save([None])`): ShardedObject
    /// keys `…/shard_<offsets>_<shape>` over the prepended axes, (0,)/(1,) when none.
    static func extraStateObjects(_ mapping: MappingPlan) throws -> [(key: String, bytes: [UInt8])] {
        let none = try TorchSaveArchive.objectArchive(.list([.none]))
        return mapping.extraState.map { extra in
            let suffix = extra.prefix.isEmpty ? "shard_0_1"
                : "shard_\(extra.prefix.map(String.init).joined(separator: "."))_\(extra.prefixSizes.map(String.init).joined(separator: "."))"
            return ("\(extra.key)._extra_state/\(suffix)", none)
        }
    }

    /// A chunk of one Megatron tensor (one layer/expert slice): its place in the key, and which
    /// rows (and columns, for a split along axis 1) of the per-layer tensor it holds.
    public struct ChunkPlan: Sendable {
        var offsets: [Int]
        var sizes: [Int]
        var rows: Range<Int>
        var columns: Range<Int>?
        /// The tensor-parallel rank that holds this chunk; nil when every rank holds it whole.
        var tensorParallelRank: Int? = nil
    }

    /// The chunks a tensor is written in: whole, or as `parallel` tensor-parallel ranks hold it
    /// (column-parallel: rows; SwiGLU: 2 × tp row fragments, gate parts then up parts; row-parallel:
    /// columns; vocabulary rows after padding).
    public static func chunkPlans(_ spec: MegatronTensorSpec, parallel: Int) throws -> [ChunkPlan] {
        let rows = spec.shape.first ?? 1
        let whole = ChunkPlan(offsets: spec.chunk.offsets, sizes: spec.chunk.sizes, rows: 0..<rows, columns: nil)
        guard parallel > 1, let split = spec.split, !spec.shape.isEmpty else { return [whole] }
        let prefixZeros = spec.prefix
        let prefixOnes = spec.prefix.map { _ in 1 }
        switch split {
        case .column, .vocab:
            let parts = spec.op.tensorParallelFragments * parallel
            guard rows % parts == 0 else {
                throw MappingError.cannotSplit(what: "`\(spec.name)`", reason: "its \(rows) rows do not divide into \(parts) tensor-parallel parts")
            }
            let size = rows / parts
            return (0..<parts).map { part in
                ChunkPlan(offsets: prefixZeros + [part * size] + spec.shape.dropFirst().map { _ in 0 },
                          sizes: prefixOnes + [size] + spec.shape.dropFirst(), rows: (part * size)..<((part + 1) * size), columns: nil,
                          tensorParallelRank: part % parallel)
            }
        case .row:
            guard spec.shape.count >= 2 else { return [whole] }
            let columns = spec.shape[1]
            guard columns % parallel == 0 else {
                throw MappingError.cannotSplit(what: "`\(spec.name)`", reason: "its \(columns) columns do not divide into \(parallel) tensor-parallel parts")
            }
            let size = columns / parallel
            return (0..<parallel).map { part in
                ChunkPlan(offsets: prefixZeros + [0, part * size] + spec.shape.dropFirst(2).map { _ in 0 },
                          sizes: prefixOnes + [rows, size] + spec.shape.dropFirst(2), rows: 0..<rows,
                          columns: (part * size)..<((part + 1) * size), tensorParallelRank: part)
            }
        }
    }

    static func rowBytes(_ shape: [Int], _ dtype: DType, tensor: String) throws -> Int64 {
        guard let bytes = ShapeArithmetic.byteCount(Array(shape.dropFirst()), dtype) else {
            throw MappingError.unsupportedDType(tensor: tensor, dtype: dtype, reason: "rows of shape \(Array(shape.dropFirst())) are not whole bytes")
        }
        return Int64(bytes)
    }

    /// Megatron-Core's llama3 RoPE uses fixed low/high frequency factors and original length;
    /// a model with other values converts exactly but computes differently there.
    static func ropeWarnings(config: HFConfig) -> [String] {
        let scaling = config["rope_scaling"] ?? config["rope_parameters"]
        guard let scaling, (scaling["rope_type"] ?? scaling["type"])?.stringValue == "llama3" else { return [] }
        var warnings: [String] = []
        for (field, expected) in [("low_freq_factor", 1.0), ("high_freq_factor", 4.0), ("original_max_position_embeddings", 8192.0)] {
            if let value = scaling[field]?.doubleValue, value != expected {
                warnings.append("rope_scaling.\(field) is \(value); Megatron-Core's llama3 RoPE uses \(expected) (kept in the recorded config.json for export)")
            }
        }
        return warnings
    }

    /// The common state Megatron's training loop saves, with `args` describing the model so
    /// `--use-checkpoint-args` rebuilds it.
    static func commonState(model: ResolvedModel, mapping: MappingPlan, options: Options, dtype: DType?) -> PickleValue {
        var args: [(key: PickleValue, value: PickleValue)] = model.arguments.map { (.string($0.name), PickleValue(json: $0.value)) }
        func set(_ name: String, _ value: PickleValue) {
            args.removeAll { $0.key == .string(name) }
            args.append((.string(name), value))
        }
        if let padded = mapping.paddedVocabSize { set("padded_vocab_size", .int(Int64(padded))) }
        set("make_vocab_size_divisible_by", .int(Int64(options.vocabDivisor)))
        set("tensor_model_parallel_size", .int(Int64(options.tensorParallel)))
        set("pipeline_model_parallel_size", .int(Int64(options.pipelineParallel)))
        for (name, value) in options.parallelSizes.pipelineSplitArguments(for: .none) { set(name, value) }
        set("expert_model_parallel_size", .int(Int64(options.expertParallel)))
        set("bf16", .bool(dtype == .bfloat16))
        set("fp16", .bool(dtype == .float16))
        set("params_dtype", .global("torch", (dtype ?? .float32).torchName ?? "float32"))
        set("ckpt_format", .string(options.format.rawValue))
        set("transformer_impl", .string(options.spec == .local ? "local" : "transformer_engine"))
        set("iteration", .int(Int64(options.iteration ?? 0)))
        set("consumed_train_samples", .int(0))
        set("consumed_valid_samples", .int(0))
        return .dict([
            (.string("args"), .newObject(.global("argparse", "Namespace"), [], .dict(args))),
            (.string("checkpoint_version"), .float(3.0)),
            (.string("iteration"), .int(Int64(options.iteration ?? 0))),
            (.string("num_floating_point_operations_so_far"), .int(0)),
            (.string("content_metadata"), .dict([
                (.string("singleton_local_shards"), .bool(false)), (.string("chained_optim_avoid_prefix"), .bool(true)),
            ])),
        ])
    }

    public var totalBytes: Int64 { layout.tensorItems.reduce(0) { $0 + $1.byteCount } }

    /// Writes the checkpoint under a staging name and publishes it by rename.
    public func run(executor: MoveExecutor, progress: ProgressCounter? = nil) throws {
        let folder = try OutputFolder(path: outputPath)
        for note in folder.notes { progress?.note(note) }
        let iterationPath = folder.stagedPath(iterationDirectoryName)
        try FileManager.default.createDirectory(atPath: iterationPath, withIntermediateDirectories: true)
        if let legacy {
            let entries = try legacy.write(iterationPath: iterationPath, iterationName: iterationDirectoryName,
                                           executor: executor, progress: progress)
            try writeText(options.iteration.map { "\($0)" } ?? "release", to: folder.stagedPath("latest_checkpointed_iteration.txt"))
            try recordSource(into: folder.stagedPath("nembridge/hf"))
            // Last: the manifest covers every byte of every file written before it.
            try ChecksumManifest(kind: .megatronTorch, entries: entries).writeCovering(root: folder.stagingPath)
            try source.checkUnchanged()
            try folder.publish()
            return
        }
        let manifest: ChecksumManifest
        if let level = options.zstdLevel {
            var sources: [[TorchDistCompressedWriter.Piece]] = []
            for fill in fills {
                sources.append(fill.steps.map { dataOffset, step -> TorchDistCompressedWriter.Piece in
                    switch step {
                    case .copy(let file, let range): .file(source.files[file].file, range, dataOffset: dataOffset)
                    case .zeros(let count): .zeros(count: count, dataOffset: dataOffset)
                    case .strided(let file, let first, let stride, let segmentOffset, let segment, let rows):
                        .strided(source.files[file].file, firstRow: first, rowStride: stride, segmentOffset: segmentOffset,
                                 segmentBytes: segment, rows: rows, dataOffset: dataOffset)
                    }
                })
            }
            let counter = progress
            let metadata = try TorchDistCompressedWriter.write(
                directory: iterationPath, layout: layout, sources: sources, level: level, workers: executor.workers,
                progress: { counter?.add($0) })
            // Compressed items: the manifest covers each stored frame.
            var items: [(String, String, ByteRange)] = []
            for (key, info) in metadata.storage {
                let offsets = key.offsets.map { "\($0)" } ?? ""
                items.append(("\(key.fqn)\(offsets) (zstd)", "\(iterationDirectoryName)/\(info.relativePath)",
                              ByteRange(offset: info.offset, count: info.length)))
            }
            items.sort { $0.0 < $1.0 }
            manifest = try ChecksumManifest.compute(kind: .megatronTorchDist, root: folder.stagingPath, items: items,
                                                    workers: executor.workers)
        } else {
            manifest = ChecksumManifest(kind: .megatronTorchDist,
                                        entries: try writePlain(iterationPath: iterationPath, executor: executor, progress: progress))
        }
        // The common state also as common.pt (torch.save of the dict), which Megatron-Core up to
        // 0.18 reads; 0.19 reads it first too, and finds the same dict as in the DCP item.
        let common = try AtomicOutputFile(path: (iterationPath as NSString).appendingPathComponent("common.pt"))
        try common.write(try TorchSaveArchive.objectArchive(commonState), at: 0)
        try common.publish()
        if let provider = mapping.model.table.bridgeProvider, case .dict(let arguments)? = commonState["args"]?.object?.state {
            try writeText(BridgeRunConfig.yaml(provider: provider, arguments: arguments),
                          to: (iterationPath as NSString).appendingPathComponent("run_config.yaml"))
        }
        try writeText(options.iteration.map { "\($0)" } ?? "release", to: folder.stagedPath("latest_checkpointed_iteration.txt"))
        try recordSource(into: folder.stagedPath("nembridge/hf"))
        // Last: the manifest covers every byte of every file written before it.
        try manifest.writeCovering(root: folder.stagingPath)
        // A source written to during the run could have given mixed bytes: nothing is published.
        try source.checkUnchanged()
        try folder.publish()
    }

    /// Uncompressed items at planned offsets: each chunk is one group of copies in data order.
    private func writePlain(iterationPath: String, executor: MoveExecutor, progress: ProgressCounter?) throws -> [ChecksumManifest.Entry] {
        try PlannedWriting.writeTorchDist(
            directory: iterationPath, iterationName: iterationDirectoryName, layout: layout, executor: executor, progress: progress
        ) { index, base in moves(item: index, base: base) }
    }

    /// The moves that fill tensor item `index` (one chunk), destinations counted from `base`.
    func moves(item index: Int, base: Int64) -> [MoveGroup.Step] {
        fills[index].steps.map { dataOffset, step in
            switch step {
            case .copy(let file, let range):
                .copy(source: source.files[file].file, range: range, destinationOffset: base + dataOffset)
            case .zeros(let count): .zeros(count: count)
            case .strided(let file, let first, let stride, let segmentOffset, let segment, let rows):
                .strided(source: source.files[file].file, firstRow: first, rowStride: stride, segmentOffset: segmentOffset,
                         segmentBytes: segment, rows: rows, destinationOffset: base + dataOffset)
            }
        }
    }

    /// The legacy layout of this import (`--ckpt-format torch`): each rank's tensors are the
    /// chunks planned for torch_dist, in state-dict order.
    private func makeLegacyPlan() throws -> LegacyCheckpointPlan {
        let layout = self.layout
        var dtypes: [String: DType] = [:]
        for item in layout.tensorItems { dtypes[item.key] = item.dtype }
        return try LegacyCheckpointPlan(
            mapping: mapping, sizes: options.parallelSizes,
            spec: options.spec, arguments: commonState["args"] ?? .none, iteration: options.iteration ?? 0,
            vocabDivisor: options.vocabDivisor,
            dtype: { key in
                guard let dtype = dtypes[key] else { preconditionFailure("no item of \(key)") }
                return dtype
            },
            steps: { piece, base in
                guard let index = layout.item(key: piece.key, offsets: piece.offsets) else {
                    preconditionFailure("the legacy layout asks for \(piece.key)\(piece.offsets), which the import did not plan")
                }
                return moves(item: index, base: base)
            })
    }

    /// The source's config, generation config, tokenizer and index, so `export` needs no flags.
    private func recordSource(into directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var names = try source.companionFiles()
        if source.index != nil { names.append(HFCheckpointFolder.indexFileName) }
        for name in names {
            try copyFileContents(from: (source.directory as NSString).appendingPathComponent(name),
                                 to: (directory as NSString).appendingPathComponent(name))
        }
        // Each file's `__metadata__` as the source had it (published Nemotron 3 shards have none),
        // so export writes the same headers.
        let metadata = JSONValue.object(zip(source.fileNames, source.files).map { name, file in
            (name, file.header.metadata.map { entries in .object(entries.map { ($0.key, .string($0.value)) }) } ?? .null)
        })
        try writeText(JSONWriter.pythonIndented(.object([("metadata", metadata)])) + "\n",
                      to: (directory as NSString).appendingPathComponent(Self.metadataFile))
        if dialect != .identity {
            let note = JSONValue.object([("hf_prefix", .string(dialect.source)), ("table_prefix", .string(dialect.prefix))])
            try writeText(JSONWriter.pythonIndented(note) + "\n", to: (directory as NSString).appendingPathComponent(Self.dialectFile))
        }
    }

    /// Records how the source spelled the table's names, for export.
    public static let dialectFile = "nembridge-hf-names.json"
    /// Records each source file's `__metadata__` (or its absence), for export.
    public static let metadataFile = "nembridge-hf-metadata.json"

    private func writeText(_ text: String, to path: String) throws {
        let file = try AtomicOutputFile(path: path)
        try file.write(Array(text.utf8), at: 0)
        try file.publish()
    }
}

extension HFImport {
    /// The plan as `--dry-run` prints it: each Megatron key with its sources, shapes, bytes and
    /// files, the expected peak memory, and the arguments that would be written.
    public func planText(bufferBytes: Int = 2 * (16 << 20)) -> String {
        var lines = ["import \(source.directory) -> \(outputPath)/\(iterationDirectoryName)",
                     "architecture: \(mapping.model.table.name) (\(mapping.model.table.megatronModel), \(mapping.model.layerCount) layers, \(mapping.model.table.layerKeys.rawValue) keys)"]
        var sourcesOf: [String: [String]] = [:]
        for item in mapping.correspondences {
            let text = "\(item.hf.tensor)[\(item.hf.rows.lowerBound):\(item.hf.rows.upperBound)]"
            if sourcesOf[item.megatron.tensor]?.last != text { sourcesOf[item.megatron.tensor, default: []].append(text) }
        }
        let zeroOf = Dictionary(grouping: mapping.zeroFills, by: \.tensor)
        lines.append("targets:")
        for spec in mapping.megatronTensors {
            let position = spec.prefix.isEmpty ? "" : " at \(spec.prefix) of"
            let item = layout.tensorItems[layout.item(key: spec.key, offsets: spec.chunk.offsets)!]
            lines.append("  \(spec.key)\(position) \(formatShape(spec.shape)) \(item.dtype) \(item.byteCount) bytes -> \(layout.fileNames[item.file])@\(item.dataOffset)")
            var sources = Set<String>()
            for text in sourcesOf[spec.name] ?? [] {
                let name = String(text.prefix { $0 != "[" })
                if sources.insert(name).inserted, let (file, _) = try? source.locate(dialect.toSource(name)) {
                    lines.append("      <- \(name) (\((file.path as NSString).lastPathComponent))")
                }
            }
            if sourcesOf[spec.name]?.count ?? 0 > sources.count {
                lines.append("         rows: " + (sourcesOf[spec.name] ?? []).joined(separator: ", "))
            }
            for zero in zeroOf[spec.name] ?? [] { lines.append("      <- zeros rows \(zero.rows.lowerBound)..<\(zero.rows.upperBound) (vocabulary padding)") }
        }
        lines.append("objects: \(layout.objectItems.count) (common state, \(mapping.extraState.count) _extra_state)")
        lines.append("files: " + zip(layout.fileNames, layout.fileSizes).map { "\($0) \(formatBytes($1))" }.joined(separator: ", "))
        lines.append("tensor bytes: \(formatBytes(totalBytes)); expected peak memory: buffers \(formatBytes(Int64(bufferBytes))) + headers")
        lines.append("args:")
        if case .object(let object)? = commonState["args"].map({ $0 }), case .dict(let entries)? = object.state {
            for entry in entries { lines.append("  \(entry.key.stringValue ?? "?") = \(Self.render(entry.value))") }
        }
        return lines.joined(separator: "\n")
    }

    static func render(_ value: PickleValue) -> String {
        switch value {
        case .none: "None"
        case .bool(let flag): flag ? "True" : "False"
        case .int(let int): String(int)
        case .float(let double): String(double)
        case .string(let text): "'\(text)'"
        case .global(let module, let name): "\(module).\(name)"
        case .list(let items): "[" + items.map(render).joined(separator: ", ") + "]"
        default: "\(value)"
        }
    }
}

extension HFImport {
    /// Flags Megatron-LM's `--use-checkpoint-args` does not restore from a checkpoint's args
    /// (its `load_args_from_checkpoint` skips them) and a user must still pass.
    public var megatronLMFlags: [String] {
        func argument(_ name: String) -> JSONValue? { mapping.model.argument(name) }
        var flags = ["--use-checkpoint-args"]
        if argument("use_rope_scaling") == .bool(true) {
            flags.append("--use-rope-scaling")
            if let factor = argument("rope_scaling_factor") { flags.append("--rope-scaling-factor \(JSONWriter.compact(factor))") }
        }
        if let epsilon = argument("layernorm_epsilon") { flags.append("--norm-epsilon \(JSONWriter.compact(epsilon))") }
        let dtypes = Set(layout.tensorItems.map(\.dtype))
        if dtypes == [.bfloat16] { flags.append("--bf16") } else if dtypes == [.float16] { flags.append("--fp16") }
        flags.append("--make-vocab-size-divisible-by \(options.vocabDivisor)")
        if !mapping.model.table.configJSONArguments.isEmpty {
            // Megatron-LM takes the heterogeneous config only when this flag is given.
            flags.append("--heterogeneous-layers-config-path \((outputPath as NSString).appendingPathComponent("nembridge/hf/config.json"))")
        }
        return flags
    }
}

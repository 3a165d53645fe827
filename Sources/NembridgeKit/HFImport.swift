import Execution
import Foundation
import MegatronCheckpoint
import SafetensorsFormat
import TensorCore
import TorchPickle
import TorchZip
import WeightMapping

public enum ImportError: Error, Equatable, CustomStringConvertible {
    /// `--dtype` with `--compress`: compressed items are written from the source bytes as they are.
    case castCompressed
    /// `--compress` in a job of several processes: the compressed writer runs in one process.
    case compressedInJob
    /// A quantized source with `--compress`: compressed items are written from the source bytes as they are.
    case dequantizeCompressed

    public var description: String {
        switch self {
        case .castCompressed:
            "--dtype and --compress cannot be combined (compressed items are written from the source bytes as they are); give one of them"
        case .compressedInJob:
            "--compress is written by one process: run it without a launcher's rank (or with --world-size 1)"
        case .dequantizeCompressed:
            "a quantized source is dequantized on import, which --compress cannot do (compressed items are written from the source bytes as they are); import without --compress"
        }
    }
}

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
        /// Cast every floating tensor (bf16, fp16, fp32) to this dtype, except the table's `dtype_kept`.
        public var dtype: DType?

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
    /// The byte moves: group `i` fills tensor item `i` of `layout` (sources are the safetensors
    /// files; outputs the `.distcp` files).
    public let plan: ConversionPlan
    /// Where each Megatron tensor's correspondences are in `mapping`.
    let mappingIndex: MappingIndex
    /// Per correspondence of `mapping`: the plan source its HF rows are read from.
    let correspondenceSources: [Int32]
    public let commonState: PickleValue
    /// The rank files written instead of `layout` for `--ckpt-format torch`: each rank's tensors
    /// are chunks of `layout`, filled by the same moves.
    public private(set) var legacy: LegacyCheckpointPlan?
    public let warnings: [String]
    /// How the source spells the table's HF names (recorded for export).
    public let dialect: HFNameDialect
    /// Megatron tensors written in another dtype than their HF sources (`--dtype`), by name.
    public let casts: [String: ElementCast]
    /// Floating Megatron tensors `--dtype` left as they are (the table's `dtype_kept`).
    public let keptDTypes: [String]
    /// The source's quantization (FP8 / NVFP4 weights dequantized on the way), if any.
    let quantization: HFQuantization?
    /// Megatron tensors dequantized from quantized HF weights, by name.
    public let dequantized: [String: ElementTransform]

    /// `dequantized N tensors to bf16 (block fp8 [128, 128]: N HF weights, …)`, or nil.
    public var dequantizationSummary: String? {
        guard let quantization, !dequantized.isEmpty else { return nil }
        let targets = Set(dequantized.values.compactMap { if case .dequantize(_, let to) = $0 { to } else { nil } })
        return "dequantized \(dequantized.count) tensors to \(targets.map(\.rawValue).sorted().joined(separator: ", ")) (\(quantization.summary) HF weights)"
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
        let quantization = try HFQuantization.of(source)
        self.quantization = quantization
        if quantization != nil, options.zstdLevel != nil { throw ImportError.dequantizeCompressed }
        let consumed = quantization?.consumed ?? []
        let dialect = HFNameDialect.detect(source.tensors.map(\.info.name).filter { !consumed.contains($0) }, table: model.table)
        self.dialect = dialect
        try model.checkTensorParallel(options.tensorParallel)
        _ = try options.parallelSizes.stageLayers(layerCount: model.layerCount, config: config.path, field: model.table.layerCountArgument)
        mapping = try { [source] in
            var shapes: [String: [Int]] = [:]
            shapes.reserveCapacity(source.tensors.count)
            for entry in source.tensors where !consumed.contains(entry.info.name) {
                // A quantized weight is planned with its logical shape [out, in].
                shapes[dialect.toTable(entry.info.name)] = quantization?.weights[entry.info.name]?.logicalShape ?? entry.info.shape
            }
            return try MappingPlan(model: model, direction: .fromHF(
                shapes: shapes, vocabDivisor: options.vocabDivisor, tensorParallel: options.tensorParallel))
        }()
        try Self.checkExpertParallel(mapping, options.expertParallel)
        mappingIndex = MappingIndex(mapping)
        // Each HF tensor of the plan located once: its file and header entry.
        let folder = source
        let hfSources = try mapping.hfTensors.map { try folder.locate(dialect.toSource($0.name)) }
        let quantizedSources = mapping.hfTensors.map { quantization?.weights[dialect.toSource($0.name)] }

        // Each Megatron tensor keeps its sources' dtype; mixing dtypes in one tensor would need a cast.
        var tensorDTypes: [DType] = []
        tensorDTypes.reserveCapacity(mapping.megatronTensors.count)
        var bytesPerDType: [DType: Int64] = [:]
        for (tensor, spec) in mapping.megatronTensors.enumerated() {
            var dtype: DType?
            for index in mappingIndex.correspondences(tensor) {
                let item = mapping.correspondences[index]
                let hfIndex = Int(mapping.correspondenceHFTensors[index])
                // A quantized weight's moves read its stored elements (e4m3: 1 byte, e2m1: ½).
                let sourceDType = quantizedSources[hfIndex]?.sourceDType ?? hfSources[hfIndex].tensor.dtype
                if let earlier = dtype, earlier != sourceDType {
                    throw MappingError.dtypeConflict(tensor: item.hf.tensor, dtypes: [earlier, sourceDType].sorted { $0.rawValue < $1.rawValue },
                                                     reason: "\(sourceDType) differs from \(earlier) of the other sources of `\(spec.name)`")
                }
                dtype = sourceDType
            }
            guard let dtype else { preconditionFailure("`\(spec.name)` has no source") }
            tensorDTypes.append(dtype)
            bytesPerDType[dtype, default: 0] += Int64(ShapeArithmetic.byteCount(spec.shape, dtype) ?? 0)
        }
        // --dtype: each floating tensor cast, but those the table keeps (their HF sources match dtype_kept).
        var targetDTypes = tensorDTypes
        var casts: [String: ElementCast] = [:]
        var kept: [String] = []
        if let target = options.dtype {
            if options.zstdLevel != nil { throw ImportError.castCompressed }
            bytesPerDType = [:]
            let mapping = self.mapping, index = mappingIndex  // (closures may not capture a self being initialized)
            for (tensor, spec) in mapping.megatronTensors.enumerated() {
                let source = tensorDTypes[tensor]
                if DTypeCast.castable.contains(source) {
                    let isKept = index.correspondences(tensor).contains { position in
                        model.table.dtypeKept.contains { $0.match(mapping.correspondences[position].hf.tensor) != nil }
                    }
                    if isKept {
                        kept.append(spec.name)
                    } else if source != target {
                        targetDTypes[tensor] = target
                        casts[spec.name] = ElementCast(from: source, to: target)
                    }
                }
                bytesPerDType[targetDTypes[tensor], default: 0] += Int64(ShapeArithmetic.byteCount(spec.shape, targetDTypes[tensor]) ?? 0)
            }
        }
        // Dequantized tensors: bf16, or the --dtype asked for.
        var dequantized: [String: ElementTransform] = [:]
        if quantization != nil {
            bytesPerDType = [:]
            for (tensor, spec) in mapping.megatronTensors.enumerated() {
                if tensorDTypes[tensor] == .float8E4M3 || tensorDTypes[tensor] == .float4E2M1 {
                    let target = options.dtype ?? .bfloat16
                    targetDTypes[tensor] = target
                    dequantized[spec.name] = .dequantize(tensorDTypes[tensor] == .float4E2M1 ? .e2m1 : .e4m3, to: target)
                }
                bytesPerDType[targetDTypes[tensor], default: 0] += Int64(ShapeArithmetic.byteCount(spec.shape, targetDTypes[tensor]) ?? 0)
            }
        }
        self.dequantized = dequantized
        self.casts = casts
        keptDTypes = kept
        // The model's dtype for args (bf16, params_dtype): the one most bytes are in (an F32
        // router bias does not make a BF16 model F32).
        let mainDType = bytesPerDType.max { ($0.value, $0.key.safetensorsName) < ($1.value, $1.key.safetensorsName) }?.key
        // DCP tensors: stacked keys gather their layers (and experts) on prepended axes; one chunk
        // per layer (expert) slice, split further as the target's tensor-parallel ranks hold it:
        // one grid per Megatron tensor.
        var builder = TorchDistLayout.Builder()
        var chunkings: [TensorChunking] = []
        chunkings.reserveCapacity(mapping.megatronTensors.count)
        for spec in mapping.megatronTensors {
            let isExpert = spec.isRoutedExpert
            let parallel = isExpert ? (options.expertTensorParallel ?? options.tensorParallel) : options.tensorParallel
            let chunking = try TensorChunking.of(spec, parallel: parallel)
            chunking.add(spec, dtype: targetDTypes[chunkings.count], to: &builder)
            chunkings.append(chunking)
        }
        let warnings = Self.fixedConfigWarnings(model: model, config: config)
        self.warnings = warnings
        commonState = Self.commonState(model: model, mapping: mapping, options: options, dtype: mainDType)
        layout = try builder.layout(
            objects: [("common_state/shard_0_1", try TorchSaveArchive.objectArchive(.list([commonState])))] + Self.extraStateObjects(mapping),
            fileCount: options.fileCount)
        builder = TorchDistLayout.Builder()  // its per-grid lists are in the layout now
        (plan, correspondenceSources) = try Self.plan(mapping: mapping, index: mappingIndex, chunkings: chunkings, dtypes: tensorDTypes,
                                                      targetDTypes: targetDTypes, layout: layout, hfSources: hfSources,
                                                      quantized: quantizedSources)
        if options.format == .torch { legacy = try makeLegacyPlan() }
    }

    /// Megatron-Core's rules for `--ep`: the routed experts divide evenly over it, and a model
    /// without routed experts has no expert-parallel dimension.
    static func checkExpertParallel(_ mapping: MappingPlan, _ expertParallel: Int) throws {
        let model = mapping.model
        let argument = model.table.expertCountArgument ?? "num_moe_experts"
        let experts = model.argument(argument)?.intValue
        guard let experts, mapping.megatronTensors.contains(where: \.isRoutedExpert) else {
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

    static func rowBytes(_ shape: [Int], _ dtype: DType, tensor: String) throws -> Int64 {
        guard let bytes = ShapeArithmetic.byteCount(Array(shape.dropFirst()), dtype) else {
            throw MappingError.unsupportedDType(tensor: tensor, dtype: dtype, reason: "rows of shape \(Array(shape.dropFirst())) are not whole bytes")
        }
        return Int64(bytes)
    }

    /// Config values Megatron-Core fixes (the table's `megatron_fixed_config`: its llama3 RoPE's
    /// frequency factors and original length): a model with other values converts exactly but
    /// computes differently there.
    static func fixedConfigWarnings(model: ResolvedModel, config: HFConfig) -> [String] {
        var warnings: [String] = []
        for group in model.table.megatronFixedConfig where model.argument(group.when) == .bool(true) {
            guard let object = group.objects.lazy.compactMap({ config[$0] }).first(where: { !$0.isNull }) else { continue }
            for (field, fixed) in group.values {
                if let value = object[field]?.doubleValue, let expected = fixed.doubleValue, value != expected {
                    warnings.append("\(group.objects[0]).\(field) is \(value); \(group.what) uses \(expected) (kept in the recorded config.json for export)")
                }
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

    /// Bytes written (after any `--dtype` cast).
    public var totalBytes: Int64 { plan.totalOutputBytes }

    /// Writes the checkpoint under a staging name and publishes it by rename.
    /// Writes the checkpoint. With `resume`, the data files an interrupted run (killed) left
    /// complete in its staging folder are kept when they still match their records, and only the
    /// rest is written: the output is byte for byte what an uninterrupted run writes.
    public func run(executor: MoveExecutor, progress: ProgressCounter? = nil, resume: Bool = false, job: JobPlacement = .alone) throws {
        if options.zstdLevel != nil && !job.isAlone { throw ImportError.compressedInJob }
        let folder = try OutputFolder(path: outputPath, resume: resume, job: job)
        for note in folder.notes { progress?.note(note) }
        let records = try StagingRecords(folder: folder, fingerprint: fingerprint, workers: executor.workers)
        if folder.resumed { progress?.note(records.keptNote) }
        let iterationPath = folder.stagedPath(iterationDirectoryName)
        try FileManager.default.createDirectory(atPath: iterationPath, withIntermediateDirectories: true)
        if let legacy {
            let entries = try legacy.write(iterationPath: iterationPath, iterationName: iterationDirectoryName,
                                           executor: executor, progress: progress, records: records)
            try writeText(options.iteration.map { "\($0)" } ?? "release", to: folder.stagedPath("latest_checkpointed_iteration.txt"))
            try recordSource(into: folder.stagedPath("nembridge/hf"))
            try records.finish()
            // Last: the manifest covers every byte of every file written before it.
            try ChecksumManifest(kind: .megatronTorch, entries: entries).writeCovering(root: folder.stagingPath)
            try source.checkUnchanged()
            try folder.publish()
            return
        }
        let manifest: ChecksumManifest.Streamed
        if let level = options.zstdLevel {
            let counter = progress
            let metadata = try TorchDistCompressedWriter.write(
                directory: iterationPath, layout: layout, plan: plan, level: level, workers: executor.workers,
                progress: { counter?.add($0) })
            // Compressed items: the manifest covers each stored frame.
            var items: [(String, String, ByteRange)] = []
            for (item, info) in metadata.enumerated() {
                items.append(("\(layout.key(item: item))\(layout.chunk(item: item).offsets) (zstd)", "\(iterationDirectoryName)/\(info.relativePath)",
                              ByteRange(offset: info.offset, count: info.length)))
            }
            items.sort { $0.0 < $1.0 }
            manifest = try ChecksumManifest.compute(kind: .megatronTorchDist, root: folder.stagingPath, items: items,
                                                    workers: executor.workers).streamed
        } else {
            // Uncompressed items at planned offsets: each chunk is one group of moves in data order.
            manifest = try PlannedWriting.writeTorchDist(
                directory: iterationPath, iterationName: iterationDirectoryName, layout: layout, plan: plan, executor: executor,
                progress: progress, records: records)
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
        try records.finish()
        // Last: the manifest covers every byte of every file written before it.
        try manifest.writeCovering(root: folder.stagingPath)
        // A source written to during the run could have given mixed bytes: nothing is published.
        try source.checkUnchanged()
        try folder.publish()
    }

    /// What a staged file's completion record is tied to: the command, its options and every
    /// source file's identity, so a resumed run keeps only files this very plan would write.
    var fingerprint: String {
        StagingRecords.fingerprint(command: "import", settings: "\(options)", sources: source.files.map(\.file))
    }

    /// The legacy layout of this import (`--ckpt-format torch`): each rank's tensors are the
    /// chunks planned for torch_dist, in state-dict order.
    private func makeLegacyPlan() throws -> LegacyCheckpointPlan {
        let layout = self.layout
        let plan = self.plan
        var castsByKey: [String: ElementTransform] = [:]  // the layers of a stacked key share its cast
        for spec in mapping.megatronTensors {
            if let cast = casts[spec.name] { castsByKey[spec.key] = .cast(cast) }
            if let transform = dequantized[spec.name] { castsByKey[spec.key] = transform }
        }
        return try LegacyCheckpointPlan(
            mapping: mapping, sizes: options.parallelSizes,
            spec: options.spec, arguments: commonState["args"] ?? .none, iteration: options.iteration ?? 0,
            vocabDivisor: options.vocabDivisor,
            dtype: { key in
                guard let dtype = layout.key(named: key)?.dtype else { preconditionFailure("no item of \(key)") }
                return dtype
            },
            cast: { castsByKey[$0] },
            fill: { piece, _, target in
                guard let index = layout.item(key: piece.key, offsets: piece.offsets), layout.chunk(item: index).sizes == piece.sizes else {
                    preconditionFailure("the legacy layout asks for \(piece.key)\(piece.offsets), which the import did not plan")
                }
                target.append(group: index, of: plan)
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
        if let quantization {
            try writeText(JSONWriter.pythonIndented(try quantization.record(source)) + "\n",
                          to: (directory as NSString).appendingPathComponent(Self.quantizationFile))
            try recordScales(quantization, to: (directory as NSString).appendingPathComponent(Self.scalesFile))
        }
        if dialect != .identity {
            let note = JSONValue.object([("hf_prefix", .string(dialect.source)), ("table_prefix", .string(dialect.prefix))])
            try writeText(JSONWriter.pythonIndented(note) + "\n", to: (directory as NSString).appendingPathComponent(Self.dialectFile))
        }
    }

    /// Records the source's quantization (declaration, each weight's scheme, activation scales).
    public static let quantizationFile = "nembridge-hf-quantization.json"
    /// The source's scales and activation / KV-cache scales, byte for byte (`export --quantize like-source`).
    public static let scalesFile = "nembridge-hf-scales.safetensors"
    /// Records how the source spelled the table's names, for export.
    public static let dialectFile = "nembridge-hf-names.json"
    /// Records each source file's `__metadata__` (or its absence), for export.
    public static let metadataFile = "nembridge-hf-metadata.json"

    /// Every companion tensor of the quantized weights (scales, input / KV-cache scales) copied
    /// as stored into one safetensors file, a buffer at a time (NVFP4's group scales are an
    /// eighth of the packed weights' bytes).
    private func recordScales(_ quantization: HFQuantization, to path: String) throws {
        let companions = source.tensors.filter { quantization.consumed.contains($0.info.name) }
        let writer = try SafetensorsWriter(path: path, tensors: companions.map {
            TensorDeclaration(name: $0.info.name, dtype: $0.info.dtype, shape: $0.info.shape)
        }, metadata: nil)
        do {
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            for entry in companions {
                let file = source.files[entry.file]
                let range = file.fileRange(of: entry.info)
                var done: Int64 = 0
                while done < range.count {
                    let count = Int(min(Int64(buffer.count), range.count - done))
                    try buffer.withUnsafeMutableBytes { bytes in
                        let piece = UnsafeMutableRawBufferPointer(rebasing: bytes[0..<count])
                        try file.file.read(into: piece, at: range.offset + done)
                        try writer.write(tensor: entry.info.name, at: done, bytes: UnsafeRawBufferPointer(piece))
                    }
                    done += Int64(count)
                }
            }
            try writer.finish()
        } catch {
            writer.discard()
            throw error
        }
    }

    private func writeText(_ text: String, to path: String) throws {
        let file = try AtomicOutputFile(path: path)
        try file.write(Array(text.utf8), at: 0)
        try file.publish()
    }
}

extension HFImport {
    /// Flags Megatron-LM's `--use-checkpoint-args` does not restore from a checkpoint's args
    /// (its `load_args_from_checkpoint` skips them) and a user must still pass.
    public var megatronLMFlags: [String] {
        func argument(_ name: String) -> JSONValue? { mapping.model.argument(name) }
        var flags = ["--use-checkpoint-args"]
        for flag in mapping.model.table.megatronLMFlags where flag.when.map({ argument($0) == .bool(true) }) ?? true {
            if let name = flag.value {
                if let value = argument(name) { flags.append("\(flag.flag) \(JSONWriter.compact(value))") }
            } else {
                flags.append(flag.flag)
            }
        }
        let dtypes = Set(layout.keys.map(\.dtype))
        if dtypes == [.bfloat16] { flags.append("--bf16") } else if dtypes == [.float16] { flags.append("--fp16") }
        flags.append("--make-vocab-size-divisible-by \(options.vocabDivisor)")
        if !mapping.model.table.configJSONArguments.isEmpty {
            // Megatron-LM takes the heterogeneous config only when this flag is given.
            flags.append("--heterogeneous-layers-config-path \((outputPath as NSString).appendingPathComponent("nembridge/hf/config.json"))")
        }
        return flags
    }
}

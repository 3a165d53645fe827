import Execution
import Foundation
import MegatronCheckpoint
import SafetensorsFormat
import TensorCore
import WeightMapping

public enum ExportError: Error, Equatable, CustomStringConvertible {
    /// A checkpoint nembridge did not import (Megatron-Core wrote it) has no recorded HF config.
    case hfConfigRequired(checkpoint: String)
    /// A file nembridge recorded beside the checkpoint at import no longer reads as it wrote it.
    case damagedRecord(file: String, reason: String)
    /// `--quantize like-source` of a checkpoint not imported from a quantized folder (nothing recorded to reuse).
    case noRecordedQuantization(checkpoint: String)
    /// A `--quantize` this checkpoint cannot be written with.
    case quantizationUnsupported(reason: String)

    public var description: String {
        switch self {
        case .noRecordedQuantization(let checkpoint):
            "\(MessageText.path(checkpoint)): --quantize like-source needs a checkpoint imported from a quantized folder (its scales recorded under nembridge/hf); this one was not: give --quantize fp8-block[:B] or fp8"
        case .quantizationUnsupported(let reason):
            "--quantize: \(MessageText.quoted(reason, limit: nil))"
        case .hfConfigRequired(let checkpoint):
            "\(MessageText.path(checkpoint)): no Hugging Face config.json recorded with this checkpoint (it was not imported by nembridge); give the model's config folder with --hf-config DIR"
        case .damagedRecord(let file, let reason):
            "\(MessageText.path(file)): damaged record of the imported model: \(MessageText.quoted(reason, limit: nil))"
        }
    }
}

/// `export --quantize`: how the weights the table lists (`quantized_weights`) are stored.
public enum ExportQuantization: Sendable, Equatable, CustomStringConvertible {
    /// Block FP8 (`quant_method: fp8`, DeepSeek-V3 / Qwen3 style): [B, B] blocks, F32 `weight_scale_inv`.
    case fp8Block(Int)
    /// ModelOpt FP8 (`quant_method: modelopt`, `quant_algo: FP8`): one F32 `weight_scale` per weight.
    case fp8Tensor
    /// The source's scheme and scales, recorded at import: an untouched round trip is byte-identical.
    case likeSource

    /// `fp8-block`, `fp8-block:B`, `fp8`, `like-source`.
    public static func parse(_ text: String) -> ExportQuantization? {
        switch text {
        case "fp8-block": return .fp8Block(128)
        case "fp8": return .fp8Tensor
        case "like-source": return .likeSource
        default:
            guard text.hasPrefix("fp8-block:"), let size = Int(text.dropFirst("fp8-block:".count)), size > 0 else { return nil }
            return .fp8Block(size)
        }
    }

    public var description: String {
        switch self {
        case .fp8Block(let size): "fp8-block:\(size)"
        case .fp8Tensor: "fp8"
        case .likeSource: "like-source"
        }
    }
}

/// A weight exported quantized: its F8_E4M3 codes in place of it and its scale tensor beside it,
/// both computed from its elements by `FP8Quantization` (reusing `recorded` scales where they round-trip).
struct QuantizedExport: Sendable {
    let weight: String
    let sourceDType: DType
    let rows: Int
    let columns: Int
    let scale: TensorDeclaration
    let blockRows: Int
    let blockColumns: Int
    /// like-source: the recorded scale grid (in the recorded scales file).
    let recorded: (file: ReadOnlyFile, offset: Int64)?
    /// NVFP4 (like-source only): `scale` is the group scales, this the weight_scale_2, and
    /// `recorded` the recorded group scales, with the recorded weight_scale_2 value.
    var nvfp4: (second: TensorDeclaration, recordedSecond: Float)?

    /// Declarations written for the weight: its codes, then its scales.
    var declarations: [TensorDeclaration] {
        if let nvfp4 {
            return [TensorDeclaration(name: weight, dtype: .uint8, shape: [rows, columns / 2]), scale, nvfp4.second]
        }
        return [TensorDeclaration(name: weight, dtype: .float8E4M3, shape: [rows, columns]), scale]
    }

    /// The transform of output tensor `name` (the weight or one of its scales).
    func transform(of name: String, in plan: inout ConversionPlan) -> ElementTransform {
        if let nvfp4 {
            let part: NVFP4Quantization.Part = name == weight ? .codes : name == scale.name ? .groupScales : .secondScale
            let recorded = self.recorded.map { NVFP4Quantization.RecordedScales(source: plan.source($0.file), offset: $0.offset, second: nvfp4.recordedSecond) }
            return .quantizeNVFP4(NVFP4Quantization(from: sourceDType, rows: rows, columns: columns, group: blockColumns, part: part, recorded: recorded))
        }
        let recorded = self.recorded.map { FP8Quantization.RecordedScales(source: plan.source($0.file), offset: $0.offset) }
        return .quantize(FP8Quantization(from: sourceDType, rows: rows, columns: columns, blockRows: blockRows, blockColumns: blockColumns,
                                         scaleDType: scale.dtype, part: name == weight ? .codes : .scales, recorded: recorded))
    }
}

/// `nembridge export`: a Megatron-Core torch_dist checkpoint → a Hugging Face folder that
/// transformers loads. `config.json` and the tokenizer files come from the source recorded at
/// import (`<save dir>/nembridge/hf`) or from `--hf-config`; tensors keep their dtypes; padded
/// vocabulary rows are dropped; the recorded shard layout is reused when there is one.
public struct MegatronExport: Sendable {
    public struct Options: Sendable {
        /// Folder with the model's `config.json` (and tokenizer files); nil to use the recorded one.
        public var hfConfigDirectory: String?
        /// Used when no shard layout is recorded.
        public var maxShardSize: Int64 = 5_000_000_000
        public var mappingsDirectory: String?
        /// Tokenizer files for a config written from the training args.
        public var tokenizerDirectory: String?
        /// Cast every floating tensor (bf16, fp16, fp32) to this dtype, except the table's `dtype_kept`.
        public var dtype: DType?
        public var workers = 2
        /// Store the table's linear projection weights quantized (nil: as they are).
        public var quantize: ExportQuantization?
        /// Only the plan is wanted (a dry run): of the source items alike in dtype, chunk sizes and
        /// length one is opened and the others take its layout. Such a plan cannot be run.
        public var planOnly = false

        public init() {}
    }

    public static let recordedFolder = "nembridge/hf"

    /// The checkpoint's global tensors: a torch_dist checkpoint, or a legacy one placed by the mapping.
    public let source: any GlobalTensorSource
    /// The iteration directory read.
    public let directory: String
    /// The legacy checkpoint, when the source is one.
    public let legacy: LegacyCheckpointSource?
    public let outputPath: String
    public let mapping: MappingPlan
    /// Made for printing only (`Options.planOnly`): not every item was opened, so it is not run.
    public let planOnly: Bool
    public let configDirectory: String
    /// The config written from the checkpoint's training args, when none was recorded or given.
    public let trainingConfig: TrainingConfig?
    public let shards: [(name: String, tensors: [TensorDeclaration])]
    /// The index's `metadata` members, nil when no index is written (one shard, no recorded
    /// index). The index itself (6 MB at Ultra's size) is made when it is written.
    let indexMetadata: [(key: String, value: JSONValue)]?
    /// `model.safetensors.index.json` as `run` writes it, or nil when there is none.
    public var indexBytes: [UInt8]? {
        indexMetadata.map { HFShardPlan(shards: shards.map { HFShardPlan.Shard(fileName: $0.name, tensors: $0.tensors) }).indexFileBytes(extraMetadata: $0) }
    }
    public let companionFiles: [String]
    /// The checkpoint was imported from a quantized folder (its record is beside the config).
    public let dequantizedSource: Bool
    /// How output names are spelled (the source's dialect, recorded at import).
    public let dialect: HFNameDialect
    /// Training-state keys (optimizer, RNG) present in the checkpoint and not exported.
    public let skippedKeys: [String]
    /// Tensors written in another dtype than the checkpoint's (`--dtype`), by output name.
    public let casts: [String: ElementCast]
    /// Floating tensors `--dtype` left as they are (the table's `dtype_kept`).
    public let keptDTypes: [String]
    /// `--quantize`, when given.
    public let quantization: ExportQuantization?
    /// Quantized weights by output name, and the weight each scale tensor belongs to.
    let quantized: [String: QuantizedExport]
    let scaleWeights: [String: String]
    /// like-source: companions copied as recorded (activation and KV-cache scales).
    let recordedCopies: [String: (file: ReadOnlyFile, range: ByteRange)]
    /// The `quantization_config` written into config.json (and, for ModelOpt, hf_quant_config.json), fresh quantization only.
    let quantizationConfig: (config: JSONValue, modelopt: JSONValue?)?
    /// `__metadata__` of each output file as the imported source had it (absent: not recorded).
    let shardMetadata: [String: [(key: String, value: String)]?]
    /// Per HF tensor (by its output name): the correspondences that fill it (indices into
    /// `mapping.correspondences` and `mapping.megatronTensors`) and how many reads they make.
    /// The reads are made again when the tensor is planned: held for 51,000 tensors they were
    /// 21 MB of a 409,000-chunk checkpoint's export.
    let blocks: [String: (parts: [(correspondence: Int32, spec: Int32, base: Int64)], readCount: Int)]
    /// Every source file the reads touch, once each (for the resume fingerprint and the final
    /// unchanged-source check).
    let sourceFiles: [ReadOnlyFile]

    /// The reads of each row block of HF tensor `name` (at `base` bytes into the tensor).
    func reads(of name: String) throws -> [(reads: BoxReads, base: Int64)] {
        try (blocks[name]?.parts ?? []).map { part in
            (try Self.blockReads(mapping.correspondences[Int(part.correspondence)], spec: mapping.megatronTensors[Int(part.spec)], source: source),
             part.base)
        }
    }

    static func blockReads(_ item: RowCorrespondence, spec: MegatronTensorSpec, source: any GlobalTensorSource) throws -> BoxReads {
        let (offsets, sizes) = spec.box(rows: item.megatron.rows)
        return try source.boxReads(key: spec.key, offsets: offsets, sizes: sizes)
    }

    public init(checkpoint path: String, output: String, options: Options = Options()) throws {
        let folder = try MegatronCheckpointFolder(path: path)
        directory = folder.directory
        outputPath = output
        planOnly = options.planOnly
        let tables = try MappingTable.load(directory: options.mappingsDirectory)
        (configDirectory, trainingConfig) = try Self.configDirectory(given: options.hfConfigDirectory, folder: folder, checkpoint: path,
                                                                     tables: tables, tokenizer: options.tokenizerDirectory)
        let config = try HFConfig(path: (configDirectory as NSString).appendingPathComponent("config.json"))
        let model = try ResolvedModel.resolve(tables: tables, config: config.document, configPath: config.path)
        // Read before the checkpoint: its document (51,000 names at Ultra's size, 15 MB parsed)
        // is gone by the time the plan's tables exist, and only a compact map is kept.
        let recordedIndexPath = (configDirectory as NSString).appendingPathComponent(HFCheckpointFolder.indexFileName)
        var recordedIndex = try FileManager.default.fileExists(atPath: recordedIndexPath)
            ? RecordedShardIndex(document: try HFConfig(path: recordedIndexPath).document, path: recordedIndexPath) : nil
        var dtypes: [String: DType] = [:]
        if folder.format == .legacyTorch {
            let legacy = try LegacyCheckpointSource(checkpoint: try LegacyTorchCheckpoint(directory: folder.directory, folder: folder),
                                                    model: model)
            self.legacy = legacy
            source = legacy.tensors
            mapping = legacy.mapping
            skippedKeys = legacy.checkpoint.trainingStateKeys
        } else {
            let checkpoint = try TorchDistCheckpoint(folder: folder, itemOpening: options.planOnly ? .oncePerLayout : .every)
            legacy = nil
            source = checkpoint
            var keyShapes: [String: [Int]] = [:]
            for (key, tensor) in checkpoint.metadata.tensors { keyShapes[key] = tensor.size }
            skippedKeys = keyShapes.keys.filter(MappingPlan.isTrainingState).sorted()
            mapping = try MappingPlan(model: model, direction: .fromMegatron(keyShapes: keyShapes))
        }
        for (key, tensor) in source.globalTensors { dtypes[key] = tensor.dtype }
        let directory = configDirectory
        // Names as the source spelled them (recorded at import), else the table's.
        let dialectPath = (directory as NSString).appendingPathComponent(HFImport.dialectFile)
        if FileManager.default.fileExists(atPath: dialectPath) {
            // A damaged note must not silently rename every exported tensor.
            let note = try HFConfig(path: dialectPath).document
            guard let prefix = note["table_prefix"]?.stringValue, let source = note["hf_prefix"]?.stringValue else {
                throw ExportError.damagedRecord(file: dialectPath, reason: "needs string members `table_prefix` and `hf_prefix`")
            }
            dialect = HFNameDialect(prefix: prefix, source: source)
        } else {
            dialect = .identity
        }

        let megatronSpecs = Dictionary(uniqueKeysWithValues: mapping.megatronTensors.enumerated().map { ($1.name, Int32($0)) })
        var hfDType: [String: DType] = [:]
        // The reads are made here once (a missing chunk is an error now, not in the run), counted
        // and their files noted, then dropped.
        var blocks: [String: (parts: [(correspondence: Int32, spec: Int32, base: Int64)], readCount: Int)] = [:]
        hfDType.reserveCapacity(mapping.hfTensors.count)
        blocks.reserveCapacity(mapping.hfTensors.count)
        var sourceFiles: [ReadOnlyFile] = []
        var seenFiles = Set<ObjectIdentifier>()
        let hfShapes = Dictionary(uniqueKeysWithValues: mapping.hfTensors.map { ($0.name, $0.shape) })
        let specIndices = mapping.correspondences.map { megatronSpecs[$0.megatron.tensor]! }
        let (plannedMapping, plannedSource) = (mapping, source)
        // Finding the reads is most of the plan's time, and independent per block: on every core.
        try ConcurrentBatches.forEach(count: mapping.correspondences.count, { index in
            let reads = try Self.blockReads(plannedMapping.correspondences[index], spec: plannedMapping.megatronTensors[Int(specIndices[index])],
                                            source: plannedSource)
            // The files in first-use order (a block reads one to a few).
            var files: [ReadOnlyFile] = []
            for move in reads.moves where !files.contains(where: { $0 === move.file }) { files.append(move.file) }
            return (readCount: reads.moves.count, files: files)
        }, consume: { index, result in
            let (readCount, files) = result
            for file in files where seenFiles.insert(ObjectIdentifier(file)).inserted { sourceFiles.append(file) }
            let item = plannedMapping.correspondences[index]
            let specIndex = specIndices[index]
            let spec = plannedMapping.megatronTensors[Int(specIndex)]
            let dtype = dtypes[spec.key]!
            hfDType[item.hf.tensor] = dtype
            let trailing = Array(spec.shape.dropFirst())
            let rowBytes = Int64(ShapeArithmetic.byteCount(trailing, dtype) ?? 0)
            blocks[item.hf.tensor, default: ([], 0)].parts.append((Int32(index), specIndex, Int64(item.hf.rows.lowerBound) * rowBytes))
            blocks[item.hf.tensor]!.readCount += readCount
        })
        self.sourceFiles = sourceFiles
        let dialect = self.dialect
        var casts: [String: ElementCast] = [:]
        var kept: [String] = []
        if let target = options.dtype {
            for tensor in mapping.hfTensors where DTypeCast.castable.contains(hfDType[tensor.name]!) {
                if mapping.model.table.dtypeKept.contains(where: { $0.match(tensor.name) != nil }) {
                    kept.append(dialect.toSource(tensor.name))
                } else if hfDType[tensor.name]! != target {
                    casts[dialect.toSource(tensor.name)] = ElementCast(from: hfDType[tensor.name]!, to: target)
                }
            }
        }
        dequantizedSource = FileManager.default.fileExists(atPath: (directory as NSString).appendingPathComponent(HFImport.quantizationFile))
        quantization = options.quantize
        var quantized: [String: QuantizedExport] = [:]
        var recordedCopies: [String: (file: ReadOnlyFile, range: ByteRange)] = [:]
        var recordedOrder: [TensorDeclaration] = []
        var quantizationConfig: (config: JSONValue, modelopt: JSONValue?)?
        // Only a quantizing export needs them (51,000 names at Ultra's size).
        let sourceDType = options.quantize == nil ? [:] : Dictionary(uniqueKeysWithValues: mapping.hfTensors.map { (dialect.toSource($0.name), hfDType[$0.name]!) })
        let sourceShape = options.quantize == nil ? [:] : Dictionary(uniqueKeysWithValues: mapping.hfTensors.map { (dialect.toSource($0.name), hfShapes[$0.name]!) })
        func quantizable(_ name: String) -> Bool {
            guard let shape = sourceShape[name], shape.count == 2, shape.allSatisfy({ $0 > 0 }),
                  DTypeCast.castable.contains(sourceDType[name]!) else { return false }
            return true
        }
        switch options.quantize {
        case nil:
            break
        case .fp8Block?, .fp8Tensor?:
            let table = mapping.model.table
            guard !table.quantizedWeights.isEmpty else {
                throw ExportError.quantizationUnsupported(reason: "the \(table.name) table lists no quantized_weights")
            }
            let block: Int? = if case .fp8Block(let size)? = options.quantize { size } else { nil }
            for tensor in mapping.hfTensors where table.quantizedWeights.contains(where: { $0.match(tensor.name) != nil }) {
                let name = dialect.toSource(tensor.name)
                guard quantizable(name) else { continue }
                let shape = sourceShape[name]!
                let module = String(name.dropLast(".weight".count))
                if let block {
                    quantized[name] = QuantizedExport(
                        weight: name, sourceDType: sourceDType[name]!, rows: shape[0], columns: shape[1], scale: TensorDeclaration(name: module + ".weight_scale_inv", dtype: .float32,
                                                               shape: [(shape[0] + block - 1) / block, (shape[1] + block - 1) / block]),
                        blockRows: block, blockColumns: block, recorded: nil)
                } else {
                    quantized[name] = QuantizedExport(weight: name, sourceDType: sourceDType[name]!, rows: shape[0], columns: shape[1], scale: TensorDeclaration(name: module + ".weight_scale", dtype: .float32, shape: []),
                                                      blockRows: shape[0], blockColumns: shape[1], recorded: nil)
                }
            }
            quantizationConfig = Self.quantizationConfig(options.quantize!, excluded: table.quantizationExcluded)
        case .likeSource?:
            let recordPath = (directory as NSString).appendingPathComponent(HFImport.quantizationFile)
            let scalesPath = (directory as NSString).appendingPathComponent(HFImport.scalesFile)
            guard dequantizedSource, FileManager.default.fileExists(atPath: scalesPath) else {
                throw ExportError.noRecordedQuantization(checkpoint: path)
            }
            let record = try HFConfig(path: recordPath).document
            guard let weights = record["weights"]?.objectMembers else {
                throw ExportError.damagedRecord(file: recordPath, reason: "needs an object member `weights`")
            }
            let scales = try SafetensorsFile(path: scalesPath)
            let byName = Dictionary(scales.tensors.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
            let block = record["declaration"]?["quantization_config"]?["weight_block_size"]?.arrayValue?.compactMap(\.intValue)
            var consumed = Set<String>()
            for (name, _) in weights {
                guard quantizable(name) else {
                    throw ExportError.damagedRecord(file: recordPath, reason: "`\(name)` is recorded quantized, but the checkpoint has no such 2-D floating tensor")
                }
                let shape = sourceShape[name]!
                let module = String(name.dropLast(".weight".count))
                if let scale = byName[module + ".weight_scale_inv"] {
                    guard let block, block.count == 2, block.allSatisfy({ $0 > 0 }),
                          scale.shape == [(shape[0] + block[0] - 1) / block[0], (shape[1] + block[1] - 1) / block[1]],
                          [.float32, .bfloat16].contains(scale.dtype) else {
                        throw ExportError.damagedRecord(file: scalesPath, reason: "`\(scale.name)` \(scale.dtype) \(scale.shape) is not the block scale grid of `\(name)` \(shape) with the recorded weight_block_size")
                    }
                    quantized[name] = QuantizedExport(weight: name, sourceDType: sourceDType[name]!, rows: shape[0], columns: shape[1], scale: TensorDeclaration(name: scale.name, dtype: scale.dtype, shape: scale.shape),
                                                      blockRows: block[0], blockColumns: block[1],
                                                      recorded: (scales.file, scales.fileRange(of: scale).offset))
                    consumed.insert(scale.name)
                } else if let second = byName[module + ".weight_scale_2"] {
                    guard let scale = byName[module + ".weight_scale"], scale.dtype == .float8E4M3, shape[1] % 16 == 0,
                          scale.shape == [shape[0], shape[1] / 16], second.dtype == .float32, second.shape.isEmpty || second.shape == [1] else {
                        throw ExportError.damagedRecord(file: scalesPath, reason: "`\(module)`'s recorded NVFP4 scales are not F8_E4M3 [\(shape[0]), \(shape[1] / 16)] and an F32 scalar")
                    }
                    let value = try scales.file.readBytes(scales.fileRange(of: second)).withUnsafeBytes { Dequantize.scaleValueOf($0, dtype: .float32) }
                    var weight = QuantizedExport(weight: name, sourceDType: sourceDType[name]!, rows: shape[0], columns: shape[1],
                                                 scale: TensorDeclaration(name: scale.name, dtype: scale.dtype, shape: scale.shape),
                                                 blockRows: 1, blockColumns: 16, recorded: (scales.file, scales.fileRange(of: scale).offset))
                    weight.nvfp4 = (TensorDeclaration(name: second.name, dtype: second.dtype, shape: second.shape), value)
                    quantized[name] = weight
                    consumed.formUnion([scale.name, second.name])
                } else if let scale = byName[module + ".weight_scale"], scale.shape.isEmpty || scale.shape == [1], [.float32, .bfloat16].contains(scale.dtype) {
                    quantized[name] = QuantizedExport(weight: name, sourceDType: sourceDType[name]!, rows: shape[0], columns: shape[1], scale: TensorDeclaration(name: scale.name, dtype: scale.dtype, shape: scale.shape),
                                                      blockRows: shape[0], blockColumns: shape[1],
                                                      recorded: (scales.file, scales.fileRange(of: scale).offset))
                    consumed.insert(scale.name)
                } else {
                    throw ExportError.damagedRecord(file: scalesPath, reason: "no recorded scale of `\(name)`")
                }
            }
            // The activation and KV-cache scales nothing computes: written as recorded.
            for tensor in scales.tensors where !consumed.contains(tensor.name) {
                recordedCopies[tensor.name] = (scales.file, scales.fileRange(of: tensor))
                recordedOrder.append(TensorDeclaration(name: tensor.name, dtype: tensor.dtype, shape: tensor.shape))
            }
        }
        for name in quantized.keys { casts[name] = nil }
        self.casts = casts
        keptDTypes = kept.filter { quantized[$0] == nil }
        self.quantized = quantized
        scaleWeights = Dictionary(uniqueKeysWithValues: quantized.values.flatMap { weight in
            weight.declarations.dropFirst().map { ($0.name, weight.weight) }
        })
        self.recordedCopies = recordedCopies
        self.quantizationConfig = quantizationConfig
        var declarations: [TensorDeclaration] = []
        for tensor in mapping.hfTensors {
            let name = dialect.toSource(tensor.name)
            if let weight = quantized[name] {
                declarations += weight.declarations
            } else {
                declarations.append(TensorDeclaration(name: name, dtype: casts[name]?.to ?? hfDType[tensor.name]!, shape: hfShapes[tensor.name]!))
            }
        }
        declarations += recordedOrder
        if dialect.prefix != dialect.source {
            blocks = Dictionary(uniqueKeysWithValues: blocks.map { (dialect.toSource($0.key), $0.value) })
        }

        // The recorded source layout when there is one (same files, same tensors per file).
        var shards: [(name: String, tensors: [TensorDeclaration])] = []
        var indexMetadata: [(key: String, value: JSONValue)]?
        let recorded = recordedIndex.flatMap { index in index.layout(declarations).map { (layout: $0, extra: index.metadata) } }
        recordedIndex = nil
        if let recorded {
            shards = recorded.layout
            indexMetadata = recorded.extra
        } else {
            let plan = HFShardPlan.greedy(declarations, maxShardSize: options.maxShardSize)
            shards = plan.shards.map { ($0.fileName, $0.tensors) }
            if plan.isSharded {
                let parameters = declarations.reduce(0) { $0 + (ShapeArithmetic.elementCount($1.shape) ?? 0) }
                indexMetadata = [("total_parameters", .number(JSONNumber(parameters)))]
            }
        }
        self.shards = shards
        self.indexMetadata = indexMetadata
        shardMetadata = try Self.recordedMetadata((directory as NSString).appendingPathComponent(HFImport.metadataFile))
        self.blocks = blocks
        // An import of a quantized folder recorded its quantization: the export writes the
        // dequantized tensors, so the record, ModelOpt's hf_quant_config.json and config.json's
        // quantization_config are not carried over (config.json is written without it, or with
        // the fresh --quantize one), unless --quantize like-source writes the source's again.
        var quantizationRecords = dequantizedSource ? [HFImport.quantizationFile, Self.modeloptConfigFile] : []
        if options.quantize == .likeSource { quantizationRecords = [HFImport.quantizationFile] }
        if quantizationConfig?.modelopt != nil { quantizationRecords.append(Self.modeloptConfigFile) }
        var companionFiles = try FileManager.default.contentsOfDirectory(atPath: directory).filter {
            $0 != HFCheckpointFolder.indexFileName && $0 != HFImport.dialectFile && $0 != HFImport.metadataFile
                && !$0.hasPrefix(".") && !$0.hasSuffix(".safetensors") && !quantizationRecords.contains($0)
        }
        // A fresh ModelOpt quantization writes its own hf_quant_config.json.
        if quantizationConfig?.modelopt != nil { companionFiles.append(Self.modeloptConfigFile) }
        self.companionFiles = companionFiles.sorted()
    }

    /// Per source file name, the `__metadata__` recorded at import (nil inside: the file had none).
    static func recordedMetadata(_ path: String) throws -> [String: [(key: String, value: String)]?] {
        guard FileManager.default.fileExists(atPath: path) else { return [:] }
        guard let files = try HFConfig(path: path).document["metadata"]?.objectMembers else {
            throw ExportError.damagedRecord(file: path, reason: "needs an object member `metadata`")
        }
        var result: [String: [(key: String, value: String)]?] = [:]
        for (name, value) in files {
            if value.isNull { result[name] = .some(nil); continue }
            guard let members = value.objectMembers else {
                throw ExportError.damagedRecord(file: path, reason: "metadata of `\(name)` is neither an object nor null")
            }
            result[name] = try members.map { member in
                guard let text = member.value.stringValue else {
                    throw ExportError.damagedRecord(file: path, reason: "metadata `\(member.key)` of `\(name)` is not a string")
                }
                return (member.key, text)
            }
        }
        return result
    }

    /// Where the HF side's config lives: given, recorded at import beside the iterations, or
    /// written from the checkpoint's training args.
    static func configDirectory(given: String?, folder: MegatronCheckpointFolder, checkpoint path: String, tables: [MappingTable],
                                tokenizer: String?) throws -> (String, TrainingConfig?) {
        do {
            return (try configDirectory(given: given, folder: folder, checkpoint: path), nil)
        } catch ExportError.hfConfigRequired {
            guard let made = try TrainingConfig.synthesize(folder: folder, checkpoint: path, tables: tables, tokenizerDirectory: tokenizer) else {
                throw ExportError.hfConfigRequired(checkpoint: path)
            }
            return (made.directory, made)
        }
    }

    /// Where the HF side's config lives: given, or recorded at import beside the iterations.
    static func configDirectory(given: String?, folder: MegatronCheckpointFolder, checkpoint path: String) throws -> String {
        var candidates: [String] = []
        if let given { candidates.append(given) }
        if let save = folder.saveDirectory { candidates.append((save as NSString).appendingPathComponent(recordedFolder)) }
        candidates.append(((folder.directory as NSString).deletingLastPathComponent as NSString).appendingPathComponent(recordedFolder))
        guard let directory = candidates.first(where: { FileManager.default.fileExists(atPath: ($0 as NSString).appendingPathComponent("config.json")) }) else {
            throw ExportError.hfConfigRequired(checkpoint: path)
        }
        return directory
    }

    /// The `weight_map` of the source's recorded index, as indices into its few file names: its
    /// grouping is reused when it lists exactly the tensors being written. An index that is not
    /// valid JSON or names a file outside the output folder is an error.
    struct RecordedShardIndex {
        var fileNames: [String] = []
        /// Per tensor, by the 64-bit XXH3 of its name, its index in `fileNames`: 12 bytes a tensor,
        /// where the names themselves held 7 MB through the whole plan at Ultra's size. Two
        /// recorded names of one hash make the count short (the layout is then not reused); a
        /// declared name taken for a recorded one would only move a tensor to another file.
        var fileOf: [UInt64: Int32] = [:]
        /// The index's `metadata` members other than `total_size`.
        var metadata: [(key: String, value: JSONValue)]

        /// Nil when the document has no `weight_map`.
        init?(document: JSONValue, path: String) throws {
            guard let map = document["weight_map"]?.objectMembers else { return nil }
            for member in map {
                guard let file = member.value.stringValue, !file.utf8.contains(UInt8(ascii: "/")), file != ".", file != "..", !file.isEmpty else {
                    throw HFFolderError.invalidIndex(file: path, reason: "weight_map value for `\(member.key)` is not a plain file name")
                }
            }
            metadata = document["metadata"]?.objectMembers?.filter { $0.key != "total_size" } ?? []
            // The last entry of a name wins, as Python's json reads a repeated key.
            var fileIndex: [String: Int32] = [:]
            fileOf.reserveCapacity(map.count)
            for member in map {
                let file = member.value.stringValue!
                let index = fileIndex[file] ?? {
                    fileNames.append(file)
                    fileIndex[file] = Int32(fileNames.count - 1)
                    return Int32(fileNames.count - 1)
                }()
                fileOf[Self.nameHash(member.key)] = index
            }
        }

        static func nameHash(_ name: String) -> UInt64 {
            var name = name
            return name.withUTF8 { XXH3Hasher.hash(UnsafeRawBufferPointer($0)) }
        }

        /// The files with their tensors in declaration order, sorted by file name; nil unless the
        /// recorded names are exactly the declared ones (declared names are distinct).
        func layout(_ declarations: [TensorDeclaration]) -> [(name: String, tensors: [TensorDeclaration])]? {
            guard fileOf.count == declarations.count else { return nil }
            var groups = [[TensorDeclaration]](repeating: [], count: fileNames.count)
            for declaration in declarations {
                guard let file = fileOf[Self.nameHash(declaration.name)] else { return nil }
                groups[Int(file)].append(declaration)
            }
            return fileNames.indices.filter { !groups[$0].isEmpty }.sorted { fileNames[$0] < fileNames[$1] }.map { (fileNames[$0], groups[$0]) }
        }
    }

    /// `cast N tensors: bfloat16 -> float32 (N), …; kept: …`, or nil without casts.
    public var castSummary: String? { Self.castSummary(casts: casts, kept: keptDTypes) }

    /// `cast N tensors: bfloat16 -> float32 (N), …; kept: …`, or nil without casts (export and import).
    public static func castSummary(casts: [String: ElementCast], kept keptDTypes: [String]) -> String? {
        guard !casts.isEmpty || !keptDTypes.isEmpty else { return nil }
        var counts: [String: Int] = [:]
        for cast in casts.values { counts["\(cast.from) -> \(cast.to)", default: 0] += 1 }
        let pairs = counts.keys.sorted().map { "\($0) (\(counts[$0]!))" }.joined(separator: ", ")
        return "cast \(casts.count) tensor(s)" + (pairs.isEmpty ? "" : ": \(pairs)")
            + (keptDTypes.isEmpty ? "" : "; kept in their dtype (the table's dtype_kept): \(keptDTypes.sorted().joined(separator: ", "))")
    }

    public var totalBytes: Int64 { shards.reduce(0) { $0 + $1.tensors.reduce(0) { $0 + $1.byteCount } } }

    /// Writes the folder under a staging name and publishes it by rename.
    /// Writes the HF folder; `resume` as for `HFImport.run`.
    public func run(executor: MoveExecutor, progress: ProgressCounter? = nil, resume: Bool = false, job: JobPlacement = .alone) throws {
        precondition(!planOnly, "an export planned with planOnly is run")
        let folder = try OutputFolder(path: outputPath, resume: resume, job: job)
        for note in folder.notes { progress?.note(note) }
        // All shards at once, one lane per file: workers write different files (writes to one
        // file serialize on its inode lock).
        let layout = shards.map { shard in
            "\(shard.name) \(String(describing: shardMetadata[shard.name])): "
                + shard.tensors.map { "\($0.name) \($0.dtype) \($0.shape) \(casts[$0.name].map { "\($0)" } ?? "")" }.joined(separator: ", ")
        }
        let records = try StagingRecords(folder: folder, fingerprint: StagingRecords.fingerprint(
            command: "export", settings: layout.joined(separator: "\n") + "\nquantize \(quantization.map(String.init(describing:)) ?? "none")",
            sources: sourceFiles), workers: executor.workers)
        let quantized = self.quantized, scaleWeights = self.scaleWeights, recordedCopies = self.recordedCopies
        if folder.resumed { progress?.note(records.keptNote) }
        let entries = try PlannedWriting.writeSafetensors(
            shards: shards.map { shard in
                // The source file's own header metadata when recorded, else transformers' usual one.
                let metadata = shardMetadata[shard.name] ?? [("format", "pt")]
                return (folder.stagedPath(shard.name), shard.name, shard.tensors, metadata)
            }, executor: executor,
            progress: progress, casts: casts, records: records
        ) { tensor, plan in
            if let copy = recordedCopies[tensor.name] {
                plan.append(.copy(source: plan.source(copy.file), range: copy.range))
                return nil
            }
            // A scale tensor reads its weight's elements, as the weight's codes do.
            let weightName = scaleWeights[tensor.name] ?? tensor.name
            Self.appendMoves(of: weightName, reads: try reads(of: weightName), to: &plan)
            return quantized[weightName]?.transform(of: tensor.name, in: &plan)
        }
        if let indexBytes {
            let index = try AtomicOutputFile(path: folder.stagedPath(HFCheckpointFolder.indexFileName))
            try index.write(indexBytes, at: 0)
            try index.publish()
        }
        for name in companionFiles {
            let path = (configDirectory as NSString).appendingPathComponent(name)
            if name == Self.modeloptConfigFile, let modelopt = quantizationConfig?.modelopt {
                let file = try AtomicOutputFile(path: folder.stagedPath(name))
                try file.write(Array((JSONWriter.pythonIndented(modelopt, sortKeys: false) + "\n").utf8), at: 0)
                try file.publish()
                continue
            }
            // like-source keeps the recorded config.json as it is (its quantization_config is the source's).
            if quantization != .likeSource, name == "config.json", let members = try HFConfig(path: path).document.objectMembers,
                quantizationConfig != nil || (dequantizedSource && members.contains(where: { $0.key == "quantization_config" })) {
                var written = members.filter { $0.key != "quantization_config" }
                if let config = quantizationConfig?.config { written.append(("quantization_config", config)) }
                let file = try AtomicOutputFile(path: folder.stagedPath(name))
                try file.write(Array((JSONWriter.pythonIndented(.object(written), sortKeys: false) + "\n").utf8), at: 0)
                try file.publish()
                continue
            }
            try copyFileContents(from: path, to: folder.stagedPath(name))
        }
        try records.finish()
        // Last: the manifest covers every byte of every file written before it.
        try ChecksumManifest(kind: .hfSafetensors, entries: entries).writeCovering(root: folder.stagingPath)
        // A source written to during the run could have given mixed bytes: nothing is published.
        try ReadOnlyFile.checkUnchanged(sourceFiles)
        try folder.publish()
    }

    /// The moves that fill HF tensor `name`, in data order, into `plan`'s open group.
    static func appendMoves(of name: String, reads: [(reads: BoxReads, base: Int64)], to plan: inout ConversionPlan) {
        // A tensor of one row block may be interleaved (a row-parallel weight from TP > 1).
        let blocks = reads.sorted { $0.base < $1.base }
        let interleaved = blocks.count == 1 && blocks[0].reads.interleaved
        if interleaved { plan.interleaveOpenGroup() }
        var filled: Int64 = 0
        for block in blocks {
            for move in interleaved ? block.reads.moves : block.reads.deinterleaved {
                precondition(interleaved || block.base + move.destinationOffset == filled, "the reads of `\(name)` do not tile it")
                plan.append(move.planned(source: plan.source(move.file), keepingRows: interleaved))
                filled += move.byteCount
            }
        }
    }

    /// The plan `run` executes, made without writing anything (for golden tests and checks):
    /// one group per tensor, shard by shard, group `g` filling `tensors[g]` of shard
    /// `output(group: g)` at `offset(group: g)`.
    public func conversionPlan() throws -> (plan: ConversionPlan, tensors: [(shard: String, tensor: SafetensorsTensorInfo)]) {
        var plan = ConversionPlan()
        var tensors: [(shard: String, tensor: SafetensorsTensorInfo)] = []
        for (index, shard) in shards.enumerated() {
            let layout = try SafetensorsLayout(tensors: shard.tensors, metadata: shardMetadata[shard.name] ?? [("format", "pt")], file: shard.name)
            for tensor in layout.tensors {
                Self.appendMoves(of: tensor.name, reads: try reads(of: tensor.name), to: &plan)
                plan.endGroup(output: index, offset: layout.dataStart + tensor.dataOffsets.offset, cast: casts[tensor.name])
                tensors.append((shard.name, tensor))
            }
        }
        return (plan, tensors)
    }

    public static let modeloptConfigFile = "hf_quant_config.json"

    /// The config a fresh `--quantize` writes, as the releases write it: block FP8 as DeepSeek-V3 /
    /// Qwen3's `quantization_config` (transformers' FineGrainedFP8), ModelOpt FP8 as NVIDIA's FP8
    /// releases (config.json's `quantization_config` and hf_quant_config.json). No activation or
    /// KV-cache scales are written (there is no calibration): activations are `dynamic` for block
    /// FP8, and the ModelOpt config declares no KV-cache quantization.
    static func quantizationConfig(_ quantize: ExportQuantization, excluded: [String]) -> (config: JSONValue, modelopt: JSONValue?) {
        func strings(_ list: [String]) -> JSONValue { .array(list.map { .string($0) }) }
        switch quantize {
        case .fp8Block(let size):
            // transformers matches modules_to_not_convert as name suffixes: ModelOpt's leading `*` dropped.
            let names = excluded.map { $0.hasPrefix("*") ? String($0.dropFirst()) : $0 }
            return (.object([("activation_scheme", .string("dynamic")), ("fmt", .string("e4m3")), ("quant_method", .string("fp8")),
                             ("weight_block_size", .array([.number(JSONNumber(size)), .number(JSONNumber(size))])),
                             ("modules_to_not_convert", strings(names))]), nil)
        case .fp8Tensor, .likeSource:
            let producer = JSONValue.object([("name", .string("nembridge")), ("version", .string("0.1.0"))])
            let quantization: [(String, JSONValue)] = [("quant_algo", .string("FP8")), ("kv_cache_quant_algo", .null), ("exclude_modules", strings(excluded))]
            return (.object([("quant_method", .string("modelopt")), ("producer", producer)] + quantization),
                    .object([("producer", producer), ("quantization", .object(quantization))]))
        }
    }

    /// `quantized N weights: fp8-block:128 (N fresh …)`, or nil without --quantize.
    public var quantizationSummary: String? {
        guard let quantization else { return nil }
        return "quantized \(quantized.count) weight(s) (\(quantization))" + (recordedCopies.isEmpty ? "" : ", \(recordedCopies.count) recorded scale(s) copied")
    }

    public func planText() -> String { PlanTextOutput.collect(writePlanText) }

    /// The plan, line by line (streamed: a 51,000-tensor plan is 4 MB of text, and its lines held
    /// as strings were the peak of a dry run).
    public func writePlanText(_ out: PlanTextOutput) {
        out.line("export \(directory) -> \(outputPath)")
        if let legacy {
            out.line("legacy checkpoint: \(legacy.layout.sizes), \(legacy.checkpoint.ranks.count) rank files")
        }
        out.line("architecture: \(mapping.model.table.name), config from " + (trainingConfig.map { _ in "the checkpoint's training args" } ?? configDirectory))
        if let checkpoint = source as? TorchDistCheckpoint, checkpoint.itemsAssumed > 0 {
            out.line(checkpoint.assumedItemsNote)
        }
        for shard in shards {
            out.line("  \(shard.name): \(shard.tensors.count) tensors, \(formatBytes(shard.tensors.reduce(0) { $0 + $1.byteCount }))")
            for tensor in shard.tensors {
                out.write("    ")
                out.write(tensor.name)
                out.write(" ")
                out.write(formatShape(tensor.shape))
                out.write(" \(tensor.dtype) <- ")
                out.write(blocks[tensor.name]?.readCount ?? 0)
                out.line(" read(s)")
            }
        }
        if indexMetadata != nil { out.line("  \(HFCheckpointFolder.indexFileName)") }
        for name in companionFiles { out.line("  \(name) (" + (trainingConfig.map { _ in "written from the training args" } ?? "from \(configDirectory)") + ")") }
        if let trainingConfig {
            out.line(trainingConfig.tokenizerSource.map { "tokenizer files from \($0)" }
                     ?? "no tokenizer carried (give --tokenizer DIR; args.tokenizer_model names no Hugging Face tokenizer folder)")
        }
        if let summary = castSummary { out.line(summary) }
        if let summary = quantizationSummary { out.line(summary) }
        if !skippedKeys.isEmpty { out.line("skipped training state: \(skippedKeys.count) keys (\(skippedKeys.prefix(6).joined(separator: ", ")))") }
        out.line("total \(formatBytes(totalBytes)); peak memory: the buffer pool plus headers")
    }
}

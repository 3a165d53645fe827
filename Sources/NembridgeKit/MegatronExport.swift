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

    public var description: String {
        switch self {
        case .hfConfigRequired(let checkpoint):
            "\(MessageText.path(checkpoint)): no Hugging Face config.json recorded with this checkpoint (it was not imported by nembridge); give the model's config folder with --hf-config DIR"
        case .damagedRecord(let file, let reason):
            "\(MessageText.path(file)): damaged record of the imported model: \(MessageText.quoted(reason, limit: nil))"
        }
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
    public let configDirectory: String
    /// The config written from the checkpoint's training args, when none was recorded or given.
    public let trainingConfig: TrainingConfig?
    public let shards: [(name: String, tensors: [TensorDeclaration])]
    public let indexBytes: [UInt8]?
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
    /// `__metadata__` of each output file as the imported source had it (absent: not recorded).
    let shardMetadata: [String: [(key: String, value: String)]?]
    /// Per HF tensor: the reads of each of its row blocks (at `base` bytes into the tensor).
    let reads: [String: [(reads: BoxReads, base: Int64)]]

    /// Every source file the reads touch, once each (for the resume fingerprint and the final
    /// unchanged-source check).
    static func sourceFiles(_ reads: [String: [(reads: BoxReads, base: Int64)]]) -> [ReadOnlyFile] {
        var seen = Set<ObjectIdentifier>()
        var files: [ReadOnlyFile] = []
        for file in reads.values.joined().lazy.flatMap({ $0.reads.moves.lazy.map(\.file) }) where seen.insert(ObjectIdentifier(file)).inserted {
            files.append(file)
        }
        return files
    }

    public init(checkpoint path: String, output: String, options: Options = Options()) throws {
        let folder = try MegatronCheckpointFolder(path: path)
        directory = folder.directory
        outputPath = output
        let tables = try MappingTable.load(directory: options.mappingsDirectory)
        (configDirectory, trainingConfig) = try Self.configDirectory(given: options.hfConfigDirectory, folder: folder, checkpoint: path,
                                                                     tables: tables, tokenizer: options.tokenizerDirectory)
        let config = try HFConfig(path: (configDirectory as NSString).appendingPathComponent("config.json"))
        let model = try ResolvedModel.resolve(tables: tables, config: config.document, configPath: config.path)
        var dtypes: [String: DType] = [:]
        if folder.format == .legacyTorch {
            let legacy = try LegacyCheckpointSource(checkpoint: try LegacyTorchCheckpoint(directory: folder.directory, folder: folder),
                                                    model: model)
            self.legacy = legacy
            source = legacy.tensors
            mapping = legacy.mapping
            skippedKeys = legacy.checkpoint.trainingStateKeys
        } else {
            let checkpoint = try TorchDistCheckpoint(folder: folder)
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

        let megatronSpecs = Dictionary(uniqueKeysWithValues: mapping.megatronTensors.map { ($0.name, $0) })
        var hfDType: [String: DType] = [:]
        var reads: [String: [(reads: BoxReads, base: Int64)]] = [:]
        let hfShapes = Dictionary(uniqueKeysWithValues: mapping.hfTensors.map { ($0.name, $0.shape) })
        for item in mapping.correspondences {
            let spec = megatronSpecs[item.megatron.tensor]!
            let dtype = dtypes[spec.key]!
            hfDType[item.hf.tensor] = dtype
            let trailing = Array(spec.shape.dropFirst())
            let rowBytes = Int64(ShapeArithmetic.byteCount(trailing, dtype) ?? 0)
            let (offsets, sizes) = spec.box(rows: item.megatron.rows)
            let base = Int64(item.hf.rows.lowerBound) * rowBytes
            reads[item.hf.tensor, default: []].append((try source.boxReads(key: spec.key, offsets: offsets, sizes: sizes), base))
        }
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
        self.casts = casts
        keptDTypes = kept
        let declarations = mapping.hfTensors.map {
            TensorDeclaration(name: dialect.toSource($0.name), dtype: casts[dialect.toSource($0.name)]?.to ?? hfDType[$0.name]!, shape: hfShapes[$0.name]!)
        }
        if dialect.prefix != dialect.source {
            reads = Dictionary(uniqueKeysWithValues: reads.map { (dialect.toSource($0.key), $0.value) })
        }

        // The recorded source layout when there is one (same files, same tensors per file).
        let recordedIndex = (directory as NSString).appendingPathComponent(HFCheckpointFolder.indexFileName)
        var shards: [(name: String, tensors: [TensorDeclaration])] = []
        var indexBytes: [UInt8]?
        // The index is read once, and its document (51,000 names at Ultra's size) is released
        // before the new index is written.
        let recorded = try FileManager.default.fileExists(atPath: recordedIndex) ? { () throws -> (layout: [(name: String, tensors: [TensorDeclaration])], extra: [(key: String, value: JSONValue)])? in
            let index = try HFConfig(path: recordedIndex).document
            guard let layout = try Self.recordedLayout(index, path: recordedIndex, declarations) else { return nil }
            return (layout, index["metadata"]?.objectMembers?.filter { $0.key != "total_size" } ?? [])
        }() : nil
        if let recorded {
            shards = recorded.layout
            let plan = HFShardPlan(shards: shards.map { HFShardPlan.Shard(fileName: $0.name, tensors: $0.tensors) })
            indexBytes = plan.indexFileBytes(extraMetadata: recorded.extra)
        } else {
            let plan = HFShardPlan.greedy(declarations, maxShardSize: options.maxShardSize)
            shards = plan.shards.map { ($0.fileName, $0.tensors) }
            if plan.isSharded {
                let parameters = declarations.reduce(0) { $0 + (ShapeArithmetic.elementCount($1.shape) ?? 0) }
                indexBytes = plan.indexFileBytes(extraMetadata: [("total_parameters", .number(JSONNumber(parameters)))])
            }
        }
        self.shards = shards
        self.indexBytes = indexBytes
        shardMetadata = try Self.recordedMetadata((directory as NSString).appendingPathComponent(HFImport.metadataFile))
        self.reads = reads
        // An import of a quantized folder recorded its quantization: the export writes the
        // dequantized tensors, so the record, ModelOpt's hf_quant_config.json and config.json's
        // quantization_config are not carried over (config.json is written without it).
        dequantizedSource = FileManager.default.fileExists(atPath: (directory as NSString).appendingPathComponent(HFImport.quantizationFile))
        let quantizationRecords = dequantizedSource ? [HFImport.quantizationFile, "hf_quant_config.json"] : []
        companionFiles = try FileManager.default.contentsOfDirectory(atPath: directory).filter {
            $0 != HFCheckpointFolder.indexFileName && $0 != HFImport.dialectFile && $0 != HFImport.metadataFile
                && !$0.hasPrefix(".") && !$0.hasSuffix(".safetensors") && !quantizationRecords.contains($0)
        }.sorted()
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

    /// The recorded index's grouping, if it lists exactly the tensors being written. An index
    /// that is not valid JSON or names a file outside the output folder is an error.
    static func recordedLayout(_ document: JSONValue, path: String, _ declarations: [TensorDeclaration]) throws -> [(name: String, tensors: [TensorDeclaration])]? {
        guard let map = document["weight_map"]?.objectMembers else { return nil }
        for member in map {
            guard let file = member.value.stringValue, !file.utf8.contains(UInt8(ascii: "/")), file != ".", file != "..", !file.isEmpty else {
                throw HFFolderError.invalidIndex(file: path, reason: "weight_map value for `\(member.key)` is not a plain file name")
            }
        }
        // The last entry of a name wins, as Python's json reads a repeated key. The recorded names
        // must be exactly the declared ones (declared names are distinct): no name or set copies
        // beside this one map, which at Ultra's 51,000 tensors cost 10 MB.
        var fileOf: [String: String] = [:]
        fileOf.reserveCapacity(map.count)
        for member in map { fileOf[member.key] = member.value.stringValue }
        guard fileOf.count == declarations.count else { return nil }
        var files: [String] = []
        var groups: [String: [TensorDeclaration]] = [:]
        for declaration in declarations {
            guard let file = fileOf[declaration.name] else { return nil }
            if groups[file] == nil { files.append(file) }
            groups[file, default: []].append(declaration)
        }
        return files.sorted().map { ($0, groups[$0]!) }
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
        let folder = try OutputFolder(path: outputPath, resume: resume, job: job)
        for note in folder.notes { progress?.note(note) }
        // All shards at once, one lane per file: workers write different files (writes to one
        // file serialize on its inode lock).
        let reads = self.reads
        let layout = shards.map { shard in
            "\(shard.name) \(String(describing: shardMetadata[shard.name])): "
                + shard.tensors.map { "\($0.name) \($0.dtype) \($0.shape) \(casts[$0.name].map { "\($0)" } ?? "")" }.joined(separator: ", ")
        }
        let records = try StagingRecords(folder: folder, fingerprint: StagingRecords.fingerprint(
            command: "export", settings: layout.joined(separator: "\n"), sources: Self.sourceFiles(reads)), workers: executor.workers)
        if folder.resumed { progress?.note(records.keptNote) }
        let entries = try PlannedWriting.writeSafetensors(
            shards: shards.map { shard in
                // The source file's own header metadata when recorded, else transformers' usual one.
                let metadata = shardMetadata[shard.name] ?? [("format", "pt")]
                return (folder.stagedPath(shard.name), shard.name, shard.tensors, metadata)
            }, executor: executor,
            progress: progress, casts: casts, records: records
        ) { tensor, plan in Self.appendMoves(of: tensor.name, reads: reads, to: &plan) }
        if let indexBytes {
            let index = try AtomicOutputFile(path: folder.stagedPath(HFCheckpointFolder.indexFileName))
            try index.write(indexBytes, at: 0)
            try index.publish()
        }
        for name in companionFiles {
            let path = (configDirectory as NSString).appendingPathComponent(name)
            if dequantizedSource, name == "config.json", let members = try HFConfig(path: path).document.objectMembers,
                members.contains(where: { $0.key == "quantization_config" }) {
                let file = try AtomicOutputFile(path: folder.stagedPath(name))
                try file.write(Array((JSONWriter.pythonIndented(.object(members.filter { $0.key != "quantization_config" }), sortKeys: false) + "\n").utf8), at: 0)
                try file.publish()
                continue
            }
            try copyFileContents(from: path, to: folder.stagedPath(name))
        }
        try records.finish()
        // Last: the manifest covers every byte of every file written before it.
        try ChecksumManifest(kind: .hfSafetensors, entries: entries).writeCovering(root: folder.stagingPath)
        // A source written to during the run could have given mixed bytes: nothing is published.
        try ReadOnlyFile.checkUnchanged(Self.sourceFiles(reads))
        try folder.publish()
    }

    /// The moves that fill HF tensor `name`, in data order, into `plan`'s open group.
    static func appendMoves(of name: String, reads: [String: [(reads: BoxReads, base: Int64)]], to plan: inout ConversionPlan) {
        // A tensor of one row block may be interleaved (a row-parallel weight from TP > 1).
        let blocks = (reads[name] ?? []).sorted { $0.base < $1.base }
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
                Self.appendMoves(of: tensor.name, reads: reads, to: &plan)
                plan.endGroup(output: index, offset: layout.dataStart + tensor.dataOffsets.offset, cast: casts[tensor.name])
                tensors.append((shard.name, tensor))
            }
        }
        return (plan, tensors)
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
        for shard in shards {
            out.line("  \(shard.name): \(shard.tensors.count) tensors, \(formatBytes(shard.tensors.reduce(0) { $0 + $1.byteCount }))")
            for tensor in shard.tensors {
                out.write("    ")
                out.write(tensor.name)
                out.write(" ")
                out.write(formatShape(tensor.shape))
                out.write(" \(tensor.dtype) <- ")
                out.write(reads[tensor.name]?.reduce(0) { $0 + $1.reads.moves.count } ?? 0)
                out.line(" read(s)")
            }
        }
        if indexBytes != nil { out.line("  \(HFCheckpointFolder.indexFileName)") }
        for name in companionFiles { out.line("  \(name) (" + (trainingConfig.map { _ in "written from the training args" } ?? "from \(configDirectory)") + ")") }
        if let trainingConfig {
            out.line(trainingConfig.tokenizerSource.map { "tokenizer files from \($0)" }
                     ?? "no tokenizer carried (give --tokenizer DIR; args.tokenizer_model names no Hugging Face tokenizer folder)")
        }
        if let summary = castSummary { out.line(summary) }
        if !skippedKeys.isEmpty { out.line("skipped training state: \(skippedKeys.count) keys (\(skippedKeys.prefix(6).joined(separator: ", ")))") }
        out.line("total \(formatBytes(totalBytes)); peak memory: the buffer pool plus headers")
    }
}

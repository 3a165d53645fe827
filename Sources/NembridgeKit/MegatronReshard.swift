import Execution
import Foundation
import MegatronCheckpoint
import SafetensorsFormat
import TensorCore
import TorchPickle
import WeightMapping

public enum ReshardError: Error, Equatable, CustomStringConvertible {
    /// The distributed optimizer's dp-reshardable form (flat per-bucket buffers laid out for one
    /// TP/PP/EP layout) cannot be moved to another one.
    case dpReshardableOptimizer(checkpoint: String, from: String, to: String)
    /// Fully-reshardable optimizer state whose shape differs from its re-sharded parameter's.
    case optimizerShape(key: String, shape: [Int], parameterShape: [Int])

    public var description: String {
        switch self {
        case .dpReshardableOptimizer(let checkpoint, let from, let to):
            "\(checkpoint): the distributed optimizer state is dp-reshardable (flat per-bucket buffers of the \(from) layout) and cannot be re-sharded to \(to); save the checkpoint with --dist-ckpt-optim-fully-reshardable, or give --drop-optimizer to re-shard the model without it"
        case .optimizerShape(let key, let shape, let parameterShape):
            "optimizer state `\(key)` has shape \(shape), its parameter \(parameterShape) in the target layout (the padded vocabulary changes with TP); give --drop-optimizer to re-shard the model without it"
        }
    }
}

/// `nembridge reshard --megatron`: rewrites a torch_dist checkpoint with the chunks a target
/// tensor/expert-parallel layout reads (column rows, SwiGLU fragments, row-parallel columns,
/// experts one by one), whatever the source's chunking. Each target chunk is assembled from the
/// source chunks it overlaps, by byte ranges; objects and the common state are carried over.
public struct MegatronReshard: Sendable {
    public struct Options: Sendable {
        public var tensorParallel = 1
        public var pipelineParallel = 1
        public var expertParallel = 1
        public var expertTensorParallel: Int?
        /// Layers of the first / last pipeline stage when not the even split.
        public var firstStageLayers: Int?
        public var lastStageLayers: Int?
        /// The output format: torch_dist (layers stacked globally, any pipeline size reads it) or
        /// the legacy per-rank files.
        public var format: MegatronOutputFormat = .torchDist
        public var hfConfigDirectory: String?
        public var mappingsDirectory: String?
        public var fileCount = 2
        /// Leave the optimizer state (and the scheduler's) out of the output.
        public var dropOptimizer = false
        /// Only the plan is wanted (a dry run): of the source items alike in dtype, chunk sizes and
        /// length one is opened and the others take its layout. Such a plan cannot be run.
        public var planOnly = false

        public init() {}

        /// The target layout.
        public var parallelSizes: ParallelSizes {
            ParallelSizes(tensor: tensorParallel, pipeline: pipelineParallel, expert: expertParallel, expertTensor: expertTensorParallel,
                          firstStageLayers: firstStageLayers, lastStageLayers: lastStageLayers)
        }
    }

    /// The source's global tensors (a torch_dist checkpoint, or a legacy one placed by the mapping).
    public let source: any GlobalTensorSource
    /// The torch_dist source, when it is one (its objects and training state are carried).
    public let checkpoint: TorchDistCheckpoint?
    public let legacySource: LegacyCheckpointSource?
    /// The source iteration directory.
    public let directory: String
    public let outputPath: String
    public let layout: TorchDistLayout
    /// The legacy files written instead of `layout`, for `--ckpt-format torch`.
    public let legacyPlan: LegacyCheckpointPlan?
    public let options: Options
    /// The model's mapping; from a torch_dist source only its Megatron side (`megatronSide(keepingExtraState:)`).
    public let mapping: MappingPlan
    /// Source entries a conversion drops (optimizer, RNG, scheduler state), by name.
    public let droppedState: [String]
    /// What happened to the training state, one line each (re-sharded optimizer, dropped RNG).
    public let trainingStateNotes: [String]
    /// The byte moves: group `i` fills target item `i` (empty for `--ckpt-format torch`, whose
    /// plan is `legacyPlan.plan`).
    public let plan: ConversionPlan
    /// Per Megatron tensor of the mapping: how the target chunks it.
    let chunkings: [TensorChunking]
    /// Per chunk grid of the layout (by `ChunkGrid.order`): the mapping's tensor it is of, or
    /// its optimizer state (grids past the end are carried training state).
    let gridTensors: [Int32]
    /// Fields of Megatron-Bridge's run_config.yaml set for the target, by section.
    let runConfigEdits: [String: [(key: String, value: String)]]
    /// The common state written (also as common.pt), when the source has one.
    let commonState: PickleValue?
    static let commonStateKey = "common_state/shard_0_1"

    /// `args.tensor_model_parallel_size` (and the expert sizes) set to the target's.
    static func settingParallelSizes(_ common: PickleValue, _ options: Options) -> PickleValue {
        guard case .dict(var entries) = common, let position = entries.firstIndex(where: { $0.key == .string("args") }) else { return common }
        entries[position].value = settingParallelSizes(arguments: entries[position].value, options)
        return .dict(entries)
    }

    /// `tp T, pp P, ep E, etp X` as the args give them (1 when unset).
    static func layoutText(_ arguments: PickleValue?) -> String {
        func size(_ name: String) -> Int { arguments?[name]?.intValue ?? 1 }
        let tensor = size("tensor_model_parallel_size")
        return "tp \(tensor), pp \(size("pipeline_model_parallel_size")), ep \(size("expert_model_parallel_size")), etp \(arguments?["expert_tensor_parallel_size"]?.intValue ?? tensor)"
    }

    static func settingParallelSizes(arguments: PickleValue, _ options: Options) -> PickleValue {
        var sizes: [(name: String, value: PickleValue)] = [
            ("tensor_model_parallel_size", .int(Int64(options.tensorParallel))), ("expert_model_parallel_size", .int(Int64(options.expertParallel))),
            ("pipeline_model_parallel_size", .int(Int64(options.pipelineParallel))), ("ckpt_format", .string(options.format.rawValue)),
        ]
        sizes.append(contentsOf: options.parallelSizes.pipelineSplitArguments(for: arguments))
        // Megatron-LM derives the expert tensor-parallel size when the args leave it unset.
        if arguments["expert_tensor_parallel_size"] != nil || options.expertTensorParallel != nil {
            sizes.append(("expert_tensor_parallel_size", .int(Int64(options.expertTensorParallel ?? options.tensorParallel))))
        }
        return arguments.settingNamespaceFields(sizes)
    }
    let saveDirectory: String?

    /// Which target ranks load a chunk: one tensor-parallel rank or all of them, and for expert
    /// weights the expert-parallel rank whose local experts include it.
    public struct TargetRank: Sendable, Hashable, CustomStringConvertible {
        public var tensorParallel: Int?
        public var expertParallel: Int?
        public var isExpert: Bool

        public var description: String {
            let tp = isExpert ? "etp" : "tp"
            let tensorText = tensorParallel.map { "\(tp) rank \($0)" } ?? "every \(tp) rank"
            return expertParallel.map { "ep rank \($0), \(tensorText)" } ?? tensorText
        }
    }

    /// Who reads target item `item` (nil for keys outside the mapping, kept as they were).
    public func targetRank(item: Int) -> TargetRank? {
        let (grid, part) = layout.grid(item: item)
        let order = Int(layout.grids[grid].order)
        guard order < gridTensors.count else { return nil }
        let tensor = Int(gridTensors[order])
        let spec = mapping.megatronTensors[tensor]
        let isExpert = spec.isRoutedExpert
        var reader = TargetRank(tensorParallel: chunkings[tensor].rank(part: part), expertParallel: nil, isExpert: isExpert)
        if isExpert, let expert = spec.prefix.last, let experts = spec.prefixSizes.last {
            reader.expertParallel = expert / max(1, experts / max(1, options.expertParallel))
        }
        return reader
    }

    public init(checkpoint path: String, output: String, options: Options = Options()) throws {
        let folder = try MegatronCheckpointFolder(path: path)
        directory = folder.directory
        outputPath = output
        self.options = options
        saveDirectory = folder.saveDirectory
        // The split axes come from the architecture's table, through the model's HF config.
        let tables = try MappingTable.load(directory: options.mappingsDirectory)
        let (configDirectory, trainingConfig) = try MegatronExport.configDirectory(given: options.hfConfigDirectory, folder: folder, checkpoint: path,
                                                                                   tables: tables, tokenizer: nil)
        let config = try HFConfig(path: (configDirectory as NSString).appendingPathComponent("config.json"))
        _ = trainingConfig  // read before this returns; the temporary folder goes with it
        var model = try ResolvedModel.resolve(tables: tables, config: config.document, configPath: config.path)
        try model.checkTensorParallel(options.tensorParallel)
        _ = try options.parallelSizes.stageLayers(layerCount: model.layerCount, config: config.path, field: model.table.layerCountArgument)
        var arguments: PickleValue?
        var common: PickleValue?
        if folder.format == .legacyTorch {
            let legacy = try LegacyCheckpointSource(checkpoint: try LegacyTorchCheckpoint(directory: folder.directory, folder: folder),
                                                    model: model)
            legacySource = legacy
            checkpoint = nil
            source = legacy.tensors
            mapping = legacy.mapping
            arguments = legacy.checkpoint.args
            droppedState = legacy.checkpoint.trainingStateKeys
            if let args = arguments {
                common = .dict([
                    (.string("args"), args), (.string("checkpoint_version"), .float(3.0)),
                    (.string("iteration"), legacy.checkpoint.ranks[0].topLevel.first { $0.key == "iteration" }?.value ?? .int(0)),
                    (.string("num_floating_point_operations_so_far"),
                     legacy.checkpoint.ranks[0].topLevel.first { $0.key == "num_floating_point_operations_so_far" }?.value ?? .int(0)),
                    (.string("content_metadata"), .dict([
                        (.string("singleton_local_shards"), .bool(false)), (.string("chained_optim_avoid_prefix"), .bool(true)),
                    ])),
                ])
            }
        } else {
            let checkpoint = try TorchDistCheckpoint(folder: folder, itemOpening: options.planOnly ? .oncePerLayout : .every)
            self.checkpoint = checkpoint
            legacySource = nil
            source = checkpoint
            // The embedded item (core 0.19) or common.pt (up to 0.18).
            common = try checkpoint.commonState()
            arguments = common?["args"]
            if arguments?["transformer_impl"]?.stringValue == "local" {
                model = try ResolvedModel(table: model.table, config: model.config, configPath: model.configPath, spec: .local)
            }
            var keyShapes: [String: [Int]] = [:]
            for (key, tensor) in checkpoint.metadata.tensors { keyShapes[key] = tensor.size }
            // Checked both ways, then only the Megatron side kept: nothing here writes HF tensors,
            // and only the legacy format's layout lists the extra-state modules.
            mapping = try MappingPlan(model: model, direction: .fromMegatron(keyShapes: keyShapes))
                .megatronSide(keepingExtraState: options.format == .torch)
            droppedState = options.format == .torch ? keyShapes.keys.filter(MappingPlan.isTrainingState).sorted() : []
        }
        try HFImport.checkExpertParallel(mapping, options.expertParallel)
        // Training state (torch_dist sources): the fully-reshardable optimizer state
        // (optimizer.state.<kind>.<parameter key>) follows its parameter's chunks; the
        // dp-reshardable form moves only to the same layout; RNG state is per rank and dropped on
        // a layout change.
        var optimizerKeys: [String: [String]] = [:]  // parameter key -> its optimizer state keys
        // Megatron-Bridge's run_config.yaml travels with the checkpoint, its layout set to the target's.
        var runConfigEdits: [String: [(key: String, value: String)]] = ["model": [
            ("tensor_model_parallel_size", "\(options.tensorParallel)"), ("pipeline_model_parallel_size", "\(options.pipelineParallel)"),
            ("expert_model_parallel_size", "\(options.expertParallel)"),
        ] + (options.expertTensorParallel.map { [("expert_tensor_parallel_size", "\($0)")] } ?? [])]
        var droppedTraining: Set<String> = []
        var notes: [String] = []
        if let checkpoint, options.format == .torchDist {
            // A checkpoint Megatron-Bridge saved has no args: its provider records the parallel sizes.
            let sourceSizes = Self.layoutText(try arguments ?? TrainingConfig.runConfig(folder: folder)?.sections["model"].map {
                PickleValue(json: .object($0.map { ($0.key, $0.value) }))
            })
            let targetSizes = "tp \(options.tensorParallel), pp \(options.pipelineParallel), ep \(options.expertParallel), etp \(options.expertTensorParallel ?? options.tensorParallel)"
            let layoutChanges = sourceSizes != targetSizes
            let keys = checkpoint.metadata.tensors.map(\.fqn) + checkpoint.metadata.bytesItems
            let optimizer = keys.filter { $0.hasPrefix("optimizer.") }
            if options.dropOptimizer {
                droppedTraining.formUnion(optimizer)
                if !optimizer.isEmpty { notes.append("optimizer state dropped (--drop-optimizer): \(optimizer.count) entries; resume with --no-load-optim") }
            } else if layoutChanges, optimizer.contains(where: { $0.hasPrefix("optimizer.distributed.") }) {
                throw ReshardError.dpReshardableOptimizer(checkpoint: path, from: sourceSizes, to: targetSizes)
            } else {
                for (key, _) in checkpoint.metadata.tensors where key.hasPrefix("optimizer.state.") {
                    let rest = key.dropFirst("optimizer.state.".count)
                    guard let dot = rest.firstIndex(of: ".") else { continue }
                    optimizerKeys[String(rest[rest.index(after: dot)...]), default: []].append(key)
                }
                if !optimizerKeys.isEmpty {
                    notes.append("optimizer state re-sharded with the model: \(optimizerKeys.values.reduce(0) { $0 + $1.count }) tensors")
                }
            }
            if layoutChanges {
                let rng = keys.filter { $0.hasPrefix("rng_state") || $0.hasPrefix("rerun_state") }
                droppedTraining.formUnion(rng)
                if !rng.isEmpty {
                    notes.append("RNG state dropped (per rank of the \(sourceSizes) layout): resume with --no-load-rng")
                    runConfigEdits["checkpoint", default: []].append(("save_rng", "false"))
                }
            }
            if options.dropOptimizer { runConfigEdits["checkpoint", default: []].append(("save_optim", "false")) }
        }
        let source = self.source
        var builder = TorchDistLayout.Builder()
        var chunkings: [TensorChunking] = []
        var mappedKeys = Set<String>()
        var gridTensors: [Int32] = []
        var firstDType: DType?
        for spec in mapping.megatronTensors {
            let isExpert = spec.isRoutedExpert
            let parallel = isExpert ? (options.expertTensorParallel ?? options.tensorParallel) : options.tensorParallel
            let chunking = try TensorChunking.of(spec, parallel: parallel)
            let dtype = try source.tensor(spec.key).dtype
            firstDType = firstDType ?? dtype
            chunking.add(spec, dtype: dtype, to: &builder)
            gridTensors.append(Int32(chunkings.count))
            mappedKeys.insert(spec.key)
            // Its optimizer state (fp32 moments and master copy) is chunked as the parameter is.
            for key in optimizerKeys[spec.key] ?? [] {
                let state = try source.tensor(key)
                guard state.size == spec.globalShape else {
                    throw ReshardError.optimizerShape(key: key, shape: state.size, parameterShape: spec.globalShape)
                }
                chunking.add(spec, key: key, dtype: state.dtype, to: &builder)
                gridTensors.append(Int32(chunkings.count))
                mappedKeys.insert(key)
            }
            chunkings.append(chunking)
        }
        self.chunkings = chunkings
        self.gridTensors = gridTensors
        if arguments == nil {
            // A plain DCP directory, or legacy files without args: describe the model from its config.
            var described = HFImport.Options()
            described.tensorParallel = options.tensorParallel
            described.pipelineParallel = options.pipelineParallel
            described.firstStageLayers = options.firstStageLayers
            described.lastStageLayers = options.lastStageLayers
            described.expertParallel = options.expertParallel
            described.expertTensorParallel = options.expertTensorParallel
            described.spec = mapping.model.spec
            described.format = options.format
            let generated = HFImport.commonState(model: mapping.model, mapping: mapping, options: described, dtype: firstDType)
            common = common ?? generated
            arguments = generated["args"]
            if case .dict(var entries)? = common, !entries.contains(where: { $0.key == .string("args") }), let args = arguments {
                entries.insert((.string("args"), args), at: 0)
                common = .dict(entries)
            }
        }
        var objects: [(key: String, bytes: [UInt8])] = []
        if let checkpoint, options.format == .torchDist {
            // Keys outside the mapping (training state) keep their chunks; objects are carried,
            // the common state with its args' parallel sizes set to the target's.
            for (key, tensor) in checkpoint.metadata.tensors where !mappedKeys.contains(key) && !droppedTraining.contains(key) {
                builder.declare(key: key, dtype: tensor.dtype, size: tensor.size)
                builder.add(key: key, metadata: tensor)
            }
            if options.dropOptimizer, case .dict(let entries)? = common {
                common = .dict(entries.filter { $0.key != .string("optimizer") && $0.key != .string("opt_param_scheduler") })
            } else if let value = common, let (regrouped, note) = Self.regroupingOptimizer(
                value, hasExperts: mapping.megatronTensors.contains(where: \.isRoutedExpert), targetExpertParallel: options.expertParallel) {
                common = regrouped
                notes.append(note)
            }
            // Items of equal bytes share one buffer: the 50,000 per-expert `_extra_state` objects
            // of an Ultra-sized checkpoint are one value, and held apart they were 39 MB.
            // (Found by their XXH3: hashing a [UInt8] element by element took longer than reading it.)
            var distinct: [UInt64: [UInt8]] = [:]
            objects = try checkpoint.metadata.bytesItems.filter { !droppedTraining.contains($0) }.map { key -> (String, [UInt8]) in
                guard key == Self.commonStateKey, let value = common else {
                    let bytes = try checkpoint.rawBytes(key: key)
                    let digest = bytes.withUnsafeBytes { XXH3Hasher.hash($0) }
                    if let known = distinct[digest] {
                        if known == bytes { return (key, known) }
                    } else {
                        distinct[digest] = bytes
                    }
                    return (key, bytes)
                }
                return (key, try TorchSaveArchive.objectArchive(.list([Self.settingParallelSizes(value, options)])))
            }
        } else if options.format == .torchDist {
            // From legacy files: the `_extra_state` objects Megatron-Core asks for (the common state is added below).
            objects.append(contentsOf: try HFImport.extraStateObjects(mapping))
        }
        trainingStateNotes = notes
        self.runConfigEdits = runConfigEdits
        commonState = common.map { Self.settingParallelSizes($0, options) }
        if options.format == .torchDist, !objects.contains(where: { $0.key == Self.commonStateKey }), let commonState {
            objects.insert((Self.commonStateKey, try TorchSaveArchive.objectArchive(.list([commonState]))), at: 0)
        }
        let layout = try builder.layout(objects: objects, fileCount: options.fileCount)
        self.layout = layout
        if options.format == .torch {
            plan = ConversionPlan()
            let spec = mapping.model.spec
            legacyPlan = try LegacyCheckpointPlan(
                mapping: mapping,
                sizes: options.parallelSizes,
                spec: spec, arguments: arguments ?? .none,  // set above from the source or the config
                iteration: { if case .number(let value)? = folder.iteration { value } else { 0 } }(),
                vocabDivisor: arguments?["make_vocab_size_divisible_by"]?.intValue ?? 128,
                dtype: { try source.tensor($0).dtype },
                fill: { piece, wholeTensor, plan in
                    try Self.appendBox(source.boxReads(key: piece.key, offsets: piece.offsets, sizes: piece.sizes), alone: wholeTensor, to: &plan)
                })
        } else {
            legacyPlan = nil
            var plan = ConversionPlan()
            // Every source chunk of the written keys is read at least once (409,000 at Ultra TP8
            // EP8): sized for that, the moves are not doubled past it (a third more at the peak).
            let sourceChunks = layout.keys.reduce(0) { $0 + ((try? source.tensor($1.fqn).chunks.count) ?? 0) }
            plan.reserve(groups: layout.tensorItemCount, moves: max(layout.tensorItemCount, sourceChunks))
            // The reads are found on every core, appended in item order.
            let plannedSource = source
            try ConcurrentBatches.forEach(count: layout.tensorItemIndices.count, { item in
                let chunk = layout.chunk(item: item)
                return try plannedSource.boxReads(key: layout.key(item: item), offsets: chunk.offsets.array, sizes: chunk.sizes.array)
            }, consume: { item, reads in
                Self.appendBox(reads, alone: true, to: &plan)
                plan.endGroup(output: layout.file(item: item), offset: layout.dataOffset(item: item))
            })
            self.plan = plan
        }
    }

    /// The reads of a box (tiling it: `boxReads` checks the cover) as moves of the open group;
    /// interleaved only when the box is `alone` in its group.
    static func appendBox(_ reads: BoxReads, alone: Bool, to plan: inout ConversionPlan) {
        let interleaved = reads.interleaved && alone
        if interleaved { plan.interleaveOpenGroup() }
        var filled: Int64 = 0
        for move in interleaved ? reads.moves : reads.deinterleaved {
            precondition(interleaved || move.destinationOffset == filled, "box pieces out of order")
            plan.append(move.planned(source: plan.source(move.file), keepingRows: interleaved))
            filled += move.byteCount
        }
    }

    public var totalBytes: Int64 { legacyPlan?.totalBytes ?? plan.totalBytes }

    public var iterationDirectoryName: String { (directory as NSString).lastPathComponent }

    /// Writes the resharded checkpoint; `resume` as for `HFImport.run`.
    public func run(executor: MoveExecutor, progress: ProgressCounter? = nil, resume: Bool = false, job: JobPlacement = .alone) throws {
        precondition(!options.planOnly, "a reshard planned with planOnly is run")
        let folder = try OutputFolder(path: outputPath, resume: resume, job: job)
        for note in folder.notes { progress?.note(note) }
        let records = try StagingRecords(folder: folder, fingerprint: StagingRecords.fingerprint(
            command: "reshard --megatron", settings: "\(options)", sources: legacyPlan?.plan.sources ?? plan.sources), workers: executor.workers)
        if folder.resumed { progress?.note(records.keptNote) }
        let iterationPath = folder.stagedPath(iterationDirectoryName)
        try FileManager.default.createDirectory(atPath: iterationPath, withIntermediateDirectories: true)
        let manifest: ChecksumManifest.Streamed
        if let legacyPlan {
            let entries = try legacyPlan.write(iterationPath: iterationPath, iterationName: iterationDirectoryName, executor: executor,
                                               progress: progress, records: records)
            manifest = ChecksumManifest(kind: .megatronTorch, entries: entries).streamed
        } else {
            manifest = try PlannedWriting.writeTorchDist(
                directory: iterationPath, iterationName: iterationDirectoryName, layout: layout, plan: plan, executor: executor,
                progress: progress, records: records)
            if let commonState {
                let file = try AtomicOutputFile(path: (iterationPath as NSString).appendingPathComponent("common.pt"))
                try file.write(try TorchSaveArchive.objectArchive(commonState), at: 0)
                try file.publish()
            }
            let runConfig = (directory as NSString).appendingPathComponent("run_config.yaml")
            if FileManager.default.fileExists(atPath: runConfig) {
                let handle = try ReadOnlyFile(path: runConfig)
                let text = String(decoding: try handle.readBytes(ByteRange(offset: 0, count: handle.size)), as: UTF8.self)
                let file = try AtomicOutputFile(path: (iterationPath as NSString).appendingPathComponent("run_config.yaml"))
                try file.write(Array(BridgeRunConfig.updating(text, runConfigEdits).utf8), at: 0)
                try file.publish()
            }
        }
        // What travels with the weights: the tracker, and the recorded HF files.
        let tracker = "latest_checkpointed_iteration.txt"
        if let save = saveDirectory, FileManager.default.fileExists(atPath: (save as NSString).appendingPathComponent(tracker)) {
            try copyFileContents(from: (save as NSString).appendingPathComponent(tracker), to: folder.stagedPath(tracker))
        } else {
            // An iteration directory given directly: the tracker Megatron-LM needs to find it.
            let text = iterationDirectoryName == "release" ? "release" : String(Int(iterationDirectoryName.dropFirst("iter_".count)) ?? 0)
            let file = try AtomicOutputFile(path: folder.stagedPath(tracker))
            try file.write(Array(text.utf8), at: 0)
            try file.publish()
        }
        let recorded = MegatronExport.recordedFolder.components(separatedBy: "/")[0]
        if let save = saveDirectory, FileManager.default.fileExists(atPath: (save as NSString).appendingPathComponent(recorded)) {
            try copyFolderContents(from: (save as NSString).appendingPathComponent(recorded), to: folder.stagedPath(recorded))
        }
        try records.finish()
        // Last: the manifest covers every byte of every file written before it.
        try manifest.writeCovering(root: folder.stagingPath)
        // A source written to during the run could have given mixed bytes: nothing is published.
        try ReadOnlyFile.checkUnchanged(legacyPlan?.plan.sources ?? plan.sources)
        try folder.publish()
    }

    public func planText() -> String { PlanTextOutput.collect(writePlanText) }

    /// Every target chunk with its reads and the rank that loads it, then the chunks and bytes
    /// per rank; streamed line by line.
    public func writePlanText(to out: PlanTextOutput) {
        out.line("reshard \(directory) -> \(outputPath)/\(iterationDirectoryName) as \(options.format.rawValue) (tp \(options.tensorParallel), pp \(options.pipelineParallel), ep \(options.expertParallel), etp \(options.expertTensorParallel ?? options.tensorParallel))")
        if let checkpoint, checkpoint.itemsAssumed > 0 { out.line(checkpoint.assumedItemsNote) }
        if let legacy = legacySource {
            out.line("source: legacy checkpoint, \(legacy.layout.sizes), \(legacy.checkpoint.ranks.count) rank files")
        }
        if !droppedState.isEmpty {
            out.line("dropped (not model weights): \(droppedState.joined(separator: ", "))")
        }
        for note in trainingStateNotes { out.line(note) }
        if let legacyPlan {
            legacyPlan.writePlanText(to: out)
            out.line("total \(formatBytes(totalBytes))")
            out.flush()
            return
        }
        // Lines are formatted a batch at a time on every core (a line per target chunk, 205,000
        // at Ultra's size at TP 4) and written in order; so are the per-rank totals, merged in
        // first-seen order. Written piece by piece: interpolating the offsets went through
        // `Array.description` and its dynamic casts, a fifth of the run.
        typealias Totals = (rank: TargetRank?, reader: String, chunks: Int, bytes: Int64)
        let items = layout.tensorItemIndices
        let linesPerBatch = 512
        var ranks: [(reader: String, chunks: Int, bytes: Int64)] = []
        var rankSlots: [TargetRank?: Int] = [:]
        let reshard = self
        // Nothing in a batch throws.
        try! ConcurrentBatches.forEach(count: (items.count + linesPerBatch - 1) / linesPerBatch, batchSize: 16, { batch in
            var totals: [Totals] = []
            let layout = reshard.layout
            let text = PlanTextOutput.bytes { out in
                for item in items[(items.startIndex + batch * linesPerBatch)..<min(items.endIndex, items.startIndex + (batch + 1) * linesPerBatch)] {
                    let rank = reshard.targetRank(item: item)
                    // A batch meets a few ranks: found by a walk, each named once.
                    let slot = totals.firstIndex { $0.rank == rank } ?? {
                        totals.append((rank, rank?.description ?? "as in the source", 0, 0))
                        return totals.count - 1
                    }()
                    totals[slot].chunks += 1
                    totals[slot].bytes += layout.byteCount(item: item)
                    let chunk = layout.chunk(item: item)
                    out.write("  ")
                    out.write(layout.key(item: item))
                    out.write(" chunk ")
                    out.write(shape: chunk.offsets)
                    out.write(" ")
                    out.write(shape: chunk.sizes)
                    out.write(" ")
                    out.write(layout.dtype(item: item).description)
                    out.write(" -> ")
                    out.write(layout.fileNames[layout.file(item: item)])
                    out.write("@")
                    out.write(layout.dataOffset(item: item))
                    out.write(" <- ")
                    out.write(reshard.plan.moveCount(group: item))
                    out.write(" read(s); loaded by ")
                    out.write(totals[slot].reader)
                    out.endLine()
                }
            }
            return (text, totals)
        }, consume: { _, batch in
            out.write(bytes: batch.0)
            for totals in batch.1 {
                if let slot = rankSlots[totals.rank] {
                    ranks[slot].chunks += totals.chunks
                    ranks[slot].bytes += totals.bytes
                } else {
                    rankSlots[totals.rank] = ranks.count
                    ranks.append((totals.reader, totals.chunks, totals.bytes))
                }
            }
        })
        out.line("per target rank (a rank also loads every chunk marked `every tp rank`, and its experts' `every etp rank` chunks):")
        for totals in ranks.sorted(by: { $0.reader < $1.reader }) {
            out.line("  \(totals.reader): \(totals.chunks) chunk(s), \(formatBytes(totals.bytes))")
        }
        out.line("objects: \(layout.objectItems.count); \(plan.summary); total \(formatBytes(totalBytes))")
        out.flush()
    }
}

import Execution
import Foundation
import SafetensorsFormat
import TensorCore

/// `nembridge reshard --hf`: rewrites a Hugging Face folder through the streaming safetensors
/// writer, keeping the source's shard layout or re-sharding to a maximum shard size. Tensor bytes
/// are moved, never held; config, tokenizer and other companion files are copied unchanged.
public struct HFReshard: Sendable {
    public struct PlannedFile: Sendable {
        public let name: String
        public let tensors: [TensorDeclaration]
        public let metadata: [(key: String, value: String)]?
        public var bytes: Int64 { tensors.reduce(0) { $0 + $1.byteCount } }
    }

    public let source: HFCheckpointFolder
    public let outputPath: String
    public let files: [PlannedFile]
    /// Bytes of `model.safetensors.index.json`, or nil for a single file.
    public let indexBytes: [UInt8]?
    public let companionFiles: [String]

    /// Plans the rewrite; nothing is written. `maxShardSize` nil keeps the source's layout.
    public init(source path: String, output: String, maxShardSize: Int64?) throws {
        source = try HFCheckpointFolder(directory: path)
        outputPath = output
        let declarations = source.files.map { file in
            file.tensors.map { TensorDeclaration(name: $0.name, dtype: $0.dtype, shape: $0.shape) }
        }
        let plan: HFShardPlan
        var metadataPerFile: [[(key: String, value: String)]?]
        if let maxShardSize {
            plan = HFShardPlan.greedy(declarations.flatMap { $0 }, maxShardSize: maxShardSize)
            // One metadata for all new files: the sources' if they agree, else {"format": "pt"}.
            let sourceMetadata = source.files.map { $0.header.metadataDictionary }
            let shared: [(key: String, value: String)]? =
                sourceMetadata.allSatisfy({ $0 == sourceMetadata[0] })
                ? source.files[0].header.metadata : [("format", "pt")]
            metadataPerFile = Array(repeating: shared, count: plan.shards.count)
        } else {
            plan = HFShardPlan(shards: zip(source.fileNames, declarations).map {
                HFShardPlan.Shard(fileName: $0, tensors: $1)
            })
            metadataPerFile = source.files.map { $0.header.metadata }
        }
        files = zip(plan.shards, metadataPerFile).map {
            PlannedFile(name: $0.fileName, tensors: $0.tensors, metadata: $1)
        }
        if plan.isSharded {
            var extra = source.index?["metadata"]?.objectMembers?.filter { $0.key != "total_size" } ?? []
            if !extra.contains(where: { $0.key == "total_parameters" }) {
                let parameters = source.tensors.reduce(0) { $0 + (ShapeArithmetic.elementCount($1.info.shape) ?? 0) }
                extra.append(("total_parameters", .number(JSONNumber(parameters))))
            }
            indexBytes = plan.indexFileBytes(extraMetadata: extra)
        } else {
            indexBytes = nil
        }
        companionFiles = try source.companionFiles()
    }

    public var totalBytes: Int64 { files.reduce(0) { $0 + $1.bytes } }

    /// Writes the folder under a staging name and publishes it by rename.
    /// Writes the resharded folder; `resume` as for `HFImport.run`.
    public func run(executor: MoveExecutor, progress: ProgressCounter? = nil, resume: Bool = false, job: JobPlacement = .alone) throws {
        let folder = try OutputFolder(path: outputPath, resume: resume, job: job)
        for note in folder.notes { progress?.note(note) }
        let layout = files.map { "\($0.name): \($0.tensors.map { "\($0.name) \($0.dtype) \($0.shape)" }) \(String(describing: $0.metadata))" }
        let records = try StagingRecords(folder: folder, fingerprint: StagingRecords.fingerprint(
            command: "reshard --hf", settings: layout.joined(separator: "\n"), sources: source.files.map(\.file)), workers: executor.workers)
        if folder.resumed { progress?.note(records.keptNote) }
        let source = self.source
        let entries = try PlannedWriting.writeSafetensors(
            shards: files.map { (folder.stagedPath($0.name), $0.name, $0.tensors, $0.metadata) }, executor: executor, progress: progress,
            records: records
        ) { tensor, plan in
            let (file, info) = try source.locate(tensor.name)
            plan.append(.copy(source: plan.source(file.file), range: file.fileRange(of: info)))
            return nil
        }
        if let indexBytes {
            let index = try AtomicOutputFile(path: folder.stagedPath(HFCheckpointFolder.indexFileName))
            try index.write(indexBytes, at: 0)
            try index.publish()
        }
        for name in companionFiles {
            let input = try ReadOnlyFile(path: (source.directory as NSString).appendingPathComponent(name))
            let output = try AtomicOutputFile(path: folder.stagedPath(name))
            try executor.run([ByteMove(source: input, range: ByteRange(offset: 0, count: input.size), destinationOffset: 0)],
                             into: output)
            try output.publish()
        }
        try records.finish()
        // Last: the manifest covers every byte of every file written before it.
        try ChecksumManifest(kind: .hfSafetensors, entries: entries).writeCovering(root: folder.stagingPath)
        try source.checkUnchanged()
        try folder.publish()
    }

    /// The plan as `--dry-run` prints it.
    public func planText() -> String {
        var lines = ["reshard \(source.directory) -> \(outputPath)"]
        for file in files {
            lines.append("  \(file.name): \(file.tensors.count) tensors, \(formatBytes(file.bytes))")
        }
        if indexBytes != nil { lines.append("  \(HFCheckpointFolder.indexFileName)") }
        for name in companionFiles { lines.append("  \(name) (copied)") }
        lines.append("total \(formatBytes(totalBytes))")
        return lines.joined(separator: "\n")
    }
}

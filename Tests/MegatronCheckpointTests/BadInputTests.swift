import Foundation
import MegatronCheckpoint
import NembridgeTestSupport
import TensorCore
import Testing
import TorchPickle

/// Corrupted copies of the fixtures: each must fail with an error naming the file, and the key
/// and offset where there is one.
struct BadInputTests {
    static let dense = MegatronFixture.all[0]
    static let tp2 = MegatronFixture.all[1]
    static let zstd = MegatronFixture.all[5]

    func path(_ directory: String, _ name: String) -> String { (directory as NSString).appendingPathComponent(name) }

    /// Rewrites `.metadata` of a scratch checkpoint after `edit`.
    func rewriteMetadata(_ directory: String, _ edit: (inout DCPMetadata) throws -> Void) throws {
        let metadataPath = path(directory, ".metadata")
        var metadata = try DCPMetadata(pickle: try TestCheckpoints.readFile(metadataPath), file: metadataPath)
        try edit(&metadata)
        try Data(try metadata.pickleBytes()).write(to: URL(fileURLWithPath: metadataPath))
    }

    func overwrite(_ file: String, at offset: Int64, with bytes: [UInt8]) throws {
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: file))
        try handle.seek(toOffset: UInt64(offset))
        try handle.write(contentsOf: Data(bytes))
        try handle.close()
    }

    @Test("a truncated .distcp is found at open, naming the file, an item and its offset")
    func truncatedDataFile() throws {
        let directory = try scratchCopy(of: Self.dense, label: "truncated")
        let file = path(directory, "__0_0.distcp")
        let size = try ReadOnlyFile(path: file).size
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: file))
        try handle.truncate(atOffset: UInt64(size / 2))
        try handle.close()
        let error = #expect(throws: MegatronCheckpointError.self) { try TorchDistCheckpoint(directory: directory) }
        guard case .invalidItem(let named, let key, let offset, let reason)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(named == file)
        #expect(!key.isEmpty && offset + 1 > 0)
        #expect(reason.contains("past the end of the file"))
    }

    @Test("a damaged item archive fails on read with the file, key and item offset")
    func damagedItem() throws {
        let directory = try scratchCopy(of: Self.dense, label: "damaged")
        let checkpoint = try TorchDistCheckpoint(directory: directory)
        let key = "output_layer.weight"
        let chunk = try checkpoint.tensor(key).chunks[0]
        let info = try checkpoint.storageInfo(key: key, offsets: chunk.offsets.array)
        // Zero the end records: the zip has no end of central directory any more.
        try overwrite(path(directory, info.relativePath), at: info.offset + info.length - 120, with: [UInt8](repeating: 0, count: 120))
        let reopened = try TorchDistCheckpoint(directory: directory)
        let error = #expect(throws: MegatronCheckpointError.self) { try reopened.readTensor(key: key) }
        guard case .invalidItem(let file, let named, let offset, _)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(file == path(directory, info.relativePath))
        #expect(named == key)
        #expect(offset == info.offset)
    }

    @Test("garbage .metadata is invalid metadata naming the file")
    func garbageMetadata() throws {
        let directory = try scratchCopy(of: Self.dense, label: "garbage")
        try Data((0..<500).map { UInt8(truncatingIfNeeded: $0 &* 37) }).write(to: URL(fileURLWithPath: path(directory, ".metadata")))
        let error = #expect(throws: MegatronCheckpointError.self) { try TorchDistCheckpoint(directory: directory) }
        guard case .invalidMetadata(let file, _)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(file == path(directory, ".metadata"))
    }

    @Test("a .metadata pickle calling os.system runs nothing and is not a Metadata")
    func maliciousMetadata() throws {
        let directory = try scratchCopy(of: Self.dense, label: "malicious")
        let marker = path(directory, "pwned")
        let pickle = PickleWriter.write(.reduce(.global("os", "system"), [.string("touch \(marker)")]))
        try Data(pickle).write(to: URL(fileURLWithPath: path(directory, ".metadata")))
        let error = #expect(throws: MegatronCheckpointError.self) { try TorchDistCheckpoint(directory: directory) }
        guard case .invalidMetadata(let file, let reason)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(file == path(directory, ".metadata"))
        #expect(reason.contains("os.system"))
        #expect(!FileManager.default.fileExists(atPath: marker))
    }

    /// Moves chunk `index` of `key` (and its storage entry) to `offsets`.
    func moveChunk(_ metadata: inout DCPMetadata, key: String, index: Int, to offsets: [Int]) throws {
        let position = try #require(metadata.tensors.firstIndex { $0.fqn == key })
        let old = metadata.tensors[position].metadata.chunks[index].offsets.array
        metadata.tensors[position].metadata.chunks[index] = DCPChunk(offsets: offsets, sizes: metadata.tensors[position].metadata.chunks[index].sizes)
        let info = metadata.storage.removeValue(forKey: DCPStorageKey(fqn: key, offsets: old))
        metadata.storage[DCPStorageKey(fqn: key, offsets: offsets)] = info
    }

    @Test("overlapping chunks are refused at open, naming .metadata, the key and both offsets")
    func overlappingChunks() throws {
        let directory = try scratchCopy(of: Self.tp2, label: "overlap")
        try rewriteMetadata(directory) { try moveChunk(&$0, key: "embedding.word_embeddings.weight", index: 1, to: [64, 0]) }
        let error = #expect(throws: MegatronCheckpointError.self) { try TorchDistCheckpoint(directory: directory) }
        #expect(error == .overlappingChunks(file: path(directory, ".metadata"), key: "embedding.word_embeddings.weight", first: [0, 0], second: [64, 0]))
    }

    @Test("a chunk outside its tensor is refused at open")
    func outOfBounds() throws {
        let directory = try scratchCopy(of: Self.tp2, label: "bounds")
        try rewriteMetadata(directory) { try moveChunk(&$0, key: "output_layer.weight", index: 1, to: [768, 0]) }
        let error = #expect(throws: MegatronCheckpointError.self) { try TorchDistCheckpoint(directory: directory) }
        #expect(error == .chunkOutOfBounds(file: path(directory, ".metadata"), key: "output_layer.weight",
                                            offsets: [768, 0], sizes: [128, 32], shape: [256, 32]))
    }

    @Test("a missing data file is named with a key stored in it")
    func missingDataFile() throws {
        let directory = try scratchCopy(of: Self.tp2, label: "missing")
        try FileManager.default.removeItem(atPath: path(directory, "__1_0.distcp"))
        let error = #expect(throws: MegatronCheckpointError.self) { try TorchDistCheckpoint(directory: directory) }
        guard case .missingDataFile(let metadata, let key, let file)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(metadata == path(directory, ".metadata"))
        #expect(file == "__1_0.distcp")
        #expect(!key.isEmpty)
    }

    @Test("metadata storing an item outside the checkpoint folder is refused, naming the key and the path",
          arguments: ["../__0_0.distcp", "/etc/hostname", "sub/../../x.distcp"])
    func storageOutsideFolder(_ relativePath: String) throws {
        let directory = try scratchCopy(of: Self.dense, label: "outside")
        try rewriteMetadata(directory) { metadata in
            let key = metadata.storage.keys.sorted { $0.fqn < $1.fqn }[0]
            metadata.storage[key]!.relativePath = relativePath
        }
        let error = #expect(throws: MegatronCheckpointError.self) { try TorchDistCheckpoint(directory: directory) }
        guard case .invalidMetadata(let file, let reason)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(file == path(directory, ".metadata"))
        #expect(reason.contains(relativePath) && reason.contains("is not a plain file name"), "\(reason)")
    }

    @Test("a chunk dropped from .metadata leaves its box uncovered: an error, not garbage")
    func uncoveredBox() throws {
        let directory = try scratchCopy(of: Self.tp2, label: "uncovered")
        try rewriteMetadata(directory) { metadata in
            let position = try #require(metadata.tensors.firstIndex { $0.fqn == "output_layer.weight" })
            let dropped = metadata.tensors[position].metadata.chunks.removeLast()
            metadata.storage.removeValue(forKey: DCPStorageKey(fqn: "output_layer.weight", offsets: dropped.offsets.array))
        }
        let checkpoint = try TorchDistCheckpoint(directory: directory)
        let error = #expect(throws: MegatronCheckpointError.self) { try checkpoint.readTensor(key: "output_layer.weight") }
        #expect(error == .boxNotCovered(file: path(directory, ".metadata"), key: "output_layer.weight", offsets: [0, 0],
                                        sizes: [256, 32], shape: [256, 32], missingElements: 128 * 32))
        // The half that is there still reads.
        #expect(try checkpoint.boxPieces(key: "output_layer.weight", offsets: [0, 0], sizes: [128, 32]).count == 1)
    }

    @Test("a dtype in .metadata that differs from the stored tensor's is reported")
    func dtypeMismatch() throws {
        let directory = try scratchCopy(of: Self.dense, label: "dtype")
        try rewriteMetadata(directory) { metadata in
            let position = try #require(metadata.tensors.firstIndex { $0.fqn == "output_layer.weight" })
            metadata.tensors[position].metadata.dtype = .float16
        }
        let checkpoint = try TorchDistCheckpoint(directory: directory)
        let error = #expect(throws: MegatronCheckpointError.self) { try checkpoint.readTensor(key: "output_layer.weight") }
        guard case .dtypeMismatch(let file, let key, let expected, let actual)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(file.hasSuffix(".distcp") && key == "output_layer.weight" && expected == .float16 && actual == .bfloat16)
    }

    @Test("a corrupt zstd frame fails with decompressionFailed naming the file, key and offset")
    func corruptZstdFrame() throws {
        let directory = try scratchCopy(of: Self.zstd, label: "zstd-corrupt")
        let checkpoint = try TorchDistCheckpoint(directory: directory)
        let key = "weight_bf16"
        let info = try checkpoint.storageInfo(key: key, offsets: [0, 0])
        try overwrite(path(directory, info.relativePath), at: info.offset, with: [0xde, 0xad, 0xbe, 0xef])
        let reopened = try TorchDistCheckpoint(directory: directory)
        let error = #expect(throws: MegatronCheckpointError.self) { try reopened.readTensor(key: key) }
        guard case .decompressionFailed(let file, let named, let offset, let reason)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(file == path(directory, info.relativePath))
        #expect(named == key && offset == info.offset)
        #expect(!reason.isEmpty)
        // The other items still read.
        #expect(try reopened.readTensor(key: "bias_f32").count == 48)
    }

    @Test("a zstd item cut short ends inside its frame")
    func truncatedZstdItem() throws {
        let directory = try scratchCopy(of: Self.zstd, label: "zstd-short")
        try rewriteMetadata(directory) { metadata in
            let key = DCPStorageKey(fqn: "weight_bf16", offsets: [0, 0])
            metadata.storage[key]?.length -= 40
        }
        let checkpoint = try TorchDistCheckpoint(directory: directory)
        let error = #expect(throws: MegatronCheckpointError.self) { try checkpoint.readTensor(key: "weight_bf16") }
        guard case .decompressionFailed(_, let key, _, let reason)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(key == "weight_bf16")
        #expect(reason.contains("ends inside a zstd frame"))
    }

    @Test("an unknown transform descriptor is refused by name")
    func unsupportedTransform() throws {
        let directory = try scratchCopy(of: Self.zstd, label: "transform")
        try rewriteMetadata(directory) { metadata in
            metadata.storage[DCPStorageKey(fqn: "bias_f32", offsets: [0])]?.transformDescriptors = ["stream.lz4/1"]
        }
        let checkpoint = try TorchDistCheckpoint(directory: directory)
        let error = #expect(throws: MegatronCheckpointError.self) { try checkpoint.readTensor(key: "bias_f32") }
        #expect(error == .unsupportedTransform(file: path(directory, "__0_0.distcp"), key: "bias_f32", transform: "stream.lz4/1"))
    }

    @Test("unknown keys are keyNotFound")
    func unknownKey() throws {
        let checkpoint = try TorchDistCheckpoint(path: Self.dense.path)
        #expect(throws: MegatronCheckpointError.self) { try checkpoint.readTensor(key: "nope") }
        #expect(throws: MegatronCheckpointError.self) { try checkpoint.objectValue(key: "output_layer.weight") }
    }
}

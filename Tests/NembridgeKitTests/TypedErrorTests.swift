import Execution
import Foundation
import MegatronCheckpoint
import NembridgeKit
import NembridgeTestSupport
import TensorCore
import Testing
import TorchPickle
import TorchZip
import WeightMapping

/// Each fault has its own error, and none is lost on the way (read as "missing", or scraped back
/// out of a message).
struct TypedErrorTests {
    /// A copy of llama3-tiny where `k_proj` of layer 0 is declared F16 instead of BF16 (same size).
    static func mixedDTypeFolder() throws -> String {
        let scratch = try TestCheckpoints.scratchDirectory("dtype-conflict")
        let folder = scratch + "/hf"
        try FileManager.default.copyItem(atPath: TestCheckpoints.path("llama3-tiny/hf"), toPath: folder)
        var bytes = try TestCheckpoints.readFile(folder + "/model.safetensors")
        let header = String(decoding: bytes[8..<min(bytes.count, 20000)], as: UTF8.self)
        let name = "\"model.layers.0.self_attn.k_proj.weight\":{\"dtype\":\"BF16\""
        let range = try #require(header.range(of: name))
        let start = 8 + header.utf8.distance(from: header.startIndex, to: range.upperBound) - 6
        bytes.replaceSubrange(start..<(start + 6), with: Array("\"F16\" ".utf8))
        try Data(bytes).write(to: URL(fileURLWithPath: folder + "/model.safetensors"))
        return folder
    }

    @Test("sources of one Megatron tensor with different dtypes are a dtype conflict, not a shape mismatch")
    func dtypeConflict() throws {
        let folder = try Self.mixedDTypeFolder()
        defer { try? FileManager.default.removeItem(atPath: (folder as NSString).deletingLastPathComponent) }
        let error = #expect(throws: MappingError.self) {
            _ = try HFImport(source: folder, output: folder + "-out", options: HFImport.Options())
        }
        guard case .dtypeConflict(let tensor, let dtypes, _)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(tensor.hasPrefix("model.layers.0.self_attn."))
        #expect(dtypes == [.bfloat16, .float16])
        #expect(error?.description.contains("sources of dtypes BF16, F16 cannot be combined") == true, "\(error!)")
    }

    /// A folder written by `import`, whose manifest is then edited.
    static func importedWithManifest(_ edit: (inout String) -> Void) throws -> String {
        let scratch = try TestCheckpoints.scratchDirectory("manifest")
        let output = scratch + "/mcore"
        try HFImport(source: TestCheckpoints.path("llama3-tiny/hf"), output: output, options: HFImport.Options())
            .run(executor: MoveExecutor(workers: 2, chunkBytes: 1 << 16))
        let path = output + "/" + ChecksumManifest.fileName
        var text = String(decoding: try TestCheckpoints.readFile(path), as: UTF8.self)
        edit(&text)
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        return output
    }

    @Test("a manifest of an unknown kind is an error, not an empty check that passes")
    func unknownManifestKind() throws {
        let output = try Self.importedWithManifest { $0 = $0.replacingOccurrences(of: "\"megatron-torch_dist\"", with: "\"megatron-zarr\"") }
        defer { try? FileManager.default.removeItem(atPath: (output as NSString).deletingLastPathComponent) }
        let error = #expect(throws: ChecksumManifest.Invalid.self) { try CheckpointVerifier.verifyManifest(output) }
        #expect(error?.reason.hasPrefix("unknown kind `megatron-zarr`") == true, "\(String(describing: error))")
    }

    @Test("manifest ranges whose end overflows are malformed entries")
    func overflowingManifestRange() throws {
        let output = try Self.importedWithManifest { text in
            let offset = try! #require(text.range(of: "\"offset\": "))
            let end = text[offset.upperBound...].firstIndex(of: ",")!
            text.replaceSubrange(offset.upperBound..<end, with: "9223372036854775800")
        }
        defer { try? FileManager.default.removeItem(atPath: (output as NSString).deletingLastPathComponent) }
        let error = #expect(throws: ChecksumManifest.Invalid.self) { try CheckpointVerifier.verifyManifest(output) }
        #expect(error?.reason.hasPrefix("malformed entry") == true, "\(String(describing: error))")
    }

    @Test("a manifest that is a directory or a FIFO is refused by type", arguments: [false, true])
    func specialManifest(_ fifo: Bool) throws {
        let output = try Self.importedWithManifest { _ in }
        defer { try? FileManager.default.removeItem(atPath: (output as NSString).deletingLastPathComponent) }
        let path = output + "/" + ChecksumManifest.fileName
        if fifo { try TestCheckpoints.makeFIFO(at: path) } else { try TestCheckpoints.makeDirectory(at: path) }
        #expect(throws: FileIOError.notARegularFile(path: path, kind: fifo ? .fifo : .directory)) {
            try CheckpointVerifier.verifyManifest(output)
        }
    }
}

/// Ints in a legacy rank file's pickle that size things are bounded before use.
struct LegacyPickleIntTests {
    /// Rewrites the `args` of `file` (a rank file) with `edit`, keeping every other record.
    static func rewriteArgs(_ file: String, _ edit: (inout [(key: PickleValue, value: PickleValue)]) -> Void) throws {
        let archive = try ZipArchive(path: file)
        var records = try archive.entries.map { ($0.name, try archive.contents(of: $0)) }
        let index = try #require(records.firstIndex { $0.0.hasSuffix("/data.pkl") })
        guard case .dict(var top) = try PickleReader.read(records[index].1) else { Issue.record("not a dict"); return }
        let position = try #require(top.firstIndex { $0.key == .string("args") })
        guard case .object(var namespace) = top[position].value, case .dict(var fields)? = namespace.state else { Issue.record("no args"); return }
        edit(&fields)
        namespace.state = .dict(fields)
        top[position].value = .object(namespace)
        records[index].1 = PickleWriter.write(.dict(top))
        let layout = try ZipLayout(entries: records.map { ($0.0, Int64($0.1.count)) })
        let sink = MemoryByteSink()
        let writer = ZipWriter(layout: layout, sink: sink)
        for (index, record) in records.enumerated() { try writer.write(entry: index, at: 0, bytes: record.1) }
        try writer.finish()
        try Data(sink.bytes).write(to: URL(fileURLWithPath: file))
    }

    @Test("args counts at the edge of Int64 in a rank file are refused, naming the file", arguments: [
        "decoder_first_pipeline_num_layers", "decoder_last_pipeline_num_layers", "expert_tensor_parallel_size",
    ])
    func hugeArgs(_ name: String) throws {
        let scratch = try TestCheckpoints.scratchDirectory("legacy-args")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try LegacyCheckpointTests.importLegacy("llama3-tiny/hf", scratch + "/legacy", pp: 2)
        let file = scratch + "/legacy/release/mp_rank_00_000/model_optim_rng.pt"
        try Self.rewriteArgs(file) { fields in
            fields.removeAll { $0.key == .string(name) }
            fields.append((.string(name), .int(Int64.max)))
        }
        let error = #expect(throws: LegacyLayoutError.self) { try MegatronExport(checkpoint: scratch + "/legacy", output: scratch + "/out") }
        #expect(error?.description.contains("\(file): args.\(name) is 9223372036854775807") == true, "\(String(describing: error))")
    }
}

import Execution
import Foundation
import MegatronCheckpoint
import NembridgeKit
import NembridgeTestSupport
import TensorCore
import Testing

/// A zstd bomb in a checkpoint being exported is refused while planning: nothing is written,
/// no output and no staging folder are left.
struct CompressedBombExportTests {
    @Test("export of a zstd import whose first chunk was replaced by a frame claiming 1 TiB publishes nothing")
    func exportRefusesBomb() throws {
        let scratch = try TestCheckpoints.scratchDirectory("bomb-export")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var options = HFImport.Options()
        options.zstdLevel = 3
        try HFImport(source: TestCheckpoints.path("llama3-tiny/hf"), output: scratch + "/mc", options: options)
            .run(executor: MoveExecutor(workers: 2))
        let iteration = try TorchDistCheckpoint(path: scratch + "/mc").directory
        let metadataPath = iteration + "/.metadata"
        var metadata = try DCPMetadata(pickle: try TestCheckpoints.readFile(metadataPath), file: metadataPath)
        let (key, tensor) = metadata.tensors[0]
        let storageKey = DCPStorageKey(fqn: key, offsets: tensor.chunks[0].offsets.array)
        let data = iteration + "/" + metadata.storage[storageKey]!.relativePath
        // A frame header stating 2^40 bytes, one RLE block, appended to the data file.
        let bomb: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD, 0xC0, 0x38] + (0..<8).map { UInt8(truncatingIfNeeded: (UInt64(1) << 40) >> (8 * $0)) }
            + [0x0B, 0x00, 0x00, 0x00]
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: data))
        let end = try handle.seekToEnd()
        try handle.write(contentsOf: Data(bomb))
        try handle.close()
        metadata.storage[storageKey]!.offset = Int64(end)
        metadata.storage[storageKey]!.length = Int64(bomb.count)
        try Data(try metadata.pickleBytes()).write(to: URL(fileURLWithPath: metadataPath))

        let start = Date()
        let error = #expect(throws: MegatronCheckpointError.self) {
            try MegatronExport(checkpoint: scratch + "/mc", output: scratch + "/hf").run(executor: MoveExecutor(workers: 2))
        }
        let text = error.map { "\($0)" } ?? ""
        #expect(text.hasPrefix("\(data): item `\(key)` at offset \(end): zstd: the frame claims 1099511627776 bytes"), "\(text)")
        #expect(text.hasSuffix("refused as a decompression bomb"), "\(text)")
        #expect(Date().timeIntervalSince(start) < 10)
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch) == ["mc"])
    }
}

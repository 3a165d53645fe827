import Foundation
@testable import MegatronCheckpoint
import NembridgeTestSupport
import TensorCore
import Testing

/// A compressed item whose frame claims, or decodes to, far more than `.metadata` lets its item
/// hold is refused: at once when the frame header says so, else after at most the limit's bytes
/// of work (fixed buffers, a bounded temporary file), with one line naming the file, key and offset.
struct ZstdBombTests {
    /// A zstd frame built by hand: a 128 KiB window, no checksum, `claimed` as its content size
    /// when given, then `blocks` RLE blocks of 128 KiB zeros (4 bytes each) and a last empty raw
    /// block. `blocks` × 128 KiB is what it really decodes to.
    static func frame(claimed: UInt64? = nil, blocks: Int) -> [UInt8] {
        var bytes: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD]
        bytes.append(claimed == nil ? 0x00 : 0xC0)  // frame content size field: none, or 8 bytes
        bytes.append(0x38)  // window descriptor: 2^17 bytes
        if let claimed { bytes += (0..<8).map { UInt8(truncatingIfNeeded: claimed >> (8 * $0)) } }
        let rle = UInt32(128 << 10) << 3 | 1 << 1  // block size, type 1 (RLE), not last
        for _ in 0..<blocks { bytes += [UInt8(truncatingIfNeeded: rle), UInt8(truncatingIfNeeded: rle >> 8), UInt8(truncatingIfNeeded: rle >> 16), 0] }
        bytes += [0x01, 0x00, 0x00]  // last block: raw, empty
        return bytes
    }

    /// A DCP checkpoint holding the bf16 tensor `w` of shape [4] (8 bytes) and the object `blob`,
    /// each stored zstd-compressed as the given bytes, after 100 bytes of padding.
    static func checkpoint(tensor: [UInt8], object: [UInt8] = frame(blocks: 0)) throws -> TorchDistCheckpoint {
        let directory = try TestCheckpoints.scratchDirectory("zstd-bomb")
        let padding = [UInt8](repeating: 7, count: 100)
        try Data(padding + tensor + object).write(to: URL(fileURLWithPath: directory + "/__0_0.distcp"))
        let zstd = [ZstdStreamDecoder.descriptor]
        let metadata = DCPMetadata(
            tensors: [("w", DCPTensorMetadata(dtype: .bfloat16, size: [4], chunks: [DCPChunk(offsets: [0], sizes: [4])]))],
            bytesItems: ["blob"],
            storage: [
                DCPStorageKey(fqn: "w", offsets: [0]): DCPStorageInfo(relativePath: "__0_0.distcp", offset: 100, length: Int64(tensor.count),
                                                                      transformDescriptors: zstd),
                DCPStorageKey(fqn: "blob", offsets: nil): DCPStorageInfo(relativePath: "__0_0.distcp", offset: Int64(100 + tensor.count),
                                                                         length: Int64(object.count), transformDescriptors: zstd),
            ])
        try Data(try metadata.pickleBytes()).write(to: URL(fileURLWithPath: directory + "/.metadata"))
        return try TorchDistCheckpoint(directory: directory)
    }

    static func expectBomb(_ work: () throws -> Void, key: String, offset: Int64, saying expected: String,
                           sourceLocation: SourceLocation = #_sourceLocation) {
        let start = Date()
        let error = #expect(throws: MegatronCheckpointError.self, sourceLocation: sourceLocation) { try work() }
        guard case .decompressionFailed(let file, key, offset, let reason)? = error else {
            Issue.record("\(String(describing: error))", sourceLocation: sourceLocation)
            return
        }
        #expect(file.hasSuffix("/__0_0.distcp"), sourceLocation: sourceLocation)
        #expect(reason.contains(expected) && reason.hasSuffix("refused as a decompression bomb"), "\(reason)", sourceLocation: sourceLocation)
        #expect(!MessageText.needsEscaping("\(error!)"), sourceLocation: sourceLocation)
        #expect(Date().timeIntervalSince(start) < 5, sourceLocation: sourceLocation)
    }

    @Test("a chunk's frame that claims 1 TiB is refused before decoding anything")
    func claimedChunk() throws {
        let checkpoint = try Self.checkpoint(tensor: Self.frame(claimed: 1 << 40, blocks: 1))
        defer { try? FileManager.default.removeItem(atPath: checkpoint.directory) }
        Self.expectBomb({ _ = try checkpoint.readTensor(key: "w") }, key: "w", offset: 100,
                        saying: "the frame claims 1099511627776 bytes, more than the 1048592 bytes a chunk of sizes [4] and dtype BF16 (8 bytes) can hold")
    }

    @Test("a chunk's frame with no stated size that decodes to 8 GiB is stopped at the limit")
    func streamingChunk() throws {
        let checkpoint = try Self.checkpoint(tensor: Self.frame(blocks: 65_536))
        defer { try? FileManager.default.removeItem(atPath: checkpoint.directory) }
        Self.expectBomb({ _ = try checkpoint.chunkData(key: "w", chunk: DCPChunk(offsets: [0], sizes: [4])) }, key: "w", offset: 100,
                        saying: "the item decodes to more than the 1048592 bytes a chunk of sizes [4] and dtype BF16")
    }

    @Test("a frame libzstd itself wrote, stating its true size of 8 MiB, is refused for an 8-byte chunk")
    func realEncoderChunk() throws {
        let sink = MemoryByteSink()
        let compressor = try ZstdStreamCompressor(sink: sink, offset: 0, level: 1, pledgedSize: 8 << 20)
        try compressor.write([UInt8](repeating: 0, count: 8 << 20))
        _ = try compressor.finish()
        let checkpoint = try Self.checkpoint(tensor: sink.bytes)
        defer { try? FileManager.default.removeItem(atPath: checkpoint.directory) }
        Self.expectBomb({ _ = try checkpoint.readTensor(key: "w") }, key: "w", offset: 100, saying: "the frame claims 8388608 bytes")
    }

    @Test("an object's frame that claims more than 256 MiB is refused")
    func claimedObject() throws {
        let tensor = Self.frame(blocks: 0)
        let checkpoint = try Self.checkpoint(tensor: tensor, object: Self.frame(claimed: UInt64(TorchDistCheckpoint.objectDecodedLimit) + 1, blocks: 1))
        defer { try? FileManager.default.removeItem(atPath: checkpoint.directory) }
        Self.expectBomb({ _ = try checkpoint.objectValue(key: "blob") }, key: "blob", offset: Int64(100 + tensor.count),
                        saying: "more than the 268435456 bytes an object item")
    }

    // Also a regression case: a frame that ends exactly filling the decoder's 128 KiB output
    // buffer was once taken for a truncated one.
    @Test("a frame within its limit still decodes (to whatever it holds)")
    func withinLimit() throws {
        let checkpoint = try Self.checkpoint(tensor: Self.frame(claimed: 128 << 10, blocks: 1))
        defer { try? FileManager.default.removeItem(atPath: checkpoint.directory) }
        // 128 KiB of zeros is no torch.save archive: a zip error, not a bomb.
        let error = #expect(throws: MegatronCheckpointError.self) { try checkpoint.readTensor(key: "w") }
        guard case .invalidItem(_, "w", 100, _)? = error else { Issue.record("\(String(describing: error))"); return }
    }
}

/// The fuzz corpus keeps the same bombs inside a real torch-written `.distcp` (the dcp-zstd
/// fixture, with the `weight_bf16` or `blob` item overwritten by such a frame): each must be
/// refused as a bomb there too, not merely fail somehow.
struct ZstdBombCorpusTests {
    @Test("the corpus's zstd bombs are refused as bombs", arguments: [
        ("zstd-bomb-chunk-claims-1tib", "weight_bf16"), ("zstd-bomb-chunk-decodes-27mb", "weight_bf16"),
        ("zstd-bomb-object-claims-1tib", "blob"),
    ])
    func corpus(_ label: String, _ key: String) throws {
        let scratch = try TestCheckpoints.scratchDirectory("zstd-bomb-corpus")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try FileManager.default.copyItem(atPath: TestCheckpoints.path("megatron/dcp-zstd/zstd"), toPath: scratch + "/zstd")
        let corpus = TestCheckpoints.root + "/Tests/FuzzCorpus/distcp/dcp-zstd-zstd+__0_0.distcp--\(label).bin"
        try FileManager.default.removeItem(atPath: scratch + "/zstd/__0_0.distcp")
        try FileManager.default.copyItem(atPath: corpus, toPath: scratch + "/zstd/__0_0.distcp")
        let checkpoint = try TorchDistCheckpoint(directory: scratch + "/zstd")
        let info = try checkpoint.storageInfo(key: key, offsets: key == "blob" ? nil : [0, 0])
        ZstdBombTests.expectBomb({
            if key == "blob" { _ = try checkpoint.objectValue(key: key) } else { _ = try checkpoint.readTensor(key: key) }
        }, key: key, offset: info.offset, saying: label.contains("claims") ? "the frame claims 1099511627776 bytes" : "the item decodes to more than")
    }
}

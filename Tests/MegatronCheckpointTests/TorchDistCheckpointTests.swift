import Foundation
@testable import MegatronCheckpoint
import NembridgeTestSupport
import TensorCore
import Testing
import TorchPickle

struct TorchDistCheckpointTests {
    @Test("every tensor of every fixture assembles to the global bytes torch saved", arguments: MegatronFixture.all)
    func tensors(_ fixture: MegatronFixture) throws {
        let checkpoint = try TorchDistCheckpoint(path: fixture.path)
        let expected = try fixture.expected()
        let tensors = try #require(expected["tensors"]?.objectMembers)
        #expect(Set(checkpoint.tensorKeys) == Set(tensors.map(\.key)))
        for (key, entry) in tensors {
            let metadata = try checkpoint.tensor(key)
            #expect(metadata.dtype.torchName == entry["dtype"]?.stringValue, "\(key)")
            #expect(metadata.size == entry["shape"]?.arrayValue?.compactMap(\.intValue), "\(key)")
            let bytes = try checkpoint.readTensor(key: key)
            #expect(bytes.count == entry["nbytes"]?.intValue, "\(key)")
            #expect(SHA256.hex(bytes) == entry["sha256"]?.stringValue, "\(fixture) \(key): global tensor")
        }
    }

    @Test("every chunk has its storage entry and bytes, read as a box and through chunkData", arguments: MegatronFixture.all)
    func chunks(_ fixture: MegatronFixture) throws {
        let checkpoint = try TorchDistCheckpoint(path: fixture.path)
        let expected = try fixture.expected()
        for (key, entry) in try #require(expected["tensors"]?.objectMembers) {
            let chunks = try #require(entry["chunks"]?.arrayValue)
            #expect(chunks.count == (try checkpoint.tensor(key)).chunks.count)
            for chunkEntry in chunks {
                let chunk = DCPChunk(offsets: chunkEntry["offsets"]?.arrayValue?.compactMap(\.intValue) ?? [],
                                     sizes: chunkEntry["sizes"]?.arrayValue?.compactMap(\.intValue) ?? [])
                let info = try checkpoint.storageInfo(key: key, offsets: chunk.offsets.array)
                #expect(info.relativePath == chunkEntry["file"]?.stringValue)
                #expect(info.offset == Int64(chunkEntry["offset"]?.intValue ?? -1))
                #expect(info.length == Int64(chunkEntry["length"]?.intValue ?? -1))
                #expect(info.transformDescriptors == chunkEntry["transform_descriptors"]?.arrayValue?.compactMap(\.stringValue))
                let count = Int(try checkpoint.boxByteCount(key: key, sizes: chunk.sizes.array))
                var box = [UInt8](repeating: 0, count: count)
                try box.withUnsafeMutableBytes { try checkpoint.readBox(key: key, offsets: chunk.offsets.array, sizes: chunk.sizes.array, into: $0) }
                #expect(SHA256.hex(box) == chunkEntry["sha256"]?.stringValue, "\(fixture) \(key) chunk \(chunk.offsets)")
                let data = try checkpoint.chunkData(key: key, chunk: chunk)
                #expect(data.byteCount == Int64(count))
                #expect(data.isDecoded == (info.transformDescriptors != nil))
                let range = try #require(data.contiguousRange)
                if !data.isDecoded {
                    // The tensor's bytes lie inside the item's byte range of the .distcp.
                    #expect(range.offset >= info.offset && range.end <= info.offset + info.length)
                    #expect(data.file.path.hasSuffix(info.relativePath))
                }
            }
        }
    }

    @Test("sub-boxes that cut across chunks equal the same slice of the whole tensor", arguments: MegatronFixture.all)
    func subBoxes(_ fixture: MegatronFixture) throws {
        let checkpoint = try TorchDistCheckpoint(path: fixture.path)
        for key in checkpoint.tensorKeys {
            let tensor = try checkpoint.tensor(key)
            guard !tensor.size.isEmpty, !tensor.size.contains(0) else { continue }
            let whole = try checkpoint.readTensor(key: key)
            let elementSize = try #require(TorchDistCheckpoint.torchElementSize(tensor.dtype))
            // A box from a third to the end on every axis, and one middle slab.
            for box in [tensor.size.map { $0 / 3 }, tensor.size.map { $0 / 2 }] {
                let sizes = zip(tensor.size, box).map { size, offset in max(1, (size - offset) * 2 / 3) }
                let count = Int(try checkpoint.boxByteCount(key: key, sizes: sizes))
                var bytes = [UInt8](repeating: 0, count: count)
                try bytes.withUnsafeMutableBytes { try checkpoint.readBox(key: key, offsets: box, sizes: sizes, into: $0) }
                var reference: [UInt8] = []
                let whole3 = DCPChunk(offsets: tensor.size.map { _ in 0 }, sizes: tensor.size)
                let wanted = DCPChunk(offsets: box, sizes: sizes)
                BoxGeometry.forEachRun(of: wanted, outer: whole3, inner: wanted) { outer, _, length in
                    reference.append(contentsOf: whole[(outer * elementSize)..<((outer + length) * elementSize)])
                }
                #expect(bytes == reference, "\(fixture) \(key) box \(box) \(sizes)")
            }
        }
    }

    @Test("objects unpickle and match expected.json's rendering", arguments: MegatronFixture.all)
    func objects(_ fixture: MegatronFixture) throws {
        let checkpoint = try TorchDistCheckpoint(path: fixture.path)
        let expected = try fixture.expected()
        let objects = expected["objects"]?.objectMembers ?? []
        #expect(Set(checkpoint.objectKeys) == Set(objects.map(\.key)))
        for (key, entry) in objects {
            let info = try checkpoint.storageInfo(key: key, offsets: nil)
            #expect(info.offset == Int64(entry["offset"]?.intValue ?? -1))
            let raw = try checkpoint.rawBytes(key: key)
            if info.transformDescriptors == nil {
                #expect(SHA256.hex(raw) == entry["sha256"]?.stringValue, "\(key)")
            } else {
                #expect(raw.count == entry["decoded_length"]?.intValue, "\(key)")
            }
            let value = try checkpoint.objectValue(key: key)
            let rendering = try #require(entry["value"])
            #expect(renderingMismatches(rendering, value) == [], "\(fixture) \(key)")
        }
    }

    @Test("the common state: embedded item (core 0.19) or common.pt (0.15), with args", arguments: MegatronFixture.all.filter { $0.caseName != "dcp-zstd" })
    func commonState(_ fixture: MegatronFixture) throws {
        let checkpoint = try TorchDistCheckpoint(path: fixture.path)
        let state = try #require(try checkpoint.commonState())
        #expect(state["checkpoint_version"] == .float(3.0))
        #expect(state["iteration"] == .int(1))
        let args = try #require(state["args"])
        #expect(args.isObject(of: "argparse", "Namespace"))
        #expect(args["num_layers"] == .int(2))
        #expect(args["hidden_size"] == .int(32))
        #expect(args["ckpt_format"] == .string("torch_dist"))
        let expected = try fixture.expected()
        if fixture.caseName == "mcore-metadata-0.15" {
            #expect(!checkpoint.objectKeys.contains(TorchDistCheckpoint.commonStateKey))
            let rendering = try #require(expected["common_pt"]?["value"])
            #expect(renderingMismatches(rendering, state) == [])
        } else {
            #expect(checkpoint.objectKeys.contains(TorchDistCheckpoint.commonStateKey))
        }
    }

    @Test("plain DCP has no common state")
    func plainHasNoCommonState() throws {
        let checkpoint = try TorchDistCheckpoint(path: TestCheckpoints.path("megatron/dcp-zstd/plain"))
        #expect(try checkpoint.commonState() == nil)
        #expect(checkpoint.folder?.format == .dcp)
    }

    @Test("compressed and uncompressed twins hold identical tensors and object values")
    func zstdTwins() throws {
        let plain = try TorchDistCheckpoint(path: TestCheckpoints.path("megatron/dcp-zstd/plain"))
        let zstd = try TorchDistCheckpoint(path: TestCheckpoints.path("megatron/dcp-zstd/zstd"))
        #expect(plain.tensorKeys.sorted() == zstd.tensorKeys.sorted())
        #expect(plain.objectKeys.sorted() == zstd.objectKeys.sorted())
        for key in plain.tensorKeys {
            #expect(try plain.readTensor(key: key) == zstd.readTensor(key: key), "\(key)")
        }
        for key in plain.objectKeys {
            #expect(try plain.objectValue(key: key) == zstd.objectValue(key: key), "\(key)")
            #expect(try plain.rawBytes(key: key) == zstd.rawBytes(key: key), "\(key)")
        }
        let key = try #require(zstd.tensorKeys.first)
        let chunk = try zstd.tensor(key).chunks[0]
        #expect(try zstd.chunkData(key: key, chunk: chunk).isDecoded)
        #expect(try !plain.chunkData(key: key, chunk: chunk).isDecoded)
    }

    @Test("the 0.15 MCoreMetadata root class is accepted")
    func mcoreMetadata() throws {
        let checkpoint = try TorchDistCheckpoint(path: TestCheckpoints.path("megatron/mcore-metadata-0.15"))
        #expect(checkpoint.metadata.rootClass == "megatron.core.dist_checkpointing.strategies.torch.MCoreMetadata")
        #expect(checkpoint.folder?.backend?.commonBackend == "torch")
    }

    @Test("TP=2 and world-size-1 saves hold the same global tensors")
    func tensorParallelEqualsSingle() throws {
        let single = try TorchDistCheckpoint(path: TestCheckpoints.path("megatron/gpt-dense-ws1"))
        let split = try TorchDistCheckpoint(path: TestCheckpoints.path("megatron/gpt-dense-tp2"))
        #expect(Set(single.tensorKeys) == Set(split.tensorKeys))
        for key in single.tensorKeys {
            #expect(try single.readTensor(key: key) == split.readTensor(key: key), "\(key)")
        }
    }

    @Test("a BytesIO item's bytes come out of the pickle")
    func bytesIO() throws {
        let checkpoint = try TorchDistCheckpoint(path: TestCheckpoints.path("megatron/dcp-zstd/zstd"))
        let value = try checkpoint.objectValue(key: "blob")
        #expect(value.isObject(of: "_io", "BytesIO"))
    }
}

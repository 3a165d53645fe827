import Foundation
import MegatronCheckpoint
import NembridgeTestSupport
import TensorCore
import Testing
import TorchPickle

/// `checkedObjectValue`: an object item must decode to the shape Megatron-Core saves it in, not
/// merely decode. Each refusal is one line naming the `.distcp` file and the item's offset.
struct ObjectShapeTests {
    static let extraKey = "decoder.layers.self_attention.linear_qkv._extra_state/shard_0_2"

    /// A DCP checkpoint whose only item is the bytes item `key` holding `torch.save(value)`,
    /// placed after a few padding bytes so the item's offset is not 0.
    static func checkpoint(key: String, value: PickleValue) throws -> (TorchDistCheckpoint, String) {
        let directory = try TestCheckpoints.scratchDirectory("object-shape")
        let archive = try TorchSaveArchive.objectArchive(value)
        let padding = [UInt8](repeating: 0, count: 64)
        let data = directory + "/__0_0.distcp"
        try Data(padding + archive).write(to: URL(fileURLWithPath: data))
        let metadata = DCPMetadata(tensors: [], bytesItems: [key], storage: [
            DCPStorageKey(fqn: key, offsets: nil): DCPStorageInfo(relativePath: "__0_0.distcp", offset: 64, length: Int64(archive.count)),
        ])
        try Data(try metadata.pickleBytes()).write(to: URL(fileURLWithPath: directory + "/.metadata"))
        return (try TorchDistCheckpoint(directory: directory), data)
    }

    static let tensor = PickleValue.reduce(.global("torch._utils", "_rebuild_tensor_v2"), [
        .persistentID(.tuple([.string("storage"), .global("torch", "ByteStorage"), .string("0"), .string("cpu"), .int(4)])),
        .int(0), .tuple([.int(4)]), .tuple([.int(1)]), .bool(false), .reduce(.global("collections", "OrderedDict"), []),
    ])

    @Test("objects of the shape Megatron-Core saves pass", arguments: [
        (extraKey, PickleValue.list([.none])),
        (extraKey, .list([.bytes([1, 2, 3])])),
        (extraKey, .list([.reduce(.global("_io", "BytesIO"), [.bytes([1])])])),
        ("rng_state/shard_0.0_1.1", .list([.stringDict(["random_rng_state": .tuple([.int(3)])])])),
        ("some_plain_dcp_object", .int(7)),
        ("common_state/shard_0_1", .list([.stringDict(["iteration": .int(3), "checkpoint_version": .float(3.0), "args": .none])])),
    ])
    func accepted(_ key: String, _ value: PickleValue) throws {
        let (checkpoint, data) = try Self.checkpoint(key: key, value: value)
        defer { try? FileManager.default.removeItem(atPath: checkpoint.directory) }
        #expect(try checkpoint.checkedObjectValue(key: key) == value, "\(data)")
    }

    @Test("objects of another shape are refused in one line naming the file and the item's offset", arguments: [
        (extraKey, PickleValue.none, "a ShardedObject is saved as a one-element list, this one is a None"),
        (extraKey, .list([.none, .none]), "one-element list, this one is a list of 2"),
        (extraKey, .list([.tuple([])]), "`_extra_state` is a tuple, not None, bytes, a BytesIO or a tensor"),
        // A tensor whose storage record `data/0` is not in the archive.
        (extraKey, .list([tensor]), "names storage record `data/0`, which the archive lacks"),
        ("common_state/shard_0_1", .list([.list([])]), "not a Megatron common state: the saved object is a list, not a dict"),
        ("common_state/shard_0_1", .list([.stringDict(["iteration": .string("1")])]), "`iteration` is a str, not an int"),
    ])
    func refused(_ key: String, _ value: PickleValue, _ expected: String) throws {
        let (checkpoint, data) = try Self.checkpoint(key: key, value: value)
        defer { try? FileManager.default.removeItem(atPath: checkpoint.directory) }
        let error = #expect(throws: MegatronCheckpointError.self) { try checkpoint.checkedObjectValue(key: key) }
        let text = error.map { "\($0)" } ?? ""
        #expect(text.hasPrefix("\(data): item `\(key)` at offset 64"), "\(text)")
        #expect(text.contains(expected), "\(text)")
        #expect(!MessageText.needsEscaping(text), "\(text)")
        // Merely decoding is not enough to see it.
        #expect(try checkpoint.objectValue(key: key) == value)
    }
}

import Execution
import Foundation
import MegatronCheckpoint
import NembridgeKit
import NembridgeTestSupport
import SafetensorsFormat
import TensorCore
import Testing
import TorchPickle
import TorchZip
import WeightMapping

/// Hostile text in every kind of input (tensor names, shard names, architectures, zip entry
/// names, pickle globals and keys, manifest fields, file contents): whatever the error, its
/// description is one line without control characters, and names no more than a few hundred
/// characters of what the file says.
struct OneLineMessageTests {
    static let hostile = "evil\nnembridge: ok\r\u{1B}[2J\u{07}\t\u{202E}" + String(repeating: "x", count: 500)

    /// A scratch copy of llama3-tiny's HF folder.
    static func folder(_ label: String) throws -> String {
        let scratch = try TestCheckpoints.scratchDirectory(label)
        try FileManager.default.copyItem(atPath: TestCheckpoints.path("llama3-tiny/hf"), toPath: scratch + "/hf")
        return scratch + "/hf"
    }

    static func write(_ text: String, _ path: String) throws { try Data(text.utf8).write(to: URL(fileURLWithPath: path)) }

    /// Each case builds its hostile input and returns the error reading it throws.
    static let cases: [(String, @Sendable () throws -> Void)] = [
        ("safetensors tensor name", {
            let name = JSONWriter.serdeQuoted(hostile)
            let header = Array("{\(name):{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,3]}}".utf8)
            let file = withUnsafeBytes(of: UInt64(header.count).littleEndian, Array.init) + header + [0, 0, 0]
            _ = try SafetensorsHeader.parse(fileBytes: file, file: "m.safetensors")
        }),
        ("safetensors dtype", {
            let header = Array("{\"w\":{\"dtype\":\(JSONWriter.serdeQuoted(hostile)),\"shape\":[1],\"data_offsets\":[0,1]}}".utf8)
            _ = try SafetensorsHeader.parse(fileBytes: withUnsafeBytes(of: UInt64(header.count).littleEndian, Array.init) + header + [0], file: "m")
        }),
        ("index shard name", {
            let hf = try folder("msg-index")
            try write("{\"weight_map\":{\"lm_head.weight\":\(JSONWriter.serdeQuoted(hostile))}}", hf + "/model.safetensors.index.json")
            _ = try HFCheckpointFolder(directory: hf)
        }),
        ("index tensor name", {
            let hf = try folder("msg-index-tensor")
            try write("{\"weight_map\":{\(JSONWriter.serdeQuoted(hostile)):\"model.safetensors\"}}", hf + "/model.safetensors.index.json")
            _ = try HFCheckpointFolder(directory: hf)
        }),
        ("config architectures", {
            let hf = try folder("msg-arch")
            try write("{\"architectures\":[\(JSONWriter.serdeQuoted(hostile))],\"model_type\":\"llama\"}", hf + "/config.json")
            _ = try HFImport(source: hf, output: hf + "-out")
        }),
        ("config field type", {
            let hf = try folder("msg-field")
            var config = String(decoding: try TestCheckpoints.readFile(hf + "/config.json"), as: UTF8.self)
            config = config.replacingOccurrences(of: "\"num_hidden_layers\": 2", with: "\"num_hidden_layers\": \(JSONWriter.serdeQuoted(hostile))")
            try write(config, hf + "/config.json")
            _ = try HFImport(source: hf, output: hf + "-out")
        }),
        ("zip entry name", {
            // The central directory names the entry differently from its local header.
            var bytes = try TestCheckpoints.readFile(TestCheckpoints.path("zips/torch-float32.pt"))
            let signature: [UInt8] = [0x50, 0x4B, 1, 2]
            let name = Array("archive/data.pkl".utf8)
            func isCentralRecord(_ index: Int) -> Bool {
                Array(bytes[index..<(index + 4)]) == signature && bytes[(index + 46)...].starts(with: name)
            }
            let central = try #require((0..<(bytes.count - 4)).last(where: isCentralRecord))
            for (offset, byte) in Array("\r\u{1B}[2J\u{07}".utf8).enumerated() { bytes[central + 46 + offset] = byte }
            let path = try TestCheckpoints.scratchDirectory("msg-zip") + "/x.pt"
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            _ = try ZipArchive(path: path)
        }),
        ("pickle global", {
            let pickle: [UInt8] = [0x80, 0x02] + Array("c\(hostile)\nsystem\n".utf8) + [0x2E]
            _ = try DCPMetadata(pickle: pickle, file: ".metadata")
        }),
        ("pickle root class", {
            // An allowed global whose object has a key of the wrong kind, named with hostile text.
            let value = PickleValue.newObject(.global("torch.distributed.checkpoint.metadata", "Metadata"), [], .stringDict([
                "state_dict_metadata": .dict([(.string(hostile), .none)]),
            ]))
            _ = try DCPMetadata(pickle: PickleWriter.write(value), file: ".metadata")
        }),
        ("manifest kind", {
            let directory = try TestCheckpoints.scratchDirectory("msg-manifest")
            try write("{\"format\":\"nembridge-manifest/1\",\"kind\":\(JSONWriter.serdeQuoted(hostile)),\"tensors\":[]}",
                      directory + "/" + ChecksumManifest.fileName)
            _ = try CheckpointVerifier.verifyManifest(directory)
        }),
        ("manifest entry", {
            let directory = try TestCheckpoints.scratchDirectory("msg-manifest-entry")
            try write("{\"format\":\"nembridge-manifest/1\",\"kind\":\"hf-safetensors\",\"tensors\":[{\"name\":\(JSONWriter.serdeQuoted(hostile))}]}",
                      directory + "/" + ChecksumManifest.fileName)
            _ = try CheckpointVerifier.verifyManifest(directory)
        }),
        ("legacy top-level keys", {
            let directory = try TestCheckpoints.scratchDirectory("msg-legacy")
            try FileManager.default.createDirectory(atPath: directory + "/mp_rank_00", withIntermediateDirectories: true)
            let state = PickleValue.dict((0..<50).map { (.string("\(hostile)\($0)"), .none) })
            try Data(try TorchSaveArchive.objectArchive(state)).write(to: URL(fileURLWithPath: directory + "/mp_rank_00/model_optim_rng.pt"))
            _ = try LegacyTorchCheckpoint(directory: directory)
        }),
        ("tracker contents", {
            let scratch = try TestCheckpoints.scratchDirectory("msg-tracker")
            try FileManager.default.copyItem(atPath: TestCheckpoints.path("megatron/gpt-dense-ws1"), toPath: scratch + "/save")
            try write(hostile, scratch + "/save/latest_checkpointed_iteration.txt")
            _ = try TorchDistCheckpoint(path: scratch + "/save")
        }),
    ]

    static let quoting: Set<String> = [
        "safetensors tensor name", "safetensors dtype", "index shard name", "config architectures", "zip entry name",
        "pickle global", "pickle root class", "manifest kind", "legacy top-level keys", "tracker contents",
    ]

    @Test("every error description is one line, whatever the input says", arguments: cases.indices)
    func oneLine(_ index: Int) throws {
        let (label, body) = Self.cases[index]
        do {
            try body()
            Issue.record("\(label): no error")
        } catch {
            let text = "\(error)"
            #expect(!MessageText.needsEscaping(text), "\(label): \(MessageText.quoted(text, limit: nil))")
            #expect(text.count < 4000, "\(label): \(text.count) characters")
            // Where the message quotes the input, it is the escaped text (some errors do not quote it).
            if Self.quoting.contains(label) { #expect(text.contains("\\r\\x1B[2J\\x07"), "\(label): \(text)") }
        }
    }
}

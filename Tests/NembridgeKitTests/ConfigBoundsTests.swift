import Foundation
import NembridgeKit
import NembridgeTestSupport
import TensorCore
import Testing
import WeightMapping

/// config.json is input: its numbers are checked against the tensors before anything
/// proportional to them is built, and a size the tensors do not bear out is an error, not an
/// `args` entry (issue 13's "config numbers are believed before the tensors are checked").
struct ConfigBoundsTests {
    /// A copy of a fixture folder with `config.json` edited (top-level fields set or removed).
    static func folder(_ fixture: String, _ edits: [(String, JSONValue?)]) throws -> String {
        let scratch = try TestCheckpoints.scratchDirectory("config-bounds")
        let source = TestCheckpoints.path("\(fixture)/hf")
        for name in try FileManager.default.contentsOfDirectory(atPath: source) {
            try FileManager.default.copyItem(atPath: source + "/" + name, toPath: scratch + "/" + name)
        }
        let document = try JSONParser.parse(TestCheckpoints.readFile(source + "/config.json"), dialect: .python)
        var members = document.objectMembers ?? []
        for (field, value) in edits {
            members.removeAll { $0.key == field }
            if let value { members.append((field, value)) }
        }
        try Array(JSONWriter.pythonIndented(.object(members)).utf8).withUnsafeBytes {
            try Data($0).write(to: URL(fileURLWithPath: scratch + "/config.json"))
        }
        return scratch
    }

    /// Rewrites one tensor's shape in a single-file fixture's header (same element count, so the
    /// data section stays valid): the shape lies, the bytes do not.
    static func reshape(_ folder: String, tensor: String, to shape: [Int]) throws {
        let path = folder + "/model.safetensors"
        let bytes = try TestCheckpoints.readFile(path)
        let length = Int(bytes[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        let header = try JSONParser.parse(Array(bytes[8..<(8 + length)]))
        let members = (header.objectMembers ?? []).map { member -> (key: String, value: JSONValue) in
            guard member.key == tensor, var fields = member.value.objectMembers else { return member }
            fields = fields.map { $0.key == "shape" ? ("shape", .array(shape.map { .number(JSONNumber($0)) })) : $0 }
            return (member.key, .object(fields))
        }
        var text = Array(JSONWriter.compact(.object(members)).utf8)
        while text.count % 8 != 0 { text.append(0x20) }
        var length64 = UInt64(text.count).littleEndian
        var out = withUnsafeBytes(of: &length64) { Array($0) }
        out += text
        out += bytes[(8 + length)...]
        try Data(out).write(to: URL(fileURLWithPath: path))
    }

    static func importError(_ folder: String) -> String? {
        defer { try? FileManager.default.removeItem(atPath: folder) }
        do {
            _ = try HFImport(source: folder, output: folder + "-out")
            return nil
        } catch {
            return "\(error)"
        }
    }

    static func number(_ text: String) -> JSONValue { .number(JSONNumber(text: text)) }

    @Test("absurd layer and expert counts are refused before anything proportional is built", arguments: [
        ("llama3-tiny", "num_hidden_layers", "2147483648", "num_hidden_layers"),
        ("llama3-tiny", "num_hidden_layers", "1000000", "num_hidden_layers"),
        ("llama3-tiny", "num_hidden_layers", "60000", "num_hidden_layers"),
        ("nemotron3-moe-tiny", "n_routed_experts", "1000000000", "n_routed_experts"),
        ("nemotron3-moe-tiny", "n_routed_experts", "1000000", "n_routed_experts"),
        ("nemotron3-moe-tiny", "n_routed_experts", "-1", "n_routed_experts"),
        ("nemotron3-super-tiny", "n_routed_experts", "-1", "n_routed_experts"),
        ("nemotron3-moe-tiny", "n_routed_experts", "0", "n_routed_experts"),
    ])
    func absurdCounts(_ fixture: String, _ field: String, _ value: String, _ named: String) throws {
        let clock = ContinuousClock()
        let start = clock.now
        let error = Self.importError(try Self.folder(fixture, [(field, Self.number(value))]))
        #expect(clock.now - start < .seconds(5))
        let message = try #require(error)
        #expect(message.contains("`\(named)`") && message.contains("config.json"), "\(message)")
    }

    @Test("sizes the tensors do not bear out are refused, naming the config field", arguments: [
        ("llama3-tiny", "hidden_size", "2147483648", "hidden_size"),
        ("llama3-tiny", "hidden_size", "1.5", "hidden_size"),
        ("llama3-tiny", "hidden_size", "128", "hidden_size"),
        ("llama3-tiny", "intermediate_size", "9223372036854775807", "intermediate_size"),
        ("llama3-tiny", "intermediate_size", "448", "intermediate_size"),
        ("nemotron-h-tiny", "hidden_size", "32", "hidden_size"),
        ("nemotron-h-tiny", "intermediate_size", "64", "intermediate_size"),
        ("nemotron3-moe-tiny", "moe_intermediate_size", "64", "moe_intermediate_size"),
        ("decilm-tiny", "hidden_size", "96", "hidden_size"),
    ])
    func lyingSizes(_ fixture: String, _ field: String, _ value: String, _ named: String) throws {
        let message = try #require(Self.importError(try Self.folder(fixture, [(field, Self.number(value))])))
        #expect(message.contains("`\(named)`"), "\(message)")
    }

    @Test("a norm epsilon that is not a number is refused")
    func epsilonNotANumber() throws {
        let message = try #require(Self.importError(try Self.folder("llama3-tiny", [("rms_norm_eps", .string("x"))])))
        #expect(message.contains("`rms_norm_eps`") && message.contains("not a number"), "\(message)")
    }

    @Test("tensors with extra axes are refused, naming the tensor", arguments: [
        ("llama3-tiny", "lm_head.weight", [1000, 64, 1]),
        ("llama3-tiny", "model.norm.weight", [1, 64]),
        ("nemotron-h-tiny", "backbone.norm_f.weight", [1, 64]),
    ])
    func extraAxes(_ fixture: String, _ tensor: String, _ shape: [Int]) throws {
        let folder = try Self.folder(fixture, [])
        try Self.reshape(folder, tensor: tensor, to: shape)
        let message = try #require(Self.importError(folder))
        #expect(message.contains(tensor) && message.contains("axes"), "\(message)")
    }

    @Test("the unedited fixtures still import (the checks hold for real checkpoints)", arguments: TestCheckpoints.hfFolders)
    func fixturesPass(_ relative: String) throws {
        _ = try HFImport(source: TestCheckpoints.path(relative), output: "/nonexistent/out")
    }
}

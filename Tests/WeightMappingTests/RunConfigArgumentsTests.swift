import Foundation
import NembridgeTestSupport
import TensorCore
import Testing
@testable import WeightMapping

/// Megatron-Bridge's run_config.yaml as a source of the training arguments: the files in
/// TestCheckpoints/bridge-run-config were written by Bridge 0.6.2's own serializer for the two
/// models tools/megatron/train_checkpoint.py trains; through each table's `run_config_args` they
/// give the very config.json that the same model's Megatron-LM `args` give (`*-config.json`,
/// written by nembridge from a real training checkpoint's args and loaded by transformers in
/// Tests/interop/test_training_checkpoints.py).
struct RunConfigArgumentsTests {
    static let tables = LlamaMappingTests.tables

    static func config(_ name: String) throws -> (table: String, document: JSONValue) {
        let file = TestCheckpoints.path("bridge-run-config/\(name)-run_config.yaml")
        let text = String(decoding: try TestCheckpoints.readFile(file), as: UTF8.self)
        let model = try #require(try BridgeRunConfigFile.sections(yaml: text, file: file)["model"])
        let chosen = tables.compactMap { table -> (MappingTable, [String: JSONValue])? in
            guard let spec = table.hfConfig else { return nil }
            let arguments = table.runConfigArguments?.arguments(model: model) ?? model
            return spec.selects(arguments) ? (table, arguments) : nil
        }
        try #require(chosen.count == 1, "tables selecting \(name): \(chosen.map(\.0.name))")
        let (table, arguments) = chosen[0]
        return (table.name, try table.hfConfig!.configDocument(arguments: arguments, source: file, table: table.name))
    }

    @Test("run_config.yaml gives the config.json of the args", arguments: [("llama", "llama"), ("hybrid", "nemotron-h")])
    func sameConfigAsTheArgs(name: String, table: String) throws {
        let (chosen, document) = try Self.config(name)
        #expect(chosen == table)
        let expected = try JSONParser.parse(TestCheckpoints.readFile(TestCheckpoints.path("bridge-run-config/\(name)-config.json")),
                                            dialect: .python)
        #expect(JSONWriter.pythonIndented(document) == JSONWriter.pythonIndented(expected))
    }

    @Test("PyYAML's scalars: YAML 1.1 floats, bools, nulls; quoted text stays text")
    func scalars() throws {
        let yaml = """
            model:
              a: 1.0e-05
              b: 500000
              c: true
              d: null
              e: '1.5'
              f: RMSNorm
              g: -.5
              h:
                _call_: false
                _target_: torch.nn.functional.silu
            """
        let model = try #require(try BridgeRunConfigFile.sections(yaml: yaml, file: "x.yaml")["model"])
        #expect(model["a"]?.doubleValue == 1e-5 && model["b"]?.intValue == 500000 && model["c"]?.boolValue == true)
        #expect(model["d"]?.isNull == true && model["e"]?.stringValue == "1.5" && model["f"]?.stringValue == "RMSNorm")
        #expect(model["g"]?.doubleValue == -0.5 && model["h"]?["_target_"]?.stringValue == "torch.nn.functional.silu")
    }

    @Test("a file with no model section is an error naming it")
    func noModel() throws {
        #expect(throws: RunConfigError.invalid(file: "r.yaml", reason: "no `model:` section")) {
            try BridgeRunConfigFile.sections(yaml: "checkpoint:\n  save: x\n", file: "r.yaml")
        }
    }
}

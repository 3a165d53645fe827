import Foundation
import NembridgeTestSupport
import SafetensorsFormat
import TensorCore
import Testing
@testable import WeightMapping

/// Config dialects of published checkpoints: absent optional features are absent, not errors.
struct ConfigDialectTests {
    static func config(_ fixture: String, editing edit: (inout [(key: String, value: JSONValue)]) -> Void) throws -> JSONValue {
        let document = try JSONParser.parse(TestCheckpoints.readFile(TestCheckpoints.path("\(fixture)/hf/config.json")),
                                            dialect: .python)
        var members = document.objectMembers ?? []
        edit(&members)
        return .object(members)
    }

    static func shapes(_ fixture: String) throws -> [String: [Int]] {
        [String: [Int]](uniqueKeysWithValues: try HFCheckpointFolder(directory: TestCheckpoints.path("\(fixture)/hf"))
            .tensors.map { ($0.info.name, $0.info.shape) })
    }

    /// The MoE fields transformers' NemotronHConfig writes even for a dense model; published dense
    /// Nemotron-H configs have none of them.
    static let moeFields: Set<String> = [
        "n_routed_experts", "moe_intermediate_size", "moe_shared_expert_intermediate_size", "num_experts_per_tok",
        "routed_scaling_factor", "moe_latent_size", "n_shared_experts", "moe_shared_expert_overlap", "norm_topk_prob",
        "n_group", "topk_group", "mtp_layers_block_type", "num_nextn_predict_layers",
    ]
    static let moeArguments = ["num_moe_experts", "moe_ffn_hidden_size", "moe_router_topk", "moe_shared_expert_intermediate_size",
                               "moe_router_topk_scaling_factor", "moe_latent_size"]

    @Test("dense Nemotron-H with the published field set: no MoE fields, hybrid_override_pattern, torch_dtype")
    func denseWithoutMoEFields() throws {
        let config = try Self.config("nemotron-h-tiny") { members in
            members.removeAll { Self.moeFields.contains($0.key) || $0.key == "layers_block_type" || $0.key == "dtype" }
            members.append(("hybrid_override_pattern", .string("M*M-")))
            members.append(("torch_dtype", .string("bfloat16")))
            members.append(("time_step_limit", try! JSONParser.parse("[0.0, Infinity]", dialect: .python)))
        }
        let model = try ResolvedModel.resolve(tables: LlamaMappingTests.tables, config: config, configPath: "config.json")
        for name in Self.moeArguments { #expect(model.argument(name) == .null, "\(name)") }
        let plan = try MappingPlan(model: model, direction: .fromHF(shapes: try Self.shapes("nemotron-h-tiny"), vocabDivisor: 128,
                                                                    tensorParallel: 1))
        #expect(!plan.megatronTensors.contains { $0.key.contains("experts") })
        #expect(plan.extraState.count > 0)
    }

    @Test("a dense model's MoE defaults (as transformers writes them) are not Megatron arguments")
    func denseWithTransformersDefaults() throws {
        let config = try Self.config("nemotron-h-tiny") { _ in }
        #expect(config["n_routed_experts"]?.intValue == 8)
        let model = try ResolvedModel.resolve(tables: LlamaMappingTests.tables, config: config, configPath: "config.json")
        for name in Self.moeArguments { #expect(model.argument(name) == .null, "\(name)") }
        #expect(model.argument("n_routed_experts") == nil)
    }

    @Test("null MoE fields read as absent")
    func nullMoEFields() throws {
        let config = try Self.config("nemotron-h-tiny") { members in
            for index in members.indices where Self.moeFields.contains(members[index].key) { members[index].value = .null }
        }
        let model = try ResolvedModel.resolve(tables: LlamaMappingTests.tables, config: config, configPath: "config.json")
        #expect(model.argument("num_moe_experts") == .null)
    }

    @Test("a model with MoE layers needs its expert count, and the error names the config field")
    func moeNeedsExpertCount() throws {
        let config = try Self.config("nemotron3-moe-tiny") { members in members.removeAll { $0.key == "n_routed_experts" } }
        #expect {
            try ResolvedModel.resolve(tables: LlamaMappingTests.tables, config: config, configPath: "config.json")
        } throws: { error in
            "\(error)".contains("n_routed_experts") && "\(error)".contains("num_moe_experts")
        }
        let full = try Self.config("nemotron3-moe-tiny") { _ in }
        let model = try ResolvedModel.resolve(tables: LlamaMappingTests.tables, config: full, configPath: "config.json")
        #expect(model.argument("num_moe_experts")?.intValue == 8)
    }
}

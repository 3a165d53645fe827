import Foundation
import NembridgeTestSupport
import SafetensorsFormat
import TensorCore
import Testing
@testable import WeightMapping

struct LlamaMappingTests {
    static let tables: [MappingTable] = {
        do { return try MappingTable.loadAll(directory: TestCheckpoints.root + "/Mappings") } catch { fatalError("\(error)") }
    }()

    static func config(_ fixture: String) throws -> JSONValue {
        try JSONParser.parse(TestCheckpoints.readFile(TestCheckpoints.path("\(fixture)/hf/config.json")))
    }

    @Test("every table in Mappings/ lints") func tablesLint() {
        #expect(Self.tables.contains { $0.name == "llama" })
    }

    @Test("Llama-3 GQA: arguments, keys, and the QKV interleave")
    func llama3() throws {
        let config = try Self.config("llama3-tiny")
        let model = try ResolvedModel.resolve(tables: Self.tables, config: config, configPath: "config.json")
        #expect(model.table.name == "llama")
        #expect(try model.int("num_layers") == 2)
        #expect(try model.int("kv_channels") == 16)
        #expect(model.argument("untie_embeddings_and_output_weights") == .bool(true))
        #expect(model.argument("rotary_base")?.doubleValue == 500000)
        // Shapes from the real file.
        let shapes = [String: [Int]](uniqueKeysWithValues: try HFCheckpointFolder(directory: TestCheckpoints.path("llama3-tiny/hf"))
            .tensors.map { ($0.info.name, $0.info.shape) })
        let plan = try MappingPlan(model: model, direction: .fromHF(shapes: shapes, vocabDivisor: 128, tensorParallel: 1))
        #expect(plan.paddedVocabSize == 1024)
        let keys = Set(plan.megatronTensors.map(\.key))
        #expect(keys == [
            "embedding.word_embeddings.weight", "output_layer.weight", "decoder.final_layernorm.weight",
            "decoder.layers.self_attention.linear_qkv.layer_norm_weight", "decoder.layers.self_attention.linear_qkv.weight",
            "decoder.layers.self_attention.linear_proj.weight", "decoder.layers.mlp.linear_fc1.layer_norm_weight",
            "decoder.layers.mlp.linear_fc1.weight", "decoder.layers.mlp.linear_fc2.weight",
        ])
        let qkv = plan.megatronTensors.first { $0.name == "decoder.layers.1.self_attention.linear_qkv.weight" }
        #expect(qkv?.shape == [(4 + 2 * 2) * 16, 64])
        #expect(qkv?.layer == 1)
        // Group 1 of 2: q heads 2-3 (rows 32..<64), then k head 1, then v head 1.
        let rows = plan.correspondences.filter { $0.megatron.tensor == "decoder.layers.1.self_attention.linear_qkv.weight" }
            .map { "\($0.hf) -> \($0.megatron.rows)" }
        #expect(rows == [
            "model.layers.1.self_attn.q_proj.weight[0:32] -> 0..<32",
            "model.layers.1.self_attn.k_proj.weight[0:16] -> 32..<48",
            "model.layers.1.self_attn.v_proj.weight[0:16] -> 48..<64",
            "model.layers.1.self_attn.q_proj.weight[32:64] -> 64..<96",
            "model.layers.1.self_attn.k_proj.weight[16:32] -> 96..<112",
            "model.layers.1.self_attn.v_proj.weight[16:32] -> 112..<128",
        ])
        #expect(plan.zeroFills.map(\.description) == [
            "embedding.word_embeddings.weight[1000:1024]", "output_layer.weight[1000:1024]",
        ])
        #expect(plan.extraState.count == 8)
        #expect(plan.extraState.first?.key == "decoder.layers.self_attention.linear_qkv")
        #expect(plan.extraState.first?.prefix == [0])
    }

    @Test("tied embeddings: no output_layer; the local spec uses the same checkpoint keys")
    func tiedLocal() throws {
        let config = try Self.config("llama32-tied-tiny")
        let model = try ResolvedModel.resolve(tables: Self.tables, config: config, configPath: "config.json", spec: .local)
        let shapes = [String: [Int]](uniqueKeysWithValues: try HFCheckpointFolder(directory: TestCheckpoints.path("llama32-tied-tiny/hf"))
            .tensors.map { ($0.info.name, $0.info.shape) })
        let plan = try MappingPlan(model: model, direction: .fromHF(shapes: shapes, vocabDivisor: 128, tensorParallel: 1))
        let keys = Set(plan.megatronTensors.map(\.key))
        #expect(!keys.contains("output_layer.weight"))
        #expect(keys.contains("decoder.layers.self_attention.linear_qkv.layer_norm_weight"))
        #expect(keys.contains("decoder.layers.mlp.linear_fc1.layer_norm_weight"))
        #expect(model.argument("untie_embeddings_and_output_weights") == .bool(false))
    }

    @Test("unmapped and missing tensors are errors listing every one")
    func strictness() throws {
        let config = try Self.config("llama3-tiny")
        let model = try ResolvedModel.resolve(tables: Self.tables, config: config, configPath: "config.json")
        var shapes = [String: [Int]](uniqueKeysWithValues: try HFCheckpointFolder(directory: TestCheckpoints.path("llama3-tiny/hf"))
            .tensors.map { ($0.info.name, $0.info.shape) })
        shapes["model.layers.0.self_attn.rotary_emb.inv_freq"] = [8]  // ignored by the table
        shapes["model.extra.weight"] = [3]
        #expect(throws: MappingError.unmappedTensors(side: "Hugging Face", names: ["model.extra.weight"])) {
            try MappingPlan(model: model, direction: .fromHF(shapes: shapes, vocabDivisor: 128, tensorParallel: 1))
        }
        shapes["model.extra.weight"] = nil
        shapes["model.layers.1.mlp.up_proj.weight"] = nil
        shapes["lm_head.weight"] = nil
        #expect(throws: MappingError.missingTensors(side: "Hugging Face", names: ["lm_head.weight", "model.layers.1.mlp.up_proj.weight"])) {
            try MappingPlan(model: model, direction: .fromHF(shapes: shapes, vocabDivisor: 128, tensorParallel: 1))
        }
    }

    @Test("HF -> Megatron -> HF correspondences are the identity on rows")
    func roundTrip() throws {
        let config = try Self.config("llama3-tiny")
        let model = try ResolvedModel.resolve(tables: Self.tables, config: config, configPath: "config.json")
        let shapes = [String: [Int]](uniqueKeysWithValues: try HFCheckpointFolder(directory: TestCheckpoints.path("llama3-tiny/hf"))
            .tensors.map { ($0.info.name, $0.info.shape) })
        let forward = try MappingPlan(model: model, direction: .fromHF(shapes: shapes, vocabDivisor: 128, tensorParallel: 1))
        var keyShapes: [String: [Int]] = [:]
        for tensor in forward.megatronTensors {
            keyShapes[tensor.key] = tensor.layer == nil ? tensor.shape : [model.layerCount] + tensor.shape
        }
        let backward = try MappingPlan(model: model, direction: .fromMegatron(keyShapes: keyShapes))
        #expect(Set(backward.correspondences) == Set(forward.correspondences))
        #expect(Dictionary(uniqueKeysWithValues: backward.hfTensors.map { ($0.name, $0.shape) }) == shapes)
    }

    @Test("table lint: line and column in every message", arguments: [
        ("format: nembridge-mapping/2\nname: x\nhf_architectures: [A]\nmegatron: {model: M, layer_keys: stacked, layer_count: n}\nrules: []\n", "format must be"),
        ("format: nembridge-mapping/1\nname: x\nhf_architectures: [A]\nmegatron: {model: M, layer_keys: stacked, layer_count: n}\nrules:\n  - {hf: a, mc: b, bogus: 1}\n", "unknown key `bogus`"),
        ("format: nembridge-mapping/1\nname: x\nhf_architectures: [A]\nmegatron: {model: M, layer_keys: stacked, layer_count: n}\nrules:\n  - {hf: \"a.{layer}\", mc: b}\n", "placeholders"),
        ("format: nembridge-mapping/1\nname: &n x\nhf_architectures: [A]\nmegatron: {model: M, layer_keys: stacked, layer_count: n}\nrules: []\n", "anchors"),
        ("format: nembridge-mapping/1\nname: x\nhf_architectures: [A]\nmegatron: {model: M, layer_keys: stacked, layer_count: n}\nrules:\n  - {op: qkv, hf: {q: a, k: b}, mc: c}\n", "missing role `v`"),
        ("format: nembridge-mapping/1\nname: x\nhf_architectures: [A]\nmegatron: {model: M, layer_keys: stacked, layer_count: n}\nrules:\n  - {hf: a, mc: c}\n  - {hf: b, mc: c}\n", "repeats Megatron name"),
        ("format: nembridge-mapping/1\nname: x\nhf_architectures: [A]\nmegatron: {model: M, layer_keys: stacked, layer_count: n}\nrules:\n  - {hf: a, mc: e}\n  - {hf: b, mc: o}\noutput_layer: {module: o, weight: o, tied_to: embedding}\n", "output_layer.tied_to: `embedding` is no rule's Megatron name"),
        ("format: nembridge-mapping/1\nname: x\nhf_architectures: [A]\nmegatron: {model: M, layer_keys: stacked, layer_count: n}\nrules: []\nhf_config: {fields: {f: {fixed: rope.f}}}\n", "`rope.f` is no GROUP.FIELD of megatron_fixed_config"),
        ("format: nembridge-mapping/1\nname: x\nhf_architectures: [A]\nmegatron: {model: M, layer_keys: stacked, layer_count: n}\nrules:\n  - {hf: \"a.{layer}.b\", mc: \"decoder.layers.{layer}.b\"}\n  - {hf: \"a.{layer}.c\", mc: \"blocks.{layer}.c\"}\n", "every layered Megatron name starts with one prefix"),
        ("format: nembridge-mapping/1\nname: x\nhf_architectures: [A]\nmegatron: {model: M, layer_keys: per_layer, layer_count: n, stacked: [expert]}\nrules:\n  - {hf: \"a.{layer}.e.{expert}.w\", mc: \"d.{layer}.mlp.experts.{expert}.w\"}\nlegacy_expert_names: {key: experts.experts., sequential: experts.local_experts., grouped: experts.}\n", "`experts.experts.{expert}.` is not in"),
    ])
    func lint(_ yaml: String, _ expected: String) {
        let error = #expect(throws: MappingError.self) { try MappingTable(yaml: yaml, file: "t.yaml") }
        let text = error.map { String(describing: $0) } ?? ""
        #expect(text.hasPrefix("t.yaml:"), "\(text)")
        #expect(text.contains(expected), "\(text)")
    }
}

struct EmbeddedMappingsTests {
    @Test("the embedded tables equal Mappings/*.yaml (run tools/embed-mappings.sh after editing a table)")
    func notStale() throws {
        let directory = TestCheckpoints.root + "/Mappings"
        let files = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".yaml") }.sorted()
        #expect(EmbeddedMappings.tables.map(\.file) == files)
        for (file, yaml) in EmbeddedMappings.tables {
            #expect(yaml + "\n" == (try String(contentsOfFile: directory + "/" + file, encoding: .utf8)), "\(file) is stale")
        }
        #expect(try MappingTable.load().map(\.name) == LlamaMappingTests.tables.map(\.name))
    }
}

/// Megatron-Core facts the code reads from the tables instead of searching key strings for them.
struct TableFactsTests {
    static func table(_ name: String) throws -> MappingTable {
        try #require(LlamaMappingTests.tables.first { $0.name == name })
    }

    @Test("every table names its LM head and the embedding a tied one copies")
    func outputLayer() throws {
        for table in LlamaMappingTests.tables {
            let output = try #require(table.outputLayer, "\(table.name)")
            #expect(output.module == "output_layer" && output.weight == "output_layer.weight", "\(table.name)")
            #expect(output.tiedTo == "embedding.word_embeddings.weight", "\(table.name)")
        }
    }

    @Test("the MTP layer's own extra-state module is an MTP module without an {mtp} placeholder")
    func mtpExtraState() throws {
        let modules = try Self.table("nemotron-h").extraState[.transformerEngine] ?? []
        let projection = try #require(modules.first { $0.pattern.text == "mtp.layers.0.eh_proj" })
        #expect(projection.isMTP && !projection.pattern.placeholders.contains("mtp"))
        #expect(modules.filter(\.isMTP).allSatisfy { $0.pattern.text.hasPrefix("mtp.") })
        #expect(modules.filter { !$0.isMTP }.allSatisfy { !$0.pattern.text.hasPrefix("mtp.") })
    }

    @Test("llama3 RoPE: the values Megatron-Core fixes are the ones hf_config writes")
    func llama3RoPE() throws {
        let table = try Self.table("llama")
        let rope = try #require(table.megatronFixedConfig.first { $0.name == "llama3_rope" })
        // Megatron-Core 0.19.2's apply_rope_scaling defaults (rope_utils.py).
        #expect(rope.values.map { "\($0.field)=\(JSONWriter.compact($0.value))" }
            == ["low_freq_factor=1.0", "high_freq_factor=4.0", "original_max_position_embeddings=8192"])
        let document = try #require(table.hfConfig).configDocument(
            arguments: ["use_rope_scaling": .bool(true), "rope_scaling_factor": .number(JSONNumber(32)), "rotary_base": .number(JSONNumber(500000)),
                        "hidden_size": .number(JSONNumber(64)), "num_attention_heads": .number(JSONNumber(4)), "normalization": .string("RMSNorm"),
                        "swiglu": .bool(true), "position_embedding_type": .string("rope"), "rotary_percent": .number(JSONNumber(text: "1.0")),
                        "init_method_std": .number(JSONNumber(text: "0.02")), "layernorm_epsilon": .number(JSONNumber(text: "1e-05")),
                        "ffn_hidden_size": .number(JSONNumber(128)), "max_position_embeddings": .number(JSONNumber(256)),
                        "num_layers": .number(JSONNumber(2)), "vocab_size": .number(JSONNumber(1000)),
                        "untie_embeddings_and_output_weights": .bool(true), "add_qkv_bias": .bool(false), "add_bias_linear": .bool(false)],
            source: "args", table: "llama")
        let written = try #require(document["rope_parameters"])
        for (field, value) in rope.values { #expect(written[field] == value, "\(field)") }
        #expect(written["rope_type"] == .string("llama3"))
    }

    @Test("where per-layer names carry the layer, which modules are on the first stage, how legacy files name experts")
    func moduleNaming() throws {
        for table in LlamaMappingTests.tables {
            #expect(table.megatronLayerPrefix == "decoder.layers.", "\(table.name)")
            #expect(table.firstStageMegatronNames == ["embedding.word_embeddings.weight"], "\(table.name)")
            #expect(table.makesMegatronName("decoder.layers.3.mlp.linear_fc2.weight", spec: .transformerEngine), "\(table.name)")
            #expect(!table.makesMegatronName("model.layers.3.mlp.down_proj.weight", spec: .transformerEngine), "\(table.name)")
        }
        let hybrid = try Self.table("nemotron-h")
        #expect(hybrid.legacyExpertNames.map { [$0.key, $0.sequential, $0.grouped] } == ["experts.experts.", "experts.local_experts.", "experts."])
        #expect(hybrid.makesMegatronName("mtp.layers.0.mtp_model_layer.layers.1.mlp.experts.experts.3.linear_fc1.weight", spec: .local))
        #expect(!hybrid.makesMegatronName("mtp.layers.1.mixer.experts.3.up_proj.weight", spec: .local))
        #expect(try Self.table("llama").legacyExpertNames == nil)
    }

    @Test("the Megatron-LM flags --use-checkpoint-args does not restore come from each table")
    func megatronLMFlags() throws {
        #expect(try Self.table("llama").megatronLMFlags.map(\.flag) == ["--use-rope-scaling", "--rope-scaling-factor", "--norm-epsilon"])
        #expect(try Self.table("decilm").megatronLMFlags.map(\.flag) == ["--use-rope-scaling", "--rope-scaling-factor", "--norm-epsilon"])
        #expect(try Self.table("nemotron-h").megatronLMFlags.map(\.flag) == ["--norm-epsilon"])
    }
}

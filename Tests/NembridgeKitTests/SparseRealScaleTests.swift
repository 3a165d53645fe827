import Foundation
import MegatronCheckpoint
import NembridgeKit
import NembridgeTestSupport
import SafetensorsFormat
import TensorCore
import Testing

/// A Nemotron 3 Super-like Hugging Face folder at the real dimensions (hidden 4096, vocabulary
/// 131,072, 512 experts with LatentMoE, Mamba-2, MTP), with fewer layers: real safetensors
/// headers, and the tensor data left as a hole of each file (`ftruncate`), so ~20 GB of model
/// take a few hundred kilobytes on disk.
enum SparseSuperFolder {
    static let hidden = 4096, vocab = 131_072, experts = 512
    static let mambaHeads = 128, mambaHeadDim = 64, groups = 8, state = 128
    static let heads = 32, kvHeads = 2, headDim = 128
    static let moeFFN = 2688, shared = 5376, latent = 1024

    /// Writes the folder; returns the tensor count and total bytes the headers declare.
    @discardableResult
    static func write(to directory: String, layers: Int, shardBytes: Int64 = 5_000_000_000) throws -> (tensors: Int, bytes: Int64) {
        let pattern = String((0..<layers).map { $0 % 2 == 0 ? "M" : ($0 % 11 == 5 ? "*" : "E") })
        var tensors: [(name: String, shape: [Int], dtype: String)] = []
        func add(_ name: String, _ shape: [Int], _ dtype: String = "BF16") { tensors.append((name, shape, dtype)) }
        func block(_ prefix: String, _ kind: Character) {
            add(prefix + "norm.weight", [hidden])
            switch kind {
            case "M":
                let conv = mambaHeads * mambaHeadDim + 2 * groups * state
                add(prefix + "mixer.in_proj.weight", [2 * mambaHeads * mambaHeadDim + 2 * groups * state + mambaHeads, hidden])
                add(prefix + "mixer.conv1d.weight", [conv, 1, 4])
                add(prefix + "mixer.conv1d.bias", [conv])
                add(prefix + "mixer.A_log", [mambaHeads], "F32")
                add(prefix + "mixer.D", [mambaHeads], "F32")
                add(prefix + "mixer.dt_bias", [mambaHeads], "F32")
                add(prefix + "mixer.norm.weight", [mambaHeads * mambaHeadDim])
                add(prefix + "mixer.out_proj.weight", [hidden, mambaHeads * mambaHeadDim])
            case "*":
                add(prefix + "mixer.q_proj.weight", [heads * headDim, hidden])
                add(prefix + "mixer.k_proj.weight", [kvHeads * headDim, hidden])
                add(prefix + "mixer.v_proj.weight", [kvHeads * headDim, hidden])
                add(prefix + "mixer.o_proj.weight", [hidden, heads * headDim])
            default:
                add(prefix + "mixer.gate.weight", [experts, hidden])
                add(prefix + "mixer.gate.e_score_correction_bias", [experts], "F32")
                for expert in 0..<experts {
                    add(prefix + "mixer.experts.\(expert).up_proj.weight", [moeFFN, latent])
                    add(prefix + "mixer.experts.\(expert).down_proj.weight", [latent, moeFFN])
                }
                add(prefix + "mixer.shared_experts.up_proj.weight", [shared, hidden])
                add(prefix + "mixer.shared_experts.down_proj.weight", [hidden, shared])
                add(prefix + "mixer.fc1_latent_proj.weight", [latent, hidden])
                add(prefix + "mixer.fc2_latent_proj.weight", [hidden, latent])
            }
        }
        add("backbone.embeddings.weight", [vocab, hidden])
        for (layer, kind) in pattern.enumerated() { block("backbone.layers.\(layer).", kind) }
        add("backbone.norm_f.weight", [hidden])
        add("lm_head.weight", [vocab, hidden])
        add("mtp.layers.0.enorm.weight", [hidden])
        add("mtp.layers.0.hnorm.weight", [hidden])
        add("mtp.layers.0.eh_proj.weight", [hidden, 2 * hidden])
        for (position, kind) in "*E".enumerated() { block("mtp.layers.\(position).", kind) }
        add("mtp.layers.1.final_layernorm.weight", [hidden])

        // Shards of at most `shardBytes`, in tensor order; each file's header lists its tensors
        // in name order, data back to back.
        func bytes(_ tensor: (name: String, shape: [Int], dtype: String)) -> Int64 {
            Int64(tensor.shape.reduce(1, *) * (tensor.dtype == "F32" ? 4 : 2))
        }
        var shards: [[(name: String, shape: [Int], dtype: String)]] = [[]]
        var filled: Int64 = 0
        for tensor in tensors {
            if !shards[shards.count - 1].isEmpty && filled + bytes(tensor) > shardBytes {
                shards.append([])
                filled = 0
            }
            shards[shards.count - 1].append(tensor)
            filled += bytes(tensor)
        }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var weightMap: [(key: String, value: JSONValue)] = []
        var total: Int64 = 0
        for (index, shard) in shards.enumerated() {
            let name = String(format: "model-%05d-of-%05d.safetensors", index + 1, shards.count)
            var members: [(key: String, value: JSONValue)] = [("__metadata__", .object([("format", .string("pt"))]))]
            var offset: Int64 = 0
            for tensor in shard.sorted(by: { $0.name < $1.name }) {
                let size = bytes(tensor)
                members.append((tensor.name, .object([
                    ("dtype", .string(tensor.dtype)), ("shape", .array(tensor.shape.map { .number(JSONNumber($0)) })),
                    ("data_offsets", .array([.number(JSONNumber(Int(offset))), .number(JSONNumber(Int(offset + size)))])),
                ])))
                offset += size
                weightMap.append((tensor.name, .string(name)))
            }
            var header = Array(JSONWriter.compact(.object(members)).utf8)
            header.append(contentsOf: repeatElement(UInt8(ascii: " "), count: (8 - header.count % 8) % 8))
            var file = withUnsafeBytes(of: UInt64(header.count).littleEndian) { Array($0) }
            file.append(contentsOf: header)
            let path = (directory as NSString).appendingPathComponent(name)
            try Data(file).write(to: URL(fileURLWithPath: path))
            // The data: a hole the size of the tensors.
            guard truncate(path, off_t(Int64(file.count) + offset)) == 0 else { throw CocoaError(.fileWriteUnknown) }
            total += offset
        }
        let index = JSONValue.object([
            ("metadata", .object([("total_size", .number(JSONNumber(Int(total))))])), ("weight_map", .object(weightMap)),
        ])
        try JSONWriter.pythonIndented(index).write(toFile: (directory as NSString).appendingPathComponent(HFCheckpointFolder.indexFileName),
                                                   atomically: true, encoding: .utf8)
        let config = JSONValue.object([
            ("architectures", .array([.string("NemotronHForCausalLM")])), ("model_type", .string("nemotron_h")),
            ("hidden_size", .number(JSONNumber(hidden))), ("vocab_size", .number(JSONNumber(vocab))),
            ("num_hidden_layers", .number(JSONNumber(layers))), ("hybrid_override_pattern", .string(pattern)),
            ("mtp_hybrid_override_pattern", .string("*E")), ("num_nextn_predict_layers", .number(JSONNumber(1))),
            ("mamba_num_heads", .number(JSONNumber(mambaHeads))), ("mamba_head_dim", .number(JSONNumber(mambaHeadDim))),
            ("n_groups", .number(JSONNumber(groups))), ("ssm_state_size", .number(JSONNumber(state))),
            ("num_attention_heads", .number(JSONNumber(heads))), ("num_key_value_heads", .number(JSONNumber(kvHeads))),
            ("head_dim", .number(JSONNumber(headDim))), ("n_routed_experts", .number(JSONNumber(experts))),
            ("moe_intermediate_size", .number(JSONNumber(moeFFN))), ("moe_shared_expert_intermediate_size", .number(JSONNumber(shared))),
            ("moe_latent_size", .number(JSONNumber(latent))), ("num_experts_per_tok", .number(JSONNumber(22))),
            ("routed_scaling_factor", .number(JSONNumber(5))), ("intermediate_size", .number(JSONNumber(moeFFN))),
            ("max_position_embeddings", .number(JSONNumber(262_144))), ("layer_norm_epsilon", .number(JSONNumber(text: "1e-05"))),
            ("tie_word_embeddings", .bool(false)), ("torch_dtype", .string("bfloat16")),
        ])
        try JSONWriter.pythonIndented(config).write(toFile: (directory as NSString).appendingPathComponent("config.json"),
                                                    atomically: true, encoding: .utf8)
        return (tensors.count, total)
    }
}

struct SparseRealScaleTests {
    @Test("a Super-like folder at real dimensions (8 layers x 512 experts): the plan reads every header byte once", arguments: [
        (1, 1), (8, 8),
    ])
    func superLike(_ tp: Int, _ ep: Int) throws {
        let scratch = try TestCheckpoints.scratchDirectory("sparse")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let folder = scratch + "/hf"
        let declared = try SparseSuperFolder.write(to: folder, layers: 8)
        // Sparse: the declared gigabytes take (almost) nothing on disk.
        var onDisk: Int64 = 0
        for name in try FileManager.default.contentsOfDirectory(atPath: folder) {
            var status = stat()
            _ = stat((folder as NSString).appendingPathComponent(name), &status)
            onDisk += Int64(status.st_blocks) * 512
        }
        #expect(declared.bytes > 10_000_000_000 && onDisk < 10_000_000, "\(declared.bytes) bytes declared, \(onDisk) on disk")

        var options = HFImport.Options()
        options.tensorParallel = tp
        options.expertParallel = ep
        let plan = try HFImport(source: folder, output: scratch + "/out", options: options)
        let totals = try PlanChecks.check(plan)
        #expect(totals.tensors == declared.tensors)
        #expect(totals.tensorBytes == declared.bytes)
        // Padding: the vocabulary is a multiple of 128 × tp already, so nothing is added.
        #expect(totals.zeroBytes == 0)
        // Expert weights are one chunk per expert, split `tp` ways (ETP defaults to TP); the
        // layout and the plan agree on the count.
        let expertTensors = plan.mapping.megatronTensors.filter(\.isRoutedExpert).count
        #expect(expertTensors == 4 * 2 * SparseSuperFolder.experts)  // 3 MoE layers + the MTP one, fc1 and fc2
        #expect(plan.layout.tensorItemCount >= expertTensors * tp)
        let text = plan.planText()
        #expect(text.contains("tensor bytes: \(formatBytes(declared.bytes))"))
        #expect(text.contains("keys: \(totals.keys); chunks: \(totals.chunks); plan: \(totals.chunks) groups"))
        #expect(!FileManager.default.fileExists(atPath: scratch + "/out"), "planning writes nothing")
    }

    @Test("the plan checks catch a move that reads a row twice")
    func checksCatchErrors() throws {
        let plan = try HFImport(source: TestCheckpoints.path("llama3-tiny/hf"), output: "OUT")
        var broken = ConversionPlan()
        var shifted = false
        for group in 0..<plan.plan.groupCount {
            for var move in plan.plan.moves(group: group) {
                if group > 0 && !shifted && !move.isZeros {
                    move.offset += 128  // one row of a 64-wide BF16 tensor later: a row read twice, one never
                    shifted = true
                }
                if !move.isZeros { move.source = broken.source(plan.plan.sources[Int(move.source)]) }
                broken.append(move)
            }
            broken.endGroup(output: plan.plan.output(group: group), offset: plan.plan.offset(group: group))
        }
        withKnownIssue {
            try PlanChecks.check(layout: plan.layout, plan: broken, source: plan.source)
        }
    }
}

import Execution
import Foundation
import MegatronCheckpoint
import NembridgeKit
import NembridgeTestSupport
import SafetensorsFormat
import TensorCore
import Testing
import WeightMapping

struct ImportExportTests {
    /// Every architecture's fixtures: Llama, heterogeneous DeciLM, Nemotron-H hybrid and MoE.
    static let llamas = ["llama3-tiny/hf", "llama32-tied-tiny/hf", "llama3-sharded-tiny/hf", "decilm-tiny/hf",
                         "nemotron-h-tiny/hf", "nemotron3-moe-tiny/hf", "nemotron3-super-tiny/hf"]

    static func files(_ directory: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
    }

    @Test("HF -> Megatron -> HF is byte-identical, plain and zstd, for every architecture", arguments: llamas, [nil, Int32(3)])
    func roundTrip(_ relative: String, _ zstd: Int32?) throws {
        let source = TestCheckpoints.path(relative)
        let scratch = try TestCheckpoints.scratchDirectory("roundtrip")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var options = HFImport.Options()
        options.zstdLevel = zstd
        let executor = MoveExecutor(workers: 2, chunkBytes: 8192)
        try HFImport(source: source, output: scratch + "/mc", options: options).run(executor: executor)
        #expect(try String(contentsOfFile: scratch + "/mc/latest_checkpointed_iteration.txt", encoding: .utf8) == "release")
        #expect(try Self.files(scratch + "/mc/release") == [".metadata", "__0_0.distcp", "__1_0.distcp", "common.pt", "metadata.json"]
            + (relative.hasPrefix("llama") ? ["run_config.yaml"] : []))
        // Through the mapping, from disk.
        let across = try CheckpointVerifier.verify(source, scratch + "/mc")
        #expect(across.passed, "\(across.text())")
        #expect(try CheckpointVerifier.verifyManifest(scratch + "/mc").passed)

        try MegatronExport(checkpoint: scratch + "/mc", output: scratch + "/hf").run(executor: executor)
        for name in try Self.files(source) {
            #expect(try TestCheckpoints.readFile(scratch + "/hf/" + name) == TestCheckpoints.readFile(source + "/" + name), "\(name)")
        }
        #expect(try Self.files(scratch + "/hf") == (Self.files(source) + [ChecksumManifest.fileName]).sorted())
        #expect(try CheckpointVerifier.verify(source, scratch + "/hf").passed)
        #expect(try CheckpointVerifier.verifyManifest(scratch + "/hf").passed)
        #expect(try Self.files(scratch) == ["hf", "mc"], "no staging leftovers")
    }

    static func box(_ checkpoint: TorchDistCheckpoint, _ key: String, _ offsets: [Int], _ sizes: [Int]) throws -> [UInt8] {
        let count = Int(try checkpoint.boxByteCount(key: key, sizes: sizes))
        return try [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            try checkpoint.readBox(key: key, offsets: offsets, sizes: sizes, into: UnsafeMutableRawBufferPointer(buffer))
            initialized = count
        }
    }

    @Test("the import's tensors are what Megatron-Core's keys need: stacked, interleaved, padded")
    func megatronLayout() throws {
        let scratch = try TestCheckpoints.scratchDirectory("layout")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try HFImport(source: TestCheckpoints.path("llama3-tiny/hf"), output: scratch + "/mc").run(executor: MoveExecutor())
        let checkpoint = try TorchDistCheckpoint(path: scratch + "/mc")
        #expect(try checkpoint.tensor("embedding.word_embeddings.weight").size == [1024, 64])
        #expect(try checkpoint.tensor("decoder.layers.self_attention.linear_qkv.weight").size == [2, 128, 64])
        #expect(try checkpoint.tensor("decoder.layers.mlp.linear_fc1.weight").size == [2, 448, 64])
        // Padding rows read as zeros.
        let padding = try Self.box(checkpoint, "output_layer.weight", [1000, 0], [24, 64])
        #expect(padding.allSatisfy { $0 == 0 })
        // fc1 of layer 1 = [gate; up], read back independently of the plan.
        let hf = try HFCheckpointFolder(directory: TestCheckpoints.path("llama3-tiny/hf"))
        let (gateFile, gate) = try hf.locate("model.layers.1.mlp.gate_proj.weight")
        let (upFile, up) = try hf.locate("model.layers.1.mlp.up_proj.weight")
        let fc1 = try Self.box(checkpoint, "decoder.layers.mlp.linear_fc1.weight", [1, 0, 0], [1, 448, 64])
        #expect(fc1 == (try gateFile.bytes(of: gate)) + (try upFile.bytes(of: up)))
        let common = try #require(try checkpoint.commonState())
        #expect(common["args"]?["padded_vocab_size"]?.intValue == 1024)
        #expect(common["args"]?["num_query_groups"]?.intValue == 2)
        #expect(common["checkpoint_version"]?.doubleValue == 3.0)
        #expect(checkpoint.objectKeys.contains("decoder.layers.self_attention.linear_qkv._extra_state/shard_1_2"))
        // common.pt (older Megatron-Core reads it) holds the same dict as the DCP item.
        guard case .list(let wrapped) = try checkpoint.objectValue(key: "common_state/shard_0_1") else {
            Issue.record("the common state item is not a list")
            return
        }
        #expect(wrapped == [try TorchDistCheckpoint.readTorchSave(path: scratch + "/mc/release/common.pt")])
    }

    @Test("bad input: an unknown architecture, an unmapped tensor, an existing output; nothing is left behind")
    func badInput() throws {
        let scratch = try TestCheckpoints.scratchDirectory("bad")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try FileManager.default.copyItem(atPath: TestCheckpoints.path("llama3-tiny/hf"), toPath: scratch + "/src")
        let configPath = scratch + "/src/config.json"
        let config = try String(contentsOfFile: configPath, encoding: .utf8)
        try config.replacingOccurrences(of: "LlamaForCausalLM", with: "MysteryForCausalLM").write(toFile: configPath, atomically: true, encoding: .utf8)
        let unknown = #expect(throws: MappingError.self) { try HFImport(source: scratch + "/src", output: scratch + "/out") }
        #expect(String(describing: unknown!).hasPrefix(configPath))
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)

        // An extra tensor: rewrite the file with one more.
        let file = try SafetensorsFile(path: scratch + "/src/model.safetensors")
        let declarations = file.tensors.map { TensorDeclaration(name: $0.name, dtype: $0.dtype, shape: $0.shape) }
            + [TensorDeclaration(name: "model.layers.1.mlp.surprise.weight", dtype: .bfloat16, shape: [2])]
        let writer = try SafetensorsWriter(path: scratch + "/model.safetensors", tensors: declarations)
        for tensor in file.tensors { try writer.write(tensor: tensor.name, bytes: try file.bytes(of: tensor)) }
        try writer.write(tensor: "model.layers.1.mlp.surprise.weight", bytes: [0, 0, 0, 0])
        try writer.finish()
        try FileManager.default.removeItem(atPath: scratch + "/src/model.safetensors")
        try FileManager.default.moveItem(atPath: scratch + "/model.safetensors", toPath: scratch + "/src/model.safetensors")
        #expect(throws: MappingError.unmappedTensors(side: "Hugging Face", names: ["model.layers.1.mlp.surprise.weight"])) {
            try HFImport(source: scratch + "/src", output: scratch + "/out")
        }
        #expect(try Self.files(scratch) == ["src"])

        try FileManager.default.createDirectory(atPath: scratch + "/exists", withIntermediateDirectories: false)
        let plan = try HFImport(source: TestCheckpoints.path("llama3-tiny/hf"), output: scratch + "/exists")
        #expect(throws: OutputFolder.Failure.self) { try plan.run(executor: MoveExecutor()) }
        #expect(try Self.files(scratch + "/exists").isEmpty)
    }

    @Test("a tensor-parallel size the heads do not divide into is refused, as Megatron-Core refuses it")
    func tensorParallelConstraint() throws {
        var options = HFImport.Options()
        options.tensorParallel = 8
        let error = #expect(throws: MappingError.self) {
            try HFImport(source: TestCheckpoints.path("llama3-tiny/hf"), output: "/nonexistent/x", options: options)
        }
        #expect(error == .cannotSplit(what: "the model over --tp 8",
                                      reason: "num_attention_heads (4) must be a multiple of tensor_model_parallel_size (8)"))
    }

    @Test("experts keep global ids, one chunk each; the expert count must divide by --ep")
    func experts() throws {
        let scratch = try TestCheckpoints.scratchDirectory("experts")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var options = HFImport.Options()
        options.expertParallel = 3
        #expect(throws: MappingError.self) {
            try HFImport(source: TestCheckpoints.path("nemotron3-moe-tiny/hf"), output: scratch + "/x", options: options)
        }
        options.expertParallel = 4
        try HFImport(source: TestCheckpoints.path("nemotron3-moe-tiny/hf"), output: scratch + "/mc", options: options).run(executor: MoveExecutor())
        let checkpoint = try TorchDistCheckpoint(path: scratch + "/mc")
        let fc1 = try checkpoint.tensor("decoder.layers.4.mlp.experts.experts.linear_fc1.weight")
        #expect(fc1.size == [8, 32, 64])
        #expect(fc1.chunks.map(\.offsets.array).sorted { $0[0] < $1[0] } == (0..<8).map { [$0, 0, 0] })
        #expect(try checkpoint.tensor("decoder.layers.4.mlp.router.expert_bias").dtype == .float32)
        // Expert 5 of layer 4 is HF's experts.5, read back independently of the plan.
        let hf = try HFCheckpointFolder(directory: TestCheckpoints.path("nemotron3-moe-tiny/hf"))
        let (file, tensor) = try hf.locate("backbone.layers.4.mixer.experts.5.up_proj.weight")
        #expect(try Self.box(checkpoint, "decoder.layers.4.mlp.experts.experts.linear_fc1.weight", [5, 0, 0], [1, 32, 64])
            == file.bytes(of: tensor))
        #expect(checkpoint.objectKeys.contains("decoder.layers.4.mlp.experts.experts.linear_fc2._extra_state/shard_7_8"))
    }

    @Test("export of a checkpoint Megatron-Core wrote, with no recorded or given config: config.json from its training args")
    func exportWritesConfigFromTrainingArgs() throws {
        let scratch = try TestCheckpoints.scratchDirectory("noconfig")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var temporary: String?
        do {
            let plan = try MegatronExport(checkpoint: TestCheckpoints.path("megatron/gpt-dense-ws1"), output: scratch + "/out")
            let made = try #require(plan.trainingConfig)
            #expect(made.table == "llama" && made.tokenizerSource == nil)
            #expect(plan.planText().contains("config from the checkpoint's training args"))
            temporary = made.directory
            try plan.run(executor: MoveExecutor())
        }
        // the temporary config folder goes with the plan
        #expect(!FileManager.default.fileExists(atPath: try #require(temporary)))
        #expect(try Self.files(scratch + "/out") == ["config.json", "generation_config.json", "model.safetensors", "nembridge-manifest.json"])
        let config = try HFConfig(path: scratch + "/out/config.json").document
        #expect(config["architectures"] == .array([.string("LlamaForCausalLM")]))
        #expect(config["vocab_size"]?.intValue == 250 && config["num_hidden_layers"]?.intValue == 2)
        #expect(config["num_key_value_heads"]?.intValue == 2 && config["head_dim"]?.intValue == 8)
        #expect(config["rms_norm_eps"] == .number(JSONNumber(text: "1e-05")))
        #expect(config["tie_word_embeddings"] == .bool(false) && config["dtype"] == .string("bfloat16"))
        #expect(config["rope_parameters"]?["rope_theta"] == .number(JSONNumber(text: "500000.0")))

        // --tokenizer DIR: its tokenizer files travel with the written config
        var options = MegatronExport.Options()
        options.tokenizerDirectory = TestCheckpoints.path("llama3-tiny/hf")
        let plan = try MegatronExport(checkpoint: TestCheckpoints.path("megatron/gpt-dense-ws1"), output: scratch + "/tok", options: options)
        #expect(plan.trainingConfig?.tokenizerSource == options.tokenizerDirectory)
        #expect(plan.companionFiles == ["chat_template.jinja", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"])
        options.tokenizerDirectory = scratch
        #expect(throws: TrainingConfigError.notATokenizerFolder(path: scratch)) {
            try MegatronExport(checkpoint: TestCheckpoints.path("megatron/gpt-dense-ws1"), output: scratch + "/tok2", options: options)
        }
    }

    @Test("export --dtype fp16 casts every floating tensor but the table's dtype_kept (the fp32 router bias), and reports it")
    func exportDTypeKeepsRouterBias() throws {
        let scratch = try TestCheckpoints.scratchDirectory("dtype")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try HFImport(source: TestCheckpoints.path("nemotron3-moe-tiny/hf"), output: scratch + "/mc").run(executor: MoveExecutor())
        var options = MegatronExport.Options()
        options.dtype = .float16
        let plan = try MegatronExport(checkpoint: scratch + "/mc", output: scratch + "/out", options: options)
        try plan.run(executor: MoveExecutor())
        let folder = try HFCheckpointFolder(directory: scratch + "/out")
        let source = try HFCheckpointFolder(directory: TestCheckpoints.path("nemotron3-moe-tiny/hf"))
        var kept = 0
        for name in folder.tensors.map(\.info.name) {
            let (file, info) = try folder.locate(name)
            let (sourceFile, sourceInfo) = try source.locate(name)
            if name.hasSuffix("e_score_correction_bias") {
                kept += 1
                let written = try file.bytes(of: info), original = try sourceFile.bytes(of: sourceInfo)
                #expect(info.dtype == .float32 && written == original)
            } else {
                #expect(info.dtype == .float16, "\(name)")
            }
        }
        #expect(kept > 0 && plan.keptDTypes.count == kept)
        #expect(plan.castSummary?.hasPrefix("cast \(plan.casts.count) tensor(s): BF16 -> F16 (\(plan.casts.count)); kept in their dtype") == true)
        #expect(try CheckpointVerifier.verifyManifest(scratch + "/out").passed)
    }

    @Test("casts round to nearest even, ties both ways, NaN and infinities as torch writes them")
    func castKernel() {
        func cast(_ values: [UInt32], to: DType) -> [UInt16] {
            let input = values.map { $0.littleEndian }
            var output = [UInt16](repeating: 0, count: values.count)
            input.withUnsafeBytes { bytes in
                output.withUnsafeMutableBytes { DTypeCast.convert(bytes, from: .float32, to: to, into: $0) }
            }
            return output
        }
        // 1 + 2^-8 is a bf16 tie (down to even 1.0); 1 + 3*2^-8 rounds up to 1 + 2^-6; NaN -> 0xFFFF
        #expect(cast([0x3F80_8000, 0x3F81_8000, 0x7FC0_0000, 0xFF80_0000, 0x8000_0000, 0x0000_0001], to: .bfloat16)
            == [0x3F80, 0x3F82, 0xFFFF, 0xFF80, 0x8000, 0x0000])
        // fp16: 65520 overflows to inf; of the smallest subnormal s = 2^-24, s/2 ties to 0, 3s/4 rounds
        // up to s, 3s/2 ties to even 2s; a NaN keeps its sign and becomes 0x7E00
        #expect(cast([0x477F_F000, 0x3300_0000, 0x3340_0000, 0x33C0_0000, 0xFFC0_0000, 0x7F80_0001], to: .float16)
            == [0x7C00, 0x0000, 0x0001, 0x0002, 0xFE00, 0x7E00])
    }

    @Test("a DeciLM checkpoint with no recorded config exports from its heterogeneous config in the args (block_configs included)")
    func decilmConfigFromArgs() throws {
        let scratch = try TestCheckpoints.scratchDirectory("decilm-args")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try HFImport(source: TestCheckpoints.path("decilm-tiny/hf"), output: scratch + "/mc").run(executor: MoveExecutor())
        try FileManager.default.removeItem(atPath: scratch + "/mc/nembridge")  // as if Megatron-LM had written it
        let plan = try MegatronExport(checkpoint: scratch + "/mc", output: scratch + "/out")
        #expect(plan.trainingConfig?.table == "decilm")
        try plan.run(executor: MoveExecutor())
        let written = try HFConfig(path: scratch + "/out/config.json").document
        let fixture = try HFConfig(path: TestCheckpoints.path("decilm-tiny/hf/config.json")).document
        #expect(written["block_configs"] == fixture["block_configs"] && written["vocab_size"] == fixture["vocab_size"])
        #expect(try CheckpointVerifier.verify(TestCheckpoints.path("decilm-tiny/hf"), scratch + "/out").passed)
    }

    @Test("a config written from training args needs each field: the error names the argument, its flag and --hf-config")
    func trainingArgsMissingField() throws {
        let table = try #require(try MappingTable.load(directory: nil).first { $0.name == "llama" })
        let spec = try #require(table.hfConfig)
        var args: [String: JSONValue] = [
            "hidden_size": .number(JSONNumber(64)), "num_attention_heads": .number(JSONNumber(4)), "num_layers": .number(JSONNumber(2)),
            "ffn_hidden_size": .number(JSONNumber(128)), "max_position_embeddings": .number(JSONNumber(64)),
            "layernorm_epsilon": .number(JSONNumber(text: "1e-05")), "rotary_base": .number(JSONNumber(10000)),
            "init_method_std": .number(JSONNumber(text: "0.02")), "add_qkv_bias": .bool(false), "add_bias_linear": .bool(false),
            "untie_embeddings_and_output_weights": .bool(true), "normalization": .string("RMSNorm"), "swiglu": .bool(true),
            "position_embedding_type": .string("rope"), "rotary_percent": .number(JSONNumber(text: "1.0")), "vocab_size": .null,
        ]
        #expect(spec.selects(args))
        let missing = #expect(throws: ConfigSynthesisError.self) { try spec.configDocument(arguments: args, source: "ckpt: args", table: "llama") }
        #expect(missing == .missingArgument(source: "ckpt: args", argument: "vocab_size", field: "vocab_size", flag: "--vocab-size (or a tokenizer)"))
        #expect(String(describing: missing!).contains("--hf-config DIR"))
        args["vocab_size"] = .number(JSONNumber(250))
        args["swiglu"] = .bool(false)
        let other = #expect(throws: ConfigSynthesisError.self) { try spec.configDocument(arguments: args, source: "ckpt: args", table: "llama") }
        #expect(String(describing: other!) == "ckpt: args: args.swiglu = false, but a llama model has true; give the model's config folder with --hf-config DIR")
        args["hybrid_layer_pattern"] = .string("M*")
        #expect(!spec.selects(args))
    }

    @Test("a hub-cache snapshot (every file a relative symlink into blobs/) converts, and the outputs hold files, not links")
    func hubCacheSnapshot() throws {
        let source = TestCheckpoints.path("llama3-sharded-tiny/hf")
        let scratch = try TestCheckpoints.scratchDirectory("hubcache")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let blobs = scratch + "/hub/blobs", snapshot = scratch + "/hub/snapshots/0123abcd"
        try FileManager.default.createDirectory(atPath: blobs, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: snapshot, withIntermediateDirectories: true)
        for (number, name) in try Self.files(source).enumerated() {
            try FileManager.default.copyItem(atPath: source + "/" + name, toPath: blobs + "/blob\(number)")
            try FileManager.default.createSymbolicLink(atPath: snapshot + "/" + name, withDestinationPath: "../../blobs/blob\(number)")
        }
        let executor = MoveExecutor(workers: 2, chunkBytes: 8192)
        try HFImport(source: snapshot, output: scratch + "/mc").run(executor: executor)
        try MegatronExport(checkpoint: scratch + "/mc", output: scratch + "/out/hf").run(executor: executor)
        for name in try Self.files(source) {
            let exported = scratch + "/out/hf/" + name
            #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: exported)) == nil, "\(name) is a link")
            #expect(try TestCheckpoints.readFile(exported) == TestCheckpoints.readFile(source + "/" + name), "\(name)")
        }
    }

    @Test("a damaged record beside the checkpoint (index naming a path outside the output, bad JSON, bad name note) is an error, never a silent fallback")
    func damagedRecord() throws {
        let scratch = try TestCheckpoints.scratchDirectory("damagedrecord")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let executor = MoveExecutor(workers: 1, chunkBytes: 8192)
        try HFImport(source: TestCheckpoints.path("llama3-sharded-tiny/hf"), output: scratch + "/mc").run(executor: executor)
        let recorded = scratch + "/mc/" + MegatronExport.recordedFolder
        let index = recorded + "/" + HFCheckpointFolder.indexFileName
        let original = try String(contentsOfFile: index, encoding: .utf8)
        let cases: [(file: String, text: String, mentions: String)] = [
            (index, original.replacingOccurrences(of: "\"model-00001-of-00005.safetensors\"", with: "\"../escape.safetensors\""), "not a plain file name"),
            (index, String(original.dropLast(3)), HFCheckpointFolder.indexFileName),
            (recorded + "/" + HFImport.dialectFile, "{\"table_prefix\": 3}", "table_prefix"),
        ]
        #expect(original.contains("\"model-00001-of-00005.safetensors\""))
        for damage in cases {
            let before = try? String(contentsOfFile: damage.file, encoding: .utf8)
            try damage.text.write(toFile: damage.file, atomically: true, encoding: .utf8)
            let error = #expect(throws: (any Error).self) {
                try MegatronExport(checkpoint: scratch + "/mc", output: scratch + "/hf").run(executor: executor)
            }
            #expect(String(describing: error!).contains(damage.mentions), "\(String(describing: error!))")
            #expect(try Self.files(scratch) == ["mc"], "nothing written for \(damage.text.prefix(40))")
            if let before { try before.write(toFile: damage.file, atomically: true, encoding: .utf8) } else { try FileManager.default.removeItem(atPath: damage.file) }
        }
        // Undamaged again, it exports.
        try MegatronExport(checkpoint: scratch + "/mc", output: scratch + "/hf").run(executor: executor)
        #expect(try Self.files(scratch) == ["hf", "mc"])
    }

    @Test("verify finds a flipped byte, by comparison and by manifest, and names the tensor")
    func verifyDetects() throws {
        let scratch = try TestCheckpoints.scratchDirectory("verify")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let source = TestCheckpoints.path("llama3-tiny/hf")
        try HFReshard(source: source, output: scratch + "/copy", maxShardSize: nil).run(executor: MoveExecutor())
        let folder = try HFCheckpointFolder(directory: scratch + "/copy")
        let (file, tensor) = try folder.locate("model.layers.1.mlp.down_proj.weight")
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: file.path))
        try handle.seek(toOffset: UInt64(file.fileRange(of: tensor).offset + 100))
        let byte = try #require(try handle.read(upToCount: 1))
        try handle.seek(toOffset: UInt64(file.fileRange(of: tensor).offset + 100))
        try handle.write(contentsOf: Data([byte[0] ^ 0x40]))
        try handle.close()
        let report = try CheckpointVerifier.verify(source, scratch + "/copy")
        #expect(!report.passed)
        #expect(report.failures.map(\.name) == ["model.layers.1.mlp.down_proj.weight"])
        #expect(report.failures.first?.differing == 1)
        #expect(report.failures.first?.firstDifference == 100)
        let manifest = try CheckpointVerifier.verifyManifest(scratch + "/copy")
        #expect(manifest.failures.map(\.name) == ["model.layers.1.mlp.down_proj.weight"])
    }
}

struct TensorParallelLayoutTests {
    /// Chunks as fractions of the per-layer tensor, per key: the shape of a layout, whatever the sizes.
    static func fractions(_ chunks: [DCPChunk], size: [Int], skip: Int) -> Set<String> {
        Set(chunks.map { chunk in
            zip(zip(chunk.offsets, chunk.sizes), size).dropFirst(skip).map { pair, total in
                "\(Double(pair.0) / Double(total))+\(Double(pair.1) / Double(total))"
            }.joined(separator: ",")
        })
    }

    @Test("--tp 2 writes the chunks real Megatron-Core writes at TP=2 (fixture gpt-dense-tp2)")
    func matchesMegatron() throws {
        let scratch = try TestCheckpoints.scratchDirectory("tp")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var options = HFImport.Options()
        options.tensorParallel = 2
        try HFImport(source: TestCheckpoints.path("llama3-tiny/hf"), output: scratch + "/mc", options: options).run(executor: MoveExecutor())
        let ours = try TorchDistCheckpoint(path: scratch + "/mc")
        let megatron = try TorchDistCheckpoint(path: TestCheckpoints.path("megatron/gpt-dense-tp2"))
        var compared = 0
        for (key, theirs) in megatron.metadata.tensors {
            let mine = try ours.tensor(key)
            // Stacked keys: compare one layer's chunks (axis 0 is the layer).
            let skip = key.hasPrefix("decoder.layers.") ? 1 : 0
            let theirLayer = theirs.chunks.filter { skip == 0 || $0.offsets[0] == 0 }
            let myLayer = mine.chunks.filter { skip == 0 || $0.offsets[0] == 0 }
            #expect(Self.fractions(myLayer, size: mine.size, skip: skip) == Self.fractions(theirLayer, size: theirs.size, skip: skip), "\(key)")
            compared += 1
        }
        #expect(compared == 9)
    }
}

struct MegatronReshardTests {
    /// The rank that saved a chunk of a real Megatron-Core checkpoint: rank r writes `__r_0.distcp`.
    static func savingRank(_ checkpoint: TorchDistCheckpoint, _ key: String, _ chunk: DCPChunk) throws -> Int {
        let file = try #require(checkpoint.metadata.storage[DCPStorageKey(fqn: key, offsets: chunk.offsets.array)]?.relativePath)
        return try #require(Int(file.dropFirst(2).prefix { $0 != "_" }))
    }

    @Test("the dry run's `loaded by` ranks are the ranks real Megatron-Core saved each chunk from (gpt-dense-tp2, gpt-moe-ep2)")
    func targetRanksMatchMegatron() throws {
        let scratch = try TestCheckpoints.scratchDirectory("reshard-ranks")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let executor = MoveExecutor(workers: 1, chunkBytes: 8192)
        try HFImport(source: TestCheckpoints.path("llama3-tiny/hf"), output: scratch + "/dense").run(executor: executor)
        var tp2 = MegatronReshard.Options()
        tp2.tensorParallel = 2
        let dense = try MegatronReshard(checkpoint: scratch + "/dense", output: scratch + "/unused", options: tp2)
        let megatron = try TorchDistCheckpoint(path: TestCheckpoints.path("megatron/gpt-dense-tp2"))
        var checked = 0
        for (key, theirs) in megatron.metadata.tensors {
            let skip = key.hasPrefix("decoder.layers.") ? 1 : 0
            let theirLayer = theirs.chunks.filter { skip == 0 || $0.offsets[0] == 0 }
            // Replicated keys are saved once, by any rank: only split keys name their reader.
            var expected: [Set<String>: Int?] = [:]
            for chunk in theirLayer {
                let fraction = TensorParallelLayoutTests.fractions([chunk], size: theirs.size, skip: skip)
                expected[fraction] = theirLayer.count > 1 ? try Self.savingRank(megatron, key, chunk) : nil
            }
            for (index, item) in dense.layout.tensorItemIndices.map(dense.layout.tensorItem).enumerated() where item.key == key && (skip == 0 || item.chunk.offsets[0] == 0) {
                let size = try dense.source.tensor(key).size
                let fraction = TensorParallelLayoutTests.fractions([item.chunk], size: size, skip: skip)
                #expect(dense.targetRank(item: index)?.tensorParallel == expected[fraction] ?? nil, "\(key) \(fraction)")
                checked += 1
            }
        }
        #expect(checked == 17)

        // Experts: real Megatron-Core at EP=2 saves a contiguous block of global experts per rank.
        let moe = try TorchDistCheckpoint(path: TestCheckpoints.path("megatron/gpt-moe-ep2"))
        var blockOf: [Double: Int] = [:]
        for (key, tensor) in moe.metadata.tensors where key.contains("experts.experts") {
            let axis = tensor.size.count - 3
            for chunk in tensor.chunks {
                blockOf[Double(chunk.offsets[axis]) / Double(tensor.size[axis])] = try Self.savingRank(moe, key, chunk)
            }
        }
        #expect(blockOf == [0: 0, 0.25: 0, 0.5: 1, 0.75: 1])
        try HFImport(source: TestCheckpoints.path("nemotron3-moe-tiny/hf"), output: scratch + "/moe").run(executor: executor)
        var ep2 = MegatronReshard.Options()
        ep2.expertParallel = 2
        let ours = try MegatronReshard(checkpoint: scratch + "/moe", output: scratch + "/unused", options: ep2)
        var experts = 0
        for (index, item) in ours.layout.tensorItemIndices.map(ours.layout.tensorItem).enumerated() where item.key.contains("experts.experts") {
            let size = try ours.source.tensor(item.key).size
            let axis = size.count - 3
            let position = Double(item.chunk.offsets[axis]) / Double(size[axis])
            let expected = blockOf.filter { $0.key <= position }.max { $0.key < $1.key }?.value
            #expect(ours.targetRank(item: index)?.expertParallel == expected, "\(item.key) \(item.chunk.offsets)")
            experts += 1
        }
        #expect(experts > 0)
        #expect(ours.planText().contains("loaded by ep rank 1, every etp rank"))
    }

    @Test("TP1 -> TP4 -> TP2 and EP1 -> EP4 -> EP2 are byte-identical, and the layout follows the target", arguments: [
        "llama3-tiny/hf", "nemotron3-moe-tiny/hf", "decilm-tiny/hf",
    ])
    func roundTrips(_ relative: String) throws {
        let scratch = try TestCheckpoints.scratchDirectory("reshard-mc")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let executor = MoveExecutor(workers: 2, chunkBytes: 4096)
        try HFImport(source: TestCheckpoints.path(relative), output: scratch + "/tp1").run(executor: executor)
        var wide = MegatronReshard.Options()
        // The Nemotron fixture has 2 Mamba groups: TP 4 is refused, as Megatron-Core refuses it.
        wide.tensorParallel = relative.hasPrefix("nemotron") ? 2 : 4
        // Only a model with routed experts has an expert-parallel size (Megatron-LM refuses --ep otherwise).
        let hasExperts = relative.hasPrefix("nemotron3-moe")
        wide.expertParallel = hasExperts ? 4 : 1
        try MegatronReshard(checkpoint: scratch + "/tp1", output: scratch + "/tp4", options: wide).run(executor: executor)
        var narrow = MegatronReshard.Options()
        narrow.tensorParallel = 2
        narrow.expertParallel = hasExperts ? 2 : 1
        try MegatronReshard(checkpoint: scratch + "/tp4", output: scratch + "/tp2", options: narrow).run(executor: executor)
        #expect(try CheckpointVerifier.verify(scratch + "/tp1", scratch + "/tp2").passed)
        #expect(try CheckpointVerifier.verifyManifest(scratch + "/tp4").passed)
        let tp4 = try TorchDistCheckpoint(path: scratch + "/tp4")
        let tp1 = try TorchDistCheckpoint(path: scratch + "/tp1")
        #expect(tp4.metadata.tensors.reduce(0) { $0 + $1.metadata.chunks.count } > tp1.metadata.tensors.reduce(0) { $0 + $1.metadata.chunks.count })
        try MegatronExport(checkpoint: scratch + "/tp2", output: scratch + "/hf").run(executor: executor)
        let source = TestCheckpoints.path(relative)
        for name in try FileManager.default.contentsOfDirectory(atPath: source) {
            #expect(try TestCheckpoints.readFile(scratch + "/hf/" + name) == TestCheckpoints.readFile(source + "/" + name), "\(name)")
        }
    }
}

import Execution
import Foundation
import MegatronCheckpoint
import NembridgeKit
import NembridgeTestSupport
import TensorCore
import Testing
import TorchPickle
import TorchZip
import WeightMapping

/// The legacy `--ckpt-format torch` layout, writer and reader. Real Megatron-Core's side (its own
/// legacy saves, strict per-rank loads) is in Tests/interop/test_legacy.py.
struct LegacyCheckpointTests {
    static let executor = MoveExecutor(workers: 2, chunkBytes: 8192)

    static func importLegacy(_ relative: String, _ output: String, tp: Int = 1, pp: Int = 1, ep: Int = 1, etp: Int? = nil,
                             spec: MegatronSpec = .transformerEngine) throws {
        var options = HFImport.Options()
        options.format = .torch
        options.tensorParallel = tp
        options.pipelineParallel = pp
        options.expertParallel = ep
        options.expertTensorParallel = etp
        options.spec = spec
        try HFImport(source: TestCheckpoints.path(relative), output: output, options: options).run(executor: executor)
    }

    static func exportIsSource(_ relative: String, _ checkpoint: String, _ scratch: String) throws {
        let out = scratch + "/hf-\(UUID().uuidString.prefix(8))"
        try MegatronExport(checkpoint: checkpoint, output: out).run(executor: executor)
        let source = TestCheckpoints.path(relative)
        for name in try FileManager.default.contentsOfDirectory(atPath: source).sorted() {
            #expect(try TestCheckpoints.readFile(out + "/" + name) == TestCheckpoints.readFile(source + "/" + name), "\(relative) \(name)")
        }
    }

    @Test("HF -> legacy (any TP/PP/EP/ETP) -> HF is byte-identical, for every architecture", arguments: [
        ("llama3-tiny/hf", 2, 2, 1, nil as Int?, MegatronSpec.transformerEngine),
        ("llama32-tied-tiny/hf", 2, 2, 1, nil, .local),
        ("decilm-tiny/hf", 2, 3, 1, nil, .local),
        ("nemotron-h-tiny/hf", 2, 2, 1, nil, .transformerEngine),
        ("nemotron3-moe-tiny/hf", 2, 1, 2, 1, .local),
        ("nemotron3-moe-tiny/hf", 1, 1, 4, nil, .transformerEngine),
    ])
    func roundTrip(_ relative: String, _ tp: Int, _ pp: Int, _ ep: Int, _ etp: Int?, _ spec: MegatronSpec) throws {
        let scratch = try TestCheckpoints.scratchDirectory("legacy")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try Self.importLegacy(relative, scratch + "/legacy", tp: tp, pp: pp, ep: ep, etp: etp, spec: spec)
        let checkpoint = try LegacyTorchCheckpoint(path: scratch + "/legacy")
        #expect(checkpoint.ranks.count == tp * pp * ep)
        #expect((checkpoint.tensorParallelSize, checkpoint.pipelineParallelSize, checkpoint.expertParallelSize) == (tp, pp, ep))
        #expect(checkpoint.args?["tensor_model_parallel_size"]?.intValue == tp)
        #expect(checkpoint.args?["pipeline_model_parallel_size"]?.intValue == pp)
        #expect(checkpoint.args?["ckpt_format"]?.stringValue == "torch")
        #expect(try CheckpointVerifier.verifyManifest(scratch + "/legacy").passed)
        #expect(try CheckpointVerifier.verify(TestCheckpoints.path(relative), scratch + "/legacy").passed)
        try Self.exportIsSource(relative, scratch + "/legacy", scratch)
    }

    @Test("torch_dist -> legacy TP2 PP2 -> legacy TP1 PP2 -> torch_dist: the same global tensors, chunks byte-identical")
    func reshardAcrossFormats() throws {
        let scratch = try TestCheckpoints.scratchDirectory("legacy-reshard")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try HFImport(source: TestCheckpoints.path("llama32-tied-tiny/hf"), output: scratch + "/dist").run(executor: Self.executor)
        var options = MegatronReshard.Options()
        options.format = .torch
        options.tensorParallel = 2
        options.pipelineParallel = 2
        try MegatronReshard(checkpoint: scratch + "/dist", output: scratch + "/l22", options: options).run(executor: Self.executor)
        options.tensorParallel = 1
        try MegatronReshard(checkpoint: scratch + "/l22", output: scratch + "/l12", options: options).run(executor: Self.executor)
        try MegatronReshard(checkpoint: scratch + "/l12", output: scratch + "/dist2").run(executor: Self.executor)
        let first = try TorchDistCheckpoint(path: scratch + "/dist"), second = try TorchDistCheckpoint(path: scratch + "/dist2")
        #expect(first.metadata.tensors.map(\.fqn) == second.metadata.tensors.map(\.fqn))
        for (key, tensor) in first.metadata.tensors {
            #expect(second.metadata.tensor(key)?.chunks == tensor.chunks, "\(key)")
            #expect(try first.readTensor(key: key) == second.readTensor(key: key), "\(key)")
        }
        #expect(Set(first.metadata.bytesItems) == Set(second.metadata.bytesItems))
        #expect(try CheckpointVerifier.verify(scratch + "/l22", scratch + "/dist").passed)
        // Tied embeddings at PP > 1: the last stage holds its own output layer, a copy of the embedding rows.
        let legacy = try LegacyTorchCheckpoint(path: scratch + "/l22")
        let last = try #require(legacy.ranks.first { $0.rank == LegacyRank(tensor: 1, pipeline: 1) })
        let first0 = try #require(legacy.ranks.first { $0.rank == LegacyRank(tensor: 1, pipeline: 0) })
        func bytes(_ file: LegacyRankFile, _ name: String) throws -> [UInt8] {
            guard case .tensor(let tensor)? = file.model.first(where: { $0.name == name })?.value, tensor.runs.count == 1 else { return [] }
            return try file.file.readBytes(tensor.runs[0].source)
        }
        #expect(try !bytes(last, "output_layer.weight").isEmpty)
        #expect(try bytes(last, "output_layer.weight") == bytes(first0, "embedding.word_embeddings.weight"))
        #expect(!first0.model.contains { $0.name == "output_layer.weight" })
    }

    @Test("each rank holds its TP shard, stage-local layers, local experts and the SwiGLU [W_r; V_r] halves")
    func layout() throws {
        let scratch = try TestCheckpoints.scratchDirectory("legacy-layout")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var options = HFImport.Options()
        options.tensorParallel = 2
        options.pipelineParallel = 2
        options.format = .torch
        options.spec = .local
        let plan = try #require(try HFImport(source: TestCheckpoints.path("llama3-tiny/hf"), output: scratch + "/unused", options: options).legacy)
        let layout = plan.layout
        #expect(layout.stageLayers == [0..<1, 1..<2])
        let lastStage = try #require(layout.entries[LegacyRank(tensor: 1, pipeline: 1)])
        let names = lastStage.map(\.name)
        // Global layer 1 is local layer 0 of stage 1; the local spec keeps its norms' own names.
        #expect(names.contains("decoder.layers.0.input_layernorm.weight"))
        #expect(names.contains("decoder.layers.0.pre_mlp_layernorm.weight"))
        #expect(!names.contains { $0.hasPrefix("decoder.layers.1.") })
        #expect(names.contains("output_layer.weight") && names.contains("output_layer._extra_state"))
        #expect(!names.contains("embedding.word_embeddings.weight"))
        let fc1 = try #require(lastStage.first { $0.name == "decoder.layers.0.mlp.linear_fc1.weight" })
        guard case .tensor(let shape, let pieces) = fc1.content else { Issue.record("fc1 is not a tensor"); return }
        // intermediate 224: rank 1 holds gate rows 112..<224 then up rows 224+112..<448 of the stacked key, layer 1.
        #expect(shape == [224, 64])
        #expect(pieces.map(\.offsets) == [[1, 112, 0], [1, 336, 0]])
        #expect(pieces.map(\.sizes) == [[1, 112, 64], [1, 112, 64]])
        let proj = try #require(lastStage.first { $0.name == "decoder.layers.0.self_attention.linear_proj.weight" })
        guard case .tensor(let projShape, let projPieces) = proj.content else { Issue.record("proj is not a tensor"); return }
        #expect(projShape == [64, 32] && projPieces.map(\.offsets) == [[1, 0, 32]])
        // A norm is whole on every TP rank and read from TP rank 0 only.
        let norm = try #require(lastStage.first { $0.name == "decoder.final_layernorm.weight" })
        #expect(!norm.isPrimary)
        #expect(layout.entries[LegacyRank(tensor: 0, pipeline: 1)]?.first { $0.name == "decoder.final_layernorm.weight" }?.isPrimary == true)
    }

    @Test("experts: global ids become local ids per EP rank, grouped (TE) or sequential (local) names")
    func expertNames() throws {
        for (spec, expected) in [(MegatronSpec.local, "decoder.layers.1.mlp.experts.local_experts.1.linear_fc2.weight"),
                                 (.transformerEngine, "decoder.layers.1.mlp.experts.linear_fc2.weight1")] {
            var options = HFImport.Options()
            options.expertParallel = 4
            options.format = .torch
            options.spec = spec
            let plan = try #require(try HFImport(source: TestCheckpoints.path("nemotron3-moe-tiny/hf"), output: "/nonexistent", options: options).legacy)
            // 8 experts over 4 EP ranks: global expert 7 is local expert 1 of EP rank 3.
            let rank3 = try #require(plan.layout.entries[LegacyRank(tensor: 0, pipeline: 0, expert: 3)])
            let entry = try #require(rank3.first { $0.name == expected }, "\(spec)")
            guard case .tensor(_, let pieces) = entry.content else { Issue.record("not a tensor"); continue }
            #expect(pieces.first?.offsets.first == 7)
            #expect(plan.files.map(\.relativePath).first == "mp_rank_00_000/model_optim_rng.pt")
        }
    }

    @Test("bad legacy input: a missing rank, an entry the mapping does not place, a wrong shard shape")
    func badInput() throws {
        let scratch = try TestCheckpoints.scratchDirectory("legacy-bad")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try Self.importLegacy("llama3-tiny/hf", scratch + "/good", tp: 2, pp: 2)
        let fm = FileManager.default

        try fm.copyItem(atPath: scratch + "/good", toPath: scratch + "/missing")
        try fm.removeItem(atPath: scratch + "/missing/release/mp_rank_01_001")
        let missing = #expect(throws: MegatronCheckpointError.self) { try MegatronExport(checkpoint: scratch + "/missing", output: scratch + "/o") }
        #expect(missing?.description.contains("mp_rank_01_001") == true)
        // A partial copy without every tensor-parallel rank 1: the args still say TP=2.
        try fm.copyItem(atPath: scratch + "/good", toPath: scratch + "/partial")
        for name in ["mp_rank_01_000", "mp_rank_01_001"] { try fm.removeItem(atPath: scratch + "/partial/release/" + name) }
        let partial = #expect(throws: MegatronCheckpointError.self) { try MegatronExport(checkpoint: scratch + "/partial", output: scratch + "/o") }
        #expect(partial?.description.contains("2×2×1 (tp×pp×ep) grid is missing: no mp_rank_01_000") == true, "\(String(describing: partial))")

        // Rewrite one rank file with an extra tensor, then with a wrong shape.
        let good = try LegacyTorchCheckpoint(path: scratch + "/good")
        let victim = try #require(good.ranks.first { $0.rank == LegacyRank(tensor: 0, pipeline: 1) })
        func rewrite(_ name: String, _ edit: ([(name: String, entry: LegacyRankFilePlan.ModelEntry)]) -> [(name: String, entry: LegacyRankFilePlan.ModelEntry)]) throws -> String {
            let directory = scratch + "/" + name
            try fm.copyItem(atPath: scratch + "/good", toPath: directory)
            let rankDirectory = directory + "/release/mp_rank_00_001"
            try fm.removeItem(atPath: rankDirectory)
            var model: [(name: String, entry: LegacyRankFilePlan.ModelEntry)] = victim.model.map { name, value in
                if case .tensor(let tensor) = value { return (name, .tensor(dtype: tensor.dtype, shape: tensor.shape)) }
                return (name, .none)
            }
            model = edit(model)
            let plan = try LegacyRankFilePlan(rank: victim.rank, pipelineSize: 2, expertSize: 1,
                                              topLevel: victim.topLevel.map { ($0.key, $0.value) } + [("model", nil)], model: model)
            let writer = try LegacyTorchWriter(directory: directory + "/release", plans: [plan])
            for index in plan.tensors.indices {
                let range = plan.tensorDataRange(index)
                let zeros = [UInt8](repeating: 0, count: Int(range.count))
                try writer.files[0]!.write(zeros, at: range.offset)
                try writer.recordData(file: 0, tensor: index, at: 0, count: range.count, crc: CRC32.checksum(zeros))
            }
            try writer.finish()
            return directory
        }
        let extra = try rewrite("extra") { $0 + [("decoder.layers.0.mystery.weight", .tensor(dtype: .bfloat16, shape: [4]))] }
        let unexpected = #expect(throws: LegacyLayoutError.self) { try MegatronExport(checkpoint: extra, output: scratch + "/o") }
        #expect(unexpected?.description.contains("decoder.layers.0.mystery.weight") == true)
        #expect(unexpected?.description.contains("mp_rank_00_001/model_optim_rng.pt") == true)
        let wrong = try rewrite("wrong") { model in
            model.map { $0.name == "decoder.layers.0.mlp.linear_fc2.weight" ? ($0.name, .tensor(dtype: .bfloat16, shape: [64, 111])) : $0 }
        }
        let shape = #expect(throws: LegacyLayoutError.self) { try MegatronExport(checkpoint: wrong, output: scratch + "/o") }
        #expect(shape?.description.contains("mp_rank_00_001/model_optim_rng.pt") == true, "\(String(describing: shape))")
        #expect(shape?.description.contains("linear_fc2.weight") == true)
        #expect(!fm.fileExists(atPath: scratch + "/o"))
    }

    @Test("optimizer, RNG and scheduler state in rank files are listed by name, not kept, and not converted")
    func trainingStateDropped() throws {
        let scratch = try TestCheckpoints.scratchDirectory("legacy-optim")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try Self.importLegacy("llama3-tiny/hf", scratch + "/legacy")
        let original = try LegacyTorchCheckpoint(path: scratch + "/legacy")
        let rank = original.ranks[0]
        // The same rank file with training state added, its tensors copied over.
        let optimizer = PickleValue.stringDict(["state": .dict([]), "param_groups": .list([.stringDict(["lr": .float(1e-4)])])])
        let plan = try LegacyRankFilePlan(
            rank: rank.rank, pipelineSize: 1, expertSize: 1,
            topLevel: rank.topLevel.map { ($0.key, $0.value) } + [("model", nil), ("optimizer", optimizer), ("rng_state", .list([.int(7)]))],
            model: rank.model.map { name, value in
                if case .tensor(let tensor) = value { return (name, .tensor(dtype: tensor.dtype, shape: tensor.shape)) }
                return (name, .none)
            })
        let directory = scratch + "/with-optimizer/release"
        let writer = try LegacyTorchWriter(directory: directory, plans: [plan])
        var index = 0
        for (_, value) in rank.model {
            guard case .tensor(let tensor) = value else { continue }
            let bytes = try rank.file.readBytes(tensor.runs[0].source)
            try writer.files[0]!.write(bytes, at: plan.tensorDataRange(index).offset)
            try writer.recordData(file: 0, tensor: index, at: 0, count: Int64(bytes.count), crc: CRC32.checksum(bytes))
            index += 1
        }
        try writer.finish()
        try Data("release".utf8).write(to: URL(fileURLWithPath: scratch + "/with-optimizer/latest_checkpointed_iteration.txt"))
        try FileManager.default.copyItem(atPath: scratch + "/legacy/nembridge", toPath: scratch + "/with-optimizer/nembridge")
        let reread = try LegacyTorchCheckpoint(path: scratch + "/with-optimizer")
        #expect(reread.trainingStateKeys == ["optimizer", "rng_state"])
        #expect(reread.ranks[0].topLevel.first { $0.key == "optimizer" }?.value == PickleValue.none)
        #expect(reread.args?["tensor_model_parallel_size"]?.intValue == 1)
        let export = try MegatronExport(checkpoint: scratch + "/with-optimizer", output: scratch + "/hf")
        #expect(export.skippedKeys == ["optimizer", "rng_state"])
        try export.run(executor: MoveExecutor(workers: 2, chunkBytes: 8192))
        #expect(try TestCheckpoints.readFile(scratch + "/hf/model.safetensors")
            == TestCheckpoints.readFile(TestCheckpoints.path("llama3-tiny/hf/model.safetensors")))
    }

    @Test("pipeline stages get their layers as Megatron-Core assigns them: evenly, or first/last given and the rest even")
    func stageLayers() throws {
        func layers(_ count: Int, _ pp: Int, first: Int? = nil, last: Int? = nil) throws -> [Range<Int>] {
            try ParallelSizes(pipeline: pp, firstStageLayers: first, lastStageLayers: last).stageLayers(layerCount: count, config: "c", field: "num_layers")
        }
        #expect(try layers(8, 4) == [0..<2, 2..<4, 4..<6, 6..<8])
        #expect(try layers(6, 3, first: 1, last: 3) == [0..<1, 1..<3, 3..<6])
        // 126 layers (Llama-3.1-405B) over 16 stages: 7 first, 7 last, 8 on each of the 14 others.
        let big = try layers(126, 16, first: 7, last: 7)
        #expect(big.first == 0..<7 && big.last == 119..<126 && big.dropFirst().dropLast().allSatisfy { $0.count == 8 })
        #expect(try layers(10, 3, first: 2) == [0..<2, 2..<6, 6..<10])
        let uneven = #expect(throws: MappingError.self) { try layers(6, 4) }
        #expect(uneven?.description.contains("cannot be split evenly over 4 pipeline stages") == true)
        #expect(throws: MappingError.self) { try layers(6, 1, first: 2) }
        #expect(throws: MappingError.self) { try layers(6, 2, first: 2, last: 3) }
    }

    @Test("rank directory names: the pipeline field only when PP > 1, the expert field only when EP > 1")
    func rankNames() {
        #expect(LegacyRank(tensor: 3).directoryName(pipelineSize: 1, expertSize: 1) == "mp_rank_03")
        #expect(LegacyRank(tensor: 1, pipeline: 2).directoryName(pipelineSize: 4, expertSize: 1) == "mp_rank_01_002")
        #expect(LegacyRank(tensor: 1, expert: 5).directoryName(pipelineSize: 1, expertSize: 8) == "mp_rank_01_005")
        #expect(LegacyRank(tensor: 0, pipeline: 1, expert: 2).directoryName(pipelineSize: 2, expertSize: 4) == "mp_rank_00_001_002")
    }
}

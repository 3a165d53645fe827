import Foundation
import NembridgeTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// kill -9 at random points of a real import, then a plain re-run: the target never looks
/// complete while a run is unfinished, and the re-run cleans what the dead runs left.
struct InterruptedRunTests {
    /// A Llama-shaped folder of ~115 MB whose tensor data is a file hole (zeros), so it is made
    /// instantly and its import takes long enough to be interrupted.
    static func sparseLlama(_ directory: String) throws {
        let (hidden, heads, groups, headDim, ffn, vocab, layers) = (512, 8, 4, 64, 1536, 32000, 8)
        var tensors: [(String, [Int])] = [("model.embed_tokens.weight", [vocab, hidden]), ("lm_head.weight", [vocab, hidden]),
                                          ("model.norm.weight", [hidden])]
        for layer in 0..<layers {
            let p = "model.layers.\(layer)."
            tensors += [(p + "input_layernorm.weight", [hidden]), (p + "post_attention_layernorm.weight", [hidden]),
                        (p + "self_attn.q_proj.weight", [heads * headDim, hidden]), (p + "self_attn.k_proj.weight", [groups * headDim, hidden]),
                        (p + "self_attn.v_proj.weight", [groups * headDim, hidden]), (p + "self_attn.o_proj.weight", [hidden, heads * headDim]),
                        (p + "mlp.gate_proj.weight", [ffn, hidden]), (p + "mlp.up_proj.weight", [ffn, hidden]),
                        (p + "mlp.down_proj.weight", [hidden, ffn])]
        }
        var offset = 0
        var entries: [String] = []
        for (name, shape) in tensors {
            let bytes = shape.reduce(2, *)
            entries.append("\"\(name)\":{\"dtype\":\"BF16\",\"shape\":[\(shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(offset),\(offset + bytes)]}")
            offset += bytes
        }
        var header = Array(("{" + entries.joined(separator: ",") + "}").utf8)
        while header.count % 8 != 0 { header.append(0x20) }
        var length = UInt64(header.count).littleEndian
        var file = withUnsafeBytes(of: &length) { Data($0) }
        file.append(contentsOf: header)
        let path = directory + "/model.safetensors"
        try file.write(to: URL(fileURLWithPath: path))
        #expect(truncate(path, off_t(file.count + offset)) == 0)
        let config: [String: Any] = [
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden, "num_attention_heads": heads,
            "num_key_value_heads": groups, "head_dim": headDim, "intermediate_size": ffn, "vocab_size": vocab,
            "num_hidden_layers": layers, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096, "rope_theta": 500000.0,
            "tie_word_embeddings": false, "torch_dtype": "bfloat16",
        ]
        try JSONSerialization.data(withJSONObject: config, options: [.sortedKeys]).write(to: URL(fileURLWithPath: directory + "/config.json"))
    }

    /// `nembridge import --hf SCRATCH/hf --out SCRATCH/out`, started in the background.
    static func startImport(_ scratch: String) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CommandLineTests.binary)
        process.arguments = ["import", "--hf", scratch + "/hf", "--out", scratch + "/out"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    @Test("kill -9 at random points leaves nothing that looks complete; the next run cleans up and succeeds")
    func killedImports() throws {
        let scratch = try TestCheckpoints.scratchDirectory("killed")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try FileManager.default.createDirectory(atPath: scratch + "/hf", withIntermediateDirectories: true)
        try Self.sparseLlama(scratch + "/hf")
        var random = SystemRandomNumberGenerator()
        var killed = 0
        for _ in 0..<4 {
            let process = try Self.startImport(scratch)
            usleep(UInt32.random(in: 5_000...150_000, using: &random))
            if process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                killed += 1
            }
            process.waitUntilExit()
            if process.terminationReason == .uncaughtSignal {
                #expect(!FileManager.default.fileExists(atPath: scratch + "/out"), "a killed run published its output")
            } else {
                try? FileManager.default.removeItem(atPath: scratch + "/out")  // it finished first
            }
        }
        #expect(killed > 0, "no run was interrupted; the test proves nothing")
        let rerun = try CommandLineTests.run(["import", "--hf", scratch + "/hf", "--out", scratch + "/out"])
        #expect(rerun.status == 0, "\(rerun.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch).sorted() == ["hf", "out"],
                "staging folders or lock files left behind")
        let verify = try CommandLineTests.run(["verify", scratch + "/hf", scratch + "/out"])
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    }

    @Test("a second run on a target that a live run owns stops at once, naming the owner")
    func liveOwner() throws {
        let scratch = try TestCheckpoints.scratchDirectory("owned")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try FileManager.default.createDirectory(atPath: scratch + "/hf", withIntermediateDirectories: true)
        try Self.sparseLlama(scratch + "/hf")
        let first = try Self.startImport(scratch)
        // Wait until the first run holds the target.
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: scratch + "/.out.nembridge-lock") { usleep(2_000) }
        let second = try CommandLineTests.run(["import", "--hf", scratch + "/hf", "--out", scratch + "/out"])
        first.waitUntilExit()
        #expect(first.terminationStatus == 0)
        #expect(second.status == 1)
        #expect(second.stderr.contains("another nembridge run is writing this output (pid \(first.processIdentifier)")
                || second.stderr.contains("output already exists"), "\(second.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch).sorted() == ["hf", "out"])
    }
}

import Foundation
import NembridgeKit
import NembridgeTestSupport
import TensorCore
import Testing

/// Planning imports of the quantized fixtures (TestCheckpoints/quantized, made by
/// tools/fixtures/make_quantized_fixtures.py): every quantized weight is declared to the plan with
/// its logical shape and scheme, and each disagreement between config, weights and scales is a
/// typed error naming the tensor. The values themselves are checked against torch and
/// Megatron-Core in Tests/interop/test_quantized_import.py.
struct QuantizedImportTests {
    /// A copy of a quantized fixture with `quantization_config` edited (nil removes it).
    static func folder(_ fixture: String, quantization edit: ((inout [(key: String, value: JSONValue)]) -> Void)? = nil,
                       removeQuantization: Bool = false) throws -> String {
        let scratch = try TestCheckpoints.scratchDirectory("quantized")
        let source = TestCheckpoints.path("quantized/\(fixture)")
        for name in try FileManager.default.contentsOfDirectory(atPath: source) {
            try FileManager.default.copyItem(atPath: source + "/" + name, toPath: scratch + "/" + name)
        }
        guard edit != nil || removeQuantization else { return scratch }
        let document = try JSONParser.parse(TestCheckpoints.readFile(source + "/config.json"), dialect: .python)
        var members = document.objectMembers ?? []
        if removeQuantization {
            members.removeAll { $0.key == "quantization_config" }
            try? FileManager.default.removeItem(atPath: scratch + "/hf_quant_config.json")
        } else if let edit, let index = members.firstIndex(where: { $0.key == "quantization_config" }) {
            var fields = members[index].value.objectMembers ?? []
            edit(&fields)
            members[index] = ("quantization_config", .object(fields))
        }
        try Array(JSONWriter.pythonIndented(.object(members)).utf8).withUnsafeBytes {
            try Data($0).write(to: URL(fileURLWithPath: scratch + "/config.json"))
        }
        return scratch
    }

    static func failure(_ folder: String, options: HFImport.Options = HFImport.Options()) -> (any Error)? {
        defer { try? FileManager.default.removeItem(atPath: folder) }
        do {
            _ = try HFImport(source: folder, output: folder + "-out", options: options)
            return nil
        } catch {
            return error
        }
    }

    @Test("each quantized fixture plans every quantized weight with its scheme and logical shape",
          arguments: [("llama3-fp8-block", 14, QuantizedFormat.e4m3), ("llama3-modelopt-fp8", 7, .e4m3), ("super-nvfp4", 44, .e2m1),
                      ("super-mixed", 48, .e2m1), ("nano-fp8-block", 44, .e4m3), ("nano-modelopt-fp8", 38, .e4m3)])
    func plans(_ fixture: String, weights: Int, format: QuantizedFormat) throws {
        let plan = try HFImport(source: TestCheckpoints.path("quantized/\(fixture)"), output: "/nonexistent/out")
        let declared = plan.plan.quantizedWeights
        #expect(declared.count == weights)
        #expect(declared.contains { $0.format == format })
        #expect(!plan.dequantized.isEmpty && plan.dequantized.values.allSatisfy {
            if case .dequantize(_, let to) = $0 { to == .bfloat16 } else { false }
        })
        #expect(plan.layout.keys.allSatisfy { $0.dtype == .bfloat16 || $0.dtype == .float32 })
        // Every declared weight holds rows × columns elements of its format.
        for weight in declared {
            #expect(Int64(weight.rows * weight.columns) == weight.range.count * Int64(weight.format.elementsPerByte))
        }
        #expect(plan.dequantizationSummary?.hasPrefix("dequantized \(plan.dequantized.count) tensors to bfloat16") == true)
    }

    @Test("--dtype chooses the dequantized dtype; --compress is refused for a quantized source")
    func options() throws {
        var options = HFImport.Options()
        options.dtype = .float32
        let plan = try HFImport(source: TestCheckpoints.path("quantized/super-nvfp4"), output: "/nonexistent/out", options: options)
        #expect(plan.dequantized.values.allSatisfy { $0 == .dequantize(.e2m1, to: .float32) })
        options = HFImport.Options()
        options.zstdLevel = 3
        #expect(Self.failure(try Self.folder("llama3-fp8-block"), options: options) as? ImportError == .dequantizeCompressed)
    }

    @Test("a block scale of the right element count but the wrong shape names weight, scale and both shapes")
    func misshapedScale() throws {
        let folder = try Self.folder("llama3-fp8-block")
        try ConfigBoundsTests.reshape(folder, tensor: "model.layers.1.mlp.down_proj.weight_scale_inv", to: [6, 2])
        let error = Self.failure(folder) as? QuantizationError
        guard case .misshapedScale(_, let tensor, let scale, let expected, let actual)? = error else {
            Issue.record("expected misshapedScale, got \(String(describing: error))")
            return
        }
        #expect(tensor == "model.layers.1.mlp.down_proj.weight" && scale == "model.layers.1.mlp.down_proj.weight_scale_inv")
        #expect(expected == [2, 6] && actual == [6, 2])
    }

    @Test("a module the exclusion list names but stored quantized is refused, naming it")
    func excludedButQuantized() throws {
        let folder = try Self.folder("llama3-fp8-block") { fields in
            fields.removeAll { $0.key == "modules_to_not_convert" }
            fields.append(("modules_to_not_convert", .array([.string("lm_head"), .string("model.layers.0.self_attn.q_proj")])))
        }
        let error = Self.failure(folder) as? QuantizationError
        guard case .undeclaredQuantization(_, let tensor, let reason)? = error else {
            Issue.record("expected undeclaredQuantization, got \(String(describing: error))")
            return
        }
        #expect(tensor == "model.layers.0.self_attn.q_proj.weight" && reason.contains("modules_to_not_convert"))
    }

    @Test("quantized tensors without a declaration, and schemes nembridge does not read, are refused")
    func declarations() throws {
        let undeclared = Self.failure(try Self.folder("super-nvfp4", removeQuantization: true)) as? QuantizationError
        guard case .undeclaredQuantization(_, _, let reason)? = undeclared else {
            Issue.record("expected undeclaredQuantization, got \(String(describing: undeclared))")
            return
        }
        #expect(reason.contains("no quantization_config"))
        let gptq = Self.failure(try Self.folder("llama3-fp8-block") { fields in
            fields.removeAll { $0.key == "quant_method" }
            fields.append(("quant_method", .string("gptq")))
        }) as? QuantizationError
        guard case .unsupportedScheme(_, let why)? = gptq else {
            Issue.record("expected unsupportedScheme, got \(String(describing: gptq))")
            return
        }
        #expect(why.contains("gptq"))
        let noBlock = Self.failure(try Self.folder("llama3-fp8-block") { $0.removeAll { $0.key == "weight_block_size" } }) as? QuantizationError
        guard case .unsupportedScheme? = noBlock else {
            Issue.record("expected unsupportedScheme, got \(String(describing: noBlock))")
            return
        }
    }

    @Test("error messages start with the file and name the tensors, on one line")
    func messages() {
        let error = QuantizationError.misshapedScale(file: "/m/model.safetensors", tensor: "a.weight", scale: "a.weight_scale_inv",
                                                     expected: [2, 6], actual: [6, 2])
        #expect(error.description == "/m/model.safetensors: scale `a.weight_scale_inv` of `a.weight` has shape [6, 2], expected [2, 6]")
        #expect(QuantizationError.missingScale(file: "f", tensor: "a.weight", scale: "a.weight_scale").description.contains("never imported unscaled"))
    }
}

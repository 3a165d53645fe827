import Foundation
import SafetensorsFormat
import TensorCore

/// A quantized Hugging Face folder that cannot be imported as it is: the scheme is not one
/// nembridge dequantizes, or a weight, its scales and the config disagree. Each names the file
/// and the tensor.
public enum QuantizationError: Error, Equatable, CustomStringConvertible {
    case unsupportedScheme(config: String, reason: String)
    /// A quantized weight without one of its scales.
    case missingScale(file: String, tensor: String, scale: String)
    /// A scale whose shape is not exactly the one its weight's scheme gives.
    case misshapedScale(file: String, tensor: String, scale: String, expected: [Int], actual: [Int])
    case scaleDType(file: String, tensor: String, scale: String, dtype: DType, expected: [DType])
    /// A scale no quantized weight uses (its weight is not quantized, or is quantized another way).
    case extraScale(file: String, tensor: String, reason: String)
    /// A weight stored quantized that the config says is not (excluded, not listed, another scheme).
    case undeclaredQuantization(file: String, tensor: String, reason: String)
    /// A weight the config says is quantized that is stored unquantized.
    case notQuantized(config: String, tensor: String, reason: String)
    case badQuantizedWeight(file: String, tensor: String, reason: String)

    public var description: String {
        let q = { (text: String) in MessageText.quoted(text) }, p = { (text: String) in MessageText.path(text) }
        return switch self {
        case .unsupportedScheme(let config, let reason):
            "\(p(config)): unsupported quantization: \(q(reason))"
        case .missingScale(let file, let tensor, let scale):
            "\(p(file)): quantized tensor `\(q(tensor))` has no scale `\(q(scale))` (a weight is never imported unscaled)"
        case .misshapedScale(let file, let tensor, let scale, let expected, let actual):
            "\(p(file)): scale `\(q(scale))` of `\(q(tensor))` has shape \(actual), expected \(expected)"
        case .scaleDType(let file, let tensor, let scale, let dtype, let expected):
            "\(p(file)): scale `\(q(scale))` of `\(q(tensor))` has dtype \(dtype.safetensorsName), expected \(expected.map(\.safetensorsName).joined(separator: " or "))"
        case .extraScale(let file, let tensor, let reason):
            "\(p(file)): scale `\(q(tensor))` belongs to no quantized weight: \(q(reason))"
        case .undeclaredQuantization(let file, let tensor, let reason):
            "\(p(file)): `\(q(tensor))` is stored quantized, but \(q(reason))"
        case .notQuantized(let config, let tensor, let reason):
            "\(p(config)): `\(q(tensor))` is not quantized, but \(q(reason))"
        case .badQuantizedWeight(let file, let tensor, let reason):
            "\(p(file)): quantized tensor `\(q(tensor))`: \(q(reason))"
        }
    }
}

/// The quantization of a Hugging Face folder, from `config.json`'s `quantization_config` (and
/// `hf_quant_config.json`, ModelOpt's own record, where present), checked against the tensors:
/// each quantized weight with its scales, the companions they consume, and the activation and
/// KV-cache scales that are recorded but not mapped.
///
/// Schemes (issue 15): block FP8 (`quant_method: fp8`, `weight_block_size: [B0, B1]`: F8_E4M3
/// `weight`, F32 `weight_scale_inv` [ceil(out/B0), ceil(in/B1)]); ModelOpt FP8 (`quant_algo:
/// FP8`: F8_E4M3 `weight`, F32 scalar `weight_scale`); ModelOpt NVFP4 (`quant_algo: NVFP4`,
/// `group_size` 16: U8 `weight` [out, in/2], F8_E4M3 `weight_scale` [out, in/16], F32 scalar
/// `weight_scale_2`); ModelOpt `MIXED_PRECISION` with `quantized_layers` naming each module's.
struct HFQuantization: Sendable {
    enum Scheme: Hashable, Sendable, CustomStringConvertible {
        case blockFP8(rows: Int, columns: Int)
        case tensorFP8
        case nvfp4(group: Int)

        var format: QuantizedFormat { if case .nvfp4 = self { .e2m1 } else { .e4m3 } }

        var description: String {
            switch self {
            case .blockFP8(let rows, let columns): "block fp8 [\(rows), \(columns)]"
            case .tensorFP8: "modelopt fp8"
            case .nvfp4(let group): "nvfp4 (group \(group))"
            }
        }
    }

    /// What a quantized weight needs from the plan: its logical shape and its scale, located.
    struct Weight: Sendable {
        enum Scale: Sendable {
            case tensor(Float)
            case blocks(rows: Int, columns: Int, file: ReadOnlyFile, offset: Int64, dtype: DType)
            case groups(size: Int, file: ReadOnlyFile, offset: Int64, second: Float)
        }

        let scheme: Scheme
        let rows: Int
        let columns: Int
        let scale: Scale

        var logicalShape: [Int] { [rows, columns] }
        /// The logical element type the plan sizes its moves by (1 or ½ byte an element).
        var sourceDType: DType { scheme.format == .e2m1 ? .float4E2M1 : .float8E4M3 }

        /// The plan's record of this weight, stored at `range` of plan source `source`.
        func planned(source: Int32, range: ByteRange, in plan: inout ConversionPlan) -> QuantizedWeight {
            let planned: QuantizedWeight.Scale = switch scale {
            case .tensor(let value): .tensor(value)
            case .blocks(let rows, let columns, let file, let offset, let dtype):
                .blocks(blockRows: rows, blockColumns: columns, source: plan.source(file), offset: offset, dtype: dtype)
            case .groups(let size, let file, let offset, let second):
                .groups(size: size, source: plan.source(file), offset: offset, second: second)
            }
            return QuantizedWeight(format: scheme.format, source: source, range: range, rows: rows, columns: columns, scale: planned)
        }
    }

    /// The quantized weights by source name.
    let weights: [String: Weight]
    /// Companion tensors: the scales the weights consume, and the activation / KV-cache scales
    /// (`input_scale`, `k_scale`, `v_scale`) that are recorded and not mapped.
    let consumed: Set<String>
    let recorded: [String]
    /// `config.json`'s `quantization_config` and `hf_quant_config.json`'s `quantization`, as read.
    let declaration: JSONValue

    static let scaleSuffixes = ["weight_scale_inv", "weight_scale_2", "weight_scale"]
    static let recordedSuffixes = ["input_scale", "k_scale", "v_scale"]

    /// The folder's quantization, or nil for an unquantized folder (no declaration, and no
    /// tensor that looks quantized).
    static func of(_ folder: HFCheckpointFolder) throws -> HFQuantization? {
        let configPath = folder.config?.path ?? (folder.directory as NSString).appendingPathComponent("config.json")
        let modeloptPath = (folder.directory as NSString).appendingPathComponent("hf_quant_config.json")
        let config = folder.config?.document["quantization_config"] ?? folder.config?.textConfig["quantization_config"]
        var modelopt: JSONValue?
        if FileManager.default.fileExists(atPath: modeloptPath) {
            let file = try ReadOnlyFile(path: modeloptPath)
            let bytes = try file.readBytes(ByteRange(offset: 0, count: file.size))
            do {
                modelopt = try JSONParser.parse(bytes, dialect: .python)
            } catch {
                throw QuantizationError.unsupportedScheme(config: modeloptPath, reason: "not JSON (\(error.description))")
            }
        }
        let declared = (config != nil && config?.isNull == false) || modelopt != nil
        guard declared else {
            // Quantized-looking tensors with no declaration are refused, never copied as they are.
            for entry in folder.tensors {
                let name = entry.info.name
                let isScale = (scaleSuffixes + recordedSuffixes).contains { name.hasSuffix(".\($0)") }
                if isScale || (name.hasSuffix(".weight") && (entry.info.dtype == .float8E4M3 || entry.info.dtype == .float4E2M1)) {
                    throw QuantizationError.undeclaredQuantization(
                        file: folder.files[entry.file].displayName, tensor: name,
                        reason: "config.json has no quantization_config (and there is no hf_quant_config.json)")
                }
            }
            return nil
        }
        let rule = try Rule(config: config ?? .null, modelopt: modelopt?["quantization"] ?? modelopt, configPath: configPath,
                            modeloptPath: modeloptPath)
        return try HFQuantization(folder: folder, rule: rule, configPath: configPath,
                                  declaration: .object([("quantization_config", config ?? .null), ("hf_quant_config", modelopt ?? .null)]))
    }

    /// Which scheme the declaration gives a module (nil: not quantized), and why.
    struct Rule {
        var defaultScheme: Scheme?
        /// `MIXED_PRECISION`: each quantized module's scheme; modules not listed are not quantized.
        var layers: [String: Scheme]?
        var excluded: [String] = []
        var excludeField: String

        init(config: JSONValue, modelopt: JSONValue?, configPath: String, modeloptPath: String) throws {
            let method = config["quant_method"]?.stringValue?.lowercased()
            func strings(_ value: JSONValue?) -> [String] { value?.arrayValue?.compactMap(\.stringValue) ?? [] }
            switch method {
            case "fp8":
                guard let block = config["weight_block_size"]?.arrayValue?.compactMap(\.intValue), block.count == 2, block.allSatisfy({ $0 > 0 }) else {
                    throw QuantizationError.unsupportedScheme(
                        config: configPath, reason: "quant_method fp8 without weight_block_size [B0, B1] (only block-scaled FP8 is read)")
                }
                defaultScheme = .blockFP8(rows: block[0], columns: block[1])
                excluded = strings(config["modules_to_not_convert"]) + strings(config["ignored_layers"])
                excludeField = "modules_to_not_convert"
            case "modelopt", nil:
                let algo = (modelopt?["quant_algo"]?.stringValue ?? config["quant_algo"]?.stringValue)?.uppercased()
                let group = modelopt?["group_size"]?.intValue ?? config["group_size"]?.intValue
                    ?? config["config_groups"]?["group_0"]?["weights"]?["group_size"]?.intValue ?? 16
                func scheme(_ algo: String?, where origin: String) throws -> Scheme {
                    switch algo {
                    case "FP8": return .tensorFP8
                    case "NVFP4":
                        guard group == 16 else {
                            throw QuantizationError.unsupportedScheme(config: origin, reason: "NVFP4 with group_size \(group) (16 is read)")
                        }
                        return .nvfp4(group: group)
                    default:
                        throw QuantizationError.unsupportedScheme(
                            config: origin, reason: "quant_algo \(algo ?? "missing") (FP8, NVFP4 and MIXED_PRECISION of them are read)")
                    }
                }
                let origin = modelopt != nil ? modeloptPath : configPath
                if algo == "MIXED_PRECISION" {
                    guard let listed = (modelopt?["quantized_layers"] ?? config["quantized_layers"])?.objectMembers else {
                        throw QuantizationError.unsupportedScheme(config: origin, reason: "MIXED_PRECISION without quantized_layers")
                    }
                    var layers: [String: Scheme] = [:]
                    for (module, value) in listed { layers[module] = try scheme(value["quant_algo"]?.stringValue?.uppercased(), where: origin) }
                    self.layers = layers
                } else {
                    defaultScheme = try scheme(algo, where: origin)
                }
                excluded = strings(modelopt?["exclude_modules"]) + strings(config["exclude_modules"]) + strings(config["ignore"])
                excludeField = "exclude_modules"
            default:
                throw QuantizationError.unsupportedScheme(
                    config: configPath, reason: "quant_method \(method!) (fp8 with weight_block_size and modelopt FP8 / NVFP4 are read)")
            }
        }

        /// The pattern of the exclude list that names `module`: an fnmatch pattern (ModelOpt's
        /// `*`), or a plain name matching whole dotted components (transformers' substring rule).
        func exclusion(of module: String) -> String? {
            excluded.first { pattern in
                if pattern.contains("*") || pattern.contains("?") { return fnmatch(pattern, module, 0) == 0 }
                return module == pattern || module.hasSuffix("." + pattern) || module.hasPrefix(pattern + ".") || module.contains("." + pattern + ".")
            }
        }

        /// The scheme `module`'s weight should be stored in, or nil with the reason it is not quantized.
        func scheme(of module: String) -> (scheme: Scheme?, reason: String) {
            if let pattern = exclusion(of: module) { return (nil, "\(excludeField) excludes it (`\(pattern)`)") }
            if let layers {
                guard let scheme = layers[module] else { return (nil, "quantized_layers does not list `\(module)`") }
                return (scheme, "quantized_layers gives it \(scheme)")
            }
            return (defaultScheme, "the config quantizes every module it does not exclude as \(defaultScheme.map(String.init(describing:)) ?? "nothing")")
        }
    }

    private init(folder: HFCheckpointFolder, rule: Rule, configPath: String, declaration: JSONValue) throws {
        self.declaration = declaration
        var weights: [String: Weight] = [:]
        var consumed = Set<String>()
        var recorded: [String] = []
        // Scales first: each must have its quantized weight.
        for entry in folder.tensors {
            let name = entry.info.name
            if Self.recordedSuffixes.contains(where: { name.hasSuffix(".\($0)") }) {
                recorded.append(name)
                consumed.insert(name)
                continue
            }
            guard let suffix = Self.scaleSuffixes.first(where: { name.hasSuffix(".\($0)") }) else { continue }
            let module = String(name.dropLast(suffix.count + 1))
            let weight = module + ".weight"
            guard folder.contains(weight) else {
                throw QuantizationError.extraScale(file: folder.files[entry.file].displayName, tensor: name, reason: "there is no `\(weight)`")
            }
            let stored = try folder.locate(weight).tensor.dtype
            let uses: Bool = switch (suffix, stored) {
            case ("weight_scale_inv", .float8E4M3): !folder.contains(module + ".weight_scale")
            case ("weight_scale", .float8E4M3): !folder.contains(module + ".weight_scale_inv")
            case ("weight_scale", .uint8), ("weight_scale_2", .uint8): true
            default: false
            }
            guard uses else {
                let reason = stored == .float8E4M3 || stored == .uint8
                    ? "`\(weight)` (\(stored.safetensorsName)) has both weight_scale_inv and weight_scale, or no use for `\(suffix)`"
                    : "`\(weight)` is \(stored.safetensorsName), not quantized"
                throw QuantizationError.extraScale(file: folder.files[entry.file].displayName, tensor: name, reason: reason)
            }
            consumed.insert(name)
        }
        // Quantized weights: stored as the declaration says, with their scales exactly shaped.
        for entry in folder.tensors where entry.info.name.hasSuffix(".weight") {
            let name = entry.info.name, info = entry.info
            let module = String(name.dropLast(".weight".count))
            let fileName = folder.files[entry.file].displayName
            guard info.dtype == .float8E4M3 || info.dtype == .uint8 || info.dtype == .float4E2M1 else { continue }
            guard info.shape.count == 2 else {
                throw QuantizationError.badQuantizedWeight(file: fileName, tensor: name, reason: "shape \(info.shape) is not [out, in]")
            }
            let stored: Scheme
            if info.dtype == .float8E4M3 {
                if folder.contains(module + ".weight_scale_inv") {
                    // Block FP8: the block size is the declaration's.
                    guard case .blockFP8? = rule.defaultScheme, let declared = rule.defaultScheme else {
                        throw QuantizationError.undeclaredQuantization(
                            file: fileName, tensor: name,
                            reason: "it has a weight_scale_inv (block FP8) and the config declares \(rule.defaultScheme.map(String.init(describing:)) ?? "no block FP8")")
                    }
                    stored = declared
                } else if folder.contains(module + ".weight_scale") {
                    stored = .tensorFP8
                } else {
                    let scale = if case .blockFP8 = rule.defaultScheme { "weight_scale_inv" } else { "weight_scale" }
                    throw QuantizationError.missingScale(file: fileName, tensor: name, scale: module + "." + scale)
                }
            } else if info.dtype == .uint8 {
                stored = .nvfp4(group: 16)
            } else {
                throw QuantizationError.badQuantizedWeight(file: fileName, tensor: name, reason: "F4 weights are read as ModelOpt's packed U8 only")
            }
            let (expected, reason) = rule.scheme(of: module)
            guard let expected else { throw QuantizationError.undeclaredQuantization(file: fileName, tensor: name, reason: reason) }
            guard expected == stored else {
                throw QuantizationError.undeclaredQuantization(file: fileName, tensor: name, reason: "it is stored as \(stored) and \(reason)")
            }
            func scaleInfo(_ suffix: String) throws -> (file: SafetensorsFile, tensor: SafetensorsTensorInfo) {
                let scale = module + "." + suffix
                guard folder.contains(scale) else { throw QuantizationError.missingScale(file: fileName, tensor: name, scale: scale) }
                return try folder.locate(scale)
            }
            func check(_ scale: (file: SafetensorsFile, tensor: SafetensorsTensorInfo), shape: [Int], dtypes: [DType]) throws {
                guard dtypes.contains(scale.tensor.dtype) else {
                    throw QuantizationError.scaleDType(file: scale.file.displayName, tensor: name, scale: scale.tensor.name,
                                                       dtype: scale.tensor.dtype, expected: dtypes)
                }
                guard scale.tensor.shape == shape else {
                    throw QuantizationError.misshapedScale(file: scale.file.displayName, tensor: name, scale: scale.tensor.name,
                                                           expected: shape, actual: scale.tensor.shape)
                }
            }
            func scalar(_ scale: (file: SafetensorsFile, tensor: SafetensorsTensorInfo)) throws -> Float {
                let bytes = try scale.file.file.readBytes(scale.file.fileRange(of: scale.tensor))
                return bytes.withUnsafeBytes { Dequantize.scaleValueOf($0, dtype: scale.tensor.dtype) }
            }
            let rows = info.shape[0]
            switch stored {
            case .blockFP8(let blockRows, let blockColumns):
                let columns = info.shape[1]
                let scale = try scaleInfo("weight_scale_inv")
                try check(scale, shape: [(rows + blockRows - 1) / blockRows, (columns + blockColumns - 1) / blockColumns], dtypes: [.float32, .bfloat16])
                weights[name] = Weight(scheme: stored, rows: rows, columns: columns, scale: .blocks(
                    rows: blockRows, columns: blockColumns, file: scale.file.file, offset: scale.file.fileRange(of: scale.tensor).offset,
                    dtype: scale.tensor.dtype))
            case .tensorFP8:
                let scale = try scaleInfo("weight_scale")
                try check(scale, shape: [], dtypes: [.float32, .bfloat16])
                weights[name] = Weight(scheme: stored, rows: rows, columns: info.shape[1], scale: .tensor(try scalar(scale)))
            case .nvfp4(let group):
                let columns = info.shape[1] * 2
                guard columns % group == 0 else {
                    throw QuantizationError.badQuantizedWeight(file: fileName, tensor: name, reason: "\(columns) columns are not whole groups of \(group)")
                }
                let scale = try scaleInfo("weight_scale"), second = try scaleInfo("weight_scale_2")
                try check(scale, shape: [rows, columns / group], dtypes: [.float8E4M3])
                try check(second, shape: [], dtypes: [.float32])
                weights[name] = Weight(scheme: stored, rows: rows, columns: columns, scale: .groups(
                    size: group, file: scale.file.file, offset: scale.file.fileRange(of: scale.tensor).offset, second: try scalar(second)))
            }
        }
        // Modules of one family (the same name but for layer and expert numbers) are quantized
        // alike, but for those the declaration excludes: an unquantized one must be excluded.
        func family(_ name: String) -> String {
            var out = "", inDigits = false
            for character in name {
                if character.isASCII && character.isNumber {
                    if !inDigits { out.append("#") }
                    inDigits = true
                } else {
                    out.append(character)
                    inDigits = false
                }
            }
            return out
        }
        let quantizedFamilies = Set(weights.keys.map(family))
        for entry in folder.tensors where entry.info.name.hasSuffix(".weight") && weights[entry.info.name] == nil && entry.info.shape.count == 2 {
            let name = entry.info.name
            let module = String(name.dropLast(".weight".count))
            let (expected, reason) = rule.scheme(of: module)
            if rule.layers != nil, let expected {
                throw QuantizationError.notQuantized(config: configPath, tensor: name, reason: "\(reason) (it is \(entry.info.dtype.safetensorsName), not \(expected))")
            }
            if rule.layers == nil, expected != nil, quantizedFamilies.contains(family(name)) {
                throw QuantizationError.notQuantized(
                    config: configPath, tensor: name,
                    reason: "\(rule.excludeField) does not exclude it and the other modules like it are quantized (it is \(entry.info.dtype.safetensorsName))")
            }
        }
        self.weights = weights
        self.consumed = consumed
        self.recorded = recorded
    }

    /// How many weights of each scheme, for the summary line.
    var summary: String {
        var counts: [String: Int] = [:]
        for weight in weights.values { counts[weight.scheme.description, default: 0] += 1 }
        return counts.keys.sorted().map { "\($0): \(counts[$0]!)" }.joined(separator: ", ")
    }

    /// The record under `OUT/nembridge/hf/`: the declaration, each quantized weight's scheme, and
    /// the recorded activation / KV-cache scales with their values (scalars).
    func record(_ folder: HFCheckpointFolder) throws -> JSONValue {
        var recordedValues: [(String, JSONValue)] = []
        for name in recorded {
            let (file, info) = try folder.locate(name)
            var value: JSONValue = .null
            if info.shape.isEmpty || info.shape == [1], [.float32, .bfloat16, .float16].contains(info.dtype) {
                let bytes = try file.file.readBytes(file.fileRange(of: info))
                let scalar = bytes.withUnsafeBytes { Dequantize.scaleValueOf($0, dtype: info.dtype) }
                if scalar.isFinite { value = .number(JSONNumber(text: "\(scalar)")) }
            }
            recordedValues.append((name, .object([("dtype", .string(info.dtype.safetensorsName)),
                                                  ("shape", .array(info.shape.map { .number(JSONNumber($0)) })), ("value", value)])))
        }
        let schemes: [(String, JSONValue)] = weights.keys.sorted().map { ($0, .string(weights[$0]!.scheme.description)) }
        return .object([("declaration", declaration), ("weights", .object(schemes)), ("recorded_scales", .object(recordedValues))])
    }
}

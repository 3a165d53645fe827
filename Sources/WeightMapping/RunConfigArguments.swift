import TensorCore
import Yams

/// Megatron arguments from Megatron-Bridge's `run_config.yaml`, for a checkpoint Bridge trained:
/// its common state holds no `args`, and the `model:` section (the model provider, a
/// TransformerConfig dataclass written field by field) describes the model instead. Provider and
/// Megatron-LM spell most fields alike (Megatron-LM's `core_transformer_config_from_args` copies
/// same-named arguments into the TransformerConfig); the table's `run_config_args` section lists
/// the ones spelled otherwise.
public struct RunConfigArgumentsSpec: Sendable {
    public enum Source: Sendable {
        /// The provider field of that name.
        case field(String)
        /// The negation of a boolean provider field.
        case not(String)
        /// Whether the field is set (not null, not empty).
        case isSet(String)
        /// Whether a callable field (`{_call_: false, _target_: path}`) names this function.
        case target(field: String, function: String)
    }

    public let arguments: [(name: String, source: Source)]

    /// The Megatron arguments: every scalar provider field under its own name, then the table's renames.
    public func arguments(model: [String: JSONValue]) -> [String: JSONValue] {
        var result = model
        for (name, source) in arguments {
            switch source {
            case .field(let field):
                if let value = model[field] { result[name] = value }
            case .not(let field):
                if let flag = model[field]?.boolValue { result[name] = .bool(!flag) }
            case .isSet(let field):
                result[name] = .bool(HFConfigSpec.isSet(model[field]))
            case .target(let field, let function):
                result[name] = .bool(model[field]?.objectMembers?.first { $0.key == "_target_" }?.value.stringValue == function)
            }
        }
        return result
    }
}

/// A `run_config.yaml` that does not read as Megatron-Bridge writes it.
public enum RunConfigError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalid(file: String, reason: String)

    public var description: String {
        switch self {
        case .invalid(let file, let reason):
            "\(file): not a Megatron-Bridge run config (\(reason)); give the model's config folder with --hf-config DIR"
        }
    }
}

/// The top-level sections of a `run_config.yaml` (ConfigContainer.to_yaml, PyYAML's safe_dump).
public enum BridgeRunConfigFile {
    /// Each top-level mapping section (`model`, `tokenizer`, ...) as JSON members; scalars as
    /// PyYAML's safe_load resolves them.
    public static func sections(yaml text: String, file: String) throws -> [String: [String: JSONValue]] {
        let root: Node?
        do { root = try Yams.compose(yaml: text) } catch {
            throw RunConfigError.invalid(file: file, reason: "not valid YAML: \(error)")
        }
        guard case .mapping(let top)? = root else { throw RunConfigError.invalid(file: file, reason: "the document is not a mapping") }
        var result: [String: [String: JSONValue]] = [:]
        for (key, value) in top {
            guard case .scalar(let name) = key, case .mapping = value, case .object(let members) = try json(value, file: file) else { continue }
            result[name.string] = Dictionary(members, uniquingKeysWith: { _, last in last })
        }
        guard result["model"] != nil else { throw RunConfigError.invalid(file: file, reason: "no `model:` section") }
        return result
    }

    static func json(_ node: Node, file: String) throws -> JSONValue {
        switch node {
        case .scalar(let scalar):
            return scalar.style == .plain ? plain(scalar.string) : .string(scalar.string)
        case .sequence(let sequence):
            return .array(try sequence.map { try json($0, file: file) })
        case .mapping(let mapping):
            return .object(try mapping.map { key, value in
                guard case .scalar(let name) = key else { throw RunConfigError.invalid(file: file, reason: "a mapping key is not a string") }
                return (name.string, try json(value, file: file))
            })
        default:
            throw RunConfigError.invalid(file: file, reason: "unsupported YAML node")
        }
    }

    /// A plain scalar as PyYAML's (YAML 1.1) resolver reads it: null, bool, int, float, else a string.
    static func plain(_ text: String) -> JSONValue {
        switch text {
        case "", "~", "null", "Null", "NULL": return .null
        case "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON": return .bool(true)
        case "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF": return .bool(false)
        default: break
        }
        let digits = text.drop { $0 == "-" || $0 == "+" }
        if !digits.isEmpty, digits.allSatisfy(\.isASCII), digits.first!.isNumber || digits.first == ".",
           digits.contains(where: \.isNumber), digits.allSatisfy({ $0.isNumber || ".eE+-_".contains($0) }),
           case .number(let number)? = try? JSONParser.parse(normalizedNumber(text)) {
            return .number(number)
        }
        return .string(text)
    }

    /// `1.0e-05`, `+3`, `.5`, `1_000` in JSON's spelling.
    static func normalizedNumber(_ text: String) -> String {
        var result = text.replacingOccurrences(of: "_", with: "")
        if result.hasPrefix("+") { result.removeFirst() }
        if result.hasPrefix(".") { result = "0" + result }
        if result.hasPrefix("-.") { result = "-0" + result.dropFirst() }
        if let dot = result.firstIndex(of: "."), result.index(after: dot) == result.endIndex
            || !result[result.index(after: dot)].isNumber {
            result.insert("0", at: result.index(after: dot))
        }
        return result
    }
}

import TensorCore

/// Everything that can be wrong with a mapping table, or with a model measured against one.
/// Table errors carry the table's file, line and column; model errors list every offender at once.
public enum MappingError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidTable(file: String, line: Int, column: Int, message: String)
    case unknownArchitecture(config: String, architectures: [String], known: [String])
    case missingConfigField(config: String, field: String, neededFor: String)
    case invalidConfigValue(config: String, field: String, reason: String)
    /// Source tensors no rule consumes.
    case unmappedTensors(side: String, names: [String])
    /// Tensors a rule needs that the source does not have.
    case missingTensors(side: String, names: [String])
    case shapeMismatch(tensor: String, expected: [Int], actual: [Int], reason: String)
    /// A tensor with another number of axes than the architecture's (a norm stored as [1, H]).
    case unexpectedRank(tensor: String, shape: [Int], expectedRank: Int, architecture: String)
    /// The sources of one target tensor have different dtypes (`dtypes`, sorted): combining them
    /// would need a cast nobody asked for.
    case dtypeConflict(tensor: String, dtypes: [DType], reason: String)
    /// A tensor whose dtype the operation cannot handle (rows of sub-byte elements that are not
    /// whole bytes).
    case unsupportedDType(tensor: String, dtype: DType, reason: String)
    /// Rows of a target tensor that no source fills (a table bug, never silently zero).
    case unfilledTarget(tensor: String, reason: String)
    /// The layers of a stacked key disagree; `tensors` are the per-layer names concerned.
    case inconsistentLayers(key: String, reason: String, tensors: [String] = [])
    /// A target layout the model cannot be split into (Megatron-Core's own rules).
    case cannotSplit(what: String, reason: String)

    public var description: String {
        // Tensor names and config fields come from the input: quoted, one line.
        let q = { (text: String) in MessageText.quoted(text) }, r = { (text: String) in MessageText.quoted(text, limit: nil) }
        return switch self {
        case .invalidTable(let file, let line, let column, let message):
            "\(MessageText.path(file)):\(line):\(column): \(r(message))"
        case .unknownArchitecture(let config, let architectures, let known):
            "\(MessageText.path(config)): no mapping table for architectures [\(architectures.prefix(20).map { "\"\(q($0))\"" }.joined(separator: ", "))] (tables exist for: \(known.joined(separator: ", ")))"
        case .missingConfigField(let config, let field, let neededFor):
            "\(MessageText.path(config)): missing field `\(q(field))` (needed for \(neededFor))"
        case .invalidConfigValue(let config, let field, let reason):
            "\(MessageText.path(config)): field `\(q(field))`: \(r(reason))"
        case .unmappedTensors(let side, let names):
            "\(names.count) \(side) tensor(s) are not mapped by any rule: \(Self.list(names))"
        case .missingTensors(let side, let names):
            "\(names.count) \(side) tensor(s) needed by the mapping are missing: \(Self.list(names))"
        case .shapeMismatch(let tensor, let expected, let actual, let reason):
            "tensor `\(q(tensor))`: shape \(actual) does not match the expected \(expected) (\(r(reason)))"
        case .unexpectedRank(let tensor, let shape, let expectedRank, let architecture):
            "tensor `\(q(tensor))`: shape \(shape) has \(shape.count) axes, a \(architecture) model's has \(expectedRank)"
        case .dtypeConflict(let tensor, let dtypes, let reason):
            "tensor `\(q(tensor))`: sources of dtypes \(dtypes.map(\.description).joined(separator: ", ")) cannot be combined (\(r(reason)))"
        case .unsupportedDType(let tensor, let dtype, let reason):
            "tensor `\(q(tensor))`: dtype \(dtype) is not supported here (\(r(reason)))"
        case .unfilledTarget(let tensor, let reason):
            "target `\(q(tensor))` is not fully filled: \(r(reason))"
        case .inconsistentLayers(let key, let reason, _):
            "stacked key `\(q(key))`: \(r(reason))"
        case .cannotSplit(let what, let reason):
            "\(r(what)) cannot be split: \(r(reason))"
        }
    }

    /// The tensors (or keys) the error is about, carried as data: for callers that name the
    /// files those tensors came from.
    public var tensorNames: [String] {
        switch self {
        case .unmappedTensors(_, let names), .missingTensors(_, let names): names
        case .shapeMismatch(let tensor, _, _, _), .dtypeConflict(let tensor, _, _), .unsupportedDType(let tensor, _, _),
            .unfilledTarget(let tensor, _), .unexpectedRank(let tensor, _, _, _):
            [tensor]
        case .inconsistentLayers(let key, _, let tensors): [key] + tensors
        case .invalidTable, .unknownArchitecture, .missingConfigField, .invalidConfigValue, .cannotSplit: []
        }
    }

    private static func list(_ names: [String]) -> String {
        let shown = names.prefix(20).map { "`\(MessageText.quoted($0))`" }.joined(separator: ", ")
        return names.count > 20 ? shown + ", … (\(names.count - 20) more)" : shown
    }
}

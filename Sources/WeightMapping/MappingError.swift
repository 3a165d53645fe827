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
    /// Rows of a target tensor that no source fills (a table bug, never silently zero).
    case unfilledTarget(tensor: String, reason: String)
    case inconsistentLayers(key: String, reason: String)
    /// A target layout the model cannot be split into (Megatron-Core's own rules).
    case cannotSplit(what: String, reason: String)

    public var description: String {
        switch self {
        case .invalidTable(let file, let line, let column, let message):
            "\(file):\(line):\(column): \(message)"
        case .unknownArchitecture(let config, let architectures, let known):
            "\(config): no mapping table for architectures \(architectures) (tables exist for: \(known.joined(separator: ", ")))"
        case .missingConfigField(let config, let field, let neededFor):
            "\(config): missing field `\(field)` (needed for \(neededFor))"
        case .invalidConfigValue(let config, let field, let reason):
            "\(config): field `\(field)`: \(reason)"
        case .unmappedTensors(let side, let names):
            "\(names.count) \(side) tensor(s) are not mapped by any rule: \(Self.list(names))"
        case .missingTensors(let side, let names):
            "\(names.count) \(side) tensor(s) needed by the mapping are missing: \(Self.list(names))"
        case .shapeMismatch(let tensor, let expected, let actual, let reason):
            "tensor `\(tensor)`: shape \(actual) does not match the expected \(expected) (\(reason))"
        case .unexpectedRank(let tensor, let shape, let expectedRank, let architecture):
            "tensor `\(tensor)`: shape \(shape) has \(shape.count) axes, a \(architecture) model's has \(expectedRank)"
        case .unfilledTarget(let tensor, let reason):
            "target `\(tensor)` is not fully filled: \(reason)"
        case .inconsistentLayers(let key, let reason):
            "stacked key `\(key)`: \(reason)"
        case .cannotSplit(let what, let reason):
            "\(what) cannot be split: \(reason)"
        }
    }

    private static func list(_ names: [String]) -> String {
        let shown = names.prefix(20).map { "`\($0)`" }.joined(separator: ", ")
        return names.count > 20 ? shown + ", … (\(names.count - 20) more)" : shown
    }
}

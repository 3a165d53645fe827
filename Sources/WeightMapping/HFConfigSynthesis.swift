import TensorCore

/// How a table writes `config.json` from Megatron arguments (its `hf_config` section): the
/// reverse of `args`, for checkpoints Megatron-LM trained, which carry no Hugging Face config.
public struct HFConfigSpec: Sendable {
    /// Where one config field's value comes from.
    public enum Source: Sendable {
        /// A Megatron argument (`type` int/float converts it as transformers declares the field).
        case argument(String, type: String?)
        /// The negation of a boolean argument.
        case not(String)
        /// An integer expression over arguments.
        case expression(ArgumentExpression)
        /// A literal.
        case value(JSONValue)
        /// The value of the first argument of `flags` that is true (`bf16` → `bfloat16`), else `otherwise`.
        case firstTrue([(argument: String, value: JSONValue)], otherwise: JSONValue)
    }

    /// One field (a dotted name writes into a nested object), set when `condition` holds: the
    /// argument `condition` is true (or, with `!`, false); `otherwise` is used when it does not.
    public struct Field: Sendable {
        public let name: String
        public let source: Source
        public let condition: String?
        public let otherwise: Source?
        /// The training flag that sets the argument, for the error when it is missing.
        public let flag: String?
    }

    /// Arguments that must be unset (None, absent, empty or false) for this table to describe the checkpoint.
    public let selectUnset: [String]
    /// Arguments of which at least one must be set (not None, not empty), when given.
    public let selectSet: [String]
    /// Arguments that must have these values (the model features the table's class implements).
    public let requires: [(name: String, value: JSONValue)]
    /// Arguments holding a whole config.json as a JSON string (DeciLM's heterogeneous config):
    /// the first one set is the document `fields` then complete.
    public let base: [String]
    public let fields: [Field]
}

/// A `config.json` the arguments cannot give, or arguments that describe another model.
public enum ConfigSynthesisError: Error, Equatable, Sendable, CustomStringConvertible {
    case missingArgument(source: String, argument: String, field: String, flag: String?)
    case unsupportedArgument(source: String, argument: String, value: String, expected: String, table: String)
    case noTable(source: String, known: [String])
    case invalidBase(source: String, argument: String, reason: String)

    public var description: String {
        switch self {
        case .missingArgument(let source, let argument, let field, let flag):
            "\(source): the training args have no `\(argument)` (needed for config.json `\(field)`)"
                + (flag.map { "; it is set by \($0) in the training run" } ?? "") + "; give the model's config folder with --hf-config DIR"
        case .unsupportedArgument(let source, let argument, let value, let expected, let table):
            "\(source): args.\(argument) = \(value), but a \(table) model has \(expected); give the model's config folder with --hf-config DIR"
        case .invalidBase(let source, let argument, let reason):
            "\(source): args.\(argument) is not a config.json document (\(reason)); give the model's config folder with --hf-config DIR"
        case .noTable(let source, let known):
            "\(source): no mapping table describes the model of these training args (tables with an hf_config section: \(known.joined(separator: ", "))); give the model's config folder with --hf-config DIR"
        }
    }
}

extension HFConfigSpec {
    public static func isSet(_ value: JSONValue?) -> Bool {
        guard let value, !value.isNull else { return false }
        if let flag = value.boolValue { return flag }
        if let text = value.stringValue { return !text.isEmpty }
        if let items = value.arrayValue { return !items.isEmpty }
        return true
    }

    /// Whether the arguments describe a model of this table.
    public func selects(_ arguments: [String: JSONValue]) -> Bool {
        selectUnset.allSatisfy { !Self.isSet(arguments[$0]) } && (selectSet.isEmpty || selectSet.contains { Self.isSet(arguments[$0]) })
    }

    /// The config.json document, fields in the table's order (nested objects where names are dotted).
    public func configDocument(arguments: [String: JSONValue], source: String, table: String) throws -> JSONValue {
        for (name, expected) in requires {
            let actual = arguments[name] ?? .null
            if actual != expected && !(actual.isNull && expected == .bool(false)) {
                throw ConfigSynthesisError.unsupportedArgument(source: source, argument: name, value: JSONWriter.compact(actual),
                                                               expected: JSONWriter.compact(expected), table: table)
            }
        }
        var document: [(key: String, value: JSONValue)] = []
        if let name = base.first(where: { Self.isSet(arguments[$0]) }), let text = arguments[name]?.stringValue {
            let parsed: JSONValue
            do { parsed = try JSONParser.parse(text, dialect: .python) } catch {
                throw ConfigSynthesisError.invalidBase(source: source, argument: name, reason: "\(error)")
            }
            guard let members = parsed.objectMembers else {
                throw ConfigSynthesisError.invalidBase(source: source, argument: name, reason: "not a JSON object")
            }
            document = members
        }
        for field in fields {
            var chosen: Source? = field.source
            if let condition = field.condition {
                let negated = condition.hasPrefix("!")
                let holds = Self.isSet(arguments[String(condition.drop { $0 == "!" })]) != negated
                if !holds { chosen = field.otherwise }
            }
            guard let chosen else { continue }
            let value = try Self.value(chosen, field: field, arguments: arguments, source: source)
            Self.insert(value, at: field.name.split(separator: ".").map(String.init), into: &document)
        }
        return .object(document)
    }

    static func value(_ source: Source, field: Field, arguments: [String: JSONValue], source where: String) throws -> JSONValue {
        func argument(_ name: String) throws -> JSONValue {
            guard let value = arguments[name], !value.isNull else {
                throw ConfigSynthesisError.missingArgument(source: `where`, argument: name, field: field.name, flag: field.flag)
            }
            return value
        }
        switch source {
        case .value(let literal):
            return literal
        case .not(let name):
            return .bool(!(try argument(name).boolValue ?? false))
        case .argument(let name, let type):
            let value = try argument(name)
            switch type {
            case "float":
                guard let number = value.doubleValue else { return value }
                return .number(JSONNumber(text: pythonFloatText(number)))
            case "int":
                guard let number = value.doubleValue, number == number.rounded() else { return value }
                return .number(JSONNumber(Int(number)))
            default:
                return value
            }
        case .expression(let expression):
            var missing: String?
            let result = expression.evaluate { name in
                guard let number = arguments[name]?.intValue else { missing = missing ?? name; return nil }
                return number
            }
            guard let result else {
                throw ConfigSynthesisError.missingArgument(source: `where`, argument: missing ?? "\(expression)", field: field.name, flag: field.flag)
            }
            return .number(JSONNumber(result))
        case .firstTrue(let flags, let otherwise):
            return flags.first { isSet(arguments[$0.argument]) }?.value ?? otherwise
        }
    }

    /// Python's `repr` of a float, as json.dump writes it (`1e-05`, `500000.0`).
    public static func pythonFloatText(_ value: Double) -> String {
        var text = "\(value)"
        if !text.contains(".") && !text.contains("e") && !text.contains("n") { text += ".0" }
        return text
    }

    static func insert(_ value: JSONValue, at path: [String], into members: inout [(key: String, value: JSONValue)]) {
        guard let head = path.first else { return }
        let index = members.firstIndex { $0.key == head }
        if path.count == 1 {
            if let index { members[index].value = value } else { members.append((head, value)) }
            return
        }
        var inner = index.flatMap { members[$0].value.objectMembers } ?? []
        insert(value, at: Array(path.dropFirst()), into: &inner)
        if let index { members[index].value = .object(inner) } else { members.append((head, .object(inner))) }
    }
}

extension MappingTable {
    /// The table whose `hf_config` section selects these arguments (exactly one must).
    public static func forTrainingArguments(_ arguments: [String: JSONValue], tables: [MappingTable], source: String) throws -> MappingTable {
        let candidates = tables.filter { $0.hfConfig?.selects(arguments) == true }
        guard candidates.count == 1, let table = candidates.first else {
            throw ConfigSynthesisError.noTable(source: source, known: tables.filter { $0.hfConfig != nil }.map(\.name))
        }
        return table
    }
}

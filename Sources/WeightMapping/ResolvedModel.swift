import TensorCore

/// A mapping table applied to one model's `config.json`: the Megatron arguments it yields, the
/// rules that apply (after `when` conditions), and the numbers the ops need.
public struct ResolvedModel: Sendable {
    public let table: MappingTable
    /// The HF config as data (the `text_config` part for wrapped models).
    public let config: JSONValue
    public let configPath: String
    public let spec: MegatronSpec
    /// Megatron arguments in table order: read from the config, then the fixed ones.
    public private(set) var arguments: [(name: String, value: JSONValue)]
    public let layerCount: Int
    public let rules: [MappingRule]
    /// Per-layer values from the table's `layer_config` (empty dictionaries without one).
    public let layerValues: [[String: JSONValue]]
    /// Per-MTP-layer values (`kind`, `last`); empty without MTP.
    public let mtpValues: [[String: JSONValue]]

    /// Finds the table for the config's `architectures` and resolves every argument it declares.
    public static func resolve(
        tables: [MappingTable], config document: JSONValue, configPath: String, spec: MegatronSpec = .transformerEngine
    ) throws -> ResolvedModel {
        let architectures = document["architectures"]?.arrayValue?.compactMap(\.stringValue) ?? []
        guard let table = tables.first(where: { table in table.hfArchitectures.contains(where: architectures.contains) }) else {
            throw MappingError.unknownArchitecture(
                config: configPath, architectures: architectures, known: tables.flatMap(\.hfArchitectures))
        }
        return try ResolvedModel(table: table, config: document, configPath: configPath, spec: spec)
    }

    public init(table: MappingTable, config document: JSONValue, configPath: String, spec: MegatronSpec) throws {
        self.table = table
        config = document["text_config"] ?? document
        self.configPath = configPath
        self.spec = spec
        var resolved: [(name: String, value: JSONValue)] = []
        var deferred: [ArgumentRule] = []
        var absentLayerArguments: [ArgumentRule] = []
        for rule in table.arguments {
            var value: JSONValue?
            var fromConfig = false
            for field in rule.fields {
                if let found = Self.lookup(config, path: field), !found.isNull { value = found; fromConfig = true; break }
            }
            if value == nil, let fallback = Self.lookup(config, defaultsOf: table, rule.fields) { value = fallback }
            if value == nil, rule.firstLayer != nil {
                // Filled in from the layers once they are known.
                deferred.append(rule)
                resolved.append((rule.name, .null))
                continue
            }
            if value == nil, let defaultValue = rule.defaultValue {
                switch defaultValue {
                case .literal(let literal): value = literal
                case .expression(let expression):
                    let computed = expression.evaluate { name in resolved.last(where: { $0.name == name })?.value.intValue }
                    guard let computed else {
                        throw MappingError.missingConfigField(
                            config: configPath, field: rule.fields.first ?? rule.name, neededFor: "Megatron argument `\(rule.name)`")
                    }
                    value = .number(JSONNumber(computed))
                }
            }
            if value == nil, !rule.withLayers.isEmpty {
                // Required only if a layer of that kind exists: decided once the layers are known.
                absentLayerArguments.append(rule)
                resolved.append((rule.name, .null))
                continue
            }
            guard var found = value else {
                throw MappingError.missingConfigField(
                    config: configPath, field: rule.fields.joined(separator: "` or `"), neededFor: "Megatron argument `\(rule.name)`")
            }
            if fromConfig && !rule.valueMap.isEmpty {
                let key = found.stringValue ?? JSONWriter.compact(found)
                guard let mapped = rule.valueMap[key] else {
                    throw MappingError.invalidConfigValue(
                        config: configPath, field: rule.fields.first ?? rule.name,
                        reason: "value \(JSONWriter.compact(found)) is not one of \(rule.valueMap.keys.sorted())")
                }
                found = mapped
            }
            if let type = rule.type, !found.isNull, !found.isNumber {
                throw MappingError.invalidConfigValue(config: configPath, field: rule.fields.first ?? rule.name,
                                                      reason: "\(MessageText.quoted(JSONWriter.compact(found))) is not a number, as Megatron argument `\(rule.name)` needs")
            }
            if case .number(let number) = found, let integer = number.intValue, integer.magnitude > Self.largestDimension {
                throw MappingError.invalidConfigValue(config: configPath, field: rule.fields.first ?? rule.name,
                                                      reason: "\(number.text) is out of range for Megatron argument `\(rule.name)` (at most \(Self.largestDimension))")
            }
            if let type = rule.type, case .number(let number) = found {
                guard let double = number.doubleValue else {
                    throw MappingError.invalidConfigValue(config: configPath, field: rule.name, reason: "not a number")
                }
                if type == "int" {
                    guard double == double.rounded(), abs(double) < 9e15 else {
                        throw MappingError.invalidConfigValue(config: configPath, field: rule.fields.first ?? rule.name,
                                                              reason: "\(number.text) is not an integer, as Megatron argument `\(rule.name)` needs")
                    }
                    found = .number(JSONNumber(Int(double)))
                } else if number.intValue != nil {
                    found = .number(JSONNumber(text: "\(double)"))
                }
            }
            resolved.append((rule.name, found))
        }
        resolved.append(contentsOf: table.fixedArguments)
        if !table.configJSONArguments.isEmpty {
            let text = JSONWriter.compact(document)
            for name in table.configJSONArguments { resolved.append((name, .string(text))) }
        }
        let kinds = try Self.layerKinds(table: table, config: config, configPath: configPath)
        let declared = resolved.last(where: { $0.name == table.layerCountArgument })?.value.intValue
        if let kinds, let declared, declared != kinds.count {
            throw MappingError.invalidConfigValue(config: configPath, field: table.layerConfig?.pattern?.strings.first ?? "pattern",
                                                  reason: "describes \(kinds.count) layers, \(table.layerCountArgument) is \(declared)")
        }
        guard let layers = declared ?? kinds?.count, layers > 0 else {
            throw MappingError.missingConfigField(config: configPath, field: table.layerCountArgument, neededFor: "the layer count")
        }
        // Per-layer values are allocated per claimed layer: a count no model has is refused first
        // (MappingPlan then bounds it by the tensors present).
        guard layers <= Self.largestLayerCount else {
            throw MappingError.invalidConfigValue(config: configPath, field: Self.configField(of: table.layerCountArgument, in: table),
                                                  reason: "\(layers) layers is more than any model has (at most \(Self.largestLayerCount))")
        }
        if declared == nil {
            resolved.removeAll { $0.name == table.layerCountArgument }
            resolved.insert((table.layerCountArgument, .number(JSONNumber(layers))), at: 0)
        }
        if let kinds, let name = table.layerConfig?.pattern?.argument {
            resolved.removeAll { $0.name == name }
            resolved.append((name, .string(kinds.joined())))
        }
        arguments = resolved
        layerCount = layers
        var values = try Self.layerValues(table: table, config: config, configPath: configPath, layers: layers)
        if let kinds, let name = table.layerConfig?.pattern?.value {
            for (index, kind) in kinds.enumerated() { values[index][name] = .string(kind) }
        }
        layerValues = values
        mtpValues = try Self.mtpValues(table: table, config: config, configPath: configPath)
        for rule in deferred {
            guard let (expression, conditions) = rule.firstLayer,
                let layer = values.indices.first(where: { index in conditions.allSatisfy { values[index][$0.name] == $0.value } })
            else { continue }
            let current = arguments
            let result = expression.evaluate { name in
                values[layer][name]?.intValue ?? current.last(where: { $0.name == name })?.value.intValue
            }
            guard let result else {
                throw MappingError.missingConfigField(config: configPath, field: "\(table.layerConfig?.list ?? "layers")[\(layer)]: \(expression.names.joined(separator: ", "))",
                                                      neededFor: "Megatron argument `\(rule.name)`")
            }
            if let position = arguments.lastIndex(where: { $0.name == rule.name }) {
                arguments[position].value = .number(JSONNumber(result))
            }
        }
        for rule in table.arguments where !rule.withLayers.isEmpty {
            let mtp = mtpValues
            let used = values.contains { layer in rule.withLayers.allSatisfy { layer[$0.name] == $0.value } }
                || mtp.contains { layer in rule.withLayers.allSatisfy { layer[$0.name] == $0.value } }
            if !used {
                if let position = arguments.lastIndex(where: { $0.name == rule.name }) { arguments[position].value = .null }
            } else if absentLayerArguments.contains(where: { $0.name == rule.name }) {
                let kinds = rule.withLayers.map { "\($0.name) \(JSONWriter.compact($0.value))" }.joined(separator: ", ")
                throw MappingError.missingConfigField(
                    config: configPath, field: rule.fields.joined(separator: "` or `"),
                    neededFor: "Megatron argument `\(rule.name)` (the model has layers of \(kinds))")
            }
        }
        let config = self.config
        rules = table.rules.filter { rule in
            rule.whenSet.allSatisfy { field in
                guard let value = Self.lookup(config, path: field) else { return false }
                return !value.isNull
            } && rule.when.allSatisfy { condition in
                let actual = Self.lookup(config, path: condition.field) ?? Self.lookup(config, defaultsOf: table, [condition.field])
                return actual == condition.value
            }
        }
    }

    static func mtpValues(table: MappingTable, config: JSONValue, configPath: String) throws -> [[String: JSONValue]] {
        guard let spec = table.mtp, let depth = lookup(config, path: spec.depthField)?.intValue, depth > 0 else { return [] }
        guard depth == 1 else {
            throw MappingError.invalidConfigValue(config: configPath, field: spec.depthField,
                                                  reason: "MTP depth \(depth): only one (repeated) MTP layer is mapped so far")
        }
        guard let kinds = try kinds(spec.pattern, config: config, configPath: configPath) else { return [] }
        return kinds.enumerated().map { index, kind in
            [spec.pattern.value: .string(kind), "first": .bool(index == 0), "last": .bool(index == kinds.count - 1)]
        }
    }

    /// One kind character per decoder layer, from the table's pattern fields, or nil without one.
    static func layerKinds(table: MappingTable, config: JSONValue, configPath: String) throws -> [String]? {
        guard let pattern = table.layerConfig?.pattern else { return nil }
        return try kinds(pattern, config: config, configPath: configPath)
    }

    static func kinds(_ pattern: LayerConfigSpec.Pattern, config: JSONValue, configPath: String) throws -> [String]? {
        for field in pattern.strings {
            guard let text = lookup(config, path: field)?.stringValue else { continue }
            let main = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            let kinds = main.filter { $0 != "|" }.map { String($0) }
            let known = Set(pattern.names.values)
            if let unknown = kinds.first(where: { !known.isEmpty && !known.contains($0) }) {
                throw MappingError.invalidConfigValue(config: configPath, field: field,
                                                      reason: "unknown layer kind `\(unknown)` (known: \(known.sorted().joined()))")
            }
            return kinds
        }
        for field in pattern.lists {
            guard let items = lookup(config, path: field)?.arrayValue else { continue }
            return try items.map { item in
                guard let name = item.stringValue, let kind = pattern.names[name] else {
                    throw MappingError.invalidConfigValue(config: configPath, field: field,
                                                          reason: "unknown layer type \(JSONWriter.compact(item)) (known: \(pattern.names.keys.sorted().joined(separator: ", ")))")
                }
                return kind
            }
        }
        throw MappingError.missingConfigField(config: configPath, field: (pattern.strings + pattern.lists).joined(separator: "` or `"),
                                              neededFor: "the layer pattern")
    }

    static func layerValues(table: MappingTable, config: JSONValue, configPath: String, layers: Int) throws -> [[String: JSONValue]] {
        guard let spec = table.layerConfig, let list = spec.list else { return Array(repeating: [:], count: layers) }
        guard let entries = lookup(config, path: list)?.arrayValue else {
            throw MappingError.missingConfigField(config: configPath, field: list, neededFor: "per-layer blocks")
        }
        guard entries.count == layers else {
            throw MappingError.invalidConfigValue(config: configPath, field: list,
                                                  reason: "has \(entries.count) entries for \(layers) layers (\(table.layerCountArgument))")
        }
        return entries.map { entry in
            var values: [String: JSONValue] = [:]
            for value in spec.values {
                let found = value.fields.lazy.compactMap { lookup(entry, path: $0) }.first { !$0.isNull }
                if let found = found ?? value.defaultValue { values[value.name] = found }
            }
            return values
        }
    }

    /// Whether `conditions` hold for `layer`'s values.
    public func layerMatches(_ layer: Int, _ conditions: [(name: String, value: JSONValue)]) -> Bool {
        conditions.allSatisfy { layerValues[layer][$0.name] == $0.value }
    }

    public func mtpMatches(_ index: Int, _ conditions: [(name: String, value: JSONValue)]) -> Bool {
        conditions.allSatisfy { mtpValues[index][$0.name] == $0.value }
    }

    /// Whether every field is present and not null in the config.
    public func isSet(_ fields: [String]) -> Bool {
        fields.allSatisfy { field in Self.lookup(config, path: field).map { !$0.isNull } ?? false }
    }

    /// An integer for an op on `layer`: the rule's own parameter, then the layer's value, then
    /// the Megatron argument.
    func int(_ name: String, rule: MappingRule, layer: Int?) throws -> Int {
        let values = layer.map { layerValues[$0] } ?? [:]
        func base(_ key: String) -> Int? { values[key]?.intValue ?? argument(key)?.intValue }
        if let parameter = rule.params.first(where: { $0.name == name }) {
            guard let value = parameter.expression.evaluate(base) else {
                // Name the config fields the user has to fix, not the table's names.
                let missing = parameter.expression.names.filter { base($0) == nil }.map { missingName -> String in
                    let spec = table.layerConfig?.values.first { $0.name == missingName }
                    let fields = spec?.fields.joined(separator: "` or `") ?? missingName
                    return layer.map { "\(table.layerConfig?.list ?? "layer")[\($0)].\(fields)" } ?? fields
                }
                throw MappingError.missingConfigField(
                    config: configPath, field: missing.isEmpty ? name : missing.joined(separator: "`, `"),
                    neededFor: "\(name) = \(parameter.expression), rule at \(table.file):\(rule.line)")
            }
            return value
        }
        if let value = base(name) { return value }
        return try int(name)
    }

    /// Checks a target tensor-parallel size as Megatron-Core's TransformerConfig does.
    public func checkTensorParallel(_ size: Int) throws {
        guard size >= 1 else { throw MappingError.cannotSplit(what: "the model", reason: "--tp must be at least 1, not \(size)") }
        for name in table.tensorParallelDivides {
            guard let value = argument(name)?.intValue else { continue }
            guard value % size == 0 else {
                throw MappingError.cannotSplit(what: "the model over --tp \(size)",
                                               reason: "\(name) (\(value)) must be a multiple of tensor_model_parallel_size (\(size))")
            }
        }
    }

    /// The largest integer a Megatron argument may hold (2^40: no dimension, vocabulary or
    /// sequence length comes near it), so products of a few of them cannot overflow silently.
    public static let largestDimension: UInt = 1 << 40
    /// The most layers (and experts per layer) a config may claim before the tensors are seen.
    public static let largestLayerCount = 1 << 16

    /// An argument's integer value.
    public func int(_ name: String) throws -> Int {
        guard let value = arguments.last(where: { $0.name == name })?.value.intValue else {
            throw MappingError.missingConfigField(config: configPath, field: name, neededFor: "the \(table.name) mapping")
        }
        return value
    }

    public func argument(_ name: String) -> JSONValue? { arguments.last(where: { $0.name == name })?.value }

    /// The config field a Megatron argument is read from (for messages), or the argument's name.
    public func configField(of argument: String) -> String { Self.configField(of: argument, in: table) }

    static func configField(of argument: String, in table: MappingTable) -> String {
        table.arguments.first { $0.name == argument }?.fields.first ?? argument
    }

    /// A config field by dotted path (`rope_parameters.rope_theta`).
    static func lookup(_ config: JSONValue, path: String) -> JSONValue? {
        var current: JSONValue? = config
        for component in path.split(separator: ".") { current = current?[String(component)] }
        return current
    }

    static func lookup(_ config: JSONValue, defaultsOf table: MappingTable, _ fields: [String]) -> JSONValue? {
        for field in fields {
            if let value = table.hfDefaults.first(where: { $0.field == field })?.value { return value }
        }
        return nil
    }
}

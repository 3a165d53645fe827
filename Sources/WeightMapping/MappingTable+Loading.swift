import Foundation
import TensorCore
import Yams

extension MappingTable {
    /// Reads and lints a table. Anchors, aliases, merge keys, extra documents and unknown keys are
    /// rejected, every pattern is checked, and each error names the table's line and column.
    public init(yaml text: String, file: String) throws {
        let reader = TableReader(file: file)
        try reader.rejectAnchorsAndAliases(text)
        let documents: [Node]
        do {
            documents = try Array(Yams.compose_all(yaml: text))
        } catch let error as YamlError {
            throw reader.error(nil, "not valid YAML: \(error)")
        }
        guard documents.count == 1, let root = documents.first else {
            throw reader.error(nil, "a table is exactly one YAML document (found \(documents.count))")
        }
        let top = try reader.mapping(root, allowed: [
            "format", "name", "description", "hf_architectures", "megatron", "hf_defaults", "args",
            "fixed_args", "rules", "ignore", "extra_state", "layer_config", "config_json_args", "megatron_bridge",
            "hf_prefix_aliases", "mtp", "tensor_parallel_divides", "state_dict_names", "shape_checks", "hf_config", "dtype_kept",
            "run_config_args", "output_layer", "megatron_fixed_config", "megatron_lm_flags", "legacy_expert_names", "quantized_weights", "quantization_excluded",
        ], required: ["format", "name", "hf_architectures", "megatron", "rules"], context: "table")
        let format = try reader.string(top["format"]!, "format")
        guard format == Self.formatVersion else {
            throw reader.error(top["format"], "format must be `\(Self.formatVersion)`, not `\(format)`")
        }
        name = try reader.string(top["name"]!, "name")
        self.file = file
        hfArchitectures = try reader.strings(top["hf_architectures"]!, "hf_architectures")
        let megatron = try reader.mapping(top["megatron"]!, allowed: ["model", "layer_keys", "layer_count", "expert_count", "stacked"],
                                          required: ["model", "layer_keys", "layer_count"], context: "megatron")
        megatronModel = try reader.string(megatron["model"]!, "megatron.model")
        let layout = try reader.string(megatron["layer_keys"]!, "megatron.layer_keys")
        guard let layerKeys = LayerKeyLayout(rawValue: layout) else {
            throw reader.error(megatron["layer_keys"], "layer_keys must be one of \(LayerKeyLayout.allCases.map(\.rawValue))")
        }
        self.layerKeys = layerKeys
        layerCountArgument = try reader.string(megatron["layer_count"]!, "megatron.layer_count")
        expertCountArgument = try megatron["expert_count"].map { try reader.string($0, "megatron.expert_count") }
        var stacked = layerKeys == .stacked ? ["layer"] : []
        for name in try megatron["stacked"].map({ try reader.strings($0, "megatron.stacked") }) ?? [] where !stacked.contains(name) {
            guard name == "expert" else { throw reader.error(megatron["stacked"], "megatron.stacked: only `expert` (layers stack through layer_keys)") }
            stacked.append(name)
        }
        stackedPlaceholders = stacked

        hfDefaults = try top["hf_defaults"].map { node in
            try reader.orderedMapping(node, "hf_defaults").map { ($0.key, try reader.jsonValue($0.value)) }
        } ?? []
        fixedArguments = try top["fixed_args"].map { node in
            try reader.orderedMapping(node, "fixed_args").map { ($0.key, try reader.jsonValue($0.value)) }
        } ?? []
        arguments = try top["args"].map { node in
            try reader.orderedMapping(node, "args").map { try reader.argumentRule(name: $0.key, $0.value) }
        } ?? []
        guard case .sequence(let ruleNodes) = top["rules"]! else {
            throw reader.error(top["rules"], "rules must be a list")
        }
        rules = try ruleNodes.enumerated().map { try reader.rule($1, number: $0 + 1) }
        ignore = try top["ignore"].map { node in
            try reader.strings(node, "ignore").map { try reader.pattern($0, at: node, "ignore") }
        } ?? []
        extraState = try reader.listsPerSpec(top["extra_state"], "extra_state") { item, key in
            if case .mapping = item {
                let fields = try reader.mapping(item, allowed: ["module", "layer_when", "when_set", "mtp"], required: ["module"],
                                                context: "extra_state.\(key)")
                let pattern = try reader.pattern(try reader.string(fields["module"]!, "extra_state.module"), at: item, "extra_state")
                let when = try fields["layer_when"].map { node in
                    try reader.orderedMapping(node, "extra_state.layer_when").map { ($0.key, try reader.jsonValue($0.value)) }
                } ?? []
                let mtp = try fields["mtp"].map { try reader.bool($0, "extra_state.mtp") } ?? false
                return ExtraStateModule(pattern: pattern, layerWhen: when,
                                        whenSet: try fields["when_set"].map { try reader.strings($0, "extra_state.when_set") } ?? [],
                                        isMTP: mtp || pattern.placeholders.contains("mtp"))
            }
            let pattern = try reader.pattern(try reader.string(item, "extra_state"), at: item, "extra_state")
            return ExtraStateModule(pattern: pattern, layerWhen: [], whenSet: [], isMTP: pattern.placeholders.contains("mtp"))
        }
        stateDictRenames = try reader.listsPerSpec(top["state_dict_names"], "state_dict_names") { item, key in
            let fields = try reader.mapping(item, allowed: ["key", "module"], required: ["key", "module"], context: "state_dict_names.\(key)")
            return (try reader.string(fields["key"]!, "state_dict_names.key"), try reader.string(fields["module"]!, "state_dict_names.module"))
        }
        if let node = top["layer_config"] {
            let fields = try reader.mapping(node, allowed: ["list", "values", "pattern"], context: "layer_config")
            let values = try fields["values"].map { valuesNode in
                try reader.orderedMapping(valuesNode, "layer_config.values").map { name, value -> LayerConfigSpec.Value in
                    if case .mapping = value {
                        let spec = try reader.mapping(value, allowed: ["from", "default"], required: ["from"], context: "layer_config.values.\(name)")
                        return LayerConfigSpec.Value(name: name, fields: try reader.strings(spec["from"]!, "layer_config.values.\(name).from"),
                                                     defaultValue: try spec["default"].map(reader.jsonValue))
                    }
                    return LayerConfigSpec.Value(name: name, fields: try reader.strings(value, "layer_config.values.\(name)"), defaultValue: nil)
                }
            } ?? []
            let pattern = try fields["pattern"].map { try reader.layerPattern($0, context: "layer_config.pattern") }
            guard fields["list"] != nil || pattern != nil else { throw reader.error(node, "layer_config needs `list` or `pattern`") }
            layerConfig = LayerConfigSpec(list: try fields["list"].map { try reader.string($0, "layer_config.list") }, values: values,
                                          pattern: pattern)
        } else {
            layerConfig = nil
        }
        configJSONArguments = try top["config_json_args"].map { try reader.strings($0, "config_json_args") } ?? []
        mtp = try top["mtp"].map { node in
            let fields = try reader.mapping(node, allowed: ["depth", "pattern"], required: ["depth", "pattern"], context: "mtp")
            return MTPSpec(depthField: try reader.string(fields["depth"]!, "mtp.depth"),
                           pattern: try reader.layerPattern(fields["pattern"]!, context: "mtp.pattern"))
        }
        tensorParallelDivides = try top["tensor_parallel_divides"].map { try reader.strings($0, "tensor_parallel_divides") } ?? []
        shapeChecks = try top["shape_checks"].map { node in
            guard case .sequence(let items) = node else { throw reader.error(node, "shape_checks must be a list") }
            return try items.enumerated().map { index, item in try reader.shapeCheck(item, context: "shape_checks[\(index)]") }
        } ?? []
        hfPrefixAliases = try top["hf_prefix_aliases"].map { node in
            try reader.orderedMapping(node, "hf_prefix_aliases").map { ($0.key, try reader.strings($0.value, "hf_prefix_aliases.\($0.key)")) }
        } ?? []
        if let node = top["megatron_bridge"] {
            let fields = try reader.mapping(node, allowed: ["provider", "fields"], required: ["provider", "fields"], context: "megatron_bridge")
            let entries = try reader.orderedMapping(fields["fields"]!, "megatron_bridge.fields").map { name, value -> (String, BridgeProviderSpec.Source) in
                if case .mapping = value {
                    let form = try reader.mapping(value, allowed: ["not", "function", "value"], context: "megatron_bridge.fields.\(name)")
                    if let argument = form["not"] { return (name, .not(try reader.string(argument, "megatron_bridge.fields.\(name).not"))) }
                    if let function = form["function"] { return (name, .function(try reader.string(function, "megatron_bridge.fields.\(name).function"))) }
                    if let literal = form["value"] { return (name, .value(try reader.jsonValue(literal))) }
                    throw reader.error(value, "megatron_bridge.fields.\(name): give not, function or value")
                }
                return (name, .argument(try reader.string(value, "megatron_bridge.fields.\(name)")))
            }
            bridgeProvider = BridgeProviderSpec(provider: try reader.string(fields["provider"]!, "megatron_bridge.provider"), fields: entries)
        } else {
            bridgeProvider = nil
        }
        megatronFixedConfig = try top["megatron_fixed_config"].map { node in
            try reader.orderedMapping(node, "megatron_fixed_config").map { name, value in
                let context = "megatron_fixed_config.\(name)"
                let fields = try reader.mapping(value, allowed: ["when", "what", "object", "values"],
                                                required: ["when", "what", "object", "values"], context: context)
                return MegatronFixedConfig(
                    name: name, when: try reader.string(fields["when"]!, "\(context).when"),
                    what: try reader.string(fields["what"]!, "\(context).what"),
                    objects: try reader.strings(fields["object"]!, "\(context).object"),
                    values: try reader.orderedMapping(fields["values"]!, "\(context).values").map { ($0.key, try reader.jsonValue($0.value)) })
            }
        } ?? []
        megatronLMFlags = try top["megatron_lm_flags"].map { node in
            guard case .sequence(let items) = node else { throw reader.error(node, "megatron_lm_flags must be a list") }
            return try items.enumerated().map { index, item in
                let context = "megatron_lm_flags[\(index)]"
                let fields = try reader.mapping(item, allowed: ["flag", "value", "when"], required: ["flag"], context: context)
                return MegatronLMFlag(flag: try reader.string(fields["flag"]!, "\(context).flag"),
                                      value: try fields["value"].map { try reader.string($0, "\(context).value") },
                                      when: try fields["when"].map { try reader.string($0, "\(context).when") })
            }
        } ?? []
        let fixedConfig = megatronFixedConfig
        hfConfig = try top["hf_config"].map { try reader.hfConfigSpec($0, fixed: fixedConfig) }
        runConfigArguments = try top["run_config_args"].map { node in
            RunConfigArgumentsSpec(arguments: try reader.orderedMapping(node, "run_config_args").map { name, value in
                let context = "run_config_args.\(name)"
                guard case .mapping = value else { return (name, .field(try reader.string(value, context))) }
                let form = try reader.mapping(value, allowed: ["not", "set", "field", "function"], context: context)
                if let field = form["not"] { return (name, .not(try reader.string(field, "\(context).not"))) }
                if let field = form["set"] { return (name, .isSet(try reader.string(field, "\(context).set"))) }
                if let field = form["field"], let function = form["function"] {
                    return (name, .target(field: try reader.string(field, "\(context).field"), function: try reader.string(function, "\(context).function")))
                }
                throw reader.error(value, "\(context): give a field name, not, set, or field with function")
            })
        }
        dtypeKept = try top["dtype_kept"].map { node in
            try reader.strings(node, "dtype_kept").map { try reader.pattern($0, at: node, "dtype_kept") }
        } ?? []
        let rules = rules
        outputLayer = try top["output_layer"].map { node in
            let fields = try reader.mapping(node, allowed: ["module", "weight", "tied_to"], required: ["module", "weight", "tied_to"],
                                            context: "output_layer")
            let spec = OutputLayerSpec(module: try reader.string(fields["module"]!, "output_layer.module"),
                                       weight: try reader.string(fields["weight"]!, "output_layer.weight"),
                                       tiedTo: try reader.string(fields["tied_to"]!, "output_layer.tied_to"))
            // Both are keys the rules make (placeholder-free names): a typo would silently drop the copy.
            for (field, key) in [("weight", spec.weight), ("tied_to", spec.tiedTo)]
            where !rules.contains(where: { $0.megatron.text == key && $0.megatron.placeholders.isEmpty }) {
                throw reader.error(fields[field], "output_layer.\(field): `\(key)` is no rule's Megatron name")
            }
            return spec
        }
        legacyExpertNames = try top["legacy_expert_names"].map { node in
            let fields = try reader.mapping(node, allowed: ["key", "sequential", "grouped"], required: ["key", "sequential", "grouped"],
                                            context: "legacy_expert_names")
            let names = LegacyExpertNames(key: try reader.string(fields["key"]!, "legacy_expert_names.key"),
                                          sequential: try reader.string(fields["sequential"]!, "legacy_expert_names.sequential"),
                                          grouped: try reader.string(fields["grouped"]!, "legacy_expert_names.grouped"))
            for rule in rules where rule.megatron.placeholders.contains("expert") && !rule.megatron.text.contains(names.key + "{expert}.") {
                throw reader.error(fields["key"], "legacy_expert_names.key: `\(names.key){expert}.` is not in `\(rule.megatron.text)`")
            }
            return names
        }
        // Where each layered name carries its layer: the literal before `{layer}`, one per table.
        var layerPrefix: String?
        for rule in rules {
            for spec in MegatronSpec.allCases {
                let pieces = rule.megatronName(spec).pieces
                guard let index = pieces.firstIndex(of: .placeholder("layer")) else { continue }
                guard index == 1, case .literal(let prefix) = pieces[0], layerPrefix == nil || layerPrefix == prefix else {
                    throw MappingError.invalidTable(file: file, line: rule.line, column: rule.column,
                        message: "`\(rule.megatronName(spec).text)`: every layered Megatron name starts with one prefix and then {layer} (here: `\(layerPrefix ?? "?")`)")
                }
                layerPrefix = prefix
            }
        }
        megatronLayerPrefix = layerPrefix
        let firstLayered = rules.firstIndex { $0.megatron.placeholders.contains("layer") } ?? rules.count
        firstStageMegatronNames = Set(rules[..<firstLayered].filter { !$0.isMTP }.flatMap { rule in MegatronSpec.allCases.map { rule.megatronName($0).text } })
        quantizedWeights = try top["quantized_weights"].map { node in
            try reader.strings(node, "quantized_weights").map { try reader.pattern($0, at: node, "quantized_weights") }
        } ?? []
        quantizationExcluded = try top["quantization_excluded"].map { try reader.strings($0, "quantization_excluded") } ?? []
        try lintOverlaps(reader)
    }

    /// Two rules producing the same Megatron name, or consuming the same HF name, are a table bug.
    private func lintOverlaps(_ reader: TableReader) throws {
        for spec in MegatronSpec.allCases {
            var seen: [String: MappingRule] = [:]
            for rule in rules {
                let key = rule.megatronName(spec).text + " when \(rule.when.map { "\($0.field)=\($0.value)" })"
                    + " layers \(rule.layerWhen.map { "\($0.name)=\($0.value)" })" + " set \(rule.whenSet)"
                if let earlier = seen[key] {
                    throw MappingError.invalidTable(file: file, line: rule.line, column: rule.column,
                        message: "rule repeats Megatron name `\(rule.megatronName(spec).text)` of the rule at line \(earlier.line)")
                }
                seen[key] = rule
            }
        }
    }

    /// Loads `<directory>/*.yaml`, sorted by file name.
    public static func loadAll(directory: String) throws -> [MappingTable] {
        let names = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".yaml") }.sorted()
        return try names.map { name in
            let path = (directory as NSString).appendingPathComponent(name)
            guard let text = String(validating: try ReadOnlyFile.contents(atPath: path, limit: 16 << 20), as: UTF8.self) else {
                throw MappingError.invalidTable(file: path, line: 1, column: 1, message: "the table is not UTF-8")
            }
            return try MappingTable(yaml: text, file: path)
        }
    }
}

/// Walks Yams nodes with positions, turning every surprise into a `MappingError.invalidTable`.
struct TableReader {
    let file: String

    /// Yams resolves anchors and aliases while composing, so they are found in the text: an
    /// unquoted `&name` or `*name` at the start of a token, outside comments.
    func rejectAnchorsAndAliases(_ text: String) throws {
        for (lineIndex, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var quote: Character?
            var previous: Character = " "
            for (columnIndex, character) in line.enumerated() {
                if let open = quote {
                    if character == open { quote = nil }
                } else if character == "\"" || character == "'" {
                    quote = character
                } else if character == "#" && previous.isWhitespace {
                    break
                } else if (character == "&" || character == "*"), " \t[{,:-".contains(previous) || columnIndex == 0 {
                    throw MappingError.invalidTable(
                        file: file, line: lineIndex + 1, column: columnIndex + 1,
                        message: character == "&" ? "anchors are not allowed in tables" : "aliases are not allowed in tables")
                }
                previous = character
            }
        }
    }

    func error(_ node: Node?, _ message: String) -> MappingError {
        .invalidTable(file: file, line: node?.mark?.line ?? 1, column: node?.mark?.column ?? 1, message: message)
    }

    private func checkPlain(_ node: Node, _ context: String) throws {
        if node.alias != nil { throw error(node, "\(context): aliases are not allowed in tables") }
        let anchored: Bool = switch node {
        case .scalar(let scalar): scalar.anchor != nil
        case .mapping(let mapping): mapping.anchor != nil
        case .sequence(let sequence): sequence.anchor != nil
        default: false
        }
        if anchored { throw error(node, "\(context): anchors are not allowed in tables") }
    }

    func orderedMapping(_ node: Node, _ context: String) throws -> [(key: String, value: Node)] {
        try checkPlain(node, context)
        guard case .mapping(let mapping) = node else { throw error(node, "\(context) must be a mapping") }
        var result: [(key: String, value: Node)] = []
        for (keyNode, value) in mapping {
            try checkPlain(keyNode, context)
            try checkPlain(value, context)
            guard case .scalar(let scalar) = keyNode else { throw error(keyNode, "\(context): keys must be plain strings") }
            if scalar.string == "<<" { throw error(keyNode, "\(context): merge keys are not allowed in tables") }
            if result.contains(where: { $0.key == scalar.string }) {
                throw error(keyNode, "\(context): key `\(scalar.string)` appears twice")
            }
            result.append((scalar.string, value))
        }
        return result
    }

    func mapping(_ node: Node, allowed: Set<String>, required: Set<String> = [], context: String) throws -> [String: Node] {
        let pairs = try orderedMapping(node, context)
        var result: [String: Node] = [:]
        for (key, value) in pairs {
            guard allowed.contains(key) else {
                throw error(value, "\(context): unknown key `\(key)` (allowed: \(allowed.sorted().joined(separator: ", ")))")
            }
            result[key] = value
        }
        for key in required.sorted() where result[key] == nil {
            throw error(node, "\(context): missing key `\(key)`")
        }
        return result
    }

    func string(_ node: Node, _ context: String) throws -> String {
        try checkPlain(node, context)
        guard case .scalar(let scalar) = node else { throw error(node, "\(context) must be a string") }
        return scalar.string
    }

    func bool(_ node: Node, _ context: String) throws -> Bool {
        guard case .bool(let value) = try jsonValue(node) else { throw error(node, "\(context) must be true or false") }
        return value
    }

    /// A section keyed by spec (`te:`, `local:`), each a list read item by item: `extra_state`,
    /// `state_dict_names`.
    func listsPerSpec<Item>(_ node: Node?, _ section: String, _ read: (Node, String) throws -> Item) throws -> [MegatronSpec: [Item]] {
        guard let node else { return [:] }
        var lists: [MegatronSpec: [Item]] = [:]
        for (key, value) in try orderedMapping(node, section) {
            guard let spec = MegatronSpec(rawValue: key) else {
                throw error(node, "\(section) keys are specs: \(MegatronSpec.allCases.map(\.rawValue))")
            }
            guard case .sequence(let items) = value else { throw error(value, "\(section).\(key) must be a list") }
            lists[spec] = try items.map { try read($0, key) }
        }
        return lists
    }

    func strings(_ node: Node, _ context: String) throws -> [String] {
        try checkPlain(node, context)
        switch node {
        case .scalar: return [try string(node, context)]
        case .sequence(let sequence): return try sequence.map { try string($0, context) }
        default: throw error(node, "\(context) must be a string or a list of strings")
        }
    }

    func shapeCheck(_ node: Node, context: String) throws -> ShapeCheck {
        let fields = try mapping(node, allowed: ["hf", "value", "axis", "rank"], required: ["hf"], context: context)
        let tensor = try pattern(try string(fields["hf"]!, "\(context).hf"), at: fields["hf"]!, "\(context).hf")
        func integer(_ key: String) throws -> Int? {
            guard let field = fields[key] else { return nil }
            guard let value = Int(try string(field, "\(context).\(key)")), value >= 0 else {
                throw error(field, "\(context).\(key) must be a non-negative integer")
            }
            return value
        }
        var value: ArgumentExpression?
        if let text = fields["value"] {
            do {
                value = try ArgumentExpression.parse(try string(text, "\(context).value"))
            } catch let failure as ArgumentExpression.ParseError {
                throw error(text, "\(context).value: \(failure.reason)")
            }
        }
        let axis = try integer("axis")
        let rank = try integer("rank")
        guard (value == nil) == (axis == nil), value != nil || rank != nil else {
            throw error(node, "\(context): give `value` with `axis`, and/or `rank`")
        }
        return ShapeCheck(tensor: tensor, value: value, axis: axis, rank: rank, line: node.mark?.line ?? 0)
    }

    func pattern(_ text: String, at node: Node, _ context: String) throws -> NamePattern {
        do {
            return try NamePattern(text)
        } catch {
            throw self.error(node, "\(context): pattern `\(text)`: \(error.reason)")
        }
    }

    /// YAML scalars typed as JSON: only `true`/`false`, `null`/`~` and JSON-syntax numbers are
    /// typed when unquoted; everything else (including `no`, `on`, `1_000`) stays a string.
    func jsonValue(_ node: Node) throws -> JSONValue {
        try checkPlain(node, "value")
        switch node {
        case .scalar(let scalar):
            guard scalar.style == .plain else { return .string(scalar.string) }
            switch scalar.string {
            case "true": return .bool(true)
            case "false": return .bool(false)
            case "null", "~": return .null
            default:
                if case .number(let number)? = try? JSONParser.parse(scalar.string) { return .number(number) }
                return .string(scalar.string)
            }
        case .sequence(let sequence): return .array(try sequence.map(jsonValue))
        case .mapping:
            return .object(try orderedMapping(node, "value").map { ($0.key, try jsonValue($0.value)) })
        default:
            throw error(node, "unsupported YAML node")
        }
    }

    func layerPattern(_ node: Node, context: String) throws -> LayerConfigSpec.Pattern {
        let spec = try mapping(node, allowed: ["value", "string", "list", "names", "argument"], required: ["value"], context: context)
        let names = try spec["names"].map { names in
            Dictionary(uniqueKeysWithValues: try orderedMapping(names, "\(context).names").map {
                ($0.key, try string($0.value, "\(context).names.\($0.key)"))
            })
        } ?? [:]
        return LayerConfigSpec.Pattern(
            value: try string(spec["value"]!, "\(context).value"),
            strings: try spec["string"].map { try strings($0, "\(context).string") } ?? [],
            lists: try spec["list"].map { try strings($0, "\(context).list") } ?? [], names: names,
            argument: try spec["argument"].map { try string($0, "\(context).argument") })
    }

    /// The `hf_config` section: `select` (`unset`/`set` argument lists), `requires` and `fields`.
    func hfConfigSpec(_ node: Node, fixed: [MegatronFixedConfig]) throws -> HFConfigSpec {
        let top = try mapping(node, allowed: ["select", "requires", "base", "fields"], required: ["fields"], context: "hf_config")
        let select = try top["select"].map { try mapping($0, allowed: ["unset", "set"], context: "hf_config.select") } ?? [:]
        let requires = try top["requires"].map { node in
            try orderedMapping(node, "hf_config.requires").map { ($0.key, try jsonValue($0.value)) }
        } ?? []
        func source(_ node: Node, _ context: String) throws -> HFConfigSpec.Source {
            guard case .mapping = node else { return .argument(try string(node, context), type: nil) }
            let form = try mapping(node, allowed: ["arg", "type", "not", "expr", "value", "first_true", "default", "fixed"], context: context)
            if let reference = form["fixed"] {
                // `GROUP.FIELD` of megatron_fixed_config: the value Megatron-Core computes with.
                let text = try string(reference, "\(context).fixed")
                let parts = text.split(separator: ".", maxSplits: 1).map(String.init)
                guard parts.count == 2, let group = fixed.first(where: { $0.name == parts[0] }),
                    let value = group.values.first(where: { $0.field == parts[1] })?.value
                else { throw error(reference, "\(context).fixed: `\(text)` is no GROUP.FIELD of megatron_fixed_config") }
                return .value(value)
            }
            if let name = form["arg"] {
                return .argument(try string(name, "\(context).arg"), type: try form["type"].map { try string($0, "\(context).type") })
            }
            if let name = form["not"] { return .not(try string(name, "\(context).not")) }
            if let text = form["expr"] {
                do {
                    return .expression(try ArgumentExpression.parse(try string(text, "\(context).expr")))
                } catch let failure as ArgumentExpression.ParseError {
                    throw error(text, "\(context).expr: \(failure.reason)")
                }
            }
            if let literal = form["value"] { return .value(try jsonValue(literal)) }
            if let flags = form["first_true"] {
                let pairs = try orderedMapping(flags, "\(context).first_true").map { ($0.key, try jsonValue($0.value)) }
                return .firstTrue(pairs, otherwise: try form["default"].map { try jsonValue($0) } ?? .null)
            }
            throw error(node, "\(context): give arg, not, expr, value, fixed or first_true")
        }
        let fields = try orderedMapping(top["fields"]!, "hf_config.fields").map { name, value -> HFConfigSpec.Field in
            let context = "hf_config.fields.\(name)"
            guard case .mapping(let members) = value else {
                return HFConfigSpec.Field(name: name, source: try source(value, context), condition: nil, otherwise: nil, flag: nil)
            }
            let keys = Set(members.compactMap { $0.key.string })
            let flag = try members.first { $0.key.string == "flag" }.map { try string($0.value, "\(context).flag") }
            guard keys.contains("then") else {
                // `flag` (the training flag setting the argument, for messages) beside a source form
                let rest = Node.mapping(Node.Mapping(members.filter { $0.key.string != "flag" }))
                return HFConfigSpec.Field(name: name, source: try source(rest, context), condition: nil, otherwise: nil, flag: flag)
            }
            let parts = try mapping(value, allowed: ["if", "then", "else", "flag"], required: ["if", "then"], context: context)
            return HFConfigSpec.Field(name: name, source: try source(parts["then"]!, "\(context).then"),
                                      condition: try string(parts["if"]!, "\(context).if"),
                                      otherwise: try parts["else"].map { try source($0, "\(context).else") }, flag: flag)
        }
        return HFConfigSpec(selectUnset: try select["unset"].map { try strings($0, "hf_config.select.unset") } ?? [],
                            selectSet: try select["set"].map { try strings($0, "hf_config.select.set") } ?? [],
                            requires: requires, base: try top["base"].map { try strings($0, "hf_config.base") } ?? [], fields: fields)
    }

    func argumentRule(name: String, _ node: Node) throws -> ArgumentRule {
        if case .mapping = node {
            let fields = try mapping(node, allowed: ["from", "default", "derive", "map", "type", "first_layer", "with_layers"], context: "args.\(name)")
            var defaultValue: ArgumentDefault?
            if let literal = fields["default"] { defaultValue = .literal(try jsonValue(literal)) }
            if let derive = fields["derive"] {
                if defaultValue != nil { throw error(derive, "args.\(name): give `default` or `derive`, not both") }
                do {
                    defaultValue = .expression(try ArgumentExpression.parse(try string(derive, "args.\(name).derive")))
                } catch let failure as ArgumentExpression.ParseError {
                    throw error(derive, "args.\(name).derive: \(failure.reason)")
                }
            }
            let sources = try fields["from"].map { try strings($0, "args.\(name).from") } ?? []
            var firstLayer: (expression: ArgumentExpression, where: [(name: String, value: JSONValue)])?
            if let spec = fields["first_layer"] {
                let parts = try mapping(spec, allowed: ["value", "where"], required: ["value"], context: "args.\(name).first_layer")
                let expression: ArgumentExpression
                do {
                    expression = try ArgumentExpression.parse(try string(parts["value"]!, "args.\(name).first_layer.value"))
                } catch let failure as ArgumentExpression.ParseError {
                    throw error(parts["value"], "args.\(name).first_layer.value: \(failure.reason)")
                }
                let conditions = try parts["where"].map { node in
                    try orderedMapping(node, "args.\(name).first_layer.where").map { ($0.key, try jsonValue($0.value)) }
                } ?? []
                firstLayer = (expression, conditions)
            }
            let withLayers = try fields["with_layers"].map { node in
                try orderedMapping(node, "args.\(name).with_layers").map { ($0.key, try jsonValue($0.value)) }
            } ?? []
            if !withLayers.isEmpty && sources.isEmpty { throw error(node, "args.\(name): `with_layers` needs `from`") }
            if sources.isEmpty && defaultValue == nil && firstLayer == nil { throw error(node, "args.\(name): needs `from`, `default` or `derive`") }
            let valueMap = try fields["map"].map { map in
                Dictionary(uniqueKeysWithValues: try orderedMapping(map, "args.\(name).map").map { ($0.key, try jsonValue($0.value)) })
            } ?? [:]
            let type = try fields["type"].map { try string($0, "args.\(name).type") }
            if let type, !["int", "float"].contains(type) { throw error(fields["type"], "args.\(name): type must be int or float") }
            return ArgumentRule(name: name, fields: sources, defaultValue: defaultValue, valueMap: valueMap, firstLayer: firstLayer,
                                withLayers: withLayers, type: type)
        }
        return ArgumentRule(name: name, fields: try strings(node, "args.\(name)"), defaultValue: nil, valueMap: [:], firstLayer: nil,
                            withLayers: [], type: nil)
    }

    func rule(_ node: Node, number: Int) throws -> MappingRule {
        let context = "rule \(number)"
        let fields = try mapping(node, allowed: ["op", "hf", "mc", "mc_local", "tp", "pad", "when", "when_set", "layer_when", "params", "hf_rows"],
                                 required: ["hf", "mc"], context: context)
        let opName = try fields["op"].map { try string($0, "\(context).op") } ?? "rename"
        guard let op = MappingOp(rawValue: opName) else {
            throw error(fields["op"], "\(context): unknown op `\(opName)` (ops: \(MappingOp.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        let hfNode = fields["hf"]!
        var hf: [String: NamePattern] = [:]
        if case .mapping = hfNode {
            for (role, value) in try orderedMapping(hfNode, "\(context).hf") {
                guard op.roles.contains(role) else {
                    throw error(value, "\(context) (\(op.rawValue)): unknown role `\(role)` (roles: \(op.roles.joined(separator: ", ")))")
                }
                hf[role] = try pattern(try string(value, "\(context).hf.\(role)"), at: value, "\(context).hf.\(role)")
            }
        } else {
            guard op == .rename else { throw error(hfNode, "\(context) (\(op.rawValue)): hf must map roles \(op.roles) to names") }
            hf["tensor"] = try pattern(try string(hfNode, "\(context).hf"), at: hfNode, "\(context).hf")
        }
        for role in op.roles where hf[role] == nil {
            throw error(hfNode, "\(context) (\(op.rawValue)): missing role `\(role)`")
        }
        let megatron = try pattern(try string(fields["mc"]!, "\(context).mc"), at: fields["mc"]!, "\(context).mc")
        let megatronLocal = try fields["mc_local"].map { try pattern(try string($0, "\(context).mc_local"), at: $0, "\(context).mc_local") }
        let megatronPlaceholders = Set(megatron.placeholders)
        // `{mtp}` may bind on the HF side alone: Megatron keeps one repeated MTP layer.
        for (role, name) in hf where Set(name.placeholders).subtracting(["mtp"]) != megatronPlaceholders.subtracting(["mtp"])
            || (megatronPlaceholders.contains("mtp") && !name.placeholders.contains("mtp")) {
            throw error(hfNode, "\(context): placeholders of hf.\(role) `\(name.text)` differ from mc `\(megatron.text)`")
        }
        if let megatronLocal, Set(megatronLocal.placeholders) != megatronPlaceholders {
            throw error(fields["mc_local"], "\(context): placeholders of mc_local differ from mc")
        }
        var split: TensorSplit?
        if let node = fields["tp"] {
            let text = try string(node, "\(context).tp")
            guard let value = TensorSplit(rawValue: text) else { throw error(node, "\(context): tp must be 0, 1 or vocab") }
            split = value
        }
        var padsVocab = false
        if let node = fields["pad"] {
            guard try string(node, "\(context).pad") == "vocab" else { throw error(node, "\(context): pad must be `vocab`") }
            padsVocab = true
        }
        let when = try fields["when"].map { node in
            try orderedMapping(node, "\(context).when").map { ($0.key, try jsonValue($0.value)) }
        } ?? []
        let layerWhen = try fields["layer_when"].map { node in
            try orderedMapping(node, "\(context).layer_when").map { ($0.key, try jsonValue($0.value)) }
        } ?? []
        let params = try fields["params"].map { node in
            try orderedMapping(node, "\(context).params").map { name, value -> (String, ArgumentExpression) in
                do {
                    return (name, try ArgumentExpression.parse(try string(value, "\(context).params.\(name)")))
                } catch let failure as ArgumentExpression.ParseError {
                    throw error(value, "\(context).params.\(name): \(failure.reason)")
                }
            }
        } ?? []
        var hfRows: (start: ArgumentExpression, count: ArgumentExpression, total: ArgumentExpression)?
        if let node = fields["hf_rows"] {
            guard op == .rename, !padsVocab else { throw error(node, "\(context): hf_rows applies to a plain rename") }
            let parts = try mapping(node, allowed: ["start", "count", "of"], required: ["start", "count", "of"], context: "\(context).hf_rows")
            func expression(_ key: String) throws -> ArgumentExpression {
                do {
                    return try ArgumentExpression.parse(try string(parts[key]!, "\(context).hf_rows.\(key)"))
                } catch let failure as ArgumentExpression.ParseError {
                    throw error(parts[key], "\(context).hf_rows.\(key): \(failure.reason)")
                }
            }
            hfRows = (try expression("start"), try expression("count"), try expression("of"))
        }
        return MappingRule(op: op, megatron: megatron, megatronLocal: megatronLocal, hf: hf, split: split,
                           padsVocab: padsVocab, when: when,
                           whenSet: try fields["when_set"].map { try strings($0, "\(context).when_set") } ?? [],
                           layerWhen: layerWhen, hfRows: hfRows, params: params,
                           line: node.mark?.line ?? 0, column: node.mark?.column ?? 0)
    }
}

extension MappingTable {
    /// The tables built into the binary (`EmbeddedMappings`), or those in `directory` when given
    /// (`--mappings DIR`, for trying a new or edited table without rebuilding).
    public static func load(directory: String? = nil) throws -> [MappingTable] {
        if let directory { return try loadAll(directory: directory) }
        return try EmbeddedMappings.tables.map { try MappingTable(yaml: $0.yaml, file: "Mappings/\($0.file)") }
    }
}

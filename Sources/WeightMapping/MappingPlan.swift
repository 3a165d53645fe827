import TensorCore

/// Rows `[rows.lowerBound, rows.upperBound)` along axis 0 of a named tensor (per layer).
public struct RowBlock: Sendable, Hashable, CustomStringConvertible {
    public let tensor: String
    public let rows: Range<Int>

    public init(tensor: String, rows: Range<Int>) {
        self.tensor = tensor
        self.rows = rows
    }

    public var description: String { "\(tensor)[\(rows.lowerBound):\(rows.upperBound)]" }
}

/// The same rows seen from both sides: every mapping in these families is a permutation or a
/// concatenation of row blocks, so a conversion is a list of these, in either direction.
public struct RowCorrespondence: Sendable, Hashable {
    public let hf: RowBlock
    public let megatron: RowBlock
}

public struct HFTensorSpec: Sendable, Equatable {
    public let name: String
    public let shape: [Int]
}

/// A Megatron tensor as one layer (and expert) sees it, and where it lives in the checkpoint.
public struct MegatronTensorSpec: Sendable, Equatable {
    /// The per-layer state-dict name (`decoder.layers.3.mlp.linear_fc1.weight`).
    public let name: String
    /// The checkpoint key: stacked placeholders (layer, expert) removed from the name.
    public let key: String
    /// Positions on the key's prepended axes (layer, then expert), outermost first.
    public let prefix: [Int]
    /// Sizes of those prepended axes.
    public let prefixSizes: [Int]
    /// Shape of this layer's (expert's) tensor, without the prepended axes.
    public let shape: [Int]
    public let split: TensorSplit?
    /// The op that fills it (a SwiGLU `[gate; up]` splits into 2 × tp fragments).
    public let op: MappingOp
    /// One routed expert's tensor (its name has the `{expert}` placeholder): split over the
    /// expert tensor-parallel size, stored on the global-expert axis.
    public let isRoutedExpert: Bool

    /// The key's global shape.
    public var globalShape: [Int] { prefixSizes + shape }

    /// The position on the layer axis, for stacked layer keys.
    public var layer: Int? { prefix.first }

    /// The global box of `rows` of this tensor: offsets and sizes on every axis of the key.
    public func box(rows: Range<Int>) -> (offsets: [Int], sizes: [Int]) {
        guard !shape.isEmpty else { return (prefix, prefix.map { _ in 1 }) }
        return (prefix + [rows.lowerBound] + shape.dropFirst().map { _ in 0 },
                prefix.map { _ in 1 } + [rows.count] + Array(shape.dropFirst()))
    }

    /// The whole tensor as one chunk of its key.
    public var chunk: (offsets: [Int], sizes: [Int]) {
        (prefix + shape.map { _ in 0 }, prefix.map { _ in 1 } + shape)
    }
}

/// The mapping applied to one model: every tensor on both sides with its shape, the row
/// correspondences between them, and the Megatron rows that are padding. Formats turn this into
/// byte moves; nothing here knows about files.
public struct MappingPlan: Sendable {
    public let model: ResolvedModel
    public let hfTensors: [HFTensorSpec]
    public let megatronTensors: [MegatronTensorSpec]
    public let correspondences: [RowCorrespondence]
    /// Per correspondence: the index in `hfTensors` of its HF tensor.
    public let correspondenceHFTensors: [Int32]
    /// Megatron rows with no HF source: vocabulary padding, written as zeros and dropped on export.
    public let zeroFills: [RowBlock]
    /// `_extra_state` objects Megatron-Core asks for: the per-layer module, its key and layer.
    public let extraState: [(module: String, key: String, prefix: [Int], prefixSizes: [Int])]
    /// Rows of the padded vocabulary on the Megatron side, when a rule pads.
    public let paddedVocabSize: Int?

    public enum Direction: Sendable {
        /// HF → Megatron: shapes come from the HF tensors.
        case fromHF(shapes: [String: [Int]], vocabDivisor: Int, tensorParallel: Int)
        /// Megatron → HF: shapes come from the checkpoint's keys (global shapes).
        case fromMegatron(keyShapes: [String: [Int]])
        /// Megatron → HF from per-rank shards (a legacy checkpoint): `localShape(name)` gives the
        /// shape rank 0 holds of a per-layer name (nil if absent); global shapes are that shape
        /// with its split axis multiplied by the parallel size (experts: the expert size).
        case fromLocalShards(localShape: @Sendable (String) -> [Int]?, tensorParallel: Int, expertTensorParallel: Int)
    }

    /// Expands every applicable rule for every layer and checks the result against the tensors
    /// that exist: all unmapped and all missing tensors are reported together.
    public init(model: ResolvedModel, direction: Direction) throws {
        self.model = model
        var hfTensors: [HFTensorSpec] = []
        var hfTensorIndex: [String: Int] = [:]
        var megatronTensors: [MegatronTensorSpec] = []
        var correspondences: [RowCorrespondence] = []
        var zeroFills: [RowBlock] = []
        var missing: [String] = []
        var padded: Int?
        // Per-expert instances repeat their key, axes and shapes 512 times: one copy of each is
        // kept (~240 bytes a tensor, 12 MB for 51,000 tensors).
        var keys: [String: (key: String, first: Int)] = [:]
        // Every layer of a stacked key must have the same shape (the first break is reported
        // after the missing tensors, as a check of the finished list would).
        var inconsistentLayers: MappingError?
        var arrays: [[Int]: [Int]] = [:]
        func interned(_ array: [Int]) -> [Int] {
            if let known = arrays[array] { return known }
            arrays[array] = array
            return array
        }
        func interned(key: String) -> (key: String, first: Int) {
            if let known = keys[key] { return known }
            let entry = (key, megatronTensors.count)
            keys[key] = entry
            return entry
        }
        /// Per correspondence: the index of its HF tensor in `hfTensors`.
        var correspondenceHF: [Int32] = []
        let layerCount = model.layerCount
        let stacked = model.table.stackedPlaceholders
        // Config counts are believed only as far as the tensors go: every layer and every expert
        // holds tensors, so a count beyond the source's tensors is refused before anything
        // proportional to it is built.
        let tensorBound: Int? = if case .fromHF(let shapes, _, _) = direction { shapes.count } else { nil }
        if case .fromHF(let shapes, _, _) = direction {
            // Stated sizes against the source tensors first, so a lie is named as such.
            try Self.checkStatedSizes(model, shapes.keys.sorted().map { HFTensorSpec(name: $0, shape: shapes[$0]!) })
        }
        if let tensorBound, layerCount > tensorBound {
            throw MappingError.invalidConfigValue(
                config: model.configPath, field: model.configField(of: model.table.layerCountArgument),
                reason: "\(layerCount) layers, but the checkpoint has only \(tensorBound) tensors")
        }
        let expertArgument = model.table.expertCountArgument ?? "num_moe_experts"
        // Read once, its fault thrown only where a rule needs the count (a dense model has none).
        // `count` captures this and not the model: passing it as a closure per tensor copied the model.
        let expertCount = Result { () throws -> Int in
            let experts = try model.int(expertArgument)
            guard experts >= 1, experts <= min(tensorBound ?? Int.max, ResolvedModel.largestLayerCount) else {
                throw MappingError.invalidConfigValue(
                    config: model.configPath, field: model.configField(of: expertArgument),
                    reason: "\(experts) experts per layer" + (tensorBound.map { ", but the checkpoint has only \($0) tensors" } ?? " is more than any model has"))
            }
            return experts
        }
        func count(_ placeholder: String) throws -> Int {
            placeholder == "layer" ? layerCount : try expertCount.get()
        }

        // Layer-major model order: rules before the first layered rule, then every layer's
        // rules (each rule's experts in order), then the rest, as HF state dicts list them.
        let layered = model.rules.map { $0.megatronName(model.spec).placeholders.contains("layer") }
        let isMTP = model.rules.map(\.isMTP)
        let firstLayered = layered.firstIndex(of: true) ?? model.rules.count
        var instances: [(rule: MappingRule, layer: Int, mtp: Int)] = []
        for (index, rule) in model.rules.enumerated() where !layered[index] && !isMTP[index] && index < firstLayered {
            instances.append((rule, -1, -1))
        }
        for layer in 0..<layerCount {
            for (index, rule) in model.rules.enumerated() where layered[index] && model.layerMatches(layer, rule.layerWhen) {
                instances.append((rule, layer, -1))
            }
        }
        for (index, rule) in model.rules.enumerated() where !layered[index] && !isMTP[index] && index > firstLayered {
            instances.append((rule, -1, -1))
        }
        // Multi-token-prediction layers come last, each with its own kind.
        for position in model.mtpValues.indices {
            for (index, rule) in model.rules.enumerated() where isMTP[index] && model.mtpMatches(position, rule.layerWhen) {
                instances.append((rule, -1, position))
            }
        }

        for (rule, layer, mtp) in instances {
            let megatronPattern = rule.megatronName(model.spec)
            let hasLayer = layer >= 0
            let experts = megatronPattern.placeholders.contains("expert") ? Array(0..<(try count("expert"))) : [-1]
            for expert in experts {
                var values: [String: Int] = [:]
                if hasLayer { values["layer"] = layer }
                if mtp >= 0 { values["mtp"] = mtp }
                if expert >= 0 { values["expert"] = expert }
                let megatronName = megatronPattern.render(values)
                let placement = try Self.checkpointKey(megatronPattern, values: values, stacked: stacked, counts: count)
                var hfNames: [String: String] = [:]
                for (role, pattern) in rule.hf { hfNames[role] = pattern.render(values) }
                let expansion: RuleExpansion
                var checkpointKeyName = placement.key
                switch direction {
                case .fromHF(let shapes, let divisor, let tp):
                    var known: [String: [Int]] = [:]
                    for (role, name) in hfNames {
                        if let index = shapes.index(forKey: name) {
                            known[role] = shapes.values[index]
                            hfNames[role] = shapes.keys[index]  // the caller's copy of the name, not a second one
                        } else {
                            missing.append(name)
                        }
                    }
                    guard known.count == hfNames.count else { continue }
                    expansion = try RuleExpansion.fromHF(rule: rule, roles: known, model: model,
                                                         vocabDivisor: divisor, tensorParallel: tp, names: hfNames,
                                                         layer: hasLayer ? layer : nil)
                case .fromLocalShards(let localShape, let tensorParallel, let expertTensorParallel):
                    guard var shape = localShape(megatronName) else { missing.append(megatronName); continue }
                    let parallel = megatronPattern.placeholders.contains("expert") ? expertTensorParallel : tensorParallel
                    if let slice = try RuleExpansion.rowSlice(rule, model, hasLayer ? layer : nil) {
                        // One component of a split parameter: its rows come from the config.
                        if !shape.isEmpty { shape[0] = slice.rows.count }
                    } else if let split = rule.split, parallel > 1 {
                        let axis = split == .row ? 1 : 0
                        if shape.count > axis { shape[axis] *= parallel }
                    }
                    expansion = try RuleExpansion.fromMegatron(rule: rule, shape: shape, model: model, name: megatronName,
                                                               layer: hasLayer ? layer : nil)
                case .fromMegatron(let keyShapes):
                    guard let index = keyShapes.index(forKey: placement.key) else { missing.append(placement.key); continue }
                    let global = keyShapes.values[index]
                    checkpointKeyName = keyShapes.keys[index]  // the checkpoint's copy of the key, not a second one
                    guard global.count >= placement.prefixSizes.count,
                        Array(global.prefix(placement.prefixSizes.count)) == placement.prefixSizes
                    else {
                        throw MappingError.inconsistentLayers(
                            key: placement.key, reason: "leading axes \(global.prefix(placement.prefixSizes.count)) do not match \(placement.prefixSizes) (layers, experts) of the config")
                    }
                    expansion = try RuleExpansion.fromMegatron(rule: rule, shape: Array(global.dropFirst(placement.prefixSizes.count)),
                                                               model: model, name: megatronName, layer: hasLayer ? layer : nil)
                }
                if rule.padsVocab { padded = expansion.megatronShape.first }
                var positions: [String: Int] = [:]
                for role in rule.op.roles {
                    let name = hfNames[role]!
                    if let position = hfTensorIndex[name] {
                        positions[role] = position
                        let earlier = hfTensors[position]
                        // One HF tensor cut into several Megatron tensors (row slices): one shape.
                        guard earlier.shape == expansion.hfShapes[role]! else {
                            throw MappingError.shapeMismatch(tensor: name, expected: earlier.shape, actual: expansion.hfShapes[role]!,
                                                             reason: "rules disagree on its shape")
                        }
                    } else {
                        positions[role] = hfTensors.count
                        hfTensorIndex[name] = hfTensors.count
                        hfTensors.append(HFTensorSpec(name: name, shape: interned(expansion.hfShapes[role]!)))
                    }
                }
                let key = interned(key: checkpointKeyName)
                if !placement.prefix.isEmpty, inconsistentLayers == nil, key.first < megatronTensors.count {
                    let earlier = megatronTensors[key.first]
                    if earlier.shape != expansion.megatronShape {
                        inconsistentLayers = .inconsistentLayers(
                            key: key.key, reason: "\(earlier.name) has shape \(earlier.shape), \(megatronName) has \(expansion.megatronShape)",
                            tensors: [earlier.name, megatronName])
                    }
                }
                megatronTensors.append(MegatronTensorSpec(
                    name: megatronName, key: key.key, prefix: interned(placement.prefix), prefixSizes: interned(placement.prefixSizes),
                    shape: interned(expansion.megatronShape), split: rule.split, op: rule.op, isRoutedExpert: expert >= 0))
                for block in expansion.blocks {
                    let name = hfNames[block.role]!
                    correspondences.append(RowCorrespondence(
                        hf: RowBlock(tensor: name, rows: block.hfRows),
                        megatron: RowBlock(tensor: megatronName, rows: block.megatronRows)))
                    correspondenceHF.append(Int32(positions[block.role]!))
                }
                if let zero = expansion.zeroRows { zeroFills.append(RowBlock(tensor: megatronName, rows: zero)) }
            }
        }
        if !missing.isEmpty {
            let side = if case .fromHF = direction { "Hugging Face" } else { "Megatron" }
            throw MappingError.missingTensors(side: side, names: Array(Set(missing)).sorted())
        }
        if let inconsistentLayers { throw inconsistentLayers }
        // From the HF side the source shapes were checked up front; otherwise the derived ones.
        if tensorBound == nil { try Self.checkStatedSizes(model, hfTensors) }
        switch direction {
        case .fromHF(let shapes, _, _) where hfTensors.count < shapes.count:
            // Every HF tensor of the plan is one of `shapes`: only fewer of them leaves some unmapped.
            let unmapped = shapes.keys.filter { name in
                hfTensorIndex[name] == nil && !model.table.ignore.contains { $0.match(name) != nil }
            }.sorted()
            if !unmapped.isEmpty { throw MappingError.unmappedTensors(side: "Hugging Face", names: unmapped) }
        case .fromHF:
            break
        case .fromMegatron(let keyShapes):
            let used = Set(megatronTensors.map(\.key))
            let unmapped = keyShapes.keys.filter { !used.contains($0) && !Self.isTrainingState($0) }.sorted()
            if !unmapped.isEmpty { throw MappingError.unmappedTensors(side: "Megatron", names: unmapped) }
        case .fromLocalShards:
            break  // the caller checks each rank file's entries against the layout
        }
        try Self.checkMegatronCoverage(megatronTensors, correspondences, zeroFills)
        try Self.checkHFCoverage(hfTensors, correspondences, correspondenceHF)
        self.hfTensors = hfTensors
        self.megatronTensors = megatronTensors
        self.correspondences = correspondences
        correspondenceHFTensors = correspondenceHF
        self.zeroFills = zeroFills
        paddedVocabSize = padded
        var extra: [(module: String, key: String, prefix: [Int], prefixSizes: [Int])] = []
        for module in model.table.extraState[model.spec] ?? [] where model.isSet(module.whenSet) {
            let pattern = module.pattern
            let hasLayer = pattern.placeholders.contains("layer")
            let hasMTP = module.isMTP
            let places: [(layer: Int, mtp: Int)] = hasMTP
                ? model.mtpValues.indices.filter { model.mtpMatches($0, module.layerWhen) }.map { (-1, $0) }
                : (hasLayer ? (0..<layerCount).filter { model.layerMatches($0, module.layerWhen) }.map { ($0, -1) } : [(-1, -1)])
            // A dense model has no expert count: only modules that exist need one.
            guard !places.isEmpty else { continue }
            let experts = pattern.placeholders.contains("expert") ? Array(0..<(try count("expert"))) : [-1]
            for (layer, mtp) in places {
                for expert in experts {
                    var values: [String: Int] = [:]
                    if layer >= 0 { values["layer"] = layer }
                    if mtp >= 0 { values["mtp"] = mtp }
                    if expert >= 0 { values["expert"] = expert }
                    let placement = try Self.checkpointKey(pattern, values: values, stacked: stacked, counts: count)
                    extra.append((pattern.render(values), interned(key: placement.key).key, interned(placement.prefix),
                                  interned(placement.prefixSizes)))
                }
            }
        }
        extraState = extra
    }

    /// This plan without its Hugging Face side (no HF tensors, correspondences or zero fills)
    /// and, unless `keepingExtraState`, without `extraState`: what a Megatron-to-Megatron reshard
    /// keeps, for at Ultra's 51,000 tensors that side is ~10 MB of names and rows held through
    /// the whole plan (the extra-state list another 5 MB; a torch_dist target carries the
    /// source's objects instead).
    public func megatronSide(keepingExtraState: Bool) -> MappingPlan {
        MappingPlan(model: model, megatronTensors: megatronTensors, extraState: keepingExtraState ? extraState : [],
                    paddedVocabSize: paddedVocabSize)
    }

    private init(model: ResolvedModel, megatronTensors: [MegatronTensorSpec],
                 extraState: [(module: String, key: String, prefix: [Int], prefixSizes: [Int])], paddedVocabSize: Int?) {
        self.model = model
        self.megatronTensors = megatronTensors
        self.extraState = extraState
        self.paddedVocabSize = paddedVocabSize
        (hfTensors, correspondences, correspondenceHFTensors, zeroFills) = ([], [], [], [])
    }

    /// Optimizer and scheduler state in a training checkpoint: not model weights, never exported.
    public static func isTrainingState(_ key: String) -> Bool {
        key.hasPrefix("optimizer.") || key.hasPrefix("rng_state") || key.hasPrefix("opt_param_scheduler")
    }

    /// Stacked placeholders (the layer with `layer_keys: stacked`, the expert of `experts.experts`
    /// keys) leave the checkpoint key, segment and dot, and become prepended axes, in the order
    /// they appear in the name.
    public static func checkpointKey(
        _ pattern: NamePattern, values: [String: Int], stacked: [String], counts: (String) throws -> Int
    ) throws -> (key: String, prefix: [Int], prefixSizes: [Int]) {
        var pieces: [String] = []
        var prefix: [Int] = []
        var sizes: [Int] = []
        var skipDot = false
        for piece in pattern.pieces {
            switch piece {
            case .placeholder(let name) where stacked.contains(name):
                skipDot = true
                prefix.append(values[name]!)
                sizes.append(try counts(name))
            case .placeholder(let name):
                pieces.append(String(values[name]!))
            case .literal(let text):
                pieces.append(skipDot && text.hasPrefix(".") ? String(text.dropFirst()) : text)
                skipDot = false
            }
        }
        var key = pieces.joined()
        if key.hasSuffix(".") { key.removeLast() }
        return (key, prefix, sizes)
    }

    /// The table's `shape_checks`: sizes the config states must be the tensors' sizes.
    private static func checkStatedSizes(_ model: ResolvedModel, _ tensors: [HFTensorSpec]) throws {
        for check in model.table.shapeChecks {
            // The stated value depends on the layer only: evaluated once per layer, not once per
            // expert of it (the config's arguments are found by a scan).
            var expectedByLayer: [Int: Int?] = [:]
            for tensor in tensors {
                guard let placeholders = check.tensor.match(tensor.name) else { continue }
                if let rank = check.rank, tensor.shape.count != rank {
                    throw MappingError.unexpectedRank(tensor: tensor.name, shape: tensor.shape, expectedRank: rank,
                                                      architecture: model.table.name)
                }
                guard let expression = check.value, let axis = check.axis else { continue }
                let layer = placeholders["layer"]
                let stated: Int?
                if let known = expectedByLayer[layer ?? -1] {
                    stated = known
                } else {
                    for name in expression.names {
                        if let found = statedValue(name, layer: layer, model), !found.isNull, found.intValue == nil {
                            throw MappingError.invalidConfigValue(
                                config: model.configPath, field: model.configField(of: name),
                                reason: "\(MessageText.quoted(JSONWriter.compact(found))) is not an integer (`\(tensor.name)` has shape \(tensor.shape))")
                        }
                    }
                    stated = expression.evaluate({ statedValue($0, layer: layer, model)?.intValue })
                    expectedByLayer[layer ?? -1] = stated
                }
                guard let expected = stated else { continue }
                guard axis < tensor.shape.count, tensor.shape[axis] == expected else {
                    throw MappingError.invalidConfigValue(
                        config: model.configPath, field: expression.names.map(model.configField(of:)).joined(separator: "`, `"),
                        reason: "`\(expression)` is \(expected), but `\(tensor.name)` has shape \(tensor.shape) (axis \(axis))")
                }
            }
        }
    }

    /// A config value for a shape check, per layer when the layer states it. A function, not a
    /// closure in the loop: capturing the model copied it once per checked tensor.
    private static func statedValue(_ name: String, layer: Int?, _ model: ResolvedModel) -> JSONValue? {
        if let layer, model.layerValues.indices.contains(layer), let value = model.layerValues[layer][name] { return value }
        return model.argument(name)
    }

    /// Each Megatron tensor's rows must be filled exactly once. Its correspondences (and zero
    /// rows) are appended right after it, so they are read as runs, in order.
    private static func checkMegatronCoverage(_ tensors: [MegatronTensorSpec], _ correspondences: [RowCorrespondence], _ zeros: [RowBlock]) throws {
        var position = 0, zero = 0
        var ranges: [Range<Int>] = []
        for tensor in tensors {
            ranges.removeAll(keepingCapacity: true)
            while position < correspondences.count, correspondences[position].megatron.tensor == tensor.name {
                ranges.append(correspondences[position].megatron.rows)
                position += 1
            }
            if zero < zeros.count, zeros[zero].tensor == tensor.name {
                ranges.append(zeros[zero].rows)
                zero += 1
            }
            try checkRows(tensor.name, rows: tensor.shape.first ?? 1, ranges)
        }
        precondition(position == correspondences.count && zero == zeros.count, "correspondences out of tensor order")
    }

    private static func checkRows(_ name: String, rows: Int, _ ranges: [Range<Int>]) throws {
        var next = 0
        for range in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            guard range.lowerBound == next else {
                throw MappingError.unfilledTarget(tensor: name, reason: "rows \(next)..<\(range.lowerBound) have no counterpart or overlap")
            }
            next = range.upperBound
        }
        guard next == rows else {
            throw MappingError.unfilledTarget(tensor: name, reason: "covered \(next) of \(rows) rows")
        }
    }

    /// Each HF tensor's rows must be used exactly once: the correspondences sorted by tensor and
    /// row (an index array, not a dictionary of row lists by name).
    private static func checkHFCoverage(_ tensors: [HFTensorSpec], _ correspondences: [RowCorrespondence], _ tensorOf: [Int32]) throws {
        let order = correspondences.indices.sorted {
            (tensorOf[$0], correspondences[$0].hf.rows.lowerBound) < (tensorOf[$1], correspondences[$1].hf.rows.lowerBound)
        }
        var position = 0
        for (index, tensor) in tensors.enumerated() {
            var next = 0
            while position < order.count, tensorOf[order[position]] == Int32(index) {
                let range = correspondences[order[position]].hf.rows
                guard range.lowerBound == next else {
                    throw MappingError.unfilledTarget(tensor: tensor.name, reason: "rows \(next)..<\(range.lowerBound) have no counterpart or overlap")
                }
                next = range.upperBound
                position += 1
            }
            guard next == (tensor.shape.first ?? 1) else {
                throw MappingError.unfilledTarget(tensor: tensor.name, reason: "covered \(next) of \(tensor.shape.first ?? 1) rows")
            }
        }
    }
}

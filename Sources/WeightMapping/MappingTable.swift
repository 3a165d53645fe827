import TensorCore

/// How the Megatron side names decoder layers: one key per module with a prepended layer axis
/// (homogeneous GPT), or one key per layer (heterogeneous and hybrid stacks).
public enum LayerKeyLayout: String, Sendable, CaseIterable {
    case stacked
    case perLayer = "per_layer"
}

/// Which Megatron-Core layer spec names the keys: Transformer Engine's fused modules
/// (`linear_qkv.layer_norm_weight`) or the local spec's separate norms (`input_layernorm.weight`).
public enum MegatronSpec: String, Sendable, CaseIterable {
    case transformerEngine = "te"
    case local
}

/// The closed set of transforms a rule can ask for; each is implemented once, in `RuleExpansion`.
public enum MappingOp: String, Sendable, CaseIterable {
    /// The same tensor on both sides.
    case rename
    /// HF q, k, v → Megatron's fused QKV, interleaved per query group.
    case qkv
    /// HF gate, up → Megatron's `linear_fc1` = `[gate; up]`.
    case swiglu

    /// How many row blocks each tensor-parallel rank holds of a column-parallel output: SwiGLU's
    /// `[gate; up]` is split as `[gate_r; up_r]` per rank, so its rows form 2 × tp fragments.
    public var tensorParallelFragments: Int { self == .swiglu ? 2 : 1 }

    /// The HF roles the op reads, in the order their rows appear in simple concatenations.
    public var roles: [String] {
        switch self {
        case .rename: ["tensor"]
        case .qkv: ["q", "k", "v"]
        case .swiglu: ["gate", "up"]
        }
    }
}

/// How a tensor is split across tensor-parallel ranks (which axis; vocab rows are axis 0 with
/// padding to the padded vocabulary size).
public enum TensorSplit: String, Sendable {
    case column = "0"
    case row = "1"
    case vocab
}

/// One rule of a mapping table.
public struct MappingRule: Sendable {
    public let op: MappingOp
    /// Megatron name (TE spec) with placeholders.
    public let megatron: NamePattern
    /// Megatron name in the local spec, when it differs.
    public let megatronLocal: NamePattern?
    /// HF name per role (`tensor` for a rename).
    public let hf: [String: NamePattern]
    public let split: TensorSplit?
    /// Pad rows to the padded vocabulary size on the Megatron side.
    public let padsVocab: Bool
    /// HF config conditions under which the rule applies.
    public let when: [(field: String, value: JSONValue)]
    /// Config fields that must be present and not null for the rule to apply.
    public let whenSet: [String]
    /// Per-layer conditions (on `layer_config` values): the rule applies to the layers that match.
    public let layerWhen: [(name: String, value: JSONValue)]
    /// For a rename of part of an HF tensor: the first row and the row count of the part, and
    /// the HF tensor's total rows (Mamba's `in_proj` = z|x|B|C|dt saved as five Megatron keys).
    public let hfRows: (start: ArgumentExpression, count: ArgumentExpression, total: ArgumentExpression)?
    /// Op parameters for this rule, as expressions over layer values and Megatron arguments
    /// (e.g. a layer's own `num_query_groups`).
    public let params: [(name: String, expression: ArgumentExpression)]
    /// Where the rule is in its table, for messages.
    public let line: Int
    public let column: Int

    public func megatronName(_ spec: MegatronSpec) -> NamePattern {
        spec == .local ? (megatronLocal ?? megatron) : megatron
    }

    /// A rule of the multi-token-prediction layers: `{mtp}` on either side (the MTP layer's own
    /// norms and projection bind it on the HF side alone).
    public var isMTP: Bool {
        megatron.placeholders.contains("mtp") || hf.values.contains { $0.placeholders.contains("mtp") }
    }
}

/// How one Megatron argument is read from `config.json`.
public struct ArgumentRule: Sendable {
    public let name: String
    /// Config fields tried in order (dotted paths reach into objects, e.g. `rope_parameters.rope_theta`).
    public let fields: [String]
    /// Used when no field is present: a literal, or an expression over earlier arguments.
    public let defaultValue: ArgumentDefault?
    /// Value translations, e.g. `silu` → `swiglu`.
    public let valueMap: [String: JSONValue]
    /// When no field is present: an expression over the values of the first layer matching
    /// `where` (DeciLM's global `num_query_groups` from its first attention block).
    public let firstLayer: (expression: ArgumentExpression, where: [(name: String, value: JSONValue)])?
    /// The argument describes layers of one kind (MoE sizes for `E` layers): required when a
    /// decoder or MTP layer matches these conditions, None when none does (a dense model's
    /// published config has no MoE fields; transformers' own writes MoE defaults even then).
    public let withLayers: [(name: String, value: JSONValue)]
    /// `int` or `float` when Megatron-LM declares the argument so (config.json may write
    /// `500000.0` where Megatron-LM's `--rotary-base` is an int).
    public let type: String?
}

public enum ArgumentDefault: Sendable {
    case literal(JSONValue)
    case expression(ArgumentExpression)
}

/// Per-layer values read from a config list with one entry per layer (DeciLM's `block_configs`).
public struct LayerConfigSpec: Sendable {
    public struct Value: Sendable {
        public let name: String
        /// Dotted paths inside each entry, tried in order.
        public let fields: [String]
        /// Used when no field is present or it is null; nil makes the value required where used.
        public let defaultValue: JSONValue?
    }

    /// A layer-kind pattern: one character per layer (`M*M-E`), from a string field or from a
    /// list of names translated to characters (`mamba` → `M`).
    public struct Pattern: Sendable {
        /// The per-layer value it sets.
        public let value: String
        /// String fields (`hybrid_override_pattern`): `|` (pipeline stage marks) is ignored and
        /// what follows `/` (the MTP part) is not a decoder layer.
        public let strings: [String]
        /// List fields (`layers_block_type`).
        public let lists: [String]
        public let names: [String: String]
        /// A Megatron argument that receives the pattern as a string (`hybrid_override_pattern`).
        public let argument: String?
    }

    /// The config field holding one entry per layer, if any.
    public let list: String?
    public let values: [Value]
    public let pattern: Pattern?
}

/// A module with an `_extra_state` object, on the layers where `layerWhen` holds (and when the
/// config sets every field of `whenSet`).
public struct ExtraStateModule: Sendable {
    public let pattern: NamePattern
    public let layerWhen: [(name: String, value: JSONValue)]
    public let whenSet: [String]
    /// One per multi-token-prediction layer matching `layerWhen`: the pattern has `{mtp}`, or the
    /// table says `mtp: true` (the MTP layer's own modules, named once: `mtp.layers.0.eh_proj`).
    public let isMTP: Bool
}

/// The language-model head as Megatron-Core builds it (`output_layer`), for what legacy files
/// hold beyond the mapped keys: with tied embeddings (no `weight` key) the last pipeline stage
/// keeps a copy of `tiedTo`, the embedding (synchronised at start-up), and as a column-parallel
/// linear its module state dict has an `_extra_state` even when dist checkpoints do not ask for one.
public struct OutputLayerSpec: Sendable {
    /// The module name (`output_layer`).
    public let module: String
    /// Its weight's checkpoint key (`output_layer.weight`), a rule's Megatron name.
    public let weight: String
    /// The checkpoint key it copies when the embeddings are tied (`embedding.word_embeddings.weight`).
    public let tiedTo: String
}

/// How legacy (`--ckpt-format torch`) module state dicts name routed experts: per expert-parallel
/// rank, with local expert numbers. The checkpoint keys' `key{expert}.` is SequentialMLP's
/// `sequential{local}.`, or TEGroupedMLP's `grouped` followed by the parameter and the local number
/// (`experts.linear_fc1.weight3`, one `_extra_state` per grouped linear).
public struct LegacyExpertNames: Sendable {
    public let key: String
    public let sequential: String
    public let grouped: String
}

/// Values of config.json fields Megatron-Core does not read but fixes (its llama3 RoPE): when the
/// Megatron argument `when` is true, the model computes with `values`, whatever the config's
/// object (the first of `objects` present) says. Import warns when they differ; `hf_config`
/// writes them (`{fixed: NAME}`).
public struct MegatronFixedConfig: Sendable {
    public let name: String
    public let when: String
    /// What fixes them, for the warning (`Megatron-Core's llama3 RoPE`).
    public let what: String
    public let objects: [String]
    public let values: [(field: String, value: JSONValue)]
}

/// A Megatron-LM flag that `--use-checkpoint-args` does not restore from the checkpoint's args
/// (Megatron-LM's `load_args_from_checkpoint` skips it), printed after an import: when the
/// argument `when` is true (if given), `flag` alone, or `flag VALUE` with the argument `value`'s value.
public struct MegatronLMFlag: Sendable {
    public let flag: String
    public let value: String?
    public let when: String?
}

/// Multi-token-prediction layers (`{mtp}` placeholders): how many, and each one's kind, from a
/// depth field and a pattern of their own. Each gets the per-layer values `kind` and `last`.
public struct MTPSpec: Sendable {
    /// The config field with the number of MTP depths; absent or 0 means none.
    public let depthField: String
    public let pattern: LayerConfigSpec.Pattern
}

/// How Megatron-Bridge's `run_config.yaml` describes the model: its provider class and each
/// provider field, from a Megatron argument.
public struct BridgeProviderSpec: Sendable {
    public enum Source: Sendable {
        /// The value of a Megatron argument.
        case argument(String)
        /// The negation of a boolean argument.
        case not(String)
        /// A Python callable, written as `{_call_: false, _target_: path}`.
        case function(String)
        /// A literal.
        case value(JSONValue)
    }

    public let provider: String
    public let fields: [(name: String, source: Source)]
}

/// Which spelling of the table's HF names a checkpoint uses: the table's `prefix`, or `source`.
public struct HFNameDialect: Sendable, Equatable {
    public let prefix: String
    public let source: String

    public static let identity = HFNameDialect(prefix: "", source: "")

    public init(prefix: String, source: String) {
        self.prefix = prefix
        self.source = source
    }

    public func toTable(_ name: String) -> String {
        guard prefix != source, name.hasPrefix(source) else { return name }
        return prefix + name.dropFirst(source.count)
    }

    public func toSource(_ name: String) -> String {
        guard prefix != source, name.hasPrefix(prefix) else { return name }
        return source + name.dropFirst(prefix.count)
    }

    /// The dialect of a set of names: an alternative prefix is used when the table's prefix
    /// appears on no name and the alternative does.
    public static func detect(_ names: some Collection<String>, table: MappingTable) -> HFNameDialect {
        for (prefix, alternatives) in table.hfPrefixAliases where !names.contains(where: { $0.hasPrefix(prefix) }) {
            if let alternative = alternatives.first(where: { alternative in names.contains { $0.hasPrefix(alternative) } }) {
                return HFNameDialect(prefix: prefix, source: alternative)
            }
        }
        return .identity
    }
}

/// A parsed mapping table (`Mappings/<name>.yaml`).
public struct MappingTable: Sendable {
    public static let formatVersion = "nembridge-mapping/1"

    public let name: String
    public let file: String
    public let hfArchitectures: [String]
    public let megatronModel: String
    public let layerKeys: LayerKeyLayout
    /// The Megatron argument holding the number of `{layer}` values.
    public let layerCountArgument: String
    /// The Megatron argument holding the number of `{expert}` values, for MoE tables.
    public let expertCountArgument: String?
    /// Placeholders that become prepended axes of the checkpoint key instead of part of its name.
    public let stackedPlaceholders: [String]
    public let hfDefaults: [(field: String, value: JSONValue)]
    public let arguments: [ArgumentRule]
    public let fixedArguments: [(name: String, value: JSONValue)]
    public let rules: [MappingRule]
    /// HF names that may be present and are not converted (e.g. rotary `inv_freq` buffers).
    public let ignore: [NamePattern]
    /// Megatron modules (with placeholders) that own an `_extra_state` object in each spec.
    public let extraState: [MegatronSpec: [ExtraStateModule]]
    /// Where a spec's module state-dict names (what legacy `--ckpt-format torch` files hold)
    /// differ from the checkpoint keys: key fragment → module fragment.
    public let stateDictRenames: [MegatronSpec: [(key: String, module: String)]]
    /// Per-layer values for heterogeneous stacks, or nil.
    public let layerConfig: LayerConfigSpec?
    /// Megatron arguments that hold the whole source `config.json` as a JSON string.
    public let configJSONArguments: [String]
    /// Other prefixes HF files use for the table's names (`backbone.` in hub files, `model.` in
    /// transformers-native saves): table prefix → alternatives.
    public let hfPrefixAliases: [(prefix: String, alternatives: [String])]
    /// Megatron arguments that must be multiples of the tensor-parallel size (heads, groups).
    public let tensorParallelDivides: [String]
    /// Sizes the config claims that the tensors must bear out (`shape_checks`).
    public let shapeChecks: [ShapeCheck]
    /// MTP layers, when the architecture has them.
    public let mtp: MTPSpec?
    /// Megatron-Bridge's provider for `run_config.yaml`, when the table gives one.
    public let bridgeProvider: BridgeProviderSpec?
    /// How `config.json` is written from Megatron arguments, when the table gives it.
    public let hfConfig: HFConfigSpec?
    /// Megatron arguments from a Megatron-Bridge `run_config.yaml` (`run_config_args`), when given.
    public let runConfigArguments: RunConfigArgumentsSpec?
    /// HF tensors a `--dtype` cast leaves in their own dtype (Nemotron's fp32 router bias).
    public let dtypeKept: [NamePattern]
    /// The LM head, when the table has one (`output_layer`).
    public let outputLayer: OutputLayerSpec?
    /// Config values Megatron-Core fixes (`megatron_fixed_config`).
    public let megatronFixedConfig: [MegatronFixedConfig]
    /// Flags a user passes to Megatron-LM with `--use-checkpoint-args` (`megatron_lm_flags`).
    public let megatronLMFlags: [MegatronLMFlag]
    /// Routed experts in legacy module state dicts (`legacy_expert_names`), for MoE tables.
    public let legacyExpertNames: LegacyExpertNames?
    /// The text before `{layer}` in every layered rule's Megatron name (`decoder.layers.`): where a
    /// per-layer name carries its layer number (one prefix per table, checked when it loads).
    public let megatronLayerPrefix: String?
    /// Megatron names of the rules before the first layered one (the embedding): the modules
    /// Megatron-Core builds on the first pipeline stage; every other non-layer module (final
    /// norm, LM head, MTP) is on the last.
    public let firstStageMegatronNames: Set<String>

    /// Whether `name` is a per-layer Megatron name this table's rules or `_extra_state` modules make.
    public func makesMegatronName(_ name: String, spec: MegatronSpec) -> Bool {
        rules.contains { $0.megatronName(spec).match(name) != nil }
            || (extraState[spec] ?? []).contains { $0.pattern.match(name) != nil || $0.pattern.match(name + "._extra_state") != nil }
    }
    /// HF weights `export --quantize` stores quantized (the linear projections, as NVIDIA's FP8
    /// releases quantize them); every other tensor is written as it is.
    public let quantizedWeights: [NamePattern]
    /// The modules the written quantization config lists as not converted (ModelOpt fnmatch
    /// patterns; block FP8's `modules_to_not_convert` takes them without the leading `*`,
    /// transformers matching them as name suffixes).
    public let quantizationExcluded: [String]
}

/// A size the config states and the tensors must agree with: every HF tensor matching `tensor`
/// (in the table's spelling) has `rank` axes (when given) and `value` rows on `axis` (when given), `value` being an
/// expression over Megatron arguments and the layer's own values. A config that lies about a size
/// is refused instead of being written into the checkpoint's args.
public struct ShapeCheck: Sendable {
    public let tensor: NamePattern
    public let value: ArgumentExpression?
    public let axis: Int?
    public let rank: Int?
    public let line: Int
}

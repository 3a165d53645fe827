import Foundation
import MegatronCheckpoint
import SafetensorsFormat
import TensorCore
import TorchPickle
import WeightMapping

/// A Hugging Face config folder written from a training checkpoint's own `args` (Megatron-LM
/// records its whole argument namespace in the common state, or in each legacy rank file):
/// `config.json` by the table whose `hf_config` section selects the args, a
/// `generation_config.json`, and the tokenizer files when a tokenizer folder is known. The folder
/// is temporary and removed with this object.
public final class TrainingConfig: Sendable {
    /// The temporary folder holding the files.
    public let directory: String
    /// The table chosen.
    public let table: String
    /// Where the tokenizer files came from, or nil when none was carried.
    public let tokenizerSource: String?
    /// What the arguments were read from: the checkpoint's `args`, or Bridge's run_config.yaml.
    public let argumentSource: String
    /// The tokenizer file that gave `vocab_size`, when the arguments have none.
    public let vocabularySource: String?

    public static let generationConfig = "generation_config.json"
    static let heterogeneousJSON = "heterogeneous_layers_config_encoded_json"
    static let heterogeneousPath = "heterogeneous_layers_config_path"
    /// Files of a Hugging Face tokenizer folder that export carries.
    static let tokenizerFiles: Set<String> = [
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
        "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    ]

    init(directory: String, table: String, tokenizerSource: String?, argumentSource: String, vocabularySource: String?) {
        self.directory = directory
        self.table = table
        self.tokenizerSource = tokenizerSource
        self.argumentSource = argumentSource
        self.vocabularySource = vocabularySource
    }

    deinit {
        try? FileManager.default.removeItem(atPath: directory)  // a temporary folder: best effort
    }

    /// The `args` namespace of a torch_dist (common state) or legacy (first rank file) checkpoint.
    static func trainingArguments(folder: MegatronCheckpointFolder) throws -> PickleValue? {
        if folder.format == .legacyTorch {
            return try LegacyTorchCheckpoint(directory: folder.directory, folder: folder).args
        }
        return try TorchDistCheckpoint(folder: folder).commonState()?["args"]
    }

    /// The namespace's fields that are JSON values (numbers, strings, booleans, None, lists of
    /// those); objects such as `torch.dtype` are left out.
    public static func jsonArguments(_ namespace: PickleValue) -> [String: JSONValue] {
        guard case .object(let object) = namespace, case .dict(let fields)? = object.state else { return [:] }
        var result: [String: JSONValue] = [:]
        for (key, value) in fields {
            guard let name = key.stringValue, let json = json(value) else { continue }
            result[name] = json
        }
        return result
    }

    static func json(_ value: PickleValue) -> JSONValue? {
        switch value {
        case .none: return .null
        case .bool(let flag): return .bool(flag)
        case .int(let number): return .number(JSONNumber(text: String(number)))
        case .float(let number): return number.isFinite ? .number(JSONNumber(text: HFConfigSpec.pythonFloatText(number))) : nil
        case .string(let text): return .string(text)
        case .list(let items), .tuple(let items):
            let converted = items.compactMap(json)
            return converted.count == items.count ? .array(converted) : nil
        default: return nil
        }
    }

    /// Megatron-Bridge's record of the run, beside the weights in the iteration folder.
    public static let runConfigFile = "run_config.yaml"

    /// The arguments each table reads for this checkpoint: the `args` namespace (the same for every
    /// table), else the `model:` section of Megatron-Bridge's run_config.yaml through each table's
    /// `run_config_args`; nil when the checkpoint has neither.
    static func candidateArguments(folder: MegatronCheckpointFolder, checkpoint path: String, tables: [MappingTable]) throws
        -> (source: String, perTable: [(table: MappingTable, arguments: [String: JSONValue])])? {
        let described = tables.filter { $0.hfConfig != nil }
        if let namespace = try trainingArguments(folder: folder) {
            let arguments = jsonArguments(namespace)
            if !arguments.isEmpty { return ("\(path): args", described.map { ($0, arguments) }) }
        }
        guard let (file, sections) = try runConfig(folder: folder) else { return nil }
        let model = sections["model"] ?? [:]
        return ("\(file): model", described.map { table in
            var arguments = table.runConfigArguments?.arguments(model: model) ?? model
            // Bridge keeps the tokenizer in its own section.
            if !HFConfigSpec.isSet(arguments["tokenizer_model"]), let named = sections["tokenizer"]?["tokenizer_model"] {
                arguments["tokenizer_model"] = named
            }
            return (table, arguments)
        })
    }

    /// The sections of the iteration folder's Megatron-Bridge run_config.yaml, when it has one.
    static func runConfig(folder: MegatronCheckpointFolder) throws -> (file: String, sections: [String: [String: JSONValue]])? {
        let file = (folder.directory as NSString).appendingPathComponent(runConfigFile)
        guard FileManager.default.fileExists(atPath: file) else { return nil }
        let handle = try ReadOnlyFile(path: file)
        return (file, try BridgeRunConfigFile.sections(
            yaml: String(decoding: try handle.readBytes(ByteRange(offset: 0, count: handle.size)), as: UTF8.self), file: file))
    }

    /// Writes the folder for the checkpoint at `folder`, or returns nil when it has neither `args`
    /// nor a Megatron-Bridge run_config.yaml.
    public static func synthesize(folder: MegatronCheckpointFolder, checkpoint path: String, tables: [MappingTable],
                                  tokenizerDirectory: String?) throws -> TrainingConfig? {
        guard let (source, perTable) = try candidateArguments(folder: folder, checkpoint: path, tables: tables) else { return nil }
        let candidates = perTable.filter { $0.table.hfConfig!.selects($0.arguments) }
        guard candidates.count == 1, let chosen = candidates.first else {
            throw ConfigSynthesisError.noTable(source: source, known: perTable.map(\.table.name))
        }
        let table = chosen.table
        var arguments = chosen.arguments
        // Megatron-LM reads the heterogeneous (DeciLM) config from a file when no encoded JSON is given.
        if !HFConfigSpec.isSet(arguments[heterogeneousJSON]), let file = arguments[heterogeneousPath]?.stringValue,
           FileManager.default.isReadableFile(atPath: file) {
            let handle = try ReadOnlyFile(path: file)
            let bytes = try handle.readBytes(ByteRange(offset: 0, count: handle.size))
            arguments[heterogeneousJSON] = .string(String(decoding: bytes, as: UTF8.self))
        }
        let tokenizer = try tokenizerFolder(given: tokenizerDirectory, arguments: arguments)
        var vocabularySource: String?
        if !HFConfigSpec.isSet(arguments["vocab_size"]) {
            // Megatron-LM records only padded_vocab_size when the vocabulary comes from a tokenizer.
            guard let tokenizer, let (size, from) = try tokenizerVocabularySize(folder: tokenizer) else {
                throw TrainingConfigError.noVocabularySize(source: source, tokenizer: tokenizer,
                                                           named: arguments["tokenizer_model"]?.stringValue)
            }
            if let padded = arguments["padded_vocab_size"]?.intValue, size > padded {
                throw TrainingConfigError.vocabularyTooLarge(file: from, size: size, padded: padded)
            }
            arguments["vocab_size"] = .number(JSONNumber(size))
            vocabularySource = from
        }
        let document = try table.hfConfig!.configDocument(arguments: arguments, source: source, table: table.name)
        let directory = (NSTemporaryDirectory() as NSString).appendingPathComponent("nembridge-config-\(UUID().uuidString)")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // owns (and removes) the folder from here on, also when a write below fails
        let made = TrainingConfig(directory: directory, table: table.name, tokenizerSource: tokenizer, argumentSource: source,
                                  vocabularySource: vocabularySource)
        try write(JSONWriter.pythonIndented(document) + "\n", to: (directory as NSString).appendingPathComponent("config.json"))
        // Token ids are not in the args; transformers fills the rest from config.json.
        try write(JSONWriter.pythonIndented(.object([("_from_model_config", .bool(true))])) + "\n",
                  to: (directory as NSString).appendingPathComponent(generationConfig))
        if let tokenizer = made.tokenizerSource {
            for name in try FileManager.default.contentsOfDirectory(atPath: tokenizer).sorted() where tokenizerFiles.contains(name) {
                try copyFileContents(from: (tokenizer as NSString).appendingPathComponent(name), to: (directory as NSString).appendingPathComponent(name))
            }
        }
        return made
    }

    /// The vocabulary of a Hugging Face tokenizer folder, as `len(tokenizer)` counts it (what
    /// Megatron-LM's HuggingFaceTokenizer reports, then pads): one past the largest id of
    /// tokenizer.json's model vocab and added tokens, else config.json's `vocab_size` there.
    static func tokenizerVocabularySize(folder: String) throws -> (size: Int, file: String)? {
        let tokenizerJSON = (folder as NSString).appendingPathComponent("tokenizer.json")
        if FileManager.default.fileExists(atPath: tokenizerJSON) {
            let document = try HFConfig(path: tokenizerJSON).document
            var largest = -1
            switch document["model"]?["vocab"] {
            case .object(let members)?:  // BPE, WordPiece, WordLevel: token -> id
                for member in members {
                    guard let id = member.value.intValue else { throw TrainingConfigError.invalidTokenizer(file: tokenizerJSON, reason: "model.vocab[\(MessageText.quoted(member.key, limit: 40))] is not an id") }
                    largest = max(largest, id)
                }
            case .array(let pieces)?:  // Unigram: [piece, score] in id order
                largest = pieces.count - 1
            default:
                throw TrainingConfigError.invalidTokenizer(file: tokenizerJSON, reason: "no model.vocab")
            }
            for token in document["added_tokens"]?.arrayValue ?? [] {
                guard let id = token["id"]?.intValue else { throw TrainingConfigError.invalidTokenizer(file: tokenizerJSON, reason: "an added token has no id") }
                largest = max(largest, id)
            }
            if largest >= 0 { return (largest + 1, tokenizerJSON) }
        }
        let config = (folder as NSString).appendingPathComponent("config.json")
        if FileManager.default.fileExists(atPath: config), let size = try HFConfig(path: config).document["vocab_size"]?.intValue {
            return (size, config)
        }
        return nil
    }

    /// `--tokenizer DIR`, else `args.tokenizer_model` when it names a Hugging Face tokenizer folder.
    static func tokenizerFolder(given: String?, arguments: [String: JSONValue]) throws -> String? {
        func isTokenizerFolder(_ path: String) -> Bool {
            var isDirectory: ObjCBool = false
            return FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) && isDirectory.boolValue
                && (FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent("tokenizer.json"))
                    || FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent("tokenizer_config.json")))
        }
        if let given {
            guard isTokenizerFolder(given) else { throw TrainingConfigError.notATokenizerFolder(path: given) }
            return given
        }
        if let named = arguments["tokenizer_model"]?.stringValue, isTokenizerFolder(named) { return named }
        return nil
    }

    static func write(_ text: String, to path: String) throws {
        let file = try AtomicOutputFile(path: path)
        try file.write(Array(text.utf8), at: 0)
        try file.publish()
    }
}

public enum TrainingConfigError: Error, Equatable, CustomStringConvertible {
    case notATokenizerFolder(path: String)
    /// Neither the arguments nor a tokenizer folder give the real vocabulary size.
    case noVocabularySize(source: String, tokenizer: String?, named: String?)
    case invalidTokenizer(file: String, reason: String)
    /// The tokenizer has more tokens than the checkpoint's (padded) embedding rows.
    case vocabularyTooLarge(file: String, size: Int, padded: Int)

    public var description: String {
        switch self {
        case .noVocabularySize(let source, let tokenizer, let named):
            "\(source): the training args have no `vocab_size` (Megatron-LM records only padded_vocab_size when the vocabulary comes from a tokenizer) and "
                + (tokenizer.map { "the tokenizer folder \($0) gives none (no tokenizer.json vocab, no config.json vocab_size)" }
                    ?? "no tokenizer folder is known (" + (named.map { "args.tokenizer_model \($0) is not a Hugging Face tokenizer folder" } ?? "no args.tokenizer_model") + ")")
                + "; give the tokenizer folder with --tokenizer DIR, or the model's config folder with --hf-config DIR"
        case .invalidTokenizer(let file, let reason):
            "\(file): not a Hugging Face tokenizer.json (\(reason))"
        case .vocabularyTooLarge(let file, let size, let padded):
            "\(file): the tokenizer has \(size) tokens, more than the checkpoint's \(padded) embedding rows (args.padded_vocab_size); give the tokenizer the model was trained with"
        case .notATokenizerFolder(let path):
            "\(path): not a Hugging Face tokenizer folder (no tokenizer.json or tokenizer_config.json)"
        }
    }
}

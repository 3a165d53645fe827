import Foundation
import MegatronCheckpoint
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

    public static let generationConfig = "generation_config.json"
    static let heterogeneousJSON = "heterogeneous_layers_config_encoded_json"
    static let heterogeneousPath = "heterogeneous_layers_config_path"
    /// Files of a Hugging Face tokenizer folder that export carries.
    static let tokenizerFiles: Set<String> = [
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
        "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    ]

    init(directory: String, table: String, tokenizerSource: String?) {
        self.directory = directory
        self.table = table
        self.tokenizerSource = tokenizerSource
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

    /// Writes the folder for the checkpoint at `folder`, or returns nil when it has no `args`.
    public static func synthesize(folder: MegatronCheckpointFolder, checkpoint path: String, tables: [MappingTable],
                                  tokenizerDirectory: String?) throws -> TrainingConfig? {
        guard let namespace = try trainingArguments(folder: folder) else { return nil }
        var arguments = jsonArguments(namespace)
        guard !arguments.isEmpty else { return nil }
        // Megatron-LM reads the heterogeneous (DeciLM) config from a file when no encoded JSON is given.
        if !HFConfigSpec.isSet(arguments[heterogeneousJSON]), let file = arguments[heterogeneousPath]?.stringValue,
           FileManager.default.isReadableFile(atPath: file) {
            let handle = try ReadOnlyFile(path: file)
            let bytes = try handle.readBytes(ByteRange(offset: 0, count: handle.size))
            arguments[heterogeneousJSON] = .string(String(decoding: bytes, as: UTF8.self))
        }
        let source = "\(path): args"
        let table = try MappingTable.forTrainingArguments(arguments, tables: tables, source: source)
        let document = try table.hfConfig!.configDocument(arguments: arguments, source: source, table: table.name)
        let tokenizer = try tokenizerFolder(given: tokenizerDirectory, arguments: arguments)
        let directory = (NSTemporaryDirectory() as NSString).appendingPathComponent("nembridge-config-\(UUID().uuidString)")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // owns (and removes) the folder from here on, also when a write below fails
        let made = TrainingConfig(directory: directory, table: table.name, tokenizerSource: tokenizer)
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

    public var description: String {
        switch self {
        case .notATokenizerFolder(let path):
            "\(path): not a Hugging Face tokenizer folder (no tokenizer.json or tokenizer_config.json)"
        }
    }
}

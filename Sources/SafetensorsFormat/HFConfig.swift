import TensorCore

/// A model's `config.json`, read as data (never through model code): the whole document is kept
/// in order so it can be written back changing only what must change. Nested `text_config`
/// (multimodal wrappers) is preserved and consulted for the language model's fields.
public struct HFConfig: Sendable, Equatable {
    public let document: JSONValue
    /// The file's exact bytes, so an unchanged config is carried over byte for byte.
    public let bytes: [UInt8]
    public let path: String

    public init(path: String) throws {
        let file = try ReadOnlyFile(path: path)
        try self.init(bytes: try file.readBytes(ByteRange(offset: 0, count: file.size)), path: path)
    }

    public init(bytes: [UInt8], path: String) throws {
        guard SafetensorsHeader.firstInvalidUTF8Offset(bytes) == nil else {
            throw HFFolderError.invalidConfig(file: path, reason: "not UTF-8")
        }
        do {
            document = try JSONParser.parse(bytes, dialect: .python)
        } catch {
            throw HFFolderError.invalidConfig(file: path, reason: error.description)
        }
        guard case .object = document else {
            throw HFFolderError.invalidConfig(file: path, reason: "top level is not an object")
        }
        self.bytes = bytes
        self.path = path
    }

    /// The language-model part: `text_config` when present, else the top level.
    public var textConfig: JSONValue { document["text_config"] ?? document }

    public var architectures: [String] {
        document["architectures"]?.arrayValue?.compactMap(\.stringValue) ?? []
    }

    public var modelType: String? { document["model_type"]?.stringValue }

    /// The declared weight dtype: transformers 5 writes `dtype`, 4.x `torch_dtype`.
    public var dtypeName: String? {
        for source in [textConfig, document] {
            if let name = source["dtype"]?.stringValue ?? source["torch_dtype"]?.stringValue { return name }
        }
        return nil
    }

    public var dtype: DType? { dtypeName.flatMap { DType(torchName: $0) } }

    /// A field of the language model, looked up in `text_config` first.
    public subscript(field: String) -> JSONValue? { textConfig[field] ?? document[field] }
}

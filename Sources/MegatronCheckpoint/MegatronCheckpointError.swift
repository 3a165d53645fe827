import TensorCore

/// What can be wrong with a Megatron-Core / DCP checkpoint. Every case names the file, and the
/// key and byte offset where there is one.
public enum MegatronCheckpointError: Error, Equatable, Sendable, CustomStringConvertible {
    case notACheckpoint(path: String, reason: String)
    case unsupportedFormat(path: String, format: String, hint: String)
    case invalidMetadata(file: String, reason: String)
    case invalidItem(file: String, key: String, offset: Int64, reason: String)
    case missingDataFile(metadata: String, key: String, file: String)
    case chunkOutOfBounds(file: String, key: String, offsets: [Int], sizes: [Int], shape: [Int])
    case overlappingChunks(file: String, key: String, first: [Int], second: [Int])
    case missingStorage(file: String, key: String, offsets: [Int]?)
    case keyNotFound(file: String, key: String)
    case dtypeMismatch(file: String, key: String, expected: DType, actual: DType)
    case unsupportedDType(key: String, dtype: String)
    case unsupportedTransform(file: String, key: String, transform: String)
    case decompressionFailed(file: String, key: String, offset: Int64, reason: String)
    /// A requested box of a tensor is not fully covered by its chunks (or reaches outside it).
    case boxNotCovered(file: String, key: String, offsets: [Int], sizes: [Int], shape: [Int], missingElements: Int)
    /// The common state (`common.pt`, or the `common_state/shard_0_1` item: `key`) is not the
    /// dict Megatron saves.
    case invalidCommonState(file: String, key: String?, offset: Int64, reason: String)
    /// A tensor whose shape holds more bytes than 64 bits can count.
    case tensorTooLarge(file: String, key: String, shape: [Int], dtype: DType)
    /// libzstd refused a parameter or failed while compressing.
    case compressionFailed(reason: String)

    public var description: String {
        // Paths, keys and reasons carry text read from the checkpoint: escaped, one line.
        let p = { (path: String) in MessageText.path(path) }, q = { (text: String) in MessageText.quoted(text) }
        let r = { (text: String) in MessageText.quoted(text, limit: nil) }
        return switch self {
        case .notACheckpoint(let path, let reason):
            "\(p(path)): not a Megatron-Core checkpoint: \(r(reason))"
        case .unsupportedFormat(let path, let format, let hint):
            "\(p(path)): \(r(format)) checkpoints are not supported yet (\(hint))"
        case .invalidMetadata(let file, let reason):
            "\(p(file)): invalid DCP metadata: \(r(reason))"
        case .invalidItem(let file, let key, let offset, let reason):
            "\(p(file)): item `\(q(key))` at offset \(offset): \(r(reason))"
        case .missingDataFile(let metadata, let key, let file):
            "\(p(metadata)): data file `\(q(file))` of `\(q(key))` does not exist"
        case .chunkOutOfBounds(let file, let key, let offsets, let sizes, let shape):
            "\(p(file)): chunk of `\(q(key))` at offsets \(offsets) with sizes \(sizes) is outside the tensor's shape \(shape)"
        case .overlappingChunks(let file, let key, let first, let second):
            "\(p(file)): chunks of `\(q(key))` at offsets \(first) and \(second) overlap"
        case .missingStorage(let file, let key, let offsets):
            "\(p(file)): no storage entry for `\(q(key))`\(offsets.map { " at offsets \($0)" } ?? "")"
        case .keyNotFound(let file, let key):
            "\(p(file)): no key `\(q(key))`"
        case .dtypeMismatch(let file, let key, let expected, let actual):
            "\(p(file)): `\(q(key))` is stored as \(actual), the metadata says \(expected)"
        case .unsupportedDType(let key, let dtype):
            "`\(q(key))`: dtype \(dtype) has no torch equivalent"
        case .unsupportedTransform(let file, let key, let transform):
            "\(p(file)): item `\(q(key))` uses transform `\(q(transform))`, which nembridge does not read"
        case .decompressionFailed(let file, let key, let offset, let reason):
            "\(p(file)): item `\(q(key))` at offset \(offset): zstd: \(r(reason))"
        case .boxNotCovered(let file, let key, let offsets, let sizes, let shape, let missing):
            "\(p(file)): box of `\(q(key))` at offsets \(offsets) with sizes \(sizes) (tensor shape \(shape)) is not covered by chunks: \(missing) elements missing"
        case .invalidCommonState(let file, let key, let offset, let reason):
            "\(p(file)): \(key.map { "item `\(q($0))` " } ?? "data.pkl ")at offset \(offset): not a Megatron common state: \(r(reason))"
        case .tensorTooLarge(let file, let key, let shape, let dtype):
            "\(p(file)): `\(q(key))` of shape \(shape) and dtype \(dtype) has more bytes than 64 bits can count"
        case .compressionFailed(let reason):
            "zstd compression failed: \(r(reason))"
        }
    }
}

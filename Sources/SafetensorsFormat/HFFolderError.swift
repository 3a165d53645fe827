import TensorCore

/// What can be wrong with a Hugging Face model folder as a whole (its index, shards, config).
public enum HFFolderError: Error, Equatable, Sendable, CustomStringConvertible {
    case notADirectory(path: String)
    /// No `model.safetensors` and no index; `found` lists weight-like files that are there.
    case noSafetensorsWeights(directory: String, found: [String])
    case invalidIndex(file: String, reason: String)
    case missingShard(index: String, shard: String)
    /// The index maps `tensor` to `shard`, but the shard has no such tensor.
    case tensorMissingFromShard(index: String, tensor: String, shard: String)
    /// A shard holds a tensor the index does not list.
    case tensorNotInIndex(index: String, tensor: String, shard: String)
    case tensorInTwoShards(tensor: String, first: String, second: String)
    case invalidConfig(file: String, reason: String)
    case tensorNotFound(directory: String, tensor: String)
    case invalidShardSize(text: String)

    public var description: String {
        // Names come from the folder's files (an index, a header): quoted, one line.
        let p = { (path: String) in MessageText.path(path) }, q = { (text: String) in MessageText.quoted(text) }
        return switch self {
        case .notADirectory(let path):
            "\(p(path)): not a directory"
        case .noSafetensorsWeights(let directory, let found):
            found.isEmpty
                ? "\(p(directory)): no model.safetensors or model.safetensors.index.json"
                : "\(p(directory)): no model.safetensors or model.safetensors.index.json (found \(found.prefix(20).map(q).joined(separator: ", ")); pickled .bin weights are not read: convert them to safetensors first)"
        case .invalidIndex(let file, let reason):
            "\(p(file)): invalid index: \(MessageText.quoted(reason, limit: nil))"
        case .missingShard(let index, let shard):
            "\(p(index)): shard `\(q(shard))` listed in weight_map does not exist"
        case .tensorMissingFromShard(let index, let tensor, let shard):
            "\(p(index)): weight_map puts tensor `\(q(tensor))` in `\(q(shard))`, which has no such tensor"
        case .tensorNotInIndex(let index, let tensor, let shard):
            "\(p(index)): tensor `\(q(tensor))` in `\(q(shard))` is missing from weight_map"
        case .tensorInTwoShards(let tensor, let first, let second):
            "tensor `\(q(tensor))` appears in both `\(q(first))` and `\(q(second))`"
        case .invalidConfig(let file, let reason):
            "\(p(file)): invalid config: \(MessageText.quoted(reason, limit: nil))"
        case .tensorNotFound(let directory, let tensor):
            "\(p(directory)): tensor `\(q(tensor))` not found"
        case .invalidShardSize(let text):
            "invalid shard size `\(q(text))` (expected bytes, or a number with KB, MB, GB, TB, KiB, MiB, GiB or TiB)"
        }
    }
}

import Foundation
import TensorCore

/// How tensors are split into `model-0000i-of-0000n.safetensors` files, as transformers does it
/// (`huggingface_hub.split_state_dict_into_shards_factory`): greedy in the given order; a tensor
/// larger than the limit gets a shard of its own, placed before the shard being filled.
public struct HFShardPlan: Sendable, Equatable {
    public struct Shard: Sendable, Equatable {
        public let fileName: String
        public let tensors: [TensorDeclaration]

        public init(fileName: String, tensors: [TensorDeclaration]) {
            self.fileName = fileName
            self.tensors = tensors
        }
    }

    public let shards: [Shard]

    /// Single file `model.safetensors` when everything fits in one shard.
    public var isSharded: Bool { shards.count > 1 }

    public init(shards: [Shard]) { self.shards = shards }

    public static func greedy(_ tensors: [TensorDeclaration], maxShardSize: Int64) -> HFShardPlan {
        var groups: [[TensorDeclaration]] = []
        var current: [TensorDeclaration] = []
        var currentSize: Int64 = 0
        for tensor in tensors {
            let size = tensor.byteCount
            if size > maxShardSize {
                groups.append([tensor])
                continue
            }
            if currentSize + size > maxShardSize {
                groups.append(current)
                current = []
                currentSize = 0
            }
            current.append(tensor)
            currentSize += size
        }
        if !current.isEmpty || groups.isEmpty { groups.append(current) }
        return HFShardPlan(groups: groups)
    }

    /// Files named as transformers names them for `groups.count` shards.
    public init(groups: [[TensorDeclaration]]) {
        if groups.count == 1 {
            shards = [Shard(fileName: "model.safetensors", tensors: groups[0])]
        } else {
            shards = groups.enumerated().map { index, tensors in
                Shard(fileName: Self.shardFileName(index + 1, of: groups.count), tensors: tensors)
            }
        }
    }

    /// `model-00001-of-00004.safetensors`.
    public static func shardFileName(_ number: Int, of count: Int) -> String {
        func pad(_ value: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, 5 - digits.count)) + digits
        }
        return "model-\(pad(number))-of-\(pad(count)).safetensors"
    }

    /// `model.safetensors.index.json` as transformers 5 writes it (`indent=2, sort_keys=True`,
    /// trailing newline). `extraMetadata` (e.g. `total_parameters`) is merged into `metadata`.
    public func indexFileBytes(extraMetadata: [(key: String, value: JSONValue)] = []) -> [UInt8] {
        let totalSize = shards.reduce(Int64(0)) { sum, shard in
            sum + shard.tensors.reduce(Int64(0)) { $0 + $1.byteCount }
        }
        var metadata = extraMetadata.filter { $0.key != "total_size" }
        metadata.append(("total_size", .number(JSONNumber(Int(totalSize)))))
        var weightMap: [(key: String, value: JSONValue)] = []
        for shard in shards {
            for tensor in shard.tensors { weightMap.append((tensor.name, .string(shard.fileName))) }
        }
        let index = JSONValue.object([("metadata", .object(metadata)), ("weight_map", .object(weightMap))])
        var text = JSONWriter.pythonIndented(index)
        text.append("\n")  // in place: `+` copied the 5 MB text of a 51,000-tensor index once more
        return Array(text.utf8)
    }
}

/// Parses sizes as transformers and huggingface_hub accept them (`5GB` = 5·10⁹, `300KB`), plus
/// binary units (`2GiB`) and plain byte counts.
public enum ByteCountParser {
    public static func parse(_ text: String) throws -> Int64 {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if let plain = Int64(trimmed), plain > 0 { return plain }
        let units: [(String, Double)] = [
            ("KIB", 1024), ("MIB", 1024 * 1024), ("GIB", 1024 * 1024 * 1024),
            ("TIB", 1024 * 1024 * 1024 * 1024), ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12),
        ]
        let upper = trimmed.uppercased()
        for (unit, multiplier) in units where upper.hasSuffix(unit) {
            let number = upper.dropLast(unit.count).trimmingCharacters(in: .whitespaces)
            if let value = Double(number), value > 0, value * multiplier < 9e18 {
                return Int64(value * multiplier)
            }
        }
        throw HFFolderError.invalidShardSize(text: text)
    }
}

import Foundation
import TensorCore

/// A Hugging Face model folder: `model.safetensors`, or `model-0000i-of-0000n.safetensors` with
/// `model.safetensors.index.json`, plus `config.json` and the tokenizer and generation files.
/// Only headers are read when opening; the index is checked against the shards both ways.
public final class HFCheckpointFolder: Sendable {
    public static let singleFileName = "model.safetensors"
    public static let indexFileName = "model.safetensors.index.json"

    public let directory: String
    /// Weight files in shard order.
    public let files: [SafetensorsFile]
    /// The parsed index without its `weight_map` (checked against the shards at opening; kept, it
    /// would be a tree of 51,000 strings for a large model), or nil for a single-file folder.
    public let index: JSONValue?
    public let config: HFConfig?
    /// Every tensor with the position of its file in `files`, in file order then data order.
    public let tensors: [(info: SafetensorsTensorInfo, file: Int)]
    private let lookup: [String: Int]

    public init(directory: String) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue
        else { throw HFFolderError.notADirectory(path: directory) }
        self.directory = directory
        let indexPath = (directory as NSString).appendingPathComponent(Self.indexFileName)
        let singlePath = (directory as NSString).appendingPathComponent(Self.singleFileName)
        var shardNames: [String] = []
        var weightMap: [(key: String, value: JSONValue)] = []
        if FileManager.default.fileExists(atPath: indexPath) {
            let document = try Self.readIndex(path: indexPath)
            index = .object(document.objectMembers?.filter { $0.key != "weight_map" } ?? [])
            guard let map = document["weight_map"]?.objectMembers else {
                throw HFFolderError.invalidIndex(file: indexPath, reason: "no `weight_map` object")
            }
            weightMap = map
            var seen = Set<String>()
            for member in map {
                guard let shard = member.value.stringValue else {
                    throw HFFolderError.invalidIndex(
                        file: indexPath, reason: "weight_map value for `\(MessageText.quoted(member.key))` is not a file name")
                }
                guard !shard.utf8.contains(UInt8(ascii: "/")), !shard.utf8.contains(0), shard != ".", shard != "..", !shard.isEmpty else {
                    throw HFFolderError.invalidIndex(file: indexPath, reason: "shard name `\(MessageText.quoted(shard))` is not a plain file name")
                }
                if seen.insert(shard).inserted { shardNames.append(shard) }
            }
            shardNames.sort()
        } else if FileManager.default.fileExists(atPath: singlePath) {
            index = nil
            shardNames = [Self.singleFileName]
        } else {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
            let weightLike = entries.filter { $0.hasSuffix(".safetensors") || $0.hasSuffix(".bin") || $0.hasSuffix(".pt") }
            throw HFFolderError.noSafetensorsWeights(directory: directory, found: weightLike.sorted())
        }
        var opened: [SafetensorsFile] = []
        for name in shardNames {
            let path = (directory as NSString).appendingPathComponent(name)
            guard FileManager.default.fileExists(atPath: path) else {
                throw HFFolderError.missingShard(index: indexPath, shard: name)
            }
            opened.append(try SafetensorsFile(path: path, displayName: path))
        }
        files = opened
        var all: [(info: SafetensorsTensorInfo, file: Int)] = []
        var positions: [String: Int] = [:]
        for (fileIndex, file) in opened.enumerated() {
            for tensor in file.tensors {
                if let earlier = positions[tensor.name] {
                    throw HFFolderError.tensorInTwoShards(
                        tensor: tensor.name, first: shardNames[all[earlier].file], second: shardNames[fileIndex])
                }
                positions[tensor.name] = all.count
                all.append((tensor, fileIndex))
            }
        }
        if index != nil {
            var mapped = [Bool](repeating: false, count: all.count)
            for member in weightMap {
                let shard = member.value.stringValue!
                guard let position = positions[member.key], shardNames[all[position].file] == shard else {
                    throw HFFolderError.tensorMissingFromShard(index: indexPath, tensor: member.key, shard: shard)
                }
                mapped[position] = true
            }
            for (entry, isMapped) in zip(all, mapped) where !isMapped {
                throw HFFolderError.tensorNotInIndex(
                    index: indexPath, tensor: entry.info.name, shard: shardNames[entry.file])
            }
        }
        tensors = all
        lookup = positions
        let configPath = (directory as NSString).appendingPathComponent("config.json")
        config = FileManager.default.fileExists(atPath: configPath) ? try HFConfig(path: configPath) : nil
    }

    private static func readIndex(path: String) throws -> JSONValue {
        let file = try ReadOnlyFile(path: path)
        let bytes = try file.readBytes(ByteRange(offset: 0, count: file.size))
        let document: JSONValue
        do {
            document = try JSONParser.parse(bytes, dialect: .python)
        } catch {
            throw HFFolderError.invalidIndex(file: path, reason: error.description)
        }
        guard case .object = document else {
            throw HFFolderError.invalidIndex(file: path, reason: "top level is not an object")
        }
        return document
    }

    /// The file name (relative to the folder) of each weight file, in shard order.
    public var fileNames: [String] { files.map { ($0.path as NSString).lastPathComponent } }

    public func locate(_ name: String) throws -> (file: SafetensorsFile, tensor: SafetensorsTensorInfo) {
        guard let position = lookup[name] else {
            throw HFFolderError.tensorNotFound(directory: directory, tensor: name)
        }
        let entry = tensors[position]
        return (files[entry.file], entry.info)
    }

    public func contains(_ name: String) -> Bool { lookup[name] != nil }

    /// Throws if a safetensors file changed since it was opened (`ReadOnlyFile.checkUnchanged`).
    public func checkUnchanged() throws {
        try ReadOnlyFile.checkUnchanged(files.map(\.file))
    }

    /// Files that are not weights or the index (config, tokenizer, chat template, generation
    /// config, README…): what a conversion carries over unchanged. Hidden files are skipped.
    public func companionFiles() throws -> [String] {
        // nembridge's own manifest describes the files it sits beside, never a copy of them.
        let weights = Set(fileNames + [Self.indexFileName, "nembridge-manifest.json"])
        let entries = try FileManager.default.contentsOfDirectory(atPath: directory)
        return entries.filter { name in
            guard !name.hasPrefix("."), !weights.contains(name), !name.hasSuffix(".safetensors"),
                !(name.hasPrefix("pytorch_model") && name.hasSuffix(".bin")) else { return false }
            var isDirectory: ObjCBool = false
            let path = (directory as NSString).appendingPathComponent(name)
            return FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) && !isDirectory.boolValue
        }.sorted()
    }
}

import Foundation
import TensorCore
import TorchPickle
import TorchZip

/// Bytes items: Megatron's ShardedObjects (`torch.save([value])`), its common state, and any
/// other non-tensor value DCP saved. Python: `FileSystemReader.read_data` for `LoadItemType.BYTE_IO`.
extension TorchDistCheckpoint {
    /// The key Megatron-Core ≥ 0.19 stores the common state under.
    public static let commonStateKey = "common_state/shard_0_1"

    func objectStorageKey(_ key: String) throws -> DCPStorageKey {
        guard bytesItemKeys.contains(key) else { throw MegatronCheckpointError.keyNotFound(file: metadataPath, key: key) }
        return DCPStorageKey(fqn: key, offsets: nil)
    }

    /// The item's bytes, decoded if it was compressed (normally a `torch.save` zip).
    public func rawBytes(key: String) throws -> [UInt8] {
        let (file, range, _) = try itemBytes(try objectStorageKey(key))
        return try file.readBytes(range)
    }

    /// The value tree of `data.pkl` in the item's `torch.save` zip; nothing is executed. A
    /// ShardedObject is a one-element list (`[value]`), as Megatron saved it. Tensors inside
    /// appear as `_rebuild_tensor_v2(persistent id, …)` calls, unresolved.
    public func objectValue(key: String) throws -> PickleValue {
        let storageKey = try objectStorageKey(key)
        let (archive, info, decoded) = try itemArchive(storageKey)
        let pickle = try record("data.pkl", of: archive, info: info, key: key, decoded: decoded)
        do {
            return try PickleReader.read(pickle, globals: CheckpointGlobals.policy)
        } catch {
            throw MegatronCheckpointError.invalidItem(
                file: dataFile(info).path, key: key, offset: info.offset, reason: "data.pkl: \(error)")
        }
    }

    /// The common state dict (`args`, `checkpoint_version`, `iteration`, …): `common.pt` in the
    /// checkpoint directory when it exists (Megatron-Core ≤ 0.18, and preferred by the loader
    /// when present), else the `common_state/shard_0_1` item with its one-element list
    /// unwrapped. Nil when there is neither (plain DCP checkpoints). Anything but a dict of that
    /// shape throws `invalidCommonState` naming the file.
    public func commonState() throws -> PickleValue? {
        let commonPath = (directory as NSString).appendingPathComponent("common.pt")
        if FileManager.default.fileExists(atPath: commonPath) {
            return try Self.checkedCommonState(try Self.readTorchSave(path: commonPath), file: commonPath, key: nil)
        }
        guard metadata.bytesItems.contains(Self.commonStateKey) else { return nil }
        let value = try objectValue(key: Self.commonStateKey)
        let info = try storageInfo(key: Self.commonStateKey, offsets: nil)
        let state: PickleValue
        if case .list(let items) = value, items.count == 1 { state = items[0] } else { state = value }
        return try Self.checkedCommonState(state, file: dataFile(info).path, key: Self.commonStateKey)
    }

    /// `value` when it has the shape Megatron saves its common state in: a dict with str keys,
    /// `args` an `argparse.Namespace` (or None), `iteration` an int and `checkpoint_version` a
    /// number when present.
    static func checkedCommonState(_ value: PickleValue, file: String, key: String?) throws -> PickleValue {
        func fail(_ reason: String) -> MegatronCheckpointError { .invalidCommonState(file: file, key: key, reason: reason) }
        guard case .dict(let entries) = value else { throw fail("the saved object is a \(value.kindName), not a dict") }
        for entry in entries {
            guard let name = entry.key.stringValue else { throw fail("a key is a \(entry.key.kindName), not a str") }
            switch name {
            case "args":
                if entry.value.isNone { continue }
                guard entry.value.isObject(of: "argparse", "Namespace") || entry.value.isObject(of: "types", "SimpleNamespace"),
                    case .dict(let fields)? = entry.value.object?.state
                else { throw fail("`args` is a \(entry.value.kindName), not an argparse.Namespace") }
                if let field = fields.first(where: { $0.key.stringValue == nil }) {
                    throw fail("an `args` field name is a \(field.key.kindName), not a str")
                }
            case "iteration":
                guard entry.value.int64Value != nil else { throw fail("`iteration` is a \(entry.value.kindName), not an int") }
            case "checkpoint_version":
                guard entry.value.doubleValue != nil else {
                    throw fail("`checkpoint_version` is a \(entry.value.kindName), not a number")
                }
            default:
                continue
            }
        }
        return value
    }

    /// The value tree of a stand-alone `torch.save` file (`common.pt`).
    public static func readTorchSave(path: String) throws -> PickleValue {
        let pickle: [UInt8]
        do {
            let archive = try ZipArchive(path: path)
            guard let entry = archive.record("data.pkl") else {
                throw MegatronCheckpointError.invalidItem(file: path, key: "data.pkl", offset: 0, reason: "not a torch.save archive: no `data.pkl` record")
            }
            pickle = try archive.contents(of: entry)
        } catch let error as ZipError {
            var reason = error.description
            if reason.hasPrefix("\(path): ") { reason.removeFirst(path.count + 2) }
            throw MegatronCheckpointError.invalidItem(file: path, key: "data.pkl", offset: 0, reason: reason)
        }
        do {
            return try PickleReader.read(pickle, globals: CheckpointGlobals.policy)
        } catch {
            throw MegatronCheckpointError.invalidItem(file: path, key: "data.pkl", offset: 0, reason: "\(error)")
        }
    }
}

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
        try decodedObject(key: key).value
    }

    func decodedObject(key: String) throws -> (value: PickleValue, archive: ZipArchive, info: DCPStorageInfo, decoded: Bool) {
        let storageKey = try objectStorageKey(key)
        let (archive, info, decoded) = try itemArchive(storageKey)
        let pickle = try record("data.pkl", of: archive, info: info, key: key, decoded: decoded)
        do {
            return (try PickleReader.read(pickle, globals: CheckpointGlobals.policy), archive, info, decoded)
        } catch {
            throw MegatronCheckpointError.invalidItem(
                file: dataFile(info).path, key: key, offset: info.offset,
                reason: "data.pkl: \(error)" + (decoded ? " (in the zstd-decoded item)" : ""))
        }
    }

    /// The object item `key` decoded and checked for the shape Megatron-Core saves it in, so that
    /// `verify DIR` catches a damaged object even when its checksums were rewritten to match: the
    /// common state as `commonState()` checks it; a ShardedObject (`…/shard_…`) a one-element
    /// list; an `_extra_state` value None, bytes, a BytesIO or a tensor whose storage record is
    /// in the archive. Any other item (a plain DCP object) is only decoded.
    public func checkedObjectValue(key: String) throws -> PickleValue {
        let (value, archive, info, decoded) = try decodedObject(key: key)
        let path = dataFile(info).path
        func fail(_ reason: String) -> MegatronCheckpointError {
            .invalidItem(file: path, key: key, offset: info.offset, reason: reason + (decoded ? " (in the zstd-decoded item)" : ""))
        }
        if key == Self.commonStateKey {
            let state: PickleValue
            if case .list(let items) = value, items.count == 1 { state = items[0] } else { state = value }
            _ = try Self.checkedCommonState(state, file: path, key: key, offset: info.offset)
            return value
        }
        guard let owner = key.split(separator: "/").first, key.contains("/shard_") else { return value }
        // Megatron-Core saves every ShardedObject as `[data]`.
        guard case .list(let items) = value, items.count == 1 else {
            throw fail("a ShardedObject is saved as a one-element list, this one is a \(value.kindName)"
                + (value.items.map { " of \($0.count)" } ?? ""))
        }
        guard owner.hasSuffix("._extra_state") else { return value }
        let state = items[0]
        if state.isNone || state.bytesValue != nil || state.isObject(of: "_io", "BytesIO") || state.isObject(of: "io", "BytesIO") {
            return value
        }
        guard TorchSavedTensor.isTensor(state) else {
            throw fail("`_extra_state` is a \(state.kindName), not None, bytes, a BytesIO or a tensor")
        }
        let saved: TorchSavedTensor
        do {
            saved = try TorchSavedTensor(value: state, context: path, name: key)
        } catch MegatronCheckpointError.invalidItem(_, _, _, let reason) {
            throw fail("`_extra_state`: \(reason)")
        }
        guard archive.record("data/\(saved.storageKey)") != nil else {
            throw fail("`_extra_state` names storage record `data/\(MessageText.quoted(saved.storageKey))`, which the archive lacks")
        }
        return value
    }

    /// The common state dict (`args`, `checkpoint_version`, `iteration`, …): `common.pt` in the
    /// checkpoint directory when it exists (Megatron-Core ≤ 0.18, and preferred by the loader
    /// when present), else the `common_state/shard_0_1` item with its one-element list
    /// unwrapped. Nil when there is neither (plain DCP checkpoints). Anything but a dict of that
    /// shape throws `invalidCommonState` naming the file.
    public func commonState() throws -> PickleValue? {
        let commonPath = (directory as NSString).appendingPathComponent("common.pt")
        if FileManager.default.fileExists(atPath: commonPath) {
            let (value, offset) = try Self.readTorchSaveRecord(path: commonPath)
            return try Self.checkedCommonState(value, file: commonPath, key: nil, offset: offset)
        }
        guard metadata.bytesItems.contains(Self.commonStateKey) else { return nil }
        let value = try objectValue(key: Self.commonStateKey)
        let info = try storageInfo(key: Self.commonStateKey, offsets: nil)
        let state: PickleValue
        if case .list(let items) = value, items.count == 1 { state = items[0] } else { state = value }
        return try Self.checkedCommonState(state, file: dataFile(info).path, key: Self.commonStateKey, offset: info.offset)
    }

    /// `value` when it has the shape Megatron saves its common state in: a dict with str keys,
    /// `args` an `argparse.Namespace` (or None), `iteration` an int and `checkpoint_version` a
    /// number when present. `offset` is where the pickle is: the item's offset in its data file,
    /// or the `data.pkl` record's in `common.pt`.
    public static func checkedCommonState(_ value: PickleValue, file: String, key: String?, offset: Int64) throws -> PickleValue {
        if let reason = commonStateProblem(value) {
            throw MegatronCheckpointError.invalidCommonState(file: file, key: key, offset: offset, reason: reason)
        }
        return value
    }

    /// What is wrong with `value` as a common state, or nil. Legacy rank files hold the same
    /// entries at their top level, so their reader checks them with this too.
    static func commonStateProblem(_ value: PickleValue) -> String? {
        // A dict, or an OrderedDict (whose entries are set on the object), nothing else.
        guard case .dict(let entries) = value else {
            guard value.isObject(of: "collections", "OrderedDict"), let entries = value.dictEntries else {
                return "the saved object is a \(value.kindName), not a dict"
            }
            return commonStateProblem(.dict(entries))
        }
        for entry in entries {
            guard let name = entry.key.stringValue else { return "a key is a \(entry.key.kindName), not a str" }
            switch name {
            case "args":
                if entry.value.isNone { continue }
                guard entry.value.isObject(of: "argparse", "Namespace") || entry.value.isObject(of: "types", "SimpleNamespace"),
                    case .dict(let fields)? = entry.value.object?.state
                else { return "`args` is a \(entry.value.kindName), not an argparse.Namespace" }
                if let field = fields.first(where: { $0.key.stringValue == nil }) {
                    return "an `args` field name is a \(field.key.kindName), not a str"
                }
            case "iteration":
                guard entry.value.int64Value != nil else { return "`iteration` is a \(entry.value.kindName), not an int" }
            case "checkpoint_version":
                guard entry.value.doubleValue != nil else { return "`checkpoint_version` is a \(entry.value.kindName), not a number" }
            default:
                continue
            }
        }
        return nil
    }

    /// The value tree of a stand-alone `torch.save` file (`common.pt`).
    public static func readTorchSave(path: String) throws -> PickleValue {
        try readTorchSaveRecord(path: path).value
    }

    /// The value tree of a stand-alone `torch.save` file and the offset of its `data.pkl` record
    /// (local header), which errors name.
    public static func readTorchSaveRecord(path: String) throws -> (value: PickleValue, offset: Int64) {
        let pickle: [UInt8]
        let offset: Int64
        do {
            let archive = try ZipArchive(path: path)
            guard let entry = archive.record("data.pkl") else {
                throw MegatronCheckpointError.invalidItem(file: path, key: "data.pkl", offset: 0, reason: "not a torch.save archive: no `data.pkl` record")
            }
            offset = entry.localHeaderOffset
            pickle = try archive.contents(of: entry)
        } catch let error as ZipError {
            var reason = error.description
            if reason.hasPrefix("\(path): ") { reason.removeFirst(path.count + 2) }
            throw MegatronCheckpointError.invalidItem(file: path, key: "data.pkl", offset: 0, reason: reason)
        }
        do {
            return (try PickleReader.read(pickle, globals: CheckpointGlobals.policy), offset)
        } catch {
            throw MegatronCheckpointError.invalidItem(file: path, key: "data.pkl", offset: offset, reason: "\(error)")
        }
    }
}

import Foundation
import TensorCore

/// `metadata.json` of a Megatron distributed checkpoint: its presence and validity is what makes
/// a directory a "distributed checkpoint".
///
/// Python: `megatron/core/dist_checkpointing/core.py` `CheckpointingConfig` and `maybe_load_config`.
/// Fields other than the four known ones are kept in `document` and otherwise ignored, as newer
/// loaders ignore `common_backend` (dropped after core_v0.18).
public struct ShardedBackendMetadata: Sendable, Equatable {
    public static let fileName = "metadata.json"

    /// `torch_dist`, or `zarr` for checkpoints from before core_v0.16.
    public var shardedBackend: String
    public var shardedBackendVersion: Int
    /// `torch` up to core_v0.18; absent later.
    public var commonBackend: String?
    public var commonBackendVersion: Int?
    /// The whole document as read.
    public var document: JSONValue

    /// Interprets a parsed `metadata.json`; `file` names it in errors.
    public init(json: JSONValue, file: String) throws {
        func fail(_ reason: String) -> MegatronCheckpointError { .invalidMetadata(file: file, reason: reason) }
        guard json.objectMembers != nil else { throw fail("expected a JSON object") }
        guard let backend = json["sharded_backend"]?.stringValue else { throw fail("no string `sharded_backend`") }
        shardedBackend = backend
        if let version = json["sharded_backend_version"], !version.isNull {
            guard let value = version.intValue else { throw fail("`sharded_backend_version` is not an integer") }
            shardedBackendVersion = value
        } else {
            shardedBackendVersion = 1
        }
        if let common = json["common_backend"], !common.isNull {
            guard let value = common.stringValue else { throw fail("`common_backend` is not a string") }
            commonBackend = value
        } else {
            commonBackend = nil
        }
        if let version = json["common_backend_version"], !version.isNull {
            guard let value = version.intValue else { throw fail("`common_backend_version` is not an integer") }
            commonBackendVersion = value
        } else {
            commonBackendVersion = nil
        }
        document = json
    }

    /// Reads and interprets `path` (a regular file).
    public init(path: String) throws {
        let bytes = try ReadOnlyFile.contents(atPath: path, limit: Self.sizeLimit)
        let json: JSONValue
        do {
            json = try JSONParser.parse(bytes)
        } catch {
            throw MegatronCheckpointError.invalidMetadata(file: path, reason: "not JSON: \(error)")
        }
        try self.init(json: json, file: path)
    }

    /// Megatron writes four short fields; anything near this size is not a `metadata.json`.
    static let sizeLimit: Int64 = 1 << 20
}

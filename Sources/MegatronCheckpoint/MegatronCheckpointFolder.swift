import Foundation
import TensorCore

/// Where a Megatron-Core checkpoint is and which format it has, found from a path that is a
/// save directory (with `latest_checkpointed_iteration.txt`), an iteration directory
/// (`iter_0000100/`, `release/`) or a plain PyTorch DCP directory.
///
/// Detection follows Megatron's `_get_checkpoint_format` (`megatron/training/checkpointing.py`):
/// a valid `metadata.json` means `torch_dist`; otherwise any `mp_rank_0*` entry means the legacy
/// `torch` format; otherwise a `.metadata` file means a plain DCP checkpoint (`torch_dcp`).
public struct MegatronCheckpointFolder: Sendable, Equatable {
    /// The readable formats.
    public enum Format: String, Sendable {
        /// Megatron dist-ckpt with the `torch_dist` backend: `metadata.json` + DCP.
        case torchDist = "torch_dist"
        /// A DCP directory without `metadata.json` (`--ckpt-format torch_dcp`, or any
        /// `torch.distributed.checkpoint.save`).
        case dcp = "torch_dcp"
        /// The legacy per-rank format (`--ckpt-format torch`): `mp_rank_*/model_optim_rng.pt`.
        case legacyTorch = "torch"
    }

    /// The path as given.
    public let path: String
    /// The save directory, when `path` was one (it holds the tracker file).
    public let saveDirectory: String?
    /// The directory holding `.metadata` and the `.distcp` files (or the `mp_rank_*` directories).
    public let directory: String
    /// From the tracker file, or from the directory's name; nil for a plain DCP directory.
    public let iteration: MegatronIteration?
    public let format: Format
    /// `metadata.json`, for `torchDist`.
    public let backend: ShardedBackendMetadata?

    /// `directory/.metadata`.
    public var metadataPath: String { (directory as NSString).appendingPathComponent(".metadata") }
    /// `directory/common.pt` (core_v0.18 and earlier keep the common state there).
    public var commonStatePath: String { (directory as NSString).appendingPathComponent("common.pt") }

    /// Finds the checkpoint at `path`; throws `notACheckpoint` or `unsupportedFormat` naming the
    /// directory and what was found.
    public init(path: String) throws {
        self.path = path
        guard Self.isDirectory(path) else {
            if FileManager.default.fileExists(atPath: path) {
                throw MegatronCheckpointError.notACheckpoint(path: path, reason: "not a directory")
            }
            throw MegatronCheckpointError.notACheckpoint(path: path, reason: "no such directory")
        }
        let tracker = (path as NSString).appendingPathComponent(MegatronIteration.trackerFileName)
        var directory = path
        var iteration = MegatronIteration(directoryName: (Self.standardized(path) as NSString).lastPathComponent)
        var saveDirectory: String?
        if FileManager.default.fileExists(atPath: tracker) {
            let latest = try MegatronIteration(trackerFile: tracker)
            directory = (path as NSString).appendingPathComponent(latest.directoryName)
            guard Self.isDirectory(directory) else {
                throw MegatronCheckpointError.notACheckpoint(
                    path: directory, reason: "\(MegatronIteration.trackerFileName) names iteration \(latest) but its directory does not exist")
            }
            iteration = latest
            saveDirectory = path
        }
        self.directory = directory
        self.saveDirectory = saveDirectory
        switch try Self.detectFormat(directory: directory) {
        case .torchDist(let backend):
            format = .torchDist
            self.backend = backend
        case .dcp:
            format = .dcp
            backend = nil
        case .legacyTorch:
            format = .legacyTorch
            backend = nil
        }
        self.iteration = iteration
    }

    /// What `detectFormat` found in a directory.
    public enum Detected: Sendable, Equatable {
        case torchDist(ShardedBackendMetadata)
        case dcp
        case legacyTorch
    }

    /// Megatron's `_get_checkpoint_format` on one directory. Unreadable formats throw
    /// `unsupportedFormat` saying what the directory holds and what to do.
    public static func detectFormat(directory: String) throws -> Detected {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw MegatronCheckpointError.notACheckpoint(path: directory, reason: "cannot list the directory (\(error.localizedDescription))")
        }
        let metadataJSON = (directory as NSString).appendingPathComponent(ShardedBackendMetadata.fileName)
        // An invalid metadata.json is not an error: Megatron's `maybe_load_config` treats the
        // directory as not distributed and goes on to the other checks. One that cannot be read
        // (a directory, a FIFO, no permission) is, as `open()` fails there too.
        var backend: ShardedBackendMetadata?
        if names.contains(ShardedBackendMetadata.fileName) {
            do {
                backend = try ShardedBackendMetadata(path: metadataJSON)
            } catch is MegatronCheckpointError {
                backend = nil
            }
        }
        if let backend {
            switch backend.shardedBackend {
            case "torch_dist":
                return .torchDist(backend)
            case "zarr":
                throw MegatronCheckpointError.unsupportedFormat(
                    path: directory, format: "zarr (dist-ckpt backend removed in Megatron-Core 0.16)",
                    hint: "load it with Megatron-Core <= 0.15 and save it again with --ckpt-format torch_dist")
            default:
                throw MegatronCheckpointError.unsupportedFormat(
                    path: directory, format: "`\(MessageText.quoted(backend.shardedBackend))` dist-ckpt backend",
                    hint: "only the torch_dist backend is read")
            }
        }
        if names.contains(where: { $0.hasPrefix("mp_rank_0") }) {
            return .legacyTorch
        }
        if names.contains(".metadata") {
            return .dcp
        }
        let iterations = names.filter { MegatronIteration(directoryName: $0) != nil }.sorted()
        if !iterations.isEmpty {
            throw MegatronCheckpointError.notACheckpoint(
                path: directory,
                reason: "no \(MegatronIteration.trackerFileName); pass one of its iteration directories (\(iterations.suffix(3).joined(separator: ", ")))")
        }
        throw MegatronCheckpointError.notACheckpoint(
            path: directory, reason: "no \(MegatronIteration.trackerFileName), metadata.json, mp_rank_* or .metadata")
    }

    static func isDirectory(_ path: String) -> Bool {
        var flag: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &flag) && flag.boolValue
    }

    static func standardized(_ path: String) -> String {
        URL(fileURLWithPath: path).standardizedFileURL.path
    }
}

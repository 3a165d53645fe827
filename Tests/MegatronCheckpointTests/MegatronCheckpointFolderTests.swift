import Foundation
import MegatronCheckpoint
import NembridgeTestSupport
import Testing

struct MegatronCheckpointFolderTests {
    @Test("a save directory resolves through latest_checkpointed_iteration.txt")
    func saveDirectory() throws {
        let path = TestCheckpoints.path("megatron/gpt-dense-ws1")
        let folder = try MegatronCheckpointFolder(path: path)
        #expect(folder.format == .torchDist)
        #expect(folder.iteration == .number(1))
        #expect(folder.saveDirectory == path)
        #expect(folder.directory.hasSuffix("/iter_0000001"))
        #expect(folder.backend?.shardedBackend == "torch_dist")
        #expect(folder.backend?.shardedBackendVersion == 1)
        #expect(folder.backend?.commonBackend == nil)
    }

    @Test("an iteration directory is read directly, its iteration taken from the name")
    func iterationDirectory() throws {
        let folder = try MegatronCheckpointFolder(path: TestCheckpoints.path("megatron/gpt-moe-ep2/iter_0000001"))
        #expect(folder.format == .torchDist)
        #expect(folder.iteration == .number(1))
        #expect(folder.saveDirectory == nil)
    }

    @Test("a plain DCP directory is torch_dcp")
    func plainDCP() throws {
        let folder = try MegatronCheckpointFolder(path: TestCheckpoints.path("megatron/dcp-zstd/zstd"))
        #expect(folder.format == .dcp)
        #expect(folder.iteration == nil)
        #expect(folder.backend == nil)
    }

    @Test("tracker text: integers > 0 and release, whitespace stripped")
    func trackerText() throws {
        #expect(try MegatronIteration(trackerText: "100\n", file: "t") == .number(100))
        #expect(try MegatronIteration(trackerText: " release ", file: "t") == .release)
        #expect(MegatronIteration.number(100).directoryName == "iter_0000100")
        #expect(MegatronIteration.number(12_345_678).directoryName == "iter_12345678")
        #expect(MegatronIteration(directoryName: "iter_0000100") == .number(100))
        #expect(MegatronIteration(directoryName: "iter_100") == nil)
        for bad in ["", "abc", "0", "-3", "1.5"] {
            let error = #expect(throws: MegatronCheckpointError.self) { try MegatronIteration(trackerText: bad, file: "save/latest_checkpointed_iteration.txt") }
            #expect(error?.description.hasPrefix("save/latest_checkpointed_iteration.txt: ") == true)
        }
    }

    /// A scratch save directory with the given entries (files with contents, or directories).
    func makeDirectory(_ entries: [String: String?]) throws -> String {
        let root = try TestCheckpoints.scratchDirectory("folder")
        for (name, contents) in entries {
            let path = (root as NSString).appendingPathComponent(name)
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            if let contents {
                try Data(contents.utf8).write(to: URL(fileURLWithPath: path))
            } else {
                try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            }
        }
        return root
    }

    @Test("a tracker naming a missing iteration says which directory is missing")
    func missingIteration() throws {
        let root = try makeDirectory(["latest_checkpointed_iteration.txt": "7", "iter_0000001": nil])
        let error = #expect(throws: MegatronCheckpointError.self) { try MegatronCheckpointFolder(path: root) }
        guard case .notACheckpoint(let path, let reason)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(path.hasSuffix("iter_0000007"))
        #expect(reason.contains("iteration 7"))
    }

    @Test("a garbage tracker file is named in the error")
    func garbageTracker() throws {
        let root = try makeDirectory(["latest_checkpointed_iteration.txt": "latest"])
        let error = #expect(throws: MegatronCheckpointError.self) { try MegatronCheckpointFolder(path: root) }
        #expect(error?.description.contains("latest_checkpointed_iteration.txt") == true)
    }

    @Test("legacy torch checkpoints are detected by their mp_rank_* directories; a broken rank file is an error naming it")
    func legacyTorch() throws {
        let root = try makeDirectory(["latest_checkpointed_iteration.txt": "release", "release/mp_rank_00/model_optim_rng.pt": "x"])
        let folder = try MegatronCheckpointFolder(path: root)
        #expect(folder.format == .legacyTorch)
        #expect(folder.directory.hasSuffix("/release"))
        let error = #expect(throws: MegatronCheckpointError.self) { try LegacyTorchCheckpoint(path: root) }
        guard case .invalidItem(let file, _, _, let reason)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(file.hasSuffix("release/mp_rank_00/model_optim_rng.pt"))
        #expect(reason.contains("not a torch.save archive"))
    }

    @Test("an invalid metadata.json falls through to the other checks, as in Megatron")
    func invalidMetadataJSON() throws {
        let root = try makeDirectory(["metadata.json": "{not json", "mp_rank_00_000/model_optim_rng.pt": "x"])
        #expect(try MegatronCheckpointFolder(path: root).format == .legacyTorch)
        let zarr = try makeDirectory(["metadata.json": #"{"sharded_backend": "zarr", "sharded_backend_version": 1}"#])
        let error = #expect(throws: MegatronCheckpointError.self) { try MegatronCheckpointFolder(path: zarr) }
        #expect(error?.description.contains("zarr") == true)
    }

    @Test("a directory with nothing of a checkpoint, or with iterations but no tracker")
    func notACheckpoint() throws {
        let empty = try makeDirectory(["README": "hi"])
        let error = #expect(throws: MegatronCheckpointError.self) { try MegatronCheckpointFolder(path: empty) }
        #expect(error?.description.hasPrefix(empty) == true)
        let noTracker = try makeDirectory(["iter_0000002": nil, "iter_0000004": nil])
        let second = #expect(throws: MegatronCheckpointError.self) { try MegatronCheckpointFolder(path: noTracker) }
        #expect(second?.description.contains("iter_0000004") == true)
        #expect(throws: MegatronCheckpointError.self) { try MegatronCheckpointFolder(path: empty + "/missing") }
    }
}

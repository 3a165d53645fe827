import Execution
import Foundation
import NembridgeKit
import NembridgeTestSupport
import TensorCore
import Testing

/// A source that changes while a conversion reads it must not yield a published output (it could
/// mix old and new bytes, and its manifest would vouch for them).
struct ChangedSourceTests {
    enum Change: String, CaseIterable, CustomTestStringConvertible {
        case writtenInPlace, truncated, replacedByRename
        var testDescription: String { rawValue }

        func apply(to path: String) throws {
            switch self {
            case .writtenInPlace:
                // Same size, one data byte different, as a concurrent re-download would leave it.
                let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
                try handle.seekToEnd()
                let end = try handle.offset()
                try handle.seek(toOffset: end - 1)
                let last = try handle.read(upToCount: 1) ?? Data([0])
                try handle.seek(toOffset: end - 1)
                try handle.write(contentsOf: Data([last[0] ^ 0xFF]))
                try handle.close()
            case .truncated:
                let size = try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int ?? 0
                #expect(truncate(path, off_t(size - 2)) == 0)
            case .replacedByRename:
                try FileManager.default.copyItem(atPath: path, toPath: path + ".new")
                #expect(rename(path + ".new", path) == 0)
            }
        }
    }

    static func copy(_ fixture: String) throws -> String {
        let scratch = try TestCheckpoints.scratchDirectory("changed")
        try FileManager.default.copyItem(atPath: TestCheckpoints.path(fixture), toPath: scratch + "/src")
        return scratch
    }

    @Test("import: a source changed after planning is an error naming it, and nothing is published", arguments: Change.allCases)
    func importSeesChange(_ change: Change) throws {
        let scratch = try Self.copy("llama3-tiny/hf")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let plan = try HFImport(source: scratch + "/src", output: scratch + "/out")
        try change.apply(to: scratch + "/src/model.safetensors")
        #expect {
            try plan.run(executor: MoveExecutor(workers: 2))
        } throws: { error in
            // A truncated file fails its read first (past the end); the other changes are caught
            // by the identity check before publishing.
            guard let failure = error as? FileIOError, failure.path.hasSuffix("model.safetensors") else { return false }
            if case .changedWhileReading = failure { return true }
            return change == .truncated
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch).sorted() == ["src"])
    }

    @Test("export and reshard: a changed .distcp is an error, and nothing is published")
    func exportAndReshardSeeChange() throws {
        let scratch = try TestCheckpoints.scratchDirectory("changed")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try HFImport(source: TestCheckpoints.path("llama3-tiny/hf"), output: scratch + "/mc").run(executor: MoveExecutor(workers: 2))
        let export = try MegatronExport(checkpoint: scratch + "/mc", output: scratch + "/hf")
        var reshardOptions = MegatronReshard.Options()
        reshardOptions.tensorParallel = 2
        let reshard = try MegatronReshard(checkpoint: scratch + "/mc", output: scratch + "/tp2", options: reshardOptions)
        try Change.writtenInPlace.apply(to: scratch + "/mc/release/__1_0.distcp")
        #expect(throws: FileIOError.self) { try export.run(executor: MoveExecutor(workers: 2)) }
        #expect(throws: FileIOError.self) { try reshard.run(executor: MoveExecutor(workers: 2)) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch).sorted() == ["mc"])
    }

    @Test("reshard to the legacy format: a changed .distcp is an error, and nothing is published", arguments: Change.allCases)
    func legacyReshardSeesChange(_ change: Change) throws {
        let scratch = try TestCheckpoints.scratchDirectory("changed-legacy")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try HFImport(source: TestCheckpoints.path("llama3-tiny/hf"), output: scratch + "/mc").run(executor: MoveExecutor(workers: 2))
        var options = MegatronReshard.Options()
        options.tensorParallel = 2
        options.format = .torch
        let reshard = try MegatronReshard(checkpoint: scratch + "/mc", output: scratch + "/legacy", options: options)
        try change.apply(to: scratch + "/mc/release/__1_0.distcp")
        #expect {
            try reshard.run(executor: MoveExecutor(workers: 2))
        } throws: { error in
            guard let failure = error as? FileIOError, failure.path.hasSuffix("__1_0.distcp") else { return false }
            if case .changedWhileReading = failure { return true }
            return change == .truncated
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch).sorted() == ["mc"])
    }

    @Test("an unchanged source passes the check")
    func unchangedPasses() throws {
        let file = try ReadOnlyFile(path: TestCheckpoints.path("llama3-tiny/hf/model.safetensors"))
        try file.checkUnchanged()
    }
}

import Foundation
import NembridgeTestSupport
import Testing

/// Runs the built `nembridge` binary as a user would.
struct CommandLineTests {
    struct Outcome {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    static let binary: String = {
        // The test bundle sits next to the products of the same build.
        var url = Bundle.main.bundleURL
        while url.pathComponents.count > 1 && !FileManager.default.fileExists(atPath: url.appendingPathComponent("nembridge").path) {
            url.deleteLastPathComponent()
        }
        return url.appendingPathComponent("nembridge").path
    }()

    /// Runs the binary; after `timeout` seconds it is terminated (status then records the signal).
    static func run(_ arguments: [String], timeout: TimeInterval = 600) throws -> Outcome {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let watchdog = DispatchWorkItem { if process.isRunning { process.terminate() } }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: watchdog)
        defer { watchdog.cancel() }
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Outcome(status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
                       stderr: String(decoding: stderr, as: UTF8.self))
    }

    @Test("the binary is built next to the tests")
    func binaryExists() {
        #expect(FileManager.default.isExecutableFile(atPath: Self.binary), "\(Self.binary)")
    }

    @Test("help lists the commands")
    func help() throws {
        let outcome = try Self.run(["--help"])
        #expect(outcome.status == 0)
        #expect(outcome.stdout.contains("inspect"))
        #expect(outcome.stdout.contains("reshard"))
    }

    @Test("inspect --json is valid JSON with every tensor")
    func inspectJSON() throws {
        let outcome = try Self.run(["inspect", TestCheckpoints.path("llama32-tied-tiny/hf"), "--json"])
        #expect(outcome.status == 0)
        let object = try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [String: Any]
        #expect(object?["kind"] as? String == "hf-folder")
        let tensors = object?["tensors"] as? [[String: Any]] ?? []
        #expect(!tensors.isEmpty)
        #expect(!tensors.contains { ($0["name"] as? String) == "lm_head.weight" }, "tied: no lm_head stored")
    }

    @Test("bad input: exit status 1, one line naming the file, nothing on stdout")
    func badInput() throws {
        let path = TestCheckpoints.path("malformed-safetensors/overlap.safetensors")
        let outcome = try Self.run(["inspect", path])
        #expect(outcome.status == 1)
        #expect(outcome.stdout.isEmpty)
        #expect(outcome.stderr.hasPrefix("nembridge: error: \(path): invalid offset for tensor"))
        let missing = try Self.run(["inspect", "/nonexistent/model"])
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("/nonexistent/model"))
    }

    @Test("reshard --dry-run writes nothing")
    func dryRun() throws {
        let scratch = try TestCheckpoints.scratchDirectory("cli")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let outcome = try Self.run(["reshard", "--hf", TestCheckpoints.path("llama3-tiny/hf"), "--out", scratch + "/out",
                                    "--max-shard-size", "100KB", "--dry-run"])
        #expect(outcome.status == 0)
        #expect(outcome.stdout.contains("model-00001-of-00005.safetensors"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch).isEmpty)
        let badSize = try Self.run(["reshard", "--hf", TestCheckpoints.path("llama3-tiny/hf"), "--out", scratch + "/out",
                                    "--max-shard-size", "huge"])
        #expect(badSize.status == 1)
        #expect(badSize.stderr.contains("invalid shard size `huge`"))
    }

    // MARK: Hostile input, end to end

    /// `nembridge` must fail at once with status 1 and one line on stderr that names `file`.
    static func expectOneLineFailure(_ arguments: [String], naming file: String, saying text: String,
                                     sourceLocation: SourceLocation = #_sourceLocation) throws {
        let start = Date()
        let outcome = try run(arguments, timeout: 30)
        #expect(Date().timeIntervalSince(start) < 20, "\(arguments) took too long (blocked?)", sourceLocation: sourceLocation)
        #expect(outcome.status == 1, "\(arguments): status \(outcome.status), \(outcome.stderr)", sourceLocation: sourceLocation)
        #expect(outcome.stderr.hasPrefix("nembridge: error: \(file)"), "\(outcome.stderr)", sourceLocation: sourceLocation)
        #expect(outcome.stderr.contains(text), "\(outcome.stderr)", sourceLocation: sourceLocation)
        #expect(outcome.stderr.filter { $0 == "\n" }.count == 1 && outcome.stderr.hasSuffix("\n"), "\(outcome.stderr)",
                sourceLocation: sourceLocation)
    }

    @Test("a FIFO or a directory where a file is expected: status 1 at once, naming it", arguments: [
        ("config.json", true), ("config.json", false), ("model.safetensors", true), ("model.safetensors", false),
    ])
    func specialFilesInHFFolder(_ name: String, _ fifo: Bool) throws {
        let scratch = try TestCheckpoints.scratchDirectory("cli-special")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try FileManager.default.copyItem(atPath: TestCheckpoints.path("llama3-tiny/hf"), toPath: scratch + "/hf")
        let target = scratch + "/hf/" + name
        if fifo { try TestCheckpoints.makeFIFO(at: target) } else { try TestCheckpoints.makeDirectory(at: target) }
        let kind = fifo ? "FIFO" : "directory"
        try Self.expectOneLineFailure(["inspect", scratch + "/hf"], naming: target, saying: "not a regular file (it is a \(kind))")
        try Self.expectOneLineFailure(["import", "--hf", scratch + "/hf", "--out", scratch + "/out"], naming: target,
                                      saying: "not a regular file (it is a \(kind))")
        #expect(!FileManager.default.fileExists(atPath: scratch + "/out"))
    }

    @Test("a FIFO in place of a .distcp, metadata.json or the tracker: status 1 at once, naming it", arguments: [
        "iter_0000001/__0_0.distcp", "iter_0000001/metadata.json", "latest_checkpointed_iteration.txt",
    ])
    func specialFilesInCheckpoint(_ name: String) throws {
        let scratch = try TestCheckpoints.scratchDirectory("cli-special-dcp")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try FileManager.default.copyItem(atPath: TestCheckpoints.path("megatron/gpt-dense-ws1"), toPath: scratch + "/save")
        let target = scratch + "/save/" + name
        try TestCheckpoints.makeFIFO(at: target)
        try Self.expectOneLineFailure(["inspect", scratch + "/save"], naming: target, saying: "not a regular file (it is a FIFO)")
        try Self.expectOneLineFailure(["export", "--megatron", scratch + "/save", "--out", scratch + "/out",
                                       "--hf-config", TestCheckpoints.path("llama3-tiny/hf")],
                                      naming: target, saying: "not a regular file (it is a FIFO)")
    }

    @Test("a common.pt whose pickle is os.system is refused, naming common.pt (it used to pass as an empty state)")
    func hostileCommonState() throws {
        let scratch = try TestCheckpoints.scratchDirectory("cli-common")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try FileManager.default.copyItem(atPath: TestCheckpoints.path("megatron/mcore-metadata-0.15"), toPath: scratch + "/save")
        let common = scratch + "/save/iter_0000001/common.pt"
        try FileManager.default.removeItem(atPath: common)
        try FileManager.default.copyItem(atPath: TestCheckpoints.root + "/Tests/FuzzCorpus/zip/common-pt-os-system-root.bin", toPath: common)
        try Self.expectOneLineFailure(["inspect", scratch + "/save"], naming: common, saying: "names `os.system`")
    }

    @Test("a tracker file linked to a multi-line file gives a one-line error")
    func multiLineTracker() throws {
        let scratch = try TestCheckpoints.scratchDirectory("cli-tracker")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try FileManager.default.copyItem(atPath: TestCheckpoints.path("megatron/gpt-dense-ws1"), toPath: scratch + "/save")
        let tracker = scratch + "/save/latest_checkpointed_iteration.txt"
        try Data("first line\nsecond line\n\u{1B}]0;title\u{07}".utf8).write(to: URL(fileURLWithPath: scratch + "/notes"))
        try FileManager.default.removeItem(atPath: tracker)
        try FileManager.default.createSymbolicLink(atPath: tracker, withDestinationPath: scratch + "/notes")
        try Self.expectOneLineFailure(["inspect", scratch + "/save"], naming: tracker, saying: "`first line\\nsecond line\\n\\x1B]0;title\\x07`")
    }
}

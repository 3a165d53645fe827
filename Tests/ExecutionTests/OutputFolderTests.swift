import Execution
import Foundation
import NembridgeTestSupport
import Testing

/// One run owns a target at a time; a dead run's leftovers are removed by the next run.
struct OutputFolderTests {
    static func entries(_ directory: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
    }

    @Test("a live owner refuses a second run; publishing leaves only the output")
    func oneOwner() throws {
        let scratch = try TestCheckpoints.scratchDirectory("folder")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let first = try OutputFolder(path: scratch + "/out")
        #expect(try Self.entries(scratch) == [".out.nembridge-lock", ".out.nembridge-staging"])
        #expect {
            try OutputFolder(path: scratch + "/out")
        } throws: { error in
            guard case OutputFolder.Failure.inUse(_, let owner) = error else { return false }
            return owner.contains("pid \(getpid())") && "\(error)".contains("another nembridge run")
        }
        try Data("x".utf8).write(to: URL(fileURLWithPath: first.stagedPath("file")))
        try first.publish()
        #expect(try Self.entries(scratch) == ["out"])
        #expect(try Self.entries(scratch + "/out") == ["file"])
        #expect(throws: OutputFolder.Failure.alreadyExists(path: scratch + "/out")) { try OutputFolder(path: scratch + "/out") }
        #expect(try Self.entries(scratch) == ["out"], "a refused run leaves no lock file")
    }

    @Test("a dead run's staging folder and lock are removed, with a note; an old pid-named one too")
    func deadRunCleaned() throws {
        let scratch = try TestCheckpoints.scratchDirectory("folder")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        // What kill -9 leaves: the staging folder with partial files, and an unlocked lock file.
        try FileManager.default.createDirectory(atPath: scratch + "/.out.nembridge-staging/release", withIntermediateDirectories: true)
        try Data(count: 4096).write(to: URL(fileURLWithPath: scratch + "/.out.nembridge-staging/release/__0_0.distcp"))
        try Data("pid 1 on elsewhere, started then\n".utf8).write(to: URL(fileURLWithPath: scratch + "/.out.nembridge-lock"))
        // A staging folder of an older version, named by the pid of a process that has exited.
        let gone = Process()
        gone.executableURL = URL(fileURLWithPath: "/bin/true")
        try gone.run()
        gone.waitUntilExit()
        try FileManager.default.createDirectory(atPath: scratch + "/.out.nembridge-partial-\(gone.processIdentifier)",
                                                withIntermediateDirectories: true)
        let folder = try OutputFolder(path: scratch + "/out")
        #expect(folder.notes.count == 2, "\(folder.notes)")
        #expect(try Self.entries(folder.stagingPath).isEmpty)
        try folder.publish()
        #expect(try Self.entries(scratch) == ["out"])
    }

    @Test("resume keeps the interrupted run's staging folder")
    func resumeKeeps() throws {
        let scratch = try TestCheckpoints.scratchDirectory("folder")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try FileManager.default.createDirectory(atPath: scratch + "/.out.nembridge-staging", withIntermediateDirectories: true)
        try Data("done".utf8).write(to: URL(fileURLWithPath: scratch + "/.out.nembridge-staging/part"))
        let folder = try OutputFolder(path: scratch + "/out", resume: true)
        #expect(folder.resumed)
        #expect(try Self.entries(folder.stagingPath) == ["part"])
        folder.discard()
        #expect(try Self.entries(scratch).isEmpty)
    }
}

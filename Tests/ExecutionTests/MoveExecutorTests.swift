import Dispatch
import Execution
import Foundation
import Synchronization
import NembridgeTestSupport
import TensorCore
import Testing

struct MoveExecutorTests {
    @Test("moves land where planned, in both copy modes, with chunking and parallel workers",
          arguments: MoveExecutor.CopyMode.allCases)
    func copies(_ mode: MoveExecutor.CopyMode) throws {
        let scratch = try TestCheckpoints.scratchDirectory("exec")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var generator = SystemRandomNumberGenerator()
        let sourceBytes = (0..<100_003).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let sourcePath = scratch + "/source"
        try Data(sourceBytes).write(to: URL(fileURLWithPath: sourcePath))
        let source = try ReadOnlyFile(path: sourcePath)
        // Reverse three ranges into the output, with a tiny chunk so each is split many times.
        let moves = [
            ByteMove(source: source, range: ByteRange(offset: 0, count: 40_000), destinationOffset: 60_003),
            ByteMove(source: source, range: ByteRange(offset: 40_000, count: 60_000), destinationOffset: 3),
            ByteMove(source: source, range: ByteRange(offset: 100_000, count: 3), destinationOffset: 0),
        ]
        let output = try AtomicOutputFile(path: scratch + "/out")
        let counter = ProgressCounter(total: 100_003)
        try MoveExecutor(workers: 3, chunkBytes: 4096, mode: mode).run(moves, into: output, progress: counter)
        try output.publish()
        let expected = Array(sourceBytes[100_000...]) + Array(sourceBytes[40_000..<100_000]) + Array(sourceBytes[..<40_000])
        #expect(try TestCheckpoints.readFile(scratch + "/out") == expected)
        #expect(counter.completed == 100_003)
    }

    @Test("runs started from several threads on one executor each get their bytes (buffers are not shared)")
    func concurrentRuns() throws {
        let scratch = try TestCheckpoints.scratchDirectory("exec")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let executor = MoveExecutor(workers: 2, chunkBytes: 256, mode: .buffered)
        var generator = SystemRandomNumberGenerator()
        let contents = (0..<6).map { _ in (0..<200_000).map { _ in UInt8.random(in: 0...255, using: &generator) } }
        for (index, bytes) in contents.enumerated() { try Data(bytes).write(to: URL(fileURLWithPath: scratch + "/source\(index)")) }
        let failures = Mutex(0)
        DispatchQueue.concurrentPerform(iterations: contents.count) { index in
            do {
                let source = try ReadOnlyFile(path: scratch + "/source\(index)")
                let output = try AtomicOutputFile(path: scratch + "/out\(index)")
                try executor.run([ByteMove(source: source, range: ByteRange(offset: 0, count: 200_000), destinationOffset: 0)], into: output)
                try output.publish()
            } catch {
                failures.withLock { $0 += 1 }
            }
        }
        #expect(failures.withLock { $0 } == 0)
        for (index, bytes) in contents.enumerated() {
            #expect(try TestCheckpoints.readFile(scratch + "/out\(index)") == bytes, "run \(index)")
        }
    }

    @Test("a failing read stops the run with the source's name and offset")
    func failure() throws {
        let scratch = try TestCheckpoints.scratchDirectory("exec")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: scratch + "/short"))
        let source = try ReadOnlyFile(path: scratch + "/short")
        let output = try AtomicOutputFile(path: scratch + "/out")
        let move = ByteMove(source: source, range: ByteRange(offset: 0, count: 10), destinationOffset: 0)
        let error = #expect(throws: FileIOError.self) {
            try MoveExecutor(workers: 1, chunkBytes: 64, mode: .buffered).run([move], into: output)
        }
        #expect(error?.path == scratch + "/short")
        #expect(error?.offset == 3)
    }

    @Test("an output folder is complete or absent")
    func outputFolder() throws {
        let scratch = try TestCheckpoints.scratchDirectory("exec")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let target = scratch + "/model"
        do {
            let folder = try OutputFolder(path: target)
            _ = FileManager.default.createFile(atPath: folder.stagedPath("a"), contents: Data([1]))
            #expect(!FileManager.default.fileExists(atPath: target))
            // Dropped without publishing: the staging folder goes away.
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch).isEmpty)
        let folder = try OutputFolder(path: target)
        _ = FileManager.default.createFile(atPath: folder.stagedPath("a"), contents: Data([1]))
        try folder.publish()
        #expect(try FileManager.default.contentsOfDirectory(atPath: target) == ["a"])
        #expect(throws: OutputFolder.Failure.alreadyExists(path: target)) { try OutputFolder(path: target) }
    }
}

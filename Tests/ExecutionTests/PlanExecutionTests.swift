import Execution
import Foundation
import NembridgeTestSupport
import Synchronization
import TensorCore
import Testing

/// Running a `ConversionPlan`: copies, column slices and zeros land back to back, observers see
/// every byte in order, and holes of a sparse source stay holes in the output.
struct PlanExecutionTests {
    final class Collector: StreamObserver, @unchecked Sendable {
        let bytes = Mutex<[UInt8]>([])
        let finished = Mutex(false)
        func consume(_ piece: UnsafeRawBufferPointer) throws { bytes.withLock { $0.append(contentsOf: piece) } }
        func finish() throws { finished.withLock { $0 = true } }
    }

    static func allocatedBytes(_ path: String) -> Int64 {
        var status = stat()
        _ = stat(path, &status)
        return Int64(status.st_blocks) * 512
    }

    @Test("copies, strided slices and zeros fill each group in order; observers see the same bytes",
          arguments: MoveExecutor.CopyMode.allCases)
    func groups(_ mode: MoveExecutor.CopyMode) throws {
        let scratch = try TestCheckpoints.scratchDirectory("plan")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var generator = SystemRandomNumberGenerator()
        let sourceBytes = (0..<10_000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        try Data(sourceBytes).write(to: URL(fileURLWithPath: scratch + "/source"))
        let file = try ReadOnlyFile(path: scratch + "/source")
        var plan = ConversionPlan()
        let source = plan.source(file)
        // Group 0 at 100: 30 zeros, bytes 0..<500, then columns 10..<14 of 100-byte rows 50..<60.
        plan.append(.zeros(30))
        plan.append(.copy(source: source, range: ByteRange(offset: 0, count: 500)))
        plan.append(.strided(source: source, firstSegment: 5000 + 10, stride: 100, segmentBytes: 4, rows: 10))
        plan.endGroup(output: 0, offset: 100)
        // Group 1 at 0: two adjacent copies, merged into one move.
        plan.append(.copy(source: source, range: ByteRange(offset: 9000, count: 50)))
        plan.append(.copy(source: source, range: ByteRange(offset: 9050, count: 50)))
        plan.endGroup(output: 0, offset: 0)
        #expect(plan.moveCount(group: 1) == 1)
        #expect(plan.byteCount(group: 0) == 570 && plan.totalBytes == 670)

        let output = try AtomicOutputFile(path: scratch + "/out")
        let collectors = [Collector(), Collector()]
        let progress = ProgressCounter(total: plan.totalBytes)
        // A buffer of 64 bytes: the copy and the column slice are split into several pieces.
        try MoveExecutor(workers: 2, chunkBytes: 64, mode: mode).run(plan, sinks: [output], observer: { collectors[$0] }, progress: progress)
        try output.extend(to: 670)
        try output.publish()
        var group0 = [UInt8](repeating: 0, count: 30) + sourceBytes[0..<500]
        for row in 50..<60 { group0 += sourceBytes[(row * 100 + 10)..<(row * 100 + 14)] }
        let group1 = Array(sourceBytes[9000..<9100])
        let written = try TestCheckpoints.readFile(scratch + "/out")
        #expect(Array(written[0..<100]) == group1)
        #expect(Array(written[100..<670]) == group0)
        #expect(collectors[0].bytes.withLock { $0 } == group0 && collectors[1].bytes.withLock { $0 } == group1)
        #expect(collectors.allSatisfy { $0.finished.withLock { $0 } })
        #expect(progress.completed == 670)
    }

    @Test("a sparse source gives a sparse output: holes are neither read nor written, and checksums still see the zeros")
    func holes() throws {
        let scratch = try TestCheckpoints.scratchDirectory("holes")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let path = scratch + "/source"
        // 16 MiB: a hole, 1 MiB of data at 8 MiB, a hole.
        let data = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        FileManager.default.createFile(atPath: path, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.seek(toOffset: 8 << 20)
        try handle.write(contentsOf: data)
        try handle.truncate(atOffset: 16 << 20)
        try handle.close()
        let file = try ReadOnlyFile(path: path)
        #expect(file.isHole(ByteRange(offset: 0, count: 1 << 20)))
        #expect(!file.isHole(ByteRange(offset: (8 << 20) - 10, count: 20)))
        #expect(file.isHole(ByteRange(offset: 12 << 20, count: 4 << 20)))

        var plan = ConversionPlan()
        plan.append(.copy(source: plan.source(file), range: ByteRange(offset: 0, count: 16 << 20)))
        plan.endGroup(output: 0, offset: 4096)
        let output = try AtomicOutputFile(path: scratch + "/out")
        let collector = Collector()
        try MoveExecutor(workers: 1, chunkBytes: 1 << 20, mode: .buffered).run(plan, sinks: [output], observer: { _ in collector })
        try output.extend(to: 4096 + (16 << 20))
        try output.publish()
        var expected = [UInt8](repeating: 0, count: 16 << 20)
        expected.replaceSubrange((8 << 20)..<(9 << 20), with: data)
        #expect(collector.bytes.withLock { $0 } == expected, "the observer sees the zeros of the holes")
        let written = try TestCheckpoints.readFile(scratch + "/out")
        #expect(written.count == 4096 + (16 << 20) && Array(written[4096...]) == expected)
        // Only the data megabyte (and file-system block rounding) is allocated.
        #expect(Self.allocatedBytes(scratch + "/out") < 3 << 20, "\(Self.allocatedBytes(scratch + "/out")) bytes allocated")
    }
}

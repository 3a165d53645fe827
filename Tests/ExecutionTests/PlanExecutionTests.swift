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

/// A dequantizing group through the executor: pieces smaller than a row, a column slice of a
/// block-FP8 weight, and one move spanning two adjacent weights (an FP8 one and another FP8 one
/// with its own scale) give, element for element, what the kernel gives each weight whole.
struct DequantizingPlanTests {
    @Test("dequantizing groups split at weight boundaries and pieces, and fill the output in order")
    func dequantizing() throws {
        let scratch = try TestCheckpoints.scratchDirectory("dequantize")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var generator = SplitMix64(seed: 15)
        // Source: weight A [6, 10] e4m3 at 0 (block [4, 4] scales: 2 x 3 f32 at 200), weight B
        // [3, 10] e4m3 at 60 right after it (tensor scale), the scales after them.
        let weightA = (0..<60).map { _ in UInt8.random(in: 0...0x7E, using: &generator) | (Bool.random(using: &generator) ? 0x80 : 0) }
        let weightB = (0..<30).map { _ in UInt8.random(in: 0...0x7E, using: &generator) }
        let scales: [Float] = [0.5, 0.25, 0.125, 2, 4, 0.0625]
        var bytes = weightA + weightB
        bytes += [UInt8](repeating: 0, count: 200 - bytes.count)
        for value in scales { bytes += withUnsafeBytes(of: value.bitPattern.littleEndian, Array.init) }
        try Data(bytes).write(to: URL(fileURLWithPath: scratch + "/source"))
        let file = try ReadOnlyFile(path: scratch + "/source")
        var plan = ConversionPlan()
        let source = plan.source(file)
        let a = QuantizedWeight(format: .e4m3, source: source, range: ByteRange(offset: 0, count: 60), rows: 6, columns: 10,
                                scale: .blocks(blockRows: 4, blockColumns: 4, source: source, offset: 200, dtype: .float32))
        let b = QuantizedWeight(format: .e4m3, source: source, range: ByteRange(offset: 60, count: 30), rows: 3, columns: 10, scale: .tensor(0.75))
        plan.addQuantizedWeight(b)
        plan.addQuantizedWeight(a)
        plan.addQuantizedWeight(a)  // a second declaration is a no-op
        #expect(plan.quantizedWeights == [a, b])
        // Group 0: rows 2..<5 of A's columns 3..<8 (a strided move), then 4 zero elements.
        plan.append(.strided(source: source, firstSegment: 2 * 10 + 3, stride: 10, segmentBytes: 5, rows: 3))
        plan.append(.zeros(4))
        plan.endGroup(output: 0, offset: 0, transform: .dequantize(.e4m3, to: .bfloat16))
        // Group 1: A's last row and all of B, one merged move across the two weights.
        plan.append(.copy(source: source, range: ByteRange(offset: 50, count: 10)))
        plan.append(.copy(source: source, range: ByteRange(offset: 60, count: 30)))
        plan.endGroup(output: 0, offset: 1000, transform: .dequantize(.e4m3, to: .bfloat16))
        #expect(plan.moveCount(group: 1) == 1 && plan.outputByteCount(group: 1) == 80 && plan.totalOutputBytes == 38 + 80)

        func whole(_ weight: QuantizedWeight, _ codes: [UInt8]) -> [UInt8] {
            var output = [UInt8](repeating: 0, count: codes.count * 2)
            let scaleBytes = Array(bytes[200..<224])
            codes.withUnsafeBytes { c in scaleBytes.withUnsafeBytes { s in output.withUnsafeMutableBytes {
                weight.dequantize(elements: 0..<Int64(codes.count), codes: c, scales: s, to: .bfloat16, into: $0)
            } } }
            return output
        }
        let wholeA = whole(a, weightA), wholeB = whole(b, weightB)
        var group0: [UInt8] = []
        for row in 2..<5 { group0 += wholeA[(row * 20 + 6)..<(row * 20 + 16)] }
        group0 += [UInt8](repeating: 0, count: 8)
        let group1 = Array(wholeA[100..<120]) + wholeB
        for chunk in [7, 64, 1 << 20] {
            let output = try AtomicOutputFile(path: scratch + "/out\(chunk)")
            let collectors = [PlanExecutionTests.Collector(), PlanExecutionTests.Collector()]
            try MoveExecutor(workers: 2, chunkBytes: chunk, mode: .buffered).run(plan, sinks: [output], observer: { collectors[$0] })
            try output.extend(to: 1080)
            try output.publish()
            let written = try TestCheckpoints.readFile(scratch + "/out\(chunk)")
            #expect(Array(written[0..<38]) == group0, "chunk \(chunk)")
            #expect(Array(written[1000..<1080]) == group1, "chunk \(chunk)")
            #expect(collectors[0].bytes.withLock { $0 } == group0 && collectors[1].bytes.withLock { $0 } == group1)
        }
    }
}

/// Quantizing groups whose weight rows are larger than the executor's buffer (and a plain column
/// slice whose segments are): the rows go through in pieces, and the codes and scales are, byte
/// for byte, what the kernels give the weight read whole. (The kernels themselves are checked in
/// TensorCoreTests and against torch in Tests/interop/test_quantized_export.py.)
struct LongRowPlanTests {
    static let rows = 3, columns = 48

    /// bf16 bits of a deterministic weight with a -0.0, a zero block and a spread of magnitudes.
    static func weight() -> [UInt8] {
        var generator = SplitMix64(seed: 432)
        var values = (0..<(rows * columns)).map { _ in Float(Int.random(in: -4000...4000, using: &generator)) / 512 }
        values[1] = -0.0
        for index in 0..<16 { values[2 * columns + index] = 0 }
        return values.flatMap { value -> [UInt8] in
            let bits = UInt16(value.bitPattern >> 16)  // exact: the values have few significant bits
            return [UInt8(bits & 0xFF), UInt8(bits >> 8)]
        }
    }

    @Test("FP8 and NVFP4 groups of rows longer than the buffer, and segments longer than it, are written whole",
          arguments: [32, 40, 96, 1 << 20])
    func longRows(_ chunk: Int) throws {
        let scratch = try TestCheckpoints.scratchDirectory("long-rows")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let bytes = Self.weight()
        try Data(bytes).write(to: URL(fileURLWithPath: scratch + "/source"))
        let file = try ReadOnlyFile(path: scratch + "/source")
        let (rows, columns) = (Self.rows, Self.columns)
        let codes = FP8Quantization(from: .bfloat16, rows: rows, columns: columns, blockRows: 2, blockColumns: 20, part: .codes)
        var scalesPart = codes
        scalesPart.part = .scales
        let nvfp4 = [NVFP4Quantization.Part.codes, .groupScales, .secondScale].map {
            NVFP4Quantization(from: .bfloat16, rows: rows, columns: columns, part: $0)
        }
        var plan = ConversionPlan()
        let source = plan.source(file)
        let whole = ByteRange(offset: 0, count: Int64(bytes.count))
        var offset: Int64 = 0
        var starts: [Int64] = []
        for transform in [ElementTransform.quantize(codes), .quantize(scalesPart)] + nvfp4.map(ElementTransform.quantizeNVFP4) {
            plan.append(.copy(source: source, range: whole))
            plan.endGroup(output: 0, offset: offset, transform: transform)
            starts.append(offset)
            offset += transform.outputBytes(whole.count)
        }
        // Columns 4..<44 of each row: segments of 80 bytes, 96 apart.
        plan.append(.strided(source: source, firstSegment: 8, stride: 96, segmentBytes: 80, rows: 3))
        plan.endGroup(output: 0, offset: offset)
        starts.append(offset)
        let total = offset + 240

        // The kernels on the weight whole.
        var expected: [UInt8] = []
        bytes.withUnsafeBytes { input in
            var survey = FP8Quantization.Survey(blocks: codes.scaleCount, recorded: nil)
            codes.survey(first: 0, bytes: input, into: &survey)
            let scales = codes.scales(survey)
            var out = [UInt8](repeating: 0, count: rows * columns)
            out.withUnsafeMutableBytes { codes.quantize(first: 0, bytes: input, scales: scales, into: $0) }
            expected += out + codes.scaleBytes(scales)
            var groups = NVFP4Quantization.Survey(groups: nvfp4[0].groupCount, recordedGroups: nil, recordedSecond: 1)
            nvfp4[0].survey(first: 0, bytes: input, into: &groups)
            let fp4 = nvfp4[0].scales(groups)
            var packed = [UInt8](repeating: 0, count: rows * columns / 2)
            packed.withUnsafeMutableBytes { nvfp4[0].quantize(first: 0, bytes: input, scales: fp4, into: $0) }
            expected += packed + fp4.groups + withUnsafeBytes(of: fp4.second.bitPattern.littleEndian, Array.init)
        }
        for row in 0..<rows { expected += bytes[(row * 96 + 8)..<(row * 96 + 88)] }
        #expect(Int64(expected.count) == total)
        #expect(expected[0..<(rows * columns)].contains(0x80), "the -0.0 keeps its sign")

        let output = try AtomicOutputFile(path: scratch + "/out")
        try MoveExecutor(workers: 2, chunkBytes: chunk, mode: .buffered).run(plan, sinks: [output])
        try output.extend(to: total)
        try output.publish()
        let written = try TestCheckpoints.readFile(scratch + "/out")
        for (index, start) in starts.enumerated() {
            let end = index + 1 < starts.count ? starts[index + 1] : total
            #expect(Array(written[Int(start)..<Int(end)]) == Array(expected[Int(start)..<Int(end)]), "group \(index), chunk \(chunk)")
        }
    }
}

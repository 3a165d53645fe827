import Foundation
@testable import MegatronCheckpoint
import NembridgeTestSupport
import TensorCore
import Testing

struct ZstdStreamCompressorTests {
    /// Deterministic, partly compressible bytes.
    static func sample(_ count: Int, seed: UInt64 = 1) -> [UInt8] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15
        return (0..<count).map { index in
            if (index / 64) % 2 == 0 { return UInt8(truncatingIfNeeded: index % 17) }
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return UInt8(truncatingIfNeeded: state >> 33)
        }
    }

    /// Decodes with the reader's decoder (the file is written to a scratch folder).
    func decode(_ bytes: [UInt8], at offset: Int64 = 0, count: Int64? = nil) throws -> [UInt8] {
        let path = (try TestCheckpoints.scratchDirectory("zstd") as NSString).appendingPathComponent("item")
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let file = try ReadOnlyFile(path: path)
        var output: [UInt8] = []
        try ZstdStreamDecoder.decode(file: file, range: ByteRange(offset: offset, count: count ?? Int64(bytes.count) - offset), key: "k",
                                     limit: .init(bytes: .max, holder: "no limit")) {
            output.append(contentsOf: $0)
        }
        return output
    }

    @Test("round trip through the reader's decoder, pieces of any size, at an offset in the sink",
          arguments: [(0, 0), (1, 0), (1000, 1), (3_000_000, 0), (3_000_000, 2)])
    func roundTrip(_ size: Int, _ workers: Int) throws {
        let input = Self.sample(size)
        let sink = MemoryByteSink()
        let prefix: [UInt8] = [1, 2, 3, 4, 5]
        try prefix.withUnsafeBytes { try sink.write($0, at: 0) }
        let compressor = try ZstdStreamCompressor(sink: sink, offset: 5, level: 3, workers: workers)
        var start = 0
        var step = 1
        while start < input.count {
            let end = min(input.count, start + step)
            try compressor.write(Array(input[start..<end]))
            start = end
            step = step * 3 + 1
        }
        let length = try compressor.finish()
        #expect(compressor.inputCount == Int64(size))
        #expect(Int64(sink.bytes.count) == 5 + length)
        #expect(Array(sink.bytes.prefix(5)) == prefix)
        #expect(try decode(sink.bytes, at: 5) == input)
        if size >= 1000 { #expect(length < Int64(size)) }
    }

    @Test("several frames back to back decode as one item; from a file range too")
    func concatenatedFrames() throws {
        let first = Self.sample(70_000, seed: 3)
        let second = Self.sample(5_000, seed: 4)
        let sink = MemoryByteSink()
        let one = try ZstdStreamCompressor.compress([first], into: sink, at: 0)
        let source = (try TestCheckpoints.scratchDirectory("zstd-src") as NSString).appendingPathComponent("src")
        try Data(second).write(to: URL(fileURLWithPath: source))
        let compressor = try ZstdStreamCompressor(sink: sink, offset: one, level: 19, checksum: true, pledgedSize: Int64(second.count))
        try compressor.write(from: try ReadOnlyFile(path: source), range: ByteRange(offset: 0, count: Int64(second.count)), bufferSize: 999)
        try compressor.finish()
        #expect(try decode(sink.bytes) == first + second)
    }

    @Test("a bad level or a wrong pledged size is a compressionFailed error")
    func badParameters() throws {
        let sink = MemoryByteSink()
        let compressor = try ZstdStreamCompressor(sink: sink, offset: 0, pledgedSize: 10)
        try compressor.write([1, 2, 3])
        #expect(throws: MegatronCheckpointError.self) { try compressor.finish() }
    }

    /// Writes samples for `Tests/interop/megatron_reader/test_zstd_compressor.py`, which checks
    /// that Python `zstandard` decodes them, when `NEMBRIDGE_ZSTD_INTEROP_DIR` names a directory.
    @Test("interop samples for Python zstandard")
    func interopSamples() throws {
        guard let directory = ProcessInfo.processInfo.environment["NEMBRIDGE_ZSTD_INTEROP_DIR"] else { return }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for (name, size, level, workers) in [("empty", 0, 3, 0), ("small", 1000, 1, 0), ("large", 5_000_000, 3, 2), ("max", 200_000, 19, 0)] {
            let input = Self.sample(size, seed: UInt64(size))
            let sink = MemoryByteSink()
            _ = try ZstdStreamCompressor.compress([input], into: sink, at: 0, level: Int32(level), workers: workers)
            try Data(input).write(to: URL(fileURLWithPath: (directory as NSString).appendingPathComponent("\(name).raw")))
            try Data(sink.bytes).write(to: URL(fileURLWithPath: (directory as NSString).appendingPathComponent("\(name).zst")))
        }
    }
}

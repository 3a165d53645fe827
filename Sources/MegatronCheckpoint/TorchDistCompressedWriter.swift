import Foundation
import TensorCore
import TorchZip

/// Writes a torch_dist checkpoint whose items are zstd frames (`transform_descriptors:
/// ['stream.zstd/1']`), as torch's `ZStandard` DCP extension stores them. Compressed lengths are
/// only known once written, so items go out one after another per file, each streamed from its
/// sources through one compressor (multi-threaded inside libzstd); nothing is held whole.
public enum TorchDistCompressedWriter {
    public static let transform = "stream.zstd/1"

    /// Writes every item of `layout` compressed into `directory`, then `.metadata` and
    /// `metadata.json`; returns where each tensor item was stored (its zstd frame). Group `i` of
    /// `plan` fills tensor item `i`.
    @discardableResult
    public static func write(
        directory: String, layout: TorchDistLayout, plan: ConversionPlan, level: Int32, workers: Int,
        progress: (@Sendable (Int64) -> Void)? = nil
    ) throws -> [DCPStorageInfo] {
        precondition(plan.groupCount == layout.tensorItemCount)
        let files = try layout.fileNames.map { try AtomicOutputFile(path: (directory as NSString).appendingPathComponent($0)) }
        do {
            var cursors = [Int64](repeating: 0, count: files.count)
            var objectStorage: [DCPStorageInfo] = []
            for object in layout.objectItems {
                let compressor = try ZstdStreamCompressor(sink: files[object.file], offset: cursors[object.file], level: level, workers: workers)
                try compressor.write(object.bytes)
                let length = try compressor.finish()
                objectStorage.append(DCPStorageInfo(relativePath: layout.fileNames[object.file], offset: cursors[object.file], length: length,
                                                    transformDescriptors: [transform]))
                cursors[object.file] += length
            }
            var storage: [DCPStorageInfo] = []
            storage.reserveCapacity(layout.tensorItemCount)
            let zeros = [UInt8](repeating: 0, count: 1 << 20)
            for index in layout.tensorItemIndices {
                let item = layout.tensorItem(index)
                let moves = plan.moves(group: index)
                // The zip's local header carries the CRC, so it is computed first (a read of the
                // sources; they are then read again, from the page cache, to compress).
                var crc: UInt32 = 0
                for move in moves {
                    if move.isZeros {
                        crc = CRC32.combine(crc, CRC32.zeros(count: move.byteCount), move.byteCount)
                        continue
                    }
                    for row in 0..<Int(move.rows) {
                        let range = move.segment(row)
                        crc = CRC32.combine(crc, try checksum(plan.sources[Int(move.source)], range), range.count)
                    }
                }
                let recording = RecordingByteSink()
                let archive = ZipWriter(layout: item.archive.layout, sink: recording)
                for record in item.archive.smallRecords { try archive.write(entry: record.entry, at: 0, bytes: record.bytes) }
                archive.declareCRC(crc, entry: item.archive.dataEntry)
                try archive.recordPiece(entry: item.archive.dataEntry, at: 0, count: item.byteCount, crc: nil)
                try archive.finish()
                let dataRange = item.archive.layout.entries[item.archive.dataEntry].dataRange
                let compressor = try ZstdStreamCompressor(sink: files[item.file], offset: cursors[item.file], level: level, workers: workers)
                var position: Int64 = 0
                func emitZeros(_ count: Int64) throws {
                    var left = count
                    while left > 0 {
                        let step = Int(min(left, Int64(zeros.count)))
                        try zeros.withUnsafeBytes { try compressor.write(UnsafeRawBufferPointer(rebasing: $0[0..<step])) }
                        left -= Int64(step)
                    }
                }
                for write in recording.runs {
                    if write.offset > position {
                        // The only gap is the tensor data: stream it from its sources.
                        precondition(position == dataRange.offset && write.offset == dataRange.end, "unexpected gap in a planned archive")
                        var dataPosition: Int64 = 0
                        for move in moves {
                            if move.isZeros {
                                try emitZeros(move.byteCount)
                            } else {
                                for row in 0..<Int(move.rows) {
                                    try compressor.write(from: plan.sources[Int(move.source)], range: move.segment(row))
                                }
                            }
                            dataPosition += move.byteCount
                            progress?(move.byteCount)
                        }
                        precondition(dataPosition == item.byteCount)
                        position = dataRange.end
                    }
                    try compressor.write(write.bytes)
                    position = write.offset + Int64(write.bytes.count)
                }
                let length = try compressor.finish()
                storage.append(DCPStorageInfo(relativePath: layout.fileNames[item.file], offset: cursors[item.file], length: length,
                                              transformDescriptors: [transform]))
                cursors[item.file] += length
            }
            let metadataFile = try AtomicOutputFile(path: (directory as NSString).appendingPathComponent(".metadata"))
            try DCPMetadataWriter.write(layout, to: metadataFile, storage: { storage[$0] }, objectStorage: { objectStorage[$0] })
            let json = try AtomicOutputFile(path: (directory as NSString).appendingPathComponent("metadata.json"))
            try json.write(Array(TorchDistWriter.metadataJSON.utf8), at: 0)
            for file in files { try file.publish() }
            try metadataFile.publish()
            try json.publish()
            return storage
        } catch {
            files.forEach { $0.discard() }
            throw error
        }
    }

    static func checksum(_ file: ReadOnlyFile, _ range: ByteRange) throws -> UInt32 {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 64)
        defer { buffer.deallocate() }
        var crc: UInt32 = 0
        var done: Int64 = 0
        while done < range.count {
            let count = Int(min(Int64(buffer.count), range.count - done))
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count])
            try file.read(into: piece, at: range.offset + done)
            crc = CRC32.combine(crc, CRC32.checksum(UnsafeRawBufferPointer(piece)), Int64(count))
            done += Int64(count)
        }
        return crc
    }
}

import Foundation
import Synchronization
import TensorCore
import TorchZip

/// Writes a torch_dist checkpoint directory (`.metadata`, `__i_0.distcp`, `metadata.json`) from a
/// `TorchDistLayout`. Tensor bytes are written by the caller at `dataDestination(item:)` (an
/// executor moving planned bytes) and reported with their CRC-32 through `recordData`; archive
/// headers, objects and metadata are written here. Files appear under their names on `finish()`.
///
/// Per item only its CRC and the bytes reported so far are kept (12 bytes): each archive's
/// records are generated at `finish()` from the layout's shared archive plans, and written in
/// one pass per file, the trailer of an item and the headers of the next in one write.
public final class TorchDistWriter: Sendable {
    public let layout: TorchDistLayout
    public let directory: String
    /// The data files, nil for those kept from an interrupted run (`keeping`): not written.
    public let files: [AtomicOutputFile?]
    private let reported: Mutex<(crcs: [UInt32], counts: [Int64])>
    /// Files completed (published) so far, by `finishFile` or `finish`.
    private let finished: Mutex<Set<Int>>
    /// Per archive plan: the CRC-32 of each entry, the data entry's left 0 (each item has its own).
    private let recordCRCs: [[UInt32]]

    /// `metadata.json` with all four keys, so Megatron-Core 0.15 through 0.20 recognise the folder.
    public static let metadataJSON = #"{"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch", "common_backend_version": 1}"#

    /// - Parameter keeping: indices of data files already complete in `directory` (kept by a
    ///   resumed run): neither created nor written; their items need no data.
    public init(directory: String, layout: TorchDistLayout, keeping: Set<Int> = []) throws {
        self.layout = layout
        self.directory = directory
        files = try layout.fileNames.enumerated().map { index, name in
            keeping.contains(index) ? nil : try AtomicOutputFile(path: (directory as NSString).appendingPathComponent(name))
        }
        finished = Mutex(keeping)
        for object in layout.objectItems {
            try files[object.file]?.write(object.bytes, at: object.itemOffset)
        }
        reported = Mutex(([UInt32](repeating: 0, count: layout.tensorItemCount), [Int64](repeating: 0, count: layout.tensorItemCount)))
        recordCRCs = layout.archives.map { plan in
            var crcs = [UInt32](repeating: 0, count: plan.layout.entries.count)
            for record in plan.smallRecords { crcs[record.entry] = CRC32.checksum(record.bytes) }
            return crcs
        }
    }

    /// The files as the executor's sinks (a kept file's sink refuses writes: none are planned).
    public var sinks: [any ByteSink] { files.map { file -> any ByteSink in file ?? KeptFileSink(name: directory) } }

    /// Reports `count` bytes written at `offset` inside item `index`'s data, with their CRC-32.
    /// Pieces of one item must be reported in data order (one worker writes an item front to back).
    public func recordData(item index: Int, at offset: Int64, count: Int64, crc: UInt32) throws {
        try reported.withLock { state in
            guard offset == state.counts[index], count <= layout.byteCount(item: index) - offset else {
                throw ZipError.overlappingPieces(
                    archive: ZipArchiveID(path: layout.fileNames[layout.file(item: index)], offset: layout.itemOffset(item: index),
                                          label: layout.key(item: index)),
                    entry: "archive/data/0", offset: offset)
            }
            state.crcs[index] = state.counts[index] == 0 ? crc : CRC32.combine(state.crcs[index], crc, count)
            state.counts[index] += count
        }
    }

    /// Zero rows (vocabulary padding): nothing is written, the fresh file reads as zeros there.
    public func recordZeros(item index: Int, at offset: Int64, count: Int64) throws {
        try recordData(item: index, at: offset, count: count, crc: CRC32.zeros(count: count))
    }

    /// Completes data file `file` (its archives' headers with CRCs and central directories) and
    /// publishes it, so it counts as done while other files are still being written. Throws if
    /// any of its items is incomplete.
    public func finishFile(_ file: Int) throws {
        guard let output = files[file], finished.withLock({ $0.insert(file).inserted }) else { return }
        let (crcs, counts) = reported.withLock { ($0.crcs, $0.counts) }
        var pending = PendingWrites()
        for item in layout.tensorItemIndices where layout.file(item: item) == file {
            let plan = layout.archive(item: item)
            let size = layout.byteCount(item: item)
            guard counts[item] == size else {
                throw ZipError.incompleteEntry(
                    archive: ZipArchiveID(path: layout.fileNames[file], offset: layout.itemOffset(item: item), label: layout.key(item: item)),
                    entry: "archive/data/0", offset: counts[item], written: counts[item], expected: size)
            }
            var archiveCRCs = recordCRCs[layout.archiveIndex(item: item)]
            archiveCRCs[plan.dataEntry] = crcs[item]
            let base = layout.itemOffset(item: item)
            for (entry, record) in plan.layout.entries.enumerated() {
                try pending.add(plan.layout.localHeaderBytes(entry: entry, crc: archiveCRCs[entry]), at: base + record.localHeaderOffset, to: output)
                if let small = plan.smallRecords.first(where: { $0.entry == entry }) {
                    try pending.add(small.bytes, at: base + record.dataOffset, to: output)
                }
            }
            try pending.add(plan.layout.trailerBytes(crcs: archiveCRCs), at: base + plan.layout.trailerOffset, to: output)
        }
        try pending.flush(to: output)
        // A trailing hole (zero padding at the very end) must still give the file its length.
        if layout.fileSizes[file] > 0 { try output.extend(to: layout.fileSizes[file]) }
        try output.publish()
    }

    /// Completes the data files not completed yet, writes `.metadata` and `metadata.json`, and
    /// publishes them. Throws if any item is incomplete.
    public func finish() throws {
        do {
            for file in files.indices { try finishFile(file) }
            let metadata = try AtomicOutputFile(path: (directory as NSString).appendingPathComponent(".metadata"))
            try DCPMetadataWriter.write(layout, to: metadata)
            let json = try AtomicOutputFile(path: (directory as NSString).appendingPathComponent("metadata.json"))
            try json.write(Array(Self.metadataJSON.utf8), at: 0)
            try metadata.publish()
            try json.publish()
        } catch {
            discard()
            throw error
        }
    }

    public func discard() { files.forEach { $0?.discard() } }
}

/// Small writes to one file gathered while they are contiguous, then written as one run.
struct PendingWrites {
    var start: Int64 = 0
    var bytes: [UInt8] = []

    mutating func add(_ piece: [UInt8], at offset: Int64, to file: AtomicOutputFile) throws {
        if !bytes.isEmpty && (offset != start + Int64(bytes.count) || bytes.count >= 1 << 20) { try flush(to: file) }
        if bytes.isEmpty { start = offset }
        bytes.append(contentsOf: piece)
    }

    mutating func flush(to file: AtomicOutputFile) throws {
        guard !bytes.isEmpty else { return }
        try file.write(bytes, at: start)
        bytes.removeAll(keepingCapacity: true)
    }
}

import Dispatch

/// Builds a `DCPStorageTable` from entries given in file order, inserting them on another thread
/// a batch at a time while the caller goes on: in a 409,000-chunk `.metadata` the table's hashing
/// and probing were a fifth of the read, and the pickle machine finding the entries keeps one
/// core. The table is the one in-order inserts make (a later duplicate replaces the earlier
/// entry's value in its place), whatever the batching.
///
/// Not for concurrent use: one thread adds and finishes; the worker is the only one touching the
/// table until `finish` has waited for it.
final class DCPStorageTableBuilder: @unchecked Sendable {
    private struct Entry {
        var fqn: String
        var fqnHash: Int?
        /// A range of the batch's `offsets`; `offsetCount` -1 for a bytes item.
        var offsetStart: Int32
        var offsetCount: Int32
        var info: DCPStorageInfo
    }

    private struct Batch {
        var entries: [Entry] = []
        var offsets: [Int] = []
    }

    /// Entries a worker inserts at once: few enough to hold (~0.5 MB), many enough that handing
    /// a batch over costs nothing next to inserting it. A smaller table is built without a thread.
    static let batchSize = 8192

    private var table = DCPStorageTable()
    private var pending = Batch()
    private let worker = DispatchGroup()
    /// The entry count to size the table for, when the caller knows it.
    private let expectedCount: Int

    init(expectedCount: Int = 0) {
        self.expectedCount = expectedCount
    }

    /// Adds the entry of chunk `offsets` of `fqn`, or of bytes item `fqn` when `offsets` is nil.
    /// `fqnHash` is `fqn.hashValue` when the caller has it.
    func add(fqn: String, fqnHash: Int?, offsets: UnsafeBufferPointer<Int>?, info: DCPStorageInfo) {
        let start = Int32(pending.offsets.count)
        if let offsets { pending.offsets.append(contentsOf: offsets) }
        pending.entries.append(Entry(fqn: fqn, fqnHash: fqnHash, offsetStart: start,
                                     offsetCount: offsets.map { Int32($0.count) } ?? -1, info: info))
        guard pending.entries.count >= Self.batchSize else { return }
        worker.wait()
        let batch = pending
        pending = Batch()
        pending.entries.reserveCapacity(Self.batchSize)
        DispatchQueue.global().async(group: worker) { self.insert(batch) }
    }

    /// The table of every entry added.
    func finish() -> DCPStorageTable {
        worker.wait()
        insert(pending)
        pending = Batch()
        let built = table
        table = DCPStorageTable()
        return built
    }

    private func insert(_ batch: Batch) {
        if table.isEmpty { table.reserveCapacity(max(expectedCount, batch.entries.count)) }
        batch.offsets.withUnsafeBufferPointer { offsets in
            for entry in batch.entries {
                let isBytesItem = entry.offsetCount < 0
                let range = Int(entry.offsetStart)..<(Int(entry.offsetStart) + max(Int(entry.offsetCount), 0))
                table.insert(fqn: entry.fqn, fqnHash: entry.fqnHash, offsets: UnsafeBufferPointer(rebasing: offsets[range]),
                             isBytesItem: isBytesItem, info: entry.info)
            }
        }
    }
}

import TorchPickle

extension DCPMetadataReader {
    /// The pickle's memo. Keys 0, 1, 2, … (what MEMOIZE and real writers use) are dense; other
    /// keys wait in `sparse` until the dense ones reach them. When the keys GETs read are known
    /// (`reads`), only their values are kept: a torch-pickled 409,000-chunk `.metadata` stores
    /// 6.45 million entries (103 MB of values) and reads a few hundred thousand.
    struct Memo {
        /// Keys below this have been stored.
        private(set) var denseCount = 0
        /// The values of the dense keys that are read, in key order (all of them without `reads`).
        private var values: [Value] = []
        private(set) var sparse: [UInt64: Value] = [:]
        let reads: PickleMemoReads?

        init(reads: PickleMemoReads?) {
            self.reads = reads
        }

        /// Keys stored, as Python's `len(memo)`: MEMOIZE's key and the limit's measure.
        var entryCount: Int { denseCount + sparse.count }

        /// The value stored under `key`, nil when none is (or it was dropped: see `dropped`).
        @inline(__always)
        func value(_ key: UInt64) -> Value? {
            if key < UInt64(denseCount) {
                guard let reads else { return values[Int(key)] }
                guard reads.contains(key) else { return nil }
                return values[reads.rank(of: key)]
            }
            return sparse.isEmpty ? nil : sparse[key]
        }

        /// Whether `key` was stored but its value not kept, the scan having found no GET of it.
        /// The scan sees every GET the reader runs, so this never happens; if it did, the value
        /// would be missing for want of a kept entry, not for want of a store.
        func dropped(_ key: UInt64) -> Bool {
            guard let reads else { return false }
            return key < UInt64(denseCount) && !reads.contains(key)
        }

        /// Stores `value` under `key`; whether it was kept (a GET may read it: it is shared).
        mutating func put(_ key: UInt64, _ value: Value) -> Bool {
            if key < UInt64(denseCount) {
                guard let reads else {
                    values[Int(key)] = value
                    return true
                }
                guard reads.contains(key) else { return false }
                values[reads.rank(of: key)] = value
                return true
            }
            if key == UInt64(denseCount) && sparse.isEmpty { return append(value) }
            sparse[key] = value
            while let next = sparse.removeValue(forKey: UInt64(denseCount)) { _ = append(next) }
            return true
        }

        /// Stores `value` under the next dense key (MEMOIZE's, when `sparse` is empty); whether it was kept.
        @inline(__always)
        mutating func append(_ value: Value) -> Bool {
            let key = UInt64(denseCount)
            denseCount += 1
            if let reads, !reads.contains(key) { return false }
            values.append(value)
            return true
        }
    }
}

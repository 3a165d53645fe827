import TensorCore
import TorchPickle

/// A chunk of a global tensor: a box at `offsets` with `sizes` (Python: `ChunkStorageMetadata`).
///
/// Held in 40 bytes: offsets and sizes inline as `Int32` when the rank is at most 4 and every
/// value fits (every chunk of every Megatron tensor), else in one array. With two arrays a chunk
/// took about 110 bytes of heap, 45 MB for the 409,000 chunks of a TP=8 EP=8 checkpoint.
public struct DCPChunk: Sendable, Hashable {
    /// Canonical: `.inline` whenever it can hold the values, so equal chunks are equal storage.
    fileprivate enum Storage: Sendable, Hashable {
        case inline(rank: UInt8, values: InlineValues)
        /// Offsets, then sizes.
        case array([Int])
    }

    fileprivate struct InlineValues: Sendable, Hashable {
        var v0: Int32 = 0, v1: Int32 = 0, v2: Int32 = 0, v3: Int32 = 0, v4: Int32 = 0, v5: Int32 = 0, v6: Int32 = 0, v7: Int32 = 0

        subscript(index: Int) -> Int32 {
            get {
                switch index {
                case 0: v0
                case 1: v1
                case 2: v2
                case 3: v3
                case 4: v4
                case 5: v5
                case 6: v6
                default: v7
                }
            }
            set {
                switch index {
                case 0: v0 = newValue
                case 1: v1 = newValue
                case 2: v2 = newValue
                case 3: v3 = newValue
                case 4: v4 = newValue
                case 5: v5 = newValue
                case 6: v6 = newValue
                default: v7 = newValue
                }
            }
        }
    }

    fileprivate var storage: Storage

    public init(offsets: some Collection<Int>, sizes: some Collection<Int>) {
        precondition(offsets.count == sizes.count, "a chunk with \(offsets.count) offsets and \(sizes.count) sizes")
        let rank = offsets.count
        if rank <= 4, offsets.allSatisfy({ Int32(exactly: $0) != nil }), sizes.allSatisfy({ Int32(exactly: $0) != nil }) {
            var values = InlineValues()
            for (axis, value) in offsets.enumerated() { values[axis] = Int32(value) }
            for (axis, value) in sizes.enumerated() { values[rank + axis] = Int32(value) }
            storage = .inline(rank: UInt8(rank), values: values)
        } else {
            storage = .array(Array(offsets) + Array(sizes))
        }
    }

    public var rank: Int {
        switch storage {
        case .inline(let rank, _): Int(rank)
        case .array(let values): values.count / 2
        }
    }

    /// The offsets (then sizes) as a collection over the chunk's values, without copying them.
    public struct Dims: RandomAccessCollection, Sendable, Hashable, CustomStringConvertible {
        fileprivate let storage: Storage
        fileprivate let base: Int
        public let count: Int

        public var startIndex: Int { 0 }
        public var endIndex: Int { count }

        public subscript(axis: Int) -> Int {
            precondition(axis >= 0 && axis < count, "axis \(axis) of a rank-\(count) chunk")
            switch storage {
            case .inline(_, let values): return Int(values[base + axis])
            case .array(let values): return values[base + axis]
            }
        }

        public var array: [Int] { Array(self) }
        public var description: String { array.description }

        public static func == (a: Dims, b: Dims) -> Bool { a.elementsEqual(b) }
        public func hash(into hasher: inout Hasher) {
            hasher.combine(count)
            for value in self { hasher.combine(value) }
        }
        public static func == (a: Dims, b: [Int]) -> Bool { a.elementsEqual(b) }
        public static func == (a: [Int], b: Dims) -> Bool { a.elementsEqual(b) }
    }

    public var offsets: Dims {
        get { Dims(storage: storage, base: 0, count: rank) }
        set { self = DCPChunk(offsets: newValue, sizes: sizes) }
    }

    public var sizes: Dims {
        get { Dims(storage: storage, base: rank, count: rank) }
        set { self = DCPChunk(offsets: offsets, sizes: newValue) }
    }
}

/// A tensor entry of `state_dict_metadata` (Python: `TensorStorageMetadata`).
public struct DCPTensorMetadata: Sendable, Equatable {
    public var dtype: DType
    public var size: [Int]
    public var chunks: [DCPChunk]
    public var requiresGrad: Bool

    public init(dtype: DType, size: [Int], chunks: [DCPChunk], requiresGrad: Bool = false) {
        self.dtype = dtype
        self.size = size
        self.chunks = chunks
        self.requiresGrad = requiresGrad
    }
}

/// Where an item's bytes are (Python: `MetadataIndex` → `_StorageInfo`).
public struct DCPStorageInfo: Sendable, Equatable {
    public var relativePath: String
    public var offset: Int64
    public var length: Int64
    /// e.g. `["stream.zstd/1"]` for zstd-compressed items; nil when absent.
    public var transformDescriptors: [String]?

    public init(relativePath: String, offset: Int64, length: Int64, transformDescriptors: [String]? = nil) {
        self.relativePath = relativePath
        self.offset = offset
        self.length = length
        self.transformDescriptors = transformDescriptors
    }
}

/// The lookup key of `storage_data`: the fqn, and the chunk offsets for tensor chunks (bytes
/// items have none). Python's `index` hint is not part of equality there either.
public struct DCPStorageKey: Sendable, Hashable {
    public var fqn: String
    public var offsets: [Int]?

    public init(fqn: String, offsets: [Int]?) {
        self.fqn = fqn
        self.offsets = offsets
    }
}

/// `storage_data` in a compact form: one 32-byte record per entry (the fqn, the data file and
/// transform list as indices into their few values, the chunk offsets as one of the few distinct
/// offset sequences), found through an open-addressing table of 32-bit slots. About 40 bytes an
/// entry where a `[DCPStorageKey: DCPStorageInfo]` took about 200 (its 64-byte buckets at a 75 %
/// load factor, plus an offsets array per key): 18 MB instead of 80 for a 409,000-chunk checkpoint.
///
/// A slot holds the record's index and, in the bits the index leaves free, a tag of the key's
/// hash: a probe reads a record (a cache miss in 15 MB of them) only when the tags agree, not at
/// every occupied slot it passes.
///
/// Iteration order is insertion order. Python: the `dict[MetadataIndex, _StorageInfo]`.
public struct DCPStorageTable: Sendable, Equatable {
    /// 32 bytes.
    struct Record: Sendable {
        var offset: Int64
        var length: Int64
        /// Index into `names`.
        var name: Int32
        /// Start of the offsets in `dims`, or, when some offset does not fit `Int32`, `-1 - start`
        /// in `wideDims`.
        var dimStart: Int32
        /// `-1` for no offsets (a bytes item).
        var dimCount: Int32
        /// Index into `locations`.
        var location: Int32
        var wide: Bool { dimStart < 0 }
    }

    /// A data file and transform list, as indices; the entries share a few of them.
    struct Location: Sendable {
        var path: Int32
        /// Index into `transformLists`, or -1 for none.
        var transforms: Int32
    }

    var records: [Record] = []
    /// Offset sequences that fit `Int32`, each stored once: the chunks of different tensors share
    /// their offsets (`[0, 0]`, `[0, 4096]`, …), so 460,000 entries hold a few thousand.
    var dims: [Int32] = []
    /// Where each distinct sequence of `dims` starts, and its length.
    var dimSequences: [DimSequence] = []
    /// Index into `dimSequences` per slot, -1 when empty; at most half full.
    var dimSlots: [Int32] = []
    var wideDims: [Int] = []
    var names: [String] = []
    var nameIndex: [String: Int32] = [:]
    /// The fqn of the last insert: a tensor's chunks come one after another.
    var lastName: (name: String, index: Int32)?
    var paths: [String] = []
    var pathIndex: [String: Int32] = [:]
    /// The data file of the last insert: entries come file by file, or alternating among a few.
    var lastPath: (name: String, index: Int32)?
    var transformLists: [[String]] = []
    var transformIndex: [[String]: Int32] = [:]
    var locations: [Location] = []
    /// `locations` index by `path << 32 | (transforms + 1)`.
    var locationIndex: [Int64: Int32] = [:]
    /// Per slot `tag << indexBits | (record index + 1)`, 0 when empty; at most half full, so the
    /// index takes at most `indexBits` = log2(slot count) bits and the tag the rest.
    var slots: [UInt32] = []
    var indexBits = 0

    public init() {}

    public init(_ entries: [DCPStorageKey: DCPStorageInfo]) {
        reserveCapacity(entries.count)
        for (key, info) in entries { self[key] = info }
    }

    public var count: Int { records.count }
    public var isEmpty: Bool { records.isEmpty }

    public mutating func reserveCapacity(_ capacity: Int) {
        records.reserveCapacity(capacity)
        if slots.count < capacity * 2 { rebuildSlots(minimum: capacity) }
    }

    /// The entry of `fqn` with chunk `offsets` (nil for a bytes item).
    public func info(fqn: String, offsets: [Int]?) -> DCPStorageInfo? {
        find(fqn: fqn, offsets: offsets).map { info(records[$0]) }
    }

    /// The entry of the chunk of `fqn` at `offsets`, without an array for the key.
    /// `fqnHash`: `fqn.hashValue`, for a caller looking up many chunks of one tensor.
    public func info(fqn: String, fqnHash: Int? = nil, offsets: DCPChunk.Dims) -> DCPStorageInfo? {
        record(fqn: fqn, fqnHash: fqnHash, offsets: offsets).map { info(records[$0]) }
    }

    /// The index of the entry of the chunk of `fqn` at `offsets`, for `info(record:)`: a caller
    /// that needs an entry more than once finds it once.
    public func record(fqn: String, fqnHash: Int? = nil, offsets: DCPChunk.Dims) -> Int? {
        withUnsafeTemporaryAllocation(of: Int.self, capacity: offsets.count) { buffer in
            for axis in 0..<offsets.count { buffer[axis] = offsets[axis] }
            let key = UnsafeBufferPointer(buffer)
            return find(fqn: fqn, offsets: key, isBytesItem: false, hash: Self.hash(fqnHash: fqnHash ?? fqn.hashValue, key))
        }
    }

    /// The index of the entry of bytes item `fqn`, for `info(record:)`.
    public func record(bytesItem fqn: String) -> Int? { find(fqn: fqn, offsets: nil) }

    /// The entry at `record` (from `record(fqn:…)`), valid until the table changes.
    public func info(record: Int) -> DCPStorageInfo { info(records[record]) }

    /// Where a record's item is, as indices (`paths`), and whether it is stored as it is (no
    /// transform): `info(record:)` without its strings, for a plan asking 400,000 times.
    func place(record: Int) -> (path: Int32, offset: Int64, length: Int64, untransformed: Bool) {
        let entry = records[record]
        let location = locations[Int(entry.location)]
        return (location.path, entry.offset, entry.length, location.transforms < 0 || transformLists[Int(location.transforms)].isEmpty)
    }

    public subscript(key: DCPStorageKey) -> DCPStorageInfo? {
        get { info(fqn: key.fqn, offsets: key.offsets) }
        set {
            if let newValue {
                insert(fqn: key.fqn, offsets: key.offsets, info: newValue)
            } else {
                removeValue(forKey: key)
            }
        }
    }

    @discardableResult
    public mutating func removeValue(forKey key: DCPStorageKey) -> DCPStorageInfo? {
        guard let index = find(fqn: key.fqn, offsets: key.offsets) else { return nil }
        let removed = info(records[index])
        records.remove(at: index)
        rebuildSlots(minimum: records.count)
        return removed
    }

    /// Keys in insertion order.
    public var keys: [DCPStorageKey] { records.indices.map { key(records[$0]) } }
    /// Values in insertion order.
    public var values: [DCPStorageInfo] { records.map { info($0) } }
    /// The data files the entries name, each once, in first-use order.
    public var fileNames: [String] {
        var used = [Bool](repeating: false, count: paths.count)
        var names: [String] = []
        for record in records {
            let path = Int(locations[Int(record.location)].path)
            guard !used[path] else { continue }
            used[path] = true
            names.append(paths[path])
        }
        return names
    }
    public var dictionary: [DCPStorageKey: DCPStorageInfo] {
        Dictionary(records.map { (key($0), info($0)) }, uniquingKeysWith: { _, last in last })
    }

    public static func == (a: DCPStorageTable, b: DCPStorageTable) -> Bool { a.dictionary == b.dictionary }

    /// Adds or replaces the entry of `fqn` at `offsets`.
    public mutating func insert(fqn: String, offsets: [Int]?, info: DCPStorageInfo) {
        if let offsets {
            offsets.withUnsafeBufferPointer { insert(fqn: fqn, offsets: $0, isBytesItem: false, info: info) }
        } else {
            insert(fqn: fqn, offsets: UnsafeBufferPointer(start: nil, count: 0), isBytesItem: true, info: info)
        }
    }

    /// `fqnHash` is `fqn.hashValue` when the caller has it (the reader inserts each fqn's chunks
    /// with one string hash, not one per chunk).
    mutating func insert(fqn: String, fqnHash: Int? = nil, offsets: UnsafeBufferPointer<Int>, isBytesItem: Bool, info: DCPStorageInfo) {
        let hash = Self.hash(fqnHash: fqnHash ?? fqn.hashValue, isBytesItem ? nil : offsets)
        var path: Int32 = -1
        if let last = lastPath, last.name == info.relativePath {
            path = last.index
        } else {
            path = pathIndex[info.relativePath] ?? -1
        }
        if path < 0 {
            paths.append(info.relativePath)
            path = Int32(paths.count - 1)
            pathIndex[info.relativePath] = path
        }
        lastPath = (info.relativePath, path)
        var transforms: Int32 = -1
        if let descriptors = info.transformDescriptors {
            // Found by hashing, not a scan: a hostile file may give every entry its own list.
            if let known = transformIndex[descriptors] {
                transforms = known
            } else {
                transformLists.append(descriptors)
                transforms = Int32(transformLists.count - 1)
                transformIndex[descriptors] = transforms
            }
        }
        let locationKey = Int64(path) << 32 | Int64(transforms + 1)
        let location: Int32
        if let known = locationIndex[locationKey] {
            location = known
        } else {
            location = Int32(locations.count)
            locations.append(Location(path: path, transforms: transforms))
            locationIndex[locationKey] = location
        }
        if let existing = find(fqn: fqn, offsets: offsets, isBytesItem: isBytesItem, hash: hash) {
            records[existing].location = location
            records[existing].offset = info.offset
            records[existing].length = info.length
            return
        }
        var name: Int32
        if let last = lastName, last.name == fqn {
            name = last.index
        } else if let known = nameIndex[fqn] {
            name = known
        } else {
            names.append(fqn)
            name = Int32(names.count - 1)
            nameIndex[fqn] = name
        }
        lastName = (fqn, name)
        let wide = !offsets.allSatisfy { Int32(exactly: $0) != nil }
        let start: Int32
        if wide {
            start = -1 - Int32(wideDims.count)
            wideDims.append(contentsOf: offsets)
        } else if isBytesItem {
            start = 0
        } else {
            start = internedDims(offsets)
        }
        records.append(Record(offset: info.offset, length: info.length, name: name, dimStart: start,
                              dimCount: isBytesItem ? -1 : Int32(offsets.count), location: location))
        if slots.count < records.count * 2 {
            rebuildSlots(minimum: records.count)
        } else {
            place(Int32(records.count - 1), hash: hash)
        }
    }

    struct DimSequence: Sendable {
        var start: Int32
        var count: Int32
    }

    /// The start in `dims` of the sequence `offsets` (each fits `Int32`), stored if it is new.
    private mutating func internedDims(_ offsets: UnsafeBufferPointer<Int>) -> Int32 {
        if dimSlots.count < (dimSequences.count + 1) * 2 {
            var capacity = 64
            while capacity < (dimSequences.count + 1) * 4 { capacity *= 2 }
            dimSlots = [Int32](repeating: -1, count: capacity)
            for index in dimSequences.indices {
                let sequence = dimSequences[index]
                let hash = dims.withUnsafeBufferPointer { Self.dimsHash($0[Int(sequence.start)..<Int(sequence.start + sequence.count)].map { Int($0) }) }
                var slot = hash & (capacity - 1)
                while dimSlots[slot] >= 0 { slot = (slot + 1) & (capacity - 1) }
                dimSlots[slot] = Int32(index)
            }
        }
        let mask = dimSlots.count - 1
        var slot = Self.dimsHash(offsets) & mask
        while dimSlots[slot] >= 0 {
            let sequence = dimSequences[Int(dimSlots[slot])]
            if Int(sequence.count) == offsets.count,
               offsets.indices.allSatisfy({ Int(dims[Int(sequence.start) + $0]) == offsets[$0] }) {
                return sequence.start
            }
            slot = (slot + 1) & mask
        }
        let start = Int32(dims.count)
        for offset in offsets { dims.append(Int32(offset)) }
        dimSlots[slot] = Int32(dimSequences.count)
        dimSequences.append(DimSequence(start: start, count: Int32(offsets.count)))
        return start
    }

    /// A cheap mix of the offsets (the few thousand distinct sequences need no `Hasher`).
    private static func dimsHash<C: Collection>(_ offsets: C) -> Int where C.Element == Int {
        var hash: UInt64 = 0x9E37_79B9_7F4A_7C15 &+ UInt64(offsets.count)
        for offset in offsets {
            hash = (hash ^ UInt64(bitPattern: Int64(offset))) &* 0xBF58_476D_1CE4_E5B9
            hash ^= hash >> 29
        }
        return Int(truncatingIfNeeded: hash)
    }

    private func key(_ record: Record) -> DCPStorageKey {
        DCPStorageKey(fqn: names[Int(record.name)], offsets: record.dimCount < 0 ? nil : (0..<Int(record.dimCount)).map { offset(record, $0) })
    }

    private func offset(_ record: Record, _ axis: Int) -> Int {
        record.wide ? wideDims[Int(-1 - record.dimStart) + axis] : Int(dims[Int(record.dimStart) + axis])
    }

    private func info(_ record: Record) -> DCPStorageInfo {
        let location = locations[Int(record.location)]
        return DCPStorageInfo(relativePath: paths[Int(location.path)], offset: record.offset, length: record.length,
                              transformDescriptors: location.transforms < 0 ? nil : transformLists[Int(location.transforms)])
    }

    private static func hash(_ fqn: String, _ offsets: UnsafeBufferPointer<Int>?) -> Int {
        hash(fqnHash: fqn.hashValue, offsets)
    }

    private static func hash(fqnHash: Int, _ offsets: UnsafeBufferPointer<Int>?) -> Int {
        var hasher = Hasher()
        hasher.combine(fqnHash)
        if let offsets {
            hasher.combine(offsets.count)
            for offset in offsets { hasher.combine(offset) }
        } else {
            hasher.combine(-1)
        }
        return hasher.finalize()
    }

    private func find(fqn: String, offsets: [Int]?) -> Int? {
        if let offsets {
            return offsets.withUnsafeBufferPointer { find(fqn: fqn, offsets: $0, isBytesItem: false, hash: Self.hash(fqn, $0)) }
        }
        return find(fqn: fqn, offsets: UnsafeBufferPointer(start: nil, count: 0), isBytesItem: true, hash: Self.hash(fqn, nil))
    }

    /// The bits of `hash` a slot keeps beside the index (not those that chose the slot).
    private func tag(_ hash: Int) -> UInt32 {
        indexBits >= 32 ? 0 : UInt32(truncatingIfNeeded: UInt64(bitPattern: Int64(hash)) >> 40) & (UInt32.max >> UInt32(indexBits))
    }

    private func find(fqn: String, offsets: UnsafeBufferPointer<Int>, isBytesItem: Bool, hash: Int) -> Int? {
        guard !slots.isEmpty else { return nil }
        let mask = slots.count - 1
        let indexMask = indexBits >= 32 ? UInt32.max : (1 << UInt32(indexBits)) - 1
        let tag = self.tag(hash)
        var slot = hash & mask
        while true {
            let entry = slots[slot]
            if entry == 0 { return nil }
            if entry >> UInt32(indexBits) == tag {
                let index = Int(entry & indexMask) - 1
                let record = records[index]
                if matches(record, offsets, isBytesItem), names[Int(record.name)] == fqn { return index }
            }
            slot = (slot + 1) & mask
        }
    }

    private func matches(_ record: Record, _ offsets: UnsafeBufferPointer<Int>, _ isBytesItem: Bool) -> Bool {
        if isBytesItem { return record.dimCount < 0 }
        guard Int(record.dimCount) == offsets.count else { return false }
        for axis in 0..<offsets.count where offset(record, axis) != offsets[axis] { return false }
        return true
    }

    private mutating func place(_ index: Int32, hash: Int) {
        let mask = slots.count - 1
        var slot = hash & mask
        while slots[slot] != 0 { slot = (slot + 1) & mask }
        // Shifted out entirely when the index takes all 32 bits (then the tag is 0).
        slots[slot] = tag(hash) << UInt32(indexBits) | UInt32(index + 1)
    }

    private mutating func rebuildSlots(minimum: Int) {
        var capacity = 16
        while capacity < minimum * 2 { capacity *= 2 }
        // At most half full: record index + 1 < capacity = 2^indexBits.
        indexBits = capacity.trailingZeroBitCount
        slots = [UInt32](repeating: 0, count: capacity)
        // A tensor's entries are consecutive: its name is hashed once, not once per chunk.
        var last: (name: Int32, hash: Int)?
        var scratch: [Int] = []
        for index in records.indices {
            let record = records[index]
            let fqnHash: Int
            if let last, last.name == record.name {
                fqnHash = last.hash
            } else {
                fqnHash = names[Int(record.name)].hashValue
                last = (record.name, fqnHash)
            }
            let hash: Int
            if record.dimCount < 0 {
                hash = Self.hash(fqnHash: fqnHash, nil)
            } else {
                scratch.removeAll(keepingCapacity: true)
                for axis in 0..<Int(record.dimCount) { scratch.append(offset(record, axis)) }
                hash = scratch.withUnsafeBufferPointer { Self.hash(fqnHash: fqnHash, $0) }
            }
            place(Int32(index), hash: hash)
        }
    }
}

/// The global metadata of a DCP checkpoint (`.metadata`, Python: `Metadata`): every tensor with
/// its chunks, every bytes item, and where each chunk or item is stored.
public struct DCPMetadata: Sendable {
    /// Tensor entries in the order the file lists them.
    public var tensors: [(fqn: String, metadata: DCPTensorMetadata)]
    /// Bytes items (`BytesStorageMetadata`), in file order.
    public var bytesItems: [String]
    public var storage: DCPStorageTable
    public var version: String?
    /// `module.Name` of the pickled root object (`…metadata.Metadata`, or Megatron's older
    /// `MCoreMetadata`).
    public var rootClass: String

    public init(tensors: [(fqn: String, metadata: DCPTensorMetadata)], bytesItems: [String],
                storage: [DCPStorageKey: DCPStorageInfo], version: String? = "1.0.0",
                rootClass: String = "torch.distributed.checkpoint.metadata.Metadata") {
        self.init(tensors: tensors, bytesItems: bytesItems, storageTable: DCPStorageTable(storage), version: version, rootClass: rootClass)
    }

    public init(tensors: [(fqn: String, metadata: DCPTensorMetadata)], bytesItems: [String],
                storageTable: DCPStorageTable, version: String? = "1.0.0",
                rootClass: String = "torch.distributed.checkpoint.metadata.Metadata") {
        self.tensors = tensors
        self.bytesItems = bytesItems
        self.storage = storageTable
        self.version = version
        self.rootClass = rootClass
    }

    public func tensor(_ fqn: String) -> DCPTensorMetadata? { tensors.first(where: { $0.fqn == fqn })?.metadata }
}

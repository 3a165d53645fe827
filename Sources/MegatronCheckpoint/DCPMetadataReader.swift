import TensorCore
import TorchPickle

/// Reads a DCP `.metadata` pickle straight into `DCPMetadata`, without the generic reader's
/// object graph: a pickle machine over compact values (scalars inline, containers and objects as
/// indices into flat tables) that recognizes the DCP classes when `BUILD` gives them their state
/// and keeps only what `DCPMetadata` needs from them. A 51,000-item `.metadata` of 14 MB reads in
/// tens of MiB instead of the hundreds the `PickleValue` tree of every value takes.
///
/// The opcodes follow `PickleMachine` (CPython's `pickle._Unpickler`), with its checks in its
/// order: every global against the allow-list when the opcode names it (a forbidden global is an
/// error even if its value is popped), lengths and arguments against the input, memo reads of
/// keys never stored, the stack and memo limits, integer widths. These faults are thrown here as
/// the same `PickleError`s at the same offsets.
///
/// Anything valid this reader does not follow — protocol 0/1 text opcodes, objects built twice, a
/// state dict changed after `BUILD`, a chunk list shared by two tensors, a field of an unexpected
/// kind, or any DCP-level fault (which the generic walk words) — ends it with `.unusual`; the
/// caller then reads the file with the generic `PickleReader`, whose limits bound it. So both
/// readers give the same `DCPMetadata`, and the same error, for every file the fast one accepts.
///
/// Unlike the generic reader it keeps no depth or value counts: it never recurses, and it reads
/// each recognized object once. Fields it never reads (Megatron's `all_local_plans`, `mcore_data`,
/// `planner_data`, `storage_meta`) are checked opcode by opcode but not kept.
struct DCPMetadataReader {
    enum Stop: Error {
        /// The pickle is malformed or hostile: the same error the generic reader gives.
        case pickle(PickleError)
        /// A shape this reader does not follow; the generic reader decides.
        case unusual(String)
        /// The file could not be read.
        case file(FileIOError)
    }

    /// The pickle's bytes: all in memory, or a file read through a window that slides forward as
    /// the machine reads (a 409,000-chunk `.metadata` is 59 MB; only the window is held). Every
    /// read is at or after `position`, so bytes behind it are dropped when the window moves.
    struct Input {
        /// Bytes `start ..< start + window.count` of the input.
        var window: UnsafeRawBufferPointer
        var start = 0
        let count: Int
        let file: ReadOnlyFile?
        /// The window's storage when reading a file (owned by `read(file:)`).
        var buffer: UnsafeMutableRawBufferPointer?

        static let windowSize = 1 << 20

        subscript(absolute: Int) -> UInt8 {
            @inline(__always) get { window[absolute - start] }
        }

        func slice(_ from: Int, _ to: Int) -> UnsafeRawBufferPointer {
            UnsafeRawBufferPointer(rebasing: window[(from - start)..<(to - start)])
        }
    }

    /// A value on the stack, in the memo or in a container: 16 bytes.
    enum Value {
        case none
        case bool(Bool)
        case int(Int64)
        /// Values `.metadata` never reads as numbers, text or containers.
        case other(Other)
        /// Index into `strings`.
        case string(Int32)
        /// Index into `globals`.
        case global(Int32)
        /// Index into `tuples`; -1 is the empty tuple.
        case tuple(Int32)
        /// A tuple of one to three integers that fit Int32 (the dims and offsets of nearly every
        /// chunk), held in the value itself: at 400,000 chunks the tables of tuples and objects
        /// they took cost hundreds of MiB.
        case ints(SmallInts)
        /// A one-tuple holding such a tuple (the argument of `torch.Size`'s REDUCE).
        case wrappedInts(SmallInts)
        /// `torch.Size` of a small integer tuple.
        case size(SmallInts)
        case list(Int32)
        /// Index into `dicts` and the slot's generation: a consumed state dict's slot is reused, and
        /// a value of an earlier generation reads as consumed.
        case dict(Int32, generation: Int32)
        case object(Int32)
    }

    /// Up to three integers inline (13 bytes: a `Value` stays 16).
    struct SmallInts {
        var first: Int32, second: Int32, third: Int32
        var count: UInt8

        init(first: Int32, second: Int32, third: Int32, count: UInt8) {
            (self.first, self.second, self.third, self.count) = (first, second, third, count)
        }

        init?(_ values: ArraySlice<Value>) {
            guard (1...3).contains(values.count) else { return nil }
            var items: (Int32, Int32, Int32) = (0, 0, 0)
            for (position, value) in values.enumerated() {
                guard case .int(let number) = value, let small = Int32(exactly: number) else { return nil }
                switch position {
                case 0: items.0 = small
                case 1: items.1 = small
                default: items.2 = small
                }
            }
            (first, second, third, count) = (items.0, items.1, items.2, UInt8(values.count))
        }

        subscript(position: Int) -> Int64 { Int64(position == 0 ? first : position == 1 ? second : third) }
    }

    enum Other: UInt8 { case bigInt, float, bytes, byteArray, set, frozenSet }

    /// A tuple's elements: in `ints` when all are integers (sizes and offsets), else in `values`.
    struct Tuple {
        var start: Int32
        var count: Int32
        var allInts: Bool
    }

    /// A range of `ints`: the dimensions of a `torch.Size` or an integer tuple.
    struct Dims {
        var start: Int32
        var count: Int32
        static let absent = Dims(start: 0, count: -1)
    }

    /// A `_StorageInfo`'s fields; `transforms` is a list index or -1 for None.
    struct StorageRecord {
        var path: Int32
        var transforms: Int32
        var offset: Int64
        var length: Int64
    }

    struct DictRecord {
        var pairs: [(key: Value, value: Value)] = []
        var generation: Int32 = 0
        /// Named by the root: never reused.
        var pinned = false
        /// Read into a recognized object at `BUILD` and emptied; any later use goes to the generic reader.
        var consumed = false
        var taken = false
    }

    struct ListRecord {
        var items: [Value] = []
        var taken = false
        /// Read before the end (a transform list of a storage entry read as it is added): a later
        /// change would make this reader's result differ from the generic reader's.
        var frozen = false
    }

    /// What an object is, as far as `.metadata` needs to know.
    enum ObjectRecord {
        /// Made by REDUCE or NEWOBJ, not built: the callable (a global index, or -1).
        case made(callable: Int32)
        /// Built with a state this reader does not keep (not a DCP class, or not its usual shape).
        case opaque(callable: Int32)
        /// `torch.Size(dims)`.
        case size(Dims)
        /// `ChunkStorageMetadata`: an index into `chunkBoxes`.
        case chunk(Int32)
        /// `MetadataIndex(fqn, offset)`; `offsets.count == -1` for None.
        case index(fqn: Int32, offsets: Dims)
        /// `MetadataIndex` with up to three small offsets, held inline (no room taken in `ints`).
        case smallIndex(fqn: Int32, offsets: SmallInts)
        /// `_StorageInfo`: an index into `storageRecords` (its 64-bit fields kept out of the record
        /// keep every record at 20 bytes).
        case storage(Int32)
        case properties(dtype: DType, requiresGrad: Bool)
        /// `TensorStorageMetadata`: an object index (properties) and a list index (chunks).
        case tensor(properties: Int32, size: Dims, chunks: Int32)
        /// The root; dict indices (-1 when the field is not a dict) and a string index (-1: no version).
        case metadata(stateDict: Int32, storage: Int32, version: Int32, callable: Int32)
    }

    /// Which DCP class (or torch global) a global is.
    enum GlobalKind { case other, size, chunk, index, storage, properties, tensor, bytesItem, root }

    /// Field names of the DCP dataclasses, numbered for comparison without text.
    enum Field: UInt8 {
        case none = 0, offsets, sizes, fqn, offset, relativePath, length, transformDescriptors, properties, size, chunks,
            stateDictMetadata, storageData, version
        static let names: [String: Field] = [
            "offsets": .offsets, "sizes": .sizes, "fqn": .fqn, "offset": .offset, "relative_path": .relativePath,
            "length": .length, "transform_descriptors": .transformDescriptors, "properties": .properties, "size": .size,
            "chunks": .chunks, "state_dict_metadata": .stateDictMetadata, "storage_data": .storageData, "version": .version,
        ]
    }

    /// Opcodes by byte: a table lookup, not `PickleOpcode(rawValue:)`'s comparisons, for the 24
    /// million opcodes of a 409,000-chunk `.metadata`.
    static let opcodes: [PickleOpcode?] = {
        var table = [PickleOpcode?](repeating: nil, count: 256)
        for opcode in PickleOpcode.allCases { table[Int(opcode.rawValue)] = opcode }
        return table
    }()

    static let kinds: [String: GlobalKind] = {
        let module = DCPMetadata.metadataModule
        return [
            "torch.Size": .size, "\(module).ChunkStorageMetadata": .chunk, "\(module).MetadataIndex": .index,
            "torch.distributed.checkpoint.filesystem._StorageInfo": .storage, "\(module).TensorProperties": .properties,
            "\(module).TensorStorageMetadata": .tensor, "\(module).BytesStorageMetadata": .bytesItem, "\(module).Metadata": .root,
            "megatron.core.dist_checkpointing.strategies.torch.MCoreMetadata": .root,
        ]
    }()

    struct GlobalName: Hashable {
        var module: String
        var name: String
    }

    var input: Input
    let limits: PickleLimits
    let policy: PickleGlobals
    var position = 0
    var opcodeStart = 0
    var currentOpcode = PickleOpcode.proto

    var stack: [Value] = []
    var marks: [Int] = []
    var memo: Memo

    var strings: [String] = []
    var stringFields: [Field] = []
    var globals: [GlobalName] = []
    var globalKinds: [GlobalKind] = []
    var globalIndex: [GlobalName: Int32] = [:]
    var tuples: [Tuple] = []
    var ints: [Int64] = []
    var values: [Value] = []
    var lists: [ListRecord] = []
    var dicts: [DictRecord] = []
    var objects: [ObjectRecord] = []
    var storageRecords: [StorageRecord] = []
    /// The chunks' boxes, held compact as they will be kept (their dims in `ints` took 48 bytes a
    /// chunk, 34 MB at 409,000 chunks).
    var chunkBoxes: [DCPChunk] = []
    /// `BytesStorageMetadata` objects made: with `chunkBoxes`, the storage entries to expect
    /// (`state_dict_metadata` comes first), so the table is sized once, not doubled past them.
    var bytesItemObjects = 0
    /// Slots of consumed state dicts, for reuse: every chunk's three BUILD states would otherwise
    /// each keep a record.
    var freeDicts: [Int32] = []
    /// Objects already placed in the result (tensors, chunks): a second reference goes to the generic reader.
    var takenObjects: [Bool] = []
    /// Objects whose value was copied (memoized or duplicated): only an unshared object's slot is
    /// reused once the reader is done with it, so no value can name a slot that changed.
    var sharedObjects: [Bool] = []
    /// Slots of objects read into `eagerStorage`, and of their `_StorageInfo` records, for reuse:
    /// two of every three objects of a checkpoint are those.
    var freeObjects: [Int32] = []
    var freeStorageRecords: [Int32] = []
    /// `storage_data`, read as SETITEMS adds its entries to the one dict whose pairs are all
    /// `MetadataIndex` -> `_StorageInfo`: that dict never holds them as pairs (at 409,000 chunks
    /// the pairs took 17 MB until the end). The root must name this dict as `storage_data`.
    /// Made with the first entries (sized by the chunks and bytes items seen before them).
    var eagerStorage: DCPStorageTableBuilder?
    var eagerDict: (index: Int32, generation: Int32)?
    var eagerScratch: [Int] = []
    /// The string index of the last data file name found valid.
    var checkedPath: Int32 = -1
    /// `hashValue` of the strings used as storage keys' fqns, by string index.
    var fqnHashes: [Int32: Int] = [:]
    /// The memo entries of the record `builtRecord` is reading (kept for its capacity).
    var storedScratch: [Value] = []
    /// The slot of the dict `deadDictValue` names.
    var deadDict: Int32?
    /// Records `builtRecord` made (for tests: real files take the one-step path).
    var recordsInOneStep = 0

    /// `memoReads`: the keys the input's GETs read (`PickleMemoReadScanner`), when known.
    init(input: Input, limits: PickleLimits = .default, globals: PickleGlobals, memoReads: PickleMemoReads? = nil) {
        self.input = input
        self.limits = limits
        self.policy = globals
        self.memo = Memo(reads: memoReads)
    }

    /// The metadata of a whole `.metadata` file; `.unusual` when the generic reader must decide.
    static func read(_ bytes: UnsafeRawBufferPointer, globals: PickleGlobals) throws(Stop) -> DCPMetadata {
        // Table indices are Int32: each needs at least one byte of input.
        guard bytes.count < Int(Int32.max) else { throw .unusual("larger than 2 GiB") }
        var reader = DCPMetadataReader(input: Input(window: bytes, count: bytes.count, file: nil), globals: globals,
                                       memoReads: PickleMemoReadScanner.scan(bytes))
        return try reader.run()
    }

    /// `read`, and how many records it made in one step (`builtRecord`).
    static func readCountingOneStep(_ bytes: UnsafeRawBufferPointer, globals: PickleGlobals) throws(Stop) -> (DCPMetadata, Int) {
        var reader = DCPMetadataReader(input: Input(window: bytes, count: bytes.count, file: nil), globals: globals,
                                       memoReads: PickleMemoReadScanner.scan(bytes))
        let metadata = try reader.run()
        return (metadata, reader.recordsInOneStep)
    }

    /// `read` of a file through a sliding window instead of all its bytes.
    static func read(file: ReadOnlyFile, globals: PickleGlobals, windowSize: Int = Input.windowSize) throws(Stop) -> DCPMetadata {
        guard file.size < Int64(Int32.max) else { throw .unusual("larger than 2 GiB") }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(windowSize, 1), alignment: 16)
        let reads: PickleMemoReads?
        do throws(Stop) {
            reads = try memoReads(of: file, through: buffer)
        } catch {
            buffer.deallocate()
            throw error
        }
        var reader = DCPMetadataReader(input: Input(window: UnsafeRawBufferPointer(start: buffer.baseAddress, count: 0), count: Int(file.size),
                                                    file: file, buffer: buffer), globals: globals, memoReads: reads)
        defer { reader.input.buffer?.deallocate() }
        return try reader.run()
    }

    /// The memo keys the file's GETs read, skimmed window by window through `buffer` (the
    /// page cache then holds the file for the run).
    private static func memoReads(of file: ReadOnlyFile, through buffer: UnsafeMutableRawBufferPointer) throws(Stop) -> PickleMemoReads? {
        let count = Int(file.size)
        var scanner = PickleMemoReadScanner(count: count)
        var start = 0
        while start < count {
            let window = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<min(buffer.count, count - start)])
            do {
                try file.read(into: window, at: Int64(start))
            } catch let error as FileIOError {
                throw .file(error)
            } catch {
                preconditionFailure("ReadOnlyFile.read throws FileIOError")
            }
            switch scanner.skim(UnsafeRawBufferPointer(window), at: start) {
            case .needs(let from): start = from
            case .done(let reads): return reads
            case .unknown: return nil
            }
        }
        return nil
    }

    /// Makes `input[position ..< position + count]` readable; the caller has checked that the
    /// input has these bytes.
    @inline(__always)
    private mutating func ensure(_ count: Int) throws(Stop) {
        if position + count <= input.start + input.window.count { return }
        try slide(count)
    }

    private mutating func slide(_ count: Int) throws(Stop) {
        guard let file = input.file, var buffer = input.buffer else { preconditionFailure("a read past the input") }
        // Negative after `skip` stepped past the window (bytes never read): nothing is kept.
        let kept = max(0, input.start + input.window.count - position)
        if count > buffer.count {
            // A string longer than the window: grow it (bounded by the file's size).
            let grown = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, buffer.count * 2), alignment: 16)
            if kept > 0 { grown.baseAddress!.copyMemory(from: input.window.baseAddress! + (position - input.start), byteCount: kept) }
            buffer.deallocate()
            buffer = grown
            input.buffer = grown
        } else if kept > 0 {
            buffer.baseAddress!.copyMemory(from: input.window.baseAddress! + (position - input.start), byteCount: kept)
        }
        let fill = min(buffer.count - kept, input.count - (position + kept))
        do {
            try file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[kept..<(kept + fill)]), at: Int64(position + kept))
        } catch let error as FileIOError {
            throw .file(error)
        } catch {
            preconditionFailure("ReadOnlyFile.read throws FileIOError")
        }
        input.start = position
        input.window = UnsafeRawBufferPointer(rebasing: buffer[0..<(kept + fill)])
    }

    var site: PickleError.Site { .init(offset: opcodeStart, opcode: currentOpcode.name) }
    var remaining: Int { input.count - position }

    // MARK: - Running

    mutating func run() throws(Stop) -> DCPMetadata {
        while position < input.count {
            opcodeStart = position
            try ensure(1)
            let byte = input[position]
            position += 1
            guard let opcode = Self.opcodes[Int(byte)] else {
                throw .pickle(.unknownOpcode(.init(offset: opcodeStart, opcode: "unknown"), byte: byte))
            }
            currentOpcode = opcode
            if opcode == .binGet || opcode == .longBinGet, builtRecord() { continue }
            if fastPath(opcode) { continue }
            if opcode == .stop {
                let root = try pop()
                let metadata = try finish(root)
                guard position == input.count else {
                    throw .pickle(.trailingBytes(.init(offset: position - 1, opcode: "STOP"), count: input.count - position))
                }
                return metadata
            }
            try execute(opcode)
        }
        throw .pickle(.missingStop(.init(offset: input.count, opcode: "end of input")))
    }

    /// The opcodes that make up most of a `.metadata` (seven of ten: the integers, memo reads,
    /// marks and small tuples of every chunk), done in the loop instead of through `execute`'s
    /// large frame, when their argument is in the window and the stack has room. False when
    /// `execute` must do it (also to word any fault): nothing was read or changed then.
    @inline(__always)
    private mutating func fastPath(_ opcode: PickleOpcode) -> Bool {
        let windowEnd = input.start + input.window.count
        let room = stack.count + marks.count < limits.maxStackSize
        switch opcode {
        case .binInt1:
            guard room, position < windowEnd else { return false }
            stack.append(.int(Int64(input[position])))
            position += 1
        case .binInt2:
            guard room, position + 2 <= windowEnd else { return false }
            stack.append(.int(Int64(input[position]) | Int64(input[position + 1]) << 8))
            position += 2
        case .binGet:
            guard room, position < windowEnd, let value = memo.value(UInt64(input[position])) else { return false }
            stack.append(value)
            position += 1
        case .mark:
            guard room else { return false }
            marks.append(stack.count)
        case .emptyTuple:
            guard room else { return false }
            stack.append(.tuple(-1))
        case .emptyDict:
            guard room else { return false }
            stack.append(newDict([]))
        case .tuple1, .tuple2, .tuple3:
            // The tuple replaces at least one value: never past the stack limit.
            let count = opcode == .tuple1 ? 1 : opcode == .tuple2 ? 2 : 3
            guard available >= count else { return false }
            let tuple = makeTuple(from: stack.count - count)
            stack.append(tuple)
        default:
            return false
        }
        return true
    }

    // MARK: - Records in one step

    /// A chunk, storage key or storage entry whose whole pickle is the usual run of opcodes —
    /// `GET cls, EMPTY_TUPLE, NEWOBJ, EMPTY_DICT, MARK, (GET field, value)…, SETITEMS, BUILD`,
    /// each value None, an integer, `torch.Size` of one to three dims or a memo read, with the
    /// MEMOIZEs torch's pickler puts after the object, the dict and each tuple — made in one step:
    /// the record BUILD would make, pushed as the object, and the memo entries the run stores.
    /// These runs are nearly all of a 409,000-chunk `.metadata` (24 million opcodes; about 1 µs
    /// a record step by step).
    ///
    /// Only when the outcome is sure: every byte of the run in the window, the memo keys read
    /// stored before it, the stack and memo with room for what the steps add, and the state one
    /// BUILD turns into a recognized record. Nothing in such a run can fault. Its state dict
    /// exists only as a memo entry, if at all: that entry is a dict consumed by its BUILD, as
    /// the steps would leave it (`deadDict`, made once, never named unless a run succeeds).
    /// Anything else returns false with nothing else read or changed, and the opcodes are done
    /// one by one.
    private mutating func builtRecord() -> Bool {
        let end = input.start + input.window.count
        guard stack.count + marks.count + 16 < limits.maxStackSize, memo.sparse.isEmpty else { return false }
        var cursor = opcodeStart
        guard case .global(let callable)? = memoValue(&cursor, end: end) else { return false }
        let kind = globalKinds[Int(callable)]
        guard kind == .chunk || kind == .index || kind == .storage, cursor + 2 <= end,
            input[cursor] == PickleOpcode.emptyTuple.rawValue, input[cursor + 1] == PickleOpcode.newObj.rawValue
        else { return false }
        cursor += 2
        // The run's memo entries in order; `.none` stands for the object (made only at the end).
        var stored: [Value] = []
        swap(&stored, &storedScratch)  // its buffer, uniquely held
        defer { swap(&stored, &storedScratch) }
        stored.removeAll(keepingCapacity: true)
        let objectStored = memoized(&cursor, end: end)
        if objectStored { stored.append(Value.none) }
        guard cursor + 1 <= end, input[cursor] == PickleOpcode.emptyDict.rawValue else { return false }
        cursor += 1
        if memoized(&cursor, end: end) { stored.append(deadDictValue()) }
        guard cursor + 1 <= end, input[cursor] == PickleOpcode.mark.rawValue else { return false }
        cursor += 1
        var fields = FieldValues()
        var pairs = 0
        while true {
            guard cursor < end else { return false }
            if input[cursor] == PickleOpcode.setItems.rawValue { break }
            // Four pairs at most: FieldValues keeps them inline.
            guard pairs < 4, case .string(let text)? = memoValue(&cursor, end: end),
                let value = stateValue(&cursor, end: end, storing: &stored)
            else { return false }
            pairs += 1
            let field = stringFields[Int(text)]
            if field != .none { fields[field] = value }
        }
        guard cursor + 2 <= end, input[cursor + 1] == PickleOpcode.build.rawValue,
            memo.entryCount + stored.count <= limits.maxMemoEntries
        else { return false }
        cursor += 2
        // What `build` makes of these fields; where it would leave the object opaque, it decides.
        let record: ObjectRecord
        switch kind {
        case .chunk:
            guard let offsets = fields[.offsets], let sizes = fields[.sizes], let box = chunkBox(offsets: offsets, sizes: sizes) else { return false }
            chunkBoxes.append(box)
            record = .chunk(Int32(chunkBoxes.count - 1))
        case .index:
            guard case .string(let fqn)? = fields[.fqn] else { return false }
            switch fields[.offset] {
            case nil, .none?: record = .index(fqn: fqn, offsets: .absent)
            case .ints(let small)?, .size(let small)?: record = .smallIndex(fqn: fqn, offsets: small)
            default: return false
            }
        default:
            guard case .string(let path)? = fields[.relativePath], case .int(let offset)? = fields[.offset],
                case .int(let length)? = fields[.length]
            else { return false }
            switch fields[.transformDescriptors] {
            case nil, .none?: break
            default: return false
            }
            record = .storage(newStorageRecord(StorageRecord(path: path, transforms: -1, offset: offset, length: length)))
        }
        let object = newObject(record)
        for (index, value) in stored.enumerated() {
            if index == 0 && objectStored {
                // Memoized as the steps would: kept, it is shared, so its slot is never reused.
                if memo.append(.object(object)) { sharedObjects[Int(object)] = true }
            } else {
                _ = memo.append(value)
            }
        }
        stack.append(.object(object))
        position = cursor
        recordsInOneStep += 1
        return true
    }

    /// Steps over a MEMOIZE at `cursor`; whether there was one.
    @inline(__always)
    private func memoized(_ cursor: inout Int, end: Int) -> Bool {
        guard cursor < end, input[cursor] == PickleOpcode.memoize.rawValue else { return false }
        cursor += 1
        return true
    }

    /// A dict consumed by its BUILD and never reused: what a memo entry of a record's state dict
    /// is once the record is built (any use as a container or a state goes to the generic reader).
    private mutating func deadDictValue() -> Value {
        if let deadDict { return .dict(deadDict, generation: 0) }
        dicts.append(DictRecord(generation: 0, pinned: true, consumed: true))
        deadDict = Int32(dicts.count - 1)
        return .dict(deadDict!, generation: 0)
    }

    /// The value of a BINGET or LONG_BINGET at `cursor` (advanced past it); nil when it is not
    /// one, runs past `end`, or reads a key not in `memo`.
    @inline(__always)
    private func memoValue(_ cursor: inout Int, end: Int) -> Value? {
        guard cursor + 2 <= end else { return nil }
        let key: UInt64, width: Int
        switch input[cursor] {
        case PickleOpcode.binGet.rawValue:
            (key, width) = (UInt64(input[cursor + 1]), 2)
        case PickleOpcode.longBinGet.rawValue:
            guard cursor + 5 <= end else { return nil }
            let bytes = UInt64(input[cursor + 1]) | UInt64(input[cursor + 2]) << 8 | UInt64(input[cursor + 3]) << 16
            (key, width) = (bytes | UInt64(input[cursor + 4]) << 24, 5)
        default:
            return nil
        }
        guard let value = memo.value(key) else { return nil }
        cursor += width
        return value
    }

    /// BININT1, BININT2, BININT or a LONG1 of up to eight bytes at `cursor`, as `execute` reads it.
    @inline(__always)
    private func smallInteger(_ cursor: inout Int, end: Int) -> Int64? {
        guard cursor + 2 <= end else { return nil }
        switch input[cursor] {
        case PickleOpcode.binInt1.rawValue:
            defer { cursor += 2 }
            return Int64(input[cursor + 1])
        case PickleOpcode.binInt2.rawValue:
            guard cursor + 3 <= end else { return nil }
            defer { cursor += 3 }
            return Int64(input[cursor + 1]) | Int64(input[cursor + 2]) << 8
        case PickleOpcode.binInt.rawValue:
            guard cursor + 5 <= end else { return nil }
            defer { cursor += 5 }
            let bits = UInt32(input[cursor + 1]) | UInt32(input[cursor + 2]) << 8 | UInt32(input[cursor + 3]) << 16 | UInt32(input[cursor + 4]) << 24
            return Int64(Int32(bitPattern: bits))
        case PickleOpcode.long1.rawValue:
            let count = Int(input[cursor + 1])
            guard count <= 8, count <= limits.maxBigIntBytes, cursor + 2 + count <= end,
                case .int(let value) = integer(at: cursor + 2, count: count)
            else { return nil }
            cursor += 2 + count
            return value
        default:
            return nil
        }
    }

    /// A state dict value in a record run: None, an integer, `torch.Size` of one to three Int32
    /// dims (`GET torch.Size, INT…, TUPLEn, TUPLE1, REDUCE`, each result perhaps memoized: added
    /// to `stored`), or a memo read.
    private func stateValue(_ cursor: inout Int, end: Int, storing stored: inout [Value]) -> Value? {
        guard cursor < end else { return nil }
        if input[cursor] == PickleOpcode.none.rawValue {
            cursor += 1
            return Value.none
        }
        if let number = smallInteger(&cursor, end: end) { return .int(number) }
        var sizeCursor = cursor
        if case .global(let global)? = memoValue(&sizeCursor, end: end), globalKinds[Int(global)] == .size {
            var dims: (Int32, Int32, Int32) = (0, 0, 0)
            var count = 0
            while count <= 3, let number = smallInteger(&sizeCursor, end: end) {
                guard let small = Int32(exactly: number) else { return nil }
                switch count {
                case 0: dims.0 = small
                case 1: dims.1 = small
                case 2: dims.2 = small
                default: break
                }
                count += 1
            }
            // TUPLE1, TUPLE2 and TUPLE3 are consecutive bytes.
            guard (1...3).contains(count), sizeCursor < end, input[sizeCursor] == PickleOpcode.tuple1.rawValue + UInt8(count - 1) else {
                return memoValue(&cursor, end: end)
            }
            let small = SmallInts(first: dims.0, second: dims.1, third: dims.2, count: UInt8(count))
            let mark = stored.count
            sizeCursor += 1
            if memoized(&sizeCursor, end: end) { stored.append(.ints(small)) }
            guard sizeCursor < end, input[sizeCursor] == PickleOpcode.tuple1.rawValue else {
                stored.removeSubrange(mark...)
                return memoValue(&cursor, end: end)
            }
            sizeCursor += 1
            if memoized(&sizeCursor, end: end) { stored.append(.wrappedInts(small)) }
            guard sizeCursor < end, input[sizeCursor] == PickleOpcode.reduce.rawValue else {
                stored.removeSubrange(mark...)
                return memoValue(&cursor, end: end)
            }
            sizeCursor += 1
            if memoized(&sizeCursor, end: end) { stored.append(.size(small)) }
            cursor = sizeCursor
            return .size(small)
        }
        return memoValue(&cursor, end: end)
    }

    private mutating func execute(_ opcode: PickleOpcode) throws(Stop) {
        switch opcode {
        case .proto:
            let version = Int(try readFixed(1))
            guard version <= 5 else { throw .pickle(.unsupportedProtocol(site, version: version)) }
        case .frame:
            let length = try readFixed(8)
            guard length <= UInt64(remaining) else { throw .pickle(.truncated(site, needed: length, available: remaining)) }
        case .stop:
            preconditionFailure("STOP is handled by run()")

        // Stack and memo.
        case .mark:
            try checkStackRoom()
            marks.append(stack.count)
        case .pop:
            if stack.count > (marks.last ?? 0) {
                stack.removeLast()
            } else if marks.isEmpty {
                throw .pickle(.stackUnderflow(site, needed: 1, available: 0))
            } else {
                let mark = try popMark()
                stack.removeSubrange(mark...)
            }
        case .popMark:
            let mark = try popMark()
            stack.removeSubrange(mark...)
        case .dup:
            let value = try top()
            share(value)
            try push(value)
        case .binPut, .longBinPut:
            let key = try readFixed(opcode == .binPut ? 1 : 4)
            try memoPut(key, try top())
        case .memoize:
            try memoPut(UInt64(memo.entryCount), try top())
        case .binGet, .longBinGet:
            let key = try readFixed(opcode == .binGet ? 1 : 4)
            guard let value = memo.value(key) else {
                // Should the scan ever miss a GET, the generic reader, which keeps every entry, decides.
                if memo.dropped(key) { throw .unusual("memo key \(key) read, but the scan found no GET of it") }
                throw .pickle(.memoKeyMissing(site, key: key))
            }
            try push(value)

        // Scalars.
        case .none: try push(.none)
        case .newTrue: try push(.bool(true))
        case .newFalse: try push(.bool(false))
        case .binInt: try push(.int(Int64(Int32(bitPattern: UInt32(try readFixed(4))))))
        case .binInt1: try push(.int(Int64(try readFixed(1))))
        case .binInt2: try push(.int(Int64(try readFixed(2))))
        case .long1, .long4:
            let count = try readLength(opcode == .long1 ? 1 : 4, signed: opcode == .long4)
            guard count <= limits.maxBigIntBytes else {
                throw .pickle(.limitExceeded(site, limit: .bigIntBytes, maximum: limits.maxBigIntBytes))
            }
            // Two statements: in `integer(at: take(…))` the non-mutating call's `self` is read
            // before `take` slides the window, and would see the old one.
            let start = try take(count)
            try push(integer(at: start, count: count))
        case .binFloat:
            _ = try readFixed(8)
            try push(.other(.float))

        // Text and bytes.
        case .binString, .shortBinString:
            let count = try readLength(opcode == .binString ? 4 : 1, signed: true)
            try push(try string(at: try take(count), count: count))
        case .shortBinUnicode, .binUnicode, .binUnicode8:
            let count = try readLength(opcode == .shortBinUnicode ? 1 : opcode == .binUnicode ? 4 : 8, signed: false)
            try push(try string(at: try take(count), count: count))
        case .shortBinBytes, .binBytes, .binBytes8, .byteArray8:
            let width = opcode == .shortBinBytes ? 1 : opcode == .binBytes ? 4 : 8
            _ = try skip(try readLength(width, signed: false))
            try push(.other(opcode == .byteArray8 ? .byteArray : .bytes))
        case .nextBuffer, .readOnlyBuffer:
            throw .pickle(.unsupported(site, reason: "out-of-band buffers (pickle protocol 5 `buffers=`) are not available"))

        // Containers.
        case .emptyTuple: try push(.tuple(-1))
        case .tuple:
            let mark = try popMark()
            let tuple = makeTuple(from: mark)
            try push(tuple)
        case .tuple1, .tuple2, .tuple3:
            let count = opcode == .tuple1 ? 1 : opcode == .tuple2 ? 2 : 3
            try need(count)
            let tuple = makeTuple(from: stack.count - count)
            try push(tuple)
        case .emptyList:
            lists.append(ListRecord())
            try push(.list(Int32(lists.count - 1)))
        case .list:
            let mark = try popMark()
            lists.append(ListRecord(items: Array(stack[mark...])))
            stack.removeSubrange(mark...)
            try push(.list(Int32(lists.count - 1)))
        case .emptyDict:
            try push(newDict([]))
        case .dict:
            let mark = try popMark()
            let pairs = try self.pairs(from: mark)
            try checkHashableKeys(from: mark)
            stack.removeSubrange(mark...)
            try push(newDict(pairs))
        case .emptySet: try push(.other(.set))
        case .frozenSet:
            let mark = try popMark()
            stack.removeSubrange(mark...)
            try push(.other(.frozenSet))
        case .append:
            let item = try pop()
            stack.append(item)
            try add(from: stack.count - 1, to: try below(stack.count - 1), as: .list)
        case .appends:
            let mark = try popMark()
            try add(from: mark, to: try below(mark), as: .list)
        case .setItem:
            try need(2)
            try add(from: stack.count - 2, to: try below(stack.count - 2), as: .dict)
        case .setItems:
            let mark = try popMark()
            try add(from: mark, to: try below(mark), as: .dict)
        case .addItems:
            let mark = try popMark()
            try add(from: mark, to: try below(mark), as: .set)

        // Globals and objects.
        case .global:
            let module = try decodeUTF8(try readLine())
            let name = try decodeUTF8(try readLine())
            try push(.global(try global(module, name)))
        case .stackGlobal:
            try need(2)
            guard case .string(let module) = stack[stack.count - 2], case .string(let name) = stack[stack.count - 1] else {
                throw .unusual("STACK_GLOBAL of values that are not two str")
            }
            stack.removeLast(2)
            try push(.global(try global(strings[Int(module)], strings[Int(name)])))
        case .reduce, .newObj:
            try need(2)
            let callable = stack[stack.count - 2]
            let args = stack[stack.count - 1]
            switch args {
            case .tuple, .ints, .wrappedInts: break
            default: throw .unusual("\(opcode.name) without an argument tuple")
            }
            stack.removeLast(2)
            try push(makeObject(callable, args: args, reduce: opcode == .reduce))
        case .build:
            let state = try pop()
            guard case .object(let object) = try top() else { throw .unusual("BUILD of a value that is not an object") }
            try build(Int(object), state: state)

        // Protocol 0/1 text opcodes, and others `.metadata` never holds: the generic reader's.
        case .int, .long, .float, .string, .unicode, .get, .put, .inst, .obj, .newObjEx, .persID, .binPersID, .ext1, .ext2, .ext4:
            throw .unusual("opcode \(opcode.name)")
        }
    }

    // MARK: - Stack and memo

    @inline(__always)
    private func checkStackRoom() throws(Stop) {
        guard stack.count + marks.count < limits.maxStackSize else {
            throw .pickle(.limitExceeded(site, limit: .stackSize, maximum: limits.maxStackSize))
        }
    }

    @inline(__always)
    private mutating func push(_ value: Value) throws(Stop) {
        try checkStackRoom()
        stack.append(value)
    }

    private var available: Int { stack.count - (marks.last ?? 0) }

    @inline(__always)
    private func need(_ count: Int) throws(Stop) {
        guard available >= count else { throw .pickle(.stackUnderflow(site, needed: count, available: available)) }
    }

    @inline(__always)
    private mutating func pop() throws(Stop) -> Value {
        try need(1)
        return stack.removeLast()
    }

    @inline(__always)
    private func top() throws(Stop) -> Value {
        try need(1)
        return stack[stack.count - 1]
    }

    /// The value below stack position `index` (the container APPEND, SETITEM and friends add to),
    /// which must lie above the mark now current.
    private func below(_ index: Int) throws(Stop) -> Value {
        guard index > (marks.last ?? 0) else { throw .pickle(.stackUnderflow(site, needed: 1, available: 0)) }
        return stack[index - 1]
    }

    /// Pops the last mark; the values above it are `stack[mark...]`.
    private mutating func popMark() throws(Stop) -> Int {
        guard let mark = marks.popLast() else { throw .pickle(.markNotFound(site)) }
        return mark
    }

    private mutating func memoPut(_ key: UInt64, _ value: Value) throws(Stop) {
        // A value no GET reads is not kept, so it is not shared either.
        if memo.put(key, value) { share(value) }
        guard memo.entryCount <= limits.maxMemoEntries else {
            throw .pickle(.limitExceeded(site, limit: .memoEntries, maximum: limits.maxMemoEntries))
        }
    }

    // MARK: - Values

    private mutating func global(_ module: String, _ name: String) throws(Stop) -> Int32 {
        guard policy.allows(module: module, name: name) else {
            throw .pickle(.forbiddenGlobal(site, module: module, name: name))
        }
        let key = GlobalName(module: module, name: name)
        if let known = globalIndex[key] { return known }
        globals.append(key)
        globalKinds.append(Self.kinds["\(module).\(name)"] ?? .other)
        let index = Int32(globals.count - 1)
        globalIndex[key] = index
        return index
    }

    private mutating func string(at start: Int, count: Int) throws(Stop) -> Value {
        let bytes = input.slice(start, start + count)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw .pickle(.invalidArgument(site, reason: "text is not valid UTF-8"))
        }
        strings.append(text)
        stringFields.append(count <= 21 ? Field.names[text] ?? .none : .none)
        return .string(Int32(strings.count - 1))
    }

    /// LONG1/LONG4's little-endian two's complement bytes, as `.int` when they fit Int64.
    private func integer(at start: Int, count: Int) -> Value {
        if count == 0 { return .int(0) }
        let negative = input[start + count - 1] & 0x80 != 0
        if count > 8 {
            // Fits when every byte above the eighth only extends the sign of the eighth.
            let fill: UInt8 = negative ? 0xFF : 0x00
            for index in 8..<count where input[start + index] != fill { return .other(.bigInt) }
            guard (input[start + 7] & 0x80 != 0) == negative else { return .other(.bigInt) }
        }
        var bits: UInt64 = negative ? ~0 : 0
        for index in (0..<min(count, 8)).reversed() {
            bits = bits << 8 | UInt64(input[start + index])
        }
        if count < 8 && negative { bits |= ~0 << (UInt64(count) * 8) }
        return .int(Int64(bitPattern: bits))
    }

    /// A tuple of `stack[from...]`, which it removes.
    private mutating func makeTuple(from start: Int) -> Value {
        let count = stack.count - start
        defer { stack.removeSubrange(start...) }
        if count == 0 { return .tuple(-1) }
        if let small = SmallInts(stack[start...]) { return .ints(small) }
        if count == 1, case .ints(let small) = stack[start] { return .wrappedInts(small) }
        var allInts = true
        for index in start..<stack.count {
            guard case .int = stack[index] else { allInts = false; break }
        }
        if allInts {
            tuples.append(Tuple(start: Int32(ints.count), count: Int32(count), allInts: true))
            for index in start..<stack.count {
                if case .int(let number) = stack[index] { ints.append(number) }
            }
        } else {
            tuples.append(Tuple(start: Int32(values.count), count: Int32(count), allInts: false))
            values.append(contentsOf: stack[start...])
        }
        return .tuple(Int32(tuples.count - 1))
    }

    private mutating func makeObject(_ callable: Value, args: Value, reduce: Bool) -> Value {
        var global: Int32 = -1
        if case .global(let index) = callable { global = index }
        // torch.Size((d0, d1, …)): a value when the dims are small, else kept as a range of `ints`.
        if reduce, global >= 0, globalKinds[Int(global)] == .size {
            switch args {
            case .wrappedInts(let small):
                return .size(small)
            case .tuple(let index) where index >= 0 && tuples[Int(index)].count == 1 && !tuples[Int(index)].allInts:
                let element = values[Int(tuples[Int(index)].start)]
                if case .size(let small) = element { return .size(small) }
                if let dims = tableDims(of: element) {
                    return .object(newObject(.size(dims)))
                }
            default:
                break
            }
        }
        if global >= 0, globalKinds[Int(global)] == .bytesItem { bytesItemObjects += 1 }
        return .object(newObject(.made(callable: global)))
    }

    private mutating func newObject(_ record: ObjectRecord) -> Int32 {
        if let slot = freeObjects.popLast() {
            objects[Int(slot)] = record
            takenObjects[Int(slot)] = false
            sharedObjects[Int(slot)] = false
            return slot
        }
        objects.append(record)
        takenObjects.append(false)
        sharedObjects.append(false)
        return Int32(objects.count - 1)
    }

    /// A `_StorageInfo` record, in a freed one's slot when there is one.
    private mutating func newStorageRecord(_ record: StorageRecord) -> Int32 {
        if let slot = freeStorageRecords.popLast() {
            storageRecords[Int(slot)] = record
            return slot
        }
        storageRecords.append(record)
        return Int32(storageRecords.count - 1)
    }

    /// Marks an object whose value is being copied (MEMOIZE, BINPUT, DUP).
    private mutating func share(_ value: Value) {
        if case .object(let index) = value { sharedObjects[Int(index)] = true }
    }

    /// The dims of a `torch.Size` or of a tuple of integers, as a range of `ints` (small ones are
    /// copied there: only the dims a record keeps).
    private mutating func dims(of value: Value) -> Dims? {
        switch value {
        case .ints(let small), .size(let small):
            let start = Int32(ints.count)
            for position in 0..<Int(small.count) { ints.append(small[position]) }
            return Dims(start: start, count: Int32(small.count))
        default:
            return tableDims(of: value)
        }
    }

    /// The box of a chunk whose offsets and sizes are integer tuples (or `torch.Size`s) of one length.
    private func chunkBox(offsets: Value, sizes: Value) -> DCPChunk? {
        func count(_ value: Value) -> Int? {
            switch value {
            case .ints(let small), .size(let small): Int(small.count)
            default: tableDims(of: value).map { Int($0.count) }
            }
        }
        func fill(_ value: Value, _ buffer: UnsafeMutableBufferPointer<Int>, from base: Int) {
            switch value {
            case .ints(let small), .size(let small):
                for axis in 0..<Int(small.count) { buffer[base + axis] = Int(small[axis]) }
            default:
                let dims = tableDims(of: value)!
                for axis in 0..<Int(dims.count) { buffer[base + axis] = Int(ints[Int(dims.start) + axis]) }
            }
        }
        guard let rank = count(offsets), count(sizes) == rank else { return nil }
        return withUnsafeTemporaryAllocation(of: Int.self, capacity: max(2 * rank, 1)) { buffer in
            fill(offsets, buffer, from: 0)
            fill(sizes, buffer, from: rank)
            return DCPChunk(offsets: UnsafeBufferPointer(rebasing: buffer[0..<rank]), sizes: UnsafeBufferPointer(rebasing: buffer[rank..<(2 * rank)]))
        }
    }

    /// `dims(of:)` of a tuple or `torch.Size` held in the tables.
    private func tableDims(of value: Value) -> Dims? {
        switch value {
        case .tuple(let index):
            if index < 0 { return Dims(start: 0, count: 0) }
            let tuple = tuples[Int(index)]
            return tuple.allInts ? Dims(start: tuple.start, count: tuple.count) : nil
        case .object(let index):
            if case .size(let dims) = objects[Int(index)] { return dims }
            return nil
        default:
            return nil
        }
    }

    /// A dict record, in a consumed one's slot when there is one.
    private mutating func newDict(_ pairs: [(key: Value, value: Value)]) -> Value {
        while let slot = freeDicts.popLast() {
            guard !dicts[Int(slot)].pinned else { continue }  // consumed, then named by the root
            let generation = dicts[Int(slot)].generation + 1
            // The slot's emptied pairs array is kept: a chunk's state dicts allocate nothing.
            var reused = DictRecord(generation: generation)
            swap(&reused.pairs, &dicts[Int(slot)].pairs)
            reused.pairs.removeAll(keepingCapacity: true)
            reused.pairs.append(contentsOf: pairs)
            dicts[Int(slot)] = reused
            return .dict(slot, generation: generation)
        }
        dicts.append(DictRecord(pairs: pairs))
        return .dict(Int32(dicts.count - 1), generation: 0)
    }

    /// Whether a dict value is its slot's current dict (not one consumed and replaced).
    private func isCurrent(_ index: Int32, _ generation: Int32) -> Bool { dicts[Int(index)].generation == generation }

    private func checkPairs(from start: Int) throws(Stop) {
        let count = stack.count - start
        guard count % 2 == 0 else {
            throw .pickle(.invalidArgument(site, reason: "odd number of items (\(count)) for key/value pairs"))
        }
    }

    /// Python refuses a list, dict, set or bytearray as a dict key (unhashable), in fields this
    /// reader never keeps too: such a file goes to the generic reader. (A tuple holding one is
    /// not looked into.)
    private func checkHashableKeys(from start: Int) throws(Stop) {
        for position in stride(from: start, to: stack.count, by: 2) {
            switch stack[position] {
            case .list, .dict, .other(.set), .other(.byteArray): throw .unusual("an unhashable dict key")
            default: continue
            }
        }
    }

    private func pairs(from start: Int) throws(Stop) -> [(key: Value, value: Value)] {
        try checkPairs(from: start)
        let count = stack.count - start
        var pairs: [(key: Value, value: Value)] = []
        pairs.reserveCapacity(count / 2)
        for index in stride(from: start, to: stack.count, by: 2) { pairs.append((stack[index], stack[index + 1])) }
        return pairs
    }

    private enum Addition { case list, dict, set }

    /// APPEND(S), SETITEM(S), ADDITEMS of `stack[from...]` (removed) to `target`: a container of
    /// that kind, or an object (whose added items `.metadata` never reads).
    private mutating func add(from start: Int, to target: Value, as addition: Addition) throws(Stop) {
        switch (addition, target) {
        case (.list, .list(let index)):
            guard !lists[Int(index)].frozen else { throw .unusual("a transform list changed after its storage entry was read") }
            lists[Int(index)].items.append(contentsOf: stack[start...])
        case (.dict, .dict(let index, let generation)):
            try checkPairs(from: start)
            try checkHashableKeys(from: start)
            guard isCurrent(index, generation), !dicts[Int(index)].consumed else { throw .unusual("a state dict changed after BUILD") }
            // Straight from the stack: a temporary array of pairs per SETITEMS was two of every
            // chunk's allocations.
            if try !takeStorageEntries(from: start, dict: index, generation: generation) {
                for position in stride(from: start, to: stack.count, by: 2) {
                    dicts[Int(index)].pairs.append((stack[position], stack[position + 1]))
                }
            }
        case (.dict, .object):
            try checkPairs(from: start)
        case (.set, .other(.set)), (_, .object):
            break
        default:
            throw .unusual("\(currentOpcode.name) to a value of another kind")
        }
        stack.removeSubrange(start...)
    }

    // MARK: - DCP objects

    private func isEager(_ index: Int32, _ generation: Int32) -> Bool {
        eagerDict.map { $0.index == index && $0.generation == generation } ?? false
    }

    /// Adds `pairs` to `eagerStorage` when they are storage entries for the eager dict (the first
    /// dict given only such pairs); false when they are pairs of another dict.
    private mutating func takeStorageEntries(from start: Int, dict index: Int32, generation: Int32) throws(Stop) -> Bool {
        guard start < stack.count else { return false }
        let eager = isEager(index, generation)
        if !eager {
            guard eagerDict == nil, dicts[Int(index)].pairs.isEmpty else { return false }
        }
        for position in stride(from: start, to: stack.count, by: 2) {
            let (key, value) = (stack[position], stack[position + 1])
            guard case .object(let keyIndex) = key, objects[Int(keyIndex)].isIndex,
                case .object(let valueIndex) = value, case .storage = objects[Int(valueIndex)]
            else {
                if eager { throw .unusual("storage entries mixed with other pairs") }
                return false
            }
        }
        eagerDict = (index, generation)
        let table = eagerStorage ?? DCPStorageTableBuilder(expectedCount: chunkBoxes.count + bytesItemObjects)
        eagerStorage = table
        for position in stride(from: start, to: stack.count, by: 2) {
            let (key, value) = (stack[position], stack[position + 1])
            try addStorageEntry(key, value, to: table)
            // Done with both: their slots are reused unless some other value names them.
            guard case .object(let keyIndex) = key, case .object(let valueIndex) = value,
                !sharedObjects[Int(keyIndex)], !sharedObjects[Int(valueIndex)], keyIndex != valueIndex,
                case .storage(let record) = objects[Int(valueIndex)]
            else { continue }
            objects[Int(keyIndex)] = .opaque(callable: -1)
            objects[Int(valueIndex)] = .opaque(callable: -1)
            freeObjects.append(keyIndex)
            freeObjects.append(valueIndex)
            freeStorageRecords.append(record)
        }
        return true
    }

    /// One `storage_data` entry (a `MetadataIndex` key, a `_StorageInfo` value) into `table`, with
    /// the checks of the generic walk (anything it would refuse is `.unusual`, for it to word).
    private mutating func addStorageEntry(_ key: Value, _ value: Value, to table: DCPStorageTableBuilder) throws(Stop) {
        guard case .object(let keyIndex) = key, objects[Int(keyIndex)].isIndex,
            case .object(let valueIndex) = value, case .storage(let record) = objects[Int(valueIndex)],
            case let (path, transforms, offset, length) = (storageRecords[Int(record)].path, storageRecords[Int(record)].transforms,
                                                          storageRecords[Int(record)].offset, storageRecords[Int(record)].length),
            offset >= 0, length >= 0
        else { throw .unusual("a storage_data entry") }
        let file = strings[Int(path)]
        // Entries name a few files, each one memoized string: checked once per string.
        if path != checkedPath {
            guard !file.utf8.contains(UInt8(ascii: "/")), !file.utf8.contains(0), file != "..", file != ".", !file.isEmpty else {
                throw .unusual("a data file name")
            }
            checkedPath = path
        }
        var descriptors: [String]?
        if transforms >= 0 {
            var texts: [String] = []
            for item in lists[Int(transforms)].items {
                guard case .string(let text) = item else { throw .unusual("a transform descriptor") }
                texts.append(strings[Int(text)])
            }
            descriptors = texts
            lists[Int(transforms)].frozen = true
        }
        let info = DCPStorageInfo(relativePath: file, offset: offset, length: length, transformDescriptors: descriptors)
        func fqnHash(_ fqn: Int32) -> Int {
            if let known = fqnHashes[fqn] { return known }
            let hash = strings[Int(fqn)].hashValue
            fqnHashes[fqn] = hash
            return hash
        }
        if case .smallIndex(let fqn, let small) = objects[Int(keyIndex)] {
            let hash = fqnHash(fqn)
            withUnsafeTemporaryAllocation(of: Int.self, capacity: 3) { buffer in
                for axis in 0..<Int(small.count) { buffer[axis] = Int(small[axis]) }
                table.add(fqn: strings[Int(fqn)], fqnHash: hash, offsets: UnsafeBufferPointer(rebasing: buffer[0..<Int(small.count)]), info: info)
            }
            return
        }
        guard case .index(let fqn, let offsets) = objects[Int(keyIndex)] else { throw .unusual("a storage_data key") }
        if offsets.count < 0 {
            table.add(fqn: strings[Int(fqn)], fqnHash: nil, offsets: nil, info: info)
        } else {
            eagerScratch.removeAll(keepingCapacity: true)
            for axis in 0..<Int(offsets.count) { eagerScratch.append(Int(ints[Int(offsets.start) + axis])) }
            eagerScratch.withUnsafeBufferPointer { table.add(fqn: strings[Int(fqn)], fqnHash: nil, offsets: $0, info: info) }
        }
    }

    /// BUILD: a DCP class with its usual state becomes its record; other objects stay opaque.
    private mutating func build(_ object: Int, state: Value) throws(Stop) {
        let callable: Int32
        switch objects[object] {
        case .made(let global): callable = global
        case .opaque: return  // a state nothing reads
        default: throw .unusual("an object built twice")
        }
        objects[object] = .opaque(callable: callable)
        guard callable >= 0 else { return }
        switch globalKinds[Int(callable)] {
        case .properties:
            // The 5-tuple of `TensorProperties.__getstate__`: (dtype, layout, requires_grad, memory_format, pin_memory).
            guard case .tuple(let index) = state, index >= 0, case let tuple = tuples[Int(index)], !tuple.allInts, tuple.count >= 3,
                case .global(let dtypeGlobal) = values[Int(tuple.start)], globals[Int(dtypeGlobal)].module == "torch",
                let dtype = DType(torchName: globals[Int(dtypeGlobal)].name)
            else { return }
            var requiresGrad = false
            if case .bool(let flag) = values[Int(tuple.start) + 2] { requiresGrad = flag }
            objects[object] = .properties(dtype: dtype, requiresGrad: requiresGrad)
        case .chunk:
            guard let fields = try stateFields(state), let offsetsValue = fields[.offsets], let sizesValue = fields[.sizes],
                let box = chunkBox(offsets: offsetsValue, sizes: sizesValue)
            else { return }
            consume(state)
            chunkBoxes.append(box)
            objects[object] = .chunk(Int32(chunkBoxes.count - 1))
        case .index:
            guard let fields = try stateFields(state), case .string(let fqn)? = fields[.fqn] else { return }
            var offsets = Dims.absent
            switch fields[.offset] {
            case nil, .none?: break
            case .ints(let small)?, .size(let small)?:
                consume(state)
                objects[object] = .smallIndex(fqn: fqn, offsets: small)
                return
            case let value?:
                guard let found = dims(of: value) else { return }
                offsets = found
            }
            consume(state)
            objects[object] = .index(fqn: fqn, offsets: offsets)
        case .storage:
            guard let fields = try stateFields(state), case .string(let path)? = fields[.relativePath],
                case .int(let offset)? = fields[.offset], case .int(let length)? = fields[.length]
            else { return }
            var transforms: Int32 = -1
            switch fields[.transformDescriptors] {
            case nil, .none?: break
            case .list(let list)?: transforms = list
            default: return
            }
            consume(state)
            objects[object] = .storage(newStorageRecord(StorageRecord(path: path, transforms: transforms, offset: offset, length: length)))
        case .tensor:
            guard let fields = try stateFields(state), case .object(let properties)? = fields[.properties],
                let sizeValue = fields[.size], let size = dims(of: sizeValue), case .list(let chunks)? = fields[.chunks]
            else { return }
            consume(state)
            objects[object] = .tensor(properties: properties, size: size, chunks: chunks)
        case .root:
            guard let fields = try stateFields(state) else { return }
            // A replaced dict's index is -1 (unusual at the end); the root's dicts keep their slots
            // even when consumed, so the end finds them consumed, never reused.
            func dictIndex(_ value: Value?) -> Int32 {
                guard case .dict(let index, let generation)? = value, isCurrent(index, generation) else { return -1 }
                dicts[Int(index)].pinned = true
                return index
            }
            let stateDict = dictIndex(fields[.stateDictMetadata]), storage = dictIndex(fields[.storageData])
            var version: Int32 = -1
            if case .string(let text)? = fields[.version] { version = text }
            consume(state)
            objects[object] = .metadata(stateDict: stateDict, storage: storage, version: version, callable: callable)
        case .other, .size, .bytesItem:
            return
        }
    }

    /// The known fields of a dict state (the last entry of each, as Python's dict keeps); nil
    /// when the state is not a dict.
    private func stateFields(_ state: Value) throws(Stop) -> FieldValues? {
        guard case .dict(let index, let generation) = state else { return nil }
        guard isCurrent(index, generation), !dicts[Int(index)].consumed else { throw .unusual("one state dict for two objects") }
        guard !isEager(index, generation) else { throw .unusual("storage entries as an object's state") }
        var fields = FieldValues()
        for (key, value) in dicts[Int(index)].pairs {
            guard case .string(let text) = key else { continue }
            let field = stringFields[Int(text)]
            if field != .none { fields[field] = value }
        }
        return fields
    }

    private mutating func consume(_ state: Value) {
        guard case .dict(let index, _) = state else { return }
        dicts[Int(index)].pairs.removeAll(keepingCapacity: true)
        dicts[Int(index)].consumed = true
        if !dicts[Int(index)].pinned { freeDicts.append(index) }
    }

    struct FieldValues {
        var slots: (Value?, Value?, Value?, Value?) = (nil, nil, nil, nil)
        var keys: (Field, Field, Field, Field) = (.none, .none, .none, .none)
        var extra: [Field: Value] = [:]

        subscript(field: Field) -> Value? {
            get {
                if keys.0 == field { return slots.0 }
                if keys.1 == field { return slots.1 }
                if keys.2 == field { return slots.2 }
                if keys.3 == field { return slots.3 }
                return extra[field]
            }
            set {
                if keys.0 == field || keys.0 == .none { keys.0 = field; slots.0 = newValue; return }
                if keys.1 == field || keys.1 == .none { keys.1 = field; slots.1 = newValue; return }
                if keys.2 == field || keys.2 == .none { keys.2 = field; slots.2 = newValue; return }
                if keys.3 == field || keys.3 == .none { keys.3 = field; slots.3 = newValue; return }
                extra[field] = newValue
            }
        }
    }

    // MARK: - The result

    private mutating func takeDict(_ index: Int32) throws(Stop) -> [(key: Value, value: Value)] {
        guard index >= 0, !dicts[Int(index)].consumed, !dicts[Int(index)].taken else { throw .unusual("the root's dicts") }
        dicts[Int(index)].taken = true
        defer { dicts[Int(index)].pairs = [] }
        return dicts[Int(index)].pairs
    }

    private func intArray(_ dims: Dims) -> [Int] {
        (0..<Int(dims.count)).map { Int(ints[Int(dims.start) + $0]) }
    }

    private func className(_ global: Int32) -> String {
        "\(globals[Int(global)].module).\(globals[Int(global)].name)"
    }

    /// The walk of `DCPMetadata.init(genericPickle:)` over the records; anything it would refuse
    /// (or read differently) is `.unusual`, for the generic reader to word.
    private mutating func finish(_ root: Value) throws(Stop) -> DCPMetadata {
        guard case .object(let rootIndex) = root, case .metadata(let stateDict, let storageDict, let version, let callable) = objects[Int(rootIndex)]
        else { throw .unusual("the root") }
        var tensors: [(fqn: String, metadata: DCPTensorMetadata)] = []
        var bytesItems: [String] = []
        for (key, value) in try takeDict(stateDict) {
            guard case .string(let fqn) = key, case .object(let entry) = value else { throw .unusual("a state_dict_metadata entry") }
            switch objects[Int(entry)] {
            case .made(let global) where global >= 0 && globalKinds[Int(global)] == .bytesItem,
                .opaque(let global) where global >= 0 && globalKinds[Int(global)] == .bytesItem:
                bytesItems.append(strings[Int(fqn)])
            case .tensor(let propertiesIndex, let size, let chunkList):
                guard !takenObjects[Int(entry)], case .properties(let dtype, let requiresGrad) = objects[Int(propertiesIndex)],
                    !lists[Int(chunkList)].taken
                else { throw .unusual("a tensor entry") }
                takenObjects[Int(entry)] = true
                lists[Int(chunkList)].taken = true
                var chunks: [DCPChunk] = []
                chunks.reserveCapacity(lists[Int(chunkList)].items.count)
                for item in lists[Int(chunkList)].items {
                    guard case .object(let chunk) = item, !takenObjects[Int(chunk)], case .chunk(let box) = objects[Int(chunk)],
                        chunkBoxes[Int(box)].rank == Int(size.count)
                    else { throw .unusual("a chunk") }
                    takenObjects[Int(chunk)] = true
                    chunks.append(chunkBoxes[Int(box)])
                }
                lists[Int(chunkList)].items = []
                tensors.append((strings[Int(fqn)], DCPTensorMetadata(dtype: dtype, size: intArray(size), chunks: chunks, requiresGrad: requiresGrad)))
            default:
                throw .unusual("a state_dict_metadata entry")
            }
        }
        guard stateDict < 0 || eagerDict?.index != stateDict else { throw .unusual("storage entries in state_dict_metadata") }
        let storageEntries = try takeDict(storageDict)
        let storage: DCPStorageTable
        if let eager = eagerDict, let table = eagerStorage {
            // The root's storage_data is the dict BUILD found current, so the same generation.
            guard eager.index == storageDict, storageEntries.isEmpty else { throw .unusual("storage entries outside storage_data") }
            storage = table.finish()
            eagerStorage = nil
        } else {
            let table = DCPStorageTableBuilder(expectedCount: storageEntries.count)
            for (key, value) in storageEntries { try addStorageEntry(key, value, to: table) }
            storage = table.finish()
        }
        return DCPMetadata(tensors: tensors, bytesItems: bytesItems, storageTable: storage,
                           version: version < 0 ? nil : strings[Int(version)], rootClass: className(callable))
    }

    // MARK: - Reading arguments

    @inline(__always)
    private mutating func readFixed(_ width: Int) throws(Stop) -> UInt64 {
        guard remaining >= width else { throw .pickle(.truncated(site, needed: UInt64(width), available: remaining)) }
        try ensure(width)
        var value: UInt64 = 0
        for index in (0..<width).reversed() { value = value << 8 | UInt64(input[position + index]) }
        position += width
        return value
    }

    private mutating func readLength(_ width: Int, signed: Bool) throws(Stop) -> Int {
        let raw = try readFixed(width)
        if signed && width == 4 && raw & 0x8000_0000 != 0 {
            throw .pickle(.invalidArgument(site, reason: "negative length \(Int32(bitPattern: UInt32(raw)))"))
        }
        guard raw <= UInt64(remaining) else { throw .pickle(.truncated(site, needed: raw, available: remaining)) }
        return Int(raw)
    }

    /// Steps over `count` bytes of argument (not read); returns where they start.
    private mutating func skip(_ count: Int) throws(Stop) -> Int {
        guard count <= remaining else { throw .pickle(.truncated(site, needed: UInt64(count), available: remaining)) }
        let start = position
        position += count
        return start
    }

    /// `skip` of bytes to be read: they stay readable until the next read of the input.
    private mutating func take(_ count: Int) throws(Stop) -> Int {
        guard count <= remaining else { throw .pickle(.truncated(site, needed: UInt64(count), available: remaining)) }
        try ensure(count)
        return try skip(count)
    }

    /// The bytes up to the next newline (readable until the next read of the input).
    private mutating func readLine() throws(Stop) -> UnsafeRawBufferPointer {
        var end = position
        while end < input.count {
            try ensure(end - position + 1)
            if input[end] == 0x0A { break }
            end += 1
        }
        guard end < input.count else { throw .pickle(.missingNewline(site)) }
        let line = input.slice(position, end)
        position = end + 1
        return line
    }

    private func decodeUTF8(_ bytes: UnsafeRawBufferPointer) throws(Stop) -> String {
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw .pickle(.invalidArgument(site, reason: "text is not valid UTF-8"))
        }
        return text
    }
}

extension DCPMetadataReader.ObjectRecord {
    var isIndex: Bool {
        switch self {
        case .index, .smallIndex: true
        default: false
        }
    }
}

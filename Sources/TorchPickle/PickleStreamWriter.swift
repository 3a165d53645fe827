/// Writes a protocol 2 pickle opcode by opcode into a bounded buffer handed to `flush` as it
/// fills, for documents too large to build as a `PickleValue` first (a DCP `.metadata` of
/// 450,000 chunks). Globals and strings written through `memoizedGlobal`/`memoizedString` are
/// stored in the memo once (`BINPUT`) and fetched afterwards (`BINGET`), as Python's pickler does
/// for repeated objects; everything else is written as `PickleWriter` writes it.
public struct PickleStreamWriter {
    private var buffer: [UInt8] = []
    private let capacity: Int
    private let flush: ([UInt8]) throws -> Void
    private var memo: [MemoKey: UInt32] = [:]
    public private(set) var bytesWritten: Int64 = 0

    private enum MemoKey: Hashable {
        case global(String, String)
        case string(String)
    }

    public init(capacity: Int = 1 << 20, flush: @escaping ([UInt8]) throws -> Void) throws {
        self.capacity = capacity
        self.flush = flush
        buffer.reserveCapacity(capacity + 4096)
        buffer.append(contentsOf: [PickleOpcode.proto.rawValue, 2])
    }

    private mutating func flushIfFull() throws {
        if buffer.count >= capacity { try drain() }
    }

    private mutating func drain() throws {
        guard !buffer.isEmpty else { return }
        try flush(buffer)
        bytesWritten += Int64(buffer.count)
        buffer.removeAll(keepingCapacity: true)
    }

    public mutating func op(_ opcode: PickleOpcode) throws {
        buffer.append(opcode.rawValue)
        try flushIfFull()
    }

    private mutating func littleEndian<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { buffer.append(contentsOf: $0) }
    }

    /// `PickleWriter`'s integer choice: `BININT1`, `BININT2`, `BININT`, then `LONG1`.
    public mutating func int(_ number: Int64) throws {
        if number >= 0 && number <= 0xFF {
            buffer.append(PickleOpcode.binInt1.rawValue)
            buffer.append(UInt8(number))
        } else if number >= 0 && number <= 0xFFFF {
            buffer.append(PickleOpcode.binInt2.rawValue)
            littleEndian(UInt16(number))
        } else if let small = Int32(exactly: number) {
            buffer.append(PickleOpcode.binInt.rawValue)
            littleEndian(small)
        } else {
            let bytes = PickleBigInt(number).littleEndianBytes
            buffer.append(PickleOpcode.long1.rawValue)
            buffer.append(UInt8(bytes.count))
            buffer.append(contentsOf: bytes)
        }
        try flushIfFull()
    }

    public mutating func string(_ text: String) throws {
        let count = text.utf8.count
        buffer.append(PickleOpcode.binUnicode.rawValue)
        littleEndian(UInt32(count))
        buffer.append(contentsOf: text.utf8)
        try flushIfFull()
    }

    public mutating func global(_ module: String, _ name: String) throws {
        precondition(!module.utf8.contains(0x0A) && !name.utf8.contains(0x0A), "a global name with a newline")
        buffer.append(PickleOpcode.global.rawValue)
        buffer.append(contentsOf: module.utf8)
        buffer.append(0x0A)
        buffer.append(contentsOf: name.utf8)
        buffer.append(0x0A)
        try flushIfFull()
    }

    private mutating func memoized(_ key: MemoKey, write: (inout PickleStreamWriter) throws -> Void) throws {
        if let index = memo[key] {
            if index <= 0xFF {
                buffer.append(PickleOpcode.binGet.rawValue)
                buffer.append(UInt8(index))
            } else {
                buffer.append(PickleOpcode.longBinGet.rawValue)
                littleEndian(index)
            }
            try flushIfFull()
            return
        }
        try write(&self)
        let index = UInt32(memo.count)
        memo[key] = index
        if index <= 0xFF {
            buffer.append(PickleOpcode.binPut.rawValue)
            buffer.append(UInt8(index))
        } else {
            buffer.append(PickleOpcode.longBinPut.rawValue)
            littleEndian(index)
        }
        try flushIfFull()
    }

    /// A global, written once and fetched from the memo afterwards.
    public mutating func memoizedGlobal(_ module: String, _ name: String) throws {
        try memoized(.global(module, name)) { try $0.global(module, name) }
    }

    /// A string, written once and fetched from the memo afterwards (field names, keys, paths).
    public mutating func memoizedString(_ text: String) throws {
        try memoized(.string(text)) { try $0.string(text) }
    }

    /// A tuple of small integers (a `torch.Size` argument), as `PickleWriter` writes tuples.
    public mutating func intTuple<C: Collection>(_ values: C) throws where C.Element == Int {
        switch values.count {
        case 0: try op(.emptyTuple)
        case 1...3:
            for value in values { try int(Int64(value)) }
            try op(values.count == 1 ? .tuple1 : values.count == 2 ? .tuple2 : .tuple3)
        default:
            try op(.mark)
            for value in values { try int(Int64(value)) }
            try op(.tuple)
        }
    }

    /// `STOP`, then hands over what is left. Returns the total size.
    public mutating func finish() throws -> Int64 {
        try op(.stop)
        try drain()
        return bytesWritten
    }
}

/// Python's `_batch_appends`/`_batch_setitems` for a stream: items are counted as they are
/// written, and every 1000 (or at the end) closed with `APPENDS`/`SETITEMS` (a single item with
/// `APPEND`/`SETITEM`). Call `item(_:)` before each item and `finish` after the last.
public struct PickleBatch {
    private var inBatch = 0
    private var batchStart = true
    private let single: PickleOpcode
    private let many: PickleOpcode
    static let size = 1000

    public static func list() -> PickleBatch { PickleBatch(single: .append, many: .appends) }
    public static func dict() -> PickleBatch { PickleBatch(single: .setItem, many: .setItems) }

    private init(single: PickleOpcode, many: PickleOpcode) {
        self.single = single
        self.many = many
    }

    /// Writes one item (a value, or a key then its value, for a dict) through `body`.
    /// `remaining` is how many items are left including this one (to choose the single opcode).
    public mutating func item(_ writer: inout PickleStreamWriter, remaining: Int,
                              _ body: (inout PickleStreamWriter) throws -> Void) throws {
        if inBatch == 0 && remaining > 1 { try writer.op(.mark) }
        let marked = inBatch > 0 || remaining > 1
        try body(&writer)
        inBatch += 1
        if inBatch == Self.size || remaining == 1 {
            try writer.op(marked ? many : single)
            inBatch = 0
        }
    }
}

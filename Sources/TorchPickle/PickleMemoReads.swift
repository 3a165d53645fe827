/// The memo keys a pickle's BINGET and LONG_BINGET opcodes read, found by skimming its opcodes
/// without running them. A value stored under any other key is never read again, so a reader
/// may drop it: torch's pickler memoizes every object, tuple and dict it writes (6.45 million
/// entries in the `.metadata` of a 409,000-chunk checkpoint), and only the strings, globals and
/// a few shared values among them are ever read back.
public struct PickleMemoReads: Sendable, Equatable {
    /// Bit `key % 64` of word `key / 64` is set when some GET reads `key`.
    var words: [UInt64]
    /// `ranks[i]`: how many read keys lie below word `i`'s first key, `64 × i`.
    var ranks: [UInt32]

    /// How many keys are read.
    public var count: Int { Int(ranks.last ?? 0) + (words.last?.nonzeroBitCount ?? 0) }

    init(words: [UInt64]) {
        self.words = words
        var ranks = [UInt32]()
        ranks.reserveCapacity(words.count)
        var below: UInt32 = 0
        for word in words {
            ranks.append(below)
            below += UInt32(word.nonzeroBitCount)
        }
        self.ranks = ranks
    }

    @inline(__always)
    public func contains(_ key: UInt64) -> Bool {
        let word = Int(truncatingIfNeeded: key >> 6)
        guard key >> 6 < UInt64(words.count) else { return false }
        return words[word] & (1 << (key & 63)) != 0
    }

    /// How many read keys are below `key`: where `key`'s value goes in a table of read keys only.
    @inline(__always)
    public func rank(of key: UInt64) -> Int {
        let word = key >> 6
        guard word < UInt64(words.count) else { return count }
        let below = words[Int(word)] & ((1 << (key & 63)) &- 1)
        return Int(ranks[Int(word)]) + below.nonzeroBitCount
    }
}

/// Skims a pickle, opcode by opcode, for the keys its GETs read. Fed windows of the input in
/// order (a 59 MB `.metadata` need not be in memory): each `skim` says where the next window
/// must start. It gives up (`.unknown`) on anything it cannot be sure of — an unknown opcode, a
/// text GET, a key larger than the input could have stored, a truncated argument — and the
/// caller then keeps every memo entry; the reader that runs the pickle reports the fault.
public struct PickleMemoReadScanner {
    public enum Progress: Equatable {
        /// The next window must start at this offset (which may lie past the last window: a
        /// long string's bytes are skipped, not read).
        case needs(from: Int)
        /// STOP was reached.
        case done(PickleMemoReads)
        /// Nothing is known: keep every entry.
        case unknown
    }

    /// Offset of the next opcode.
    public private(set) var position = 0
    /// The input's length.
    let count: Int
    var words: [UInt64] = []

    public init(count: Int) {
        self.count = count
    }

    /// Skims from `position` through `window`, the input's bytes from offset `start` (which must
    /// be at or before `position`).
    public mutating func skim(_ window: UnsafeRawBufferPointer, at start: Int) -> Progress {
        precondition(start <= position, "a window must start at or before the scan's position")
        return Self.layouts.withUnsafeBufferPointer { layouts in skim(window, at: start, layouts: layouts) }
    }

    private mutating func skim(_ window: UnsafeRawBufferPointer, at start: Int, layouts: UnsafeBufferPointer<Layout>) -> Progress {
        let windowEnd = start + window.count
        let atEnd = windowEnd >= count
        // A line or field that does not fit: read on from the opcode, unless the window already
        // starts there (a line longer than the window) or holds the rest of the input.
        func refill(_ opcodeStart: Int) -> Progress {
            (atEnd || opcodeStart == start) ? .unknown : .needs(from: opcodeStart)
        }
        while true {
            guard position < count else { return .unknown }  // no STOP
            guard position < windowEnd else { return .needs(from: position) }
            let opcodeStart = position
            let layout = layouts[Int(window[position - start])]
            var cursor = position + 1
            switch layout.kind {
            case .unknown, .textGet:
                return .unknown
            case .stop:
                return .done(PickleMemoReads(words: words))
            case .get:
                let width = Int(layout.width)
                guard cursor + width <= windowEnd else { return refill(opcodeStart) }
                let key = littleEndian(window, from: cursor - start, width: width)
                // Each stored key took at least one byte of input.
                guard key < UInt64(count) else { return .unknown }
                note(Int(key))
                cursor += width
            case .fixed:
                cursor += Int(layout.width)
            case .counted:
                let width = Int(layout.width)
                guard cursor + width <= windowEnd else { return refill(opcodeStart) }
                let length = littleEndian(window, from: cursor - start, width: width)
                guard length <= UInt64(count) else { return .unknown }
                cursor += width + Int(length)
            case .lines:
                var lines = layout.width
                while lines > 0 {
                    guard cursor < windowEnd else { return refill(opcodeStart) }
                    if window[cursor - start] == 0x0A { lines -= 1 }
                    cursor += 1
                }
            }
            guard cursor <= count else { return .unknown }
            position = cursor
        }
    }

    /// What the scan needs to know of an opcode, by byte (a table: 24 million opcodes in a
    /// 409,000-chunk `.metadata`).
    struct Layout {
        enum Kind: UInt8 { case unknown, stop, get, textGet, fixed, counted, lines }
        var kind: Kind
        /// The field's width in bytes (fixed, counted: of the length; get: of the key), or the number of lines.
        var width: UInt8
    }

    static let layouts: [Layout] = {
        var table = [Layout](repeating: Layout(kind: .unknown, width: 0), count: 256)
        for opcode in PickleOpcode.allCases {
            let layout: Layout
            switch (opcode, opcode.argument) {
            case (.stop, _): layout = Layout(kind: .stop, width: 0)
            case (.get, _): layout = Layout(kind: .textGet, width: 0)
            case (.binGet, _): layout = Layout(kind: .get, width: 1)
            case (.longBinGet, _): layout = Layout(kind: .get, width: 4)
            case (_, .none): layout = Layout(kind: .fixed, width: 0)
            case (_, .fixed(let width)): layout = Layout(kind: .fixed, width: UInt8(width))
            case (_, .counted(let width)): layout = Layout(kind: .counted, width: UInt8(width))
            case (_, .line): layout = Layout(kind: .lines, width: 1)
            case (_, .twoLines): layout = Layout(kind: .lines, width: 2)
            }
            table[Int(opcode.rawValue)] = layout
        }
        return table
    }()

    /// The whole scan of an input held in memory.
    public static func scan(_ bytes: UnsafeRawBufferPointer) -> PickleMemoReads? {
        var scanner = PickleMemoReadScanner(count: bytes.count)
        if case .done(let reads) = scanner.skim(bytes, at: 0) { return reads }
        return nil
    }

    private mutating func note(_ key: Int) {
        let word = key >> 6
        if word >= words.count { words.append(contentsOf: repeatElement(0, count: word - words.count + 1)) }
        words[word] |= 1 << UInt64(key & 63)
    }

    @inline(__always)
    private func littleEndian(_ window: UnsafeRawBufferPointer, from offset: Int, width: Int) -> UInt64 {
        var value: UInt64 = 0
        for index in 0..<width { value |= UInt64(window[offset + index]) << (8 * UInt64(index)) }
        return value
    }
}

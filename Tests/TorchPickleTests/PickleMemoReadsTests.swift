import Testing
import TorchPickle

/// The memo keys a pickle's GETs read, skimmed from hand-made pickles whose keys are known by
/// reading their bytes.
struct PickleMemoReadsTests {
    /// PROTO 4; "ab" memo 0; GLOBAL torch Size memo 1; (3,) memo 2; BINGET 0; LONG_BINGET 2;
    /// BINBYTES of 5 bytes holding an 'h' (data, not an opcode); TUPLE3; STOP.
    static let sample: [UInt8] = HandMadeTests.bytes(
        [0x80, 4], [0x8C, 2], "ab", [0x94], "ctorch\nSize\n", [0x94], "K\u{3}", [0x85, 0x94],
        "h\u{0}", "j", [2, 0, 0, 0], "B", [5, 0, 0, 0], "xhhhx", [0x87], ".")

    @Test("the keys BINGET and LONG_BINGET read, and their ranks")
    func keysRead() throws {
        let reads = try #require(Self.sample.withUnsafeBytes { PickleMemoReadScanner.scan($0) })
        #expect(reads.count == 2)
        #expect(reads.contains(0) && !reads.contains(1) && reads.contains(2) && !reads.contains(3) && !reads.contains(1000))
        #expect(reads.rank(of: 0) == 0 && reads.rank(of: 1) == 1 && reads.rank(of: 2) == 1 && reads.rank(of: 3) == 2)
        #expect(reads.rank(of: 1 << 40) == 2)
    }

    @Test("fed in windows of every size from 16 bytes, the scan finds what it finds in one piece")
    func windows() throws {
        let whole = try #require(Self.sample.withUnsafeBytes { PickleMemoReadScanner.scan($0) })
        for size in 16...Self.sample.count {
            var scanner = PickleMemoReadScanner(count: Self.sample.count)
            var start = 0
            var result: PickleMemoReads?
            scanning: while start < Self.sample.count {
                let end = min(Self.sample.count, start + size)
                switch Self.sample[start..<end].withUnsafeBytes({ scanner.skim($0, at: start) }) {
                case .needs(let from): start = from
                case .done(let reads): result = reads; break scanning
                case .unknown: break scanning
                }
            }
            #expect(result == whole, "window \(size)")
        }
    }

    @Test("what the scan cannot be sure of: a text GET, a key no input could store, no STOP, a cut argument, an unknown opcode")
    func unknowns() {
        let cases: [(String, [UInt8])] = [
            ("text GET", HandMadeTests.bytes([0x80, 2], "N", [0x94], "g0\n.")),
            ("key past the input", HandMadeTests.bytes([0x80, 2], "j", [0xFF, 0xFF, 0xFF, 0x7F], ".")),
            ("no STOP", HandMadeTests.bytes([0x80, 2], "N", [0x94], "h\u{0}")),
            ("cut LONG_BINGET", HandMadeTests.bytes([0x80, 2], "N", [0x94], "j", [0, 0])),
            ("string longer than the input", HandMadeTests.bytes([0x80, 2], "X", [0xFF, 0, 0, 0], "ab.")),
            ("unknown opcode", HandMadeTests.bytes([0x80, 2], [0xFF], ".")),
        ]
        for (label, bytes) in cases {
            #expect(bytes.withUnsafeBytes { PickleMemoReadScanner.scan($0) } == nil, "\(label)")
        }
    }
}

import NembridgeTestSupport
import Testing
import TorchPickle

/// Random mutations of valid pickles: every read must return a value or throw a `PickleError`;
/// a trap would end the test process. Deterministic (SplitMix64, fixed seeds).
struct FuzzTests {
    static func seeds() throws -> [[UInt8]] {
        try CorpusTests.expectations.map { try CorpusTests.bytes($0.name) }.filter { $0.count < 4096 }
    }

    static func mutate(_ input: [UInt8], _ random: inout SplitMix64, seeds: [[UInt8]]) -> [UInt8] {
        var bytes = input
        for _ in 0..<Int.random(in: 1...4, using: &random) {
            let position = bytes.isEmpty ? 0 : Int.random(in: 0..<bytes.count, using: &random)
            switch Int.random(in: 0..<8, using: &random) {
            case 0 where !bytes.isEmpty:
                bytes[position] = UInt8.random(in: 0...255, using: &random)
            case 1:
                bytes.insert(UInt8.random(in: 0...255, using: &random), at: position)
            case 2 where !bytes.isEmpty:
                bytes.removeSubrange(position..<min(bytes.count, position + Int.random(in: 1...16, using: &random)))
            case 3 where !bytes.isEmpty:
                let end = min(bytes.count, position + Int.random(in: 1...64, using: &random))
                bytes.insert(contentsOf: bytes[position..<end], at: Int.random(in: 0...bytes.count, using: &random))
            case 4:
                bytes = Array(bytes[..<position])
            case 5 where bytes.count >= 8:
                // A length or integer field full of extreme values.
                let start = min(position, bytes.count - 8)
                let fill: UInt8 = [0xFF, 0x7F, 0x80, 0x00][Int.random(in: 0..<4, using: &random)]
                let count = Int.random(in: 1...8, using: &random)
                bytes.replaceSubrange(start..<(start + count), with: [UInt8](repeating: fill, count: count))
            case 6:
                // Splice in part of another pickle.
                let other = seeds[Int.random(in: 0..<seeds.count, using: &random)]
                let from = Int.random(in: 0..<max(other.count, 1), using: &random)
                let piece = other[min(from, other.count)..<min(other.count, from + Int.random(in: 1...128, using: &random))]
                bytes.insert(contentsOf: piece, at: min(position, bytes.count))
            default:
                // An opcode that pops, pushes or touches the memo.
                let opcodes: [UInt8] = [0x28, 0x30, 0x31, 0x32, 0x61, 0x65, 0x73, 0x75, 0x62, 0x52, 0x81, 0x92, 0x93,
                                        0x94, 0x68, 0x71, 0x74, 0x85, 0x86, 0x87, 0x90, 0x91, 0x51, 0x2E, 0x5D, 0x7D, 0x29]
                bytes.insert(opcodes[Int.random(in: 0..<opcodes.count, using: &random)], at: min(position, bytes.count))
            }
        }
        return bytes
    }

    static let tight = PickleLimits(
        maxDepth: 16, maxStackSize: 64, maxMemoEntries: 64, maxValues: 2000, maxBigIntBytes: 64, maxIntDigits: 40)

    @Test(arguments: 0..<8)
    func mutatedPicklesNeverTrap(_ shard: Int) throws {
        let seeds = try Self.seeds()
        #expect(seeds.count > 50)
        var random = SplitMix64(seed: 0x6E65_6D62_7269_6467 &+ UInt64(shard))
        var values = 0
        var errors = 0
        for iteration in 0..<2500 {
            let seed = seeds[Int.random(in: 0..<seeds.count, using: &random)]
            let input = Self.mutate(seed, &random, seeds: seeds)
            let limits = iteration % 2 == 0 ? Self.tight : .default
            do {
                let value = try PickleReader.read(input, limits: limits)
                values += 1
                if limits == Self.tight {
                    // Small values: the writer must reproduce them.
                    let written = PickleWriter.write(value)
                    #expect(try PickleReader.read(written) == value, "round trip of \(CanonicalJSON.hex(input))")
                }
            } catch is PickleError {
                errors += 1
            }
            _ = try? PickleReader.instructions(input)
        }
        #expect(values + errors == 2500)
        #expect(values > 0 && errors > 0)
    }
}

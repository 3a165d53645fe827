import NembridgeTestSupport
import Foundation
import Testing

@testable import TorchZip

struct CRC32Tests {
    /// Bit-at-a-time CRC-32, the definition the fast path must agree with.
    static func reference(_ bytes: some Sequence<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
        }
        return ~crc
    }

    static func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
        var generator = SplitMix64(seed: seed)
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    @Test("known check values") func checkValues() {
        #expect(CRC32.checksum([]) == 0)
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(CRC32.checksum(Array("The quick brown fox jumps over the lazy dog".utf8)) == 0x414F_A339)
        #expect(CRC32.checksum(Array("little".utf8)) == 0x19E3_3D85)  // torch's byteorder record
    }

    @Test("slicing-by-16 equals the bitwise definition at every length and alignment")
    func matchesReference() {
        let bytes = Self.randomBytes(300, seed: 1)
        for start in 0..<9 {
            for length in [0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 100, 255, 291 - start] {
                let slice = Array(bytes[start..<start + length])
                let fast = bytes.withUnsafeBytes { CRC32.checksum(UnsafeRawBufferPointer(rebasing: $0[start..<start + length])) }
                #expect(fast == Self.reference(slice), "start \(start) length \(length)")
            }
        }
    }

    @Test("incremental updates equal one update") func incremental() {
        let bytes = Self.randomBytes(1000, seed: 2)
        var crc = CRC32()
        var position = 0
        for step in [1, 3, 16, 5, 100, 400, 475] {
            crc.update(Array(bytes[position..<position + step]))
            position += step
        }
        #expect(position == bytes.count)
        #expect(crc.value == CRC32.checksum(bytes))
    }

    @Test("combine joins adjacent pieces, in any split") func combine() {
        let bytes = Self.randomBytes(5000, seed: 3)
        let whole = CRC32.checksum(bytes)
        var generator = SplitMix64(seed: 4)
        for _ in 0..<50 {
            let cut = Int.random(in: 0...bytes.count, using: &generator)
            let a = CRC32.checksum(Array(bytes[..<cut]))
            let b = CRC32.checksum(Array(bytes[cut...]))
            #expect(CRC32.combine(a, b, Int64(bytes.count - cut)) == whole)
        }
        // Many pieces folded left to right, as the writer does.
        var folded: UInt32 = 0
        var position = 0
        while position < bytes.count {
            let length = min(bytes.count - position, Int.random(in: 0...700, using: &generator))
            folded = CRC32.combine(folded, CRC32.checksum(Array(bytes[position..<position + length])), Int64(length))
            position += length
        }
        #expect(folded == whole)
        #expect(CRC32.combine(whole, 0, 0) == whole)
    }

    @Test("the CRC of zeros without zeros") func zeros() {
        for count in [0, 1, 2, 15, 16, 1000, 65537] {
            #expect(CRC32.zeros(count: Int64(count)) == CRC32.checksum([UInt8](repeating: 0, count: count)), "\(count)")
        }
        // 4 GiB + 128 zero bytes, joined from 1 GiB blocks: the same value either way.
        let gib = CRC32.zeros(count: 1 << 30)
        var folded: UInt32 = 0
        for _ in 0..<4 { folded = CRC32.combine(folded, gib, 1 << 30) }
        folded = CRC32.combine(folded, CRC32.zeros(count: 128), 128)
        #expect(folded == CRC32.zeros(count: (1 << 32) + 128))
    }
}

/// Throughput of `CRC32.update`. Runs only with NEMBRIDGE_BENCH=1, and is meaningful only in a
/// release build: `NEMBRIDGE_BENCH=1 swift test -c release --filter CRC32Benchmark`.
/// Measured 2026-11-23 on the shared 2-core build VM: 3.61 GB/s; combine 0.7 µs.
struct CRC32Benchmark {
    @Test(
        "CRC-32 throughput", .enabled(if: ProcessInfo.processInfo.environment["NEMBRIDGE_BENCH"] == "1"))
    func throughput() {
        let size = 256 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
        defer { buffer.deallocate() }
        var generator = SplitMix64(seed: 9)
        for index in stride(from: 0, to: size, by: 8) {
            buffer.storeBytes(of: generator.next(), toByteOffset: index, as: UInt64.self)
        }
        var best = Double.infinity
        var value: UInt32 = 0
        for _ in 0..<5 {
            let start = DispatchTime.now().uptimeNanoseconds
            value = CRC32.checksum(UnsafeRawBufferPointer(buffer))
            best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        let combineStart = DispatchTime.now().uptimeNanoseconds
        var combined: UInt32 = 0
        for index in 0..<10_000 { combined = CRC32.combine(combined, value, Int64(index) << 20) }
        let combineSeconds = Double(DispatchTime.now().uptimeNanoseconds - combineStart) / 1e9
        print(
            "CRC32: \(String(format: "%.2f", Double(size) / best / 1e9)) GB/s over \(size >> 20) MiB (best of 5); "
                + "combine: \(String(format: "%.1f", combineSeconds / 10_000 * 1e6)) µs each [\(value) \(combined)]")
        #expect(best > 0)
    }
}

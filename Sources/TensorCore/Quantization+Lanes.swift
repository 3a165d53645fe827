// Vector kernels for quantizing bf16 weights (what checkpoints are trained and exported in):
// 16 elements a step in SIMD lanes, the same arithmetic as the scalar code in Quantization.swift
// bit for bit, with its branches as lane masks. Measured on the Llama-3.2-1B-shaped bench model,
// the scalar survey and quantize loops took 63% of `export --quantize fp8-block`'s CPU time.
// Only SSE2 operations are needed (the default x86-64 target): 16-bit signed max, 32-bit integer
// and float arithmetic. Selects are written as bit masks: the standard library's
// `replace(with:where:)` compiled to a loop over the lanes through memory here (measured: 78% of
// the run in that loop, 4x slower than the scalar code). Lanes are loaded as stored (little-endian).

/// All ones in the lanes where `a < b`, for lanes below 2^31 (their difference's sign bit).
@inline(__always)
func lanesBelow(_ a: SIMD16<UInt32>, _ b: SIMD16<UInt32>) -> SIMD16<UInt32> {
    SIMD16<UInt32>(repeating: 0) &- ((a &- b) &>> 31)
}

/// `then` where `mask` is all ones, else `otherwise`.
@inline(__always)
func select(_ mask: SIMD16<UInt32>, _ then: SIMD16<UInt32>, _ otherwise: SIMD16<UInt32>) -> SIMD16<UInt32> {
    (then & mask) | (otherwise & ~mask)
}

/// Sixteen bf16 elements at a time.
enum BF16Lanes {
    static let width = 16

    /// The bf16 bits of elements `index..<index + 16` of `base`, widened to 32 bits.
    @inline(__always)
    static func bits(_ base: UnsafeRawPointer, _ index: Int) -> SIMD16<UInt32> {
        SIMD16<UInt32>(truncatingIfNeeded: base.loadUnaligned(fromByteOffset: index * 2, as: SIMD16<UInt16>.self))
    }

    /// The values of bf16 `bits` (exact: bf16 is the top half of fp32).
    @inline(__always)
    static func values(_ bits: SIMD16<UInt32>) -> SIMD16<Float> {
        unsafeBitCast(bits &<< 16, to: SIMD16<Float>.self)
    }

    /// The largest magnitude of elements `start..<start + count`, NaN if one is NaN (as torch's
    /// amax). Magnitude bits order as magnitudes, and every one is below 0x8000, so a signed
    /// 16-bit max finds it; a NaN's bits are above infinity's 0x7F80.
    @inline(__always)
    static func amax(_ base: UnsafeRawPointer, start: Int, count: Int) -> Float {
        var lanes = SIMD16<Int16>(repeating: 0)
        var index = 0
        while index + width <= count {
            let raw = base.loadUnaligned(fromByteOffset: (start + index) * 2, as: SIMD16<Int16>.self)
            lanes = pointwiseMax(lanes, raw & 0x7FFF)
            index += width
        }
        var largest = lanes.max()
        while index < count {
            largest = max(largest, base.loadUnaligned(fromByteOffset: (start + index) * 2, as: Int16.self) & 0x7FFF)
            index += 1
        }
        return largest > 0x7F80 ? .nan : Float(bitPattern: UInt32(largest) << 16)
    }

    /// The bf16 bits `value` rounds to (nearest even; NaN is 0xFFFF), as `FP8Quantization.storedBits`.
    @inline(__always)
    static func rounded(_ value: SIMD16<Float>) -> SIMD16<UInt32> {
        let word = unsafeBitCast(value, to: SIMD16<UInt32>.self)
        let bits = (word &+ 0x7FFF &+ ((word &>> 16) & 1)) &>> 16
        return select(lanesBelow(SIMD16(repeating: 0x7F80_0000), word & 0x7FFF_FFFF), SIMD16(repeating: 0xFFFF), bits)
    }

    /// The e4m3 codes of elements `start..<start + count` divided by `scale` into `output[start...]`.
    @inline(__always)
    static func quantize(_ base: UnsafeRawPointer, start: Int, count: Int, scale: Float, into output: UnsafeMutablePointer<UInt8>) {
        var index = 0
        while index + width <= count {
            let codes = Quantize.e4m3(values(bits(base, start + index)) / scale)
            UnsafeMutableRawPointer(output + start + index).storeBytes(of: codes, as: SIMD16<UInt8>.self)
            index += width
        }
        while index < count {
            let bits = UInt32(base.loadUnaligned(fromByteOffset: (start + index) * 2, as: UInt16.self).littleEndian)
            output[start + index] = Quantize.e4m3(Float(bitPattern: bits << 16) / scale)
            index += 1
        }
    }

    /// Whether every element of `start..<start + count` comes back bit for bit when quantized
    /// with `scale` and dequantized (code value × scale, rounded to bf16); the codes go to
    /// `output[start...]` when given (they are the block's if it round-trips).
    @inline(__always)
    static func roundTrips(_ base: UnsafeRawPointer, start: Int, count: Int, scale: Float, table: UnsafeBufferPointer<Float>,
                           codes output: UnsafeMutablePointer<UInt8>? = nil) -> Bool {
        var index = 0
        var differences = SIMD16<UInt32>(repeating: 0)
        while index + width <= count {
            let stored = bits(base, start + index)
            let narrow = Quantize.e4m3(values(stored) / scale)
            if let output { UnsafeMutableRawPointer(output + start + index).storeBytes(of: narrow, as: SIMD16<UInt8>.self) }
            differences |= rounded(Quantize.e4m3Values(SIMD16<UInt32>(truncatingIfNeeded: narrow)) * scale) ^ stored
            index += width
        }
        var trips = differences.max() == 0
        while index < count {
            let bits = UInt32(base.loadUnaligned(fromByteOffset: (start + index) * 2, as: UInt16.self).littleEndian)
            let code = Quantize.e4m3(Float(bitPattern: bits << 16) / scale)
            output?[start + index] = code
            if rounded(SIMD16<Float>(repeating: table[Int(code)] * scale))[0] != bits { trips = false }
            index += 1
        }
        return trips
    }
}

extension BF16Lanes {
    /// The E2M1 codes of the 16 elements from `start` divided by `multiplier`, packed two a byte
    /// (element 2j in the low nibble) into `output[0..<8]`.
    @inline(__always)
    static func e2m1Quantize(_ base: UnsafeRawPointer, start: Int, multiplier: Float, into output: UnsafeMutablePointer<UInt8>) {
        let codes = Quantize.e2m1(values(bits(base, start)) / multiplier)
        // Lanes 2j and 2j + 1 are the low and high halves of 64-bit lane j (little-endian).
        let pairs = unsafeBitCast(codes, to: SIMD8<UInt64>.self)
        let packed = (pairs & 0xF) | ((pairs &>> 28) & 0xF0)
        UnsafeMutableRawPointer(output).storeBytes(of: SIMD8<UInt8>(truncatingIfNeeded: packed), as: SIMD8<UInt8>.self)
    }

    /// Whether the 16 elements from `start` come back bit for bit as E2M1 codes of `multiplier`
    /// (code value × multiplier, rounded to bf16).
    @inline(__always)
    static func e2m1RoundTrips(_ base: UnsafeRawPointer, start: Int, multiplier: Float) -> Bool {
        let stored = bits(base, start)
        let back = Quantize.e2m1Values(Quantize.e2m1(values(stored) / multiplier)) * multiplier
        return (rounded(back) ^ stored).max() == 0
    }
}

extension Quantize {
    /// `e2m1(_:)` of 16 values (codes in 32-bit lanes): the number of midpoints the magnitude
    /// passes, each tie to the even code (a magnitude at 0.25, 1.25, 2.5 or 5 stays below it, at
    /// 0.75, 1.75 or 3.5 passes it), saturating at 7; NaN passes them all, as in the scalar chain.
    @inline(__always)
    static func e2m1(_ value: SIMD16<Float>) -> SIMD16<UInt32> {
        let bits = unsafeBitCast(value, to: SIMD16<UInt32>.self)
        let magnitude = bits & 0x7FFF_FFFF
        func below(_ a: SIMD16<UInt32>, _ b: UInt32) -> SIMD16<UInt32> { (a &- SIMD16(repeating: b)) &>> 31 }
        func above(_ a: SIMD16<UInt32>, _ b: UInt32) -> SIMD16<UInt32> { (SIMD16(repeating: b) &- a) &>> 31 }
        var code = above(magnitude, 0x3E80_0000)  // > 0.25
        code &+= 1 &- below(magnitude, 0x3F40_0000)  // >= 0.75
        code &+= above(magnitude, 0x3FA0_0000)  // > 1.25
        code &+= 1 &- below(magnitude, 0x3FE0_0000)  // >= 1.75
        code &+= above(magnitude, 0x4020_0000)  // > 2.5
        code &+= 1 &- below(magnitude, 0x4060_0000)  // >= 3.5
        code &+= above(magnitude, 0x40A0_0000)  // > 5
        return code | ((bits &>> 28) & 0x8)
    }

    /// The values of 16 E2M1 codes (as `Dequantize.e2m1Table`): 0 and 0.5, then (1 + m/2) * 2^(e-1)
    /// for e = code >> 1 of 1...3, m = code & 1, as fp32 bits.
    @inline(__always)
    static func e2m1Values(_ code: SIMD16<UInt32>) -> SIMD16<Float> {
        let magnitude = code & 0x7
        let normal = ((magnitude &>> 1) &+ 126) &<< 23 | ((magnitude & 1) &<< 22)
        let small = magnitude &* 0x3F00_0000  // codes 0 and 1: 0 and 0.5
        let value = select(lanesBelow(magnitude, SIMD16(repeating: 2)), small, normal)
        return unsafeBitCast(value | ((code & 0x8) &<< 28), to: SIMD16<Float>.self)
    }

    /// `e4m3(_:)` of 16 values: clamp to ±448, nearest even, sign bit kept, NaN 0x7F.
    @inline(__always)
    static func e4m3(_ value: SIMD16<Float>) -> SIMD16<UInt8> {
        let bits = unsafeBitCast(value, to: SIMD16<UInt32>.self)
        let sign = (bits &>> 24) & 0x80
        let magnitude = bits & 0x7FFF_FFFF
        // Normal: rounded at bit 20, rebiased from 127 to 7 (as the scalar code).
        var code = ((magnitude &+ 0x7FFFF &+ ((magnitude &>> 20) & 1)) &>> 20) &- (120 << 3)
        // Subnormal (below 2^-6): m = magnitude * 2^9 < 8 rounded to nearest even, by adding 2^23
        // in fp32 (whose rounding is that) and keeping the low bits.
        let scaled = unsafeBitCast(magnitude, to: SIMD16<Float>.self) * 0x1p9 + 0x1p23
        code = select(lanesBelow(magnitude, SIMD16(repeating: 0x3C80_0000)), unsafeBitCast(scaled, to: SIMD16<UInt32>.self) & 0xF, code)
        // 448 and up (and infinity) saturate; NaN is 0x7F.
        code = select(lanesBelow(magnitude, SIMD16(repeating: 0x43E0_0000)), code, SIMD16(repeating: 0x7E))
        code = select(lanesBelow(SIMD16(repeating: 0x7F80_0000), magnitude), SIMD16(repeating: 0x7F), code)
        return SIMD16<UInt8>(truncatingIfNeeded: code | sign)
    }

    /// The values of 16 e4m3 codes (as `Dequantize.e4m3Table`; a NaN code gives a NaN).
    @inline(__always)
    static func e4m3Values(_ code: SIMD16<UInt32>) -> SIMD16<Float> {
        let magnitude = code & 0x7F
        // Normal: exponent and mantissa shifted into fp32's place, rebiased from 7 to 127.
        var value = (magnitude &<< 20) &+ (120 << 23)
        // Subnormal: m * 2^-9, m as a float by the 2^23 trick (exact for m < 8).
        let subnormal = (unsafeBitCast(magnitude | 0x4B00_0000, to: SIMD16<Float>.self) - 0x1p23) * 0x1p-9
        value = select(lanesBelow(magnitude, SIMD16(repeating: 8)), unsafeBitCast(subnormal, to: SIMD16<UInt32>.self), value)
        value = select(lanesBelow(SIMD16(repeating: 0x7E), magnitude), SIMD16(repeating: 0x7FC0_0000), value)  // 0x7F
        return unsafeBitCast(value | ((code & 0x80) &<< 24), to: SIMD16<Float>.self)
    }
}

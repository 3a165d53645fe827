import Foundation
@testable import TensorCore
import Testing

/// The quantization kernels against hand-derived cases and first principles: e4m3 codes worked
/// out from the format (1 sign, 4 exponent bits of bias 7, 3 mantissa bits; 0x7E = 1.75 * 2^8 =
/// 448), every nearest-code decision checked against an exhaustive search over the 254 finite
/// codes in Double, E2M1 ties worked out by hand, and the scale rule amax / 448.
struct QuantizationTests {
    /// The finite e4m3 values from the format's definition, in Double.
    static let e4m3Values: [(code: UInt8, value: Double)] = (0...255).compactMap { raw in
        let code = UInt8(raw)
        let exponent = Int((code >> 3) & 15), mantissa = Double(code & 7)
        if exponent == 15 && mantissa == 7 { return nil }
        let magnitude = exponent == 0 ? mantissa * pow(2, -9) : (1 + mantissa / 8) * pow(2, Double(exponent - 7))
        return (code, code & 0x80 != 0 ? -magnitude : magnitude)
    }

    @Test func handDerivedE4M3Codes() {
        #expect(Quantize.e4m3(448) == 0x7E)  // 1.75 * 2^8: exponent 15, mantissa 6
        #expect(Quantize.e4m3(-448) == 0xFE)
        #expect(Quantize.e4m3(1) == 0x38)  // exponent 7 (bias 7), mantissa 0
        #expect(Quantize.e4m3(1.125) == 0x39)
        #expect(Quantize.e4m3(0x1p-6) == 0x08)  // smallest normal
        #expect(Quantize.e4m3(0x1p-9) == 0x01)  // smallest subnormal
        #expect(Quantize.e4m3(0) == 0x00)
        #expect(Quantize.e4m3(-0.0) == 0x80)  // negative zero keeps its sign
        #expect(Quantize.e4m3(-0x1p-12) == 0x80)  // rounds to zero, sign kept
        // Saturation: clamped to ±448 first (480 and up would be NaN in the raw cast).
        #expect(Quantize.e4m3(460) == 0x7E)
        #expect(Quantize.e4m3(1e6) == 0x7E)
        #expect(Quantize.e4m3(.infinity) == 0x7E)
        #expect(Quantize.e4m3(-.infinity) == 0xFE)
        #expect(Quantize.e4m3(.nan) == 0x7F)
        #expect(Quantize.e4m3(-Float.nan) == 0xFF)
        // Ties to even: 1.0625 is halfway between 1 (mantissa 0) and 1.125 (mantissa 1) -> 1;
        // 1.1875 halfway between 1.125 (1) and 1.25 (2) -> 1.25.
        #expect(Quantize.e4m3(1.0625) == 0x38)
        #expect(Quantize.e4m3(1.1875) == 0x3A)
        // Subnormal tie: 1.5 * 2^-9 between 2^-9 (m 1) and 2 * 2^-9 (m 2) -> m 2; 0.5 * 2^-9 -> 0.
        #expect(Quantize.e4m3(1.5 * 0x1p-9) == 0x02)
        #expect(Quantize.e4m3(0.5 * 0x1p-9) == 0x00)
        // Carry into the exponent: 1.9375 is halfway between 1.875 (m 7) and 2 -> 2 (m 0, even).
        #expect(Quantize.e4m3(1.9375) == 0x40)
        // Between subnormals and normals: 7.5 * 2^-9 between m 7 and 2^-6 (code 8) -> 8.
        #expect(Quantize.e4m3(7.5 * 0x1p-9) == 0x08)
    }

    /// The nearest finite code by exhaustive search in Double, ties to the even code (mantissa
    /// bit 0 clear), sign from the sign bit, saturating at 448.
    static func nearest(_ value: Float) -> UInt8 {
        let clamped = min(max(Double(value), -448), 448)
        let sign: UInt8 = value.sign == .minus ? 0x80 : 0
        var best: (code: UInt8, distance: Double)?
        for (code, candidate) in e4m3Values where code & 0x80 == 0 {
            let distance = abs(abs(clamped) - candidate)
            if let current = best {
                if distance < current.distance || (distance == current.distance && code & 1 == 0) { best = (code, distance) }
            } else {
                best = (code, distance)
            }
        }
        return sign | best!.code
    }

    @Test func e4m3MatchesExhaustiveNearestSearch() {
        var random = SystemRandomNumberGenerator()
        var values: [Float] = []
        // Every code, every midpoint between neighbours, and values either side of each.
        let sorted = Self.e4m3Values.filter { $0.code & 0x80 == 0 }.map(\.value).sorted()
        for (low, high) in zip(sorted, sorted.dropFirst()) {
            let middle = Float((low + high) / 2)
            values += [Float(low), middle, middle.nextUp, middle.nextDown, -middle]
        }
        for _ in 0..<20_000 { values.append(Float(bitPattern: UInt32.random(in: 0x3000_0000...0x43F0_0000, using: &random))) }
        for value in values {
            #expect(Quantize.e4m3(value) == Self.nearest(value), "value \(value)")
        }
    }

    @Test func e2m1NearestWithTiesToEven() {
        // 0, 0.5, 1, 1.5, 2, 3, 4, 6 are codes 0...7.
        let exact: [(Float, UInt8)] = [(0, 0), (0.5, 1), (1, 2), (1.5, 3), (2, 4), (3, 5), (4, 6), (6, 7)]
        for (value, code) in exact {
            #expect(Quantize.e2m1(value) == code)
            #expect(Quantize.e2m1(-value) == code | 8)
        }
        // Midpoints go to the even code.
        let ties: [(Float, UInt8)] = [(0.25, 0), (0.75, 2), (1.25, 2), (1.75, 4), (2.5, 4), (3.5, 6), (5, 6)]
        for (value, code) in ties { #expect(Quantize.e2m1(value) == code, "tie \(value)") }
        #expect(Quantize.e2m1(7) == 7)  // saturates at 6
        #expect(Quantize.e2m1(-0.0) == 8)  // negative zero: code 8
        #expect(Quantize.e2m1(0.26) == 1)
    }

    @Test func scaleRule() {
        #expect(Quantize.fp8Scale(amax: 0) == 1)
        #expect(Quantize.fp8Scale(amax: 448) == 1)
        #expect(Quantize.fp8Scale(amax: 896) == 2)
        #expect(Quantize.fp8Scale(amax: 1) == Float(1) / 448)
    }

    /// bf16 bits of small exact values.
    static func bf16(_ values: [Float]) -> [UInt8] {
        values.flatMap { value -> [UInt8] in
            let bits = UInt16(value.bitPattern >> 16)
            return [UInt8(bits & 0xFF), UInt8(bits >> 8)]
        }
    }

    @Test func blockScalesAndCodesOfARaggedWeight() {
        // A 3 x 3 weight in 2 x 2 blocks: blocks [0..<2, 0..<2], [0..<2, 2], [2, 0..<2], [2, 2].
        let values: [Float] = [
            896, -448, 1,
            0.5, 0, -2,
            0, -0.0, 0,
        ]
        let quantization = FP8Quantization(from: .bfloat16, rows: 3, columns: 3, blockRows: 2, blockColumns: 2, part: .codes)
        let bytes = Self.bf16(values)
        var survey = FP8Quantization.Survey(blocks: 4, recorded: nil)
        bytes.withUnsafeBytes { quantization.survey(first: 0, bytes: $0, into: &survey) }
        let scales = quantization.scales(survey)
        // amax 896 -> 2; amax 2 -> 2 / 448; zero block -> 1 (twice).
        #expect(scales == [2, Float(2) / 448, 1, 1])
        var codes = [UInt8](repeating: 0xAA, count: 9)
        bytes.withUnsafeBytes { input in codes.withUnsafeMutableBytes { quantization.quantize(first: 0, bytes: input, scales: scales, into: $0) } }
        // 896 / 2 = 448 -> 0x7E; -448 / 2 = -224 = -1.75 * 2^7 -> 0xF6; 1 / (2/448) = 224 -> 0x76;
        // 0.5 / 2 = 0.25 = 2^-2 -> 0x28; 0 -> 0; -2 / (2/448) = -448 -> 0xFE; zeros; -0 -> 0x80.
        #expect(codes == [0x7E, 0xF6, 0x76, 0x28, 0x00, 0xFE, 0x00, 0x80, 0x00])
        #expect(quantization.scaleBytes(scales).count == 16)
        // In two pieces (a row, then the rest), the survey and codes are the same.
        var split = FP8Quantization.Survey(blocks: 4, recorded: nil)
        bytes.withUnsafeBytes { all in
            quantization.survey(first: 0, bytes: UnsafeRawBufferPointer(rebasing: all[0..<6]), into: &split)
            quantization.survey(first: 3, bytes: UnsafeRawBufferPointer(rebasing: all[6...]), into: &split)
        }
        #expect(quantization.scales(split) == scales)
    }

    @Test func recordedScalesKeptOnlyWhereTheyRoundTrip() {
        // One row of 4 in blocks of 2, recorded scale 0.5 for both: [3, 1.5] round-trips (3 / 0.5
        // = 6 and 1.5 / 0.5 = 3 are e4m3 values); [bf16(1.1) = 1.1015625, 0] does not (2.203125
        // quantizes to 2.25, back 1.125), so that block takes amax / 448.
        let values: [Float] = [3, 1.5, Float(DTypeCastProbe.bf16Rounded(1.1)), 0]
        let quantization = FP8Quantization(from: .bfloat16, rows: 1, columns: 4, blockRows: 1, blockColumns: 2, part: .scales)
        var survey = FP8Quantization.Survey(blocks: 2, recorded: [0.5, 0.5])
        Self.bf16(values).withUnsafeBytes { quantization.survey(first: 0, bytes: $0, into: &survey) }
        #expect(survey.roundTrips == [true, false])
        #expect(quantization.scales(survey) == [0.5, values[2] / 448])
        // Surveyed with codes written (the one-pass band path), then only the block that does not
        // round-trip quantized again: the codes of the plain two passes. In bf16 and in fp32.
        for from in [DType.bfloat16, .float32] {
            var codesPart = quantization
            codesPart.from = from
            codesPart.part = .codes
            let bytes = from == .bfloat16 ? Self.bf16(values) : values.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) }
            var plain = [UInt8](repeating: 0xAA, count: 4), fused = plain
            var surveyed = FP8Quantization.Survey(blocks: 2, recorded: [0.5, 0.5])
            var once = surveyed
            bytes.withUnsafeBytes { input in
                codesPart.survey(first: 0, bytes: input, into: &surveyed)
                plain.withUnsafeMutableBytes { codesPart.quantize(first: 0, bytes: input, scales: codesPart.scales(surveyed), into: $0) }
                fused.withUnsafeMutableBytes { codes in
                    codesPart.survey(first: 0, bytes: input, into: &once, codes: codes)
                    codesPart.quantize(first: 0, bytes: input, scales: codesPart.scales(once), into: codes, skippingRoundTrips: once)
                }
            }
            #expect(fused == plain && plain[0] == Quantize.e4m3(6) && plain[2] == 0x7E, "\(from)")
        }
    }
}

/// The vector kernels (Quantization+Lanes.swift) against the scalar ones, which the tests above
/// check against first principles: every bf16 bit pattern, random fp32 patterns and the e4m3
/// midpoints give the same codes, every code the same value, and runs of every length the same
/// amax and round-trip verdicts (NaN and negative zeros included).
struct QuantizationLaneTests {
    static func lanes(_ values: [Float]) -> [SIMD16<Float>] {
        stride(from: 0, to: values.count, by: 16).map { start in
            var lane = SIMD16<Float>(repeating: 0)
            for index in 0..<16 where start + index < values.count { lane[index] = values[start + index] }
            return lane
        }
    }

    @Test func e4m3LanesEqualScalarCodes() {
        var values = (0...0xFFFF).map { Float(bitPattern: UInt32($0) << 16) }  // every bf16
        var random = SplitMix(seed: 15)
        for _ in 0..<200_000 { values.append(Float(bitPattern: random.next32())) }
        let sorted = QuantizationTests.e4m3Values.filter { $0.code & 0x80 == 0 }.map(\.value).sorted()
        for (low, high) in zip(sorted, sorted.dropFirst()) {
            let middle = Float((low + high) / 2)
            let extra: [Float] = [middle, middle.nextUp, middle.nextDown, -middle, Float(low) * 0x1p-3, Float(448).nextUp, Float(0x1p-6).nextDown]
            values += extra
        }
        var mismatches = 0
        for (index, lane) in Self.lanes(values).enumerated() {
            let codes = Quantize.e4m3(lane)
            for element in 0..<16 where codes[element] != Quantize.e4m3(lane[element]) {
                mismatches += 1
                if mismatches < 5 { Issue.record("value \(lane[element]) (\(index * 16 + element)): \(codes[element]) != \(Quantize.e4m3(lane[element]))") }
            }
        }
        #expect(mismatches == 0)
    }

    @Test func e4m3LaneValuesEqualTheTable() {
        for start in stride(from: 0, to: 256, by: 16) {
            let codes = SIMD16<UInt32>((0..<16).map { UInt32(start + $0) })
            let values = Quantize.e4m3Values(codes)
            for index in 0..<16 {
                let want = Dequantize.e4m3Table[start + index]
                #expect(want.isNaN ? values[index].isNaN : values[index].bitPattern == want.bitPattern, "code \(start + index)")
            }
        }
    }

    static func bf16Bytes(_ values: [Float]) -> [UInt8] {
        values.flatMap { value -> [UInt8] in
            let bits = UInt16(truncatingIfNeeded: value.bitPattern >> 16)
            return [UInt8(bits & 0xFF), UInt8(bits >> 8)]
        }
    }

    @Test func amaxAndRoundTripsOfRunsEqualScalar() {
        var random = SplitMix(seed: 7)
        let quantization = FP8Quantization(from: .bfloat16, rows: 1, columns: 64, blockRows: 1, blockColumns: 64, part: .codes)
        Dequantize.e4m3Table.withUnsafeBufferPointer { table in
            for trial in 0..<3000 {
                let count = trial % 64 + 1
                let scale = Float(bitPattern: 0x3A00_0000 | (random.next32() & 0x00FF_FFFF))
                // Values that round-trip (code values times the scale, rounded to bf16), some perturbed.
                var values = (0..<count).map { _ -> Float in
                    let code = Int(random.next32() % 256)
                    let value = table[code] * scale
                    return Float(bitPattern: UInt32(quantization.storedBits(value.isNaN ? 0 : value)) << 16)
                }
                if trial % 3 == 0 { values[Int(random.next32()) % count] = Float(bitPattern: random.next32() & 0xFFFF_0000) }
                if trial % 50 == 0 { values[0] = -0.0 }
                if trial % 97 == 0 { values[count - 1] = .nan }
                let bytes = Self.bf16Bytes(values)
                bytes.withUnsafeBytes { raw in
                    var amax: Float = 0
                    var trips = true
                    for index in 0..<count {
                        let (value, bits) = quantization.load(raw, index)
                        if value.magnitude.isNaN || amax.isNaN { amax = .nan } else if value.magnitude > amax { amax = value.magnitude }
                        if quantization.storedBits(table[Int(Quantize.e4m3(value / scale))] * scale) != bits { trips = false }
                    }
                    let found = BF16Lanes.amax(raw.baseAddress!, start: 0, count: count)
                    #expect(found.isNaN ? amax.isNaN : found == amax, "trial \(trial)")
                    #expect(BF16Lanes.roundTrips(raw.baseAddress!, start: 0, count: count, scale: scale, table: table) == trips, "trial \(trial)")
                    var codes = [UInt8](repeating: 0xAA, count: count)
                    codes.withUnsafeMutableBufferPointer { BF16Lanes.quantize(raw.baseAddress!, start: 0, count: count, scale: scale, into: $0.baseAddress!) }
                    #expect(codes == values.map { Quantize.e4m3($0 / scale) }, "trial \(trial)")
                }
            }
        }
    }
}

extension QuantizationLaneTests {
    @Test func e2m1LanesEqualScalarCodes() {
        var values = (0...0xFFFF).map { Float(bitPattern: UInt32($0) << 16) }  // every bf16
        var random = SplitMix(seed: 4)
        for _ in 0..<100_000 { values.append(Float(bitPattern: random.next32())) }
        for tie: Float in [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, 6, 7] { values += [tie, tie.nextUp, tie.nextDown, -tie] }
        var mismatches = 0
        for lane in Self.lanes(values) {
            let codes = Quantize.e2m1(lane)
            let back = Quantize.e2m1Values(codes)
            for element in 0..<16 {
                let want = Quantize.e2m1(lane[element])
                if codes[element] != UInt32(want) || back[element].bitPattern != Dequantize.e2m1Table[Int(want)].bitPattern {
                    mismatches += 1
                    if mismatches < 5 { Issue.record("value \(lane[element]): \(codes[element]) != \(want)") }
                }
            }
        }
        #expect(mismatches == 0)
    }

    /// NVFP4 of a bf16 weight (the lanes) against the same values in fp32 (the scalar loops, the
    /// conversion being exact): the same amaxes and codes; the round-trip verdict against the
    /// scalar rule written here.
    @Test func nvfp4LanesEqualScalar() {
        var random = SplitMix(seed: 11)
        let rows = 8, columns = 64
        for trial in 0..<200 {
            var values = (0..<(rows * columns)).map { _ in Float(bitPattern: random.next32() & 0xBFFF_0000 | 0x3000_0000) }
            if trial % 5 == 0 { values[3] = -0.0; values[17] = .nan }
            let bf16 = NVFP4Quantization(from: .bfloat16, rows: rows, columns: columns, part: .codes)
            var fp32 = bf16
            fp32.from = .float32
            let recorded = (0..<bf16.groupCount).map { _ in UInt8(random.next32() % 0x7E) }
            let second = Float(bitPattern: 0x3C00_0000 | (random.next32() & 0x007F_FFFF))
            var a = NVFP4Quantization.Survey(groups: bf16.groupCount, recordedGroups: recorded, recordedSecond: second), b = a
            let bytes16 = QuantizationLaneTests.bf16Bytes(values)
            let bytes32 = values.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) }
            var codes16 = [UInt8](repeating: 0, count: rows * columns / 2), codes32 = codes16
            bytes16.withUnsafeBytes { input in
                bf16.survey(first: 0, bytes: UnsafeRawBufferPointer(rebasing: input[0..<256]), into: &a)  // two deliveries
                bf16.survey(first: 128, bytes: UnsafeRawBufferPointer(rebasing: input[256...]), into: &a)
                codes16.withUnsafeMutableBytes { bf16.quantize(first: 0, bytes: input, scales: bf16.scales(a), into: $0) }
            }
            bytes32.withUnsafeBytes { input in
                fp32.survey(first: 0, bytes: input, into: &b)
                codes32.withUnsafeMutableBytes { fp32.quantize(first: 0, bytes: input, scales: bf16.scales(a), into: $0) }
            }
            #expect(a.amax.isNaN ? b.amax.isNaN : a.amax == b.amax)
            #expect(zip(a.groupAmax, b.groupAmax).allSatisfy { $0.isNaN ? $1.isNaN : $0 == $1 })
            #expect(codes16 == codes32, "trial \(trial)")
            let rule = FP8Quantization(from: .bfloat16, rows: 1, columns: 16, blockRows: 1, blockColumns: 16, part: .codes)
            let trips = values.indices.allSatisfy { index in
                let multiplier = Dequantize.e4m3Table[Int(recorded[index / 16])] * second
                let bits = values[index].bitPattern >> 16
                return rule.storedBits(Dequantize.e2m1Table[Int(Quantize.e2m1(values[index] / multiplier))] * multiplier) == bits
            }
            #expect(a.roundTrips == trips, "trial \(trial)")
        }
    }

    /// A weight whose values are E2M1 codes times their recorded scales round-trips in the lanes.
    @Test func nvfp4RecordedScalesRoundTrip() {
        let columns = 32
        let recorded: [UInt8] = [0x38, 0x30]  // 1.0 and 0.5
        let second: Float = 0.25
        let codes: [UInt8] = (0..<columns).map { UInt8($0 % 16) }
        let values = codes.indices.map { Dequantize.e2m1Table[Int(codes[$0])] * Dequantize.e4m3Table[Int(recorded[$0 / 16])] * second }
        let quantization = NVFP4Quantization(from: .bfloat16, rows: 1, columns: columns, part: .codes)
        var survey = NVFP4Quantization.Survey(groups: 2, recordedGroups: recorded, recordedSecond: second)
        QuantizationLaneTests.bf16Bytes(values).withUnsafeBytes { quantization.survey(first: 0, bytes: $0, into: &survey) }
        #expect(survey.roundTrips)
        #expect(quantization.scales(survey).groups == recorded)
    }
}

/// Deterministic values for the quantization and dequantization tests (splitmix64; this
/// target has no NembridgeTestSupport).
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// The low 32 bits of `next()`.
    mutating func next32() -> UInt32 { UInt32(truncatingIfNeeded: next()) }
}

enum DTypeCastProbe {
    /// `value` rounded to bf16 (nearest even), back as Float: the test's own rounding.
    static func bf16Rounded(_ value: Float) -> Float {
        let bits = value.bitPattern
        let lower = bits & 0xFFFF_0000, upper = lower + 0x1_0000
        let distanceLow = Double(value) - Double(Float(bitPattern: lower)), distanceHigh = Double(Float(bitPattern: upper)) - Double(value)
        if distanceLow < distanceHigh { return Float(bitPattern: lower) }
        if distanceHigh < distanceLow { return Float(bitPattern: upper) }
        return Float(bitPattern: (lower >> 16) & 1 == 0 ? lower : upper)
    }
}

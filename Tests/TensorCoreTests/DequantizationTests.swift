import Foundation
import TensorCore
import Testing

/// The dequantization kernels against first principles: every e4m3 code decoded here
/// independently (sign × 2^(e−7) × (1 + m/8), subnormals m × 2^−9), the E2M1 table of issue 15,
/// and bf16 rounding done by comparing the two neighbouring bf16 values in Double.
struct DequantizationTests {
    /// float8_e4m3fn from its definition, in Double; nil for the two NaN codes.
    static func e4m3Reference(_ code: UInt8) -> Double? {
        let sign = code >> 7, exponent = Int((code >> 3) & 15), mantissa = Double(code & 7)
        if exponent == 15 && mantissa == 7 { return nil }
        let magnitude = exponent == 0 ? mantissa * pow(2, -9) : (1 + mantissa / 8) * pow(2, Double(exponent - 7))
        return sign == 1 ? -magnitude : magnitude
    }

    /// The bf16 nearest to `value` (a finite Float), ties to the even pattern, from Double
    /// distances (not the bit trick the kernel uses).
    static func bfloat16Reference(_ value: Float) -> UInt16 {
        let low = UInt16(value.bitPattern >> 16)
        let candidates = [low, low &+ 1]
        let exact = Double(value)
        func decode(_ bits: UInt16) -> Double { Double(Float(bitPattern: UInt32(bits) << 16)) }
        let distances = candidates.map { abs(decode($0) - exact) }
        if distances[0] == distances[1] { return candidates.first { $0 & 1 == 0 }! }
        return distances[0] < distances[1] ? candidates[0] : candidates[1]
    }

    static let e2m1Values: [Float] = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]

    @Test("every e4m3 code decodes to its value; the NaN codes to torch's 0x7FF00000 with their sign")
    func e4m3Codes() {
        for code in 0...255 {
            let got = Dequantize.e4m3(UInt8(code))
            if let want = Self.e4m3Reference(UInt8(code)) {
                #expect(got.bitPattern == Float(want).bitPattern, "code \(code)")
                #expect(Double(got) == want, "code \(code) is exact in fp32")
            } else {
                #expect(got.bitPattern == (code >= 128 ? 0xFFF0_0000 : 0x7FF0_0000), "NaN code \(code)")
            }
        }
        #expect(Dequantize.e4m3(0x80).bitPattern == 0x8000_0000 && Dequantize.e4m3(0x7E) == 448 && Dequantize.e4m3(0x01) == 0x1p-9)
        #expect(Dequantize.e4m3Table.count == 256 && (0..<256).allSatisfy { Dequantize.e4m3Table[$0].bitPattern == Dequantize.e4m3(UInt8($0)).bitPattern })
    }

    @Test("every E2M1 code decodes as issue 15 lists it (bit 3 the sign; code 8 is -0)")
    func e2m1Codes() {
        for code in 0..<16 {
            #expect(Dequantize.e2m1(UInt8(code)).bitPattern == Self.e2m1Values[code].bitPattern, "code \(code)")
        }
    }

    static func run(_ weight: QuantizedWeight, elements: Range<Int64>, codes: [UInt8], scales: [UInt8], to: DType) -> [UInt8] {
        var output = [UInt8](repeating: 0xAA, count: Int(elements.count) * to.bitWidth / 8)
        codes.withUnsafeBytes { codeBytes in
            scales.withUnsafeBytes { scaleBytes in
                output.withUnsafeMutableBytes { weight.dequantize(elements: elements, codes: codeBytes, scales: scaleBytes, to: to, into: $0) }
            }
        }
        return output
    }

    static func halves(_ bytes: [UInt8]) -> [UInt16] {
        stride(from: 0, to: bytes.count, by: 2).map { UInt16(bytes[$0]) | UInt16(bytes[$0 + 1]) << 8 }
    }

    static func floats(_ values: [Float]) -> [UInt8] { values.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) } }

    @Test("block FP8 with ragged edge blocks: bf16(float(q) × scale[r / 2][c / 3]), any element range")
    func blockFP8() {
        let rows = 5, columns = 7  // blocks [2, 3]: a 3 × 3 scale grid, the last row and column ragged
        var generator = SplitMix(seed: 15)
        var codes = (0..<(rows * columns)).map { _ in UInt8.random(in: 0...0x7E, using: &generator) | (Bool.random(using: &generator) ? 0x80 : 0) }
        codes[0] = 0x80  // -0
        codes[1] = 0x00
        let scaleValues: [Float] = (0..<9).map { Float(1 + $0) * 0.013 }
        let weight = QuantizedWeight(format: .e4m3, source: 0, range: ByteRange(offset: 0, count: Int64(rows * columns)), rows: rows, columns: columns,
                                     scale: .blocks(blockRows: 2, blockColumns: 3, source: 0, offset: 1000, dtype: .float32))
        for range: Range<Int64> in [0..<35, 9..<23, 34..<35, 13..<14] {
            let scaleRange = weight.scaleBytes(elements: range)!
            let firstScale = Int(scaleRange.range.offset - 1000) / 4
            #expect(scaleRange.source == 0 && (scaleRange.range.offset - 1000) % 12 == 0, "whole scale rows")
            let scales = Array(Self.floats(scaleValues)[(firstScale * 4)..<(firstScale * 4 + Int(scaleRange.range.count))])
            let got = Self.halves(Self.run(weight, elements: range, codes: Array(codes[Int(range.lowerBound)...]), scales: scales, to: .bfloat16))
            let want = range.map { element -> UInt16 in
                let row = Int(element) / columns, column = Int(element) % columns
                let product = Float(Self.e4m3Reference(codes[Int(element)])!) * scaleValues[(row / 2) * 3 + column / 3]
                return Self.bfloat16Reference(product)
            }
            #expect(got == want, "elements \(range)")
        }
        #expect(Self.halves(Self.run(weight, elements: 0..<2, codes: codes, scales: Self.floats(scaleValues), to: .bfloat16)) == [0x8000, 0])
    }

    @Test("ModelOpt FP8: one scale, to bf16, fp16 and fp32")
    func tensorFP8() {
        let codes: [UInt8] = [0x00, 0x80, 0x7E, 0xFE, 0x01, 0x38, 0x3F, 0x55]
        let scale: Float = 0.00390625 * 1.7
        let weight = QuantizedWeight(format: .e4m3, source: 0, range: ByteRange(offset: 0, count: 8), rows: 2, columns: 4, scale: .tensor(scale))
        let products = codes.map { Float(Self.e4m3Reference($0)!) * scale }
        #expect(Self.halves(Self.run(weight, elements: 0..<8, codes: codes, scales: [], to: .bfloat16)) == products.map(Self.bfloat16Reference))
        #expect(Self.run(weight, elements: 0..<8, codes: codes, scales: [], to: .float32) == Self.floats(products))
        #expect(Self.halves(Self.run(weight, elements: 0..<8, codes: codes, scales: [], to: .float16)) == products.map { Float16($0).bitPattern })
    }

    @Test("NVFP4: low nibble first, scale per 16 elements = float(e4m3 scale) × weight_scale_2 in fp32, then × the code")
    func nvfp4() {
        let rows = 2, columns = 32  // two groups a row
        var generator = SplitMix(seed: 4)
        var packed = (0..<(rows * columns / 2)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        packed[0] = 0x8A  // element 0: code 10 (-1), element 1: code 8 (-0)
        let scaleCodes: [UInt8] = [0x38, 0x41, 0x2A, 0xB9]  // 1.0, 2.25, … and a negative scale
        let second: Float = 0.000_123_45
        let weight = QuantizedWeight(format: .e2m1, source: 0, range: ByteRange(offset: 0, count: Int64(packed.count)), rows: rows, columns: columns,
                                     scale: .groups(size: 16, source: 0, offset: 500, second: second))
        func code(_ element: Int) -> Int { Int(element % 2 == 0 ? packed[element / 2] & 15 : packed[element / 2] >> 4) }
        for range: Range<Int64> in [0..<64, 18..<50, 48..<64, 2..<4] {
            let scales = weight.scaleBytes(elements: range)!
            let firstGroup = Int(scales.range.offset - 500)
            #expect(firstGroup == Int(range.lowerBound) / 16 && Int(scales.range.count) == (Int(range.upperBound) - 1) / 16 - firstGroup + 1)
            let slice = Array(scaleCodes[firstGroup..<(firstGroup + Int(scales.range.count))])
            let got = Self.halves(Self.run(weight, elements: range, codes: Array(packed[Int(range.lowerBound / 2)...]), scales: slice, to: .bfloat16))
            let want = range.map { element -> UInt16 in
                let multiplier = Float(Self.e4m3Reference(scaleCodes[Int(element) / 16])!) * second
                return Self.bfloat16Reference(Self.e2m1Values[code(Int(element))] * multiplier)
            }
            #expect(got == want, "elements \(range)")
        }
        let first = Self.halves(Self.run(weight, elements: 0..<2, codes: packed, scales: scaleCodes, to: .bfloat16))
        #expect(first == [Self.bfloat16Reference(-1 * Float(1.0) * second), 0x8000])
    }

    @Test("a NaN product is bf16 0xFFFF, and fp16 keeps torch's sign and payload bits")
    func nan() {
        let weight = QuantizedWeight(format: .e4m3, source: 0, range: ByteRange(offset: 0, count: 2), rows: 1, columns: 2, scale: .tensor(0.5))
        #expect(Self.halves(Self.run(weight, elements: 0..<2, codes: [0x7F, 0xFF], scales: [], to: .bfloat16)) == [0xFFFF, 0xFFFF])
        #expect(Self.halves(Self.run(weight, elements: 0..<2, codes: [0x7F, 0xFF], scales: [], to: .float16)) == [0x7F80, 0xFF80])
    }

    @Test("a dequantizing transform writes 2 (FP8) or 4 (NVFP4) bf16 bytes per source byte")
    func outputBytes() {
        #expect(ElementTransform.dequantize(.e4m3, to: .bfloat16).outputBytes(10) == 20)
        #expect(ElementTransform.dequantize(.e2m1, to: .bfloat16).outputBytes(10) == 40)
        #expect(ElementTransform.dequantize(.e2m1, to: .float32).outputBytes(10) == 80)
        #expect(ElementTransform.cast(ElementCast(from: .bfloat16, to: .float32)).outputBytes(10) == 20)
    }
}

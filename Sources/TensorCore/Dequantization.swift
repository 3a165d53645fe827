// Dequantization of the quantized Hugging Face releases (block FP8 as DeepSeek-V3 / Qwen3 ship
// it, ModelOpt FP8 and NVFP4 as NVIDIA ships Nemotron 3), with the arithmetic of issue 15, which
// is torch's on CPU: FP8 `bf16(float(q) * scale)`; NVFP4 `bf16(e2m1(code) * (float(weight_scale)
// * weight_scale_2))`, the two scales multiplied first in fp32; the product rounded once to fp32,
// then to the target dtype by `DTypeCast`'s rounding (nearest even).

/// How a quantized weight stores one element.
public enum QuantizedFormat: String, Sendable, Hashable {
    /// float8_e4m3fn, one byte an element (`F8_E4M3`).
    case e4m3
    /// Two E2M1 codes a byte, element 2j in the low nibble (`U8` [out, in/2] in ModelOpt NVFP4).
    case e2m1

    public var elementsPerByte: Int { self == .e2m1 ? 2 : 1 }
}

/// A quantized weight of a plan's sources: its stored bytes, logical shape [rows, columns] and the
/// scale its elements are multiplied by. A move of a dequantizing group reads a part of one of
/// these; the executor finds the weight from the move's source and offset.
public struct QuantizedWeight: Sendable, Hashable {
    public enum Scale: Sendable, Hashable {
        /// One multiplier for the whole weight (ModelOpt FP8's `weight_scale`).
        case tensor(Float)
        /// Block FP8's `weight_scale_inv`: `scaleShape` = [ceil(rows / blockRows), ceil(columns /
        /// blockColumns)] elements of `dtype` (F32 or BF16) at `offset` of source `source`;
        /// element (r, c) takes scale [r / blockRows][c / blockColumns].
        case blocks(blockRows: Int, blockColumns: Int, source: Int32, offset: Int64, dtype: DType)
        /// NVFP4's `weight_scale`: one e4m3 scale per `size` consecutive elements of a row (so
        /// element e takes scale e / size), at `offset` of source `source`, each multiplied by
        /// `second` (`weight_scale_2`) in fp32 before use.
        case groups(size: Int, source: Int32, offset: Int64, second: Float)
    }

    public var format: QuantizedFormat
    public var source: Int32
    /// The weight's stored bytes in its source.
    public var range: ByteRange
    public var rows: Int
    public var columns: Int
    public var scale: Scale

    public init(format: QuantizedFormat, source: Int32, range: ByteRange, rows: Int, columns: Int, scale: Scale) {
        precondition(Int64(rows) * Int64(columns) == range.count * Int64(format.elementsPerByte), "a quantized weight's bytes do not hold its shape")
        if case .groups(let size, _, _, _) = scale { precondition(size > 0 && columns % size == 0, "groups across rows") }
        if case .blocks(let blockRows, let blockColumns, _, _, _) = scale { precondition(blockRows > 0 && blockColumns > 0, "empty blocks") }
        self.format = format
        self.source = source
        self.range = range
        self.rows = rows
        self.columns = columns
        self.scale = scale
    }

    /// Columns of block FP8's scale grid.
    var scaleColumns: Int {
        guard case .blocks(_, let blockColumns, _, _, _) = scale else { return 1 }
        return (columns + blockColumns - 1) / blockColumns
    }

    /// The scale bytes that elements `elements` (row-major) need, read from the scale's source:
    /// nil for a tensor scale. Bounded by the elements' rows (block FP8) or groups (NVFP4).
    public func scaleBytes(elements: Range<Int64>) -> (source: Int32, range: ByteRange)? {
        precondition(!elements.isEmpty && elements.upperBound <= Int64(rows) * Int64(columns), "elements outside the weight")
        switch scale {
        case .tensor:
            return nil
        case .blocks(let blockRows, _, let source, let offset, let dtype):
            let firstRow = elements.lowerBound / Int64(columns), lastRow = (elements.upperBound - 1) / Int64(columns)
            let first = firstRow / Int64(blockRows), last = lastRow / Int64(blockRows)
            let width = Int64(dtype.bitWidth / 8), perRow = Int64(scaleColumns) * width
            return (source, ByteRange(offset: offset + first * perRow, count: (last - first + 1) * perRow))
        case .groups(let size, let source, let offset, _):
            let first = elements.lowerBound / Int64(size), last = (elements.upperBound - 1) / Int64(size)
            return (source, ByteRange(offset: offset + first, count: last - first + 1))
        }
    }

    /// Dequantizes elements `elements` of this weight (row-major over [rows, columns]): `codes`
    /// holds their stored bytes (from the first element's byte: element boundaries are byte
    /// boundaries), `scales` the bytes `scaleBytes(elements:)` names (empty for a tensor scale);
    /// `output` receives `elements.count` elements of `to` (bf16, fp16 or fp32).
    public func dequantize(elements: Range<Int64>, codes: UnsafeRawBufferPointer, scales: UnsafeRawBufferPointer,
                           to: DType, into output: UnsafeMutableRawBufferPointer) {
        let count = Int(elements.count)
        guard count > 0 else { return }
        precondition(codes.count * format.elementsPerByte >= count, "codes shorter than the elements")
        precondition(elements.lowerBound % Int64(format.elementsPerByte) == 0, "an element range starting inside a byte")
        precondition(output.count >= count * (to.bitWidth / 8), "output shorter than the elements")
        let batch = 4096
        withUnsafeTemporaryAllocation(of: Float.self, capacity: batch) { values in
            var done = 0
            while done < count {
                let step = min(batch, count - done)
                fill(values.baseAddress!, first: elements.lowerBound + Int64(done), count: step, codes: codes, codeOffset: done, scales: scales,
                     firstElement: elements.lowerBound)
                Dequantize.store(UnsafePointer(values.baseAddress!), count: step, as: to,
                                 into: output.baseAddress! + done * (to.bitWidth / 8))
                done += step
            }
        }
    }

    /// fp32 values of `count` elements from element `first` (`codeOffset` elements into `codes`).
    private func fill(_ values: UnsafeMutablePointer<Float>, first: Int64, count: Int, codes: UnsafeRawBufferPointer, codeOffset: Int,
                      scales: UnsafeRawBufferPointer, firstElement: Int64) {
        let bytes = codes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        switch scale {
        case .tensor(let multiplier):
            precondition(format == .e4m3, "a tensor scale on NVFP4")
            Dequantize.e4m3Table.withUnsafeBufferPointer { table in
                for index in 0..<count { values[index] = table[Int(bytes[codeOffset + index])] * multiplier }
            }
        case .blocks(let blockRows, let blockColumns, _, _, let dtype):
            precondition(format == .e4m3, "block scales on NVFP4")
            let firstScaleRow = (firstElement / Int64(columns)) / Int64(blockRows)
            let scaleColumns = self.scaleColumns
            Dequantize.e4m3Table.withUnsafeBufferPointer { table in
                var index = 0
                while index < count {
                    let element = first + Int64(index)
                    let row = Int(element / Int64(columns)), column = Int(element % Int64(columns))
                    let blockEnd = min(columns, (column / blockColumns + 1) * blockColumns)
                    let run = min(blockEnd - column, count - index)
                    let scaleIndex = (Int64(row / blockRows) - firstScaleRow) * Int64(scaleColumns) + Int64(column / blockColumns)
                    let multiplier = Dequantize.scaleValue(scales, index: Int(scaleIndex), dtype: dtype)
                    let source = bytes + codeOffset + index
                    let target = values + index
                    for offset in 0..<run { target[offset] = table[Int(source[offset])] * multiplier }
                    index += run
                }
            }
        case .groups(let size, _, _, let second):
            precondition(format == .e2m1, "group scales on FP8")
            let firstGroup = firstElement / Int64(size)
            Dequantize.e4m3Table.withUnsafeBufferPointer { e4m3 in
                Dequantize.e2m1Table.withUnsafeBufferPointer { table in
                    let scaleBytes = scales.baseAddress!.assumingMemoryBound(to: UInt8.self)
                    var index = 0
                    while index < count {
                        let element = first + Int64(index)
                        let group = element / Int64(size)
                        let run = min(Int((group + 1) * Int64(size) - element), count - index)
                        let multiplier = e4m3[Int(scaleBytes[Int(group - firstGroup)])] * second
                        // Element e is nibble e % 2 of byte e / 2 of the codes (which start at an
                        // even element; groups and batches are even, so every run is whole bytes).
                        let local = codeOffset + index
                        precondition(local & 1 == 0 && run & 1 == 0, "an NVFP4 run inside a byte")
                        let source = bytes + (local >> 1)
                        let target = values + index
                        for pair in 0..<(run >> 1) {
                            let byte = source[pair]
                            target[2 * pair] = table[Int(byte & 0x0F)] * multiplier
                            target[2 * pair + 1] = table[Int(byte >> 4)] * multiplier
                        }
                        index += run
                    }
                }
            }
        }
    }
}

/// The decode tables and the store of dequantized values.
public enum Dequantize {
    /// float8_e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities, S.1111.111 NaN.
    public static func e4m3(_ code: UInt8) -> Float {
        let sign: Float = code & 0x80 != 0 ? -1 : 1
        let exponent = Int((code >> 3) & 0x0F), mantissa = Int(code & 0x07)
        // NaN as torch's float8_e4m3fn -> float conversion gives it (0x7FF00000, sign kept), so
        // a NaN's payload through the product and the fp16 store is torch's too.
        if exponent == 0x0F && mantissa == 0x07 { return Float(bitPattern: (code & 0x80 != 0 ? 0x8000_0000 : 0) | 0x7FF0_0000) }
        if exponent == 0 { return sign * Float(mantissa) * 0x1p-9 }  // subnormal: m/8 * 2^-6 (and ±0)
        return sign * (1 + Float(mantissa) / 8) * Float(sign: .plus, exponent: exponent - 7, significand: 1)
    }

    /// E2M1 code (bit 3 the sign): 0, 0.5, 1, 1.5, 2, 3, 4, 6.
    public static func e2m1(_ code: UInt8) -> Float {
        let magnitudes: [Float] = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
        let value = magnitudes[Int(code & 0x07)]
        return code & 0x08 != 0 ? -value : value
    }

    public static let e4m3Table: [Float] = (0...255).map { e4m3(UInt8($0)) }
    public static let e2m1Table: [Float] = (0...15).map { e2m1(UInt8($0)) }

    /// The first element of `bytes` (a scalar scale: F32, BF16 or F16), as fp32.
    public static func scaleValueOf(_ bytes: UnsafeRawBufferPointer, dtype: DType) -> Float {
        scaleValue(bytes, index: 0, dtype: dtype)
    }

    /// Scale element `index` of `bytes` (F32, BF16 or F16, little-endian), as fp32.
    static func scaleValue(_ bytes: UnsafeRawBufferPointer, index: Int, dtype: DType) -> Float {
        switch dtype {
        case .float32: Float(bitPattern: bytes.loadUnaligned(fromByteOffset: index * 4, as: UInt32.self).littleEndian)
        case .bfloat16: DTypeCast.float32(bfloat16: bytes.loadUnaligned(fromByteOffset: index * 2, as: UInt16.self).littleEndian)
        case .float16: Float(Float16(bitPattern: bytes.loadUnaligned(fromByteOffset: index * 2, as: UInt16.self).littleEndian))
        default: preconditionFailure("a scale of dtype \(dtype)")
        }
    }

    /// Writes `count` fp32 values as `dtype` (little-endian), rounded as `DTypeCast` rounds.
    static func store(_ values: UnsafePointer<Float>, count: Int, as dtype: DType, into output: UnsafeMutableRawPointer) {
        switch dtype {
        case .bfloat16:
            let target = output.assumingMemoryBound(to: UInt16.self)
            let bits = UnsafeRawPointer(values).assumingMemoryBound(to: UInt32.self)
            for index in 0..<count {
                let word = bits[index]
                // NaN (exponent all ones, mantissa not zero) is 0xFFFF, as DTypeCast.bfloat16.
                let rounded = UInt16(truncatingIfNeeded: (word &+ 0x7FFF &+ ((word >> 16) & 1)) >> 16)
                target[index] = ((word & 0x7FFF_FFFF) > 0x7F80_0000 ? 0xFFFF : rounded).littleEndian
            }
        case .float32:
            let target = output.assumingMemoryBound(to: UInt32.self)
            for index in 0..<count { target[index] = values[index].bitPattern.littleEndian }
        case .float16:
            let target = output.assumingMemoryBound(to: UInt16.self)
            for index in 0..<count {
                let value = values[index]
                if value.isNaN {
                    // torch keeps the sign and the payload's top bits, quieted (0x7FF00000 -> 0x7F80).
                    let bits = value.bitPattern
                    target[index] = (UInt16(truncatingIfNeeded: (bits >> 16) & 0x8000) | 0x7E00 | UInt16(truncatingIfNeeded: (bits >> 13) & 0x03FF)).littleEndian
                } else {
                    target[index] = Float16(value).bitPattern.littleEndian
                }
            }
        default:
            preconditionFailure("dequantizing to \(dtype)")
        }
    }
}

/// What happens to a group's elements between its moves' reads and the output: a dtype cast
/// (`--dtype`), or dequantization (the moves read parts of the plan's `QuantizedWeight`s, the
/// output holds `to` elements).
public enum ElementTransform: Sendable, Hashable, CustomStringConvertible {
    case cast(ElementCast)
    case dequantize(QuantizedFormat, to: DType)
    /// FP8 codes or scales of one weight (the moves read all its elements, in order).
    case quantize(FP8Quantization)
    /// NVFP4 codes, group scales or weight_scale_2 of one weight (as `quantize`).
    case quantizeNVFP4(NVFP4Quantization)

    /// Output bytes of `count` source bytes.
    public func outputBytes(_ count: Int64) -> Int64 {
        switch self {
        case .cast(let cast): cast.outputBytes(count)
        case .dequantize(let format, let to): count * Int64(format.elementsPerByte) * Int64(to.bitWidth / 8)
        case .quantize(let quantization): quantization.outputByteCount
        case .quantizeNVFP4(let quantization): quantization.outputByteCount
        }
    }

    /// The cast, when this is one.
    public var cast: ElementCast? { if case .cast(let cast) = self { cast } else { nil } }

    public var description: String {
        switch self {
        case .cast(let cast): cast.description
        case .dequantize(let format, let to): "dequantize \(format.rawValue) -> \(to)"
        case .quantize(let quantization): quantization.description
        case .quantizeNVFP4(let quantization): quantization.description
        }
    }
}

// Quantization for export (issue 15): FP8 codes and scales as NVIDIA's and DeepSeek's releases
// write them, and E2M1 codes for NVFP4 scales recorded at import. The arithmetic is torch's on CPU:
// per block (or tensor) scale = amax / 448 in fp32 (1.0 for a block of zeros), code =
// `(x.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn)`. NaN follows torch: a block
// holding a NaN has a NaN amax, so a NaN scale and NaN codes (0x7F, sign kept).

/// The codes of the quantized formats.
public enum Quantize {
    /// The largest finite float8_e4m3fn magnitude.
    public static let e4m3Max: Float = 448

    /// The float8_e4m3fn code of `value` clamped to ±448 and rounded to nearest, ties to even
    /// (torch's `value.clamp(-448, 448).to(torch.float8_e4m3fn)`): the sign bit is `value`'s, so
    /// -0.0 is 0x80; NaN is S.1111.111 (0x7F, 0xFF).
    @inline(__always)
    public static func e4m3(_ value: Float) -> UInt8 {
        let sign = UInt8(truncatingIfNeeded: value.bitPattern >> 24) & 0x80
        let magnitude = value.magnitude
        if magnitude.isNaN { return sign | 0x7F }
        if magnitude >= e4m3Max { return sign | 0x7E }
        // Below 2^-6 the codes are subnormal, m * 2^-9 (m = 0...7; m = 8 is the smallest normal,
        // code 0x08, so the rounded count is the code itself). Scaling by 2^9 is exact.
        if magnitude < 0x1p-6 { return sign | UInt8((magnitude * 0x1p9).rounded(.toNearestOrEven)) }
        // Normal: fp32's exponent and top 3 mantissa bits, rounded to nearest even at bit 20 (a
        // mantissa rounding up carries into the exponent), rebiased from 127 to 7.
        let bits = magnitude.bitPattern
        let rounded = (bits &+ 0x7FFFF &+ ((bits >> 20) & 1)) >> 20
        return sign | UInt8(truncatingIfNeeded: rounded &- (120 << 3))
    }

    /// The E2M1 code (bit 3 the sign, taken from `value`'s sign bit) of the nearest of 0, 0.5, 1,
    /// 1.5, 2, 3, 4, 6 to `value`'s magnitude (saturating at 6), ties to the even code.
    @inline(__always)
    public static func e2m1(_ value: Float) -> UInt8 {
        let sign: UInt8 = value.sign == .minus ? 0x08 : 0
        let m = value.magnitude
        // Midpoints between neighbours; at a tie the even code (0, 2, 4, 6) wins.
        let code: UInt8 = m <= 0.25 ? 0 : m < 0.75 ? 1 : m <= 1.25 ? 2 : m < 1.75 ? 3 : m <= 2.5 ? 4 : m < 3.5 ? 5 : m <= 5 ? 6 : 7
        return sign | code
    }

    /// The FP8 scale of a block whose largest magnitude is `amax`: amax / 448 in fp32, 1.0 for a
    /// block of zeros (so its codes are zeros, not NaN).
    public static func fp8Scale(amax: Float) -> Float { amax == 0 ? 1 : amax / e4m3Max }
}

/// How a quantizing group turns a weight's elements (bf16, fp16 or fp32, row-major [rows,
/// columns], read by the group's moves) into FP8: per block of [blockRows, blockColumns] (block
/// FP8; the whole weight for ModelOpt's per-tensor FP8) one scale. A weight is two groups of the
/// plan reading the same elements: its codes (F8_E4M3, one byte an element) and its scale grid
/// ([ceil(rows / blockRows), ceil(columns / blockColumns)] of `scaleDType`), each group computing
/// the scales from its own pass over the elements, so no group waits for another.
public struct FP8Quantization: Sendable, Hashable, CustomStringConvertible {
    public enum Part: Sendable, Hashable {
        case codes
        case scales
    }

    /// Scales of a quantized source, recorded at import (`--quantize like-source`): a block keeps
    /// its recorded scale when its values round-trip with it (quantized with it, then dequantized
    /// to `from`, they are bit for bit the input), else it gets a fresh scale by the rule.
    public struct RecordedScales: Sendable, Hashable {
        public var source: Int32
        public var offset: Int64
        public init(source: Int32, offset: Int64) {
            self.source = source
            self.offset = offset
        }
    }

    public var from: DType
    public var rows: Int
    public var columns: Int
    public var blockRows: Int
    public var blockColumns: Int
    public var scaleDType: DType
    public var part: Part
    public var recorded: RecordedScales?

    public init(from: DType, rows: Int, columns: Int, blockRows: Int, blockColumns: Int, scaleDType: DType = .float32, part: Part,
                recorded: RecordedScales? = nil) {
        precondition([.bfloat16, .float16, .float32].contains(from), "quantizing \(from)")
        precondition([.float32, .bfloat16].contains(scaleDType), "FP8 scales of \(scaleDType)")
        precondition(rows > 0 && columns > 0 && blockRows > 0 && blockColumns > 0, "an empty weight or block")
        self.from = from
        self.rows = rows
        self.columns = columns
        self.blockRows = blockRows
        self.blockColumns = blockColumns
        self.scaleDType = scaleDType
        self.part = part
        self.recorded = recorded
    }

    public var gridRows: Int { (rows + blockRows - 1) / blockRows }
    public var gridColumns: Int { (columns + blockColumns - 1) / blockColumns }
    public var scaleCount: Int { gridRows * gridColumns }
    public var scaleByteCount: Int64 { Int64(scaleCount * scaleDType.bitWidth / 8) }
    public var elementBytes: Int { from.bitWidth / 8 }

    /// Bytes the group writes.
    public var outputByteCount: Int64 { part == .codes ? Int64(rows) * Int64(columns) : scaleByteCount }

    public var description: String {
        let scheme = blockRows == rows && blockColumns == columns ? "fp8 per tensor" : "fp8 blocks [\(blockRows), \(blockColumns)]"
        return "quantize \(from) -> \(scheme)" + (part == .scales ? " (scales)" : "") + (recorded != nil ? " reusing recorded scales" : "")
    }

    /// What the first pass learns per block: the largest magnitude, and whether every element
    /// round-trips with the recorded scale.
    public struct Survey: Sendable {
        public var amax: [Float]
        public var roundTrips: [Bool]
        let recorded: [Float]?

        public init(blocks: Int, recorded: [Float]?) {
            precondition(recorded == nil || recorded!.count == blocks, "recorded scales of another grid")
            amax = [Float](repeating: 0, count: blocks)
            roundTrips = [Bool](repeating: recorded != nil, count: blocks)
            self.recorded = recorded
        }
    }

    /// The recorded scale grid from its stored bytes (`scaleDType`, little-endian).
    public func recordedScales(_ bytes: UnsafeRawBufferPointer) -> [Float] {
        precondition(bytes.count >= Int(scaleByteCount), "recorded scales shorter than the grid")
        return (0..<scaleCount).map { Dequantize.scaleValue(bytes, index: $0, dtype: scaleDType) }
    }

    /// Element `index` of `bytes` (of `from`) as fp32, with its stored bits.
    @inline(__always)
    func load(_ bytes: UnsafeRawBufferPointer, _ index: Int) -> (value: Float, bits: UInt32) {
        switch from {
        case .bfloat16:
            let bits = UInt32(bytes.loadUnaligned(fromByteOffset: index * 2, as: UInt16.self).littleEndian)
            return (Float(bitPattern: bits << 16), bits)
        case .float16:
            let bits = bytes.loadUnaligned(fromByteOffset: index * 2, as: UInt16.self).littleEndian
            return (Float(Float16(bitPattern: bits)), UInt32(bits))
        default:
            let bits = bytes.loadUnaligned(fromByteOffset: index * 4, as: UInt32.self).littleEndian
            return (Float(bitPattern: bits), bits)
        }
    }

    /// The bits `value` is stored as in `from`, rounded as dequantization rounds.
    @inline(__always)
    func storedBits(_ value: Float) -> UInt32 {
        switch from {
        case .bfloat16:
            let word = value.bitPattern
            if (word & 0x7FFF_FFFF) > 0x7F80_0000 { return 0xFFFF }
            return (word &+ 0x7FFF &+ ((word >> 16) & 1)) >> 16
        case .float16:
            var stored: UInt16 = 0
            withUnsafePointer(to: value) { pointer in
                withUnsafeMutableBytes(of: &stored) { Dequantize.store(pointer, count: 1, as: .float16, into: $0.baseAddress!) }
            }
            return UInt32(stored)
        default:
            return value.bitPattern
        }
    }

    /// Calls `body(row, firstColumn, count, startIndex)` for each run of `count` consecutive
    /// elements of one block-row and block-column, elements `first..<first + count` of the weight.
    @inline(__always)
    func forEachRun(first: Int64, count: Int, _ body: (Int, Int, Int, Int) -> Void) {
        var row = Int(first / Int64(columns)), column = Int(first % Int64(columns))
        var blockEnd = min(columns, (column / blockColumns + 1) * blockColumns)
        var index = 0
        while index < count {
            let run = min(blockEnd - column, count - index)
            body(row, column, run, index)
            index += run
            column += run
            if column == columns {
                row += 1
                column = 0
                blockEnd = min(columns, blockColumns)
            } else if column == blockEnd {
                blockEnd = min(columns, blockEnd + blockColumns)
            }
        }
    }

    /// The first pass over elements `first..<first + count` (their bytes in `bytes`). With
    /// recorded scales and `codes`, the codes of the recorded scale are written there for each
    /// block that still round-trips: the codes of those blocks once the survey is complete, so a
    /// band in the buffer needs a second quantizing pass only over the blocks that do not
    /// (`quantize(..., skippingRoundTrips:)`).
    public func survey(first: Int64, bytes: UnsafeRawBufferPointer, into survey: inout Survey, codes: UnsafeMutableRawBufferPointer? = nil) {
        let count = bytes.count / elementBytes
        let output = codes?.baseAddress?.assumingMemoryBound(to: UInt8.self)
        precondition(codes == nil || codes!.count >= count, "codes shorter than the elements")
        let gridColumns = self.gridColumns
        let lanes = from == .bfloat16 ? bytes.baseAddress : nil
        Dequantize.e4m3Table.withUnsafeBufferPointer { table in
            forEachRun(first: first, count: count) { row, column, run, start in
                let block = (row / blockRows) * gridColumns + column / blockColumns
                var amax = survey.amax[block]
                if let lanes {
                    let found = BF16Lanes.amax(lanes, start: start, count: run)
                    if found.isNaN || amax.isNaN { amax = .nan } else if found > amax { amax = found }
                } else {
                    for index in start..<(start + run) {
                        let magnitude = load(bytes, index).value.magnitude
                        // amax propagates NaN, as torch's does.
                        if magnitude.isNaN || amax.isNaN { amax = .nan } else if magnitude > amax { amax = magnitude }
                    }
                }
                survey.amax[block] = amax
                if let recorded = survey.recorded, survey.roundTrips[block] {
                    let scale = recorded[block]
                    var trips = true
                    if let lanes {
                        trips = BF16Lanes.roundTrips(lanes, start: start, count: run, scale: scale, table: table, codes: output)
                    } else {
                        for index in start..<(start + run) {
                            let (value, bits) = load(bytes, index)
                            let code = Quantize.e4m3(value / scale)
                            output?[index] = code
                            if storedBits(table[Int(code)] * scale) != bits { trips = false; break }
                        }
                    }
                    survey.roundTrips[block] = trips
                }
            }
        }
    }

    /// The scale of each block once surveyed: the recorded one where it round-trips, else
    /// amax / 448 (1.0 for zeros), as stored in `scaleDType` (the codes use the stored value).
    public func scales(_ survey: Survey) -> [Float] {
        (0..<scaleCount).map { block in
            if let recorded = survey.recorded, survey.roundTrips[block] { return recorded[block] }
            let scale = Quantize.fp8Scale(amax: survey.amax[block])
            return scaleDType == .bfloat16 ? DTypeCast.float32(bfloat16: DTypeCast.bfloat16(scale)) : scale
        }
    }

    /// The stored bytes of `scales` (`scaleDType`, little-endian).
    public func scaleBytes(_ scales: [Float]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Int(scaleByteCount))
        bytes.withUnsafeMutableBytes { output in
            scales.withUnsafeBufferPointer { values in
                Dequantize.store(values.baseAddress!, count: values.count, as: scaleDType, into: output.baseAddress!)
            }
        }
        return bytes
    }

    /// The codes of elements `first..<first + count` (their bytes in `bytes`) into `codes`, but
    /// for the blocks `skippingRoundTrips` says keep their recorded scale (the survey wrote those).
    public func quantize(first: Int64, bytes: UnsafeRawBufferPointer, scales: [Float], into codes: UnsafeMutableRawBufferPointer,
                         skippingRoundTrips survey: Survey? = nil) {
        let count = bytes.count / elementBytes
        precondition(codes.count >= count, "codes shorter than the elements")
        let gridColumns = self.gridColumns
        let output = codes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let lanes = from == .bfloat16 ? bytes.baseAddress : nil
        let kept = survey?.recorded != nil ? survey?.roundTrips : nil
        forEachRun(first: first, count: count) { row, column, run, start in
            let block = (row / blockRows) * gridColumns + column / blockColumns
            if let kept, kept[block] { return }
            let scale = scales[block]
            if let lanes {
                BF16Lanes.quantize(lanes, start: start, count: run, scale: scale, into: output)
            } else {
                for index in start..<(start + run) { output[index] = Quantize.e4m3(load(bytes, index).value / scale) }
            }
        }
    }
}

/// How a quantizing group turns a weight's elements into ModelOpt NVFP4 (used with scales
/// recorded from an NVFP4 source, `--quantize like-source`): E2M1 codes two a byte (element 2j
/// in the low nibble) of x / (float(weight_scale[g]) * weight_scale_2), the group scales
/// (F8_E4M3, one per `group` elements of a row) and the per-tensor `weight_scale_2` (F32) are
/// three groups of the plan over the same elements. The recorded scales are kept when every
/// element round-trips with them; else all are fresh by ModelOpt's rule (NVFP4QTensor):
/// weight_scale_2 = amax / (6 * 448) (1.0 for a weight of zeros), weight_scale[g] =
/// e4m3(group_amax / (6 * weight_scale_2)), 1.0 for a group of zeros. Unlike ModelOpt (whose
/// sign is `x < 0`), the code's sign is x's sign bit, so -0.0 keeps code 8 as the sources store it.
public struct NVFP4Quantization: Sendable, Hashable, CustomStringConvertible {
    public enum Part: Sendable, Hashable {
        case codes
        case groupScales
        case secondScale
    }

    /// The recorded group scales (e4m3 bytes at `offset` of source `source`) and weight_scale_2.
    public struct RecordedScales: Sendable, Hashable {
        public var source: Int32
        public var offset: Int64
        public var second: Float
        public init(source: Int32, offset: Int64, second: Float) {
            self.source = source
            self.offset = offset
            self.second = second
        }
    }

    public var from: DType
    public var rows: Int
    public var columns: Int
    public var group: Int
    public var part: Part
    public var recorded: RecordedScales?

    public init(from: DType, rows: Int, columns: Int, group: Int = 16, part: Part, recorded: RecordedScales? = nil) {
        precondition([.bfloat16, .float16, .float32].contains(from), "quantizing \(from)")
        precondition(rows > 0 && columns > 0 && group > 0 && group % 2 == 0 && columns % group == 0, "NVFP4 groups across rows")
        self.from = from
        self.rows = rows
        self.columns = columns
        self.group = group
        self.part = part
        self.recorded = recorded
    }

    public var groupCount: Int { rows * (columns / group) }
    public var elementBytes: Int { from.bitWidth / 8 }
    public var outputByteCount: Int64 {
        switch part {
        case .codes: Int64(rows) * Int64(columns) / 2
        case .groupScales: Int64(groupCount)
        case .secondScale: 4
        }
    }

    public var description: String {
        "quantize \(from) -> nvfp4 (group \(group))" + (part == .codes ? "" : part == .groupScales ? " (group scales)" : " (weight_scale_2)")
            + (recorded != nil ? " reusing recorded scales" : "")
    }

    private var fp8: FP8Quantization {
        FP8Quantization(from: from, rows: rows, columns: columns, blockRows: 1, blockColumns: group, part: .codes)
    }

    public struct Survey: Sendable {
        public var amax: Float = 0
        public var groupAmax: [Float]
        public var roundTrips: Bool
        let recordedGroups: [UInt8]?
        let recordedSecond: Float

        public init(groups: Int, recordedGroups: [UInt8]?, recordedSecond: Float) {
            precondition(recordedGroups == nil || recordedGroups!.count == groups, "recorded group scales of another shape")
            groupAmax = [Float](repeating: 0, count: groups)
            roundTrips = recordedGroups != nil
            self.recordedGroups = recordedGroups
            self.recordedSecond = recordedSecond
        }
    }

    /// The first pass over elements `first..<first + count` (their bytes in `bytes`).
    public func survey(first: Int64, bytes: UnsafeRawBufferPointer, into survey: inout Survey) {
        let count = bytes.count / elementBytes
        let fp8 = self.fp8
        // bf16 in whole groups (the executor delivers them so): 16 lanes a group.
        if from == .bfloat16, group == BF16Lanes.width, first % Int64(group) == 0, count % group == 0, let base = bytes.baseAddress {
            let firstGroup = Int(first / Int64(group))
            Dequantize.e4m3Table.withUnsafeBufferPointer { e4m3 in
                for index in 0..<(count / group) {
                    let found = BF16Lanes.amax(base, start: index * group, count: group)
                    if found.isNaN || survey.amax.isNaN { survey.amax = .nan } else if found > survey.amax { survey.amax = found }
                    let groupAmax = survey.groupAmax[firstGroup + index]
                    if found.isNaN || groupAmax.isNaN { survey.groupAmax[firstGroup + index] = .nan } else if found > groupAmax { survey.groupAmax[firstGroup + index] = found }
                    if survey.roundTrips, let recorded = survey.recordedGroups {
                        let multiplier = e4m3[Int(recorded[firstGroup + index])] * survey.recordedSecond
                        if !BF16Lanes.e2m1RoundTrips(base, start: index * group, multiplier: multiplier) { survey.roundTrips = false }
                    }
                }
            }
            return
        }
        Dequantize.e4m3Table.withUnsafeBufferPointer { e4m3 in
            Dequantize.e2m1Table.withUnsafeBufferPointer { e2m1 in
                for index in 0..<count {
                    let (value, bits) = fp8.load(bytes, index)
                    let magnitude = value.magnitude
                    let group = Int((first + Int64(index)) / Int64(self.group))
                    if magnitude.isNaN || survey.amax.isNaN { survey.amax = .nan } else if magnitude > survey.amax { survey.amax = magnitude }
                    let groupAmax = survey.groupAmax[group]
                    if magnitude.isNaN || groupAmax.isNaN { survey.groupAmax[group] = .nan } else if magnitude > groupAmax { survey.groupAmax[group] = magnitude }
                    if survey.roundTrips, let recorded = survey.recordedGroups {
                        let multiplier = e4m3[Int(recorded[group])] * survey.recordedSecond
                        if fp8.storedBits(e2m1[Int(Quantize.e2m1(value / multiplier))] * multiplier) != bits { survey.roundTrips = false }
                    }
                }
            }
        }
    }

    /// The group scales (e4m3 codes) and weight_scale_2 once surveyed.
    public func scales(_ survey: Survey) -> (groups: [UInt8], second: Float) {
        if survey.roundTrips, let recorded = survey.recordedGroups { return (recorded, survey.recordedSecond) }
        let second = survey.amax == 0 ? 1 : survey.amax / (6 * Quantize.e4m3Max)
        let divisor = 6 * second
        return (survey.groupAmax.map { amax in
            let scale = amax / divisor
            return Quantize.e4m3(scale == 0 ? 1 : scale)
        }, second)
    }

    /// The packed codes of elements `first..<first + count` (an even number from an even element) into `codes`.
    public func quantize(first: Int64, bytes: UnsafeRawBufferPointer, scales: (groups: [UInt8], second: Float),
                         into codes: UnsafeMutableRawBufferPointer) {
        let count = bytes.count / elementBytes
        precondition(first % 2 == 0 && count % 2 == 0 && codes.count >= count / 2, "NVFP4 codes inside a byte")
        let fp8 = self.fp8
        let output = codes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        if from == .bfloat16, group == BF16Lanes.width, first % Int64(group) == 0, count % group == 0, let base = bytes.baseAddress {
            let firstGroup = Int(first / Int64(group))
            Dequantize.e4m3Table.withUnsafeBufferPointer { e4m3 in
                for index in 0..<(count / group) {
                    let multiplier = e4m3[Int(scales.groups[firstGroup + index])] * scales.second
                    BF16Lanes.e2m1Quantize(base, start: index * group, multiplier: multiplier, into: output + index * group / 2)
                }
            }
            return
        }
        Dequantize.e4m3Table.withUnsafeBufferPointer { e4m3 in
            for pair in 0..<(count / 2) {
                let element = first + Int64(2 * pair)
                let multiplier = e4m3[Int(scales.groups[Int(element / Int64(group))])] * scales.second
                let low = Quantize.e2m1(fp8.load(bytes, 2 * pair).value / multiplier)
                let high = Quantize.e2m1(fp8.load(bytes, 2 * pair + 1).value / multiplier)
                output[pair] = low | high << 4
            }
        }
    }
}

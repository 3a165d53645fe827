import Foundation
import SafetensorsFormat
import TensorCore
import Verification

extension HFQuantization.Weight {
    /// Rows `rows` of this weight (stored at `range` of `file`) dequantized to `dtype` as
    /// `import` dequantizes them, as a stream computed a window at a time: `verify` compares a
    /// quantized folder by value with a bf16 one or a Megatron import, bit for bit.
    func dequantizedStream(file: ReadOnlyFile, range: ByteRange, rows: Range<Int>, to dtype: DType) -> ByteStream {
        var plan = ConversionPlan()
        let weight = planned(source: plan.source(file), range: range, in: &plan)
        let sources = plan.sources
        let width = Int64(dtype.bitWidth / 8), perByte = Int64(weight.format.elementsPerByte)
        let start = Int64(rows.lowerBound) * Int64(columns)
        return ByteStream(count: Int64(rows.count) * Int64(columns) * width) { offset, buffer in
            precondition(offset % width == 0 && buffer.count % Int(width) == 0, "a read inside an element")
            let first = start + offset / width
            let elements = first..<(first + Int64(buffer.count) / width)
            precondition(first % perByte == 0 && Int64(elements.count) % perByte == 0, "a read inside an NVFP4 byte")
            var codes = [UInt8](repeating: 0, count: Int(Int64(elements.count) / perByte))
            try codes.withUnsafeMutableBytes { try sources[Int(weight.source)].read(into: $0, at: weight.range.offset + first / perByte) }
            var scales: [UInt8] = []
            if let (source, scaleRange) = weight.scaleBytes(elements: elements) {
                scales = [UInt8](repeating: 0, count: Int(scaleRange.count))
                try scales.withUnsafeMutableBytes { try sources[Int(source)].read(into: $0, at: scaleRange.offset) }
            }
            codes.withUnsafeBytes { codeBytes in
                scales.withUnsafeBytes { scaleBytes in
                    weight.dequantize(elements: elements, codes: codeBytes, scales: scaleBytes, to: dtype, into: buffer)
                }
            }
        }
    }
}

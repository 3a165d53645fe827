/// A cast between the floating dtypes a user can ask for (`--dtype bf16|fp16|fp32`), rounding to
/// nearest even bit for bit as torch 2.13's `Tensor.to` does on CPU (checked by the interop
/// tests): fp32 → bf16 rounds the upper half to nearest even and writes any NaN as 0xFFFF (its
/// vectorized kernel; c10's scalar one would write 0x7FC0), fp32 → fp16 is the IEEE conversion
/// (a NaN keeps its sign and becomes 0x7E00), bf16 ↔ fp16 go through fp32, widening is exact.
public enum DTypeCast {
    public static let castable: Set<DType> = [.bfloat16, .float16, .float32]

    /// The `--dtype` spellings.
    public static func parse(_ text: String) -> DType? {
        switch text.lowercased() {
        case "bf16", "bfloat16": .bfloat16
        case "fp16", "float16", "half": .float16
        case "fp32", "float32", "float": .float32
        default: nil
        }
    }

    /// Bytes of `count` source bytes once cast.
    public static func castByteCount(_ count: Int64, from: DType, to: DType) -> Int64 {
        count / Int64(from.bitWidth / 8) * Int64(to.bitWidth / 8)
    }

    static func float32(bfloat16 bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }

    static func bfloat16(_ value: Float) -> UInt16 {
        if value.isNaN { return 0xFFFF }
        let bits = value.bitPattern
        return UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16)
    }

    static func float16(_ value: Float) -> UInt16 {
        if value.isNaN { return (value.sign == .minus ? 0x8000 : 0) | 0x7E00 }
        return Float16(value).bitPattern
    }

    /// Converts `input` (whole elements of `from`) into `output` (the same count of `to`).
    public static func convert(_ input: UnsafeRawBufferPointer, from: DType, to: DType, into output: UnsafeMutableRawBufferPointer) {
        let inSize = from.bitWidth / 8, outSize = to.bitWidth / 8
        let count = input.count / inSize
        precondition(input.count % inSize == 0 && output.count >= count * outSize, "a cast of partial elements")
        for index in 0..<count {
            let value: Float
            switch from {
            case .float32: value = Float(bitPattern: input.loadUnaligned(fromByteOffset: index * 4, as: UInt32.self).littleEndian)
            case .bfloat16: value = float32(bfloat16: input.loadUnaligned(fromByteOffset: index * 2, as: UInt16.self).littleEndian)
            default: value = Float(Float16(bitPattern: input.loadUnaligned(fromByteOffset: index * 2, as: UInt16.self).littleEndian))
            }
            switch to {
            case .float32: output.storeBytes(of: value.bitPattern.littleEndian, toByteOffset: index * 4, as: UInt32.self)
            case .bfloat16: output.storeBytes(of: bfloat16(value).littleEndian, toByteOffset: index * 2, as: UInt16.self)
            default: output.storeBytes(of: float16(value).littleEndian, toByteOffset: index * 2, as: UInt16.self)
            }
        }
    }
}

/// A conversion of a group's elements on their way to the output (`export --dtype`): its moves
/// read `from` elements, the output holds `to` elements.
public struct ElementCast: Sendable, Hashable, CustomStringConvertible {
    public var from: DType
    public var to: DType

    public init(from: DType, to: DType) {
        precondition(DTypeCast.castable.contains(from) && DTypeCast.castable.contains(to), "a cast \(from) -> \(to)")
        self.from = from
        self.to = to
    }

    /// Output bytes of `count` source bytes.
    public func outputBytes(_ count: Int64) -> Int64 { DTypeCast.castByteCount(count, from: from, to: to) }

    public var description: String { "\(from) -> \(to)" }
}

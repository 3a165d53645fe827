import Synchronization
import TensorCore

/// The verdict on one tensor (or one row block of it) seen from two sides.
public struct TensorComparison: Sendable, Equatable {
    public enum Status: Sendable, Equatable {
        /// Same dtype, same shape, same bytes.
        case identical
        /// Different dtypes whose values are equal after widening (e.g. a cast that lost nothing).
        case equalValues
        /// Same shape, different values.
        case mismatch
        case missingInFirst
        case missingInSecond
        case shapeMismatch
    }

    public var name: String
    public var status: Status
    public var dtypes: (DType?, DType?)
    public var shapes: ([Int]?, [Int]?)
    public var bytes: Int64
    /// Elements that differ.
    public var differing: Int64 = 0
    /// Largest |a − b| over floating elements (nil for exact or non-float comparisons).
    public var maxAbsDifference: Double?
    /// Largest distance in units in the last place of the coarser dtype.
    public var maxULPDistance: UInt64?
    /// Byte offset (within the tensor) of the first difference.
    public var firstDifference: Int64?

    public init(name: String, status: Status, dtypes: (DType?, DType?), shapes: ([Int]?, [Int]?), bytes: Int64) {
        self.name = name
        self.status = status
        self.dtypes = dtypes
        self.shapes = shapes
        self.bytes = bytes
    }

    public static func == (lhs: TensorComparison, rhs: TensorComparison) -> Bool {
        lhs.name == rhs.name && lhs.status == rhs.status && lhs.dtypes.0 == rhs.dtypes.0 && lhs.dtypes.1 == rhs.dtypes.1
            && lhs.shapes.0 == rhs.shapes.0 && lhs.shapes.1 == rhs.shapes.1 && lhs.differing == rhs.differing
    }

    public var isFailure: Bool { ![.identical, .equalValues].contains(status) }
}

/// Compares two byte streams holding the same elements, in bounded windows.
public enum StreamComparator {
    public static let window = 4 << 20

    /// Bit-exact when the dtypes are equal; by value (max-abs, ULP) otherwise or on mismatch.
    public static func compare(
        name: String, shape: [Int], _ first: ByteStream, _ firstDType: DType, _ second: ByteStream, _ secondDType: DType
    ) throws -> TensorComparison {
        var result = TensorComparison(name: name, status: .identical, dtypes: (firstDType, secondDType), shapes: (shape, shape),
                                      bytes: first.count)
        guard let sizeA = firstDType.byteWidth, let sizeB = secondDType.byteWidth else {
            // Sub-byte dtypes: only byte equality is meaningful.
            return try compareBytes(first, second, into: result)
        }
        let elements = first.count / Int64(sizeA)
        guard second.count / Int64(sizeB) == elements else {
            result.status = .shapeMismatch
            return result
        }
        let perWindow = window / max(sizeA, sizeB)
        let windows = WindowPool.shared.take()
        defer { WindowPool.shared.give(back: windows) }
        let (bufferA, bufferB) = (windows.first, windows.second)
        var done: Int64 = 0
        let sameType = firstDType == secondDType
        var maxAbs = 0.0
        var maxULP: UInt64 = 0
        var anyFloat = false
        while done < elements {
            let count = Int(min(Int64(perWindow), elements - done))
            let a = UnsafeMutableRawBufferPointer(rebasing: bufferA[0..<(count * sizeA)])
            let b = UnsafeMutableRawBufferPointer(rebasing: bufferB[0..<(count * sizeB)])
            try first.read(at: done * Int64(sizeA), into: a)
            try second.read(at: done * Int64(sizeB), into: b)
            if sameType && memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0 {
                done += Int64(count)
                continue
            }
            for index in 0..<count {
                let rawA = ElementDecoding.bits(a, index, sizeA)
                let rawB = ElementDecoding.bits(b, index, sizeB)
                if sameType && rawA == rawB { continue }
                let valueA = ElementDecoding.value(rawA, firstDType)
                let valueB = ElementDecoding.value(rawB, secondDType)
                if let valueA, let valueB {
                    if valueA == valueB || (valueA.isNaN && valueB.isNaN) {
                        if sameType {
                            // Same value, different bits (±0, NaN payloads): still not byte-identical.
                            result.differing += 1
                            if result.firstDifference == nil { result.firstDifference = (done + Int64(index)) * Int64(sizeA) }
                        }
                        continue
                    }
                    anyFloat = true
                    maxAbs = max(maxAbs, abs(valueA - valueB))
                    maxULP = max(maxULP, ElementDecoding.ulpDistance(valueA, valueB, coarser: sizeA <= sizeB ? firstDType : secondDType))
                }
                result.differing += 1
                if result.firstDifference == nil { result.firstDifference = (done + Int64(index)) * Int64(sizeA) }
            }
            done += Int64(count)
        }
        if result.differing > 0 {
            result.status = .mismatch
        } else if !sameType {
            result.status = .equalValues
        }
        if anyFloat {
            result.maxAbsDifference = maxAbs
            result.maxULPDistance = maxULP
        }
        return result
    }

    static func compareBytes(_ first: ByteStream, _ second: ByteStream, into base: TensorComparison) throws -> TensorComparison {
        var result = base
        guard first.count == second.count else {
            result.status = .shapeMismatch
            return result
        }
        let windows = WindowPool.shared.take()
        defer { WindowPool.shared.give(back: windows) }
        let (bufferA, bufferB) = (windows.first, windows.second)
        var done: Int64 = 0
        while done < first.count {
            let count = Int(min(Int64(window), first.count - done))
            let a = UnsafeMutableRawBufferPointer(rebasing: bufferA[0..<count])
            let b = UnsafeMutableRawBufferPointer(rebasing: bufferB[0..<count])
            try first.read(at: done, into: a)
            try second.read(at: done, into: b)
            for index in 0..<count where a[index] != b[index] {
                result.differing += 1
                if result.firstDifference == nil { result.firstDifference = done + Int64(index) }
            }
            done += Int64(count)
        }
        if result.differing > 0 { result.status = .mismatch }
        return result
    }
}

/// Window pairs kept between comparisons, one per comparison running at once. Allocating them per
/// tensor mapped fresh pages each time: verify of the 2.4 GB MoE shape (3,300 tensors, most
/// a few MB) spent a third of its samples in page faults.
final class WindowPool: Sendable {
    static let shared = WindowPool()
    /// Two windows of `StreamComparator.window` bytes; only one comparison holds a pair at a time.
    struct Pair: @unchecked Sendable {
        let first: UnsafeMutableRawBufferPointer
        let second: UnsafeMutableRawBufferPointer
    }
    /// The pool owns these for the life of the process.
    private let free = Mutex<[Pair]>([])

    func take() -> Pair {
        free.withLock { $0.popLast() }
            ?? Pair(first: .allocate(byteCount: StreamComparator.window, alignment: 16),
                    second: .allocate(byteCount: StreamComparator.window, alignment: 16))
    }

    func give(back pair: Pair) { free.withLock { $0.append(pair) } }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Decoding little-endian elements to Double for value comparisons.
enum ElementDecoding {
    static func bits(_ buffer: UnsafeMutableRawBufferPointer, _ index: Int, _ size: Int) -> UInt64 {
        var value: UInt64 = 0
        for byte in 0..<size { value |= UInt64(buffer[index * size + byte]) << (8 * byte) }
        return value
    }

    /// The element as a Double for floating and integer dtypes; nil for the rest.
    static func value(_ raw: UInt64, _ dtype: DType) -> Double? {
        switch dtype {
        case .float32: Double(Float(bitPattern: UInt32(truncatingIfNeeded: raw)))
        case .float64: Double(bitPattern: raw)
        case .bfloat16: Double(Float(bitPattern: UInt32(truncatingIfNeeded: raw) << 16))
        case .float16: Double(Float(Float16(bitPattern: UInt16(truncatingIfNeeded: raw))))
        case .int8: Double(Int8(truncatingIfNeeded: raw))
        case .int16: Double(Int16(truncatingIfNeeded: raw))
        case .int32: Double(Int32(truncatingIfNeeded: raw))
        case .int64: Double(Int64(bitPattern: raw))
        case .uint8, .bool: Double(UInt8(truncatingIfNeeded: raw))
        case .uint16: Double(UInt16(truncatingIfNeeded: raw))
        case .uint32: Double(UInt32(truncatingIfNeeded: raw))
        case .uint64: Double(raw)
        default: nil
        }
    }

    /// Distance in ULPs of `coarser`, computed on the values rounded to it (monotonic bit order).
    static func ulpDistance(_ a: Double, _ b: Double, coarser: DType) -> UInt64 {
        func ordinal(_ value: Double) -> Int64 {
            switch coarser {
            case .bfloat16:
                let bits = Int64(Float(value).bitPattern >> 16)
                return bits & 0x8000 != 0 ? -(bits & 0x7FFF) : bits
            case .float16:
                let bits = Int64(Float16(Float(value)).bitPattern)
                return bits & 0x8000 != 0 ? -(bits & 0x7FFF) : bits
            case .float32:
                let bits = Int64(Float(value).bitPattern)
                return bits & 0x8000_0000 != 0 ? -(bits & 0x7FFF_FFFF) : bits
            default:
                let bits = Int64(bitPattern: value.bitPattern)
                return bits < 0 ? -(bits & Int64.max) : bits
            }
        }
        let (x, y) = (ordinal(a), ordinal(b))
        return x > y ? UInt64(x - y) : UInt64(y - x)
    }
}

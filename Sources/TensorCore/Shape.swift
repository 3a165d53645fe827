/// Element counts and byte sizes of a row-major tensor, with overflow reported instead of trapping.
public enum ShapeArithmetic {
    /// Product of the dimensions (1 for a 0-rank scalar), or nil on overflow.
    public static func elementCount(_ shape: [Int]) -> Int? {
        var count = 1
        for dim in shape {
            guard dim >= 0 else { return nil }
            let (product, overflow) = count.multipliedReportingOverflow(by: dim)
            if overflow { return nil }
            count = product
        }
        return count
    }

    /// Bytes occupied by `shape` elements of `dtype`, or nil on overflow or when sub-byte
    /// elements do not end on a byte boundary.
    public static func byteCount(_ shape: [Int], _ dtype: DType) -> Int? {
        guard let count = elementCount(shape) else { return nil }
        let (bits, overflow) = count.multipliedReportingOverflow(by: dtype.bitWidth)
        guard !overflow, bits % 8 == 0 else { return nil }
        return bits / 8
    }

    /// Row-major strides in elements. Exact whenever `elementCount(shape)` is; a shape with a
    /// zero dimension has no elements to address, and its strides may wrap instead of trapping.
    public static func strides(_ shape: [Int]) -> [Int] {
        var strides = [Int](repeating: 1, count: shape.count)
        var running = 1
        for axis in shape.indices.reversed() {
            strides[axis] = running
            running = running &* shape[axis]
        }
        return strides
    }
}

/// `[2, 3]` style rendering used in messages and tables.
public func formatShape(_ shape: [Int]) -> String {
    "[" + shape.map(String.init).joined(separator: ", ") + "]"
}

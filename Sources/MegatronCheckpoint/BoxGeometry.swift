/// Boxes of a row-major tensor (`offsets`, `sizes` per axis): overlap, intersection, and the
/// contiguous byte runs a sub-box occupies inside a larger box.
enum BoxGeometry {
    static func volume(_ sizes: [Int]) -> Int { sizes.reduce(1, *) }
    static func volume(_ sizes: DCPChunk.Dims) -> Int { sizes.reduce(1, *) }

    /// The intersection of two boxes, or nil when it is empty.
    static func intersection(_ a: DCPChunk, _ b: DCPChunk) -> DCPChunk? {
        let rank = a.rank
        guard overlap(a, b) else { return nil }
        // No arrays for the common ranks: a 400,000-chunk plan intersects every chunk once or twice.
        return withUnsafeTemporaryAllocation(of: Int.self, capacity: 2 * max(rank, 1)) { buffer in
            let (offsets, sizes) = (a.offsets, a.sizes)
            let (otherOffsets, otherSizes) = (b.offsets, b.sizes)
            for axis in 0..<rank {
                let start = max(offsets[axis], otherOffsets[axis])
                buffer[axis] = start
                buffer[rank + axis] = min(offsets[axis] + sizes[axis], otherOffsets[axis] + otherSizes[axis]) - start
            }
            return DCPChunk(offsets: UnsafeBufferPointer(rebasing: buffer[0..<rank]), sizes: UnsafeBufferPointer(rebasing: buffer[rank..<(2 * rank)]))
        }
    }

    /// Whether two boxes share an element.
    static func overlap(_ a: DCPChunk, _ b: DCPChunk) -> Bool {
        let (offsets, sizes) = (a.offsets, a.sizes)
        let (otherOffsets, otherSizes) = (b.offsets, b.sizes)
        for axis in 0..<a.rank where min(offsets[axis] + sizes[axis], otherOffsets[axis] + otherSizes[axis]) <= max(offsets[axis], otherOffsets[axis]) {
            return false
        }
        return true
    }

    /// The first pair of overlapping non-empty boxes (in list order of the first), found by a
    /// sweep over axis 0 so per-layer chunk lists stay near linear; nil when none overlap.
    static func firstOverlap(_ boxes: [DCPChunk]) -> (DCPChunk, DCPChunk)? {
        let nonEmpty = boxes.filter { !$0.sizes.contains(0) }
        guard nonEmpty.count > 1 else { return nil }
        // 0-d tensors: two chunks of a scalar always overlap.
        if nonEmpty[0].offsets.isEmpty { return (nonEmpty[0], nonEmpty[1]) }
        let order = nonEmpty.indices.sorted { nonEmpty[$0].offsets[0] < nonEmpty[$1].offsets[0] }
        var active: [Int] = []
        var found: (Int, Int)?
        for index in order {
            let start = nonEmpty[index].offsets[0]
            active.removeAll { nonEmpty[$0].offsets[0] + nonEmpty[$0].sizes[0] <= start }
            for other in active where overlap(nonEmpty[other], nonEmpty[index]) {
                let pair = (min(other, index), max(other, index))
                if found == nil || pair < found! { found = pair }
            }
            active.append(index)
        }
        return found.map { (nonEmpty[$0.0], nonEmpty[$0.1]) }
    }

    /// Calls `body(elementOffsetInOuter, elementOffsetInInner, elementCount)` for each
    /// contiguous run of `box` (a box in global coordinates), where the first offset is
    /// row-major inside `outer` and the second row-major inside `inner`; both must contain
    /// `box`. Trailing axes that `box` spans completely in both are merged into one run.
    static func forEachRun(of box: DCPChunk, outer: DCPChunk, inner: DCPChunk, _ body: (Int, Int, Int) throws -> Void) rethrows {
        let rank = box.sizes.count
        if rank == 0 {
            try body(0, 0, 1)
            return
        }
        if box.sizes.contains(0) { return }
        let outerStrides = rowMajorStrides(outer.sizes.array)
        let innerStrides = rowMajorStrides(inner.sizes.array)
        // Merge axes from the innermost outwards while the box spans the axis fully in both.
        var firstMerged = rank - 1
        var runLength = box.sizes[rank - 1]
        while firstMerged > 0, box.sizes[firstMerged] == outer.sizes[firstMerged], box.sizes[firstMerged] == inner.sizes[firstMerged] {
            firstMerged -= 1
            runLength *= box.sizes[firstMerged]
        }
        var index = [Int](repeating: 0, count: firstMerged)
        while true {
            var outerOffset = 0
            var innerOffset = 0
            for axis in 0..<rank {
                let position = box.offsets[axis] + (axis < firstMerged ? index[axis] : 0)
                outerOffset += (position - outer.offsets[axis]) * outerStrides[axis]
                innerOffset += (position - inner.offsets[axis]) * innerStrides[axis]
            }
            try body(outerOffset, innerOffset, runLength)
            // Next outer index (odometer over axes 0..<firstMerged).
            var axis = firstMerged - 1
            while axis >= 0 {
                index[axis] += 1
                if index[axis] < box.sizes[axis] { break }
                index[axis] = 0
                axis -= 1
            }
            if axis < 0 { return }
        }
    }

    /// The runs of `box` inside `outer` and `inner` when they form one arithmetic sequence:
    /// `rows` segments of `segment` bytes, stepping `sourceStep` bytes in `inner` and
    /// `destinationStep` in `outer` (byte offsets row-major with `elementSize`-byte elements); nil
    /// when they do not (more than one axis outside the merged run has extent > 1).
    struct ArithmeticRuns {
        var source: Int64
        var destination: Int64
        var segment: Int64
        var rows: Int64
        var sourceStep: Int64
        var destinationStep: Int64
    }

    static func arithmeticRuns(of box: DCPChunk, outer: DCPChunk, inner: DCPChunk, elementSize: Int64) -> ArithmeticRuns? {
        let (boxOffsets, boxSizes) = (box.offsets, box.sizes)
        let (outerOffsets, outerSizes) = (outer.offsets, outer.sizes)
        let (innerOffsets, innerSizes) = (inner.offsets, inner.sizes)
        let rank = boxSizes.count
        if rank == 0 { return ArithmeticRuns(source: 0, destination: 0, segment: elementSize, rows: 1, sourceStep: elementSize, destinationStep: elementSize) }
        var firstMerged = rank - 1
        var runLength = boxSizes[rank - 1]
        while firstMerged > 0, boxSizes[firstMerged] == outerSizes[firstMerged], boxSizes[firstMerged] == innerSizes[firstMerged] {
            firstMerged -= 1
            runLength *= boxSizes[firstMerged]
        }
        // At most one axis outside the merged run may step.
        var stepping = -1
        for axis in 0..<firstMerged where boxSizes[axis] > 1 {
            guard stepping < 0 else { return nil }
            stepping = axis
        }
        // Row-major strides, innermost first (no arrays: a 400,000-chunk plan asks for a run per chunk).
        var sourceElement = 0, destinationElement = 0
        var innerStride = 1, outerStride = 1
        var innerStep = 0, outerStep = 0
        for axis in (0..<rank).reversed() {
            sourceElement += (boxOffsets[axis] - innerOffsets[axis]) * innerStride
            destinationElement += (boxOffsets[axis] - outerOffsets[axis]) * outerStride
            if axis == stepping { (innerStep, outerStep) = (innerStride, outerStride) }
            innerStride *= innerSizes[axis]
            outerStride *= outerSizes[axis]
        }
        let segment = Int64(runLength) * elementSize
        guard stepping >= 0 else {
            return ArithmeticRuns(source: Int64(sourceElement) * elementSize, destination: Int64(destinationElement) * elementSize,
                                  segment: segment, rows: 1, sourceStep: segment, destinationStep: segment)
        }
        return ArithmeticRuns(source: Int64(sourceElement) * elementSize, destination: Int64(destinationElement) * elementSize,
                              segment: segment, rows: Int64(boxSizes[stepping]),
                              sourceStep: Int64(innerStep) * elementSize, destinationStep: Int64(outerStep) * elementSize)
    }

    static func rowMajorStrides(_ sizes: [Int]) -> [Int] {
        var strides = [Int](repeating: 1, count: sizes.count)
        var running = 1
        for axis in sizes.indices.reversed() {
            strides[axis] = running
            running *= sizes[axis]
        }
        return strides
    }
}

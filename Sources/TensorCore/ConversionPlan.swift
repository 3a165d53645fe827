/// One byte move of a plan, in 32 bytes: `rows` segments of `segmentBytes` bytes, `stride` bytes
/// apart from `offset` in source file `source`, landing back to back in the group's data. A plain
/// copy is one segment; zeros (`source == PlannedMove.zeroSource`) read nothing and write nothing
/// (a fresh output file reads as zeros there), but observers still see them.
public struct PlannedMove: Sendable, Hashable {
    public static let zeroSource: Int32 = -1

    /// Index into the plan's `sources`, or `zeroSource`.
    public var source: Int32
    /// Number of segments (1 for a plain copy or zeros).
    public var rows: Int32
    /// Offset in the source of the first segment.
    public var offset: Int64
    /// Bytes of each segment.
    public var segmentBytes: Int64
    /// Distance between segment starts in the source (`segmentBytes` for contiguous segments).
    public var stride: Int64

    /// `range` of source `source`, in one piece.
    public static func copy(source: Int32, range: ByteRange) -> PlannedMove {
        PlannedMove(source: source, rows: 1, offset: range.offset, segmentBytes: range.count, stride: range.count)
    }

    /// A column slice of a row-major block (a tensor-parallel row split): `rows` segments of
    /// `segmentBytes`, the first at `firstSegment`, `stride` apart.
    public static func strided(source: Int32, firstSegment: Int64, stride: Int64, segmentBytes: Int64, rows: Int64) -> PlannedMove {
        precondition(rows >= 0 && rows <= Int64(Int32.max) && segmentBytes >= 0 && stride >= segmentBytes, "bad strided move")
        if rows == 1 || stride == segmentBytes {
            return .copy(source: source, range: ByteRange(offset: firstSegment, count: segmentBytes * rows))
        }
        return PlannedMove(source: source, rows: Int32(rows), offset: firstSegment, segmentBytes: segmentBytes, stride: stride)
    }

    /// `rows` segments kept as rows even when they are contiguous: a part of an interleaved group,
    /// whose row count says how its bytes are laid out.
    public static func rows(source: Int32, firstSegment: Int64, stride: Int64, segmentBytes: Int64, rows: Int64) -> PlannedMove {
        precondition(rows >= 1 && rows <= Int64(Int32.max) && segmentBytes >= 0 && stride >= segmentBytes, "bad row move")
        return PlannedMove(source: source, rows: Int32(rows), offset: firstSegment, segmentBytes: segmentBytes, stride: stride)
    }

    public static func zeros(_ count: Int64) -> PlannedMove {
        PlannedMove(source: zeroSource, rows: 1, offset: 0, segmentBytes: count, stride: count)
    }

    public var isZeros: Bool { source == Self.zeroSource }
    /// Bytes this move puts into the group.
    public var byteCount: Int64 { segmentBytes * Int64(rows) }
    /// Whether the segments are one contiguous range of the source.
    public var isContiguous: Bool { rows == 1 || stride == segmentBytes }
    /// The source range of segment `row`.
    public func segment(_ row: Int) -> ByteRange { ByteRange(offset: offset + Int64(row) * stride, count: segmentBytes) }
}

/// A conversion as one value: every output group (a tensor of a safetensors shard, a chunk of a
/// torch_dist item, a tensor of a legacy rank file) with the moves that fill it, in data order and
/// back to back, so the plan says where every output byte comes from. Groups and moves are flat
/// arrays of fixed-size records (no heap allocation per group or move): a plan of 450,000 chunks
/// takes ~20 MB, and building it is linear.
///
/// Destinations are implicit: group `g`'s data starts at `offset(g)` in output file `output(g)`
/// (an index the writer gives meaning to) and its moves follow each other from there.
public struct ConversionPlan: Sendable {
    /// The files read, by index (`PlannedMove.source`).
    public private(set) var sources: [ReadOnlyFile] = []
    private var sourceIndex: [ObjectIdentifier: Int32] = [:]
    public private(set) var moves: [PlannedMove] = []
    /// Moves of group `g`: `moveStarts[g]..<moveStarts[g + 1]`.
    private var moveStarts: [Int32] = [0]
    private var outputs: [Int32] = []
    private var offsets: [Int64] = []
    /// Groups whose elements are converted on the way (`--dtype`, dequantization); most plans have none.
    private var transforms: [Int32: ElementTransform] = [:]
    /// The quantized weights dequantizing groups read, per source, sorted by offset.
    private var quantized: [Int32: [QuantizedWeight]] = [:]
    /// Groups whose moves are interleaved row by row (see `interleaveOpenGroup`).
    private var interleaved: Set<Int32> = []
    private var openGroupInterleaved = false

    public init() {}

    /// The index of `file` among the sources, added on first use.
    public mutating func source(_ file: ReadOnlyFile) -> Int32 {
        let id = ObjectIdentifier(file)
        if let index = sourceIndex[id] { return index }
        let index = Int32(sources.count)
        sources.append(file)
        sourceIndex[id] = index
        return index
    }

    /// Makes the open group (which has no moves yet) row-interleaved: its moves, all of the same
    /// number of rows, fill it row by row, row `r` being segment `r` of each move in turn. A
    /// tensor gathered from chunks cut along columns (a row-parallel weight saved at TP > 1)
    /// takes one move per chunk this way, not one per row and chunk.
    public mutating func interleaveOpenGroup() {
        precondition(moves.count == Int(moveStarts[moveStarts.count - 1]), "interleaving a group that has moves")
        openGroupInterleaved = true
    }

    /// Appends a move to the open group; a copy that continues the previous one is merged into it.
    public mutating func append(_ move: PlannedMove) {
        guard move.byteCount > 0 else { return }
        if openGroupInterleaved {
            precondition(!move.isZeros, "zeros in an interleaved group")
            moves.append(move)
            return
        }
        if moves.count > Int(moveStarts[moveStarts.count - 1]), let last = moves.last {
            if last.isZeros && move.isZeros {
                moves[moves.count - 1].segmentBytes += move.segmentBytes
                moves[moves.count - 1].stride = moves[moves.count - 1].segmentBytes
                return
            }
            if !last.isZeros, last.source == move.source, last.isContiguous, move.isContiguous,
                last.offset + last.byteCount == move.offset {
                moves[moves.count - 1] = .copy(source: last.source, range: ByteRange(offset: last.offset, count: last.byteCount + move.byteCount))
                return
            }
        }
        moves.append(move)
    }

    /// Closes the open group: its data starts at `offset` of output `output`, its elements
    /// converted by `cast` when given (its moves then read whole source elements).
    public mutating func endGroup(output: Int, offset: Int64, cast: ElementCast?) {
        endGroup(output: output, offset: offset, transform: cast.map(ElementTransform.cast))
    }

    /// Closes the open group: its data starts at `offset` of output `output`, its elements
    /// transformed by `transform` when given (a cast's moves read whole source elements; a
    /// dequantization's read parts of the plan's quantized weights).
    public mutating func endGroup(output: Int, offset: Int64, transform: ElementTransform? = nil) {
        precondition(moves.count <= Int(Int32.max), "more than 2^31 moves")
        if let transform {
            if case .dequantize = transform {
                precondition(!openGroupInterleaved, "an interleaved dequantizing group")
                for move in moves[Int(moveStarts[moveStarts.count - 1])...] where !move.isZeros {
                    precondition(quantizedWeight(source: move.source, offset: move.offset) != nil, "a dequantizing move outside the quantized weights")
                }
            }
            let weightBytes: Int64? = switch transform {
            case .quantize(let q): Int64(q.rows) * Int64(q.columns) * Int64(q.elementBytes)
            case .quantizeNVFP4(let q): Int64(q.rows) * Int64(q.columns) * Int64(q.elementBytes)
            default: nil
            }
            if let weightBytes {
                let count = moves[Int(moveStarts[moveStarts.count - 1])...].reduce(Int64(0)) { $0 + $1.byteCount }
                precondition(count == weightBytes, "a quantizing group that does not read its whole weight")
            }
            transforms[Int32(outputs.count)] = transform
        }
        if openGroupInterleaved {
            let parts = moves[Int(moveStarts[moveStarts.count - 1])...]
            precondition(parts.allSatisfy { $0.rows == parts.first!.rows }, "interleaved moves of different row counts")
            interleaved.insert(Int32(outputs.count))
            openGroupInterleaved = false
        }
        moveStarts.append(Int32(moves.count))
        outputs.append(Int32(output))
        offsets.append(offset)
    }

    /// Reserves room for `groups` groups and `moves` moves.
    public mutating func reserve(groups: Int, moves count: Int) {
        moveStarts.reserveCapacity(groups + 1)
        outputs.reserveCapacity(groups)
        offsets.reserveCapacity(groups)
        moves.reserveCapacity(count)
    }

    public var groupCount: Int { outputs.count }
    public func moves(group: Int) -> ArraySlice<PlannedMove> { moves[Int(moveStarts[group])..<Int(moveStarts[group + 1])] }
    public func moveCount(group: Int) -> Int { Int(moveStarts[group + 1] - moveStarts[group]) }
    public func output(group: Int) -> Int { Int(outputs[group]) }
    /// Absolute offset in its output file of the group's first byte.
    public func offset(group: Int) -> Int64 { offsets[group] }
    /// Source bytes the group's moves put in (before any cast).
    public func byteCount(group: Int) -> Int64 { moves(group: group).reduce(0) { $0 + $1.byteCount } }
    /// Whether the group's moves are interleaved row by row.
    public func isInterleaved(group: Int) -> Bool { !interleaved.isEmpty && interleaved.contains(Int32(group)) }

    /// The group's source pieces in output order: `body(source, range)` per segment, with
    /// `source == PlannedMove.zeroSource` for zeros (`range.count` of them).
    public func forEachSegment(group: Int, _ body: (Int32, ByteRange) throws -> Void) rethrows {
        let parts = moves(group: group)
        if isInterleaved(group: group), let rows = parts.first?.rows {
            for row in 0..<Int(rows) {
                for move in parts { try body(move.source, move.segment(row)) }
            }
            return
        }
        for move in parts {
            if move.isZeros {
                try body(move.source, ByteRange(offset: 0, count: move.byteCount))
            } else {
                for row in 0..<Int(move.rows) { try body(move.source, move.segment(row)) }
            }
        }
    }

    /// The conversion of the group's elements, if any.
    public func transform(group: Int) -> ElementTransform? { transforms.isEmpty ? nil : transforms[Int32(group)] }
    /// The group's cast (`--dtype`), if it has one.
    public func cast(group: Int) -> ElementCast? { transform(group: group)?.cast }
    /// Bytes the group writes.
    public func outputByteCount(group: Int) -> Int64 {
        let count = byteCount(group: group)
        return transform(group: group)?.outputBytes(count) ?? count
    }
    public var totalBytes: Int64 { moves.reduce(0) { $0 + $1.byteCount } }
    /// Bytes the plan writes (its moves' bytes, once transformed where a group is).
    public var totalOutputBytes: Int64 {
        transforms.isEmpty ? totalBytes : (0..<groupCount).reduce(0) { $0 + outputByteCount(group: $1) }
    }

    /// Declares a quantized weight of the plan's sources (its source and scale's source indices
    /// from `source(_:)`), which dequantizing groups may read; declaring it again is a no-op.
    public mutating func addQuantizedWeight(_ weight: QuantizedWeight) {
        var list = quantized[weight.source] ?? []
        var low = 0, high = list.count
        while low < high {
            let middle = (low + high) / 2
            if list[middle].range.offset < weight.range.offset { low = middle + 1 } else { high = middle }
        }
        if low < list.count, list[low].range.offset == weight.range.offset {
            precondition(list[low] == weight, "two quantized weights at one offset")
            return
        }
        precondition(low == 0 || list[low - 1].range.offset + list[low - 1].range.count <= weight.range.offset, "overlapping quantized weights")
        precondition(low == list.count || weight.range.offset + weight.range.count <= list[low].range.offset, "overlapping quantized weights")
        list.insert(weight, at: low)
        quantized[weight.source] = list
    }

    /// The quantized weight holding byte `offset` of source `source`, if one does.
    public func quantizedWeight(source: Int32, offset: Int64) -> QuantizedWeight? {
        guard let list = quantized[source] else { return nil }
        var low = 0, high = list.count
        while low < high {
            let middle = (low + high) / 2
            if list[middle].range.offset + list[middle].range.count <= offset { low = middle + 1 } else { high = middle }
        }
        guard low < list.count, list[low].range.offset <= offset else { return nil }
        return list[low]
    }

    /// Every quantized weight declared, by source then offset.
    public var quantizedWeights: [QuantizedWeight] { quantized.keys.sorted().flatMap { quantized[$0]! } }

    /// The moves a group reads from other groups' plan: `moves` of `plan`'s group `group`, their
    /// sources re-indexed into this plan (for a writer that fills one output from another plan's
    /// groups, such as a legacy rank file from import chunks).
    public mutating func append(group: Int, of plan: ConversionPlan) {
        if plan.isInterleaved(group: group) { interleaveOpenGroup() }
        for move in plan.moves(group: group) {
            var copy = move
            if !move.isZeros {
                copy.source = source(plan.sources[Int(move.source)])
                // The weight a dequantizing move reads travels with it, re-indexed too.
                if var weight = plan.quantizedWeight(source: move.source, offset: move.offset) {
                    weight.source = copy.source
                    switch weight.scale {
                    case .tensor: break
                    case .blocks(let rows, let columns, let scaleSource, let offset, let dtype):
                        weight.scale = .blocks(blockRows: rows, blockColumns: columns, source: source(plan.sources[Int(scaleSource)]),
                                               offset: offset, dtype: dtype)
                    case .groups(let size, let scaleSource, let offset, let second):
                        weight.scale = .groups(size: size, source: source(plan.sources[Int(scaleSource)]), offset: offset, second: second)
                    }
                    addQuantizedWeight(weight)
                }
            }
            append(copy)
        }
    }
}

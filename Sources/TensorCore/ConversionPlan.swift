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
    /// Groups whose elements are converted on the way (`export --dtype`); most plans have none.
    private var casts: [Int32: ElementCast] = [:]

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

    /// Appends a move to the open group; a copy that continues the previous one is merged into it.
    public mutating func append(_ move: PlannedMove) {
        guard move.byteCount > 0 else { return }
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
    public mutating func endGroup(output: Int, offset: Int64, cast: ElementCast? = nil) {
        precondition(moves.count <= Int(Int32.max), "more than 2^31 moves")
        if let cast { casts[Int32(outputs.count)] = cast }
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
    /// The conversion of the group's elements, if any.
    public func cast(group: Int) -> ElementCast? { casts.isEmpty ? nil : casts[Int32(group)] }
    /// Bytes the group writes.
    public func outputByteCount(group: Int) -> Int64 {
        let count = byteCount(group: group)
        return cast(group: group)?.outputBytes(count) ?? count
    }
    public var totalBytes: Int64 { moves.reduce(0) { $0 + $1.byteCount } }

    /// The moves a group reads from other groups' plan: `moves` of `plan`'s group `group`, their
    /// sources re-indexed into this plan (for a writer that fills one output from another plan's
    /// groups, such as a legacy rank file from import chunks).
    public mutating func append(group: Int, of plan: ConversionPlan) {
        for move in plan.moves(group: group) {
            var copy = move
            if !move.isZeros { copy.source = source(plan.sources[Int(move.source)]) }
            append(copy)
        }
    }
}

import TensorCore

/// One piece of a box: `source` bytes of `file` land at `destinationOffset` bytes into the box
/// laid out row-major (C order).
public struct TensorBoxPiece: Sendable {
    public let file: ReadOnlyFile
    public let source: ByteRange
    public let destinationOffset: Int64
}

/// A piece of a box as a strided read: `rows` segments of `segmentBytes` bytes of `file`, the
/// first at `offset`, `stride` apart, landing back to back from `destinationOffset` bytes into
/// the box laid out row-major. A column slice of a chunk is one of these, not one piece per row.
public struct TensorBoxMove: Sendable {
    public let file: ReadOnlyFile
    public let offset: Int64
    public let segmentBytes: Int64
    public let stride: Int64
    public let rows: Int64
    public let destinationOffset: Int64

    public var byteCount: Int64 { segmentBytes * rows }
}

/// The reads that fill a box: strided moves in destination order, or (`interleaved`) moves of
/// equal row counts that fill it row by row, row `r` being segment `r` of each move in turn.
public struct BoxReads: Sendable {
    public var moves: [TensorBoxMove]
    public var interleaved: Bool

    /// The same reads as plain moves, one per row and move (for a target that cannot interleave).
    public var deinterleaved: [TensorBoxMove] {
        guard interleaved, let rows = moves.first?.rows else { return moves }
        var result: [TensorBoxMove] = []
        var destination = moves[0].destinationOffset
        for row in 0..<rows {
            for move in moves {
                result.append(TensorBoxMove(file: move.file, offset: move.offset + row * move.stride, segmentBytes: move.segmentBytes,
                                            stride: move.segmentBytes, rows: 1, destinationOffset: destination))
                destination += move.segmentBytes
            }
        }
        return result
    }
}

extension BoxReads {
    /// The reads of a box whose overlaps with the chunks (covering it) are `pieces`, one
    /// arithmetic run of a file each: strided moves when each piece fills its part of the box
    /// back to back, interleaved when each gives a column slice of every row side by side; nil
    /// otherwise. Sorts `pieces` by destination.
    init?(tiling pieces: inout [(file: ReadOnlyFile, run: BoxGeometry.ArithmeticRuns)]) {
        guard !pieces.isEmpty else { return nil }
        pieces.sort { $0.run.destination < $1.run.destination }
        func move(_ piece: (file: ReadOnlyFile, run: BoxGeometry.ArithmeticRuns)) -> TensorBoxMove {
            let run = piece.run
            return TensorBoxMove(file: piece.file, offset: run.source, segmentBytes: run.segment,
                                 stride: run.rows > 1 ? run.sourceStep : run.segment, rows: run.rows, destinationOffset: run.destination)
        }
        if pieces.allSatisfy({ $0.run.rows == 1 || $0.run.destinationStep == $0.run.segment }) {
            self.init(moves: pieces.map(move), interleaved: false)
            return
        }
        let rows = pieces[0].run.rows, step = pieces[0].run.destinationStep
        var column: Int64 = 0
        let tiles = pieces.allSatisfy { piece in
            defer { column += piece.run.segment }
            return piece.run.rows == rows && piece.run.destinationStep == step && piece.run.destination == column
        }
        guard tiles && column == step else { return nil }
        self.init(moves: pieces.map(move), interleaved: true)
    }
}

/// Global tensors stored as chunks, wherever the chunks are: a torch_dist checkpoint's items, or
/// the rank files of a legacy checkpoint placed in their global tensors by a layout.
public protocol GlobalTensorSource: Sendable {
    /// The file errors about the set name (`.metadata`, or the legacy iteration directory).
    var metadataPath: String { get }
    /// Every tensor with its global shape, dtype and chunks, in a stable order.
    var globalTensors: [(fqn: String, metadata: DCPTensorMetadata)] { get }
    func tensor(_ key: String) throws -> DCPTensorMetadata
    /// Where the bytes of one chunk of `key` are.
    func chunkData(key: String, chunk: DCPChunk) throws -> ChunkData
    /// The chunks of `key` that may overlap `box` (a superset, in chunk order); by default all.
    func candidateChunks(key: String, box: DCPChunk) throws -> [DCPChunk]
    /// The chunks of `key` that overlap `box`, in chunk order, each with the overlap and where
    /// its bytes are; by default `candidateChunks` and `chunkData` of each.
    func overlappingChunks(key: String, box: DCPChunk) throws -> [(chunk: DCPChunk, overlap: DCPChunk, data: ChunkData)]
    /// The reads that fill a box of `key` (see `assembledBoxReads`, the default); a source may
    /// find the same reads a faster way.
    func boxReads(key: String, offsets: [Int], sizes: [Int]) throws -> BoxReads
}

extension GlobalTensorSource {
    public func candidateChunks(key: String, box: DCPChunk) throws -> [DCPChunk] { try tensor(key).chunks }

    public func overlappingChunks(key: String, box: DCPChunk) throws -> [(chunk: DCPChunk, overlap: DCPChunk, data: ChunkData)] {
        try candidateChunks(key: key, box: box).compactMap { chunk in
            guard let overlap = BoxGeometry.intersection(box, chunk) else { return nil }
            return (chunk, overlap, try chunkData(key: key, chunk: chunk))
        }
    }
}

/// Chunks of one tensor sorted by their start on axis 0, for finding the few that overlap a
/// box without testing all of them (an expert key of 512 experts × 8 tensor-parallel parts has
/// 4,096 chunks, and each of its 4,096 target boxes overlaps one).
/// Holds only the order (4 bytes a chunk); the starts are read from the chunks themselves.
struct AxisZeroIndex: Sendable {
    let order: [Int32]
    let longest: Int

    init(_ chunks: [DCPChunk]) {
        order = chunks.indices.sorted { chunks[$0].offsets[0] < chunks[$1].offsets[0] }.map { Int32($0) }
        longest = chunks.map { $0.sizes[0] }.max() ?? 0
    }

    /// Indices (into `chunks`, the list it was made from, ascending) of chunks whose axis-0
    /// extent meets `[low, high)`.
    func candidates(in chunks: [DCPChunk], low: Int, high: Int) -> [Int] {
        // Chunks starting in (low - longest, high) are the only ones that can reach into the range.
        func firstIndex(_ predicate: (Int) -> Bool) -> Int {
            var lower = 0, upper = order.count
            while lower < upper {
                let middle = (lower + upper) / 2
                if predicate(chunks[Int(order[middle])].offsets[0]) { upper = middle } else { lower = middle + 1 }
            }
            return lower
        }
        let from = firstIndex { $0 > low - longest }
        let to = firstIndex { $0 >= high }
        return from < to ? order[from..<to].map { Int($0) }.sorted() : []
    }
}

/// Assembling any box of a global tensor from the chunks that overlap it, by byte ranges:
/// Python's `DefaultLoadPlanner` + `narrow_tensor_by_index`, without loading items.
extension GlobalTensorSource {
    public typealias BoxPiece = TensorBoxPiece

    /// Bytes of a box of `key` with `sizes`, in the tensor's dtype; `tensorTooLarge` when they
    /// do not fit `Int64`.
    public func boxByteCount(key: String, sizes: [Int]) throws -> Int64 {
        let tensor = try self.tensor(key)
        guard let elementSize = TorchDistCheckpoint.torchElementSize(tensor.dtype) else {
            throw MegatronCheckpointError.unsupportedDType(key: key, dtype: tensor.dtype.safetensorsName)
        }
        guard let elements = ShapeArithmetic.elementCount(sizes) else {
            throw MegatronCheckpointError.tensorTooLarge(file: metadataPath, key: key, shape: sizes, dtype: tensor.dtype)
        }
        let (bytes, overflow) = elements.multipliedReportingOverflow(by: elementSize)
        guard !overflow else {
            throw MegatronCheckpointError.tensorTooLarge(file: metadataPath, key: key, shape: sizes, dtype: tensor.dtype)
        }
        return Int64(bytes)
    }

    /// The box at `offsets` with `sizes` of tensor `key`, checked to lie inside the tensor, with
    /// its element size, its volume and the error for a part the chunks leave uncovered; nil
    /// for an empty box.
    private func checkedBox(key: String, offsets: [Int], sizes: [Int]) throws
        -> (box: DCPChunk, elementSize: Int, total: Int, notCovered: (Int) -> MegatronCheckpointError)?
    {
        let tensor = try self.tensor(key)
        precondition(offsets.count == tensor.size.count && sizes.count == tensor.size.count,
                     "box rank \(offsets.count)/\(sizes.count) for `\(key)` of rank \(tensor.size.count)")
        let metadataPath = self.metadataPath
        let notCovered = { (missing: Int) -> MegatronCheckpointError in
            .boxNotCovered(file: metadataPath, key: key, offsets: offsets, sizes: sizes, shape: tensor.size, missingElements: missing)
        }
        // Inside the tensor (whose byte size was checked at open), so no volume below overflows.
        let inside = offsets.indices.allSatisfy {
            offsets[$0] >= 0 && sizes[$0] >= 0 && offsets[$0] <= tensor.size[$0] && sizes[$0] <= tensor.size[$0] - offsets[$0]
        }
        guard inside else { throw notCovered(ShapeArithmetic.elementCount(sizes) ?? Int.max) }
        let total = BoxGeometry.volume(sizes)
        if total == 0 { return nil }
        guard let elementSize = TorchDistCheckpoint.torchElementSize(tensor.dtype) else {
            throw MegatronCheckpointError.unsupportedDType(key: key, dtype: tensor.dtype.safetensorsName)
        }
        return (DCPChunk(offsets: offsets, sizes: sizes), elementSize, total, notCovered)
    }

    /// The reads that fill the box at `offsets` with `sizes` of tensor `key`, sorted by
    /// destination, adjacent reads merged. Throws `boxNotCovered` when the chunks leave part
    /// of the box uncovered (DCP itself would silently leave it uninitialised).
    public func boxPieces(key: String, offsets: [Int], sizes: [Int]) throws -> [BoxPiece] {
        guard let (box, elementSize, total, notCovered) = try checkedBox(key: key, offsets: offsets, sizes: sizes) else { return [] }
        var pieces: [BoxPiece] = []
        var covered = 0
        for (chunk, overlap, data) in try overlappingChunks(key: key, box: box) {
            covered += BoxGeometry.volume(overlap.sizes.array)
            BoxGeometry.forEachRun(of: overlap, outer: box, inner: chunk) { boxElement, chunkElement, count in
                let sources = data.sources(from: Int64(chunkElement * elementSize), count: Int64(count * elementSize))
                for (source, offset) in sources {
                    pieces.append(BoxPiece(file: data.file, source: source, destinationOffset: Int64(boxElement * elementSize) + offset))
                }
            }
        }
        // Chunks do not overlap (checked at open), so covered volume == box volume means covered.
        guard covered == total else { throw notCovered(total - covered) }
        pieces.sort { $0.destinationOffset < $1.destinationOffset }
        var merged: [BoxPiece] = []
        merged.reserveCapacity(pieces.count)
        for piece in pieces {
            if let previous = merged.last, previous.file === piece.file, previous.source.end == piece.source.offset,
                previous.destinationOffset + previous.source.count == piece.destinationOffset {
                merged[merged.count - 1] = BoxPiece(
                    file: previous.file, source: ByteRange(offset: previous.source.offset, count: previous.source.count + piece.source.count),
                    destinationOffset: previous.destinationOffset)
            } else {
                merged.append(piece)
            }
        }
        return merged
    }

    /// The reads that fill the box at `offsets` with `sizes` of tensor `key`, sorted by
    /// destination, as strided reads: the runs of one chunk that continue each other in the box
    /// and step by a fixed distance in the chunk (a column slice: one per row) are one move.
    /// Throws `boxNotCovered` as `boxPieces` does.
    public func boxMoves(key: String, offsets: [Int], sizes: [Int]) throws -> [TensorBoxMove] {
        guard let (box, elementSize, total, notCovered) = try checkedBox(key: key, offsets: offsets, sizes: sizes) else { return [] }
        var moves: [TensorBoxMove] = []
        var covered = 0
        for (chunk, overlap, data) in try overlappingChunks(key: key, box: box) {
            covered += BoxGeometry.volume(overlap.sizes.array)
            // The move being extended: segments of one length, a fixed step apart in the chunk,
            // back to back in the box.
            var open: (offset: Int64, segment: Int64, stride: Int64, rows: Int64, destination: Int64)?
            func close() {
                if let run = open {
                    moves.append(TensorBoxMove(file: data.file, offset: run.offset, segmentBytes: run.segment,
                                               stride: run.rows > 1 ? run.stride : run.segment, rows: run.rows, destinationOffset: run.destination))
                }
                open = nil
            }
            BoxGeometry.forEachRun(of: overlap, outer: box, inner: chunk) { boxElement, chunkElement, count in
                for (source, relative) in data.sources(from: Int64(chunkElement * elementSize), count: Int64(count * elementSize)) {
                    let destination = Int64(boxElement * elementSize) + relative
                    if var run = open, run.segment == source.count, run.destination + run.rows * run.segment == destination {
                        let step = source.offset - run.offset
                        if run.rows == 1, step >= run.segment {
                            run.stride = step
                            run.rows = 2
                            open = run
                            continue
                        }
                        if run.rows > 1, source.offset == run.offset + run.rows * run.stride {
                            run.rows += 1
                            open = run
                            continue
                        }
                    }
                    close()
                    open = (source.offset, source.count, source.count, 1, destination)
                }
            }
            close()
        }
        guard covered == total else { throw notCovered(total - covered) }
        moves.sort { $0.destinationOffset < $1.destinationOffset }
        return moves
    }

    /// The reads that fill the box at `offsets` with `sizes` of tensor `key`, computed from the
    /// chunk geometry instead of row by row where the chunks' bytes are contiguous (every
    /// uncompressed torch_dist item): each overlapping chunk then gives one strided move, and a
    /// box that takes a column slice of each row from several chunks (a row-parallel weight
    /// saved at TP > 1, read whole) is `interleaved` — row `r` of the box is segment `r` of each
    /// move in turn. Anything else falls back to `boxMoves`. Throws `boxNotCovered` as it does.
    public func boxReads(key: String, offsets: [Int], sizes: [Int]) throws -> BoxReads {
        try assembledBoxReads(key: key, offsets: offsets, sizes: sizes)
    }

    /// `boxReads` from `overlappingChunks`: what every source can do.
    public func assembledBoxReads(key: String, offsets: [Int], sizes: [Int]) throws -> BoxReads {
        let tensor = try self.tensor(key)
        precondition(offsets.count == tensor.size.count && sizes.count == tensor.size.count,
                     "box rank \(offsets.count)/\(sizes.count) for `\(key)` of rank \(tensor.size.count)")
        let box = DCPChunk(offsets: offsets, sizes: sizes)
        let total = BoxGeometry.volume(sizes)
        let inside = offsets.indices.allSatisfy { offsets[$0] >= 0 && sizes[$0] >= 0 && offsets[$0] <= tensor.size[$0] && sizes[$0] <= tensor.size[$0] - offsets[$0] }
        guard inside, total > 0, let elementSize = TorchDistCheckpoint.torchElementSize(tensor.dtype) else {
            return BoxReads(moves: try boxMoves(key: key, offsets: offsets, sizes: sizes), interleaved: false)
        }
        var pieces: [(file: ReadOnlyFile, run: BoxGeometry.ArithmeticRuns)] = []
        var covered = 0
        for (chunk, overlap, data) in try overlappingChunks(key: key, box: box) {
            covered += BoxGeometry.volume(overlap.sizes.array)
            guard let range = data.contiguousRange,
                var run = BoxGeometry.arithmeticRuns(of: overlap, outer: box, inner: chunk, elementSize: Int64(elementSize))
            else { return BoxReads(moves: try boxMoves(key: key, offsets: offsets, sizes: sizes), interleaved: false) }
            run.source += range.offset
            pieces.append((data.file, run))
        }
        guard covered == total, let reads = BoxReads(tiling: &pieces) else {
            return BoxReads(moves: try boxMoves(key: key, offsets: offsets, sizes: sizes), interleaved: false)
        }
        return reads
    }

    /// Reads the box at `offsets` with `sizes` of tensor `key` into `buffer` (row-major, exactly
    /// `boxByteCount` bytes).
    public func readBox(key: String, offsets: [Int], sizes: [Int], into buffer: UnsafeMutableRawBufferPointer) throws {
        let pieces = try boxPieces(key: key, offsets: offsets, sizes: sizes)
        let expected = try boxByteCount(key: key, sizes: sizes)
        precondition(Int64(buffer.count) == expected, "readBox buffer of \(buffer.count) bytes for a box of \(expected)")
        for piece in pieces {
            let start = Int(piece.destinationOffset)
            try piece.file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[start..<(start + Int(piece.source.count))]),
                                at: piece.source.offset)
        }
    }

    /// The whole global tensor `key`, row-major. For tests and small tensors.
    public func readTensor(key: String) throws -> [UInt8] {
        let tensor = try self.tensor(key)
        let count = Int(try boxByteCount(key: key, sizes: tensor.size))
        return try [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            try readBox(key: key, offsets: tensor.size.map { _ in 0 }, sizes: tensor.size, into: UnsafeMutableRawBufferPointer(buffer))
            initialized = count
        }
    }
}

extension TorchDistCheckpoint {
    /// For a plan (`ItemOpening.oncePerLayout`): the reads found from the storage records and the
    /// layouts of the items already opened, without a `ChunkData` per chunk — a dry run of
    /// 205,000 boxes over 409,000 chunks spent most of its time making and dropping those. The
    /// same reads as `assembledBoxReads`, which decides everything this path does not follow (a
    /// layout not yet opened, a transformed or non-contiguous item, a box the pieces do not tile).
    public func boxReads(key: String, offsets: [Int], sizes: [Int]) throws -> BoxReads {
        guard itemOpening == .oncePerLayout, let index = tensorIndex[key] else {
            return try assembledBoxReads(key: key, offsets: offsets, sizes: sizes)
        }
        let tensor = metadata.tensors[index].metadata
        let rank = tensor.size.count
        guard offsets.count == rank, sizes.count == rank,
            (0..<rank).allSatisfy({ offsets[$0] >= 0 && sizes[$0] > 0 && offsets[$0] <= tensor.size[$0] && sizes[$0] <= tensor.size[$0] - offsets[$0] }),
            let elementSize = Self.torchElementSize(tensor.dtype)
        else { return try assembledBoxReads(key: key, offsets: offsets, sizes: sizes) }
        let box = DCPChunk(offsets: offsets, sizes: sizes)
        let total = BoxGeometry.volume(sizes)
        var pieces: [(file: ReadOnlyFile, run: BoxGeometry.ArithmeticRuns)] = []
        var covered = 0
        // The chunks of a box nearly always share one layout: looked up once.
        var known: (key: ItemLayoutKey, start: Int64)?
        let chunkBase = chunkStarts[index]
        for position in candidateChunkIndices(tensor: index, box: box) {
            let chunk = tensor.chunks[position]
            guard let overlap = BoxGeometry.intersection(box, chunk) else { continue }
            let place = metadata.storage.place(record: Int(chunkRecords[chunkBase + position]))
            guard place.untransformed, let file = filesByPath[Int(place.path)] else {
                return try assembledBoxReads(key: key, offsets: offsets, sizes: sizes)
            }
            let layoutKey = ItemLayoutKey(dtype: tensor.dtype, sizes: chunk.sizes, length: place.length)
            let start: Int64
            if let known, known.key == layoutKey {
                start = known.start
            } else {
                // The item-relative start of an opened item's one run (its bytes contiguous).
                let found: Int64? = cache.withLock { cache in
                    guard let layout = cache.layouts[layoutKey], layout.runs.count == 1, layout.runs[0].destinationOffset == 0 else { return nil }
                    return layout.runs[0].source.offset
                }
                guard let found else { return try assembledBoxReads(key: key, offsets: offsets, sizes: sizes) }
                start = found
                known = (layoutKey, found)
            }
            guard var run = BoxGeometry.arithmeticRuns(of: overlap, outer: box, inner: chunk, elementSize: Int64(elementSize)) else {
                return try assembledBoxReads(key: key, offsets: offsets, sizes: sizes)
            }
            run.source += place.offset + start
            covered += BoxGeometry.volume(overlap.sizes)
            pieces.append((file, run))
        }
        guard covered == total, let reads = BoxReads(tiling: &pieces) else {
            return try assembledBoxReads(key: key, offsets: offsets, sizes: sizes)
        }
        let assumed = pieces.count
        cache.withLock { $0.itemsAssumed += assumed }
        return reads
    }
}

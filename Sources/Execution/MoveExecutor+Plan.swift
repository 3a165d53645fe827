import Dispatch
#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import TensorCore

/// Sees a group's bytes in order, zeros included: for checksums computed while copying, so an
/// output is never read back just to hash it.
public protocol StreamObserver: AnyObject, Sendable {
    func consume(_ bytes: UnsafeRawBufferPointer) throws
    /// `count` zero bytes that were neither read nor written (padding, holes of a sparse source).
    /// By default they are passed to `consume` from a shared page of zeros.
    func consumeZeros(_ count: Int64) throws
    /// Called once after the last byte.
    func finish() throws
}

extension StreamObserver {
    public func consumeZeros(_ count: Int64) throws {
        var left = count
        while left > 0 {
            let step = Int(min(left, Int64(ZeroPage.bytes.count)))
            try consume(UnsafeRawBufferPointer(rebasing: ZeroPage.bytes[0..<step]))
            left -= Int64(step)
        }
    }
}

/// One mebibyte of zeros, allocated once, never written (so sharing it between threads is safe).
public enum ZeroPage {
    nonisolated(unsafe) public static let bytes: UnsafeRawBufferPointer = {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        return UnsafeRawBufferPointer(buffer)
    }()
}

extension MoveExecutor {
    /// Runs every group of `plan` (progress counts output bytes): each group's moves in order on one worker, into
    /// `sinks[plan.output(group)]` from `plan.offset(group)`, its bytes shown in order (zeros
    /// included) to `observer(group)`, which is made when a worker takes the group (so a plan of
    /// 450,000 chunks never holds 450,000 observers). Groups writing one output share a lane:
    /// workers keep to their own lane while it has work, largest group first, because writes to
    /// one file serialize on its inode lock in the kernel.
    ///
    /// Sources that are sparse stay sparse: a piece of a source that is a hole (see
    /// `ReadOnlyFile.isHole`) is neither read nor written, and zero moves are not written either;
    /// the sink is told (`leaveZeros`) and the observer sees the zeros. The sinks must be fresh
    /// files (or regions never written), which is what every planned writer hands over.
    /// Without an observer and in `.kernel` mode copies go through `copy_file_range`.
    ///
    /// The groups of outputs in `skipping` are not run (a resumed run's outputs kept from the
    /// interrupted one, other processes' shares; their bytes are `ProgressCounter.skip`ped). `outputDone(output)` is called once, on the
    /// worker that finished it, when the last group of an output is done, so a writer can
    /// complete that file while others are still being written.
    public func run(
        _ plan: ConversionPlan, sinks: [any ByteSink], observer: (@Sendable (Int) throws -> (any StreamObserver)?)? = nil,
        progress: ProgressCounter? = nil, skipping: Set<Int> = [], outputDone: (@Sendable (Int) throws -> Void)? = nil
    ) throws {
        // One queue per lane, largest group first; a worker takes from its own lane, then steals.
        var laneOf: [Int: Int] = [:]
        var lanes: [[Int32]] = []
        var groupsLeft = [Int](repeating: 0, count: sinks.count)
        for group in 0..<plan.groupCount {
            let output = plan.output(group: group)
            precondition(output >= 0 && output < sinks.count, "group \(group) writes output \(output) of \(sinks.count)")
            if skipping.contains(output) {
                progress?.skip(plan.outputByteCount(group: group))
                continue
            }
            groupsLeft[output] += 1
            let lane = laneOf[output] ?? { laneOf[output] = lanes.count; lanes.append([]); return lanes.count - 1 }()
            lanes[lane].append(Int32(group))
        }
        let remaining = Mutex(groupsLeft)
        // An output with no group to run (nothing planned, all zeros elsewhere) is done at once.
        if let outputDone {
            for output in sinks.indices where groupsLeft[output] == 0 && !skipping.contains(output) { try outputDone(output) }
        }
        // By output size: a weight's scale groups (a few bytes) then run after its codes group
        // and take the scales it computed (ScaleBoard) instead of reading the weight again.
        let sizes = (0..<plan.groupCount).map { plan.outputByteCount(group: $0) }
        let board = ScaleBoard()
        for lane in lanes.indices {
            lanes[lane].sort { sizes[Int($0)] > sizes[Int($1)] }
        }
        let queues = lanes
        // Which lane each worker is on, and how many workers each lane has: a worker whose lane
        // runs dry moves to the lane with the most bytes left that no worker is on, and shares
        // one only when every lane is taken. (Stepping to the next lane in order put both workers
        // of a four-file legacy write on one file for most of the run, a sixth of its CPU time
        // spinning on that inode's lock.)
        struct LaneState {
            var cursors: [Int]
            var bytesLeft: [Int64]
            var workers: [Int]
            var laneOfWorker: [Int: Int] = [:]
        }
        let laneState = Mutex(LaneState(
            cursors: [Int](repeating: 0, count: queues.count),
            bytesLeft: queues.map { $0.reduce(Int64(0)) { $0 + sizes[Int($1)] } },
            workers: [Int](repeating: 0, count: queues.count)))
        @Sendable func take(_ worker: Int) -> Int? {
            laneState.withLock { state in
                guard !queues.isEmpty else { return nil }
                var lane = state.laneOfWorker[worker] ?? (worker % queues.count)
                if state.laneOfWorker[worker] == nil { state.workers[lane] += 1 }
                if state.cursors[lane] >= queues[lane].count {
                    state.workers[lane] -= 1
                    let open = queues.indices.filter { state.cursors[$0] < queues[$0].count }
                    guard let next = open.filter({ state.workers[$0] == 0 }).max(by: { state.bytesLeft[$0] < state.bytesLeft[$1] })
                        ?? open.max(by: { state.bytesLeft[$0] < state.bytesLeft[$1] })
                    else {
                        state.laneOfWorker[worker] = lane
                        state.workers[lane] += 1
                        return nil
                    }
                    lane = next
                    state.workers[lane] += 1
                }
                state.laneOfWorker[worker] = lane
                let group = Int(queues[lane][state.cursors[lane]])
                state.cursors[lane] += 1
                state.bytesLeft[lane] -= sizes[group]
                return group
            }
        }
        let failure = Mutex<(any Error)?>(nil)
        let chunk = Int64(chunkBytes)
        let mode = self.mode
        let pool = self.pool
        let sources = plan.sources
        runLock.withLock { _ in
            DispatchQueue.concurrentPerform(iterations: min(workers, max(plan.groupCount, 1))) { worker in
                let buffer = pool.buffer(worker)
                var scales: [UInt8] = []  // the scale bytes a dequantized piece needs, reused
                while failure.withLock({ $0 == nil }) {
                    guard let group = take(worker) else { return }
                    do {
                        let sink = sinks[plan.output(group: group)]
                        let observer = try observer?(group)
                        var destination = plan.offset(group: group)
                        // A cast group's bytes are converted into the worker's scratch buffer
                        // (moves are whole elements, and so is every piece of them read here).
                        let transform = plan.transform(group: group)
                        let cast = transform?.cast
                        func zeros(_ count: Int64) throws {
                            let written = cast?.outputBytes(count) ?? count
                            try sink.leaveZeros(at: destination, count: written)
                            try observer?.consumeZeros(written)
                            progress?.add(written)
                            destination += written
                        }
                        func emit(_ count: Int) throws {
                            var bytes = UnsafeRawBufferPointer(rebasing: buffer[0..<count])
                            if let cast {
                                let written = Int(cast.outputBytes(Int64(count)))
                                let converted = UnsafeMutableRawBufferPointer(rebasing: pool.scratch(worker)[0..<written])
                                DTypeCast.convert(bytes, from: cast.from, to: cast.to, into: converted)
                                bytes = UnsafeRawBufferPointer(converted)
                            }
                            try sink.write(bytes, at: destination)
                            try observer?.consume(bytes)
                            progress?.add(Int64(bytes.count))
                            destination += Int64(bytes.count)
                        }
                        // One contiguous source range, a buffer at a time; holes stay holes.
                        func copy(_ range: ByteRange, from source: ReadOnlyFile) throws {
                            var done: Int64 = 0
                            while done < range.count {
                                let piece = range.slice(from: done, count: min(chunk, range.count - done))
                                if source.isHole(piece) {
                                    try zeros(piece.count)
                                } else {
                                    try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(piece.count)]), at: piece.offset)
                                    try emit(Int(piece.count))
                                }
                                done += piece.count
                            }
                        }
                        // The group is written: its output file is complete when it was the last.
                        func groupDone() throws {
                            try observer?.finish()
                            let output = plan.output(group: group)
                            let last = remaining.withLock { left in
                                left[output] -= 1
                                return left[output] == 0
                            }
                            if last { try outputDone?(output) }
                        }
                        if case .dequantize(let format, let to) = transform {
                            try Self.runDequantizing(group: group, of: plan, format: format, to: to, sink: sink, observer: observer,
                                                     buffer: buffer, scratch: pool.scratch(worker), scales: &scales,
                                                     progress: progress, start: destination)
                            try groupDone()
                            continue
                        }
                        if case .quantize(let quantization) = transform {
                            try Self.runQuantizing(group: group, of: plan, quantization, board: board, sink: sink, observer: observer,
                                                   buffer: buffer, scratch: pool.scratch(worker), progress: progress, start: destination)
                            try groupDone()
                            continue
                        }
                        if case .quantizeNVFP4(let quantization) = transform {
                            try Self.runQuantizing(group: group, of: plan, quantization, board: board, sink: sink, observer: observer,
                                                   buffer: buffer, scratch: pool.scratch(worker), progress: progress, start: destination)
                            try groupDone()
                            continue
                        }
                        if plan.isInterleaved(group: group) {
                            // Row r of the group is segment r of each move in turn: blocks of rows
                            // are read per move into the scratch buffer and laid out row by row.
                            let parts = Array(plan.moves(group: group))
                            let rows = Int64(parts[0].rows)
                            let rowBytes = parts.reduce(Int64(0)) { $0 + $1.segmentBytes }
                            let scratch = pool.scratch(worker)
                            if rowBytes > chunk {
                                for row in 0..<Int(rows) {
                                    for part in parts {
                                        try copy(part.segment(row), from: sources[Int(part.source)])
                                    }
                                }
                            } else {
                                var row: Int64 = 0
                                while row < rows {
                                    var count = min(max(1, chunk / rowBytes), rows - row)
                                    for part in parts where part.stride > part.segmentBytes {
                                        count = min(count, max(1, (Int64(scratch.count) - part.segmentBytes) / part.stride + 1))
                                    }
                                    let blocks = parts.map { ByteRange(offset: $0.offset + row * $0.stride, count: (count - 1) * $0.stride + $0.segmentBytes) }
                                    if zip(parts, blocks).allSatisfy({ sources[Int($0.0.source)].isHole($0.1) }) {
                                        try zeros(count * rowBytes)
                                        row += count
                                        continue
                                    }
                                    var column: Int64 = 0
                                    for (part, block) in zip(parts, blocks) {
                                        let source = sources[Int(part.source)]
                                        let segment = Int(part.segmentBytes)
                                        if source.isHole(block) {
                                            for index in 0..<Int(count) {
                                                memset(buffer.baseAddress! + index * Int(rowBytes) + Int(column), 0, segment)
                                            }
                                        } else {
                                            try source.read(into: UnsafeMutableRawBufferPointer(rebasing: scratch[0..<Int(block.count)]), at: block.offset)
                                            for index in 0..<Int(count) {
                                                memcpy(buffer.baseAddress! + index * Int(rowBytes) + Int(column),
                                                       scratch.baseAddress! + index * Int(part.stride), segment)
                                            }
                                        }
                                        column += part.segmentBytes
                                    }
                                    try emit(Int(count * rowBytes))
                                    row += count
                                }
                            }
                            try groupDone()
                            continue
                        }
                        for move in plan.moves(group: group) {
                            if move.isZeros {
                                try zeros(move.byteCount)
                                continue
                            }
                            let source = sources[Int(move.source)]
                            if move.isContiguous {
                                let range = ByteRange(offset: move.offset, count: move.byteCount)
                                if mode == .kernel, observer == nil, cast == nil, try sink.copy(from: source, range: range, to: destination) {
                                    progress?.add(range.count)
                                    destination += range.count
                                    continue
                                }
                                try copy(range, from: source)
                                continue
                            }
                            // Strided: whole blocks of rows are read and their segments compacted in
                            // place, so a column slice costs one read per block, not one per row.
                            let segment = move.segmentBytes, stride = move.stride, rows = Int64(move.rows)
                            let rowsPerBlock = segment + stride <= chunk ? max(1, (chunk - segment) / stride + 1) : 0
                            var row: Int64 = 0
                            while row < rows {
                                if rowsPerBlock == 0 {
                                    // A segment too long to share the buffer: alone, a buffer at a time.
                                    try copy(move.segment(Int(row)), from: source)
                                    row += 1
                                    continue
                                }
                                let count = min(rowsPerBlock, rows - row)
                                let block = ByteRange(offset: move.offset + row * stride, count: (count - 1) * stride + segment)
                                if source.isHole(block) {
                                    try zeros(count * segment)
                                } else {
                                    try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(block.count)]), at: block.offset)
                                    for index in 1..<Int(count) {
                                        memmove(buffer.baseAddress! + index * Int(segment), buffer.baseAddress! + index * Int(stride), Int(segment))
                                    }
                                    try emit(Int(count * segment))
                                }
                                row += count
                            }
                        }
                        try groupDone()
                    } catch {
                        failure.withLock { if $0 == nil { $0 = error } }
                        return
                    }
                }
            }
        }
        if let error = failure.withLock({ $0 }) { throw error }
    }

    /// A dequantizing group: each contiguous source run is split at the quantized weights'
    /// boundaries, read into `buffer` (a block of rows at a time for a strided move, its
    /// segments used in place), dequantized with the scale bytes it needs (read into `scales`)
    /// into `scratch`, and written from `start` on.
    static func runDequantizing(
        group: Int, of plan: ConversionPlan, format: QuantizedFormat, to: DType, sink: any ByteSink, observer: (any StreamObserver)?,
        buffer: UnsafeMutableRawBufferPointer, scratch: UnsafeMutableRawBufferPointer, scales: inout [UInt8],
        progress: ProgressCounter?, start: Int64
    ) throws {
        precondition(!plan.isInterleaved(group: group), "an interleaved dequantizing group")
        let ratio = Int64(format.elementsPerByte * (to.bitWidth / 8))
        let sources = plan.sources
        var destination = start
        var pending = 0  // output bytes in scratch not yet written
        func flush() throws {
            guard pending > 0 else { return }
            let bytes = UnsafeRawBufferPointer(rebasing: scratch[0..<pending])
            try sink.write(bytes, at: destination)
            try observer?.consume(bytes)
            progress?.add(Int64(pending))
            destination += Int64(pending)
            pending = 0
        }
        /// Dequantizes `count` bytes of source `source` from `offset`, held at `codes`, into scratch.
        func dequantize(source: Int32, offset: Int64, codes: UnsafeRawPointer, count: Int64) throws {
            var done: Int64 = 0
            while done < count {
                let at = offset + done
                guard let weight = plan.quantizedWeight(source: source, offset: at) else {
                    preconditionFailure("byte \(at) of source \(source) is in no quantized weight")
                }
                let piece = min(count - done, weight.range.offset + weight.range.count - at)
                precondition(weight.format == format, "a group dequantizing two formats")
                if Int64(pending) + piece * ratio > Int64(scratch.count) { try flush() }
                let per = Int64(format.elementsPerByte)
                let first = (at - weight.range.offset) * per
                let elements = first..<(first + piece * per)
                let output = UnsafeMutableRawBufferPointer(rebasing: scratch[pending..<(pending + Int(piece * ratio))])
                let input = UnsafeRawBufferPointer(start: codes + Int(done), count: Int(piece))
                if let (scaleSource, range) = weight.scaleBytes(elements: elements) {
                    if scales.count < Int(range.count) { scales = [UInt8](repeating: 0, count: Int(range.count)) }
                    try scales.withUnsafeMutableBytes { bytes in
                        try sources[Int(scaleSource)].read(into: UnsafeMutableRawBufferPointer(rebasing: bytes[0..<Int(range.count)]), at: range.offset)
                    }
                    scales.withUnsafeBytes { bytes in
                        weight.dequantize(elements: elements, codes: input, scales: UnsafeRawBufferPointer(rebasing: bytes[0..<Int(range.count)]),
                                          to: to, into: output)
                    }
                } else {
                    weight.dequantize(elements: elements, codes: input, scales: UnsafeRawBufferPointer(start: nil, count: 0), to: to, into: output)
                }
                pending += Int(piece * ratio)
                done += piece
            }
        }
        // Input bytes per read: their output fits the scratch buffer.
        let chunk = max(1, min(Int64(buffer.count), Int64(scratch.count) / ratio))
        for move in plan.moves(group: group) {
            if move.isZeros {
                try flush()
                let written = move.byteCount * ratio
                try sink.leaveZeros(at: destination, count: written)
                try observer?.consumeZeros(written)
                progress?.add(written)
                destination += written
                continue
            }
            let source = sources[Int(move.source)]
            let segment = move.segmentBytes, stride = move.stride, rows = Int64(move.rows)
            if move.isContiguous || segment + stride > chunk {
                // Piece by piece along each segment (one segment for a contiguous move).
                let segments = move.isContiguous ? [ByteRange(offset: move.offset, count: move.byteCount)] : nil
                for row in 0..<(segments == nil ? rows : 1) {
                    let range = segments?[0] ?? move.segment(Int(row))
                    var done: Int64 = 0
                    while done < range.count {
                        let piece = range.slice(from: done, count: min(chunk, range.count - done))
                        try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(piece.count)]), at: piece.offset)
                        try dequantize(source: move.source, offset: piece.offset, codes: UnsafeRawPointer(buffer.baseAddress!), count: piece.count)
                        done += piece.count
                    }
                }
                continue
            }
            // Strided: a block of rows per read, each segment dequantized where it lies.
            let rowsPerBlock = max(1, min((chunk - segment) / stride + 1, Int64(scratch.count) / (segment * ratio)))
            var row: Int64 = 0
            while row < rows {
                let count = min(rowsPerBlock, rows - row)
                let block = ByteRange(offset: move.offset + row * stride, count: (count - 1) * stride + segment)
                try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(block.count)]), at: block.offset)
                for index in 0..<count {
                    try dequantize(source: move.source, offset: block.offset + index * stride,
                                   codes: UnsafeRawPointer(buffer.baseAddress! + Int(index * stride)), count: segment)
                }
                row += count
            }
        }
        try flush()
    }

    /// A quantizing group: its weight's elements are read in order (the group's segments, whole
    /// rows at a time into `buffer`) once to survey every block's amax (and, reusing recorded
    /// scales, whether the block round-trips with its own), and for the codes once more to
    /// quantize them into `scratch` (or both in one pass, band by band, when a band of block rows
    /// fits the buffer). Only the scale grid is held (one value a block), never the weight; the
    /// codes group posts it for the scale group, which then reads nothing.
    static func runQuantizing(
        group: Int, of plan: ConversionPlan, _ quantization: FP8Quantization, board: ScaleBoard, sink: any ByteSink,
        observer: (any StreamObserver)?, buffer: UnsafeMutableRawBufferPointer, scratch: UnsafeMutableRawBufferPointer,
        progress: ProgressCounter?, start: Int64
    ) throws {
        let sources = plan.sources
        let key = ScaleBoard.key(group: group, of: plan)!
        var output = GroupOutput(sink: sink, observer: observer, progress: progress, destination: start)
        if quantization.part == .scales, case .fp8(let scales)? = board.take(key) {
            try quantization.scaleBytes(scales).withUnsafeBytes { try output.write($0) }
            return
        }
        let stream = { (body: (Int64, UnsafeRawBufferPointer) throws -> Void) throws in
            try streamElements(group: group, of: plan, rowBytes: quantization.columns * quantization.elementBytes,
                               elementBytes: quantization.elementBytes, buffer: buffer, body)
        }
        var recorded: [Float]?
        if let record = quantization.recorded {
            var bytes = [UInt8](repeating: 0, count: Int(quantization.scaleByteCount))
            try bytes.withUnsafeMutableBytes { try sources[Int(record.source)].read(into: $0, at: record.offset) }
            recorded = bytes.withUnsafeBytes { quantization.recordedScales($0) }
        }
        var survey = FP8Quantization.Survey(blocks: quantization.scaleCount, recorded: recorded)
        // A block's scale needs only its own rows: when a band of whole block rows fits the
        // buffer (block FP8; a per-tensor weight that fits), each band is surveyed and quantized
        // while it is there, so the codes read the weight once instead of twice.
        let bandBytes = quantization.blockRows * quantization.columns * quantization.elementBytes
        if quantization.part == .codes, bandBytes <= buffer.count {
            try streamElements(group: group, of: plan, rowBytes: bandBytes, elementBytes: quantization.elementBytes, buffer: buffer) { first, bytes in
                let count = bytes.count / quantization.elementBytes
                let codes = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<count])
                // Reusing recorded scales, the survey writes their codes; only the blocks that
                // do not round-trip are quantized again, with their fresh scales.
                quantization.survey(first: first, bytes: bytes, into: &survey, codes: codes)
                let scales = quantization.scales(survey)  // those of blocks not yet surveyed are unused
                quantization.quantize(first: first, bytes: bytes, scales: scales, into: codes, skippingRoundTrips: survey)
                try output.write(UnsafeRawBufferPointer(codes))
            }
            board.post(.fp8(quantization.scales(survey)), for: key, uses: 1)
            return
        }
        try stream { first, bytes in quantization.survey(first: first, bytes: bytes, into: &survey) }
        let scales = quantization.scales(survey)
        if quantization.part == .codes { board.post(.fp8(scales), for: key, uses: 1) }
        switch quantization.part {
        case .scales:
            try quantization.scaleBytes(scales).withUnsafeBytes { try output.write($0) }
        case .codes:
            try stream { first, bytes in
                let count = bytes.count / quantization.elementBytes
                let codes = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<count])
                quantization.quantize(first: first, bytes: bytes, scales: scales, into: codes)
                try output.write(UnsafeRawBufferPointer(codes))
            }
        }
    }

    /// Calls `body(firstElement, bytes)` for the group's elements in order, whole rows at a time
    /// (as many as fit `buffer`), read from the group's segments (zeros filled in). A row larger
    /// than the buffer comes in pieces of whole `unit`s of elements: the kernels take any run of
    /// elements (a block's amax is a max over its pieces), NVFP4 an even one.
    static func streamElements(group: Int, of plan: ConversionPlan, rowBytes: Int, elementBytes: Int, unit: Int = 1,
                               buffer: UnsafeMutableRawBufferPointer, _ body: (Int64, UnsafeRawBufferPointer) throws -> Void) throws {
        let piece = rowBytes <= buffer.count ? rowBytes : unit * elementBytes
        precondition(piece <= buffer.count, "a buffer of \(buffer.count) bytes holds no \(unit) elements")
        let sources = plan.sources
        let step = (buffer.count / piece) * piece
        var filled = 0
        var first: Int64 = 0
        func deliver() throws {
            try body(first, UnsafeRawBufferPointer(rebasing: buffer[0..<filled]))
            first += Int64(filled / elementBytes)
            filled = 0
        }
        try plan.forEachSegment(group: group) { source, range in
            var done: Int64 = 0
            while done < range.count {
                let count = Int(min(range.count - done, Int64(step - filled)))
                let target = UnsafeMutableRawBufferPointer(rebasing: buffer[filled..<(filled + count)])
                if source == PlannedMove.zeroSource {
                    target.initializeMemory(as: UInt8.self, repeating: 0)
                } else {
                    try sources[Int(source)].read(into: target, at: range.offset + done)
                }
                filled += count
                done += Int64(count)
                if filled == step { try deliver() }
            }
        }
        if filled > 0 { try deliver() }
    }

    /// An NVFP4 quantizing group, as the FP8 one: a survey pass, then (for the codes) a quantizing
    /// pass; the scale groups take the codes group's scales when it posted them.
    static func runQuantizing(
        group: Int, of plan: ConversionPlan, _ quantization: NVFP4Quantization, board: ScaleBoard, sink: any ByteSink,
        observer: (any StreamObserver)?, buffer: UnsafeMutableRawBufferPointer, scratch: UnsafeMutableRawBufferPointer,
        progress: ProgressCounter?, start: Int64
    ) throws {
        let key = ScaleBoard.key(group: group, of: plan)!
        var output = GroupOutput(sink: sink, observer: observer, progress: progress, destination: start)
        if quantization.part != .codes, case .nvfp4(let groups, let second)? = board.take(key) {
            if quantization.part == .groupScales {
                try groups.withUnsafeBytes { try output.write($0) }
            } else {
                try withUnsafeBytes(of: second.bitPattern.littleEndian) { try output.write($0) }
            }
            return
        }
        let stream = { (body: (Int64, UnsafeRawBufferPointer) throws -> Void) throws in
            try streamElements(group: group, of: plan, rowBytes: quantization.columns * quantization.elementBytes,
                               elementBytes: quantization.elementBytes, unit: quantization.group, buffer: buffer, body)
        }
        var recordedGroups: [UInt8]?
        if let record = quantization.recorded {
            var bytes = [UInt8](repeating: 0, count: quantization.groupCount)
            try bytes.withUnsafeMutableBytes { try plan.sources[Int(record.source)].read(into: $0, at: record.offset) }
            recordedGroups = bytes
        }
        var survey = NVFP4Quantization.Survey(groups: quantization.groupCount, recordedGroups: recordedGroups,
                                              recordedSecond: quantization.recorded?.second ?? 1)
        try stream { first, bytes in quantization.survey(first: first, bytes: bytes, into: &survey) }
        let scales = quantization.scales(survey)
        if quantization.part == .codes { board.post(.nvfp4(groups: scales.groups, second: scales.second), for: key, uses: 2) }
        switch quantization.part {
        case .groupScales:
            try scales.groups.withUnsafeBytes { try output.write($0) }
        case .secondScale:
            try withUnsafeBytes(of: scales.second.bitPattern.littleEndian) { try output.write($0) }
        case .codes:
            try stream { first, bytes in
                let count = bytes.count / quantization.elementBytes / 2
                let codes = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<count])
                quantization.quantize(first: first, bytes: bytes, scales: scales, into: codes)
                try output.write(UnsafeRawBufferPointer(codes))
            }
        }
    }
}

/// Where a quantizing group's output goes: written in order from its start, each piece observed
/// (checksums) and counted (progress).
struct GroupOutput {
    let sink: any ByteSink
    let observer: (any StreamObserver)?
    let progress: ProgressCounter?
    var destination: Int64

    mutating func write(_ bytes: UnsafeRawBufferPointer) throws {
        try sink.write(bytes, at: destination)
        try observer?.consume(bytes)
        progress?.add(Int64(bytes.count))
        destination += Int64(bytes.count)
    }
}

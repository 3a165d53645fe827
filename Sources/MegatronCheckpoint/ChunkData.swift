import TensorCore

/// Where one stored chunk's bytes are: the file to read and, as runs, which source byte ranges
/// fill which parts of the chunk laid out row-major (C order).
///
/// A contiguous chunk (every chunk PyTorch DCP or Megatron writes: views are cloned before
/// saving) is one run covering the whole chunk; a strided one is one run per contiguous piece.
public struct ChunkData: Sendable {
    /// One contiguous piece: `source` bytes of `file` land at `destinationOffset` bytes into the
    /// row-major chunk.
    public struct Run: Sendable, Equatable {
        public var source: ByteRange
        public var destinationOffset: Int64

        public init(source: ByteRange, destinationOffset: Int64) {
            self.source = source
            self.destinationOffset = destinationOffset
        }
    }

    /// The `.distcp` file, or for a compressed item the unlinked temporary file it was decoded
    /// into (kept open for as long as this value lives).
    public let file: ReadOnlyFile
    /// The `.distcp` file the item is stored in (for messages; equals `file.path` unless decoded).
    public let dataFile: String
    public let key: String
    public let chunk: DCPChunk
    public let dtype: DType
    /// Bytes per element as torch stores them (1 for `float4_e2m1fn_x2`, which packs two values).
    public let elementSize: Int
    /// Sorted by `destinationOffset`, covering `[0, byteCount)` without gaps.
    public let runs: [Run]
    /// Whether the item was decoded (zstd) into a temporary file.
    public let isDecoded: Bool

    public init(file: ReadOnlyFile, dataFile: String, key: String, chunk: DCPChunk, dtype: DType, elementSize: Int, runs: [Run],
                isDecoded: Bool = false) {
        self.file = file
        self.dataFile = dataFile
        self.key = key
        self.chunk = chunk
        self.dtype = dtype
        self.elementSize = elementSize
        self.runs = runs
        self.isDecoded = isDecoded
    }

    /// Bytes of the chunk in row-major order.
    public var byteCount: Int64 { runs.last.map { $0.destinationOffset + $0.source.count } ?? 0 }

    /// The one source range when the chunk's bytes are contiguous in `file`.
    public var contiguousRange: ByteRange? { runs.count == 1 ? runs[0].source : (runs.isEmpty ? ByteRange(offset: 0, count: 0) : nil) }

    /// Source pieces for the chunk-relative byte range `[start, start + count)`, as
    /// `(source range, offset relative to start)`.
    func sources(from start: Int64, count: Int64) -> [(source: ByteRange, offset: Int64)] {
        precondition(start >= 0 && count >= 0 && start + count <= byteCount)
        if count == 0 { return [] }
        // The last run starting at or before `start`.
        var low = 0
        var high = runs.count - 1
        while low < high {
            let middle = (low + high + 1) / 2
            if runs[middle].destinationOffset <= start { low = middle } else { high = middle - 1 }
        }
        var pieces: [(ByteRange, Int64)] = []
        var position = start
        var index = low
        while position < start + count {
            let run = runs[index]
            let within = position - run.destinationOffset
            let take = min(run.source.count - within, start + count - position)
            pieces.append((ByteRange(offset: run.source.offset + within, count: take), position - start))
            position += take
            index += 1
        }
        return pieces
    }
}

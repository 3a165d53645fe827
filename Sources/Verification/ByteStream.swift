import TensorCore

/// A tensor's bytes as they sit on disk: pieces of files that, in order, make up the tensor.
public struct ByteStream: Sendable {
    public struct Piece: Sendable {
        public let file: ReadOnlyFile
        public let range: ByteRange

        public init(file: ReadOnlyFile, range: ByteRange) {
            self.file = file
            self.range = range
        }
    }

    public let pieces: [Piece]
    /// Bytes computed rather than read (a quantized weight's dequantized elements), and how many.
    let computed: (count: Int64, read: @Sendable (Int64, UnsafeMutableRawBufferPointer) throws -> Void)?
    public var count: Int64 { computed?.count ?? pieces.reduce(0) { $0 + $1.range.count } }

    public init(_ pieces: [Piece]) {
        self.pieces = pieces
        computed = nil
    }

    public init(file: ReadOnlyFile, range: ByteRange) {
        pieces = [Piece(file: file, range: range)]
        computed = nil
    }

    /// `count` bytes that `read(offset, buffer)` computes (fills `buffer` from byte `offset`).
    public init(count: Int64, read: @escaping @Sendable (Int64, UnsafeMutableRawBufferPointer) throws -> Void) {
        pieces = []
        computed = (count, read)
    }

    /// Fills `buffer` with the bytes at `offset` of the stream.
    public func read(at offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws {
        if let computed {
            precondition(offset >= 0 && offset + Int64(buffer.count) <= computed.count, "read past the end of a byte stream")
            return try computed.read(offset, buffer)
        }
        var position: Int64 = 0
        var filled = 0
        for piece in pieces {
            let end = position + piece.range.count
            if end > offset + Int64(filled), filled < buffer.count {
                let start = offset + Int64(filled) - position
                let count = Int(min(piece.range.count - start, Int64(buffer.count - filled)))
                try piece.file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[filled..<(filled + count)]),
                                    at: piece.range.offset + start)
                filled += count
            }
            position = end
            if filled == buffer.count { return }
        }
        precondition(filled == buffer.count, "read past the end of a byte stream")
    }
}

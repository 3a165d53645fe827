import Foundation
import MegatronCheckpoint
import NembridgeKit
import SafetensorsFormat
import TensorCore
import Testing
import WeightMapping

/// Checks of an import's plan against the source's safetensors headers, independent of how the
/// plan was made: every chunk is planned once and tiles its key, every planned byte of a chunk
/// is there, and every byte of every source tensor is read exactly once.
enum PlanChecks {
    struct Totals: Equatable {
        var tensors = 0
        var tensorBytes: Int64 = 0
        var zeroBytes: Int64 = 0
        var chunks = 0
        var keys = 0
    }

    /// Returns the totals it checked, for the caller to compare with what it expects.
    @discardableResult
    static func check(_ plan: HFImport, sourceLocation: SourceLocation = #_sourceLocation) throws -> Totals {
        try check(layout: plan.layout, plan: plan.plan, source: plan.source, sourceLocation: sourceLocation)
    }

    @discardableResult
    static func check(layout: TorchDistLayout, plan moves: ConversionPlan, source: HFCheckpointFolder,
                      sourceLocation: SourceLocation = #_sourceLocation) throws -> Totals {
        var totals = Totals()
        totals.keys = layout.keys.count
        totals.chunks = layout.tensorItemCount

        // 1. One group per chunk, each exactly its chunk's bytes, destined for its item's data.
        #expect(moves.groupCount == layout.tensorItemCount, sourceLocation: sourceLocation)
        for item in layout.tensorItemIndices {
            let chunk = layout.chunk(item: item)
            let bytes = Int64(ShapeArithmetic.byteCount(chunk.sizes.array, layout.dtype(item: item))!)
            #expect(layout.byteCount(item: item) == bytes, "\(layout.key(item: item))\(chunk.offsets)", sourceLocation: sourceLocation)
            #expect(moves.byteCount(group: item) == bytes, "\(layout.key(item: item))\(chunk.offsets)", sourceLocation: sourceLocation)
            #expect(moves.output(group: item) == layout.file(item: item) && moves.offset(group: item) == layout.dataOffset(item: item),
                    sourceLocation: sourceLocation)
            for move in moves.moves(group: item) where move.isZeros { totals.zeroBytes += move.byteCount }
        }

        // 2. The chunks of each key tile it: every cell of the grid their edges cut is covered once.
        for key in layout.keys {
            let chunks = key.items.map { layout.chunk(item: $0) }
            #expect(tiles(chunks, size: key.size), "chunks of \(key.fqn) do not tile \(key.size)", sourceLocation: sourceLocation)
        }

        // 3. Items do not overlap in their files, and each file's size covers its items.
        var extents: [[(Int64, Int64)]] = Array(repeating: [], count: layout.fileNames.count)
        for item in layout.tensorItemIndices {
            extents[layout.file(item: item)].append((layout.itemOffset(item: item), layout.itemLength(item: item)))
        }
        for object in layout.objectItems { extents[object.file].append((object.itemOffset, Int64(object.bytes.count))) }
        for (file, ranges) in extents.enumerated() {
            var end: Int64 = 0
            for (offset, length) in ranges.sorted(by: { $0.0 < $1.0 }) {
                #expect(offset >= end, "items overlap in \(layout.fileNames[file]) at \(offset)", sourceLocation: sourceLocation)
                end = offset + length
            }
            #expect(end == layout.fileSizes[file], sourceLocation: sourceLocation)
        }

        // 4. Every byte of every source tensor is read exactly once. Each move is placed in its
        // tensor as a rectangle of rows (`stride` bytes long, for a column slice) and byte columns,
        // and the rectangles must tile the tensor (a plain copy of whole rows is such a rectangle).
        var tensorsOf: [ObjectIdentifier: [(start: Int64, count: Int64, name: String)]] = [:]
        for file in source.files {
            tensorsOf[ObjectIdentifier(file.file)] = file.tensors.map { tensor in
                let range = file.fileRange(of: tensor)
                return (range.offset, range.count, tensor.name)
            }.sorted { $0.start < $1.start }
            for tensor in file.tensors where tensor.byteCount > 0 {
                totals.tensors += 1
                totals.tensorBytes += tensor.byteCount
            }
        }
        var pieces: [String: [(offset: Int64, rows: Int64, segment: Int64, stride: Int64?)]] = [:]
        var sizes: [String: Int64] = [:]
        for move in moves.moves where !move.isZeros {
            let tensors = tensorsOf[ObjectIdentifier(moves.sources[Int(move.source)])]!
            // A copy may run on from one tensor into the next (the plan merges adjacent reads):
            // each tensor gets its part.
            var offset = move.offset
            let last = move.offset + Int64(move.rows - 1) * move.stride + move.segmentBytes
            while offset < last {
                guard let tensor = tensors.last(where: { $0.start <= offset && $0.count > 0 }), offset < tensor.start + tensor.count,
                    move.isContiguous || last <= tensor.start + tensor.count
                else {
                    Issue.record("a move reads \(offset)..<\(last) outside any tensor", sourceLocation: sourceLocation)
                    break
                }
                sizes[tensor.name] = tensor.count
                if move.isContiguous {
                    let end = min(last, tensor.start + tensor.count)
                    pieces[tensor.name, default: []].append((offset - tensor.start, 1, end - offset, nil))
                    offset = end
                } else {
                    pieces[tensor.name, default: []].append((offset - tensor.start, Int64(move.rows), move.segmentBytes, move.stride))
                    offset = last
                }
            }
        }
        #expect(pieces.count == totals.tensors, "\(totals.tensors - pieces.count) source tensors are never read", sourceLocation: sourceLocation)
        for (name, list) in pieces {
            let size = sizes[name]!
            let rowBytes = list.compactMap(\.stride).first ?? size
            var boxes: [DCPChunk] = []
            for piece in list {
                let stride = piece.stride ?? rowBytes
                let width = piece.stride == nil ? piece.rows * piece.segment : piece.segment
                // A copy spans whole rows (or, in a tensor read without column slices, is one range).
                if piece.stride == nil && rowBytes != size {
                    guard piece.offset % rowBytes == 0, width % rowBytes == 0 else {
                        Issue.record("\(name): a copy at \(piece.offset) is not whole rows of \(rowBytes) bytes", sourceLocation: sourceLocation)
                        continue
                    }
                    boxes.append(DCPChunk(offsets: [Int(piece.offset / rowBytes), 0], sizes: [Int(width / rowBytes), Int(rowBytes)]))
                } else if piece.stride == nil {
                    boxes.append(DCPChunk(offsets: [0, Int(piece.offset)], sizes: [1, Int(width)]))
                } else {
                    guard stride == rowBytes, piece.offset % stride + piece.segment <= stride else {
                        Issue.record("\(name): column slices with different row lengths", sourceLocation: sourceLocation)
                        continue
                    }
                    boxes.append(DCPChunk(offsets: [Int(piece.offset / stride), Int(piece.offset % stride)],
                                          sizes: [Int(piece.rows), Int(piece.segment)]))
                }
            }
            let shape = rowBytes == size ? [1, Int(size)] : [Int(size / rowBytes), Int(rowBytes)]
            #expect(size % rowBytes == 0 && tiles(boxes, size: shape), "\(name): its bytes are not read exactly once", sourceLocation: sourceLocation)
        }
        #expect(moves.totalBytes == totals.tensorBytes + totals.zeroBytes, sourceLocation: sourceLocation)
        #expect(layout.tensorBytes == moves.totalBytes, sourceLocation: sourceLocation)
        return totals
    }

    /// Whether `chunks` partition the box `[0, size)`: the distinct chunk edges cut each axis
    /// into intervals, and every cell of that grid must be covered by exactly one chunk.
    static func tiles(_ chunks: [DCPChunk], size: [Int]) -> Bool {
        let rank = size.count
        if rank == 0 { return chunks.count == 1 }
        var cuts: [[Int]] = []
        for axis in 0..<rank {
            var edges = Set([0, size[axis]])
            for chunk in chunks {
                guard chunk.offsets[axis] >= 0, chunk.offsets[axis] + chunk.sizes[axis] <= size[axis] else { return false }
                edges.insert(chunk.offsets[axis])
                edges.insert(chunk.offsets[axis] + chunk.sizes[axis])
            }
            cuts.append(edges.sorted())
        }
        let shape = cuts.map { $0.count - 1 }
        var counts = [UInt8](repeating: 0, count: shape.reduce(1, *))
        for chunk in chunks {
            let low = (0..<rank).map { cuts[$0].firstIndex(of: chunk.offsets[$0])! }
            let high = (0..<rank).map { cuts[$0].firstIndex(of: chunk.offsets[$0] + chunk.sizes[$0])! }
            guard zip(low, high).allSatisfy({ $0 < $1 }) else { continue }  // an empty chunk covers nothing
            var index = low
            while true {
                var flat = 0
                for axis in 0..<rank { flat = flat * shape[axis] + index[axis] }
                counts[flat] &+= 1
                var axis = rank - 1
                while axis >= 0 {
                    index[axis] += 1
                    if index[axis] < high[axis] { break }
                    index[axis] = low[axis]
                    axis -= 1
                }
                if axis < 0 { break }
            }
        }
        return counts.allSatisfy { $0 == 1 }
    }
}

import MegatronCheckpoint
import SafetensorsFormat
import TensorCore
import WeightMapping

extension HFImport {
    /// Where each Megatron tensor's row correspondences and zero rows are in `mapping`: the plan
    /// appends them tensor by tensor, so they are contiguous ranges (no dictionary by name).
    struct MappingIndex: Sendable {
        /// Correspondences of tensor `t`: `starts[t]..<starts[t + 1]`.
        let starts: [Int32]
        /// The zero rows of tensor `t` (index into `zeroFills`), or -1.
        let zeros: [Int32]

        init(_ mapping: MappingPlan) {
            var starts: [Int32] = [0]
            var zeros: [Int32] = []
            starts.reserveCapacity(mapping.megatronTensors.count + 1)
            zeros.reserveCapacity(mapping.megatronTensors.count)
            var next = 0, nextZero = 0
            for spec in mapping.megatronTensors {
                while next < mapping.correspondences.count, mapping.correspondences[next].megatron.tensor == spec.name { next += 1 }
                starts.append(Int32(next))
                if nextZero < mapping.zeroFills.count, mapping.zeroFills[nextZero].tensor == spec.name {
                    zeros.append(Int32(nextZero))
                    nextZero += 1
                } else {
                    zeros.append(-1)
                }
            }
            precondition(next == mapping.correspondences.count && nextZero == mapping.zeroFills.count,
                         "the mapping's correspondences do not follow its tensors")
            self.starts = starts
            self.zeros = zeros
        }

        func correspondences(_ tensor: Int) -> Range<Int> { Int(starts[tensor])..<Int(starts[tensor + 1]) }
    }

    /// Row correspondences → byte moves into each chunk's data record, chunk by chunk in item
    /// order: whole rows are one copy, a column slice (a row-parallel split) one strided move,
    /// padding rows one zero move.
    /// `hfSources[i]` is where `mapping.hfTensors[i]` is; `dtypes[t]` the dtype of Megatron tensor
    /// `t`'s sources, `targetDTypes[t]` the one it is written in (`--dtype`: a cast group).
    static func plan(mapping: MappingPlan, index: MappingIndex, chunkings: [TensorChunking], dtypes: [DType],
                     targetDTypes: [DType]? = nil, layout: TorchDistLayout, hfSources: [(file: SafetensorsFile, tensor: SafetensorsTensorInfo)],
                     quantized: [HFQuantization.Weight?] = []
    ) throws -> (plan: ConversionPlan, sources: [Int32]) {
        var plan = ConversionPlan()
        plan.reserve(groups: layout.tensorItemCount, moves: layout.tensorItemCount + mapping.correspondences.count)
        // Each HF tensor's source: the plan's file index and the tensor's first byte.
        let tensorSources = hfSources.map { (source: plan.source($0.file.file), start: $0.file.fileRange(of: $0.tensor).offset) }
        // The quantized weights the dequantizing groups read, with their scales' sources.
        for (index, weight) in quantized.enumerated() {
            guard let weight else { continue }
            let range = hfSources[index].file.fileRange(of: hfSources[index].tensor)
            plan.addQuantizedWeight(weight.planned(source: tensorSources[index].source, range: range, in: &plan))
        }
        let located = mapping.correspondenceHFTensors.map { tensorSources[Int($0)] }
        var pieces: [(dataOffset: Int64, move: PlannedMove)] = []
        for grid in layout.grids {
            let tensor = Int(grid.order)
            let spec = mapping.megatronTensors[tensor]
            let chunking = chunkings[tensor]
            let rowBytes = try Self.rowBytes(spec.shape, dtypes[tensor], tensor: spec.name)
            let target = targetDTypes?[tensor] ?? dtypes[tensor]
            let transform: ElementTransform? = switch dtypes[tensor] {
            case _ where target == dtypes[tensor]: nil
            case .float8E4M3: .dequantize(.e4m3, to: target)
            case .float4E2M1: .dequantize(.e2m1, to: target)
            default: .cast(ElementCast(from: dtypes[tensor], to: target))
            }
            let rowCount = spec.shape.first ?? 1
            for part in 0..<Int(grid.parts) {
                let rows = chunking.rows(part: part, of: rowCount)
                let columns = chunking.columns(part: part, of: spec.shape)
                // Bytes of one chunk row: the whole row, or the chunk's column slice of it.
                if let columns, (Int64(columns.count) * rowBytes) % Int64(spec.shape[1]) != 0 || (Int64(columns.lowerBound) * rowBytes) % Int64(spec.shape[1]) != 0 {
                    // Packed sub-byte elements (NVFP4) split only between bytes.
                    throw MappingError.cannotSplit(what: "`\(spec.name)`",
                                                   reason: "its columns \(columns.lowerBound)..<\(columns.upperBound) do not start and end on whole bytes of its \(dtypes[tensor]) source")
                }
                let segment = columns.map { Int64($0.count) * rowBytes / Int64(spec.shape[1]) } ?? rowBytes
                let segmentOffset = columns.map { Int64($0.lowerBound) * rowBytes / Int64(spec.shape[1]) } ?? 0
                pieces.removeAll(keepingCapacity: true)
                for position in index.correspondences(tensor) {
                    let item = mapping.correspondences[position]
                    let overlap = item.megatron.rows.clamped(to: rows)
                    guard !overlap.isEmpty else { continue }
                    let firstHFRow = item.hf.rows.lowerBound + (overlap.lowerBound - item.megatron.rows.lowerBound)
                    let start = located[position].start + Int64(firstHFRow) * rowBytes
                    let dataOffset = Int64(overlap.lowerBound - rows.lowerBound) * segment
                    pieces.append((dataOffset, .strided(source: located[position].source, firstSegment: start + segmentOffset,
                                                        stride: rowBytes, segmentBytes: segment, rows: Int64(overlap.count))))
                }
                if index.zeros[tensor] >= 0 {
                    let overlap = mapping.zeroFills[Int(index.zeros[tensor])].rows.clamped(to: rows)
                    if !overlap.isEmpty {
                        pieces.append((Int64(overlap.lowerBound - rows.lowerBound) * segment, .zeros(Int64(overlap.count) * segment)))
                    }
                }
                pieces.sort { $0.dataOffset < $1.dataOffset }
                var filled: Int64 = 0
                for piece in pieces {
                    precondition(piece.dataOffset == filled, "chunk \(part) of `\(spec.name)` is not filled back to back")
                    plan.append(piece.move)
                    filled += piece.move.byteCount
                }
                let item = Int(grid.firstItem) + part
                let written = transform?.outputBytes(filled) ?? filled
                precondition(written == layout.byteCount(item: item), "chunk \(part) of `\(spec.name)`: \(written) of \(layout.byteCount(item: item)) bytes planned")
                plan.endGroup(output: layout.file(item: item), offset: layout.dataOffset(item: item), transform: transform)
            }
        }
        return (plan, located.map(\.source))
    }
}

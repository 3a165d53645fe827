import Foundation
import MegatronCheckpoint
import TensorCore
import TorchPickle
import WeightMapping

extension HFImport {
    /// The plan as `--dry-run` prints it, as one string (for tests; the CLI streams it).
    public func planText(bufferBytes: Int = 2 * (16 << 20)) -> String {
        PlanTextOutput.collect { writePlanText(to: $0, bufferBytes: bufferBytes) }
    }

    /// The plan as `--dry-run` prints it: each Megatron tensor with its sources, shape, bytes, file
    /// and offset (and each chunk's place when the target splits it), the totals of the move plan,
    /// the expected peak memory, and the arguments that would be written. Streamed line by line.
    public func writePlanText(to out: PlanTextOutput, bufferBytes: Int = 2 * (16 << 20)) {
        out.line("import \(source.directory) -> \(outputPath)/\(iterationDirectoryName)")
        out.line("architecture: \(mapping.model.table.name) (\(mapping.model.table.megatronModel), \(mapping.model.layerCount) layers, \(mapping.model.table.layerKeys.rawValue) keys)")
        out.line("targets:")
        var gridOf = [Int32](repeating: -1, count: mapping.megatronTensors.count)
        for (index, grid) in layout.grids.enumerated() { gridOf[Int(grid.order)] = Int32(index) }
        let fileNames = plan.sources.map { ($0.path as NSString).lastPathComponent }
        for (tensor, spec) in mapping.megatronTensors.enumerated() {
            let grid = layout.grids[Int(gridOf[tensor])]
            let first = Int(grid.firstItem)
            let key = layout.keys[Int(grid.key)]
            out.write("  ")
            out.write(spec.key)
            if !spec.prefix.isEmpty {
                out.write(" at ")
                out.write(shape: spec.prefix)
                out.write(" of")
            }
            out.write(" ")
            out.write(shape: spec.shape)
            out.write(" ")
            out.write(key.dtype.safetensorsName)
            if let cast = casts[spec.name] {
                out.write(" (cast from ")
                out.write(cast.from.safetensorsName)
                out.write(")")
            }
            if case .dequantize(let format, _)? = dequantized[spec.name] {
                out.write(format == .e2m1 ? " (dequantized from NVFP4)" : " (dequantized from F8_E4M3)")
            }
            out.write(" ")
            out.write(Int64(grid.parts) * layout.byteCount(item: first))
            out.write(" bytes -> ")
            out.write(layout.fileNames[layout.file(item: first)])
            out.write("@")
            out.write(layout.dataOffset(item: first))
            out.endLine()
            let correspondences = mappingIndex.correspondences(tensor)
            // Distinct source tensors in order (a Megatron tensor has at most a few).
            var distinct = 0
            for index in correspondences {
                let name = mapping.correspondences[index].hf.tensor
                guard !correspondences[..<index].contains(where: { mapping.correspondences[$0].hf.tensor == name }) else { continue }
                distinct += 1
                out.write("      <- ")
                out.write(name)
                out.write(" (")
                out.write(fileNames[Int(correspondenceSources[index])])
                out.write(")")
                out.endLine()
            }
            // The row blocks, when the rows come in more pieces than there are sources (QKV groups).
            var blocks = 0
            var previous: Int?
            for index in correspondences where previous.map({ mapping.correspondences[$0].hf != mapping.correspondences[index].hf }) ?? true {
                blocks += 1
                previous = index
            }
            if blocks > distinct {
                out.write("         rows: ")
                previous = nil
                for index in correspondences {
                    let block = mapping.correspondences[index].hf
                    if let previous, mapping.correspondences[previous].hf == block { continue }
                    if previous != nil { out.write(", ") }
                    out.write(block.tensor)
                    out.write("[")
                    out.write(block.rows.lowerBound)
                    out.write(":")
                    out.write(block.rows.upperBound)
                    out.write("]")
                    previous = index
                }
                out.endLine()
            }
            if mappingIndex.zeros[tensor] >= 0 {
                let zero = mapping.zeroFills[Int(mappingIndex.zeros[tensor])]
                out.line("      <- zeros rows \(zero.rows.lowerBound)..<\(zero.rows.upperBound) (vocabulary padding)")
            }
            if grid.parts > 1 {
                out.write("      chunks: ")
                out.write(grid.parts)
                out.write(" x ")
                out.write(shape: layout.chunk(item: first).sizes.array)
                out.write(" along axis ")
                out.write(grid.axis)
                out.write(":")
                for item in first..<(first + Int(grid.parts)) {
                    out.write(item == first ? " " : ", ")
                    out.write(layout.fileNames[layout.file(item: item)])
                    out.write("@")
                    out.write(layout.dataOffset(item: item))
                }
                out.endLine()
            }
        }
        out.line("objects: \(layout.objectItems.count) (common state, \(mapping.extraState.count) _extra_state)")
        out.line("files: " + zip(layout.fileNames, layout.fileSizes).map { "\($0) \(formatBytes($1))" }.joined(separator: ", "))
        out.line("keys: \(layout.keys.count); chunks: \(layout.tensorItemCount); " + plan.summary)
        out.line("tensor bytes: \(formatBytes(totalBytes)); expected peak memory: buffers \(formatBytes(Int64(bufferBytes))) + headers")
        out.line("args:")
        if case .object(let object)? = commonState["args"].map({ $0 }), case .dict(let entries)? = object.state {
            for entry in entries { out.line("  \(entry.key.stringValue ?? "?") = \(renderPickle(entry.value))") }
        }
        out.flush()
    }
}

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
        var texts: [String] = []
        var names: [(name: String, source: Int32)] = []
        for (tensor, spec) in mapping.megatronTensors.enumerated() {
            let grid = layout.grids[Int(gridOf[tensor])]
            let first = Int(grid.firstItem)
            let key = layout.keys[Int(grid.key)]
            let bytes = Int64(grid.parts) * layout.byteCount(item: first)
            let position = spec.prefix.isEmpty ? "" : " at \(spec.prefix) of"
            out.line("  \(spec.key)\(position) \(formatShape(spec.shape)) \(key.dtype) \(bytes) bytes -> \(layout.fileNames[layout.file(item: first)])@\(layout.dataOffset(item: first))")
            texts.removeAll(keepingCapacity: true)
            names.removeAll(keepingCapacity: true)
            for index in mappingIndex.correspondences(tensor) {
                let item = mapping.correspondences[index]
                let text = "\(item.hf.tensor)[\(item.hf.rows.lowerBound):\(item.hf.rows.upperBound)]"
                if texts.last != text { texts.append(text) }
                if !names.contains(where: { $0.name == item.hf.tensor }) { names.append((item.hf.tensor, correspondenceSources[index])) }
            }
            for (name, source) in names { out.line("      <- \(name) (\(fileNames[Int(source)]))") }
            if texts.count > names.count { out.line("         rows: " + texts.joined(separator: ", ")) }
            if mappingIndex.zeros[tensor] >= 0 {
                let zero = mapping.zeroFills[Int(mappingIndex.zeros[tensor])]
                out.line("      <- zeros rows \(zero.rows.lowerBound)..<\(zero.rows.upperBound) (vocabulary padding)")
            }
            if grid.parts > 1 {
                let places = (first..<(first + Int(grid.parts))).map { "\(layout.fileNames[layout.file(item: $0)])@\(layout.dataOffset(item: $0))" }
                let chunk = layout.chunk(item: first)
                out.line("      chunks: \(grid.parts) x \(formatShape(chunk.sizes)) along axis \(grid.axis): " + places.joined(separator: ", "))
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

import MegatronCheckpoint
import TensorCore
import WeightMapping

/// How one Megatron tensor (a layer or expert slice) is cut into chunks as a target's
/// tensor-parallel ranks hold it: whole, or `parts` equal chunks along one axis of its per-layer
/// shape (column-parallel: rows; SwiGLU: 2 × tp row fragments, gate parts then up parts;
/// row-parallel: columns; vocabulary rows after padding). A regular grid, so a chunk's box, rows
/// and rank are computed, never stored.
public struct TensorChunking: Sendable, Hashable {
    /// The axis of the per-layer shape the chunks cut; nil for one chunk.
    public let axis: Int?
    public let parts: Int
    public let parallel: Int

    /// The tensor-parallel rank that holds part `part`; nil when every rank holds the tensor whole.
    public func rank(part: Int) -> Int? { parts == 1 ? nil : part % parallel }

    public static func of(_ spec: MegatronTensorSpec, parallel: Int) throws -> TensorChunking {
        let whole = TensorChunking(axis: nil, parts: 1, parallel: parallel)
        guard parallel > 1, let split = spec.split, !spec.shape.isEmpty else { return whole }
        switch split {
        case .column, .vocab:
            let rows = spec.shape[0]
            let parts = spec.op.tensorParallelFragments * parallel
            guard rows % parts == 0 else {
                throw MappingError.cannotSplit(what: "`\(spec.name)`", reason: "its \(rows) rows do not divide into \(parts) tensor-parallel parts")
            }
            return TensorChunking(axis: 0, parts: parts, parallel: parallel)
        case .row:
            guard spec.shape.count >= 2 else { return whole }
            let columns = spec.shape[1]
            guard columns % parallel == 0 else {
                throw MappingError.cannotSplit(what: "`\(spec.name)`", reason: "its \(columns) columns do not divide into \(parallel) tensor-parallel parts")
            }
            return TensorChunking(axis: 1, parts: parallel, parallel: parallel)
        }
    }

    /// Rows (axis 0 of the per-layer shape) of part `part`, of a tensor with `rows` rows.
    public func rows(part: Int, of rows: Int) -> Range<Int> {
        guard axis == 0 else { return 0..<rows }
        let size = rows / parts
        return (part * size)..<((part + 1) * size)
    }

    /// Columns (axis 1) of part `part` when the chunks cut columns; nil otherwise.
    public func columns(part: Int, of shape: [Int]) -> Range<Int>? {
        guard axis == 1 else { return nil }
        let size = shape[1] / parts
        return (part * size)..<((part + 1) * size)
    }

    /// Adds the chunks of `spec` to a layout as one grid (under `key` when given: state chunked
    /// as the parameter is).
    func add(_ spec: MegatronTensorSpec, key: String? = nil, dtype: DType, to builder: inout TorchDistLayout.Builder) {
        let whole = spec.chunk
        builder.add(key: key ?? spec.key, dtype: dtype, size: spec.globalShape, origin: whole.offsets, extent: whole.sizes,
                    axis: axis.map { spec.prefix.count + $0 }, parts: parts)
    }
}

extension HFImport {
    /// A chunk of one Megatron tensor: its place in the key and the rank that holds it.
    public struct ChunkPlan: Sendable {
        var offsets: [Int]
        var sizes: [Int]
        /// The tensor-parallel rank that holds this chunk; nil when every rank holds it whole.
        var tensorParallelRank: Int?
    }

    /// The chunks a tensor is written in, one by one (for the legacy layout, which groups them per
    /// rank file); `TensorChunking` is the compact form.
    public static func chunkPlans(_ spec: MegatronTensorSpec, parallel: Int) throws -> [ChunkPlan] {
        let chunking = try TensorChunking.of(spec, parallel: parallel)
        let whole = spec.chunk
        guard let axis = chunking.axis else { return [ChunkPlan(offsets: whole.offsets, sizes: whole.sizes, tensorParallelRank: nil)] }
        let global = spec.prefix.count + axis
        let size = whole.sizes[global] / chunking.parts
        return (0..<chunking.parts).map { part in
            var offsets = whole.offsets, sizes = whole.sizes
            offsets[global] += part * size
            sizes[global] = size
            return ChunkPlan(offsets: offsets, sizes: sizes, tensorParallelRank: chunking.rank(part: part))
        }
    }
}

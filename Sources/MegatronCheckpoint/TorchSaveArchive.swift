import TensorCore
import TorchPickle
import TorchZip

/// `torch.save` archives as DCP items hold them: a stored zip under one top folder (`archive/`),
/// records 64-byte aligned, with `data.pkl` and, for tensors, the storage bytes in `data/0`.
public enum TorchSaveArchive {
    static let folder = "archive/"
    /// The small records torch writes besides `data.pkl` and the storages.
    static let formatRecords: [(String, [UInt8])] = [
        (".format_version", Array("1".utf8)), (".storage_alignment", Array("64".utf8)), ("byteorder", Array("little".utf8)),
    ]
    static let versionRecord: (String, [UInt8]) = ("version", Array("3\n".utf8))

    /// A whole archive for a pickled object (`torch.save(value)`): Megatron's ShardedObjects are
    /// `torch.save([value])`, and DCP bytes items hold such archives.
    public static func objectArchive(_ value: PickleValue) throws -> [UInt8] {
        try objectArchive(pickle: PickleWriter.write(value))
    }

    /// A whole archive whose `data.pkl` is `pickle`, as `torch.save` lays it out.
    public static func objectArchive(pickle: [UInt8]) throws -> [UInt8] {
        var records: [(String, [UInt8])] = [("data.pkl", pickle)]
        records.append(contentsOf: formatRecords)
        records.append(versionRecord)
        let layout = try ZipLayout(entries: records.map { (folder + $0.0, Int64($0.1.count)) })
        let sink = MemoryByteSink()
        let writer = ZipWriter(layout: layout, sink: sink)
        for (index, record) in records.enumerated() { try writer.write(entry: index, at: 0, bytes: record.1) }
        try writer.finish()
        return sink.bytes
    }

    /// The plan of a tensor archive: every record but `data/0` is known now; the tensor's bytes
    /// go to `layout.entries[dataEntry].dataRange` (relative to the item start) later.
    public struct TensorArchivePlan: Sendable {
        public let layout: ZipLayout
        public let dataEntry: Int
        /// Records other than `data/0`, by entry index.
        public let smallRecords: [(entry: Int, bytes: [UInt8])]
    }

    public static func tensorArchivePlan(dtype: DType, shape: [Int]) throws -> TensorArchivePlan {
        let pickle = try TorchSavedTensor.dataPickle(dtype: dtype, shape: shape)
        guard let bytes = ShapeArithmetic.byteCount(shape, dtype) else { preconditionFailure("no byte size") }
        var names: [(String, Int64)] = [(folder + "data.pkl", Int64(pickle.count))]
        var small: [(Int, [UInt8])] = [(0, pickle)]
        for record in formatRecords {
            small.append((names.count, record.1))
            names.append((folder + record.0, Int64(record.1.count)))
        }
        let dataEntry = names.count
        names.append((folder + "data/0", Int64(bytes)))
        small.append((names.count, versionRecord.1))
        names.append((folder + versionRecord.0, Int64(versionRecord.1.count)))
        return TensorArchivePlan(layout: try ZipLayout(entries: names), dataEntry: dataEntry, smallRecords: small)
    }
}

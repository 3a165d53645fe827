import Foundation
import Synchronization
import TensorCore
import TorchPickle
import TorchZip

/// The plan of one legacy rank file (`mp_rank_…/model_optim_rng.pt`): a `torch.save` zip whose
/// `data.pkl` is the top-level dict with the `model` state dict, and one storage record per model
/// tensor. Every record's place is known before any tensor byte is written, so the tensor bytes
/// can go straight to `tensorDataRange(i)` from any thread.
public struct LegacyRankFilePlan: Sendable {
    /// One entry of the `model` state dict: a tensor (stored in record `data/<i>`) or `None`.
    public enum ModelEntry: Sendable {
        case tensor(dtype: DType, shape: [Int])
        case none
    }

    public let rank: LegacyRank
    /// `mp_rank_…/model_optim_rng.pt`, relative to the iteration directory.
    public let relativePath: String
    public let layout: ZipLayout
    let smallRecords: [(entry: Int, bytes: [UInt8])]
    /// Model tensors in state-dict order: name, dtype, shape and zip entry of the storage.
    public let tensors: [(name: String, dtype: DType, shape: [Int], entry: Int)]

    /// `topLevel` in order, with the state dict at the entry whose value is nil (`model`).
    public init(rank: LegacyRank, pipelineSize: Int, expertSize: Int, topLevel: [(key: String, value: PickleValue?)],
                model: [(name: String, entry: ModelEntry)]) throws {
        self.rank = rank
        relativePath = rank.directoryName(pipelineSize: pipelineSize, expertSize: expertSize) + "/" + LegacyTorchCheckpoint.fileName
        var stateDict: [(key: PickleValue, value: PickleValue)] = []
        var tensors: [(name: String, dtype: DType, shape: [Int], bytes: Int64)] = []
        for (name, entry) in model {
            switch entry {
            case .none:
                stateDict.append((.string(name), .none))
            case .tensor(let dtype, let shape):
                guard let bytes = ShapeArithmetic.byteCount(shape, dtype) else {
                    throw MegatronCheckpointError.unsupportedDType(key: name, dtype: dtype.safetensorsName)
                }
                let value = try TorchSavedTensor.pickleValue(dtype: dtype, shape: shape, storageKey: String(tensors.count))
                stateDict.append((.string(name), value))
                tensors.append((name, dtype, shape, Int64(bytes)))
            }
        }
        let top = topLevel.map { (key: PickleValue.string($0.key), value: $0.value ?? .dict(stateDict)) }
        let pickle = PickleWriter.write(.dict(top))
        // Records in the order torch.save writes them; the folder is the file's stem, as torch names it.
        let folder = "model_optim_rng/"
        var names: [(String, Int64)] = [(folder + "data.pkl", Int64(pickle.count))]
        var small: [(Int, [UInt8])] = [(0, pickle)]
        for record in TorchSaveArchive.formatRecords {
            small.append((names.count, record.1))
            names.append((folder + record.0, Int64(record.1.count)))
        }
        var placed: [(name: String, dtype: DType, shape: [Int], entry: Int)] = []
        for (index, tensor) in tensors.enumerated() {
            placed.append((tensor.name, tensor.dtype, tensor.shape, names.count))
            names.append((folder + "data/\(index)", tensor.bytes))
        }
        small.append((names.count, TorchSaveArchive.versionRecord.1))
        names.append((folder + TorchSaveArchive.versionRecord.0, Int64(TorchSaveArchive.versionRecord.1.count)))
        layout = try ZipLayout(entries: names)
        smallRecords = small
        self.tensors = placed
    }

    /// Where tensor `index`'s bytes go in the file.
    public func tensorDataRange(_ index: Int) -> ByteRange { layout.entries[tensors[index].entry].dataRange }

    public var fileSize: Int64 { layout.totalSize }
}

/// Writes the rank files of a legacy checkpoint: headers and `data.pkl` here, tensor bytes by
/// the caller at each plan's `tensorDataRange` (reported back with their CRC-32 through
/// `recordData`). Files appear under their names on `finish()`; `discard()` removes them.
public final class LegacyTorchWriter: Sendable {
    public let plans: [LegacyRankFilePlan]
    /// The rank files, nil for those kept from an interrupted run (`keeping`): not written.
    public let files: [AtomicOutputFile?]
    private let archives: [ZipWriter?]
    private let finished: Mutex<Set<Int>>

    /// Creates `directory/mp_rank_…/` for every plan and opens each file under a temporary name,
    /// but those in `keeping` (already complete there, kept by a resumed run).
    public init(directory: String, plans: [LegacyRankFilePlan], keeping: Set<Int> = []) throws {
        self.plans = plans
        var files: [AtomicOutputFile?] = []
        var archives: [ZipWriter?] = []
        for (index, plan) in plans.enumerated() {
            guard !keeping.contains(index) else {
                files.append(nil)
                archives.append(nil)
                continue
            }
            let path = (directory as NSString).appendingPathComponent(plan.relativePath)
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            let file = try AtomicOutputFile(path: path)
            let archive = ZipWriter(layout: plan.layout, sink: file, path: path, name: plan.relativePath)
            for record in plan.smallRecords { try archive.write(entry: record.entry, at: 0, bytes: record.bytes) }
            files.append(file)
            archives.append(archive)
        }
        self.files = files
        self.archives = archives
        finished = Mutex(keeping)
    }

    /// The files as the executor's sinks (a kept file's sink refuses writes: none are planned).
    public var sinks: [any ByteSink] {
        files.indices.map { index -> any ByteSink in files[index] ?? KeptFileSink(name: plans[index].relativePath) }
    }

    /// Reports `count` bytes written at `offset` inside tensor `tensor` of file `file`, with their CRC-32.
    public func recordData(file: Int, tensor: Int, at offset: Int64, count: Int64, crc: UInt32) throws {
        guard let archive = archives[file] else { preconditionFailure("data for \(plans[file].relativePath), which was kept") }
        try archive.recordPiece(entry: plans[file].tensors[tensor].entry, at: offset, count: count, crc: crc)
    }

    /// Completes rank file `file`'s archive and publishes it, while other files are still being
    /// written. Throws if any of its tensors is incomplete.
    public func finishFile(_ file: Int) throws {
        guard let output = files[file], let archive = archives[file], finished.withLock({ $0.insert(file).inserted }) else { return }
        try archive.finish()
        try output.extend(to: plans[file].fileSize)
        try output.publish()
    }

    /// Completes every archive not completed yet and publishes the files. Throws (and removes
    /// the unpublished ones) if any tensor is incomplete.
    public func finish() throws {
        do {
            for file in files.indices { try finishFile(file) }
        } catch {
            discard()
            throw error
        }
    }

    public func discard() { files.forEach { $0?.discard() } }
}

import Foundation
import TensorCore
import TorchPickle
import TorchZip

/// The position of one rank file of a legacy checkpoint: `mp_rank_{tp:02d}[_{pp:03d}][_{ep:03d}]`
/// (the pipeline part only when the pipeline size is > 1, the expert part only when the
/// expert-parallel size is > 1). Python: `megatron.training.checkpointing.get_checkpoint_name`.
public struct LegacyRank: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var tensor: Int
    public var pipeline: Int
    public var expert: Int

    public init(tensor: Int, pipeline: Int = 0, expert: Int = 0) {
        self.tensor = tensor
        self.pipeline = pipeline
        self.expert = expert
    }

    /// The directory name for this rank in a layout with the given pipeline/expert sizes.
    public func directoryName(pipelineSize: Int, expertSize: Int) -> String {
        var name = String(format: "mp_rank_%02d", tensor)
        if pipelineSize > 1 { name += String(format: "_%03d", pipeline) }
        if expertSize > 1 { name += String(format: "_%03d", expert) }
        return name
    }

    /// The numbers of a rank directory name (1: tp; 2: tp and pp, or tp and ep; 3: all: the name
    /// alone cannot tell pp from ep), or nil if it is not one. Fields are zero-padded to at least
    /// 2 (tp) and 3 digits, as Python's `{:02d}`/`{:03d}` writes them.
    static func parse(_ name: String) -> (numbers: [Int], name: String)? {
        guard name.hasPrefix("mp_rank_") else { return nil }
        let fields = name.dropFirst("mp_rank_".count).split(separator: "_", omittingEmptySubsequences: false)
        guard (1...3).contains(fields.count) else { return nil }
        var numbers: [Int] = []
        for (index, field) in fields.enumerated() {
            // (Ranks beyond 99999 are not Megatron's: they are refused before any arithmetic on them.)
            guard field.count >= (index == 0 ? 2 : 3), field.allSatisfy({ $0.isASCII && $0.isNumber }), let value = Int(field),
                value < 100_000
            else { return nil }
            numbers.append(value)
        }
        return (numbers, name)
    }

    public static func < (lhs: LegacyRank, rhs: LegacyRank) -> Bool {
        (lhs.pipeline, lhs.expert, lhs.tensor) < (rhs.pipeline, rhs.expert, rhs.tensor)
    }

    public var description: String { "tp \(tensor), pp \(pipeline), ep \(expert)" }
}

/// A tensor of a legacy rank file: its dtype and local shape, and where its bytes are in the file.
public struct LegacyTensor: Sendable {
    public let dtype: DType
    public let shape: [Int]
    /// Row-major runs of the tensor's bytes inside the rank file (one run when contiguous).
    public let runs: [ChunkData.Run]
}

/// One entry of a rank file's `model` state dict.
public enum LegacyStateValue: Sendable {
    case tensor(LegacyTensor)
    /// `None`: what the local linear layers (and an empty Transformer Engine state) save as `_extra_state`.
    case none
    /// Anything else (a Transformer Engine `_extra_state` byte stream or tensor of FP8 metadata…), by kind.
    case other(String)
}

/// One `model_optim_rng.pt`: the rank it belongs to, its `model` state dict (names in file order)
/// and the other top-level entries (args, iteration, …) by name. Optimizer and RNG state are
/// listed but never interpreted.
public struct LegacyRankFile: Sendable {
    public let rank: LegacyRank
    public let path: String
    public let file: ReadOnlyFile
    public let model: [(name: String, value: LegacyStateValue)]
    /// Top-level entries other than `model`, in file order; those a conversion drops (optimizer,
    /// RNG, scheduler state) with the value `None`.
    public let topLevel: [(key: String, value: PickleValue)]

    /// The same file placed at `rank`.
    func at(_ rank: LegacyRank) -> LegacyRankFile {
        LegacyRankFile(rank: rank, path: path, file: file, model: model, topLevel: topLevel)
    }
}

/// A legacy Megatron checkpoint (`--ckpt-format torch`): one `torch.save` file per model-parallel
/// rank, each holding that rank's local state dict (tensor-parallel shards, stage-local layer
/// numbers, local expert ids). This type only reads the files and places nothing: which global
/// tensor a local entry belongs to is the mapping's business.
///
/// Every rank of the grid (tp × pp × ep, from the directory names) must be present; each file's
/// zip directory and `data.pkl` are parsed (nothing executed) and every tensor's storage must lie
/// inside its record.
public final class LegacyTorchCheckpoint: Sendable {
    public static let fileName = "model_optim_rng.pt"

    /// The iteration directory holding the `mp_rank_*` directories.
    public let directory: String
    public let folder: MegatronCheckpointFolder?
    public let tensorParallelSize: Int
    public let pipelineParallelSize: Int
    public let expertParallelSize: Int
    /// Sorted by pipeline stage, expert rank, tensor rank.
    public let ranks: [LegacyRankFile]

    public convenience init(path: String) throws {
        let folder = try MegatronCheckpointFolder(path: path)
        guard folder.format == .legacyTorch else {
            throw MegatronCheckpointError.notACheckpoint(path: path, reason: "not a legacy (--ckpt-format torch) checkpoint: found \(folder.format.rawValue)")
        }
        try self.init(directory: folder.directory, folder: folder)
    }

    public init(directory: String, folder: MegatronCheckpointFolder? = nil) throws {
        self.directory = directory
        self.folder = folder
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw MegatronCheckpointError.notACheckpoint(path: directory, reason: "cannot list the directory (\(error.localizedDescription))")
        }
        let parsed = names.compactMap(LegacyRank.parse).sorted { $0.name < $1.name }
        guard let first = parsed.first else {
            throw MegatronCheckpointError.notACheckpoint(path: directory, reason: "no mp_rank_* directories")
        }
        let fieldCount = first.numbers.count
        if let odd = parsed.first(where: { $0.numbers.count != fieldCount }) {
            throw MegatronCheckpointError.notACheckpoint(
                path: directory, reason: "rank directories `\(first.name)` and `\(odd.name)` have different name patterns")
        }
        // With two numbers, the second is the pipeline stage unless the args say the pipeline size
        // is 1; read it from the first file's args.
        let firstFile = try Self.readRankFile(path: Self.rankFilePath(directory, first.name), rank: LegacyRank(tensor: 0))
        let args = firstFile.topLevel.first { $0.key == "args" }?.value
        let pipelineArg = args?["pipeline_model_parallel_size"]?.intValue
        let secondIsPipeline = fieldCount == 3 || (fieldCount == 2 && (pipelineArg ?? 2) > 1)
        var ranks: [LegacyRank: String] = [:]
        for entry in parsed {
            var rank = LegacyRank(tensor: entry.numbers[0])
            if entry.numbers.count >= 2 {
                if secondIsPipeline { rank.pipeline = entry.numbers[1] } else { rank.expert = entry.numbers[1] }
            }
            if entry.numbers.count == 3 { rank.expert = entry.numbers[2] }
            ranks[rank] = entry.name
        }
        // The grid is what the names and the args describe, whichever is larger: trailing ranks
        // that are missing altogether (a partial copy) are then reported, not silently dropped.
        tensorParallelSize = max((ranks.keys.map(\.tensor).max() ?? 0) + 1, args?["tensor_model_parallel_size"]?.intValue ?? 1)
        pipelineParallelSize = max((ranks.keys.map(\.pipeline).max() ?? 0) + 1, secondIsPipeline ? pipelineArg ?? 1 : 1)
        let expertArg = fieldCount == 3 || (fieldCount == 2 && !secondIsPipeline) ? args?["expert_model_parallel_size"]?.intValue ?? 1 : 1
        expertParallelSize = max((ranks.keys.map(\.expert).max() ?? 0) + 1, expertArg)
        var files: [LegacyRankFile] = []
        for pipeline in 0..<pipelineParallelSize {
            for expert in 0..<expertParallelSize {
                for tensor in 0..<tensorParallelSize {
                    let rank = LegacyRank(tensor: tensor, pipeline: pipeline, expert: expert)
                    let expected = rank.directoryName(pipelineSize: fieldCount >= 2 && secondIsPipeline ? 2 : 1,
                                                      expertSize: fieldCount == 3 || (fieldCount == 2 && !secondIsPipeline) ? 2 : 1)
                    guard let name = ranks[rank] else {
                        throw MegatronCheckpointError.notACheckpoint(
                            path: directory,
                            reason: "rank \(rank) of the \(tensorParallelSize)×\(pipelineParallelSize)×\(expertParallelSize) (tp×pp×ep) grid is missing: no \(expected)/\(Self.fileName)")
                    }
                    files.append(name == first.name ? firstFile.at(rank) : try Self.readRankFile(path: Self.rankFilePath(directory, name), rank: rank))
                }
            }
        }
        self.ranks = files
    }

    /// The first rank file's `args` (an `argparse.Namespace`), if any.
    public var args: PickleValue? { ranks.first?.topLevel.first { $0.key == "args" }?.value }

    /// Top-level entries a conversion carries (with `model`); the others are dropped.
    static let keptTopLevel: Set<String> = ["args", "checkpoint_version", "iteration", "num_floating_point_operations_so_far"]

    /// Top-level entries that are not model weights and are dropped by a conversion (optimizer,
    /// RNG and scheduler state), by name.
    public var trainingStateKeys: [String] {
        var keys = Array(Set(ranks.flatMap { $0.topLevel.map(\.key) }).subtracting(Self.keptTopLevel)).sorted()
        // The distributed optimizer saves its state beside each rank file, not inside it.
        let optimizerFiles = ranks.filter { rank in
            FileManager.default.fileExists(atPath: ((rank.path as NSString).deletingLastPathComponent as NSString)
                .appendingPathComponent(Self.distributedOptimizerFileName))
        }.count
        if optimizerFiles > 0 { keys.append("\(Self.distributedOptimizerFileName) (\(optimizerFiles) rank file(s))") }
        return keys
    }

    /// The distributed optimizer's per-rank state file in the legacy format.
    public static let distributedOptimizerFileName = "distrib_optim.pt"

    static func rankFilePath(_ directory: String, _ name: String) -> String {
        ((directory as NSString).appendingPathComponent(name) as NSString).appendingPathComponent(fileName)
    }

    /// Parses one rank file: its zip directory, `data.pkl`, and each model tensor's storage.
    static func readRankFile(path: String, rank: LegacyRank) throws -> LegacyRankFile {
        guard FileManager.default.fileExists(atPath: path) else {
            throw MegatronCheckpointError.notACheckpoint(path: (path as NSString).deletingLastPathComponent, reason: "no \(fileName) for rank \(rank)")
        }
        let file = try ReadOnlyFile(path: path)
        func fail(_ name: String, _ reason: String, offset: Int64 = 0) -> MegatronCheckpointError {
            .invalidItem(file: path, key: name, offset: offset, reason: reason)
        }
        let archive: ZipArchive
        do {
            archive = try ZipArchive(file: file, range: ByteRange(offset: 0, count: file.size), name: path)
        } catch let error as ZipError {
            throw fail(fileName, "not a torch.save archive: \(error)")
        }
        guard let pickleEntry = archive.record("data.pkl") else {
            throw fail(fileName, "not a torch.save archive: no <folder>/data.pkl record")
        }
        let value: PickleValue
        do {
            value = try PickleReader.read(try archive.contents(of: pickleEntry), globals: CheckpointGlobals.policy)
        } catch let error as ZipError {
            throw fail("data.pkl", "\(error)")
        } catch {
            throw fail("data.pkl", "\(error)", offset: pickleEntry.localHeaderOffset)
        }
        guard let entries = value.dictEntries else { throw fail("data.pkl", "the saved object is a \(value.kindName), not a dict") }
        // `args`, `iteration` and `checkpoint_version` are those of a common state.
        if let reason = TorchDistCheckpoint.commonStateProblem(value) {
            throw fail("data.pkl", reason, offset: pickleEntry.localHeaderOffset)
        }
        var topLevel: [(key: String, value: PickleValue)] = []
        var model: PickleValue?
        for entry in entries {
            guard let key = entry.key.stringValue else { throw fail("data.pkl", "a top-level key is a \(entry.key.kindName)") }
            if key == "model" {
                model = entry.value
            } else if key.hasPrefix("model"), Int(key.dropFirst(5)) != nil {
                throw MegatronCheckpointError.unsupportedFormat(
                    path: path, format: "virtual pipeline stages (`\(key)`)",
                    hint: "load it in Megatron-LM without --num-layers-per-virtual-pipeline-stage and save it again")
            } else if Self.keptTopLevel.contains(key) {
                topLevel.append((key, entry.value))
            } else {
                // Optimizer, RNG and scheduler state are never converted: only their names are
                // kept (their value trees can be large), so memory does not grow with them.
                topLevel.append((key, .none))
            }
        }
        guard let model, let modelEntries = model.dictEntries else {
            let keys = topLevel.prefix(8).map { MessageText.quoted($0.key) } + (topLevel.count > 8 ? ["…"] : [])
            throw fail("data.pkl", "no `model` state dict (top-level keys: \(keys.joined(separator: ", ")))")
        }
        var state: [(name: String, value: LegacyStateValue)] = []
        var seen = Set<String>()
        for entry in modelEntries {
            guard let name = entry.key.stringValue else { throw fail("data.pkl", "a model state-dict key is a \(entry.key.kindName)") }
            guard seen.insert(name).inserted else { throw fail(name, "listed twice in the model state dict") }
            if TorchSavedTensor.isTensor(entry.value) {
                let saved = try TorchSavedTensor(value: entry.value, context: path, name: name)
                guard let elementSize = TorchDistCheckpoint.torchElementSize(saved.dtype) else {
                    throw MegatronCheckpointError.unsupportedDType(key: name, dtype: saved.dtype.safetensorsName)
                }
                guard let record = archive.record("data/" + saved.storageKey) else {
                    throw fail(name, "no storage record `data/\(saved.storageKey)` in the archive")
                }
                let storage: ByteRange
                do {
                    storage = try archive.storedDataRange(of: record)
                } catch let error as ZipError {
                    throw fail(name, "storage record `data/\(saved.storageKey)`: \(error)", offset: record.localHeaderOffset)
                }
                let runs = try TorchDistCheckpoint.runs(of: saved, elementSize: elementSize, storage: storage) {
                    fail(name, $0, offset: storage.offset)
                }
                state.append((name, .tensor(LegacyTensor(dtype: saved.dtype, shape: saved.shape, runs: runs))))
            } else if entry.value.isNone {
                state.append((name, .none))
            } else {
                state.append((name, .other(entry.value.kindName)))
            }
        }
        return LegacyRankFile(rank: rank, path: path, file: file, model: state, topLevel: topLevel)
    }
}

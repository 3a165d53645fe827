import Execution
import Foundation
@testable import MegatronCheckpoint
import NembridgeKit
import NembridgeTestSupport
import SafetensorsFormat
import TensorCore
import TorchPickle
import TorchZip
import WeightMapping

/// One kind of input and the readers and planners it is fed to.
protocol FuzzTarget {
    /// Also the folder name of its regression corpus (`Tests/FuzzCorpus/<name>/`).
    var name: String { get }
    /// Mutants per `swift test` run: what keeps the target at a few seconds in a debug build.
    var defaultIterations: Int { get }
    /// The committed fixtures this target mutates (`scratch` for anything it must build first).
    func seeds(scratch: String) throws -> [MutationFuzzer.Input]
    /// A mutant of `input`, or nil to skip it (out of this target's scope).
    func mutate(_ input: [UInt8], _ random: inout MutationFuzzer.Random, pool: [[UInt8]]) -> [UInt8]?
    /// Feeds `input` to the real code; each probe's outcome is judged on its own.
    func run(_ input: MutationFuzzer.Input, scratch: String) -> [Result<Void, any Error>]
}

enum FuzzTargets {
    /// Fresh targets (the legacy one caches what it builds).
    static func all() -> [any FuzzTarget] {
        [SafetensorsTarget(), PickleTarget(), ZipTarget(), DCPMetadataTarget(), DCPDataTarget(), ConfigTarget(), LegacyTarget()]
    }
    static let names = all().map(\.name)
    static func named(_ name: String) -> any FuzzTarget { all().first { $0.name == name }! }

    static func files(under relative: String, suffix: String) throws -> [String] {
        let root = TestCheckpoints.path(relative)
        guard let enumerator = FileManager.default.enumerator(atPath: root) else { return [] }
        return enumerator.compactMap { $0 as? String }.filter { $0.hasSuffix(suffix) }.sorted()
            .map { (root as NSString).appendingPathComponent($0) }
    }

    static func probe(_ body: () throws -> Void) -> Result<Void, any Error> { Result { try body() } }

    static func write(_ bytes: [UInt8], to path: String) throws {
        guard FileManager.default.createFile(atPath: path, contents: Data(bytes)) else {
            throw FileIOError(path: path, operation: .write, errno: nil)
        }
    }

    /// A stable small number from an input, to vary options without randomness in `run`.
    static func variant(_ bytes: [UInt8], _ count: Int) -> Int {
        Int(bytes.reduce(UInt64(0xCBF2_9CE4_8422_2325)) { ($0 ^ UInt64($1)) &* 0x100_0000_01B3 } % UInt64(count))
    }
}

// MARK: - safetensors headers

/// Whole safetensors files (the malformed corpus and the tiny models), edited in the header.
struct SafetensorsTarget: FuzzTarget {
    let name = "safetensors"
    let defaultIterations = 1500

    func seeds(scratch: String) throws -> [MutationFuzzer.Input] {
        try FuzzTargets.files(under: "", suffix: ".safetensors").filter { !$0.contains("/FuzzCorpus/") }
            .map { MutationFuzzer.Input(context: "", bytes: try TestCheckpoints.readFile($0)) }
    }

    func mutate(_ input: [UInt8], _ random: inout MutationFuzzer.Random, pool: [[UInt8]]) -> [UInt8]? {
        var header = input.count
        if input.count >= 8 {
            let length = input.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self).littleEndian }
            header = Int(min(UInt64(input.count), 8 + min(length, UInt64(input.count))))
        }
        let regions = [0..<min(8, input.count), 0..<header]
        if random.chance(60), let text = String(validating: input[min(8, input.count)..<header], as: UTF8.self) {
            // Edit the JSON text: numbers to edge values, names to hostile text.
            let edited = MutationFuzzer.mutateJSONText(text, &random, capIntegers: nil)
            var bytes = withUnsafeBytes(of: UInt64(edited.utf8.count).littleEndian, Array.init) + Array(edited.utf8)
            bytes += input[header...]
            if random.chance(20) { bytes = MutationFuzzer.mutateBytes(bytes, &random, pool: pool, regions: [0..<8]) }
            return bytes
        }
        return MutationFuzzer.mutateBytes(input, &random, pool: pool, regions: regions)
    }

    func run(_ input: MutationFuzzer.Input, scratch: String) -> [Result<Void, any Error>] {
        var outcomes = [FuzzTargets.probe {
            let header = try SafetensorsHeader.parse(fileBytes: input.bytes, file: "fuzz.safetensors")
            for tensor in header.tensors { _ = ShapeArithmetic.byteCount(tensor.shape, tensor.dtype) }
        }]
        if FuzzTargets.variant(input.bytes, 8) == 0 {
            // Through the file reader and the inspect report, as `nembridge inspect FILE` reads it.
            outcomes.append(FuzzTargets.probe {
                let path = (scratch as NSString).appendingPathComponent("fuzz.safetensors")
                try FuzzTargets.write(input.bytes, to: path)
                _ = try InspectReport.inspect(path: path).text(limit: 20)
            })
        }
        return outcomes
    }
}

// MARK: - pickles

/// Pickles of every kind the fixtures hold, read with the checkpoint allow-list and interpreted
/// as DCP metadata and as a saved tensor.
struct PickleTarget: FuzzTarget {
    let name = "pickle"
    let defaultIterations = 1500

    func seeds(scratch: String) throws -> [MutationFuzzer.Input] {
        var seeds = try FuzzTargets.files(under: "pickles", suffix: ".pkl").map { try TestCheckpoints.readFile($0) }
        seeds += try FuzzTargets.files(under: "megatron", suffix: ".metadata").map { try TestCheckpoints.readFile($0) }
        for path in try FuzzTargets.files(under: "zips", suffix: ".pt") {
            let archive = try ZipArchive(path: path)
            if let entry = archive.record("data.pkl") { seeds.append(try archive.contents(of: entry)) }
        }
        return seeds.filter { $0.count < 65536 }.map { MutationFuzzer.Input(context: "", bytes: $0) }
    }

    func mutate(_ input: [UInt8], _ random: inout MutationFuzzer.Random, pool: [[UInt8]]) -> [UInt8]? {
        MutationFuzzer.mutatePickle(input, &random, pool: pool)
    }

    func run(_ input: MutationFuzzer.Input, scratch: String) -> [Result<Void, any Error>] {
        [
            FuzzTargets.probe { _ = try PickleReader.read(input.bytes, globals: CheckpointGlobals.policy) },
            FuzzTargets.probe { _ = try DCPMetadata(pickle: input.bytes, file: "fuzz/.metadata") },
            FuzzTargets.probe { _ = try TorchSavedTensor(dataPickle: input.bytes, context: "fuzz.pt") },
            FuzzTargets.probe { _ = try PickleReader.instructions(input.bytes) },
        ]
    }
}

// MARK: - zips

/// `torch.save` archives (and the hand-made zip corpus): the directory walk, every entry's
/// contents and CRC, and the archive read as a checkpoint's `common.pt`.
struct ZipTarget: FuzzTarget {
    let name = "zip"
    let defaultIterations = 1500

    func seeds(scratch: String) throws -> [MutationFuzzer.Input] {
        var paths = try FuzzTargets.files(under: "zips", suffix: ".pt") + FuzzTargets.files(under: "zips", suffix: ".zip")
        paths.append(TestCheckpoints.path("megatron/mcore-metadata-0.15/iter_0000001/common.pt"))
        return try paths.map { MutationFuzzer.Input(context: "", bytes: try TestCheckpoints.readFile($0)) }
    }

    func mutate(_ input: [UInt8], _ random: inout MutationFuzzer.Random, pool: [[UInt8]]) -> [UInt8]? {
        let regions = MutationFuzzer.zipRegions(input)
        return MutationFuzzer.mutateBytes(input, &random, pool: pool, regions: random.chance(85) ? regions : [])
    }

    func run(_ input: MutationFuzzer.Input, scratch: String) -> [Result<Void, any Error>] {
        let directory = (scratch as NSString).appendingPathComponent("zip-checkpoint")
        let path = (directory as NSString).appendingPathComponent("common.pt")
        let written = FuzzTargets.probe {
            if !FileManager.default.fileExists(atPath: directory) {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                let empty = DCPMetadata(tensors: [], bytesItems: [], storage: [:])
                try FuzzTargets.write(try empty.pickleBytes(), to: (directory as NSString).appendingPathComponent(".metadata"))
            }
            try FuzzTargets.write(input.bytes, to: path)
        }
        guard case .success = written else { return [written] }
        return [
            FuzzTargets.probe {
                let archive = try ZipArchive(path: path)
                var first: (any Error)?
                for entry in archive.entries {
                    do {
                        if entry.dataRange.count <= 1 << 20 { _ = try archive.contents(of: entry) } else { try archive.verifyCRC(of: entry) }
                    } catch {
                        first = first ?? error
                    }
                }
                if let entry = archive.record("data.pkl") {
                    _ = try TorchSavedTensor(dataPickle: try archive.contents(of: entry), context: path)
                }
                if let first { throw first }
            },
            FuzzTargets.probe { _ = try TorchDistCheckpoint(directory: directory).commonState() },
        ]
    }
}

// MARK: - DCP .metadata and .distcp files

/// Each Megatron/DCP fixture with its `.metadata` mutated: open (every check of `init`), every
/// tensor's whole box, every object, the common state and the inspect report.
struct DCPMetadataTarget: FuzzTarget {
    let name = "dcp-metadata"
    let defaultIterations = 250

    static let fixtures: [(context: String, path: String)] = [
        ("gpt-dense-ws1", "megatron/gpt-dense-ws1"), ("gpt-dense-tp2", "megatron/gpt-dense-tp2"),
        ("gpt-moe-ep2", "megatron/gpt-moe-ep2"), ("mcore-metadata-0.15", "megatron/mcore-metadata-0.15"),
        ("dcp-zstd-plain", "megatron/dcp-zstd/plain"), ("dcp-zstd-zstd", "megatron/dcp-zstd/zstd"),
    ]

    func seeds(scratch: String) throws -> [MutationFuzzer.Input] {
        try Self.fixtures.map { fixture in
            let folder = try MegatronCheckpointFolder(path: TestCheckpoints.path(fixture.path))
            return MutationFuzzer.Input(context: fixture.context, bytes: try TestCheckpoints.readFile(folder.metadataPath))
        }
    }

    func mutate(_ input: [UInt8], _ random: inout MutationFuzzer.Random, pool: [[UInt8]]) -> [UInt8]? {
        MutationFuzzer.mutatePickle(input, &random, pool: pool)
    }

    func run(_ input: MutationFuzzer.Input, scratch: String) -> [Result<Void, any Error>] {
        Self.run(input.bytes, as: ".metadata", of: input.context, scratch: scratch)
    }

    /// Writes `bytes` as `file` of a scratch copy of the fixture `context`, then reads it all.
    static func run(_ bytes: [UInt8], as file: String, of context: String, scratch: String) -> [Result<Void, any Error>] {
        guard let fixture = fixtures.first(where: { $0.context == context }) else {
            return [.failure(FixtureMissing(context: context))]
        }
        let directory = (scratch as NSString).appendingPathComponent("dcp-\(fixture.context)-\(file)")
        let prepared = FuzzTargets.probe {
            if !FileManager.default.fileExists(atPath: directory) {
                let folder = try MegatronCheckpointFolder(path: TestCheckpoints.path(fixture.path))
                try FileManager.default.copyItem(atPath: folder.directory, toPath: directory)
            }
            try FuzzTargets.write(bytes, to: (directory as NSString).appendingPathComponent(file))
        }
        guard case .success = prepared else { return [prepared] }
        var outcomes: [Result<Void, any Error>] = []
        if file == ".metadata" {
            // Read through a 61-byte sliding window (a 59 MB .metadata is read 1 MiB at a time),
            // the bytes end as they do in memory: an argument across the window's edge reads the same.
            outcomes.append(FuzzTargets.probe { try WindowedMetadataRead.check(bytes, path: (directory as NSString).appendingPathComponent(file)) })
        }
        let opened = Result { try TorchDistCheckpoint(directory: directory) }
        guard case .success(let checkpoint) = opened else { return [opened.map { _ in }] }
        for (key, tensor) in checkpoint.metadata.tensors.prefix(64) {
            outcomes.append(FuzzTargets.probe {
                let bytes = try checkpoint.boxByteCount(key: key, sizes: tensor.size)
                _ = try checkpoint.boxPieces(key: key, offsets: tensor.size.map { _ in 0 }, sizes: tensor.size)
                if bytes <= 1 << 22 { _ = try checkpoint.readTensor(key: key) }
            })
        }
        for key in checkpoint.objectKeys.prefix(64) {
            outcomes.append(FuzzTargets.probe { _ = try checkpoint.objectValue(key: key) })
        }
        outcomes.append(FuzzTargets.probe { _ = try checkpoint.commonState() })
        outcomes.append(FuzzTargets.probe { _ = try MegatronInspectReport.inspect(path: directory).text(limit: 20) })
        return outcomes
    }
}

/// The same fixtures with a data file mutated instead (`<fixture>/<file>` contexts): the item
/// archives at their offsets, their `data.pkl`, storages and zstd frames.
struct DCPDataTarget: FuzzTarget {
    let name = "distcp"
    let defaultIterations = 200
    static let files = [
        ("gpt-dense-ws1", "__0_0.distcp"), ("gpt-moe-ep2", "__1_0.distcp"), ("mcore-metadata-0.15", "__0_0.distcp"),
        ("mcore-metadata-0.15", "common.pt"), ("dcp-zstd-zstd", "__0_0.distcp"),
    ]

    func seeds(scratch: String) throws -> [MutationFuzzer.Input] {
        try Self.files.map { context, file in
            let fixture = DCPMetadataTarget.fixtures.first { $0.context == context }!
            let folder = try MegatronCheckpointFolder(path: TestCheckpoints.path(fixture.path))
            return MutationFuzzer.Input(context: context + "/" + file,
                                        bytes: try TestCheckpoints.readFile((folder.directory as NSString).appendingPathComponent(file)))
        }
    }

    func mutate(_ input: [UInt8], _ random: inout MutationFuzzer.Random, pool: [[UInt8]]) -> [UInt8]? {
        let regions = MutationFuzzer.zipRegions(input)
        return MutationFuzzer.mutateBytes(input, &random, pool: pool, regions: random.chance(85) ? regions : [])
    }

    func run(_ input: MutationFuzzer.Input, scratch: String) -> [Result<Void, any Error>] {
        let parts = input.context.split(separator: "/", maxSplits: 1).map(String.init)
        guard parts.count == 2 else { return [.failure(FixtureMissing(context: input.context))] }
        return DCPMetadataTarget.run(input.bytes, as: parts[1], of: parts[0], scratch: scratch)
    }
}

/// The fast `.metadata` reader over a file, through a small window, against the same reader over
/// the bytes in memory: the same metadata, the same fault, or the same hand-over.
enum WindowedMetadataRead {
    /// Not an input error: the two reads disagree (reported by the fuzzer as a finding).
    struct Disagreement: Error, CustomStringConvertible {
        var description: String
    }

    enum Outcome: Equatable {
        case metadata(fqns: [String], tensors: [DCPTensorMetadata], bytesItems: [String], storage: DCPStorageTable, version: String?, root: String)
        case fault(String)
        case unusual(String)

        init(_ read: () throws(DCPMetadataReader.Stop) -> DCPMetadata) {
            do throws(DCPMetadataReader.Stop) {
                let metadata = try read()
                self = .metadata(fqns: metadata.tensors.map(\.fqn), tensors: metadata.tensors.map(\.metadata), bytesItems: metadata.bytesItems,
                                 storage: metadata.storage, version: metadata.version, root: metadata.rootClass)
            } catch {
                switch error {
                case .pickle(let fault): self = .fault("\(fault)")
                case .unusual(let reason): self = .unusual(reason)
                case .file(let error): self = .fault("\(error)")
                }
            }
        }

        var kind: String {
            switch self {
            case .metadata: "metadata"
            case .fault(let text): "fault \(text)"
            case .unusual(let reason): "hand-over (\(reason))"
            }
        }
    }

    static func check(_ bytes: [UInt8], path: String) throws {
        let file = try ReadOnlyFile(path: path)
        let windowed = Outcome { () throws(DCPMetadataReader.Stop) in
            try DCPMetadataReader.read(file: file, globals: CheckpointGlobals.policy, windowSize: 61)
        }
        let inMemory = bytes.withUnsafeBytes { buffer in
            Outcome { () throws(DCPMetadataReader.Stop) in try DCPMetadataReader.read(buffer, globals: CheckpointGlobals.policy) }
        }
        guard windowed == inMemory else {
            throw Disagreement(description: "the windowed read ends in \(windowed.kind), the in-memory read in \(inMemory.kind)")
        }
    }
}

struct FixtureMissing: Error, CustomStringConvertible {
    var context: String
    var description: String { "no fixture for context `\(context)`" }
}

// MARK: - config.json (and the shard index)

/// Each HF fixture with its `config.json` (or `model.safetensors.index.json`) mutated, opened as
/// a folder and planned for import (table choice, config → model, mapping plan, chunk plans, the
/// legacy plan for some mutants, the dry-run text).
///
/// Numbers in mutated configs stay within 0...4096 (unless the seed has them): bounding config
/// values by the tensors that exist (`num_hidden_layers` = 2^31 plans 2^31 layers;
/// `n_routed_experts` = -1 traps on `0..<-1` in `MappingPlan`) is the planner's part, done
/// separately.
struct ConfigTarget: FuzzTarget {
    let name = "config"
    let defaultIterations = 120
    static let integerCap = 4096

    func seeds(scratch: String) throws -> [MutationFuzzer.Input] {
        var seeds = try TestCheckpoints.hfFolders.map { folder in
            MutationFuzzer.Input(context: (folder as NSString).deletingLastPathComponent,
                                 bytes: try TestCheckpoints.readFile(TestCheckpoints.path(folder + "/config.json")))
        }
        seeds.append(MutationFuzzer.Input(
            context: "llama3-sharded-tiny/index",
            bytes: try TestCheckpoints.readFile(TestCheckpoints.path("llama3-sharded-tiny/hf/model.safetensors.index.json"))))
        return seeds
    }

    func mutate(_ input: [UInt8], _ random: inout MutationFuzzer.Random, pool: [[UInt8]]) -> [UInt8]? {
        guard let text = String(validating: input, as: UTF8.self) else { return nil }
        var mutant = Array(MutationFuzzer.mutateJSONText(text, &random, capIntegers: Self.integerCap).utf8)
        if random.chance(15) { mutant = MutationFuzzer.mutateBytes(mutant, &random, pool: pool) }
        // Out of scope: numbers outside 0...cap (see above).
        if MutationFuzzer.hasNumber(outside: 0...Double(Self.integerCap), mutant, comparedTo: input) { return nil }
        return mutant
    }

    func run(_ input: MutationFuzzer.Input, scratch: String) -> [Result<Void, any Error>] {
        let isIndex = input.context.hasSuffix("/index")
        let fixture = isIndex ? String(input.context.dropLast("/index".count)) : input.context
        let folder = (scratch as NSString).appendingPathComponent("hf-\(fixture)\(isIndex ? "-index" : "")")
        let prepared = FuzzTargets.probe {
            let source = TestCheckpoints.path(fixture + "/hf")
            if !FileManager.default.fileExists(atPath: folder) {
                try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
                for name in try FileManager.default.contentsOfDirectory(atPath: source) {
                    try FileManager.default.createSymbolicLink(
                        atPath: (folder as NSString).appendingPathComponent(name), withDestinationPath: (source as NSString).appendingPathComponent(name))
                }
            }
            let target = (folder as NSString).appendingPathComponent(isIndex ? HFCheckpointFolder.indexFileName : "config.json")
            if FileManager.default.fileExists(atPath: target) { try FileManager.default.removeItem(atPath: target) }
            try FuzzTargets.write(input.bytes, to: target)
        }
        guard case .success = prepared else { return [prepared] }
        return [FuzzTargets.probe {
            var options = HFImport.Options()
            switch FuzzTargets.variant(input.bytes, 4) {
            case 1: options.tensorParallel = 2
            case 2: options.format = .torch
            case 3: options.format = .torch; options.pipelineParallel = 2
            default: break
            }
            let plan = try HFImport(source: folder, output: folder + "-out", options: options)
            _ = plan.planText()
        }]
    }
}

// MARK: - legacy rank files

/// A legacy rank file (`mp_rank_00/model_optim_rng.pt`, written by `import --ckpt-format torch`
/// from a tiny model) whose `data.pkl` is mutated, the archive rebuilt around it with the same
/// storages: opened as a legacy checkpoint and placed through the mapping.
final class LegacyTarget: FuzzTarget {
    let name = "legacy"
    let defaultIterations = 400
    static let models = ["llama3-tiny", "nemotron-h-tiny"]

    /// Per model: the rank file's records with data.pkl moved last (so the storages before it
    /// keep their offsets and bytes whatever its size), those bytes, and the resolved model.
    struct Source {
        var records: [(name: String, size: Int64, crc: UInt32)]
        var prefix: [UInt8]
        var pickle: [UInt8]
        var model: ResolvedModel
    }
    private var sources: [String: Source] = [:]

    func seeds(scratch: String) throws -> [MutationFuzzer.Input] {
        try Self.models.map { model in MutationFuzzer.Input(context: model, bytes: try source(model, scratch: scratch).pickle) }
    }

    func source(_ model: String, scratch: String) throws -> Source {
        if let known = sources[model] { return known }
        let output = (scratch as NSString).appendingPathComponent("legacy-seed-\(model)")
        var options = HFImport.Options()
        options.format = .torch
        try HFImport(source: TestCheckpoints.path(model + "/hf"), output: output, options: options)
            .run(executor: MoveExecutor(workers: 1, chunkBytes: 1 << 16))
        let archive = try ZipArchive(path: output + "/release/mp_rank_00/" + LegacyTorchCheckpoint.fileName)
        guard let pickleEntry = archive.record("data.pkl") else { throw FixtureMissing(context: model) }
        let others = archive.entries.filter { $0.name != pickleEntry.name }
        let ordered = others + [pickleEntry]
        let layout = try ZipLayout(entries: ordered.map { ($0.name, $0.uncompressedSize) })
        var prefix = [UInt8](repeating: 0, count: Int(layout.entries.last!.localHeaderOffset))
        for (index, entry) in others.enumerated() {
            let header = layout.localHeaderBytes(entry: index, crc: entry.crc32)
            let placed = layout.entries[index]
            prefix.replaceSubrange(Int(placed.localHeaderOffset)..<Int(placed.localHeaderOffset) + header.count, with: header)
            let data = try archive.contents(of: entry)
            prefix.replaceSubrange(Int(placed.dataOffset)..<Int(placed.dataOffset) + data.count, with: data)
        }
        let config = try HFConfig(path: TestCheckpoints.path(model + "/hf/config.json"))
        let resolved = try ResolvedModel.resolve(tables: try MappingTable.load(), config: config.document, configPath: config.path)
        let source = Source(records: ordered.map { ($0.name, $0.uncompressedSize, $0.crc32) }, prefix: prefix,
                            pickle: try archive.contents(of: pickleEntry), model: resolved)
        sources[model] = source
        return source
    }

    /// The rank file with `pickle` as its data.pkl.
    static func rankFile(_ source: Source, pickle: [UInt8]) throws -> [UInt8] {
        var records = source.records
        records[records.count - 1].size = Int64(pickle.count)
        records[records.count - 1].crc = CRC32.checksum(pickle)
        let layout = try ZipLayout(entries: records.map { ($0.name, $0.size) })
        let last = layout.entries[records.count - 1]
        var bytes = source.prefix
        bytes += layout.localHeaderBytes(entry: records.count - 1, crc: records[records.count - 1].crc)
        precondition(Int64(bytes.count) == last.dataOffset)
        bytes += pickle
        bytes += [UInt8](repeating: 0, count: Int(layout.trailerOffset) - bytes.count)
        bytes += layout.trailerBytes(crcs: records.map(\.crc))
        return bytes
    }

    func mutate(_ input: [UInt8], _ random: inout MutationFuzzer.Random, pool: [[UInt8]]) -> [UInt8]? {
        MutationFuzzer.mutatePickle(input, &random, pool: pool)
    }

    func run(_ input: MutationFuzzer.Input, scratch: String) -> [Result<Void, any Error>] {
        let loaded = Result { try source(input.context, scratch: scratch) }
        guard case .success(let source) = loaded else { return [loaded.map { _ in }] }
        let directory = (scratch as NSString).appendingPathComponent("legacy-\(input.context)/release")
        let built = FuzzTargets.probe {
            try FileManager.default.createDirectory(atPath: directory + "/mp_rank_00", withIntermediateDirectories: true)
            try FuzzTargets.write(try Self.rankFile(source, pickle: input.bytes), to: directory + "/mp_rank_00/" + LegacyTorchCheckpoint.fileName)
        }
        guard case .success = built else { return [built] }
        return [FuzzTargets.probe {
            let checkpoint = try LegacyTorchCheckpoint(directory: directory)
            let placed = try LegacyCheckpointSource(checkpoint: checkpoint, model: source.model)
            for (key, tensor) in placed.tensors.globalTensors {
                _ = try placed.tensors.boxPieces(key: key, offsets: tensor.size.map { _ in 0 }, sizes: tensor.size)
            }
        }]
    }
}

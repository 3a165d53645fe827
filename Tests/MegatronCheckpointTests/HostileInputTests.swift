import Foundation
import MegatronCheckpoint
import NembridgeTestSupport
import TensorCore
import Testing
import TorchPickle

/// Inputs built to break the reader rather than by accident: special files where files are
/// expected, integers at the edges of 64 bits, pickles that name code, common states of the wrong
/// shape, names and file contents with line breaks. Each must end in a typed error naming the
/// file, in one line.
struct HostileInputTests {
    static let dense = MegatronFixture.all[0]
    static let legacyCommon = MegatronFixture.all[3]  // mcore-metadata-0.15: common.pt

    func path(_ directory: String, _ name: String) -> String { (directory as NSString).appendingPathComponent(name) }

    func rewriteMetadata(_ directory: String, _ edit: (inout DCPMetadata) throws -> Void) throws {
        let metadataPath = path(directory, ".metadata")
        var metadata = try DCPMetadata(pickle: try TestCheckpoints.readFile(metadataPath), file: metadataPath)
        try edit(&metadata)
        try Data(try metadata.pickleBytes()).write(to: URL(fileURLWithPath: metadataPath))
    }

    /// `GLOBAL os system`, a command, `REDUCE`, `POP`: spliced in after the protocol header, the
    /// pickle's value is unchanged, but it names (and would call) `os.system`.
    static func injectingSystemCall(_ pickle: [UInt8]) -> [UInt8] {
        let call: [UInt8] = Array("cos\nsystem\n".utf8) + [0x58, 7, 0, 0, 0] + Array("echo hi".utf8) + [0x85, 0x52, 0x30]
        let header = pickle.first == 0x80 ? 2 : 0
        return Array(pickle[..<header]) + call + Array(pickle[header...])
    }

    /// A DCP checkpoint holding only the bytes item `key`, whose archive's `data.pkl` is `pickle`.
    func objectCheckpoint(key: String, pickle: [UInt8]) throws -> String {
        let directory = try TestCheckpoints.scratchDirectory("object")
        let archive = try TorchSaveArchive.objectArchive(pickle: pickle)
        try Data(archive).write(to: URL(fileURLWithPath: path(directory, "__0_0.distcp")))
        let metadata = DCPMetadata(tensors: [], bytesItems: [key], storage: [
            DCPStorageKey(fqn: key, offsets: nil): DCPStorageInfo(relativePath: "__0_0.distcp", offset: 0, length: Int64(archive.count)),
        ])
        try Data(try metadata.pickleBytes()).write(to: URL(fileURLWithPath: path(directory, ".metadata")))
        return directory
    }

    func expectOneLine(_ error: (any Error)?, naming file: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let text = error.map { "\($0)" } ?? ""
        #expect(text.hasPrefix(file), "\(text)", sourceLocation: sourceLocation)
        #expect(!MessageText.needsEscaping(text), "\(text)", sourceLocation: sourceLocation)
    }

    // MARK: Special files

    @Test("a directory or a FIFO in place of .metadata, a .distcp, metadata.json or the tracker is refused by type, at once",
          arguments: [".metadata", "__0_0.distcp", "metadata.json", "../latest_checkpointed_iteration.txt"], [false, true])
    func specialFiles(_ name: String, _ fifo: Bool) throws {
        let scratch = try TestCheckpoints.scratchDirectory("special")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try FileManager.default.copyItem(atPath: Self.dense.path, toPath: path(scratch, "save"))
        let iteration = path(scratch, "save/iter_0000001")
        let target = (path(iteration, name) as NSString).standardizingPath
        if fifo { try TestCheckpoints.makeFIFO(at: target) } else { try TestCheckpoints.makeDirectory(at: target) }
        let start = Date()
        let error = #expect(throws: FileIOError.self) { try TorchDistCheckpoint(path: path(scratch, "save")) }
        #expect(error == .notARegularFile(path: target, kind: fifo ? .fifo : .directory), "\(String(describing: error))")
        #expect(Date().timeIntervalSince(start) < 5)
    }

    @Test("a directory or a FIFO in place of common.pt is refused by type", arguments: [false, true])
    func specialCommonState(_ fifo: Bool) throws {
        let directory = try scratchCopy(of: Self.legacyCommon, label: "special-common")
        let common = path(directory, "common.pt")
        if fifo { try TestCheckpoints.makeFIFO(at: common) } else { try TestCheckpoints.makeDirectory(at: common) }
        let checkpoint = try TorchDistCheckpoint(directory: directory)
        let error = #expect(throws: FileIOError.self) { try checkpoint.commonState() }
        #expect(error == .notARegularFile(path: common, kind: fifo ? .fifo : .directory))
    }

    // MARK: 64-bit edges in .metadata

    @Test("a storage offset near Int64.max is past the end of the file, said without overflowing")
    func hugeStorageOffset() throws {
        let directory = try scratchCopy(of: Self.dense, label: "huge-offset")
        try rewriteMetadata(directory) { metadata in
            let key = metadata.storage.keys.sorted { $0.fqn < $1.fqn }[0]
            metadata.storage[key]!.offset = Int64.max - 5
            metadata.storage[key]!.length = 10
        }
        let error = #expect(throws: MegatronCheckpointError.self) { try TorchDistCheckpoint(directory: directory) }
        guard case .invalidItem(let file, _, let offset, let reason)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(file == path(directory, "__0_0.distcp"))
        #expect(offset == Int64.max - 5)
        #expect(reason.contains("past the end of the file"))
    }

    @Test("a tensor whose bytes overflow 64 bits is refused at open, naming the key", arguments: [
        [Int(1) << 62, 4], [Int.max, Int.max], [3, Int.max / 2], [0, Int.max],
    ])
    func hugeTensor(_ size: [Int]) throws {
        let directory = try scratchCopy(of: Self.dense, label: "huge-tensor")
        let key = "output_layer.weight"
        try rewriteMetadata(directory) { metadata in
            let position = metadata.tensors.firstIndex { $0.fqn == key }!
            let old = metadata.tensors[position].metadata.chunks[0].offsets.array
            let info = metadata.storage.removeValue(forKey: DCPStorageKey(fqn: key, offsets: old))
            metadata.tensors[position].metadata.size = size
            metadata.tensors[position].metadata.chunks = [DCPChunk(offsets: [0, 0], sizes: size)]
            metadata.storage[DCPStorageKey(fqn: key, offsets: [0, 0])] = info
        }
        let error = #expect(throws: MegatronCheckpointError.self) { try TorchDistCheckpoint(directory: directory) }
        #expect(error == .tensorTooLarge(file: path(directory, ".metadata"), key: key, shape: size, dtype: .bfloat16))
        expectOneLine(error, naming: path(directory, ".metadata"))
    }

    @Test("a negative tensor size is invalid metadata")
    func negativeSize() throws {
        let directory = try scratchCopy(of: Self.dense, label: "negative")
        try rewriteMetadata(directory) { metadata in metadata.tensors[0].metadata.size[0] = Int.min }
        let error = #expect(throws: MegatronCheckpointError.self) { try TorchDistCheckpoint(directory: directory) }
        guard case .invalidMetadata(let file, let reason)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(file == path(directory, ".metadata"))
        #expect(reason.contains("negative size"))
    }

    // MARK: Pickles that name code

    @Test("a real .metadata with an os.system call spliced in (its result popped) is refused, naming the file")
    func disguisedMetadata() throws {
        let directory = try scratchCopy(of: Self.dense, label: "disguised-metadata")
        let metadataPath = path(directory, ".metadata")
        let original = try TestCheckpoints.readFile(metadataPath)
        // Spliced in, the value is what it was: only the global gives it away.
        #expect(try PickleReader.read(Self.injectingSystemCall(original)) == PickleReader.read(original))
        try Data(Self.injectingSystemCall(original)).write(to: URL(fileURLWithPath: metadataPath))
        let error = #expect(throws: MegatronCheckpointError.self) { try TorchDistCheckpoint(directory: directory) }
        guard case .invalidMetadata(let file, let reason)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(file == metadataPath)
        #expect(reason.contains("GLOBAL at offset 2 names `os.system`"))
    }

    @Test("common.pt whose pickle is os.system, or a real one with a call spliced in, is refused, naming common.pt")
    func hostileCommonPT() throws {
        let directory = try scratchCopy(of: Self.legacyCommon, label: "hostile-common")
        let common = path(directory, "common.pt")
        let original = try TorchDistCheckpoint.readTorchSave(path: common)
        #expect(original.dictEntries != nil)
        let rootIsSystem: [UInt8] = [0x80, 0x02] + Array("cos\nsystem\n".utf8) + [0x2E]  // the function itself
        let spliced = Self.injectingSystemCall(PickleWriter.write(original))
        for pickle in [rootIsSystem, spliced] {
            try Data(try TorchSaveArchive.objectArchive(pickle: pickle)).write(to: URL(fileURLWithPath: common))
            let checkpoint = try TorchDistCheckpoint(directory: directory)
            let error = #expect(throws: MegatronCheckpointError.self) { try checkpoint.commonState() }
            guard case .invalidItem(let file, let key, _, let reason)? = error else { Issue.record("\(String(describing: error))"); continue }
            #expect(file == common && key == "data.pkl")
            #expect(reason.contains("`os.system`"))
        }
    }

    @Test("the common_state item: code or a value that is not a dict is refused, naming the .distcp and the item")
    func hostileCommonItem() throws {
        let key = TorchDistCheckpoint.commonStateKey
        let cases: [([UInt8], String)] = [
            (Self.injectingSystemCall(PickleWriter.write(.list([.stringDict(["iteration": .int(1)])]))), "`os.system`"),
            (PickleWriter.write(.list([.list([.int(1)])])), "the saved object is a list, not a dict"),
            (PickleWriter.write(.string("x")), "the saved object is a str, not a dict"),
            (PickleWriter.write(.list([.dict([(.int(1), .none)])])), "a key is a int, not a str"),
        ]
        for (pickle, expected) in cases {
            let directory = try objectCheckpoint(key: key, pickle: pickle)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let checkpoint = try TorchDistCheckpoint(directory: directory)
            let error = #expect(throws: MegatronCheckpointError.self) { try checkpoint.commonState() }
            let text = "\(error.map { "\($0)" } ?? "")"
            #expect(text.hasPrefix(path(directory, "__0_0.distcp") + ": item `\(key)`"), "\(text)")
            #expect(text.contains(expected), "\(text)")
        }
        // The shape Megatron saves passes.
        let good = PickleValue.list([.stringDict([
            "args": .newObject(.global("argparse", "Namespace"), [], .stringDict(["num_layers": .int(2)])),
            "checkpoint_version": .float(3.0), "iteration": .int(1),
        ])])
        let directory = try objectCheckpoint(key: key, pickle: PickleWriter.write(good))
        defer { try? FileManager.default.removeItem(atPath: directory) }
        #expect(try TorchDistCheckpoint(directory: directory).commonState()?["iteration"]?.intValue == 1)
    }

    @Test("common.pt of the wrong shape is an error naming common.pt", arguments: [
        (PickleValue.list([.int(1)]), "the saved object is a list, not a dict"),
        (.stringDict(["args": .int(3)]), "`args` is a int, not an argparse.Namespace"),
        (.stringDict(["iteration": .string("7")]), "`iteration` is a str, not an int"),
        (.stringDict(["checkpoint_version": .none]), "`checkpoint_version` is a None, not a number"),
        (.stringDict(["args": .newObject(.global("argparse", "Namespace"), [], .dict([(.int(0), .none)]))]), "an `args` field name is a int"),
    ])
    func malformedCommonPT(_ value: PickleValue, _ expected: String) throws {
        let directory = try scratchCopy(of: Self.legacyCommon, label: "malformed-common")
        let common = path(directory, "common.pt")
        try Data(try TorchSaveArchive.objectArchive(value)).write(to: URL(fileURLWithPath: common))
        let error = #expect(throws: MegatronCheckpointError.self) { try TorchDistCheckpoint(directory: directory).commonState() }
        guard case .invalidCommonState(let file, nil, _, let reason)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(file == common)
        #expect(reason.contains(expected), "\(reason)")
    }

    @Test("a legacy rank file whose data.pkl names os.system is refused, naming the file")
    func hostileLegacyRankFile() throws {
        let directory = try TestCheckpoints.scratchDirectory("hostile-legacy")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let rank = path(directory, "mp_rank_00")
        try FileManager.default.createDirectory(atPath: rank, withIntermediateDirectories: true)
        let file = path(rank, LegacyTorchCheckpoint.fileName)
        let state = PickleValue.stringDict(["model": .dict([]), "iteration": .int(1), "checkpoint_version": .float(3.0)])
        try Data(try TorchSaveArchive.objectArchive(pickle: Self.injectingSystemCall(PickleWriter.write(state))))
            .write(to: URL(fileURLWithPath: file))
        let error = #expect(throws: MegatronCheckpointError.self) { try LegacyTorchCheckpoint(directory: directory) }
        guard case .invalidItem(let named, "data.pkl", _, let reason)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(named == file)
        #expect(reason.contains("`os.system`"))
        // Without the call the same file opens.
        try Data(try TorchSaveArchive.objectArchive(state)).write(to: URL(fileURLWithPath: file))
        #expect(try LegacyTorchCheckpoint(directory: directory).ranks.count == 1)
    }

    // MARK: Messages

    @Test("a tracker file symlinked to a multi-line file is quoted in one line")
    func multiLineTracker() throws {
        let scratch = try TestCheckpoints.scratchDirectory("tracker")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try FileManager.default.copyItem(atPath: Self.dense.path, toPath: path(scratch, "save"))
        let tracker = path(scratch, "save/latest_checkpointed_iteration.txt")
        try Data("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1\n\u{1B}[2J".utf8).write(to: URL(fileURLWithPath: path(scratch, "passwd")))
        try FileManager.default.removeItem(atPath: tracker)
        try FileManager.default.createSymbolicLink(atPath: tracker, withDestinationPath: path(scratch, "passwd"))
        let error = #expect(throws: MegatronCheckpointError.self) { try TorchDistCheckpoint(path: path(scratch, "save")) }
        expectOneLine(error, naming: tracker)
        #expect("\(error!)".contains("root:x:0:0:root:/root:/bin/bash\\ndaemon"))
    }

    @Test("keys with line breaks and terminal escapes are quoted in one line")
    func hostileKeys() throws {
        let directory = try scratchCopy(of: Self.dense, label: "keys")
        let hostile = "evil\nnembridge: ok\u{1B}[0m"
        try rewriteMetadata(directory) { metadata in
            metadata.bytesItems.append(hostile)
            metadata.storage[DCPStorageKey(fqn: hostile, offsets: nil)] = DCPStorageInfo(relativePath: "gone\r.distcp", offset: 0, length: 1)
        }
        let error = #expect(throws: MegatronCheckpointError.self) { try TorchDistCheckpoint(directory: directory) }
        #expect(error == .missingDataFile(metadata: path(directory, ".metadata"), key: hostile, file: "gone\r.distcp"))
        expectOneLine(error, naming: path(directory, ".metadata"))
        #expect("\(error!)".contains("evil\\nnembridge: ok\\x1B[0m"))
    }
}

import Foundation
@testable import MegatronCheckpoint
import NembridgeTestSupport
import TensorCore
import Testing
import TorchPickle

/// The fast `.metadata` reader against the generic one (`PickleReader` + the value-tree walk):
/// the same metadata for every real file, the same verdict for mutants and hostile pickles, and
/// typed errors for what names code, reads the memo out of bounds or carries huge numbers.
struct DCPMetadataReaderTests {
    /// What the fast reader made of a file.
    enum Fast {
        case metadata(DCPMetadata)
        case error(PickleError)
        case unusual(String)
    }

    static func fast(_ bytes: [UInt8]) -> Fast {
        bytes.withUnsafeBytes { buffer in
            do throws(DCPMetadataReader.Stop) {
                return .metadata(try DCPMetadataReader.read(buffer, globals: CheckpointGlobals.policy))
            } catch {
                switch error {
                case .pickle(let fault): return .error(fault)
                case .unusual(let reason): return .unusual(reason)
                case .file(let error): return .unusual("\(error)")
                }
            }
        }
    }

    /// `fast` of the bytes written to a file and read through a window of `windowSize` bytes.
    static func fastFromFile(_ bytes: [UInt8], windowSize: Int) throws -> Fast {
        let directory = try TestCheckpoints.scratchDirectory("dcp-window")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/.metadata"
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        let file = try ReadOnlyFile(path: path)
        do throws(DCPMetadataReader.Stop) {
            return .metadata(try DCPMetadataReader.read(file: file, globals: CheckpointGlobals.policy, windowSize: windowSize))
        } catch {
            switch error {
            case .pickle(let fault): return .error(fault)
            case .unusual(let reason): return .unusual(reason)
            case .file(let error): return .unusual("\(error)")
            }
        }
    }

    /// The windowed file read gives what the in-memory read gives: the same metadata, fault or hand-over.
    static func expectWindowedAgreement(_ bytes: [UInt8], _ label: String, windowSize: Int,
                                        sourceLocation: SourceLocation = #_sourceLocation) throws {
        switch (fast(bytes), try fastFromFile(bytes, windowSize: windowSize)) {
        case (.metadata(let a), .metadata(let b)): expectSame(a, b, "\(label) (window \(windowSize))", sourceLocation: sourceLocation)
        case (.error(let a), .error(let b)): #expect("\(a)" == "\(b)", "\(label) (window \(windowSize))", sourceLocation: sourceLocation)
        case (.unusual(let a), .unusual(let b)): #expect(a == b, "\(label) (window \(windowSize))", sourceLocation: sourceLocation)
        case (let a, let b): Issue.record("\(label) (window \(windowSize)): \(a) in memory, \(b) from the file", sourceLocation: sourceLocation)
        }
    }

    static func generic(_ bytes: [UInt8]) -> Result<DCPMetadata, any Error> {
        Result { try DCPMetadata(genericPickle: bytes, file: ".metadata") }
    }

    /// Every `.metadata` under `TestCheckpoints/` (written by real torch and Megatron-Core).
    static let metadataFiles: [String] = {
        let root = TestCheckpoints.path("")
        let names = FileManager.default.enumerator(atPath: root)?.compactMap { $0 as? String } ?? []
        return names.filter { ($0 as NSString).lastPathComponent == ".metadata" }.sorted()
    }()

    static func expectSame(_ a: DCPMetadata, _ b: DCPMetadata, _ label: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(a.tensors.map(\.fqn) == b.tensors.map(\.fqn), "\(label)", sourceLocation: sourceLocation)
        #expect(a.tensors.map(\.metadata) == b.tensors.map(\.metadata), "\(label)", sourceLocation: sourceLocation)
        #expect(a.bytesItems == b.bytesItems, "\(label)", sourceLocation: sourceLocation)
        #expect(a.storage == b.storage, "\(label)", sourceLocation: sourceLocation)
        #expect(a.version == b.version, "\(label)", sourceLocation: sourceLocation)
        #expect(a.rootClass == b.rootClass, "\(label)", sourceLocation: sourceLocation)
    }

    /// The fast reader's verdict agrees with the generic one's: the same metadata, or an error from
    /// both (the same text for pickle faults); `.unusual` hands the file to the generic reader.
    ///
    /// One difference is allowed: a container that holds itself. The generic reader refuses it
    /// anywhere (its value tree cannot hold one); the fast one keeps nothing of the fields it never
    /// reads (`all_local_plans`, `planner_data`, …), where Python's unpickler builds a cycle as
    /// well, and a cycle in what it keeps is `.unusual` there.
    static func expectAgreement(_ bytes: [UInt8], _ label: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let generic = generic(bytes)
        if case .failure(let error) = generic, isCycle(error), case .metadata = fast(bytes) { return }
        switch (fast(bytes), generic) {
        case (.metadata(let fast), .success(let slow)):
            expectSame(fast, slow, label, sourceLocation: sourceLocation)
        case (.metadata, .failure(let error)):
            Issue.record("\(label): the fast reader accepts what the generic one refuses: \(error)", sourceLocation: sourceLocation)
        case (.error(let fault), .success):
            Issue.record("\(label): the fast reader refuses what the generic one accepts: \(fault)", sourceLocation: sourceLocation)
        case (.error(let fault), .failure(let error)):
            #expect(error as? MegatronCheckpointError == .invalidMetadata(file: ".metadata", reason: "\(fault)"),
                    "\(label)", sourceLocation: sourceLocation)
        case (.unusual, _):
            break
        }
        // Whatever the path, the public reader gives the generic verdict.
        let combined = Result { try DCPMetadata(pickle: bytes, file: ".metadata") }
        switch (combined, generic) {
        case (.success(let a), .success(let b)): expectSame(a, b, label, sourceLocation: sourceLocation)
        case (.failure(let a), .failure(let b)):
            #expect(a as? MegatronCheckpointError == b as? MegatronCheckpointError, "\(label)", sourceLocation: sourceLocation)
        default: Issue.record("\(label): \(combined) vs \(generic)", sourceLocation: sourceLocation)
        }
    }

    @Test("every .metadata in TestCheckpoints reads on the fast path, as the generic reader reads it")
    func realFiles() throws {
        #expect(Self.metadataFiles.count >= 6)
        for file in Self.metadataFiles {
            let bytes = try TestCheckpoints.readFile(TestCheckpoints.path(file))
            guard case .metadata(let fast) = Self.fast(bytes) else {
                Issue.record("\(file): not read by the fast path: \(Self.fast(bytes))")
                continue
            }
            Self.expectSame(fast, try DCPMetadata(genericPickle: bytes, file: file), file)
            #expect(!fast.tensors.isEmpty, "\(file)")
            // nembridge's own writing of the same metadata (protocol 2, no container memo) too.
            let rewritten = try fast.pickleBytes()
            guard case .metadata(let again) = Self.fast(rewritten) else { Issue.record("\(file) rewritten: not on the fast path"); continue }
            Self.expectSame(again, try DCPMetadata(genericPickle: rewritten, file: file), "\(file) rewritten")
            #expect(again.tensors.map(\.metadata) == fast.tensors.map(\.metadata) && again.storage == fast.storage, "\(file) rewritten")
        }
    }

    @Test("the chunks and storage entries of every real .metadata are read in one step each, to what the generic reader reads")
    func recordsInOneStep() throws {
        for file in Self.metadataFiles {
            let bytes = try TestCheckpoints.readFile(TestCheckpoints.path(file))
            let (metadata, count) = try bytes.withUnsafeBytes { buffer in
                try DCPMetadataReader.readCountingOneStep(buffer, globals: CheckpointGlobals.policy)
            }
            Self.expectSame(metadata, try DCPMetadata(genericPickle: bytes, file: file), file)
            // torch's pickler memoizes every object, dict and tuple of these records: the one-step
            // path follows that, or these files would take the opcode-by-opcode path. (An entry
            // with a transform list, a zstd item, is read step by step.)
            let chunks = metadata.tensors.reduce(0) { $0 + $1.metadata.chunks.count }
            let plainEntries = (0..<metadata.storage.count).filter { metadata.storage.info(record: $0).transformDescriptors == nil }.count
            #expect(count >= chunks + plainEntries, "\(file): \(count) records in one step, \(chunks) chunks, \(plainEntries) storage entries")
        }
    }

    @Test("the memo keeps only the values some GET reads, and every real .metadata reads as it does with all kept")
    func memoOfReadKeysOnly() throws {
        for file in Self.metadataFiles {
            let bytes = try TestCheckpoints.readFile(TestCheckpoints.path(file))
            let (all, kept, reads, entries) = try bytes.withUnsafeBytes { buffer in try Self.readWithAndWithoutScan(buffer) }
            Self.expectSame(kept, all, file)
            let scanned = try #require(reads, "\(file): the scan gave up")
            // torch's pickler memoizes every record, dict and tuple; GETs read back the strings,
            // globals and little else.
            #expect(scanned.count * 4 < entries, "\(file): \(scanned.count) of \(entries) memo entries read")
        }
    }

    /// The metadata read keeping every memo entry, then keeping only those the scan found read;
    /// the scan; and how many entries the memo stored.
    static func readWithAndWithoutScan(_ buffer: UnsafeRawBufferPointer) throws -> (DCPMetadata, DCPMetadata, PickleMemoReads?, Int) {
        let input = DCPMetadataReader.Input(window: buffer, count: buffer.count, file: nil)
        let reads = PickleMemoReadScanner.scan(buffer)
        var everything = DCPMetadataReader(input: input, globals: CheckpointGlobals.policy)
        var readOnly = DCPMetadataReader(input: input, globals: CheckpointGlobals.policy, memoReads: reads)
        do throws(DCPMetadataReader.Stop) {
            let all = try everything.run()
            return (all, try readOnly.run(), reads, readOnly.memo.entryCount)
        } catch {
            throw MegatronCheckpointError.invalidMetadata(file: ".metadata", reason: "\(error)")
        }
    }

    @Test("a .metadata read from its file through a sliding window reads as it does in memory, window sizes 1 byte to 1 MiB")
    func windowedFileRead() throws {
        for file in Self.metadataFiles {
            let bytes = try TestCheckpoints.readFile(TestCheckpoints.path(file))
            for window in [1, 7, 64, 4096, 1 << 20] { try Self.expectWindowedAgreement(bytes, file, windowSize: window) }
        }
        let directory = TestCheckpoints.root + "/Tests/FuzzCorpus/dcp-metadata"
        for file in try FileManager.default.contentsOfDirectory(atPath: directory).filter({ !$0.hasPrefix(".") }).sorted() {
            let bytes = try TestCheckpoints.readFile(directory + "/" + file)
            for window in [3, 256] { try Self.expectWindowedAgreement(bytes, file, windowSize: window) }
        }
        // A string longer than the window, and a truncated one.
        var random = SplitMix64(seed: 0xDC9_0002)
        for file in Self.metadataFiles.prefix(2) {
            let original = try TestCheckpoints.readFile(TestCheckpoints.path(file))
            for _ in 0..<40 {
                let cut = Int(random.next() % UInt64(original.count))
                try Self.expectWindowedAgreement(Array(original[..<cut]), "\(file) cut at \(cut)", windowSize: 5)
            }
        }
    }

    static func isCycle(_ error: any Error) -> Bool {
        guard case .invalidMetadata(_, let reason)? = error as? MegatronCheckpointError else { return false }
        return reason.hasSuffix("contains itself")
    }

    /// Found by mutating gpt-dense-ws1's `.metadata`: one memo read in a `SavePlan` of
    /// `all_local_plans` became a read of the list holding it, as a dict key. Python refuses the
    /// key (unhashable) and the generic reader the cycle; the fast reader, which keeps nothing of
    /// that field, read the metadata of the unmutated file until it handed such keys over.
    @Test("a list as a dict key in a field nembridge never reads is refused, as Python refuses it")
    func unhashableKeyInAnUnreadField() throws {
        let mutant = try TestCheckpoints.readFile(TestCheckpoints.root + "/Tests/FuzzCorpus/dcp-metadata/gpt-dense-ws1--cycle-in-an-unread-field.bin")
        guard case .unusual(let reason) = Self.fast(mutant) else {
            Issue.record("the fast reader: \(Self.fast(mutant))")
            return
        }
        #expect(reason == "an unhashable dict key")
        let error = #expect(throws: MegatronCheckpointError.self) { try DCPMetadata(pickle: mutant, file: ".metadata") }
        #expect(error.map(Self.isCycle) == true, "\(String(describing: error))")
    }

    @Test("the metadata fuzz corpus gets the generic reader's verdicts")
    func fuzzCorpus() throws {
        let directory = TestCheckpoints.root + "/Tests/FuzzCorpus/dcp-metadata"
        let files = try FileManager.default.contentsOfDirectory(atPath: directory).filter { !$0.hasPrefix(".") }.sorted()
        #expect(!files.isEmpty)
        for file in files {
            Self.expectAgreement(try TestCheckpoints.readFile(directory + "/" + file), file)
        }
    }

    @Test("mutants of the real .metadata files get the generic reader's verdicts")
    func mutants() throws {
        var random = SplitMix64(seed: 0xDC9_0001)
        var onFastPath = 0
        for file in Self.metadataFiles {
            let original = try TestCheckpoints.readFile(TestCheckpoints.path(file))
            for round in 0..<120 {
                var bytes = original
                for _ in 0...(round % 4) {
                    let at = Int(random.next() % UInt64(bytes.count))
                    switch random.next() % 4 {
                    case 0: bytes[at] = UInt8(truncatingIfNeeded: random.next())
                    case 1: bytes[at] ^= 1 << UInt8(random.next() % 8)
                    case 2: bytes.remove(at: at)
                    default: bytes.insert(UInt8(truncatingIfNeeded: random.next()), at: at)
                    }
                }
                if case .unusual = Self.fast(bytes) {} else { onFastPath += 1 }
                Self.expectAgreement(bytes, "\(file) mutant \(round)")
            }
        }
        // Most mutants stay on the fast path: a valid file or a pickle fault.
        #expect(onFastPath > Self.metadataFiles.count * 60)
    }

    // MARK: Hostile pickles

    static let real: [UInt8] = (try? TestCheckpoints.readFile(TestCheckpoints.path("megatron/gpt-dense-ws1/iter_0000001/.metadata"))) ?? []

    static func expectFault(_ bytes: [UInt8], sourceLocation: SourceLocation = #_sourceLocation, _ check: (PickleError) -> Bool) {
        guard case .error(let fault) = fast(bytes) else {
            Issue.record("not a pickle fault: \(fast(bytes))", sourceLocation: sourceLocation)
            return
        }
        #expect(check(fault), "\(fault)", sourceLocation: sourceLocation)
        expectAgreement(bytes, "\(fault)", sourceLocation: sourceLocation)
        let error = #expect(throws: MegatronCheckpointError.self, sourceLocation: sourceLocation) {
            try DCPMetadata(pickle: bytes, file: "/x/.metadata")
        }
        guard case .invalidMetadata(let file, _)? = error else { return }
        #expect(file == "/x/.metadata", sourceLocation: sourceLocation)
    }

    @Test("a disallowed global is an error where it is named, even when its value is popped")
    func disallowedGlobal() {
        let call: [UInt8] = Array("cos\nsystem\n".utf8) + [0x58, 7, 0, 0, 0] + Array("echo hi".utf8) + [0x85, 0x52, 0x30]
        Self.expectFault(Array(Self.real[..<2]) + call + Array(Self.real[2...])) {
            if case .forbiddenGlobal(let site, "os", "system") = $0 { return site.offset == 2 } else { return false }
        }
        // STACK_GLOBAL spelling, discarded at once.
        let stacked: [UInt8] = [0x8C, 8] + Array("builtins".utf8) + [0x8C, 4] + Array("eval".utf8) + [0x93, 0x30]
        Self.expectFault(Array(Self.real[..<2]) + stacked + Array(Self.real[2...])) {
            if case .forbiddenGlobal(_, "builtins", "eval") = $0 { return true } else { return false }
        }
    }

    @Test("memo reads of keys never stored are errors; a huge memo key is no huge table")
    func memoIndex() {
        Self.expectFault([0x80, 2, 0x68, 200, 0x2E]) { if case .memoKeyMissing(_, 200) = $0 { true } else { false } }
        Self.expectFault([0x80, 2, 0x6A, 0xFF, 0xFF, 0xFF, 0xFF, 0x2E]) {
            if case .memoKeyMissing(_, 0xFFFF_FFFF) = $0 { true } else { false }
        }
        // LONG_BINPUT 2^32-1 of None, then read back: a valid pickle, not a Metadata.
        let sparse: [UInt8] = [0x80, 2, 0x4E, 0x72, 0xFF, 0xFF, 0xFF, 0xFF, 0x30, 0x6A, 0xFF, 0xFF, 0xFF, 0xFF, 0x2E]
        if case .unusual = Self.fast(sparse) {} else { Issue.record("\(Self.fast(sparse))") }
        Self.expectAgreement(sparse, "sparse memo")
    }

    @Test("huge numbers: over-long integers are refused, 64-bit overflows are not sizes or offsets")
    func hugeNumbers() throws {
        // LONG4 of 70,000 bytes: past the integer limit.
        let long4: [UInt8] = [0x80, 2, 0x8B] + [0x70, 0x11, 0x01, 0x00] + [UInt8](repeating: 1, count: 70_000) + [0x2E]
        Self.expectFault(long4) { if case .limitExceeded(_, .bigIntBytes, _) = $0 { true } else { false } }
        // A negative length, a length past the end.
        Self.expectFault([0x80, 2, 0x54, 0xFF, 0xFF, 0xFF, 0xFF, 0x2E]) { if case .invalidArgument = $0 { true } else { false } }
        Self.expectFault([0x80, 2, 0x58, 0x00, 0x00, 0x00, 0x10, 0x2E]) { if case .truncated = $0 { true } else { false } }
        // A real metadata whose item offset is 2^64 + 1: a typed error naming the file.
        var metadata = try DCPMetadata(genericPickle: Self.real, file: ".metadata")
        let key = metadata.storage.keys.sorted { $0.fqn < $1.fqn }[0]
        metadata.storage[key]!.offset = 0x1234_5678
        let bytes = try metadata.pickleBytes()
        let marker: [UInt8] = [0x4A, 0x78, 0x56, 0x34, 0x12]  // BININT 0x12345678
        let at = try #require((0..<(bytes.count - marker.count)).first { Array(bytes[$0..<($0 + marker.count)]) == marker })
        let huge: [UInt8] = [0x8A, 9, 1, 0, 0, 0, 0, 0, 0, 0, 1]  // LONG1: 2^64 + 1
        let hostile = Array(bytes[..<at]) + huge + Array(bytes[(at + marker.count)...])
        Self.expectAgreement(hostile, "offset 2^64 + 1")
        let error = #expect(throws: MegatronCheckpointError.self) { try DCPMetadata(pickle: hostile, file: "/x/.metadata") }
        guard case .invalidMetadata(let file, let reason)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(file == "/x/.metadata")
        #expect(reason.contains("malformed _StorageInfo"), "\(reason)")
    }

    @Test("integers of every LONG1 width read as Python reads them")
    func longIntegers() throws {
        for value: Int64 in [0, 1, -1, 127, 128, -128, -129, 255, 256, 1 << 31, -(1 << 31), 1 << 40, Int64.max, Int64.min] {
            let tensor = DCPTensorMetadata(dtype: .bfloat16, size: [Int(value)], chunks: [DCPChunk(offsets: [0], sizes: [Int(value)])])
            let metadata = DCPMetadata(tensors: [("t", tensor)], bytesItems: [], storage: [
                DCPStorageKey(fqn: "t", offsets: [0]): DCPStorageInfo(relativePath: "__0_0.distcp", offset: 0, length: value == Int64.min ? 0 : abs(value)),
            ])
            let bytes = try metadata.pickleBytes()
            guard case .metadata(let read) = Self.fast(bytes) else { Issue.record("\(value): \(Self.fast(bytes))"); continue }
            #expect(read.tensors[0].metadata.size == [Int(value)])
            Self.expectAgreement(bytes, "\(value)")
        }
    }

    @Test("truncations and garbage are pickle faults, as the generic reader says")
    func truncated() {
        for end in stride(from: 0, to: Self.real.count, by: 97) {
            Self.expectAgreement(Array(Self.real[..<end]), "first \(end) bytes")
        }
        Self.expectAgreement(Self.real + [0x4E], "trailing byte")
        Self.expectAgreement((0..<500).map { UInt8(truncatingIfNeeded: $0 &* 37) }, "garbage")
    }
}

/// The compact `storage_data` table behaves as the dictionary it replaces.
struct DCPStorageTableTests {
    @Test("inserts, replaces, removes and finds as a [DCPStorageKey: DCPStorageInfo] does")
    func likeADictionary() {
        var random = SplitMix64(seed: 7)
        var table = DCPStorageTable()
        var reference: [DCPStorageKey: DCPStorageInfo] = [:]
        for step in 0..<4000 {
            let fqn = "layer.\(random.next() % 40).weight"
            let offsets: [Int]? = random.next() % 5 == 0 ? nil : (0..<Int(random.next() % 3)).map { _ in Int(random.next() % 4) * 128 }
            let key = DCPStorageKey(fqn: fqn, offsets: offsets)
            if random.next() % 4 == 0 {
                #expect(table.removeValue(forKey: key) == reference.removeValue(forKey: key), "step \(step)")
            } else {
                let info = DCPStorageInfo(relativePath: "__\(random.next() % 3)_0.distcp", offset: Int64(step), length: Int64(random.next() % 1000),
                                          transformDescriptors: random.next() % 3 == 0 ? ["stream.zstd/1"] : nil)
                table[key] = info
                reference[key] = info
            }
            #expect(table[key] == reference[key], "step \(step)")
            #expect(table.count == reference.count, "step \(step)")
        }
        #expect(table.dictionary == reference)
        #expect(Set(table.keys) == Set(reference.keys))
        #expect(Set(table.fileNames) == Set(reference.values.map(\.relativePath)))
        #expect(DCPStorageTable(reference) == table)
    }
}

import Execution
import Foundation
import MegatronCheckpoint
import NembridgeKit
import NembridgeTestSupport
import TensorCore
import Testing
import TorchZip

/// `verify DIR` decodes every pickle of the output and checks its shape, so a checkpoint whose
/// pickle was broken and whose manifest was then rewritten to match (checksums and CRCs all
/// consistent) still fails, in one line naming the file and the offset.
struct VerifyObjectDecodingTests {
    /// Rewrites the stored `data.pkl` of the zip at `range` of `path` in place (same length), and
    /// its CRC-32 in the local header and the central directory, as a careful attacker would.
    static func patchPickle(_ path: String, range: ByteRange? = nil, _ edit: (inout [UInt8]) -> Void) throws {
        let file = try ReadOnlyFile(path: path)
        let archive = try ZipArchive(file: file, range: range ?? ByteRange(offset: 0, count: file.size), name: path)
        let entry = try #require(archive.record("data.pkl"))
        var bytes = try archive.contents(of: entry)
        let count = bytes.count
        edit(&bytes)
        precondition(bytes.count == count, "the patch must keep the record's length")
        let crc = CRC32.checksum(bytes)
        let crcBytes = Data((0..<4).map { UInt8(truncatingIfNeeded: crc >> (8 * $0)) })
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        for (offset, data) in [(entry.dataRange.offset, Data(bytes)), (entry.localHeaderOffset + 14, crcBytes),
                               (entry.centralRecordOffset + 16, crcBytes)] {
            try handle.seek(toOffset: UInt64(offset))
            try handle.write(contentsOf: data)
        }
    }

    /// The manifest recomputed for the folder as it is now: every checksum matches again.
    static func forgeManifest(_ root: String) throws {
        let old = try ChecksumManifest(path: root + "/" + ChecksumManifest.fileName)
        var forged = try ChecksumManifest.compute(kind: old.kind, root: root, items: old.entries.map { ($0.name, $0.file, $0.range) })
        for index in forged.entries.indices {
            forged.entries[index].dtype = old.entries[index].dtype
            forged.entries[index].shape = old.entries[index].shape
        }
        try forged.writeCovering(root: root)
    }

    /// The last offset of `pattern` in `bytes`.
    static func findLast(_ pattern: [UInt8], in bytes: [UInt8]) -> Int? {
        guard bytes.count >= pattern.count else { return nil }
        return (0...(bytes.count - pattern.count)).last { Array(bytes[$0..<($0 + pattern.count)]) == pattern }
    }

    /// The top-level `iteration`'s int (the last one: `args` has one too) replaced by `None` and MEMOIZE no-ops (same length): still a valid
    /// pickle, but no longer a Megatron common state.
    static func iterationToNone(_ bytes: inout [UInt8]) {
        let key = [0x58, 9, 0, 0, 0] + Array("iteration".utf8)
        let at = findLast(key, in: bytes)! + key.count
        let width = switch bytes[at] { case 0x4B: 2; case 0x4D: 3; default: 5 }  // BININT1, BININT2, BININT
        bytes.replaceSubrange(at..<(at + width), with: [0x4E] + [UInt8](repeating: 0x94, count: width - 1))
    }

    static func importLlama(_ scratch: String, legacy: Bool = false) throws -> String {
        var options = HFImport.Options()
        if legacy { options.format = .torch }
        try HFImport(source: TestCheckpoints.path("llama3-tiny/hf"), output: scratch + "/mc", options: options)
            .run(executor: MoveExecutor(workers: 2))
        return scratch + "/mc"
    }

    /// Patches, forges the manifest, and expects `verify DIR` to fail with a one-line note (or a
    /// thrown one-line error) that contains each of `expected`.
    static func expectCaught(_ root: String, _ expected: [String], sourceLocation: SourceLocation = #_sourceLocation) throws {
        try forgeManifest(root)
        let text: String
        do {
            let report = try CheckpointVerifier.verifyManifest(root)
            #expect(!report.passed, sourceLocation: sourceLocation)
            text = report.notes.first { note in expected.allSatisfy(note.contains) } ?? report.text()
        } catch {
            text = "\(error)"
        }
        for part in expected { #expect(text.contains(part), "\(text)", sourceLocation: sourceLocation) }
        #expect(!MessageText.needsEscaping(text), "\(text)", sourceLocation: sourceLocation)
    }

    @Test("a forged manifest alone passes: the checks below fail on the pickles, not on checksums")
    func forgedManifestPasses() throws {
        let scratch = try TestCheckpoints.scratchDirectory("forge")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let root = try Self.importLlama(scratch)
        try Self.forgeManifest(root)
        #expect(try CheckpointVerifier.verifyManifest(root).passed)
    }

    @Test("a broken or misshapen `_extra_state` or common-state item pickle fails verify DIR", arguments: [
        ("_extra_state", "unknown opcode"), ("_extra_state", "shape"), ("common_state", "unknown opcode"), ("common_state", "shape"),
    ])
    func brokenItem(_ item: String, _ damage: String) throws {
        let scratch = try TestCheckpoints.scratchDirectory("broken-item")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let root = try Self.importLlama(scratch)
        let checkpoint = try TorchDistCheckpoint(path: root)
        let key = try #require(checkpoint.objectKeys.first { $0.contains(item) })
        let info = try checkpoint.storageInfo(key: key, offsets: nil)
        let data = checkpoint.directory + "/" + info.relativePath
        try Self.patchPickle(data, range: ByteRange(offset: info.offset, count: info.length)) { bytes in
            switch (item, damage) {
            case (_, "unknown opcode"): bytes[2] = 0xFF
            case ("_extra_state", _): bytes[bytes.firstIndex(of: 0x4E)!] = 0x29  // [None] → [()]
            default: Self.iterationToNone(&bytes)
            }
        }
        let reason = damage == "unknown opcode" ? "unknown opcode 0xff at offset 2"
            : item == "_extra_state" ? "`_extra_state` is a tuple" : "`iteration` is a None, not an int"
        try Self.expectCaught(root, [data, "`\(key)` at offset \(info.offset)", reason])
    }

    @Test("a broken or misshapen common.pt pickle fails verify DIR", arguments: ["unknown opcode", "shape"])
    func brokenCommonPT(_ damage: String) throws {
        let scratch = try TestCheckpoints.scratchDirectory("broken-common")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let root = try Self.importLlama(scratch)
        let common = root + "/release/common.pt"
        try Self.patchPickle(common) { bytes in
            if damage == "shape" { Self.iterationToNone(&bytes) } else { bytes[2] = 0xFF }
        }
        let record = try #require(try ZipArchive(path: common).record("data.pkl"))
        try Self.expectCaught(root, [common, "at offset \(record.localHeaderOffset)",
                                     damage == "shape" ? "`iteration` is a None, not an int" : "unknown opcode 0xff at offset 2"])
    }

    @Test("a broken or misshapen legacy data.pkl fails verify DIR", arguments: ["unknown opcode", "shape"])
    func brokenLegacy(_ damage: String) throws {
        let scratch = try TestCheckpoints.scratchDirectory("broken-legacy")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let root = try Self.importLlama(scratch, legacy: true)
        let rankFile = root + "/release/mp_rank_00/model_optim_rng.pt"
        try Self.patchPickle(rankFile) { bytes in
            if damage == "shape" { Self.iterationToNone(&bytes) } else { bytes[2] = 0xFF }
        }
        let record = try #require(try ZipArchive(path: rankFile).entries.first { $0.name.hasSuffix("/data.pkl") })
        try Self.expectCaught(root, [rankFile, "at offset \(record.localHeaderOffset)",
                                     damage == "shape" ? "`iteration` is a None, not an int" : "unknown opcode 0xff at offset 2"])
    }
}

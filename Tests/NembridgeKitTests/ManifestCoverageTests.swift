import Execution
import Foundation
import NembridgeKit
import NembridgeTestSupport
import TensorCore
import Testing

/// `nembridge-manifest.json` covers every byte of every output file: tensor data by its entries,
/// everything else (safetensors headers and `__metadata__`, zip records, pickles of the common
/// state and `_extra_state`, `.metadata`, `metadata.json`, the tracker, recorded and exported
/// configs, tokenizer files) by each file's rest digest. A flipped byte anywhere fails `verify DIR`.
struct ManifestCoverageTests {
    static func files(_ root: String) -> [String] {
        (FileManager.default.enumerator(atPath: root)?.allObjects as? [String] ?? []).filter { name in
            var directory: ObjCBool = false
            return FileManager.default.fileExists(atPath: root + "/" + name, isDirectory: &directory) && !directory.boolValue
                && name != ChecksumManifest.fileName
        }.sorted()
    }

    static func flip(_ path: String, at offset: Int) throws {
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try handle.seek(toOffset: UInt64(offset))
        let byte = try handle.read(upToCount: 1) ?? Data([0])
        try handle.seek(toOffset: UInt64(offset))
        try handle.write(contentsOf: Data([byte[0] ^ 0x01]))
    }

    /// Flips bytes of every file (first, last, middle and random ones), each time checking that
    /// `verify DIR` fails naming the file, then puts it back and checks that it passes again.
    static func everyByteKindIsCovered(_ root: String) throws {
        #expect(try CheckpointVerifier.verifyManifest(root).passed)
        var random = SplitMix64(seed: 20261202)
        let names = files(root)
        #expect(names.count >= 5, "\(names)")
        for name in names {
            let path = root + "/" + name
            let size = (try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
            guard size > 0 else { continue }
            var offsets: Set<Int> = [0, size / 2, size - 1]
            for _ in 0..<5 { offsets.insert(Int.random(in: 0..<size, using: &random)) }
            for offset in offsets.sorted() {
                try flip(path, at: offset)
                let report = try? CheckpointVerifier.verifyManifest(root)
                // A damaged container may also fail to parse at all: that too is a failed verify.
                #expect(report?.passed != true, "a flipped byte at \(offset) of \(name) passed verify")
                try flip(path, at: offset)
            }
        }
        #expect(try CheckpointVerifier.verifyManifest(root).passed)
        // A file added or removed is seen too.
        try Data("x".utf8).write(to: URL(fileURLWithPath: root + "/stray.txt"))
        #expect(try !CheckpointVerifier.verifyManifest(root).passed)
        try FileManager.default.removeItem(atPath: root + "/stray.txt")
    }

    @Test("import (torch_dist, zstd and legacy) and export: a flipped byte in any output file fails verify DIR",
          arguments: ["torch_dist", "zstd", "legacy", "export"])
    func flippedBytes(_ output: String) throws {
        let scratch = try TestCheckpoints.scratchDirectory("coverage")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var options = HFImport.Options()
        if output == "zstd" { options.zstdLevel = 3 }
        if output == "legacy" {
            options.format = .torch
            options.tensorParallel = 2
        }
        let executor = MoveExecutor(workers: 2)
        try HFImport(source: TestCheckpoints.path("llama3-tiny/hf"), output: scratch + "/mc", options: options).run(executor: executor)
        if output == "export" {
            try MegatronExport(checkpoint: scratch + "/mc", output: scratch + "/hf").run(executor: executor)
            try Self.everyByteKindIsCovered(scratch + "/hf")
        } else {
            try Self.everyByteKindIsCovered(scratch + "/mc")
        }
    }
}

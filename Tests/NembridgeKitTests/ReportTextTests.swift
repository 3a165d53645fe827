import Foundation
import MegatronCheckpoint
import NembridgeKit
import NembridgeTestSupport
import TensorCore
import Testing
import TorchPickle
import Verification

/// The text reports of `inspect` and `verify` (stdout, not errors) escape every string read from
/// the input: a tensor name, key, metadata string, arg name or value with line breaks or terminal
/// escapes prints as one escaped field, so it cannot forge report lines.
struct ReportTextTests {
    static let hostile = "evil\nOK\r\u{1B}[2J\u{07}\t\u{202E}"
    static let escaped = "evil\\nOK\\r\\x1B[2J\\x07\\t\\u{202E}"

    /// Every line free of characters an escape would change, and as many lines as `benign` has.
    static func expectNoForgedLines(_ text: String, like benign: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines.count == benign.split(separator: "\n", omittingEmptySubsequences: false).count, "\(text)",
                sourceLocation: sourceLocation)
        for line in lines { #expect(!MessageText.needsEscaping(line), "\(line)", sourceLocation: sourceLocation) }
        #expect(text.contains(escaped), "\(text)", sourceLocation: sourceLocation)
    }

    /// A safetensors file with tensors `w` and `name`, and `__metadata__` {`name`: `name`}.
    static func safetensors(_ path: String, name: String) throws {
        let key = JSONWriter.serdeQuoted(name)
        let header = Array(("{\"__metadata__\":{\(key):\(key)},\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
            + "\(key):{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]}}").utf8)
        let bytes = withUnsafeBytes(of: UInt64(header.count).littleEndian, Array.init) + header + [1, 2, 3]
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    @Test("inspect of a safetensors file: hostile tensor names and metadata strings stay in their fields")
    func inspectSafetensors() throws {
        let scratch = try TestCheckpoints.scratchDirectory("report-st")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try Self.safetensors(scratch + "/hostile.safetensors", name: Self.hostile)
        try Self.safetensors(scratch + "/benign.safetensors", name: "benign")
        Self.expectNoForgedLines(try InspectReport.inspect(path: scratch + "/hostile.safetensors").text(),
                                 like: try InspectReport.inspect(path: scratch + "/benign.safetensors").text())
    }

    @Test("inspect of a Megatron checkpoint: hostile keys, object keys, arg names and values stay in their fields")
    func inspectMegatron() throws {
        let scratch = try TestCheckpoints.scratchDirectory("report-mc")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var texts: [String] = []
        for name in ["benign", Self.hostile] {
            let save = scratch + "/" + (name == "benign" ? "benign" : "hostile")
            try FileManager.default.copyItem(atPath: TestCheckpoints.path("megatron/gpt-dense-ws1"), toPath: save)
            let iteration = save + "/iter_0000001"
            let metadataPath = iteration + "/.metadata"
            var metadata = try DCPMetadata(pickle: try TestCheckpoints.readFile(metadataPath), file: metadataPath)
            // One tensor key and one object key renamed, with their storage entries.
            let old = metadata.tensors[0].fqn
            metadata.tensors[0].fqn = name + ".weight"
            for chunk in metadata.tensors[0].metadata.chunks {
                let info = metadata.storage.removeValue(forKey: DCPStorageKey(fqn: old, offsets: chunk.offsets.array))!
                metadata.storage[DCPStorageKey(fqn: name + ".weight", offsets: chunk.offsets.array)] = info
            }
            let object = metadata.bytesItems.firstIndex { $0.contains("_extra_state") }!
            let info = metadata.storage.removeValue(forKey: DCPStorageKey(fqn: metadata.bytesItems[object], offsets: nil))!
            metadata.bytesItems[object] = name + "._extra_state/shard_0_1"
            metadata.storage[DCPStorageKey(fqn: metadata.bytesItems[object], offsets: nil)] = info
            try Data(try metadata.pickleBytes()).write(to: URL(fileURLWithPath: metadataPath))
            // A common.pt (preferred over the item) whose args hold the name as a field and a value.
            let args = PickleValue.newObject(.global("argparse", "Namespace"), [], .stringDict([
                "num_layers": .int(2), "tokenizer_model": .string(name),
            ]))
            var state = PickleValue.stringDict(["args": args, "iteration": .int(1), "checkpoint_version": .float(3.0)])
            if case .dict(var entries) = state {
                entries.append((.string(name), .string(name)))
                state = .dict(entries)
            }
            try Data(try TorchSaveArchive.objectArchive(state)).write(to: URL(fileURLWithPath: iteration + "/common.pt"))
            texts.append(try MegatronInspectReport.inspect(path: save).text())
        }
        Self.expectNoForgedLines(texts[1], like: texts[0])
    }

    @Test("verify: hostile tensor names and notes stay on their lines")
    func verifyText() throws {
        func report(_ name: String) -> String {
            VerificationReport(mode: "hf-hf", first: "/a\n", second: "/b", comparisons: [
                TensorComparison(name: name, status: .missingInSecond, dtypes: (.bfloat16, nil), shapes: ([2], nil), bytes: 4),
                TensorComparison(name: name + "2", status: .mismatch, dtypes: (.bfloat16, .bfloat16), shapes: ([2], [2]), bytes: 4),
            ], notes: ["`\(name)`: damaged"]).text()
        }
        Self.expectNoForgedLines(report(Self.hostile), like: report("benign"))
    }

    @Test("verify of two folders: a hostile tensor name missing on one side is one escaped line")
    func verifyFolders() throws {
        let scratch = try TestCheckpoints.scratchDirectory("report-verify")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var texts: [String] = []
        for name in ["benign", Self.hostile] {
            let a = scratch + "/a-\(texts.count)", b = scratch + "/b-\(texts.count)"
            for folder in [a, b] { try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true) }
            try Self.safetensors(a + "/model.safetensors", name: name)
            try Self.safetensors(b + "/model.safetensors", name: "other")
            let report = try CheckpointVerifier.verify(a, b)
            #expect(!report.passed)
            texts.append(report.text().replacingOccurrences(of: "a-1", with: "a-0").replacingOccurrences(of: "b-1", with: "b-0"))
        }
        Self.expectNoForgedLines(texts[1], like: texts[0])
    }
}

import Foundation
import NembridgeTestSupport
import SafetensorsFormat
import TensorCore
import Testing

/// Headers built to break the reader: offsets past `Int64.max`, names with line breaks, special
/// files in place of the weights or the config.
struct HostileHeaderTests {
    @Test("offsets that add up past Int64.max are an incomplete buffer, not a trap")
    func offsetsPastInt64() {
        // Nine tensors of 2^60 bytes each (the most one U8 tensor can have): the ninth begins at 2^63.
        let size = UInt64(1) << 60
        let entries = (0..<9).map { index in
            "\"t\(index)\":{\"dtype\":\"U8\",\"shape\":[\(size)],\"data_offsets\":[\(UInt64(index) * size),\(UInt64(index + 1) * size)]}"
        }
        let bytes = HeaderErrorTests.file("{" + entries.joined(separator: ",") + "}")
        let error = HeaderErrorTests.failure(bytes)
        guard case .metadataIncompleteBuffer(_, let end, _)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(end > UInt64(Int64.max) || end < UInt64(bytes.count))
    }

    @Test("tensor names and JSON keys with line breaks or escapes are quoted in one line")
    func hostileNames() {
        let header = #"{"evil\nname\u001b[2J":{"dtype":"X9","shape":[1],"data_offsets":[0,1]}}"#
        let error = HeaderErrorTests.failure(HeaderErrorTests.file(header, data: [0]))
        guard case .invalidHeaderDeserialization(_, let reason, _)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(reason.contains("evil\\nname\\x1B[2J"))
        #expect(!MessageText.needsEscaping(error!.description))
        let offset = #"{"a\nb":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#
        let second = HeaderErrorTests.failure(HeaderErrorTests.file(offset, data: [0, 0]))
        #expect(second?.description == "m.safetensors: invalid offset for tensor `a\\nb` (data_offsets [1, 2], expected begin 0)")
    }

    @Test("a directory or a FIFO in place of model.safetensors or config.json is refused by type",
          arguments: ["model.safetensors", "config.json"], [false, true])
    func specialFiles(_ name: String, _ fifo: Bool) throws {
        let scratch = try TestCheckpoints.scratchDirectory("special-hf")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let folder = scratch + "/hf"
        try FileManager.default.copyItem(atPath: TestCheckpoints.path("llama3-tiny/hf"), toPath: folder)
        let target = folder + "/" + name
        if fifo { try TestCheckpoints.makeFIFO(at: target) } else { try TestCheckpoints.makeDirectory(at: target) }
        let start = Date()
        #expect(throws: FileIOError.notARegularFile(path: target, kind: fifo ? .fifo : .directory)) {
            try HFCheckpointFolder(directory: folder)
        }
        #expect(Date().timeIntervalSince(start) < 5)
    }
}

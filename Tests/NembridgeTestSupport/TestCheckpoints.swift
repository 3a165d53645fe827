import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Finds the committed fixtures in `TestCheckpoints/` and makes scratch folders for tests.
public enum TestCheckpoints {
    /// The repository root, found from this file's location.
    public static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// Path of `relative` inside `TestCheckpoints/`.
    public static func path(_ relative: String) -> String {
        (root as NSString).appendingPathComponent("TestCheckpoints/\(relative)")
    }

    /// The HF fixture folders written by real transformers (and the hand-written DeciLM one).
    public static let hfFolders = [
        "llama3-tiny/hf", "llama32-tied-tiny/hf", "llama3-sharded-tiny/hf", "nemotron-h-tiny/hf",
        "nemotron3-moe-tiny/hf", "decilm-tiny/hf", "nemotron3-super-tiny/hf",
    ]

    /// A fresh empty directory under the system temporary directory.
    public static func scratchDirectory(_ label: String = "test") throws -> String {
        let path = (NSTemporaryDirectory() as NSString)
            .appendingPathComponent("nembridge-\(label)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    public static func readFile(_ path: String) throws -> [UInt8] {
        Array(try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// Replaces `path` (a file, or nothing) by a FIFO. If a reader ever blocked in `open()` on it,
    /// a writer opens it after `watchdog` seconds, so a test fails on the time it took instead of
    /// hanging forever.
    public static func makeFIFO(at path: String, watchdog: TimeInterval = 10) throws {
        if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
        guard mkfifo(path, 0o600) == 0 else { throw CocoaError(.fileWriteUnknown) }
        let release = Thread {
            Thread.sleep(forTimeInterval: watchdog)
            let writer = open(path, O_WRONLY | O_NONBLOCK)
            if writer >= 0 { close(writer) }
        }
        release.start()
    }

    /// Replaces `path` (a file, or nothing) by an empty directory.
    public static func makeDirectory(at path: String) throws {
        if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
    }
}

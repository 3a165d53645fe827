import Foundation

/// A committed golden text file: compared with what a test made, or rewritten from it when
/// `NEMBRIDGE_UPDATE_GOLDEN` is set.
public enum GoldenFile {
    /// nil when `text` equals the golden file at `path` (or the file was just rewritten), else
    /// where they first differ, for the test to record.
    public static func difference(_ text: String, path: String) throws -> String? {
        if ProcessInfo.processInfo.environment["NEMBRIDGE_UPDATE_GOLDEN"] != nil {
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            return nil
        }
        let expected = try String(contentsOfFile: path, encoding: .utf8)
        guard text != expected else { return nil }
        let ours = text.split(separator: "\n", omittingEmptySubsequences: false)
        let theirs = expected.split(separator: "\n", omittingEmptySubsequences: false)
        let first = (0..<min(ours.count, theirs.count)).first { ours[$0] != theirs[$0] } ?? min(ours.count, theirs.count)
        return "\((path as NSString).lastPathComponent) differs at line \(first + 1):\n  plan:   \(first < ours.count ? ours[first] : "(end)")\n  golden: \(first < theirs.count ? theirs[first] : "(end)")"
    }
}

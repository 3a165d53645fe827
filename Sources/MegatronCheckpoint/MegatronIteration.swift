import Foundation
import TensorCore

/// Which saved iteration a Megatron save directory points at: the contents of
/// `latest_checkpointed_iteration.txt`, and the name of the iteration directory.
///
/// Python: `megatron/training/checkpointing.py` `read_metadata` (an integer > 0, or `release`)
/// and `get_checkpoint_name` (`iter_{:07d}`, or `release`).
public enum MegatronIteration: Sendable, Hashable, CustomStringConvertible {
    case number(Int)
    case release

    /// The tracker file's name inside a save directory.
    public static let trackerFileName = "latest_checkpointed_iteration.txt"

    /// `iter_0000100` or `release`.
    public var directoryName: String {
        switch self {
        case .number(let value):
            let digits = String(value)
            return "iter_" + String(repeating: "0", count: max(0, 7 - digits.count)) + digits
        case .release:
            return "release"
        }
    }

    public var description: String {
        switch self {
        case .number(let value): String(value)
        case .release: "release"
        }
    }

    /// Parses the tracker file's text the way `read_metadata` does: surrounding whitespace is
    /// stripped, then an integer > 0 or the word `release`. `file` names the file in errors.
    public init(trackerText text: String, file: String) throws {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if trimmed == "release" {
            self = .release
            return
        }
        guard let value = Int(trimmed) else {
            throw MegatronCheckpointError.notACheckpoint(
                path: file, reason: "expected an iteration number or `release`, found `\(MessageText.quoted(trimmed, limit: 40))`")
        }
        guard value > 0 else {
            throw MegatronCheckpointError.notACheckpoint(path: file, reason: "iteration \(value) is not > 0")
        }
        self = .number(value)
    }

    /// Reads `latest_checkpointed_iteration.txt` at `path` (a regular file of at most 4 KiB).
    public init(trackerFile path: String) throws {
        let bytes: [UInt8]
        do {
            bytes = try ReadOnlyFile.contents(atPath: path, limit: 4096)
        } catch FileIOError.tooLarge(_, let size, _) {
            throw MegatronCheckpointError.notACheckpoint(
                path: path, reason: "expected an iteration number or `release`, found \(size) bytes of other data")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw MegatronCheckpointError.notACheckpoint(
                path: path, reason: "expected an iteration number or `release`, found \(bytes.count) bytes that are not UTF-8")
        }
        try self.init(trackerText: text, file: path)
    }

    /// The iteration an iteration directory's name stands for (`iter_0000100`, `release`), or nil.
    public init?(directoryName name: String) {
        if name == "release" {
            self = .release
            return
        }
        guard name.hasPrefix("iter_") else { return nil }
        let digits = name.dropFirst(5)
        guard digits.count >= 7, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let value = Int(digits) else { return nil }
        self = .number(value)
    }
}

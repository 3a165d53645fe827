import Foundation
import TensorCore

/// An output folder built under a staging name beside its target and published by one rename,
/// so the folder under its real name is complete or absent. The target must not exist yet.
public final class OutputFolder: @unchecked Sendable {
    public enum Failure: Error, Equatable, CustomStringConvertible {
        case alreadyExists(path: String)
        case cannotCreate(path: String, reason: String)
        case cannotPublish(path: String, reason: String)

        public var description: String {
            switch self {
            case .alreadyExists(let path): "\(MessageText.path(path)): output already exists (nembridge never overwrites; remove it or choose another --out)"
            case .cannotCreate(let path, let reason): "\(MessageText.path(path)): cannot create output folder: \(MessageText.quoted(reason, limit: nil))"
            case .cannotPublish(let path, let reason): "\(MessageText.path(path)): cannot publish output folder: \(MessageText.quoted(reason, limit: nil))"
            }
        }
    }

    /// Where the folder appears once published.
    public let path: String
    /// Where it is built until then.
    public let stagingPath: String
    private var published = false

    public init(path: String) throws {
        // Absolute first: Foundation's path helpers crash on a one-character relative name (`x`).
        let target = URL(fileURLWithPath: path).standardizedFileURL.path
        self.path = target
        let parent = (target as NSString).deletingLastPathComponent
        let name = (target as NSString).lastPathComponent
        stagingPath = ((parent.isEmpty ? "." : parent) as NSString)
            .appendingPathComponent(".\(name).nembridge-partial-\(ProcessInfo.processInfo.processIdentifier)")
        if FileManager.default.fileExists(atPath: target) { throw Failure.alreadyExists(path: target) }
        do {
            if FileManager.default.fileExists(atPath: stagingPath) {
                try FileManager.default.removeItem(atPath: stagingPath)
            }
            try FileManager.default.createDirectory(atPath: stagingPath, withIntermediateDirectories: true)
        } catch {
            throw Failure.cannotCreate(path: target, reason: "\(error.localizedDescription)")
        }
    }

    deinit { if !published { discard() } }

    /// Path of `name` inside the staging folder.
    public func stagedPath(_ name: String) -> String {
        (stagingPath as NSString).appendingPathComponent(name)
    }

    /// Renames the staging folder to `path`.
    public func publish() throws {
        if FileManager.default.fileExists(atPath: path) { throw Failure.alreadyExists(path: path) }
        guard rename(stagingPath, path) == 0 else {
            throw Failure.cannotPublish(path: path, reason: String(cString: strerror(errno)))
        }
        published = true
    }

    /// Removes the staging folder and everything in it.
    public func discard() {
        try? FileManager.default.removeItem(atPath: stagingPath)
    }
}

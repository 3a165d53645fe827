import Foundation
import Synchronization
import TensorCore

/// The completion records of one run's staging folder: which staged files an interrupted run
/// finished (kept by `--resume` when each still matches its record) and, as this run finishes
/// files, their new records.
///
/// Without resume nothing is kept. With it, every other file in the staging folder (a file
/// without a record, or whose bytes or plan no longer match, or a half-written temporary) is
/// removed first, so what is published is exactly what this run planned.
public final class StagingRecords: Sendable {
    public let stagingRoot: String
    /// Ties each record to this plan: the command, its options and the identity of every source
    /// file it reads. A record made under another fingerprint is not reused.
    public let fingerprint: String
    /// Records of the files kept from the interrupted run, by name.
    public let kept: [String: StagedFileRecord]
    private let made = Mutex<[String: StagedFileRecord]>([:])

    /// - Parameters:
    ///   - folder: the output folder; its staging folder is searched only if it `resumed`.
    ///   - fingerprint: see `fingerprint`.
    public init(folder: OutputFolder, fingerprint: String, workers: Int = 2) throws {
        stagingRoot = folder.stagingPath
        self.fingerprint = fingerprint
        guard folder.resumed else {
            kept = [:]
            return
        }
        var kept: [String: StagedFileRecord] = [:]
        for (name, record) in StagedFileRecord.all(stagingRoot: stagingRoot)
        where record.matches(stagingRoot: stagingRoot, planDigest: Self.digest(fingerprint, name), workers: workers) {
            kept[name] = record
        }
        self.kept = kept
        try Self.prune(stagingRoot, keeping: Set(kept.keys))
    }

    /// What the plan asks file `name` to be, as a record stores it.
    public func planDigest(_ name: String) -> UInt64 { Self.digest(fingerprint, name) }

    static func digest(_ fingerprint: String, _ name: String) -> UInt64 {
        let hasher = XXH3Hasher()
        Array((fingerprint + "\u{0}" + name).utf8).withUnsafeBytes { hasher.update($0) }
        return hasher.digest
    }

    /// Whether the staged file `name` (relative to the staging folder) is kept: the writer
    /// skips it, and its manifest rows come from `kept[name]`.
    public func isKept(_ name: String) -> Bool { kept[name] != nil }

    /// Records `name`, just finished (flushed and renamed into place), with its manifest entries.
    public func record(_ name: String, entries: [ChecksumManifest.Entry]) throws {
        let record = try StagedFileRecord.record(stagingRoot: stagingRoot, name: name, entries: entries, planDigest: planDigest(name))
        let count = made.withLock { made in
            made[name] = record
            return made.count
        }
        if let point = TestKillPoint.afterRecords, count >= point { TestKillPoint.reached() }
    }

    /// Part of every fingerprint: bump it when a writer's layout changes, so records of an older
    /// nembridge are not reused.
    public static let formatVersion = "nembridge-staging/1"

    /// A fingerprint from the command, the settings that shape its output (options, layout) and
    /// the identity of each source file it reads (path, device, inode, size, times).
    public static func fingerprint(command: String, settings: String, sources: some Sequence<ReadOnlyFile>) -> String {
        let identities = Set(sources.map { "\($0.path)=\($0.identityText)" }).sorted()
        return ([formatVersion, command, settings] + identities).joined(separator: "\n")
    }

    /// What was kept, for the user: `resumed: kept 3 complete files (1.2 MB) of the interrupted run; the rest is redone`.
    public var keptNote: String {
        let bytes = kept.values.reduce(Int64(0)) { $0 + $1.size }
        return "resumed: kept \(kept.count) complete file(s) (\(bytes) bytes) of the interrupted run; the rest is redone"
    }

    /// Removes the records: call it before the manifest is written (they are not output).
    public func finish() throws { try StagedFileRecord.removeAll(stagingRoot: stagingRoot) }

    /// Removes every file of the staging folder but `keeping` (and the records of those), then
    /// the directories left empty.
    static func prune(_ root: String, keeping: Set<String>) throws {
        let fm = FileManager.default
        var directories: [String] = []
        let keptRecords = Set(keeping.map { StagedFileRecord.recordPath(stagingRoot: root, name: $0) })
        for name in (fm.enumerator(atPath: root)?.allObjects as? [String]) ?? [] {
            let path = (root as NSString).appendingPathComponent(name)
            var isDirectory: ObjCBool = false
            guard fm.fileExists(atPath: path, isDirectory: &isDirectory) || (try? fm.destinationOfSymbolicLink(atPath: path)) != nil
            else { continue }
            if isDirectory.boolValue {
                directories.append(path)
            } else if !keeping.contains(name) && !keptRecords.contains(path) {
                try fm.removeItem(atPath: path)
            }
        }
        // Deepest first, so a parent empties after its children.
        for directory in directories.sorted(by: { $0.count > $1.count })
        where ((try? fm.contentsOfDirectory(atPath: directory)) ?? ["?"]).isEmpty {
            try fm.removeItem(atPath: directory)
        }
    }
}

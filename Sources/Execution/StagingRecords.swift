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
    private let keptRecords: Mutex<[String: StagedFileRecord]>
    private let made = Mutex<Set<String>>([])
    private let folder: OutputFolder
    private let workers: Int
    /// In a job: every output's name, bytes and owning rank, set by `skipped`.
    private let shares = Mutex<(names: [String], bytes: [Int64], owners: [Int])?>(nil)

    /// Records of the files not written by this run, by name: kept from an interrupted run (or
    /// an earlier attempt of the job), and in a job, rank 0's view of the other ranks' files.
    public var kept: [String: StagedFileRecord] { keptRecords.withLock { $0 } }

    /// - Parameters:
    ///   - folder: the output folder; its staging folder is searched only if it `resumed`.
    ///   - fingerprint: see `fingerprint`.
    public init(folder: OutputFolder, fingerprint: String, workers: Int = 2) throws {
        stagingRoot = folder.stagingPath
        self.fingerprint = fingerprint
        self.folder = folder
        self.workers = workers
        // A process of a job looks only at its own share's files, in `skipped`.
        guard folder.resumed else {
            keptRecords = Mutex([:])
            return
        }
        var kept: [String: StagedFileRecord] = [:]
        for (name, record) in StagedFileRecord.all(stagingRoot: stagingRoot)
        where record.matches(stagingRoot: stagingRoot, planDigest: Self.digest(fingerprint, name), workers: workers) {
            kept[name] = record
        }
        keptRecords = Mutex(kept)
        try Self.prune(stagingRoot, keeping: Set(kept.keys))
    }

    /// The outputs (`names` relative to the staging folder, with their planned `bytes`) this
    /// process does not write: alone, those kept from an interrupted run; in a job, the other
    /// ranks' shares and those of its own share whose files an earlier attempt completed (they
    /// are verified byte for byte; any other file of its share is removed, half-written
    /// temporaries included).
    public func skipped(names: [String], bytes: [Int64], progress: ProgressCounter? = nil) throws -> Set<Int> {
        let job = folder.job
        guard !job.isAlone else { return Set(names.indices.filter { isKept(names[$0]) }) }
        let owners = JobPlacement.shares(bytes: bytes, worldSize: job.worldSize)
        shares.withLock { $0 = (names, bytes, owners) }
        var skip = Set<Int>()
        var kept: [String: StagedFileRecord] = [:]
        for index in names.indices {
            let name = names[index]
            guard owners[index] == job.rank else {
                skip.insert(index)
                continue
            }
            let recordPath = StagedFileRecord.recordPath(stagingRoot: stagingRoot, name: name)
            if let record = StagedFileRecord.read(path: recordPath), record.name == name,
               record.matches(stagingRoot: stagingRoot, planDigest: planDigest(name), workers: workers) {
                kept[name] = record
                skip.insert(index)
                continue
            }
            unlink(recordPath)
            let staged = (stagingRoot as NSString).appendingPathComponent(name)
            unlink(staged)
            let directory = (staged as NSString).deletingLastPathComponent
            let prefix = ".\((name as NSString).lastPathComponent).nembridge-partial-"
            for entry in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where entry.hasPrefix(prefix) {
                unlink((directory as NSString).appendingPathComponent(entry))
            }
        }
        keptRecords.withLock { $0 = kept }
        let mine = names.indices.filter { owners[$0] == job.rank }
        progress?.note("\(job): its share is \(mine.count) of \(names.count) file(s), \(mine.reduce(Int64(0)) { $0 + bytes[$1] }) of \(bytes.reduce(0, +)) bytes; kept \(kept.count) of them from an earlier attempt")
        return skip
    }

    /// After this process's share is written. Alone: nothing. Rank 0 of a job: waits until every
    /// other rank's files are recorded (bounded: a rank that fails or falls silent ends the wait
    /// with an error naming it), takes their records as kept, and removes from the staging
    /// folder whatever is not a planned output (a dead attempt's temporaries). Any other rank:
    /// waits for rank 0 to publish, then throws `JobPartWritten` (the command ends there).
    public func completeShare(progress: ProgressCounter? = nil) throws {
        let job = folder.job
        guard !job.isAlone, let (names, bytes, owners) = shares.withLock({ $0 }) else { return }
        guard job.publishes else {
            try folder.awaitPublished()
            let mine = names.indices.filter { owners[$0] == job.rank }
            throw JobPartWritten(placement: job, files: mine.count, bytes: mine.reduce(Int64(0)) { $0 + bytes[$1] },
                                 jobBytes: bytes.reduce(0, +), output: folder.path)
        }
        var missing = Set(names.indices.filter { owners[$0] != job.rank })
        let jobBytes = bytes.reduce(0, +)
        try folder.coordination?.wait(for: "the other ranks' parts", watching: { Set(missing.map { owners[$0] }).sorted() }) {
            let pending = missing.reduce(Int64(0)) { $0 + bytes[$1] }
            progress?.status = "job: \(names.count - missing.count) of \(names.count) files, \(jobBytes - pending) of \(jobBytes) bytes done"
            for index in missing {
                let name = names[index]
                // Not before its owner is done with it: until then an earlier attempt's record may
                // still fail its owner's check and be rewritten.
                guard folder.coordination?.shareWritten(rank: owners[index]) ?? true else { continue }
                guard let record = StagedFileRecord.read(path: StagedFileRecord.recordPath(stagingRoot: stagingRoot, name: name)),
                      record.name == name, record.planDigest == planDigest(name), record.entries.allSatisfy({ $0.file == name }),
                      let size = try? FileManager.default.attributesOfItem(atPath: (stagingRoot as NSString).appendingPathComponent(name))[.size] as? Int,
                      Int64(size) == record.size
                else { continue }
                keptRecords.withLock { $0[name] = record }
                missing.remove(index)
            }
            return missing.isEmpty
        }
        try Self.prune(stagingRoot, keeping: Set(names))
        var perRank = [Int64](repeating: 0, count: job.worldSize)
        var filesPerRank = [Int](repeating: 0, count: job.worldSize)
        for index in names.indices {
            perRank[owners[index]] += bytes[index]
            filesPerRank[owners[index]] += 1
        }
        progress?.note("job \(job.jobID): \(job.worldSize) processes wrote \(names.count) file(s), \(bytes.reduce(0, +)) bytes: "
            + perRank.indices.map { "rank \($0) \(filesPerRank[$0]) file(s) \(perRank[$0]) bytes" }.joined(separator: ", "))
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
    public func isKept(_ name: String) -> Bool { keptRecords.withLock { $0[name] != nil } }

    /// Records `name`, just finished (flushed and renamed into place), with its manifest entries.
    public func record(_ name: String, entries: [ChecksumManifest.Entry]) throws {
        try record(name, count: entries.count, entry: { entries[$0] })
    }

    /// `record(_:entries:)` of `count` entries made one at a time (called twice per index).
    public func record(_ name: String, count entryCount: Int, entry: (Int) throws -> ChecksumManifest.Entry) throws {
        try StagedFileRecord.record(stagingRoot: stagingRoot, name: name, count: entryCount, entry: entry, planDigest: planDigest(name))
        let count = made.withLock { made in
            made.insert(name)
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

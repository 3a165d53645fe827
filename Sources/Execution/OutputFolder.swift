import Foundation
import TensorCore
#if canImport(Glibc)
import Glibc
#endif

/// An output folder built under a staging name beside its target and published by one rename,
/// so the folder under its real name is complete or absent. The target must not exist yet.
///
/// A run owns its target through a lock file beside it (`.NAME.nembridge-lock`, `flock`ed for the
/// run's lifetime and holding the owner's pid, host and start time): the kernel drops the lock
/// when the process dies, even by `kill -9`, so the next run on the same target knows the staging
/// folder it finds is a dead run's, and removes it (or, with `resume`, keeps it). A live owner
/// makes the next run stop with an error naming it.
public final class OutputFolder: @unchecked Sendable {
    public enum Failure: Error, Equatable, CustomStringConvertible {
        case alreadyExists(path: String)
        case cannotCreate(path: String, reason: String)
        case cannotPublish(path: String, reason: String)
        /// Another live run owns the target (`owner` is what its lock file says).
        case inUse(path: String, owner: String)

        public var description: String {
            switch self {
            case .alreadyExists(let path): "\(MessageText.path(path)): output already exists (nembridge never overwrites; remove it or choose another --out)"
            case .cannotCreate(let path, let reason): "\(MessageText.path(path)): cannot create output folder: \(MessageText.quoted(reason, limit: nil))"
            case .cannotPublish(let path, let reason): "\(MessageText.path(path)): cannot publish output folder: \(MessageText.quoted(reason, limit: nil))"
            case .inUse(let path, let owner):
                "\(MessageText.path(path)): another nembridge run is writing this output (\(MessageText.quoted(owner))); wait for it to finish or stop it"
            }
        }
    }

    /// Where the folder appears once published.
    public let path: String
    /// Where it is built until then.
    public let stagingPath: String
    /// The lock file that marks the run owning `path`.
    public let lockPath: String
    /// Whether the staging folder of an interrupted run was kept (`resume`) rather than started anew.
    public let resumed: Bool
    /// What was cleaned up or kept from earlier runs, for the user.
    public private(set) var notes: [String] = []
    private var lockDescriptor: Int32 = -1
    private var published = false
    /// This process's place in a job (alone unless a launcher or flags say otherwise).
    public let job: JobPlacement
    /// The job's coordination folder, for a process of a job of more than one.
    public let coordination: JobCoordination?
    /// A process of a job other than rank 0 that wrote its share and saw the output published.
    var partWritten = false

    /// - Parameters:
    ///   - resume: keep an interrupted run's staging folder (its verified files are kept).
    ///   - job: in a job of several processes, each joins the one staging folder (taking the
    ///     lock shared, so a lone run cannot start beside them) and keeps its verified files of
    ///     an earlier attempt, as with `resume`; a failing process leaves the staging folder for
    ///     the next attempt and says so to the others; only rank 0 publishes.
    public init(path: String, resume: Bool = false, job: JobPlacement = .alone) throws {
        self.job = job
        // Absolute first: Foundation's path helpers crash on a one-character relative name (`x`).
        let target = URL(fileURLWithPath: path).standardizedFileURL.path
        self.path = target
        let parent = (target as NSString).deletingLastPathComponent
        let name = (target as NSString).lastPathComponent
        let directory = parent.isEmpty ? "." : parent
        stagingPath = (directory as NSString).appendingPathComponent(".\(name).nembridge-staging")
        lockPath = (directory as NSString).appendingPathComponent(".\(name).nembridge-lock")
        let jobFolder = (directory as NSString).appendingPathComponent(".\(name).nembridge-job")
        if FileManager.default.fileExists(atPath: target) { throw Failure.alreadyExists(path: target) }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw Failure.cannotCreate(path: target, reason: "\(error.localizedDescription)")
        }
        lockDescriptor = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard lockDescriptor >= 0 else {
            throw Failure.cannotCreate(path: target, reason: "cannot open \(lockPath): \(String(cString: strerror(errno)))")
        }
        guard flock(lockDescriptor, (job.isAlone ? LOCK_EX : LOCK_SH) | LOCK_NB) == 0 else {
            let owner = Self.ownerText(lockDescriptor)
            close(lockDescriptor)
            lockDescriptor = -1
            throw Failure.inUse(path: target, owner: owner)
        }
        // A run that published while this one waited for the lock: its output stands.
        if FileManager.default.fileExists(atPath: target) {
            Self.release(lockDescriptor, lockPath)
            throw Failure.alreadyExists(path: target)
        }
        if !job.isAlone {
            do {
                try FileManager.default.createDirectory(atPath: stagingPath, withIntermediateDirectories: true)
                coordination = try JobCoordination(directory: jobFolder, outputPath: target, placement: job)
            } catch {
                close(lockDescriptor)
                lockDescriptor = -1
                throw error
            }
            notes.append("\(job): writing its share into \(stagingPath)")
            // Not a resume of the whole folder: each rank checks only its own share's files.
            resumed = false
            return
        }
        coordination = nil
        Self.recordOwner(lockDescriptor)
        var kept = false
        do {
            if FileManager.default.fileExists(atPath: stagingPath) {
                if resume {
                    kept = true
                    notes.append("resuming the interrupted run's staging folder \(stagingPath)")
                } else {
                    try FileManager.default.removeItem(atPath: stagingPath)
                    notes.append("removed the staging folder of an interrupted run (\(stagingPath))")
                }
            }
            notes += try Self.removeOldStaging(directory: directory, name: name)
            // A dead job's coordination folder (this run holds the lock exclusively, so no
            // process of a job is alive on this output).
            if FileManager.default.fileExists(atPath: jobFolder) { try FileManager.default.removeItem(atPath: jobFolder) }
            if !kept { try FileManager.default.createDirectory(atPath: stagingPath, withIntermediateDirectories: true) }
        } catch {
            Self.release(lockDescriptor, lockPath)
            throw Failure.cannotCreate(path: target, reason: "\(error.localizedDescription)")
        }
        resumed = kept
    }

    deinit { if !published { discard() } }

    /// Path of `name` inside the staging folder.
    public func stagedPath(_ name: String) -> String {
        (stagingPath as NSString).appendingPathComponent(name)
    }

    /// Renames the staging folder to `path`, then gives up the target. In a job, rank 0 first
    /// waits until every rank has joined, and afterwards until each has seen the output.
    public func publish() throws {
        precondition(job.publishes, "only rank 0 publishes")
        try coordination?.awaitAllJoined()
        if FileManager.default.fileExists(atPath: path) { throw Failure.alreadyExists(path: path) }
        guard rename(stagingPath, path) == 0 else {
            throw Failure.cannotPublish(path: path, reason: String(cString: strerror(errno)))
        }
        published = true
        coordination?.finishPublished()
        releaseLock()
    }

    /// A process of a job other than rank 0, its share written: waits for rank 0 to publish.
    public func awaitPublished() throws {
        try coordination?.awaitPublished()
        partWritten = true
        releaseLock()
    }

    /// Removes the staging folder and everything in it, and gives up the target. In a job the
    /// staging folder holds the other ranks' parts: it stays for the next attempt, and the
    /// others learn that this rank failed.
    public func discard() {
        if let coordination {
            if !partWritten && !published { coordination.markFailed() }
            coordination.stop()
        } else {
            try? FileManager.default.removeItem(atPath: stagingPath)
        }
        releaseLock()
    }

    private func releaseLock() {
        guard lockDescriptor >= 0 else { return }
        // The lock file of a job is shared by its ranks: only the last one (rank 0, after
        // publishing) unlinks it.
        if job.isAlone || published {
            Self.release(lockDescriptor, lockPath)
        } else {
            close(lockDescriptor)
        }
        lockDescriptor = -1
    }

    /// Unlinks the lock file while still holding it, so no run can lock the old inode afterwards.
    private static func release(_ descriptor: Int32, _ path: String) {
        unlink(path)
        close(descriptor)
    }

    /// The owner's record: `pid <n> on <host>, started <ISO 8601 date>`.
    private static func recordOwner(_ descriptor: Int32) {
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, host.count - 1)
        let hostName = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let started = ISO8601DateFormatter().string(from: Date())
        let text = Array("pid \(getpid()) on \(hostName), started \(started)\n".utf8)
        _ = ftruncate(descriptor, 0)
        _ = text.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, 0) }
    }

    private static func ownerText(_ descriptor: Int32) -> String {
        var bytes = [UInt8](repeating: 0, count: 200)
        let count = bytes.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, $0.count, 0) }
        guard count > 0 else { return "owner not recorded yet" }
        // One line, printable: the record is ours, but the file could have been edited.
        let text = String(decoding: bytes.prefix(count), as: UTF8.self)
            .prefix { $0 != "\n" }.map { $0.isASCII && !$0.isNewline && ($0.asciiValue ?? 0) >= 0x20 ? String($0) : "?" }.joined()
        return text.isEmpty ? "owner not recorded yet" : text
    }

    /// Staging folders of nembridge versions that named them by pid (`.NAME.nembridge-partial-PID`):
    /// removed when that process is gone.
    private static func removeOldStaging(directory: String, name: String) throws -> [String] {
        let prefix = ".\(name).nembridge-partial-"
        var notes: [String] = []
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where entry.hasPrefix(prefix) {
            guard let pid = Int32(entry.dropFirst(prefix.count)), pid > 0 else { continue }
            guard kill(pid, 0) != 0, errno == ESRCH else { continue }
            let stale = (directory as NSString).appendingPathComponent(entry)
            try FileManager.default.removeItem(atPath: stale)
            notes.append("removed the staging folder of a dead run (\(stale))")
        }
        return notes
    }
}

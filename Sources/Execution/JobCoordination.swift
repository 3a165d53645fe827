import Foundation
import TensorCore
#if canImport(Glibc)
import Glibc
#endif

/// How the processes of one job coordinate: only through the shared output file system, in a
/// folder beside the staging folder (`.NAME.nembridge-job/`), so whatever file system holds the
/// output (Lustre, GPFS, NFS) is all they need in common.
///
/// - `job`: the job's id, written by the first process to arrive; a live job with another id
///   owns the output and this one stops.
/// - `rank-K.alive`: rank K's heartbeat, its modification time renewed every second while the
///   process lives. Silence for longer than the part timeout means rank K is dead.
/// - `rank-K.failed`: rank K stopped with an error (believed only when newer than this process).
/// - `rank-K.share`: rank K's share is written and recorded, in this attempt (renewed while it
///   waits for the output). Rank 0 believes a rank's records only after it: an earlier
///   attempt's record may still be re-verified, and rewritten, by its owner.
/// - `published`: rank 0 renamed the staging folder into place; `rank-K.done`: rank K saw it.
///   Rank 0 removes the folder once every live rank has said done.
public final class JobCoordination: @unchecked Sendable {
    public enum Failure: Error, Equatable, CustomStringConvertible {
        /// Rank `rank` reported an error while this one waited for `waitingFor`.
        case rankFailed(output: String, rank: Int, waitingFor: String)
        /// No heartbeat from `rank` for `seconds` (or none ever) while waiting for `waitingFor`.
        case rankSilent(output: String, rank: Int, seconds: Int, waitingFor: String)
        /// Rank `rank` stopped this attempt because of rank `cause` (its failure's own cause), seen
        /// while this one waited for `waitingFor`: the cause is named, not the rank that noticed it.
        case rankLost(output: String, rank: Int, cause: Int, waitingFor: String)
        /// Another job (`job`) with live processes is writing the output.
        case otherJob(output: String, job: String)

        public var description: String {
            switch self {
            case .rankFailed(let output, let rank, let what):
                "\(MessageText.path(output)): rank \(rank) of the job stopped with an error while this process waited for \(what); nothing is published (re-run the job: finished parts are kept)"
            case .rankSilent(let output, let rank, let seconds, let what):
                "\(MessageText.path(output)): no sign of life from rank \(rank) of the job for \(seconds) s (--part-timeout) while waiting for \(what); nothing is published (re-run the job: finished parts are kept)"
            case .rankLost(let output, let rank, let cause, let what):
                "\(MessageText.path(output)): rank \(cause) of the job stopped (rank \(rank) saw it and stopped too) while this process waited for \(what); nothing is published (re-run the job: finished parts are kept)"
            case .otherJob(let output, let job):
                "\(MessageText.path(output)): job \(MessageText.quoted(job)) is writing this output; wait for it or choose another --out"
            }
        }
    }

    public let directory: String
    public let placement: JobPlacement
    let outputPath: String
    /// When this process joined, in the file system's clock (its heartbeat's first time): every
    /// time compared here is a file's, so the clocks of different nodes never meet.
    private(set) var started = Date()
    private var heartbeat: Int32 = -1
    private var timer: DispatchSourceTimer?

    /// Joins the job's folder `directory` (creating it), or stops if another live job owns it;
    /// a dead job's folder is taken over.
    init(directory: String, outputPath: String, placement: JobPlacement) throws {
        self.directory = directory
        self.placement = placement
        self.outputPath = outputPath
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let jobFile = path("job")
        let deadline = Date().addingTimeInterval(placement.partTimeout)
        while true {
            if Self.createExclusive(jobFile, placement.jobID) { break }
            let owner = (try? String(contentsOfFile: jobFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            if owner == placement.jobID { break }
            if anyAlive(except: nil) {
                throw Failure.otherJob(output: outputPath, job: owner)
            }
            // A dead job's folder: its first rank clears it; the others wait for the new id.
            if placement.publishes {
                for entry in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] { unlink(path(entry)) }
                continue
            }
            guard Date() < deadline else { throw Failure.rankSilent(output: outputPath, rank: 0, seconds: Int(placement.partTimeout), waitingFor: "the job to start") }
            usleep(100_000)
        }
        if placement.publishes { unlink(path("published")) }
        unlink(path("rank-\(placement.rank).failed"))
        unlink(path("rank-\(placement.rank).done"))
        unlink(path("rank-\(placement.rank).share"))
        heartbeat = open(path("rank-\(placement.rank).alive"), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard heartbeat >= 0 else {
            throw OutputFolder.Failure.cannotCreate(path: outputPath, reason: "cannot create \(path("rank-\(placement.rank).alive")): \(String(cString: strerror(errno)))")
        }
        let text = Array("pid \(getpid()), \(placement)\n".utf8)
        _ = text.withUnsafeBytes { pwrite(heartbeat, $0.baseAddress, $0.count, 0) }
        started = now()
        let descriptor = heartbeat
        let timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "nembridge.heartbeat"))
        timer.schedule(deadline: .now() + 1, repeating: 1)
        // The descriptor stays open after the folder is removed: renewing an unlinked file is harmless.
        timer.setEventHandler { _ = futimens(descriptor, nil) }
        timer.resume()
        self.timer = timer
    }

    deinit { stop() }

    /// Stops the heartbeat (the process is finishing).
    public func stop() {
        timer?.cancel()
        timer = nil
        if heartbeat >= 0 { close(heartbeat) }
        heartbeat = -1
    }

    func path(_ name: String) -> String { (directory as NSString).appendingPathComponent(name) }

    private static func createExclusive(_ path: String, _ text: String) -> Bool {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { return false }
        let bytes = Array((text + "\n").utf8)
        _ = bytes.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, 0) }
        fsync(descriptor)
        close(descriptor)
        return true
    }

    private func touch(_ name: String, extra: String = "") {
        let descriptor = open(path(name), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        if descriptor >= 0 {
            let bytes = Array("\(placement.jobID)\n\(extra)".utf8)
            _ = bytes.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, 0) }
            fsync(descriptor)
            close(descriptor)
        }
    }

    private func modified(_ name: String) -> Date? {
        var info = stat()
        guard stat(path(name), &info) == 0 else { return nil }
        return Date(timeIntervalSince1970: Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9)
    }

    /// The file system's time now: this process's heartbeat renewed and read back.
    private func now() -> Date {
        var info = stat()
        guard heartbeat >= 0, futimens(heartbeat, nil) == 0, fstat(heartbeat, &info) == 0 else { return Date() }
        return Date(timeIntervalSince1970: Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9)
    }

    /// A marker of this attempt: written after this process joined, not left by an earlier
    /// attempt (a live process renews its heartbeat every second, so it soon counts).
    private func current(_ name: String) -> Date? {
        modified(name).flatMap { $0 >= started ? $0 : nil }
    }

    /// Seconds since rank `rank`'s last heartbeat; nil if it has not joined this attempt.
    func silence(_ rank: Int) -> TimeInterval? {
        current("rank-\(rank).alive").map { max(0, now().timeIntervalSince($0)) }
    }

    private func anyAlive(except rank: Int?) -> Bool {
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where entry.hasSuffix(".alive") {
            if entry == "rank-\(rank ?? -1).alive" { continue }
            if let date = modified(entry), Date().timeIntervalSince(date) < placement.partTimeout { return true }
        }
        return false
    }

    /// This rank stopped with an error: the others stop waiting for it.
    /// Its second line names the rank this one stopped waiting for, when that was the cause.
    public func markFailed() {
        touch("rank-\(placement.rank).failed", extra: causeRank.map { "\($0)\n" } ?? "")
    }
    /// The other rank this one's last wait ended on (silent or failed), if any.
    private var causeRank: Int?
    /// The rank that rank `rank`'s failure marker names as its cause.
    private func cause(ofFailed rank: Int) -> Int? {
        let lines = ((try? String(contentsOfFile: path("rank-\(rank).failed"), encoding: .utf8)) ?? "").split(separator: "\n")
        return lines.count > 1 ? Int(lines[1]) : nil
    }
    /// This rank saw the output published.
    func markDone() { touch("rank-\(placement.rank).done") }
    /// Rank `rank` has written and recorded its share in this attempt.
    public func shareWritten(rank: Int) -> Bool { current("rank-\(rank).share") != nil }
    /// Rank 0 published the output.
    func markPublished() { touch("published") }
    var isPublished: Bool {
        (try? String(contentsOfFile: path("published"), encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) == placement.jobID
    }

    /// Polls `done` until it holds, while every rank in `watching` shows signs of life: a rank
    /// that reported failure, or whose heartbeat is older than the part timeout (or that never
    /// joined within it), ends the wait with an error naming it and what was awaited.
    func wait(for what: String, watching: @escaping () -> [Int], until done: () throws -> Bool) throws {
        while true {
            if try done() { return }
            let ranks = watching().filter { $0 != placement.rank }
            // A dead rank first: it is the cause when another one failed waiting for it.
            for rank in ranks {
                let quiet = silence(rank) ?? now().timeIntervalSince(started)
                if quiet > placement.partTimeout {
                    causeRank = rank
                    throw Failure.rankSilent(output: outputPath, rank: rank, seconds: Int(quiet.rounded()), waitingFor: what)
                }
            }
            for rank in ranks where current("rank-\(rank).failed") != nil {
                // A rank that stopped because of a third one (dead before this one started
                // watching it): the third is the cause.
                if let cause = cause(ofFailed: rank), cause != rank, cause != placement.rank {
                    causeRank = cause
                    throw Failure.rankLost(output: outputPath, rank: rank, cause: cause, waitingFor: what)
                }
                causeRank = rank
                throw Failure.rankFailed(output: outputPath, rank: rank, waitingFor: what)
            }
            usleep(100_000)
        }
    }

    /// Rank 0, before publishing: every rank has joined (so none arrives after the output is
    /// there and takes it for a finished one).
    func awaitAllJoined() throws {
        let others = (0..<placement.worldSize).filter { $0 != placement.rank }
        try wait(for: "every rank to start", watching: { others.filter { self.silence($0) == nil } }) {
            others.allSatisfy { silence($0) != nil }
        }
    }

    /// Rank 0, after publishing: marks it, waits (bounded) until every live rank has seen it,
    /// then removes the job's folder.
    func finishPublished() {
        markPublished()
        let others = (0..<placement.worldSize).filter { $0 != placement.rank }
        let deadline = Date().addingTimeInterval(placement.partTimeout)
        while Date() < deadline {
            let waiting = others.filter { rank in
                current("rank-\(rank).done") == nil && (silence(rank).map { $0 < placement.partTimeout } ?? false)
            }
            if waiting.isEmpty { break }
            usleep(50_000)
        }
        stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// A rank other than 0: waits until rank 0 publishes the output.
    func awaitPublished() throws {
        // Every other rank is watched: all of them live until the output is published.
        let everyone = Array(0..<placement.worldSize)
        try wait(for: "rank 0 to publish the output", watching: { everyone }) {
            // Renewed: rank 0 counts it only once it is newer than rank 0's own start.
            touch("rank-\(placement.rank).share")
            return isPublished && FileManager.default.fileExists(atPath: outputPath)
        }
        markDone()
        stop()
    }
}

/// Not a failure: a process other than rank 0 wrote its share of a job's output and saw rank 0
/// publish it. The command ends there (rank 0 writes the rest and reports the whole).
public struct JobPartWritten: Error, CustomStringConvertible {
    public var placement: JobPlacement
    public var files: Int
    public var bytes: Int64
    public var jobBytes: Int64
    public var output: String

    public var description: String {
        let share = jobBytes > 0 ? String(format: " (%.1f%% of the job's %lld)", Double(bytes) * 100 / Double(jobBytes), jobBytes) : ""
        return "\(placement): wrote \(files) file(s), \(bytes) bytes\(share); rank 0 published \(MessageText.path(output))"
    }
}

import Foundation
import TensorCore
#if canImport(Glibc)
import Glibc
#endif

/// The proof that one staged output file is complete, written into the staging folder once the
/// file is flushed and renamed to its final name: what `--resume` keeps a file by.
///
/// It holds what the manifest needs for the file (its entries and its `files` row), so a resumed
/// run neither rewrites nor rehashes-from-source a kept file: it checks the file against the
/// record (every byte: the entries' ranges and the rest) and takes the manifest rows from it.
/// `planDigest` says what the plan asked the file to be (its layout and the identity of the
/// sources it is made from); a record of another plan is not reused.
///
/// One record per file, each in a file of its own named after the output file, so independent
/// writers (threads now, processes of one multi-node run later, each with a disjoint share of the
/// files) record completion without coordinating; whoever publishes reads them all.
public struct StagedFileRecord: Sendable, Equatable {
    /// The folder in the staging folder that holds the records; removed before the manifest is
    /// written, so it is never published.
    public static let directoryName = ".nembridge-records"
    public static let format = "nembridge-staged-file/1"

    /// The file's path relative to the staging folder (`release/__0_0.distcp`).
    public var name: String
    public var size: Int64
    /// XXH3-64 of the bytes no entry covers, as `ChecksumManifest.FileEntry.restXXH3`.
    public var restXXH3: UInt64
    /// The file's manifest entries (tensor or chunk ranges with their XXH3), files relative to
    /// the staging folder.
    public var entries: [ChecksumManifest.Entry]
    public var planDigest: UInt64

    public init(name: String, size: Int64, restXXH3: UInt64, entries: [ChecksumManifest.Entry], planDigest: UInt64) {
        self.name = name
        self.size = size
        self.restXXH3 = restXXH3
        self.entries = entries
        self.planDigest = planDigest
    }

    /// The manifest's `files` row for this file.
    public var fileEntry: ChecksumManifest.FileEntry { .init(name: name, size: size, restXXH3: restXXH3) }

    /// Records the staged file `name` (already flushed and renamed into place) with its
    /// `entries`: reads only the bytes they do not cover, then writes the record durably.
    public static func record(stagingRoot: String, name: String, entries: [ChecksumManifest.Entry], planDigest: UInt64) throws {
        try record(stagingRoot: stagingRoot, name: name, count: entries.count, entry: { entries[$0] }, planDigest: planDigest)
    }

    /// `record(stagingRoot:name:entries:planDigest:)` of `count` entries made one at a time by
    /// `entry` (called twice per index): a file of 200,000 chunks is recorded without holding
    /// their entries or the record's text, only their byte ranges.
    public static func record(stagingRoot: String, name: String, count: Int, entry: (Int) throws -> ChecksumManifest.Entry,
                              planDigest: UInt64) throws {
        let covered = try (0..<count).map { try entry($0).range }
        let file = try ChecksumManifest.fileEntry(root: stagingRoot, name: name, covered: covered)
        // The file's rename must be on disk before a record says it is there.
        syncDirectory((stagingRoot as NSString).appendingPathComponent((name as NSString).deletingLastPathComponent))
        let head = StagedFileRecord(name: name, size: file.size, restXXH3: file.restXXH3, entries: [], planDigest: planDigest)
        try head.write(stagingRoot: stagingRoot, count: count, entry: entry)
    }

    /// Where the record of `name` lives: named by a digest of the name, so any path maps to one
    /// flat, safe file name.
    public static func recordPath(stagingRoot: String, name: String) -> String {
        let hasher = XXH3Hasher()
        Array(name.utf8).withUnsafeBytes { hasher.update($0) }
        return ((stagingRoot as NSString).appendingPathComponent(directoryName) as NSString)
            .appendingPathComponent("\(hasher.digest.hexDigest).json")
    }

    public func write(stagingRoot: String) throws {
        try write(stagingRoot: stagingRoot, count: entries.count, entry: { entries[$0] })
    }

    /// Writes the record (with `count` entries made by `entry` in place of `entries`) durably,
    /// through a bounded buffer: the text `JSONWriter.compact(json)` gives.
    func write(stagingRoot: String, count: Int, entry: (Int) throws -> ChecksumManifest.Entry) throws {
        let directory = (stagingRoot as NSString).appendingPathComponent(Self.directoryName)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let output = try AtomicOutputFile(path: Self.recordPath(stagingRoot: stagingRoot, name: name))
        var buffer: [UInt8] = []
        var position: Int64 = 0
        func flush() throws {
            try output.write(buffer, at: position)
            position += Int64(buffer.count)
            buffer.removeAll(keepingCapacity: true)
        }
        // The entries are the last member: `json` without them ends in `[]}`, and they go between.
        let head = StagedFileRecord(name: name, size: size, restXXH3: restXXH3, entries: [], planDigest: planDigest)
        let headText = JSONWriter.compact(head.json)
        buffer.append(contentsOf: headText.dropLast(2).utf8)
        for index in 0..<count {
            if index > 0 { buffer.append(UInt8(ascii: ",")) }
            buffer.append(contentsOf: JSONWriter.compact(ChecksumManifest.json(try entry(index))).utf8)
            if buffer.count >= 1 << 20 { try flush() }
        }
        buffer.append(contentsOf: "]}\n".utf8)
        try flush()
        try output.publish()
        Self.syncDirectory(directory)
    }

    public var json: JSONValue {
        .object([
            ("format", .string(Self.format)), ("name", .string(name)), ("bytes", .number(JSONNumber(Int(size)))),
            ("rest_xxh3", .string(restXXH3.hexDigest)), ("plan", .string(planDigest.hexDigest)),
            ("entries", .array(entries.map(ChecksumManifest.json))),
        ])
    }

    /// The record at `path`, or nil if it is unreadable or malformed (its file is then redone).
    static func read(path: String) -> StagedFileRecord? {
        guard let bytes = try? ReadOnlyFile.contents(atPath: path), let document = try? JSONParser.parse(bytes),
            document["format"]?.stringValue == format, let name = document["name"]?.stringValue,
            let size = document["bytes"]?.intValue, let rest = document["rest_xxh3"]?.stringValue.flatMap({ UInt64($0, radix: 16) }),
            let plan = document["plan"]?.stringValue.flatMap({ UInt64($0, radix: 16) }), let items = document["entries"]?.arrayValue
        else { return nil }
        var entries: [ChecksumManifest.Entry] = []
        for item in items {
            guard let name = item["name"]?.stringValue, let file = item["file"]?.stringValue, let offset = item["offset"]?.intValue,
                let count = item["bytes"]?.intValue, let range = ByteRange(validatingOffset: Int64(offset), count: Int64(count)),
                let digest = item["xxh3"]?.stringValue.flatMap({ UInt64($0, radix: 16) })
            else { return nil }
            entries.append(ChecksumManifest.Entry(
                name: name, file: file, range: range, xxh3: digest, dtype: item["dtype"]?.stringValue.flatMap { DType(safetensorsName: $0) },
                shape: item["shape"]?.arrayValue.map { $0.compactMap(\.intValue) }))
        }
        return StagedFileRecord(name: name, size: Int64(size), restXXH3: rest, entries: entries, planDigest: plan)
    }

    /// Every readable record in the staging folder, by file name.
    public static func all(stagingRoot: String) -> [String: StagedFileRecord] {
        let directory = (stagingRoot as NSString).appendingPathComponent(directoryName)
        var records: [String: StagedFileRecord] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where entry.hasSuffix(".json") {
            let path = (directory as NSString).appendingPathComponent(entry)
            // A record stored under another name's digest was not written by this code: ignored.
            if let record = read(path: path), recordPath(stagingRoot: stagingRoot, name: record.name) == path {
                records[record.name] = record
            }
        }
        return records
    }

    /// Whether the staged file is still exactly what this record says: the plan is the same, and
    /// every byte hashes as recorded (the entries' ranges and the rest). Reads the whole file.
    public func matches(stagingRoot: String, planDigest: UInt64, workers: Int = 2) -> Bool {
        guard planDigest == self.planDigest, entries.allSatisfy({ $0.file == name }) else { return false }
        guard let file = try? ChecksumManifest.fileEntry(root: stagingRoot, name: name, covered: entries.map(\.range)),
            file == fileEntry
        else { return false }
        let manifest = ChecksumManifest(kind: .hfSafetensors, entries: entries)
        return manifest.verify(root: stagingRoot, workers: workers).isEmpty
    }

    /// Removes the records: done before the manifest is written and the folder published.
    public static func removeAll(stagingRoot: String) throws {
        let directory = (stagingRoot as NSString).appendingPathComponent(directoryName)
        if FileManager.default.fileExists(atPath: directory) { try FileManager.default.removeItem(atPath: directory) }
    }

    /// `fsync` of a directory, so renames in it survive a crash of the machine, not only of the
    /// process. Best effort: a file system that cannot sync directories still works.
    static func syncDirectory(_ path: String) {
        let descriptor = open(path.isEmpty ? "." : path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard descriptor >= 0 else { return }
        _ = fsync(descriptor)
        close(descriptor)
    }
}

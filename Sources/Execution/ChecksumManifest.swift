import Dispatch
import Foundation
import Synchronization
import TensorCore

/// Per-tensor XXH3-64 checksums of an output nembridge wrote, kept beside it
/// (`nembridge-manifest.json`), so `nembridge verify DIR` can check integrity later without the
/// source. Each entry names the bytes it covers: a file (relative to the manifest's folder) and
/// an absolute range in it.
public struct ChecksumManifest: Sendable, Equatable {
    public static let fileName = "nembridge-manifest.json"
    public static let format = "nembridge-manifest/1"

    public struct Entry: Sendable, Equatable {
        /// The tensor, or `key[offsets]` for a checkpoint chunk.
        public var name: String
        public var file: String
        public var range: ByteRange
        public var xxh3: UInt64
        /// The tensor's dtype and shape as the file declares them (nil for compressed frames).
        public var dtype: DType?
        public var shape: [Int]?

        public init(name: String, file: String, range: ByteRange, xxh3: UInt64, dtype: DType? = nil, shape: [Int]? = nil) {
            self.name = name
            self.file = file
            self.range = range
            self.xxh3 = xxh3
            self.dtype = dtype
            self.shape = shape
        }
    }

    public struct Mismatch: Sendable, Equatable, CustomStringConvertible {
        public var name: String
        public var file: String
        public var expected: UInt64
        /// nil when the bytes could not be read (missing or short file).
        public var actual: UInt64?
        public var reason: String?

        public var description: String {
            let place = "`\(MessageText.quoted(name))` in \(MessageText.path(file))"
            if let actual { return "\(place): xxh3 \(actual.hexDigest), manifest says \(expected.hexDigest)" }
            return "\(place): \(MessageText.quoted(reason ?? "unreadable", limit: nil))"
        }
    }

    /// What the folder holds: which reader `verify DIR` checks it with.
    public enum Kind: String, Sendable, CaseIterable {
        case hfSafetensors = "hf-safetensors"
        case megatronTorchDist = "megatron-torch_dist"
        /// The legacy per-rank format (`--ckpt-format torch`).
        case megatronTorch = "megatron-torch"
    }

    /// Every file of the folder (but the manifest) with its size and the XXH3-64 of all its bytes
    /// that no entry covers (headers, zip records, pickles, configs, tokenizer files), in offset
    /// order: with the entries, every output byte is under a checksum. Empty in manifests written
    /// before nembridge recorded it.
    public struct FileEntry: Sendable, Equatable {
        public var name: String
        public var size: Int64
        public var restXXH3: UInt64
    }

    public var kind: Kind
    public var entries: [Entry]
    public var files: [FileEntry]

    public init(kind: Kind, entries: [Entry], files: [FileEntry] = []) {
        self.kind = kind
        self.entries = entries
        self.files = files
    }

    /// The `files` section for the folder at `root` as it is now: reads only the bytes the
    /// entries do not cover (small: headers and metadata), so it costs no second pass over data.
    public static func coverage(root: String, entries: [Entry]) throws -> [FileEntry] {
        var covered: [String: [ByteRange]] = [:]
        for entry in entries { covered[entry.file, default: []].append(entry.range) }
        return try coverage(root: root, covered: covered)
    }

    /// The `files` section for the folder at `root`, given the ranges the entries cover per file.
    static func coverage(root: String, covered: [String: [ByteRange]]) throws -> [FileEntry] {
        try folderFiles(root).map { name in try fileEntry(root: root, name: name, covered: covered[name] ?? []) }
    }

    /// The `files` row of one file under `root`: its size and the XXH3-64 of its bytes outside
    /// `covered`, in offset order.
    public static func fileEntry(root: String, name: String, covered: [ByteRange]) throws -> FileEntry {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
        defer { buffer.deallocate() }
        let file = try ReadOnlyFile(path: (root as NSString).appendingPathComponent(name))
        let hasher = XXH3Hasher()
        var next: Int64 = 0
        func hashUpTo(_ end: Int64) throws {
            while next < end {
                let count = Int(min(Int64(buffer.count), end - next))
                let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count])
                try file.read(into: piece, at: next)
                hasher.update(UnsafeRawBufferPointer(piece))
                next += Int64(count)
            }
        }
        for range in covered.sorted(by: { $0.offset < $1.offset }) {
            try hashUpTo(min(range.offset, file.size))
            next = max(next, range.offset + range.count)
        }
        try hashUpTo(file.size)
        return FileEntry(name: name, size: file.size, restXXH3: hasher.digest)
    }

    /// Relative paths of the regular files under `root`, sorted, without the manifest itself.
    static func folderFiles(_ root: String) throws -> [String] {
        guard let walker = FileManager.default.enumerator(atPath: root) else {
            throw FileIOError(path: root, operation: .read, errno: nil)
        }
        var names: [String] = []
        while let name = walker.nextObject() as? String {
            guard walker.fileAttributes?[.type] as? FileAttributeType == .typeRegular, name != fileName else { continue }
            names.append(name)
        }
        return names.sorted()
    }

    /// Writes the manifest into the folder at `root`, its `files` section computed from the
    /// folder as it stands: call it once everything else is written.
    public func writeCovering(root: String) throws {
        var complete = self
        complete.files = try Self.coverage(root: root, entries: entries)
        try complete.write(to: (root as NSString).appendingPathComponent(Self.fileName))
    }

    /// A manifest whose entries are made on demand: a checkpoint of 450,000 chunks holds only
    /// their digests until the manifest is written.
    public struct Streamed {
        public var kind: Kind
        public var count: Int
        public var entry: (Int) throws -> Entry

        public init(kind: Kind, count: Int, entry: @escaping (Int) throws -> Entry) {
            self.kind = kind
            self.count = count
            self.entry = entry
        }

        /// `ChecksumManifest.writeCovering(kind:count:root:entry:)` of these entries.
        public func writeCovering(root: String) throws {
            try ChecksumManifest.writeCovering(kind: kind, count: count, root: root, entry: entry)
        }
    }

    public var streamed: Streamed {
        let entries = self.entries
        return Streamed(kind: kind, count: entries.count) { entries[$0] }
    }

    /// The `files` section checked against the folder: every listed file present with its size
    /// and the same bytes outside the entries, and no file the manifest does not list.
    public func verifyFiles(root: String) -> [Mismatch] {
        guard !files.isEmpty else { return [] }
        let present: [String]
        do { present = try Self.folderFiles(root) } catch {
            return [Mismatch(name: root, file: root, expected: 0, actual: nil, reason: "\(error)")]
        }
        var problems: [Mismatch] = []
        let listed = Set(files.map(\.name))
        for name in present where !listed.contains(name) {
            problems.append(Mismatch(name: name, file: name, expected: 0, actual: nil, reason: "a file the manifest does not list"))
        }
        let actual: [String: FileEntry]
        do {
            actual = Dictionary(try Self.coverage(root: root, entries: entries).map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        } catch {
            return problems + [Mismatch(name: root, file: root, expected: 0, actual: nil, reason: "\(error)")]
        }
        for file in files {
            guard let now = actual[file.name] else {
                problems.append(Mismatch(name: file.name, file: file.name, expected: file.restXXH3, actual: nil, reason: "missing"))
                continue
            }
            if now.size != file.size {
                problems.append(Mismatch(name: file.name, file: file.name, expected: file.restXXH3, actual: nil,
                                         reason: "\(now.size) bytes, the manifest says \(file.size)"))
            } else if now.restXXH3 != file.restXXH3 {
                problems.append(Mismatch(name: file.name + " (bytes outside the tensors)", file: file.name,
                                         expected: file.restXXH3, actual: now.restXXH3))
            }
        }
        return problems
    }

    /// Hashes each range of each file under `root` (read back through a bounded buffer per
    /// worker; the bytes were just written, so they come from the page cache).
    public static func compute(
        kind: Kind, root: String, items: [(name: String, file: String, range: ByteRange)], workers: Int = 2
    ) throws -> ChecksumManifest {
        var opened: [String: ReadOnlyFile] = [:]
        for item in items where opened[item.file] == nil {
            opened[item.file] = try ReadOnlyFile(path: (root as NSString).appendingPathComponent(item.file))
        }
        let files = opened
        let results = Mutex([UInt64?](repeating: nil, count: items.count))
        let failure = Mutex<(any Error)?>(nil)
        let next = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: max(1, min(workers, items.count))) { _ in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8 << 20, alignment: 4096)
            defer { buffer.deallocate() }
            while true {
                let index = next.wrappingAdd(1, ordering: .relaxed).oldValue
                guard index < items.count, failure.withLock({ $0 == nil }) else { return }
                do {
                    let digest = try hash(files[items[index].file]!, items[index].range, buffer)
                    results.withLock { $0[index] = digest }
                } catch {
                    failure.withLock { if $0 == nil { $0 = error } }
                }
            }
        }
        if let error = failure.withLock({ $0 }) { throw error }
        let digests = results.withLock { $0 }
        return ChecksumManifest(kind: kind, entries: items.enumerated().map { index, item in
            Entry(name: item.name, file: item.file, range: item.range, xxh3: digests[index]!)
        })
    }

    static func hash(_ file: ReadOnlyFile, _ range: ByteRange, _ buffer: UnsafeMutableRawBufferPointer) throws -> UInt64 {
        let hasher = XXH3Hasher()
        var done: Int64 = 0
        while done < range.count {
            let count = Int(min(Int64(buffer.count), range.count - done))
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count])
            try file.read(into: piece, at: range.offset + done)
            hasher.update(UnsafeRawBufferPointer(piece))
            done += Int64(count)
        }
        return hasher.digest
    }

    /// Recomputes every entry under `root`; returns the entries that differ or cannot be read.
    public func verify(root: String, workers: Int = 2) -> [Mismatch] {
        let items = entries.map { ($0.name, $0.file, $0.range) }
        if let recomputed = try? Self.compute(kind: kind, root: root, items: items, workers: workers) {
            return zip(entries, recomputed.entries).compactMap { entry, actual in
                entry.xxh3 == actual.xxh3 ? nil : Mismatch(name: entry.name, file: entry.file, expected: entry.xxh3, actual: actual.xxh3)
            }
        }
        // A file is missing or short: find out which entries, one by one.
        return entries.compactMap { entry in
            do {
                let actual = try Self.compute(kind: kind, root: root, items: [(entry.name, entry.file, entry.range)], workers: 1)
                    .entries[0].xxh3
                return actual == entry.xxh3 ? nil : Mismatch(name: entry.name, file: entry.file, expected: entry.xxh3, actual: actual)
            } catch {
                return Mismatch(name: entry.name, file: entry.file, expected: entry.xxh3, actual: nil, reason: "\(error)")
            }
        }
    }

    public var json: JSONValue {
        .object([
            ("format", .string(Self.format)),
            ("algorithm", .string("xxh3-64")),
            ("kind", .string(kind.rawValue)),
            ("tensors", .array(entries.map(Self.json))),
            ("files", .array(files.map(Self.json))),
        ])
    }

    static func json(_ entry: Entry) -> JSONValue {
        var fields: [(key: String, value: JSONValue)] = [
            ("name", .string(entry.name)), ("file", .string(entry.file)),
            ("offset", .number(JSONNumber(Int(entry.range.offset)))),
            ("bytes", .number(JSONNumber(Int(entry.range.count)))),
        ]
        if let dtype = entry.dtype { fields.append(("dtype", .string(dtype.safetensorsName))) }
        if let shape = entry.shape { fields.append(("shape", .array(shape.map { .number(JSONNumber($0)) }))) }
        fields.append(("xxh3", .string(entry.xxh3.hexDigest)))
        return .object(fields)
    }

    static func json(_ file: FileEntry) -> JSONValue {
        .object([("name", .string(file.name)), ("bytes", .number(JSONNumber(Int(file.size)))),
                 ("rest_xxh3", .string(file.restXXH3.hexDigest))])
    }

    public func write(to path: String) throws {
        try Self.write(kind: kind, count: entries.count, files: files, to: path) { entries[$0] }
    }

    /// Writes the manifest of `count` entries made one at a time by `entry` into the folder at
    /// `root`, its `files` section computed from the folder as it stands (call it once everything
    /// else is written), streamed: `entry` is called twice per index, and only the byte ranges
    /// are held in between.
    public static func writeCovering(kind: Kind, count: Int, root: String, entry: (Int) throws -> Entry) throws {
        var covered: [String: [ByteRange]] = [:]
        for index in 0..<count {
            let item = try entry(index)
            covered[item.file, default: []].append(item.range)
        }
        let files = try coverage(root: root, covered: covered)
        covered = [:]
        try write(kind: kind, count: count, files: files, to: (root as NSString).appendingPathComponent(fileName), entry: entry)
    }

    /// Writes a manifest of `count` entries made one at a time by `entry`, through a bounded
    /// buffer: the text `write(to:)` gives, without holding the entries (a checkpoint of
    /// 450,000 chunks has a manifest of ~150 MB).
    public static func write(kind: Kind, count: Int, files: [FileEntry], to path: String, entry: (Int) throws -> Entry) throws {
        let output = try AtomicOutputFile(path: path)
        var buffer: [UInt8] = []
        var position: Int64 = 0
        func emit(_ text: String) throws {
            buffer.append(contentsOf: text.utf8)
            if buffer.count >= 1 << 20 { try flush() }
        }
        func flush() throws {
            try output.write(buffer, at: position)
            position += Int64(buffer.count)
            buffer.removeAll(keepingCapacity: true)
        }
        let head = JSONValue.object([("format", .string(Self.format)), ("algorithm", .string("xxh3-64")), ("kind", .string(kind.rawValue))])
        let headText = JSONWriter.pythonIndented(head, sortKeys: false)
        // The head's members, then the tensors array, entry by entry at the array's indentation.
        try emit(String(headText.dropLast(2)) + ",\n  \"tensors\": ")
        if count == 0 {
            try emit("[]")
        } else {
            try emit("[\n")
            for index in 0..<count {
                let text = JSONWriter.pythonIndented(Self.json(try entry(index)), sortKeys: false)
                buffer.append(contentsOf: "    ".utf8)
                for byte in text.utf8 {
                    buffer.append(byte)
                    if byte == 0x0A { buffer.append(contentsOf: "    ".utf8) }
                }
                try emit(index + 1 < count ? ",\n" : "\n")
            }
            try emit("  ]")
        }
        try emit(",\n  \"files\": ")
        if files.isEmpty {
            try emit("[]")
        } else {
            try emit("[\n")
            for (index, file) in files.enumerated() {
                let text = JSONWriter.pythonIndented(Self.json(file), sortKeys: false)
                buffer.append(contentsOf: "    ".utf8)
                for byte in text.utf8 {
                    buffer.append(byte)
                    if byte == 0x0A { buffer.append(contentsOf: "    ".utf8) }
                }
                try emit(index + 1 < files.count ? ",\n" : "\n")
            }
            try emit("  ]")
        }
        try emit("\n}\n")
        try flush()
        try output.publish()
    }

    public struct Invalid: Error, Equatable, CustomStringConvertible {
        public var file: String
        public var reason: String
        public var description: String { "\(MessageText.path(file)): invalid manifest: \(MessageText.quoted(reason, limit: nil))" }
    }

    public init(path: String) throws {
        let bytes = try ReadOnlyFile.contents(atPath: path)
        let document: JSONValue
        do {
            document = try JSONParser.parse(bytes)
        } catch {
            throw Invalid(file: path, reason: error.description)
        }
        guard document["format"]?.stringValue == Self.format, let kindName = document["kind"]?.stringValue,
            let tensors = document["tensors"]?.arrayValue
        else { throw Invalid(file: path, reason: "not a \(Self.format) document") }
        guard let kind = Kind(rawValue: kindName) else {
            throw Invalid(file: path, reason: "unknown kind `\(MessageText.quoted(kindName))` (known: \(Kind.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        self.kind = kind
        entries = try tensors.map { item in
            guard let name = item["name"]?.stringValue, let relative = item["file"]?.stringValue,
                !relative.hasPrefix("/"), !relative.contains("\0"), !relative.split(separator: "/").contains(".."),
                let offset = item["offset"]?.intValue, let count = item["bytes"]?.intValue,
                let range = ByteRange(validatingOffset: Int64(offset), count: Int64(count)),
                let hex = item["xxh3"]?.stringValue, let digest = UInt64(hex, radix: 16)
            else { throw Invalid(file: path, reason: "malformed entry \(MessageText.quoted(JSONWriter.compact(item)))") }
            let dtype = item["dtype"]?.stringValue.flatMap { DType(safetensorsName: $0) }
            let shape = item["shape"]?.arrayValue.map { $0.compactMap(\.intValue) }
            return Entry(name: name, file: relative, range: range, xxh3: digest, dtype: dtype, shape: shape)
        }
        files = try (document["files"]?.arrayValue ?? []).map { item in
            guard let name = item["name"]?.stringValue, !name.hasPrefix("/"), !name.contains("\0"),
                !name.split(separator: "/").contains(".."), let size = item["bytes"]?.intValue, size >= 0,
                let hex = item["rest_xxh3"]?.stringValue, let digest = UInt64(hex, radix: 16)
            else { throw Invalid(file: path, reason: "malformed file entry \(MessageText.quoted(JSONWriter.compact(item)))") }
            return FileEntry(name: name, size: Int64(size), restXXH3: digest)
        }
    }
}

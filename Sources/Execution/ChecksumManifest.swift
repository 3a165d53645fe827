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
            if let actual { return "`\(name)` in \(file): xxh3 \(actual.hexDigest), manifest says \(expected.hexDigest)" }
            return "`\(name)` in \(file): \(reason ?? "unreadable")"
        }
    }

    /// What the folder holds (`hf-safetensors`, `megatron-torch_dist`).
    public var kind: String
    public var entries: [Entry]

    public init(kind: String, entries: [Entry]) {
        self.kind = kind
        self.entries = entries
    }

    /// Hashes each range of each file under `root` (read back through a bounded buffer per
    /// worker; the bytes were just written, so they come from the page cache).
    public static func compute(
        kind: String, root: String, items: [(name: String, file: String, range: ByteRange)], workers: Int = 2
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
            ("kind", .string(kind)),
            ("tensors", .array(entries.map(Self.json))),
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

    public func write(to path: String) throws {
        try Self.write(kind: kind, count: entries.count, to: path) { entries[$0] }
    }

    /// Writes a manifest of `count` entries made one at a time by `entry`, through a bounded
    /// buffer: the text `write(to:)` gives, without holding the entries (a checkpoint of
    /// 450,000 chunks has a manifest of ~150 MB).
    public static func write(kind: String, count: Int, to path: String, entry: (Int) throws -> Entry) throws {
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
        let head = JSONValue.object([("format", .string(Self.format)), ("algorithm", .string("xxh3-64")), ("kind", .string(kind))])
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
        try emit("\n}\n")
        try flush()
        try output.publish()
    }

    public struct Invalid: Error, Equatable, CustomStringConvertible {
        public var file: String
        public var reason: String
        public var description: String { "\(file): invalid manifest: \(reason)" }
    }

    public init(path: String) throws {
        let file = try ReadOnlyFile(path: path)
        let document: JSONValue
        do {
            document = try JSONParser.parse(try file.readBytes(ByteRange(offset: 0, count: file.size)))
        } catch let error as JSONParser.Failure {
            throw Invalid(file: path, reason: error.description)
        }
        guard document["format"]?.stringValue == Self.format, let kind = document["kind"]?.stringValue,
            let tensors = document["tensors"]?.arrayValue
        else { throw Invalid(file: path, reason: "not a \(Self.format) document") }
        self.kind = kind
        entries = try tensors.map { item in
            guard let name = item["name"]?.stringValue, let relative = item["file"]?.stringValue,
                !relative.hasPrefix("/"), !relative.split(separator: "/").contains(".."),
                let offset = item["offset"]?.intValue, let count = item["bytes"]?.intValue, offset >= 0, count >= 0,
                let hex = item["xxh3"]?.stringValue, let digest = UInt64(hex, radix: 16)
            else { throw Invalid(file: path, reason: "malformed entry \(JSONWriter.compact(item))") }
            let dtype = item["dtype"]?.stringValue.flatMap { DType(safetensorsName: $0) }
            let shape = item["shape"]?.arrayValue.map { $0.compactMap(\.intValue) }
            return Entry(name: name, file: relative, range: ByteRange(offset: Int64(offset), count: Int64(count)), xxh3: digest,
                         dtype: dtype, shape: shape)
        }
    }
}

import TensorCore

/// A ZIP archive occupying a byte range of a file: a stand-alone `.pt`, or one item of a DCP
/// `.distcp` file, where every tensor chunk is an independent `torch.save` archive at an offset.
///
/// Opening reads only the end records, the central directory and each entry's local header, with
/// positional reads (`pread`); the entries' data is never read unless asked for. Offsets inside
/// the archive are relative to `range.offset`, as `torch.save` wrote them into its own stream.
/// The order of checks follows the APPNOTE reading order: end record, ZIP64 locator and record,
/// central directory, then local headers.
public struct ZipArchive: Sendable {
    public let file: ReadOnlyFile
    public let range: ByteRange
    public let id: ZipArchiveID
    /// The entries in central-directory order.
    public let entries: [ZipEntry]
    /// Whether the archive has ZIP64 end records (PyTorch always writes them).
    public let hasZip64EndRecords: Bool
    /// Absolute offset of the central directory.
    public let centralDirectoryOffset: Int64
    private let positions: [String: Int]
    /// The archive's first bytes as opened (`ArchiveReader.head`): small records there (`data.pkl`)
    /// are served without another read.
    private let head: [UInt8]

    /// Reads the directory of the archive in `range` of `file`; `name` labels it in messages.
    public init(file: ReadOnlyFile, range: ByteRange, name: String) throws {
        self.file = file
        self.range = range
        self.id = ZipArchiveID(path: file.path, offset: range.offset, label: name)
        guard range.count <= file.size, range.offset <= file.size - range.count else {
            throw ZipError.archiveOutsideFile(archive: id, count: range.count, fileSize: file.size)
        }
        let reader = try ArchiveReader(file: file, range: range, id: id)
        head = reader.head
        let directory = try reader.readEndRecords()
        let records = try reader.readCentralDirectory(directory)
        var positions: [String: Int] = [:]
        for (index, record) in records.enumerated() {
            if positions.updateValue(index, forKey: record.name) != nil {
                throw ZipError.duplicateEntryName(
                    archive: id, entry: record.name, offset: range.offset + record.recordOffset)
            }
        }
        var entries: [ZipEntry] = []
        entries.reserveCapacity(records.count)
        for record in records {
            entries.append(try reader.resolveLocalHeader(record, directory: directory))
        }
        self.entries = entries
        self.positions = positions
        self.hasZip64EndRecords = directory.zip64RecordOffset != nil
        self.centralDirectoryOffset = range.offset + directory.centralDirectoryOffset
    }

    /// Opens a whole file as one archive, labelled by its path.
    public init(path: String) throws {
        let file = try ReadOnlyFile(path: path)
        try self.init(file: file, range: ByteRange(offset: 0, count: file.size), name: path)
    }

    /// The entry called exactly `name`.
    public func entry(named name: String) -> ZipEntry? {
        positions[name].map { entries[$0] }
    }

    /// The entries whose name is `suffix` or ends with `/suffix`.
    public func entries(withSuffix suffix: String) -> [ZipEntry] {
        let slashed = "/" + suffix
        return entries.filter { $0.name == suffix || $0.name.hasSuffix(slashed) }
    }

    /// The one entry whose name is `suffix` or ends with `/suffix`; torch archives keep everything
    /// under one top folder whose name varies (`archive/data.pkl`, `model/data.pkl`).
    public func entry(withSuffix suffix: String) throws -> ZipEntry {
        let matches = entries(withSuffix: suffix)
        guard let first = matches.first else { throw ZipError.entryNotFound(archive: id, entry: suffix) }
        guard matches.count == 1 else {
            throw ZipError.ambiguousEntrySuffix(archive: id, suffix: suffix, matches: matches.map(\.name))
        }
        return first
    }

    /// The folder every entry sits in, as torch's reader takes it: the first entry's name up to
    /// its first `/`. Nil when there are no entries or the first entry is not in a folder.
    public var topFolder: String? {
        guard let first = entries.first, let slash = first.name.firstIndex(of: "/") else { return nil }
        return String(first.name[..<slash])
    }

    /// `record` inside the top folder (`data.pkl` → `archive/data.pkl`), as torch looks records up.
    public func record(_ record: String) -> ZipEntry? {
        guard let topFolder else { return nil }
        return entry(named: "\(topFolder)/\(record)")
    }

    /// The absolute byte range of a stored entry's content; compressed or encrypted entries throw.
    public func storedDataRange(of entry: ZipEntry) throws -> ByteRange {
        if entry.isEncrypted {
            throw ZipError.encryptedEntry(archive: id, entry: entry.name, offset: entry.localHeaderOffset)
        }
        guard entry.isStored else {
            throw ZipError.unsupportedCompression(
                archive: id, entry: entry.name, offset: entry.localHeaderOffset, method: entry.compressionMethod)
        }
        return entry.dataRange
    }

    /// Reads a stored entry's whole content into memory (for small records such as `data.pkl`),
    /// checking its CRC-32 unless `verifyingCRC` is false.
    public func contents(of entry: ZipEntry, verifyingCRC: Bool = true) throws -> [UInt8] {
        let stored = try storedDataRange(of: entry)
        let start = stored.offset - range.offset
        let bytes = start >= 0 && stored.count <= Int64(head.count) - start
            ? Array(head[Int(start)..<Int(start + stored.count)])
            : try file.readBytes(stored)
        if verifyingCRC {
            let actual = CRC32.checksum(bytes)
            guard actual == entry.crc32 else {
                throw ZipError.crcMismatch(
                    archive: id, entry: entry.name, offset: entry.dataRange.offset, expected: entry.crc32, actual: actual)
            }
        }
        return bytes
    }

    /// Checks a stored entry's CRC-32 by reading its data through a buffer of at most
    /// `bufferSize` bytes, so multi-gigabyte entries are never held whole.
    public func verifyCRC(of entry: ZipEntry, bufferSize: Int = 1 << 20) throws {
        precondition(bufferSize > 0)
        let range = try storedDataRange(of: entry)
        var crc = CRC32()
        let buffer = UnsafeMutableRawBufferPointer.allocate(
            byteCount: Int(min(Int64(bufferSize), max(range.count, 1))), alignment: 64)
        defer { buffer.deallocate() }
        var done: Int64 = 0
        while done < range.count {
            let count = Int(min(Int64(buffer.count), range.count - done))
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count])
            try file.read(into: piece, at: range.offset + done)
            crc.update(UnsafeRawBufferPointer(piece))
            done += Int64(count)
        }
        guard crc.value == entry.crc32 else {
            throw ZipError.crcMismatch(
                archive: id, entry: entry.name, offset: range.offset, expected: entry.crc32, actual: crc.value)
        }
    }
}

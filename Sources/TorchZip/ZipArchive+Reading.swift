import TensorCore

/// Where the end records put the central directory; offsets relative to the archive start.
struct EndDirectory {
    var centralDirectoryOffset: Int64
    var centralDirectorySize: Int64
    var entryCount: Int64
    /// Start of the ZIP64 end record, if there is one.
    var zip64RecordOffset: Int64?
    /// Start of the first end record: the central directory must end at or before it, and every
    /// entry must end at or before the central directory.
    var endRecordsStart: Int64
}

/// A central-directory record with the ZIP64 fields resolved; offsets relative to the archive.
struct CentralRecord {
    var name: String
    var nameBytes: ArraySlice<UInt8>
    var flags: UInt16
    var method: UInt16
    var crc32: UInt32
    var compressedSize: Int64
    var uncompressedSize: Int64
    var localHeaderOffset: Int64
    var recordOffset: Int64
}

/// The parsing steps of `ZipArchive.init`. Every length read from the archive is compared with
/// the bytes available before it is used, so malformed input throws instead of trapping.
struct ArchiveReader {
    let file: ReadOnlyFile
    let range: ByteRange
    let id: ZipArchiveID
    /// The archive's first and last `windowSize` bytes (all of it when small), read once: in a
    /// `torch.save` archive every record but the tensor data lies in them, so opening one of a
    /// checkpoint's 50,000 items takes two reads instead of one per record (nine or more).
    let head: [UInt8]
    let tail: [UInt8]
    /// Archive-relative offset of `tail`.
    let tailStart: Int64

    static let windowSize = 2048

    init(file: ReadOnlyFile, range: ByteRange, id: ZipArchiveID) throws {
        self.file = file
        self.range = range
        self.id = id
        let window = Int64(Self.windowSize)
        if range.count <= 2 * window {
            head = try file.readBytes(range)
            tail = head
            tailStart = 0
        } else {
            head = try file.readBytes(ByteRange(offset: range.offset, count: window))
            tailStart = range.count - window
            tail = try file.readBytes(ByteRange(offset: range.offset + tailStart, count: window))
        }
    }

    private func absolute(_ relative: Int64) -> Int64 { range.offset + relative }

    /// Reads `count` bytes at archive-relative `offset`; the caller has checked the bounds.
    private func read(_ offset: Int64, _ count: Int) throws -> [UInt8] {
        precondition(offset >= 0 && Int64(count) <= range.count - offset)
        let end = offset + Int64(count)
        if end <= Int64(head.count) { return Array(head[Int(offset)..<Int(end)]) }
        if offset >= tailStart, end <= tailStart + Int64(tail.count) { return Array(tail[Int(offset - tailStart)..<Int(end - tailStart)]) }
        return try file.readBytes(ByteRange(offset: range.offset + offset, count: Int64(count)))
    }

    // MARK: End records

    func readEndRecords() throws -> EndDirectory {
        let minimum = Int64(ZipFormat.endOfCentralDirectorySize)
        let fullCount = min(range.count, minimum + Int64(ZipFormat.maxCommentLength))
        guard fullCount >= minimum else {
            throw ZipError.noEndOfCentralDirectory(archive: id, searchedFrom: absolute(range.count - fullCount))
        }
        // The last record whose comment length reaches exactly to the end of the range. Archives
        // without a long comment have it in the last 22 bytes: 1 KiB is read first, the whole
        // 64 KiB window only when it is not there (reading 64 KiB per item made opening 450,000
        // items read 29 GB).
        func search(_ tail: [UInt8]) -> Int? {
            var candidate = tail.count - ZipFormat.endOfCentralDirectorySize
            while candidate >= 0 {
                if tail[candidate] == 0x50, tail[candidate + 1] == 0x4B, tail[candidate + 2] == 0x05,
                    tail[candidate + 3] == 0x06
                {
                    let commentLength = Int(tail[candidate + 20]) | Int(tail[candidate + 21]) << 8
                    if candidate + ZipFormat.endOfCentralDirectorySize + commentLength == tail.count { return candidate }
                }
                candidate -= 1
            }
            return nil
        }
        var tailCount = min(fullCount, 1024)
        var tail = try read(range.count - tailCount, Int(tailCount))
        var found = search(tail)
        if found == nil && tailCount < fullCount {
            tailCount = fullCount
            tail = try read(range.count - tailCount, Int(tailCount))
            found = search(tail)
        }
        let tailStart = range.count - tailCount
        guard let found else {
            throw ZipError.noEndOfCentralDirectory(archive: id, searchedFrom: absolute(tailStart))
        }
        let endOffset = tailStart + Int64(found)
        var fields = LittleEndianReader(tail, at: found + 4)
        let disk = fields.u16()!
        let centralDisk = fields.u16()!
        let entriesOnDisk = fields.u16()!
        let entryCount = fields.u16()!
        let centralSize = fields.u32()!
        let centralOffset = fields.u32()!

        var directory = EndDirectory(
            centralDirectoryOffset: Int64(centralOffset), centralDirectorySize: Int64(centralSize),
            entryCount: Int64(entryCount), zip64RecordOffset: nil, endRecordsStart: endOffset)

        let locatorOffset = endOffset - Int64(ZipFormat.zip64LocatorSize)
        var hasLocator = false
        if locatorOffset >= 0 {
            let locator = try read(locatorOffset, ZipFormat.zip64LocatorSize)
            var locatorFields = LittleEndianReader(locator)
            hasLocator = locatorFields.u32() == ZipFormat.zip64LocatorSignature
            if hasLocator {
                let recordDisk = locatorFields.u32()!
                let recordOffset = locatorFields.u64()!
                let diskCount = locatorFields.u32()!
                guard recordDisk == 0, diskCount <= 1 else {
                    throw ZipError.multiDiskArchive(archive: id, offset: absolute(locatorOffset))
                }
                directory = try readZip64EndRecord(
                    at: recordOffset, locatorOffset: locatorOffset, classic: directory,
                    classicFields: (entriesOnDisk, entryCount, centralSize, centralOffset))
            }
        }
        if !hasLocator {
            guard disk == 0, centralDisk == 0, entriesOnDisk == entryCount else {
                throw ZipError.multiDiskArchive(archive: id, offset: absolute(endOffset))
            }
            if centralSize == ZipFormat.sentinel32 || centralOffset == ZipFormat.sentinel32 {
                throw ZipError.zip64Inconsistency(
                    archive: id, entry: nil, offset: absolute(endOffset),
                    reason: "end record fields are 0xFFFFFFFF but there is no ZIP64 locator")
            }
        } else if (disk != 0 && disk != ZipFormat.sentinel16) || (centralDisk != 0 && centralDisk != ZipFormat.sentinel16) {
            throw ZipError.multiDiskArchive(archive: id, offset: absolute(endOffset))
        }

        guard directory.centralDirectoryOffset <= directory.endRecordsStart,
            directory.centralDirectorySize <= directory.endRecordsStart - directory.centralDirectoryOffset
        else {
            throw ZipError.truncatedCentralDirectory(
                archive: id, offset: absolute(min(directory.centralDirectoryOffset, range.count)),
                reason: "\(directory.centralDirectorySize) bytes at archive offset \(directory.centralDirectoryOffset) run past the end records at \(directory.endRecordsStart)")
        }
        guard directory.entryCount <= directory.centralDirectorySize / Int64(ZipFormat.centralHeaderSize) else {
            throw ZipError.truncatedCentralDirectory(
                archive: id, offset: absolute(directory.centralDirectoryOffset),
                reason: "\(directory.entryCount) entries cannot fit in \(directory.centralDirectorySize) bytes")
        }
        return directory
    }

    /// Reads the ZIP64 end record the locator points at and checks it against the classic fields:
    /// a classic field that is not its sentinel must hold the same value (PyTorch writes both).
    private func readZip64EndRecord(
        at recordOffset: UInt64, locatorOffset: Int64, classic: EndDirectory,
        classicFields: (entriesOnDisk: UInt16, entries: UInt16, size: UInt32, offset: UInt32)
    ) throws -> EndDirectory {
        let recordSize = Int64(ZipFormat.zip64EndOfCentralDirectorySize)
        guard locatorOffset >= recordSize, recordOffset <= UInt64(locatorOffset - recordSize) else {
            throw ZipError.zip64Inconsistency(
                archive: id, entry: nil, offset: absolute(locatorOffset),
                reason: "locator points at archive offset \(recordOffset), past the room before the locator")
        }
        let start = Int64(recordOffset)
        var fields = LittleEndianReader(try read(start, ZipFormat.zip64EndOfCentralDirectorySize))
        let signature = fields.u32()!
        guard signature == ZipFormat.zip64EndOfCentralDirectorySignature else {
            throw ZipError.zip64Inconsistency(
                archive: id, entry: nil, offset: absolute(start),
                reason: "no ZIP64 end record signature where the locator points")
        }
        let remainingSize = fields.u64()!
        _ = fields.u16()  // version made by
        _ = fields.u16()  // version needed
        let disk = fields.u32()!
        let centralDisk = fields.u32()!
        let entriesOnDisk = fields.u64()!
        let entries = fields.u64()!
        let size = fields.u64()!
        let offset = fields.u64()!
        guard remainingSize >= 44, remainingSize - 44 <= UInt64(locatorOffset - start - recordSize) else {
            throw ZipError.zip64Inconsistency(
                archive: id, entry: nil, offset: absolute(start),
                reason: "ZIP64 end record size \(remainingSize) does not fit before the locator")
        }
        guard disk == 0, centralDisk == 0, entriesOnDisk == entries else {
            throw ZipError.multiDiskArchive(archive: id, offset: absolute(start))
        }
        let limit = UInt64(range.count)
        guard entries <= limit, size <= limit, offset <= limit else {
            throw ZipError.zip64Inconsistency(
                archive: id, entry: nil, offset: absolute(start),
                reason: "ZIP64 end record values (entries \(entries), size \(size), offset \(offset)) exceed the archive's \(range.count) bytes")
        }
        let mismatch: String? =
            if classicFields.entries != ZipFormat.sentinel16 && UInt64(classicFields.entries) != entries {
                "entry count \(classicFields.entries) in the end record, \(entries) in the ZIP64 record"
            } else if classicFields.size != ZipFormat.sentinel32 && UInt64(classicFields.size) != size {
                "central directory size \(classicFields.size) in the end record, \(size) in the ZIP64 record"
            } else if classicFields.offset != ZipFormat.sentinel32 && UInt64(classicFields.offset) != offset {
                "central directory offset \(classicFields.offset) in the end record, \(offset) in the ZIP64 record"
            } else {
                nil
            }
        if let mismatch {
            throw ZipError.zip64Inconsistency(archive: id, entry: nil, offset: absolute(start), reason: mismatch)
        }
        return EndDirectory(
            centralDirectoryOffset: Int64(offset), centralDirectorySize: Int64(size), entryCount: Int64(entries),
            zip64RecordOffset: start, endRecordsStart: start)
    }

    // MARK: Central directory

    func readCentralDirectory(_ directory: EndDirectory) throws -> [CentralRecord] {
        let bytes = try read(directory.centralDirectoryOffset, Int(directory.centralDirectorySize))
        var reader = LittleEndianReader(bytes)
        var records: [CentralRecord] = []
        records.reserveCapacity(Int(directory.entryCount))
        for _ in 0..<directory.entryCount {
            let recordOffset = directory.centralDirectoryOffset + Int64(reader.position)
            guard reader.remaining >= ZipFormat.centralHeaderSize else {
                throw ZipError.truncatedCentralDirectory(
                    archive: id, offset: absolute(recordOffset),
                    reason: "\(reader.remaining) bytes left for a \(ZipFormat.centralHeaderSize)-byte record")
            }
            let signature = reader.u32()!
            guard signature == ZipFormat.centralHeaderSignature else {
                throw ZipError.centralDirectorySignatureMismatch(
                    archive: id, offset: absolute(recordOffset), found: signature)
            }
            _ = reader.u16()  // version made by
            _ = reader.u16()  // version needed
            let flags = reader.u16()!
            let method = reader.u16()!
            _ = reader.u32()  // time, date
            let crc = reader.u32()!
            let compressed = reader.u32()!
            let uncompressed = reader.u32()!
            let nameLength = Int(reader.u16()!)
            let extraLength = Int(reader.u16()!)
            let commentLength = Int(reader.u16()!)
            let diskStart = reader.u16()!
            _ = reader.u16()  // internal attributes
            _ = reader.u32()  // external attributes
            let localOffset = reader.u32()!
            guard let nameBytes = reader.take(nameLength), let extra = reader.take(extraLength),
                reader.take(commentLength) != nil
            else {
                throw ZipError.truncatedCentralDirectory(
                    archive: id, offset: absolute(recordOffset),
                    reason: "name, extra field and comment (\(nameLength) + \(extraLength) + \(commentLength) bytes) run past the central directory")
            }
            let name = String(decoding: nameBytes, as: UTF8.self)
            var record = CentralRecord(
                name: name, nameBytes: nameBytes, flags: flags, method: method, crc32: crc,
                compressedSize: Int64(compressed), uncompressedSize: Int64(uncompressed),
                localHeaderOffset: Int64(localOffset), recordOffset: recordOffset)
            try resolveZip64(
                &record, extra: Array(extra), rawFields: (uncompressed, compressed, localOffset, diskStart))
            records.append(record)
        }
        return records
    }

    /// Replaces the 0xFFFFFFFF fields of a central record by the ZIP64 extra field's values. The
    /// extra holds only the fields that overflowed, in the order uncompressed size, compressed
    /// size, local header offset, disk number (APPNOTE 4.5.3).
    private func resolveZip64(
        _ record: inout CentralRecord, extra: [UInt8],
        rawFields: (uncompressed: UInt32, compressed: UInt32, offset: UInt32, disk: UInt16)
    ) throws {
        let needsUncompressed = rawFields.uncompressed == ZipFormat.sentinel32
        let needsCompressed = rawFields.compressed == ZipFormat.sentinel32
        let needsOffset = rawFields.offset == ZipFormat.sentinel32
        let needsDisk = rawFields.disk == ZipFormat.sentinel16
        var zip64: ArraySlice<UInt8>?
        var reader = LittleEndianReader(extra)
        while reader.remaining > 0 {
            guard let fieldID = reader.u16(), let size = reader.u16(), let data = reader.take(Int(size)) else {
                throw ZipError.malformedExtraField(archive: id, entry: record.name, offset: absolute(record.recordOffset))
            }
            if fieldID == ZipFormat.zip64ExtraID && zip64 == nil { zip64 = data }
        }
        guard needsUncompressed || needsCompressed || needsOffset || needsDisk else {
            if !needsDisk && rawFields.disk != 0 {
                throw ZipError.multiDiskArchive(archive: id, offset: absolute(record.recordOffset))
            }
            return
        }
        guard let zip64 else {
            throw ZipError.zip64Inconsistency(
                archive: id, entry: record.name, offset: absolute(record.recordOffset),
                reason: "fields are 0xFFFFFFFF but the record has no ZIP64 extra field")
        }
        var values = LittleEndianReader(Array(zip64))
        func next(_ field: String) throws -> Int64 {
            guard let value = values.u64() else {
                throw ZipError.zip64Inconsistency(
                    archive: id, entry: record.name, offset: absolute(record.recordOffset),
                    reason: "ZIP64 extra field of \(zip64.count) bytes has no \(field)")
            }
            guard value <= UInt64(range.count) else {
                throw ZipError.zip64Inconsistency(
                    archive: id, entry: record.name, offset: absolute(record.recordOffset),
                    reason: "ZIP64 \(field) \(value) exceeds the archive's \(range.count) bytes")
            }
            return Int64(value)
        }
        if needsUncompressed { record.uncompressedSize = try next("uncompressed size") }
        if needsCompressed { record.compressedSize = try next("compressed size") }
        if needsOffset { record.localHeaderOffset = try next("local header offset") }
        if needsDisk {
            guard let disk = values.u32() else {
                throw ZipError.zip64Inconsistency(
                    archive: id, entry: record.name, offset: absolute(record.recordOffset),
                    reason: "ZIP64 extra field of \(zip64.count) bytes has no disk number")
            }
            if disk != 0 { throw ZipError.multiDiskArchive(archive: id, offset: absolute(record.recordOffset)) }
        } else if rawFields.disk != 0 {
            throw ZipError.multiDiskArchive(archive: id, offset: absolute(record.recordOffset))
        }
    }

    // MARK: Local headers

    /// Finds where an entry's data starts: after the local header's own name and extra field,
    /// whose lengths differ from the central record's (PyTorch pads the local extra field only).
    func resolveLocalHeader(_ record: CentralRecord, directory: EndDirectory) throws -> ZipEntry {
        let limit = directory.centralDirectoryOffset
        let headerSize = Int64(ZipFormat.localHeaderSize)
        let start = record.localHeaderOffset
        guard start <= limit, headerSize <= limit - start else {
            throw ZipError.entryDataOutsideArchive(
                archive: id, entry: record.name, offset: absolute(min(start, range.count)), count: headerSize)
        }
        // One read usually covers the header, the name and a padding record of up to 64 bytes.
        let guess = min(limit - start, headerSize + Int64(record.nameBytes.count) + 128)
        var bytes = try read(start, Int(guess))
        var fields = LittleEndianReader(bytes)
        let signature = fields.u32()!
        guard signature == ZipFormat.localHeaderSignature else {
            throw ZipError.localHeaderSignatureMismatch(
                archive: id, entry: record.name, offset: absolute(start), found: signature)
        }
        fields.position = 26
        let nameLength = Int64(fields.u16()!)
        let extraLength = Int64(fields.u16()!)
        let headerEnd = headerSize + nameLength + extraLength
        guard headerEnd <= limit - start else {
            throw ZipError.entryDataOutsideArchive(
                archive: id, entry: record.name, offset: absolute(start), count: headerEnd)
        }
        if Int64(bytes.count) < headerSize + nameLength {
            bytes = try read(start, Int(headerSize + nameLength))
        }
        let localName = bytes[Int(headerSize)..<Int(headerSize + nameLength)]
        guard localName.elementsEqual(record.nameBytes) else {
            throw ZipError.localNameMismatch(
                archive: id, entry: record.name, offset: absolute(start),
                localName: String(decoding: localName, as: UTF8.self))
        }
        let dataStart = start + headerEnd
        guard record.compressedSize <= limit - dataStart else {
            throw ZipError.entryDataOutsideArchive(
                archive: id, entry: record.name, offset: absolute(dataStart), count: record.compressedSize)
        }
        if record.method == 0 && record.compressedSize != record.uncompressedSize {
            throw ZipError.storedSizeMismatch(
                archive: id, entry: record.name, offset: absolute(record.recordOffset),
                compressed: record.compressedSize, uncompressed: record.uncompressedSize)
        }
        return ZipEntry(
            name: record.name, crc32: record.crc32, compressedSize: record.compressedSize,
            uncompressedSize: record.uncompressedSize, compressionMethod: record.method, flags: record.flags,
            centralRecordOffset: absolute(record.recordOffset), localHeaderOffset: absolute(start),
            dataRange: ByteRange(offset: absolute(dataStart), count: record.compressedSize))
    }
}

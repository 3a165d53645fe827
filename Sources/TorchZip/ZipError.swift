import TensorCore

/// Everything that can be wrong with a stored ZIP archive being read or written. Each case names
/// the archive (file and offset of the archive in it), the entry when there is one, and the
/// absolute byte offset in the file where the fault was found. Messages start with the file.
public enum ZipError: Error, Equatable, Sendable {
    // MARK: Reading

    /// The archive's byte range (from DCP metadata, say) reaches past the end of its file.
    case archiveOutsideFile(archive: ZipArchiveID, count: Int64, fileSize: Int64)
    /// No end-of-central-directory record ends the archive's byte range; the search started at
    /// `searchedFrom` (a comment can be at most 65,535 bytes, so the search is bounded).
    case noEndOfCentralDirectory(archive: ZipArchiveID, searchedFrom: Int64)
    /// The archive claims several disks; nembridge reads single-file archives only.
    case multiDiskArchive(archive: ZipArchiveID, offset: Int64)
    /// The ZIP64 records disagree with each other or with the classic fields.
    case zip64Inconsistency(archive: ZipArchiveID, entry: String?, offset: Int64, reason: String)
    /// The central directory does not fit where the end records say it is, or ends mid-record.
    case truncatedCentralDirectory(archive: ZipArchiveID, offset: Int64, reason: String)
    /// A central-directory record does not start with `PK\x01\x02`.
    case centralDirectorySignatureMismatch(archive: ZipArchiveID, offset: Int64, found: UInt32)
    /// An extra-field record runs past the end of its extra field.
    case malformedExtraField(archive: ZipArchiveID, entry: String, offset: Int64)
    /// Two central-directory records have the same name.
    case duplicateEntryName(archive: ZipArchiveID, entry: String, offset: Int64)
    /// A local header or an entry's data lies outside the archive's entries area.
    case entryDataOutsideArchive(archive: ZipArchiveID, entry: String, offset: Int64, count: Int64)
    /// The local header of an entry does not start with `PK\x03\x04`.
    case localHeaderSignatureMismatch(archive: ZipArchiveID, entry: String, offset: Int64, found: UInt32)
    /// The local header names a different entry than the central directory.
    case localNameMismatch(archive: ZipArchiveID, entry: String, offset: Int64, localName: String)
    /// The entry is compressed; only stored (method 0) data can be addressed by byte range.
    case unsupportedCompression(archive: ZipArchiveID, entry: String, offset: Int64, method: UInt16)
    /// The entry is encrypted (general-purpose flag bit 0).
    case encryptedEntry(archive: ZipArchiveID, entry: String, offset: Int64)
    /// A stored entry whose compressed and uncompressed sizes differ.
    case storedSizeMismatch(archive: ZipArchiveID, entry: String, offset: Int64, compressed: Int64, uncompressed: Int64)
    /// The entry's data does not have the CRC-32 the central directory records.
    case crcMismatch(archive: ZipArchiveID, entry: String, offset: Int64, expected: UInt32, actual: UInt32)
    /// No entry has this name (or, for a suffix lookup, ends with it).
    case entryNotFound(archive: ZipArchiveID, entry: String)
    /// A suffix lookup matched more than one entry.
    case ambiguousEntrySuffix(archive: ZipArchiveID, suffix: String, matches: [String])

    // MARK: Writing

    /// An entry name longer than the 65,535 bytes a header can hold.
    case entryNameTooLong(archive: ZipArchiveID, entry: String, byteCount: Int)
    /// A piece of data reaches outside its entry (`offset` is relative to the entry's data).
    case pieceOutsideEntry(archive: ZipArchiveID, entry: String, offset: Int64, count: Int64, entrySize: Int64)
    /// Two pieces of one entry overlap at `offset` (relative to the entry's data).
    case overlappingPieces(archive: ZipArchiveID, entry: String, offset: Int64)
    /// An entry was not fully written when the archive was finished; `offset` is the first missing
    /// byte, relative to the entry's data.
    case incompleteEntry(archive: ZipArchiveID, entry: String, offset: Int64, written: Int64, expected: Int64)

    /// The archive the fault is in.
    public var archive: ZipArchiveID {
        switch self {
        case .archiveOutsideFile(let archive, _, _), .noEndOfCentralDirectory(let archive, _), .multiDiskArchive(let archive, _),
            .zip64Inconsistency(let archive, _, _, _), .truncatedCentralDirectory(let archive, _, _),
            .centralDirectorySignatureMismatch(let archive, _, _), .malformedExtraField(let archive, _, _),
            .duplicateEntryName(let archive, _, _), .entryDataOutsideArchive(let archive, _, _, _),
            .localHeaderSignatureMismatch(let archive, _, _, _), .localNameMismatch(let archive, _, _, _),
            .unsupportedCompression(let archive, _, _, _), .encryptedEntry(let archive, _, _),
            .storedSizeMismatch(let archive, _, _, _, _), .crcMismatch(let archive, _, _, _, _),
            .entryNotFound(let archive, _), .ambiguousEntrySuffix(let archive, _, _),
            .entryNameTooLong(let archive, _, _), .pieceOutsideEntry(let archive, _, _, _, _),
            .overlappingPieces(let archive, _, _), .incompleteEntry(let archive, _, _, _, _):
            archive
        }
    }
}

extension ZipError: CustomStringConvertible {
    public var description: String {
        // Entry names come from the archive's own records: quoted, one line.
        let q = { (text: String) in MessageText.quoted(text) }
        return switch self {
        case .archiveOutsideFile(let archive, let count, let fileSize):
            "\(archive): archive of \(count) bytes at byte \(archive.offset) ends past the end of the file (\(fileSize) bytes)"
        case .noEndOfCentralDirectory(let archive, let searchedFrom):
            "\(archive): no end of central directory record found (searched from byte \(searchedFrom) to the end of the archive)"
        case .multiDiskArchive(let archive, let offset):
            "\(archive): multi-disk archives are not supported (end record at byte \(offset))"
        case .zip64Inconsistency(let archive, let entry, let offset, let reason):
            "\(archive): \(entry.map { "entry `\(q($0))`: " } ?? "")inconsistent ZIP64 records at byte \(offset): \(reason)"
        case .truncatedCentralDirectory(let archive, let offset, let reason):
            "\(archive): truncated central directory at byte \(offset): \(reason)"
        case .centralDirectorySignatureMismatch(let archive, let offset, let found):
            "\(archive): central directory record signature mismatch at byte \(offset) (found \(hex(found)))"
        case .malformedExtraField(let archive, let entry, let offset):
            "\(archive): entry `\(q(entry))`: malformed extra field in central directory record at byte \(offset)"
        case .duplicateEntryName(let archive, let entry, let offset):
            "\(archive): duplicate entry name `\(q(entry))` (second record at byte \(offset))"
        case .entryDataOutsideArchive(let archive, let entry, let offset, let count):
            "\(archive): entry `\(q(entry))`: \(count) bytes at byte \(offset) lie outside the archive's entries"
        case .localHeaderSignatureMismatch(let archive, let entry, let offset, let found):
            "\(archive): entry `\(q(entry))`: local header signature mismatch at byte \(offset) (found \(hex(found)))"
        case .localNameMismatch(let archive, let entry, let offset, let localName):
            "\(archive): entry `\(q(entry))`: local header at byte \(offset) names `\(q(localName))`"
        case .unsupportedCompression(let archive, let entry, let offset, let method):
            "\(archive): entry `\(q(entry))`: unsupported compression method \(method) (local header at byte \(offset)); only stored entries can be read"
        case .encryptedEntry(let archive, let entry, let offset):
            "\(archive): entry `\(q(entry))`: encrypted entries are not supported (local header at byte \(offset))"
        case .storedSizeMismatch(let archive, let entry, let offset, let compressed, let uncompressed):
            "\(archive): entry `\(q(entry))`: stored entry with compressed size \(compressed) != uncompressed size \(uncompressed) (central record at byte \(offset))"
        case .crcMismatch(let archive, let entry, let offset, let expected, let actual):
            "\(archive): entry `\(q(entry))`: CRC-32 mismatch for data at byte \(offset) (expected \(hex(expected)), computed \(hex(actual)))"
        case .entryNotFound(let archive, let entry):
            "\(archive): no entry `\(q(entry))`"
        case .ambiguousEntrySuffix(let archive, let suffix, let matches):
            "\(archive): suffix `\(q(suffix))` matches \(matches.count) entries (\(matches.prefix(20).map { "`\(q($0))`" }.joined(separator: ", ")))"
        case .entryNameTooLong(let archive, let entry, let byteCount):
            "\(archive): entry name `\(MessageText.quoted(entry, limit: 64))` is \(byteCount) bytes, more than 65535"
        case .pieceOutsideEntry(let archive, let entry, let offset, let count, let entrySize):
            "\(archive): entry `\(q(entry))`: piece of \(count) bytes at \(offset) outside the entry's \(entrySize) bytes"
        case .overlappingPieces(let archive, let entry, let offset):
            "\(archive): entry `\(q(entry))`: pieces overlap at entry byte \(offset)"
        case .incompleteEntry(let archive, let entry, let offset, let written, let expected):
            "\(archive): entry `\(q(entry))`: incomplete, first missing byte \(offset) (\(written) of \(expected) bytes written)"
        }
    }
}

private func hex(_ value: UInt32) -> String {
    let digits = String(value, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 8 - digits.count)) + digits
}

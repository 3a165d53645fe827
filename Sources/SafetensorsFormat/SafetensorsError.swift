import TensorCore

/// Everything that can be wrong with a safetensors file or an HF folder. The cases mirror the
/// reference crate's `SafeTensorError` (same names, same texts) and add the file, the tensor and
/// the offset the reference leaves out. Messages start with the file.
public enum SafetensorsError: Error, Equatable, Sendable {
    /// The file is shorter than the 8-byte length prefix.
    case headerTooSmall(file: String, fileSize: Int64)
    /// The header length prefix exceeds 100,000,000.
    case headerTooLarge(file: String, headerLength: UInt64)
    /// The header would run past the end of the file.
    case invalidHeaderLength(file: String, headerLength: UInt64, fileSize: Int64)
    /// The header is not valid UTF-8; `offset` is the first bad byte, from the start of the file.
    case invalidHeader(file: String, offset: Int64)
    /// The header is not the JSON the format allows; `offset` is from the start of the file.
    case invalidHeaderDeserialization(file: String, reason: String, offset: Int64)
    /// A tensor does not start where the previous one ended (gap, overlap, or `end < begin`).
    case invalidOffset(file: String, tensor: String, begin: UInt64, end: UInt64, expectedBegin: UInt64)
    /// Shape × dtype overflows 64 bits.
    case validationOverflow(file: String, tensor: String)
    /// Sub-byte elements that do not fill whole bytes.
    case misalignedSlice(file: String, tensor: String, dtype: DType, elements: UInt64)
    /// `data_offsets` do not span shape × dtype bytes.
    case tensorInvalidInfo(file: String, tensor: String, expectedBytes: UInt64, actualBytes: UInt64)
    /// The tensors do not cover the data section exactly up to the end of the file.
    case metadataIncompleteBuffer(file: String, dataEnd: UInt64, fileSize: Int64)
    /// The same tensor name appears twice in one header (the reference keeps the last one).
    case duplicateTensorName(file: String, tensor: String)
    case tensorNotFound(file: String, tensor: String)
    /// A read asked for bytes outside a tensor.
    case rangeOutsideTensor(file: String, tensor: String, offset: Int64, count: Int64, tensorBytes: Int64)
    /// The padded header would exceed the reader's 100,000,000-byte limit.
    case headerTooLargeToWrite(file: String, headerLength: Int)
    /// A writer was finished before every byte of a tensor had been written.
    case incompleteTensor(file: String, tensor: String, written: Int64, expected: Int64)
    /// The same tensor was given twice to a writer.
    case duplicateTensorToWrite(file: String, tensor: String)

    /// The reference crate's variant name for this fault (`InvalidOffset`), for comparisons with
    /// the reference reader's verdicts; nembridge-only cases have their own names.
    public var referenceVariant: String {
        switch self {
        case .headerTooSmall: "HeaderTooSmall"
        case .headerTooLarge: "HeaderTooLarge"
        case .invalidHeaderLength: "InvalidHeaderLength"
        case .invalidHeader: "InvalidHeader"
        case .invalidHeaderDeserialization: "InvalidHeaderDeserialization"
        case .invalidOffset: "InvalidOffset"
        case .validationOverflow: "ValidationOverflow"
        case .misalignedSlice: "MisalignedSlice"
        case .tensorInvalidInfo: "TensorInvalidInfo"
        case .metadataIncompleteBuffer: "MetadataIncompleteBuffer"
        case .duplicateTensorName: "DuplicateTensorName"
        case .tensorNotFound: "TensorNotFound"
        case .rangeOutsideTensor: "RangeOutsideTensor"
        case .headerTooLargeToWrite: "HeaderTooLarge"
        case .incompleteTensor: "IncompleteTensor"
        case .duplicateTensorToWrite: "DuplicateTensorToWrite"
        }
    }

    /// The file the fault is in.
    public var file: String {
        switch self {
        case .headerTooSmall(let file, _), .headerTooLarge(let file, _),
            .invalidHeaderLength(let file, _, _), .invalidHeader(let file, _),
            .invalidHeaderDeserialization(let file, _, _), .invalidOffset(let file, _, _, _, _),
            .validationOverflow(let file, _), .misalignedSlice(let file, _, _, _),
            .tensorInvalidInfo(let file, _, _, _), .metadataIncompleteBuffer(let file, _, _),
            .duplicateTensorName(let file, _), .tensorNotFound(let file, _),
            .rangeOutsideTensor(let file, _, _, _, _), .headerTooLargeToWrite(let file, _),
            .incompleteTensor(let file, _, _, _), .duplicateTensorToWrite(let file, _):
            file
        }
    }
}

extension SafetensorsError: CustomStringConvertible {
    public var description: String {
        // File names and tensor names come from the input (an index, a header): quoted.
        let file = MessageText.path(self.file)
        let q = { (text: String) in MessageText.quoted(text) }
        return switch self {
        case .headerTooSmall(_, let size):
            "\(file): header too small (file is \(size) bytes, the length prefix needs 8)"
        case .headerTooLarge(_, let length):
            "\(file): header too large (length prefix \(length) at offset 0, limit 100000000)"
        case .invalidHeaderLength(_, let length, let size):
            "\(file): invalid header length (length prefix \(length) at offset 0 runs past the end of the \(size)-byte file)"
        case .invalidHeader(_, let offset):
            "\(file): invalid UTF-8 in header (at offset \(offset))"
        case .invalidHeaderDeserialization(_, let reason, let offset):
            "\(file): invalid JSON in header: \(MessageText.quoted(reason, limit: nil)) (at offset \(offset))"
        case .invalidOffset(_, let tensor, let begin, let end, let expected):
            "\(file): invalid offset for tensor `\(q(tensor))` (data_offsets [\(begin), \(end)], expected begin \(expected))"
        case .validationOverflow(_, let tensor):
            "\(file): overflow computing buffer size from shape and/or element type for tensor `\(q(tensor))`"
        case .misalignedSlice(_, let tensor, let dtype, let elements):
            "\(file): sub-byte tensor `\(q(tensor))` does not end at a byte boundary (\(elements) elements of \(dtype))"
        case .tensorInvalidInfo(_, let tensor, let expected, let actual):
            "\(file): invalid shape, data type, or offset for tensor `\(q(tensor))` (shape and dtype need \(expected) bytes, data_offsets span \(actual))"
        case .metadataIncompleteBuffer(_, let end, let size):
            "\(file): incomplete metadata, file not fully covered (tensor data ends at offset \(end), file is \(size) bytes)"
        case .duplicateTensorName(_, let tensor):
            "\(file): duplicate tensor `\(q(tensor))` in header"
        case .tensorNotFound(_, let tensor):
            "\(file): tensor `\(q(tensor))` not found"
        case .rangeOutsideTensor(_, let tensor, let offset, let count, let total):
            "\(file): \(count) bytes at offset \(offset) are outside tensor `\(q(tensor))` (\(total) bytes)"
        case .headerTooLargeToWrite(_, let length):
            "\(file): header too large (\(length) bytes, limit 100000000)"
        case .incompleteTensor(_, let tensor, let written, let expected):
            "\(file): tensor `\(q(tensor))` incomplete (\(written) of \(expected) bytes written)"
        case .duplicateTensorToWrite(_, let tensor):
            "\(file): tensor `\(q(tensor))` given twice"
        }
    }
}

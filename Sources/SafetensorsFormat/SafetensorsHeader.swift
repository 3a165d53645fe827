import TensorCore

/// One tensor entry of a safetensors header.
public struct SafetensorsTensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// Byte range relative to the start of the data section (the header's `data_offsets`).
    public let dataOffsets: ByteRange

    public init(name: String, dtype: DType, shape: [Int], dataOffsets: ByteRange) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.dataOffsets = dataOffsets
    }

    public var byteCount: Int64 { dataOffsets.count }
}

/// A parsed and validated safetensors header: the 8-byte length prefix `N`, the JSON header and
/// the tensor table, checked exactly as the reference reader (`SafeTensors::read_metadata` and
/// `Metadata::validate` in safetensors 0.8) checks it, in the same order, so a corrupt file gets
/// the same verdict; duplicate tensor names are rejected in addition.
public struct SafetensorsHeader: Sendable {
    /// Headers longer than this are refused by the reference reader.
    public static let maximumHeaderLength: UInt64 = 100_000_000

    /// `N`, the header length including any padding.
    public let headerLength: Int
    /// Tensors in data order (by offsets).
    public let tensors: [SafetensorsTensorInfo]
    /// `__metadata__` in file order, or nil when absent or `null`.
    public let metadata: [(key: String, value: String)]?

    /// Offset of the data section in the file.
    public var dataStart: Int64 { 8 + Int64(headerLength) }

    /// The metadata as a dictionary (the last value wins for a repeated key, as in the reference).
    public var metadataDictionary: [String: String]? {
        metadata.map { Dictionary($0.map { ($0.key, $0.value) }, uniquingKeysWith: { _, last in last }) }
    }

    /// Reads and validates the header of `file` (only the header bytes are read).
    public static func read(from file: ReadOnlyFile, displayName: String? = nil) throws -> SafetensorsHeader {
        try parse(fileSize: file.size, file: displayName ?? file.path) { try file.readBytes($0) }
    }

    /// Parses a whole safetensors file held in memory (tests, small files).
    public static func parse(fileBytes: [UInt8], file: String) throws -> SafetensorsHeader {
        try parse(fileSize: Int64(fileBytes.count), file: file) { range in
            Array(fileBytes[Int(range.offset)..<Int(range.end)])
        }
    }

    static func parse(
        fileSize: Int64, file: String, readBytes: (ByteRange) throws -> [UInt8]
    ) throws -> SafetensorsHeader {
        // 1. The length prefix.
        guard fileSize >= 8 else { throw SafetensorsError.headerTooSmall(file: file, fileSize: fileSize) }
        let prefix = try readBytes(ByteRange(offset: 0, count: 8))
        let length = prefix.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self).littleEndian }
        // 2. Its size limit, then 3. that the header fits in the file.
        guard length <= maximumHeaderLength else {
            throw SafetensorsError.headerTooLarge(file: file, headerLength: length)
        }
        guard 8 + length <= UInt64(fileSize) else {
            throw SafetensorsError.invalidHeaderLength(file: file, headerLength: length, fileSize: fileSize)
        }
        let headerBytes = try readBytes(ByteRange(offset: 8, count: Int64(length)))
        // 4. UTF-8.
        if let bad = firstInvalidUTF8Offset(headerBytes) {
            throw SafetensorsError.invalidHeader(file: file, offset: 8 + Int64(bad))
        }
        // 5. JSON, deserialized with serde's rules for the reference's `HashMetadata`.
        let document: JSONValue
        do {
            document = try JSONParser.parse(headerBytes)
        } catch {
            throw SafetensorsError.invalidHeaderDeserialization(
                file: file, reason: error.reason, offset: 8 + Int64(error.offset))
        }
        let (metadata, entries) = try decodeHeader(document, file: file)
        // 6. The reference keeps the last entry of a repeated name (a HashMap); sort by
        // (begin, end), then 7. validate coverage and sizes in that order.
        var lastIndex: [String: Int] = [:]
        lastIndex.reserveCapacity(entries.count)
        // The first entry that repeats an earlier name (refused below, after the reference's checks).
        var firstDuplicate: String?
        for (position, entry) in entries.enumerated() where lastIndex.updateValue(position, forKey: entry.name) != nil {
            if firstDuplicate == nil { firstDuplicate = entry.name }
        }
        let kept = entries.enumerated().filter { lastIndex[$0.element.name] == $0.offset }.map(\.element)
        let sorted = kept.enumerated().sorted { lhs, rhs in
            (lhs.element.begin, lhs.element.end, lhs.offset) < (rhs.element.begin, rhs.element.end, rhs.offset)
        }.map(\.element)
        var start: UInt64 = 0
        for entry in sorted {
            guard entry.begin == start, entry.end >= entry.begin else {
                throw SafetensorsError.invalidOffset(
                    file: file, tensor: entry.name, begin: entry.begin, end: entry.end, expectedBegin: start)
            }
            start = entry.end
            var elements: UInt64 = 1
            for dim in entry.shape {
                let (product, overflow) = elements.multipliedReportingOverflow(by: dim)
                if overflow { throw SafetensorsError.validationOverflow(file: file, tensor: entry.name) }
                elements = product
            }
            let (bits, overflow) = elements.multipliedReportingOverflow(by: UInt64(entry.dtype.bitWidth))
            if overflow { throw SafetensorsError.validationOverflow(file: file, tensor: entry.name) }
            guard bits % 8 == 0 else {
                throw SafetensorsError.misalignedSlice(
                    file: file, tensor: entry.name, dtype: entry.dtype, elements: elements)
            }
            guard entry.end - entry.begin == bits / 8 else {
                throw SafetensorsError.tensorInvalidInfo(
                    file: file, tensor: entry.name, expectedBytes: bits / 8, actualBytes: entry.end - entry.begin)
            }
            // Dimensions past Int.max can only pass the checks above next to a zero dimension;
            // nembridge does not represent them.
            guard entry.shape.allSatisfy({ $0 <= UInt64(Int.max) }) else {
                throw SafetensorsError.validationOverflow(file: file, tensor: entry.name)
            }
        }
        // 8. The data must end exactly at the end of the file.
        let (dataEnd, overflow) = start.addingReportingOverflow(8 + length)
        guard !overflow, dataEnd == UInt64(fileSize) else {
            throw SafetensorsError.metadataIncompleteBuffer(file: file, dataEnd: overflow ? UInt64.max : dataEnd, fileSize: fileSize)
        }
        // Every offset is now inside the file, so it fits `Int64` (before this check a run of
        // large tensors could reach past it: the offsets are only summed above).
        let tensors = sorted.map { entry in
            SafetensorsTensorInfo(
                name: entry.name, dtype: entry.dtype, shape: entry.shape.map { Int($0) },
                dataOffsets: ByteRange(offset: Int64(entry.begin), count: Int64(entry.end - entry.begin)))
        }
        // nembridge's own rule, checked once the reference would have accepted the file: the
        // format forbids duplicate names.
        if let firstDuplicate { throw SafetensorsError.duplicateTensorName(file: file, tensor: firstDuplicate) }
        return SafetensorsHeader(headerLength: Int(length), tensors: tensors, metadata: metadata)
    }

    private init(headerLength: Int, tensors: [SafetensorsTensorInfo], metadata: [(key: String, value: String)]?) {
        self.headerLength = headerLength
        self.tensors = tensors
        self.metadata = metadata
    }

    /// A header entry before validation; dimensions and offsets as the reference's `usize`.
    struct RawEntry {
        var name: String
        var dtype: DType
        var shape: [UInt64]
        var begin: UInt64
        var end: UInt64
    }

    /// serde's view of the header: a map with an optional `__metadata__` string map; every other
    /// key is a tensor entry. Duplicate tensor keys are kept here and rejected after validation,
    /// so that a file the reference rejects for another reason gets the reference's verdict.
    static func decodeHeader(
        _ document: JSONValue, file: String
    ) throws -> (metadata: [(key: String, value: String)]?, entries: [RawEntry]) {
        func fail(_ reason: String) -> SafetensorsError {
            .invalidHeaderDeserialization(file: file, reason: reason, offset: 8)
        }
        guard case .object(let members) = document else {
            throw fail("invalid type: \(typeName(document)), expected struct HashMetadata")
        }
        var metadata: [(key: String, value: String)]?
        var sawMetadata = false
        var pending: [(String, JSONValue)] = []
        for member in members {
            if member.key == "__metadata__" {
                if sawMetadata { throw fail("duplicate field `__metadata__`") }
                sawMetadata = true
                switch member.value {
                case .null: metadata = nil
                case .object(let pairs):
                    var decoded: [(key: String, value: String)] = []
                    for pair in pairs {
                        guard case .string(let text) = pair.value else {
                            throw fail("`__metadata__` value `\(MessageText.quoted(pair.key))`: invalid type: \(typeName(pair.value)), expected a string")
                        }
                        if let index = decoded.firstIndex(where: { $0.key == pair.key }) {
                            decoded[index].value = text
                        } else {
                            decoded.append((pair.key, text))
                        }
                    }
                    metadata = decoded
                default:
                    throw fail("`__metadata__`: invalid type: \(typeName(member.value)), expected a map")
                }
            } else {
                pending.append((member.key, member.value))
            }
        }
        var entries: [RawEntry] = []
        entries.reserveCapacity(pending.count)
        for (name, value) in pending {
            entries.append(try decodeEntry(name: name, value, fail: fail))
        }
        return (metadata, entries)
    }

    /// A `TensorInfo {dtype, shape, data_offsets}`: serde accepts it as a map (unknown fields
    /// ignored, known fields at most once) or as a 3-element sequence in field order.
    private static func decodeEntry(
        name: String, _ value: JSONValue, fail: (String) -> SafetensorsError
    ) throws -> RawEntry {
        let dtypeValue: JSONValue
        let shapeValue: JSONValue
        let offsetsValue: JSONValue
        switch value {
        case .object(let fields):
            var dtype: JSONValue?, shape: JSONValue?, offsets: JSONValue?
            for field in fields {
                switch field.key {
                case "dtype":
                    if dtype != nil { throw fail("tensor `\(MessageText.quoted(name))`: duplicate field `dtype`") }
                    dtype = field.value
                case "shape":
                    if shape != nil { throw fail("tensor `\(MessageText.quoted(name))`: duplicate field `shape`") }
                    shape = field.value
                case "data_offsets":
                    if offsets != nil { throw fail("tensor `\(MessageText.quoted(name))`: duplicate field `data_offsets`") }
                    offsets = field.value
                default:
                    continue
                }
            }
            guard let dtype else { throw fail("tensor `\(MessageText.quoted(name))`: missing field `dtype`") }
            guard let shape else { throw fail("tensor `\(MessageText.quoted(name))`: missing field `shape`") }
            guard let offsets else { throw fail("tensor `\(MessageText.quoted(name))`: missing field `data_offsets`") }
            (dtypeValue, shapeValue, offsetsValue) = (dtype, shape, offsets)
        case .array(let items):
            guard items.count == 3 else {
                throw fail("tensor `\(MessageText.quoted(name))`: invalid length \(items.count), expected struct TensorInfo with 3 elements")
            }
            (dtypeValue, shapeValue, offsetsValue) = (items[0], items[1], items[2])
        default:
            throw fail("tensor `\(MessageText.quoted(name))`: invalid type: \(typeName(value)), expected struct TensorInfo")
        }
        let dtype = try decodeDType(dtypeValue, tensor: name, fail: fail)
        guard case .array(let dims) = shapeValue else {
            throw fail("tensor `\(MessageText.quoted(name))`: shape: invalid type: \(typeName(shapeValue)), expected a sequence")
        }
        let shape = try dims.map { try decodeUnsigned($0, field: "shape", tensor: name, fail: fail) }
        guard case .array(let offsets) = offsetsValue else {
            throw fail("tensor `\(MessageText.quoted(name))`: data_offsets: invalid type: \(typeName(offsetsValue)), expected a tuple of size 2")
        }
        guard offsets.count == 2 else {
            throw fail("tensor `\(MessageText.quoted(name))`: data_offsets: invalid length \(offsets.count), expected a tuple of size 2")
        }
        let begin = try decodeUnsigned(offsets[0], field: "data_offsets", tensor: name, fail: fail)
        let end = try decodeUnsigned(offsets[1], field: "data_offsets", tensor: name, fail: fail)
        return RawEntry(name: name, dtype: dtype, shape: shape, begin: begin, end: end)
    }

    /// A unit enum variant: serde takes a string, or a one-member map whose value is `null`.
    private static func decodeDType(
        _ value: JSONValue, tensor: String, fail: (String) -> SafetensorsError
    ) throws -> DType {
        let name: String
        switch value {
        case .string(let text): name = text
        case .object(let members) where members.count == 1 && members[0].value.isNull:
            name = members[0].key
        default:
            throw fail("tensor `\(MessageText.quoted(tensor))`: dtype: invalid type: \(typeName(value)), expected a dtype name")
        }
        guard let dtype = DType(safetensorsName: name) else {
            throw fail("tensor `\(MessageText.quoted(tensor))`: unknown variant `\(MessageText.quoted(name))` for dtype")
        }
        return dtype
    }

    /// A `usize`: serde_json gives one only for a non-negative integer token without fraction or
    /// exponent that fits in 64 bits (`-0`, `2.0`, `8e0` and larger integers are floats).
    private static func decodeUnsigned(
        _ value: JSONValue, field: String, tensor: String, fail: (String) -> SafetensorsError
    ) throws -> UInt64 {
        guard case .number(let number) = value else {
            throw fail("tensor `\(MessageText.quoted(tensor))`: \(field): invalid type: \(typeName(value)), expected usize")
        }
        guard let unsigned = number.unsignedValue else {
            throw fail("tensor `\(MessageText.quoted(tensor))`: \(field): invalid value \(MessageText.quoted(number.text, limit: 40)), expected usize")
        }
        return unsigned
    }

    private static func typeName(_ value: JSONValue) -> String {
        switch value {
        case .null: "null"
        case .bool: "boolean"
        case .number: "number"
        case .string: "string"
        case .array: "sequence"
        case .object: "map"
        }
    }

    /// Offset of the first byte that breaks strict UTF-8 (as Rust's `str::from_utf8`), or nil.
    static func firstInvalidUTF8Offset(_ bytes: [UInt8]) -> Int? {
        var index = 0
        while index < bytes.count {
            let lead = bytes[index]
            let width: Int
            var low: UInt8 = 0x80
            var high: UInt8 = 0xBF
            switch lead {
            case 0x00...0x7F: index += 1; continue
            case 0xC2...0xDF: width = 2
            case 0xE0: width = 3; low = 0xA0
            case 0xE1...0xEC, 0xEE...0xEF: width = 3
            case 0xED: width = 3; high = 0x9F
            case 0xF0: width = 4; low = 0x90
            case 0xF1...0xF3: width = 4
            case 0xF4: width = 4; high = 0x8F
            default: return index
            }
            guard index + width <= bytes.count else { return index }
            for position in 1..<width {
                let byte = bytes[index + position]
                let (min, max) = position == 1 ? (low, high) : (UInt8(0x80), UInt8(0xBF))
                if byte < min || byte > max { return index }
            }
            index += width
        }
        return nil
    }
}

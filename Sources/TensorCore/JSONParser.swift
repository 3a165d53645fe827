/// A strict JSON parser (RFC 8259) that follows serde_json's verdicts: only space, tab, CR and LF
/// are whitespace; raw control characters in strings, lone surrogate escapes, leading zeros,
/// numbers that overflow a double and nesting of 128 levels or more are errors; nothing may
/// follow the document. Errors carry the byte offset, so messages can point into the file.
public struct JSONParser {
    public struct Failure: Error, Equatable, Sendable, CustomStringConvertible {
        public var reason: String
        /// Byte offset inside the parsed text.
        public var offset: Int
        public var description: String { "\(reason) at byte \(offset)" }
    }

    /// serde_json's `remaining_depth` starts at 128 and fails when it reaches 0.
    public static let nestingLimit = 128

    /// Which documents are accepted beyond RFC 8259.
    public enum Dialect: Sendable {
        /// serde_json's verdicts (safetensors headers).
        case strict
        /// Python's `json` module as `json.dump` writes by default: also the tokens `NaN`,
        /// `Infinity` and `-Infinity` (published `config.json` files carry
        /// `"time_step_limit": [0.0, Infinity]`). They keep their spelling as the number's text.
        case python
    }

    private let bytes: [UInt8]
    private let dialect: Dialect
    private var position = 0
    private var previousStringValue: String?
    private var depth = 0

    private init(_ bytes: [UInt8], dialect: Dialect) {
        self.bytes = bytes
        self.dialect = dialect
    }

    /// Parses one JSON document from UTF-8 `bytes`. The caller checks UTF-8 validity first when
    /// it matters which of the two errors is reported.
    public static func parse(_ bytes: [UInt8], dialect: Dialect = .strict) throws(Failure) -> JSONValue {
        var parser = JSONParser(bytes, dialect: dialect)
        parser.skipWhitespace()
        let value = try parser.parseValue()
        parser.skipWhitespace()
        if parser.position != bytes.count { throw parser.failure("trailing characters") }
        return value
    }

    public static func parse(_ text: String, dialect: Dialect = .strict) throws(Failure) -> JSONValue {
        try parse(Array(text.utf8), dialect: dialect)
    }

    private func failure(_ reason: String) -> Failure { Failure(reason: reason, offset: position) }

    private mutating func skipWhitespace() {
        while position < bytes.count {
            switch bytes[position] {
            case 0x20, 0x09, 0x0A, 0x0D: position += 1
            default: return
            }
        }
    }

    private var current: UInt8? { position < bytes.count ? bytes[position] : nil }

    private mutating func parseValue() throws(Failure) -> JSONValue {
        guard let byte = current else { throw failure("EOF while parsing a value") }
        switch byte {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""):
            // A value equal to the previous string value shares its storage: an index's 51,000
            // values name a few hundred shard files.
            let value = try parseString()
            if let previous = previousStringValue, previous == value { return .string(previous) }
            previousStringValue = value
            return .string(value)
        case UInt8(ascii: "t"): try expectLiteral("true"); return .bool(true)
        case UInt8(ascii: "f"): try expectLiteral("false"); return .bool(false)
        case UInt8(ascii: "n"): try expectLiteral("null"); return .null
        case UInt8(ascii: "N") where dialect == .python:
            try expectLiteral("NaN")
            return .number(JSONNumber(text: "NaN"))
        case UInt8(ascii: "I") where dialect == .python:
            try expectLiteral("Infinity")
            return .number(JSONNumber(text: "Infinity"))
        case UInt8(ascii: "-") where dialect == .python && position + 1 < bytes.count && bytes[position + 1] == UInt8(ascii: "I"):
            try expectLiteral("-Infinity")
            return .number(JSONNumber(text: "-Infinity"))
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try parseNumber())
        default: throw failure("expected value")
        }
    }

    private mutating func expectLiteral(_ literal: StaticString) throws(Failure) {
        let expected = literal.withUTF8Buffer { Array($0) }
        guard position + expected.count <= bytes.count,
            Array(bytes[position..<position + expected.count]) == expected
        else { throw failure("expected ident") }
        position += expected.count
    }

    private mutating func enterNesting() throws(Failure) {
        depth += 1
        if depth >= Self.nestingLimit { throw failure("recursion limit exceeded") }
    }

    private mutating func parseObject() throws(Failure) -> JSONValue {
        try enterNesting()
        position += 1
        var members: [(key: String, value: JSONValue)] = []
        skipWhitespace()
        if current == UInt8(ascii: "}") {
            position += 1
            depth -= 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            guard current == UInt8(ascii: "\"") else {
                throw failure(current == nil ? "EOF while parsing an object" : "key must be a string")
            }
            let key = try parseString()
            skipWhitespace()
            guard current == UInt8(ascii: ":") else {
                throw failure(current == nil ? "EOF while parsing an object" : "expected `:`")
            }
            position += 1
            skipWhitespace()
            let value = try parseValue()
            members.append((key, value))
            skipWhitespace()
            switch current {
            case UInt8(ascii: ","): position += 1
            case UInt8(ascii: "}"):
                position += 1
                depth -= 1
                return .object(members)
            case nil: throw failure("EOF while parsing an object")
            default: throw failure("expected `,` or `}`")
            }
        }
    }

    private mutating func parseArray() throws(Failure) -> JSONValue {
        try enterNesting()
        position += 1
        var items: [JSONValue] = []
        skipWhitespace()
        if current == UInt8(ascii: "]") {
            position += 1
            depth -= 1
            return .array(items)
        }
        while true {
            skipWhitespace()
            items.append(try parseValue())
            skipWhitespace()
            switch current {
            case UInt8(ascii: ","): position += 1
            case UInt8(ascii: "]"):
                position += 1
                depth -= 1
                return .array(items)
            case nil: throw failure("EOF while parsing a list")
            default: throw failure("expected `,` or `]`")
            }
        }
    }

    private mutating func parseNumber() throws(Failure) -> JSONNumber {
        let start = position
        if current == UInt8(ascii: "-") { position += 1 }
        guard let first = current, first >= 0x30, first <= 0x39 else { throw failure("invalid number") }
        position += 1
        if first == 0x30, let next = current, next >= 0x30, next <= 0x39 {
            throw failure("invalid number")
        }
        skipDigits()
        var isInteger = true
        if current == UInt8(ascii: ".") {
            isInteger = false
            position += 1
            guard let digit = current, digit >= 0x30, digit <= 0x39 else { throw failure("invalid number") }
            skipDigits()
        }
        if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
            isInteger = false
            position += 1
            if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { position += 1 }
            guard let digit = current, digit >= 0x30, digit <= 0x39 else { throw failure("invalid number") }
            skipDigits()
        }
        let text = String(decoding: bytes[start..<position], as: UTF8.self)
        // serde_json turns non-integers and integers beyond 64 bits into f64 and rejects infinity.
        let fitsInteger = isInteger && (text.hasPrefix("-") ? Int64(text) != nil : UInt64(text) != nil)
        if !fitsInteger, let value = Double(text), !value.isFinite {
            throw Failure(reason: "number out of range", offset: start)
        }
        return JSONNumber(text: text)
    }

    private mutating func skipDigits() {
        while let digit = current, digit >= 0x30, digit <= 0x39 { position += 1 }
    }

    private mutating func parseString() throws(Failure) -> String {
        position += 1  // opening quote
        // Without escapes (nearly every key and value) the string is its bytes: one allocation of
        // the exact size, where appending scalars over-allocates (names of 51,000 tensors are kept).
        let start = position
        while let byte = current, byte != UInt8(ascii: "\""), byte != UInt8(ascii: "\\"), byte >= 0x20 { position += 1 }
        if current == UInt8(ascii: "\"") {
            position += 1
            return String(decoding: bytes[start..<(position - 1)], as: UTF8.self)
        }
        position = start
        var scalars = String.UnicodeScalarView()
        var runStart = position
        func flushRun(_ end: Int) {
            if end > runStart {
                scalars.append(contentsOf: String(decoding: bytes[runStart..<end], as: UTF8.self).unicodeScalars)
            }
        }
        while true {
            guard let byte = current else { throw failure("EOF while parsing a string") }
            switch byte {
            case UInt8(ascii: "\""):
                flushRun(position)
                position += 1
                return String(scalars)
            case UInt8(ascii: "\\"):
                flushRun(position)
                position += 1
                scalars.append(try parseEscape())
                runStart = position
            case 0x00..<0x20:
                throw failure("control character (\\u0000-\\u001F) found while parsing a string")
            default:
                position += 1
            }
        }
    }

    private mutating func parseEscape() throws(Failure) -> Unicode.Scalar {
        guard let byte = current else { throw failure("EOF while parsing a string") }
        position += 1
        switch byte {
        case UInt8(ascii: "\""): return "\""
        case UInt8(ascii: "\\"): return "\\"
        case UInt8(ascii: "/"): return "/"
        case UInt8(ascii: "b"): return "\u{08}"
        case UInt8(ascii: "f"): return "\u{0C}"
        case UInt8(ascii: "n"): return "\n"
        case UInt8(ascii: "r"): return "\r"
        case UInt8(ascii: "t"): return "\t"
        case UInt8(ascii: "u"):
            let unit = try parseHex4()
            if (0xDC00...0xDFFF).contains(unit) { throw failure("lone trailing surrogate in hex escape") }
            if (0xD800...0xDBFF).contains(unit) {
                guard current == UInt8(ascii: "\\"), position + 1 < bytes.count,
                    bytes[position + 1] == UInt8(ascii: "u")
                else { throw failure("lone leading surrogate in hex escape") }
                position += 2
                let low = try parseHex4()
                guard (0xDC00...0xDFFF).contains(low) else {
                    throw failure("lone leading surrogate in hex escape")
                }
                let value = 0x10000 + ((UInt32(unit) - 0xD800) << 10) + (UInt32(low) - 0xDC00)
                return Unicode.Scalar(value)!
            }
            return Unicode.Scalar(UInt32(unit))!
        default:
            throw failure("invalid escape")
        }
    }

    private mutating func parseHex4() throws(Failure) -> UInt16 {
        var value: UInt16 = 0
        for _ in 0..<4 {
            guard let byte = current else { throw failure("EOF while parsing a string") }
            let digit: UInt8
            switch byte {
            case 0x30...0x39: digit = byte - 0x30
            case 0x41...0x46: digit = byte - 0x41 + 10
            case 0x61...0x66: digit = byte - 0x61 + 10
            default: throw failure("invalid escape")
            }
            value = value << 4 | UInt16(digit)
            position += 1
        }
        return value
    }
}

/// A JSON document as data: object members keep their order and duplicates, and integers keep
/// their exact value, so callers can apply the rules of the format they read (serde_json's, for
/// safetensors headers) and write files back without reordering them.
public indirect enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case number(JSONNumber)
    case string(String)
    case array([JSONValue])
    /// Members in document order; a key may repeat, and deciding what that means is the caller's.
    case object([(key: String, value: JSONValue)])

    public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): true
        case (.bool(let a), .bool(let b)): a == b
        case (.number(let a), .number(let b)): a == b
        case (.string(let a), .string(let b)): a == b
        case (.array(let a), .array(let b)): a == b
        case (.object(let a), .object(let b)):
            a.count == b.count && zip(a, b).allSatisfy { $0.key == $1.key && $0.value == $1.value }
        default: false
        }
    }

    /// The last member named `key`, as JSON readers that keep one value per key see it.
    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        return members.last(where: { $0.key == key })?.value
    }

    public var stringValue: String? {
        if case .string(let text) = self { return text }
        return nil
    }

    /// The value as an `Int` when it is an integer token that fits.
    public var intValue: Int? {
        if case .number(let number) = self { return number.intValue }
        return nil
    }

    public var doubleValue: Double? {
        if case .number(let number) = self { return number.doubleValue }
        return nil
    }

    public var boolValue: Bool? {
        if case .bool(let flag) = self { return flag }
        return nil
    }

    public var arrayValue: [JSONValue]? {
        if case .array(let items) = self { return items }
        return nil
    }

    public var objectMembers: [(key: String, value: JSONValue)]? {
        if case .object(let members) = self { return members }
        return nil
    }

    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    public var isNumber: Bool {
        if case .number = self { return true }
        return false
    }
}

/// A JSON number token, kept as written.
public struct JSONNumber: Sendable, Equatable, Hashable {
    /// The token exactly as it appeared (`-0`, `1e0`, `18446744073709551616`).
    public let text: String

    public init(text: String) { self.text = text }
    public init(_ value: Int) { text = String(value) }
    public init(_ value: UInt64) { text = String(value) }

    /// True for a token with no sign, fraction or exponent: a JSON non-negative integer.
    public var isPlainUnsignedInteger: Bool { text.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 } }

    /// The value when the token is a non-negative integer without fraction or exponent that fits
    /// in 64 bits — what serde_json hands to an unsigned field; nil otherwise.
    public var unsignedValue: UInt64? { isPlainUnsignedInteger ? UInt64(text) : nil }

    /// The value when the token is an integer (optionally negative) without fraction or exponent.
    public var intValue: Int? { Int(text) }

    public var doubleValue: Double? { Double(text) }
}

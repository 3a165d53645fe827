/// Writes JSON text in the two house styles nembridge must reproduce byte for byte:
/// serde_json's compact form (safetensors headers) and Python's `json.dumps(indent=2,
/// sort_keys=True)` (transformers' index and config files).
public enum JSONWriter {
    /// serde_json compact: no spaces; only `"`, `\` and control characters escaped; UTF-8 raw.
    public static func compact(_ value: JSONValue) -> String {
        var out = ""
        writeCompact(value, into: &out)
        return out
    }

    private static func writeCompact(_ value: JSONValue, into out: inout String) {
        switch value {
        case .null: out += "null"
        case .bool(let flag): out += flag ? "true" : "false"
        case .number(let number): out += number.text
        case .string(let text): out += serdeQuoted(text)
        case .array(let items):
            out += "["
            for (index, item) in items.enumerated() {
                if index > 0 { out += "," }
                writeCompact(item, into: &out)
            }
            out += "]"
        case .object(let members):
            out += "{"
            for (index, member) in members.enumerated() {
                if index > 0 { out += "," }
                out += serdeQuoted(member.key)
                out += ":"
                writeCompact(member.value, into: &out)
            }
            out += "}"
        }
    }

    /// A string as serde_json writes it: short escapes for \b \t \n \f \r, `\u00xx` (lowercase)
    /// for other control characters, everything else raw.
    public static func serdeQuoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\u{08}": out += "\\b"
            case "\t": out += "\\t"
            case "\n": out += "\\n"
            case "\u{0C}": out += "\\f"
            case "\r": out += "\\r"
            case "\u{00}"..."\u{1F}": out += "\\u00" + hexByte(UInt8(scalar.value))
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// Python `json.dumps(value, indent=2, sort_keys=True, ensure_ascii=True)`, as transformers
    /// writes `model.safetensors.index.json`.
    public static func pythonIndented(_ value: JSONValue, sortKeys: Bool = true) -> String {
        var out = ""
        writePython(value, indent: 0, sortKeys: sortKeys, into: &out)
        return out
    }

    private static func writePython(_ value: JSONValue, indent: Int, sortKeys: Bool, into out: inout String) {
        let pad = String(repeating: " ", count: indent + 2)
        let closePad = String(repeating: " ", count: indent)
        switch value {
        case .null: out += "null"
        case .bool(let flag): out += flag ? "true" : "false"
        case .number(let number): out += number.text
        case .string(let text): out += pythonQuoted(text)
        case .array(let items):
            if items.isEmpty { out += "[]"; return }
            out += "[\n"
            for (index, item) in items.enumerated() {
                out += pad
                writePython(item, indent: indent + 2, sortKeys: sortKeys, into: &out)
                out += index + 1 < items.count ? ",\n" : "\n"
            }
            out += closePad + "]"
        case .object(let members):
            if members.isEmpty { out += "{}"; return }
            // Python sorts str keys by code point, which UTF-8 byte order preserves (and compares
            // 51,000 tensor names of an index several times faster than scalars do).
            let ordered = sortKeys
                ? members.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
                : members
            out += "{\n"
            for (index, member) in ordered.enumerated() {
                out += pad + pythonQuoted(member.key) + ": "
                writePython(member.value, indent: indent + 2, sortKeys: sortKeys, into: &out)
                out += index + 1 < ordered.count ? ",\n" : "\n"
            }
            out += closePad + "}"
        }
    }

    /// Python's `json` ASCII string form: non-ASCII as `\uxxxx` (surrogate pairs above the BMP).
    public static func pythonQuoted(_ text: String) -> String {
        // Printable ASCII without quote or backslash (every tensor name) is written as it is.
        if text.utf8.allSatisfy({ $0 >= 0x20 && $0 <= 0x7E && $0 != 0x22 && $0 != 0x5C }) {
            var out = "\""
            out.reserveCapacity(text.utf8.count + 2)
            out.append(text)
            out.append("\"")
            return out
        }
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            case " "..."~": out.unicodeScalars.append(scalar)
            default:
                for unit in String(scalar).utf16 {
                    out += "\\u" + hexByte(UInt8(unit >> 8)) + hexByte(UInt8(unit & 0xFF))
                }
            }
        }
        return out + "\""
    }

    private static func hexByte(_ byte: UInt8) -> String {
        let digits = Array("0123456789abcdef")
        return String([digits[Int(byte >> 4)], digits[Int(byte & 0xF)]])
    }
}

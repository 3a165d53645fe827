/// Text read from input files (tensor names, zip entry names, pickle strings, JSON keys, file
/// contents), made fit for a one-line error message: control characters and line breaks are
/// escaped (`\n`, `\t`, `\r`, `\xNN`, `\u{NNNN}`), invalid UTF-8 becomes U+FFFD, and long text is
/// cut at `limit` characters with an ellipsis, so a hostile file can neither break a message
/// over several lines, nor rewrite the terminal, nor flood it.
///
/// Escaping is idempotent (escaped text has no characters left to escape), so a message built
/// from quoted parts can be quoted again without change, except for the length cap.
public enum MessageText {
    /// Default cap for names, keys and values.
    public static let defaultLimit = 200
    /// Cap for paths (Linux `PATH_MAX`).
    public static let pathLimit = 4096

    /// `text` escaped and capped at `limit` characters (nil: no cap).
    public static func quoted(_ text: some StringProtocol, limit: Int? = defaultLimit) -> String {
        quoted(String(text), limit: limit)
    }

    /// `quoted` of a `String` (concrete: the generic form's byte scan went through witnesses).
    public static func quoted(_ text: String, limit: Int? = defaultLimit) -> String {
        // Printable ASCII within the cap (nearly every key, file name and value) is shown as it
        // is: no scalar-by-scalar rebuild (an inspect report quotes 100,000 of them).
        var text = text
        let plain = text.withUTF8 { bytes in
            (limit.map { bytes.count <= $0 } ?? true) && bytes.allSatisfy { $0 >= 0x20 && $0 < 0x7F }
        }
        if plain { return text }
        var output = ""
        var length = 0
        for scalar in text.unicodeScalars {
            if let limit, length >= limit {
                output += "…"
                return output
            }
            if let escape = escape(scalar) { output += escape } else { output.unicodeScalars.append(scalar) }
            length += 1
        }
        return output
    }

    /// Bytes that should be UTF-8 text (a zip entry name, a file's contents), quoted like text;
    /// invalid sequences become U+FFFD.
    public static func quoted(bytes: some Collection<UInt8>, limit: Int? = defaultLimit) -> String {
        if let limit {
            // Decode only what can be shown (4 bytes per character at most, plus one more to
            // know whether to add the ellipsis).
            let shown = String(decoding: bytes.prefix(4 * (limit + 1)), as: UTF8.self)
            return quoted(shown, limit: limit)
        }
        return quoted(String(decoding: bytes, as: UTF8.self), limit: nil)
    }

    /// A path for a message: escaped, capped at `pathLimit`.
    public static func path(_ path: some StringProtocol) -> String {
        quoted(path, limit: pathLimit)
    }

    /// Whether `text` holds a character `quoted` would escape: what no message may contain.
    public static func needsEscaping(_ text: some StringProtocol) -> Bool {
        text.unicodeScalars.contains { escape($0) != nil }
    }

    /// The escape for `scalar`, or nil when it is shown as it is.
    private static func escape(_ scalar: Unicode.Scalar) -> String? {
        switch scalar.value {
        case 0x0A: return "\\n"
        case 0x09: return "\\t"
        case 0x0D: return "\\r"
        case 0x00..<0x20, 0x7F:
            return "\\x" + hex(scalar.value, width: 2)
        case 0x80..<0xA0,  // C1 controls (U+0085 is a line break to some terminals)
            0x2028, 0x2029,  // line and paragraph separators
            0x202A...0x202E, 0x2066...0x2069,  // bidirectional overrides and isolates
            0xFEFF:
            return "\\u{" + hex(scalar.value, width: 4) + "}"
        default:
            return nil
        }
    }

    private static func hex(_ value: UInt32, width: Int) -> String {
        let digits = String(value, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }
}

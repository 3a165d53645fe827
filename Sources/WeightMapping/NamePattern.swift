/// A tensor-name pattern with named placeholders (`model.layers.{layer}.mlp.up_proj.weight`).
/// Placeholders stand for non-negative decimal integers.
public struct NamePattern: Sendable, Hashable, CustomStringConvertible {
    public enum Piece: Sendable, Hashable {
        case literal(String)
        case placeholder(String)
    }

    public let text: String
    public let pieces: [Piece]
    /// The bytes of the last piece when it is a literal: most names fail to match on it, checked
    /// before anything else (planning matches 51,000 names against every pattern).
    private let literalSuffix: [UInt8]
    /// The bytes the literal pieces need at least.
    private let literalByteCount: Int

    /// Parses `text`; nil with a reason when a brace is unbalanced or a placeholder is unnamed.
    public init(_ text: String) throws(PatternError) {
        self.text = text
        var pieces: [Piece] = []
        var literal = ""
        var index = text.startIndex
        while index < text.endIndex {
            let character = text[index]
            if character == "{" {
                guard let close = text[index...].firstIndex(of: "}") else { throw PatternError(reason: "unclosed `{`") }
                let name = String(text[text.index(after: index)..<close])
                guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0 == "_" }) else {
                    throw PatternError(reason: "placeholder `{\(name)}` must be a name")
                }
                if !literal.isEmpty { pieces.append(.literal(literal)); literal = "" }
                if case .placeholder = pieces.last { throw PatternError(reason: "two placeholders in a row") }
                pieces.append(.placeholder(name))
                index = text.index(after: close)
            } else if character == "}" {
                throw PatternError(reason: "unbalanced `}`")
            } else {
                literal.append(character)
                index = text.index(after: index)
            }
        }
        if !literal.isEmpty { pieces.append(.literal(literal)) }
        self.pieces = pieces
        if case .literal(let last)? = pieces.last { literalSuffix = Array(last.utf8) } else { literalSuffix = [] }
        literalByteCount = pieces.reduce(0) { if case .literal(let text) = $1 { $0 + text.utf8.count } else { $0 } }
    }

    public struct PatternError: Error, Equatable { public let reason: String }

    public var placeholders: [String] {
        pieces.compactMap { if case .placeholder(let name) = $0 { name } else { nil } }
    }

    /// The name with each placeholder replaced by its value; traps if a value is missing.
    public func render(_ values: [String: Int]) -> String {
        pieces.map { piece in
            switch piece {
            case .literal(let text): return text
            case .placeholder(let name):
                guard let value = values[name] else { preconditionFailure("no value for {\(name)} in \(text)") }
                return String(value)
            }
        }.joined()
    }

    /// The placeholder values if `name` matches the whole pattern. Compared byte by byte (a
    /// tensor name is bytes in a header; Character comparison cost most of planning 51,000 names
    /// against every pattern).
    public func match(_ name: String) -> [String: Int]? {
        var name = name
        return name.withUTF8 { bytes -> [String: Int]? in
            guard bytes.count >= literalByteCount else { return nil }
            let suffixStart = bytes.count - literalSuffix.count
            for (index, byte) in literalSuffix.enumerated() where bytes[suffixStart + index] != byte { return nil }
            var values: [String: Int] = [:]
            var position = 0
            for piece in pieces {
                switch piece {
                case .literal(let text):
                    for byte in text.utf8 {
                        guard position < bytes.count, bytes[position] == byte else { return nil }
                        position += 1
                    }
                case .placeholder(let placeholder):
                    let start = position
                    var value = 0
                    while position < bytes.count, bytes[position] >= 0x30, bytes[position] <= 0x39 {
                        // More digits than any index has is no index.
                        guard position - start < 18 else { return nil }
                        value = value * 10 + Int(bytes[position] - 0x30)
                        position += 1
                    }
                    guard position > start else { return nil }
                    // Leading zeros would make two names map to one index.
                    if position - start > 1 && bytes[start] == 0x30 { return nil }
                    if let earlier = values[placeholder], earlier != value { return nil }
                    values[placeholder] = value
                }
            }
            return position == bytes.count ? values : nil
        }
    }

    public var description: String { text }
}

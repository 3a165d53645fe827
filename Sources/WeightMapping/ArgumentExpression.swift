/// A small integer expression over Megatron argument names, for defaults such as
/// `hidden_size / num_attention_heads`: names, integers, `+ - * /` (integer division), parentheses.
public indirect enum ArgumentExpression: Sendable, Equatable {
    case number(Int)
    case name(String)
    case binary(Character, ArgumentExpression, ArgumentExpression)

    public struct ParseError: Error, Equatable { public let reason: String }

    public static func parse(_ text: String) throws(ParseError) -> ArgumentExpression {
        var tokens: [String] = []
        var current = ""
        for character in text {
            if character.isLetter || character.isNumber || character == "_" || character == "." {
                current.append(character)
            } else {
                if !current.isEmpty { tokens.append(current); current = "" }
                if "+-*/()".contains(character) { tokens.append(String(character)) }
                else if !character.isWhitespace { throw ParseError(reason: "unexpected `\(character)`") }
            }
        }
        if !current.isEmpty { tokens.append(current) }
        var position = 0
        func primary() throws(ParseError) -> ArgumentExpression {
            guard position < tokens.count else { throw ParseError(reason: "unexpected end") }
            let token = tokens[position]
            position += 1
            if token == "(" {
                let inner = try sum()
                guard position < tokens.count, tokens[position] == ")" else { throw ParseError(reason: "missing `)`") }
                position += 1
                return inner
            }
            if let value = Int(token) { return .number(value) }
            guard token.first?.isLetter == true || token.first == "_" else { throw ParseError(reason: "unexpected `\(token)`") }
            return .name(token)
        }
        func product() throws(ParseError) -> ArgumentExpression {
            var left = try primary()
            while position < tokens.count, tokens[position] == "*" || tokens[position] == "/" {
                let op = Character(tokens[position])
                position += 1
                left = .binary(op, left, try primary())
            }
            return left
        }
        func sum() throws(ParseError) -> ArgumentExpression {
            var left = try product()
            while position < tokens.count, tokens[position] == "+" || tokens[position] == "-" {
                let op = Character(tokens[position])
                position += 1
                left = .binary(op, left, try product())
            }
            return left
        }
        let expression = try sum()
        guard position == tokens.count else { throw ParseError(reason: "unexpected `\(tokens[position])`") }
        return expression
    }

    /// The names the expression uses.
    public var names: [String] {
        switch self {
        case .number: []
        case .name(let name): [name]
        case .binary(_, let left, let right): left.names + right.names
        }
    }

    /// Evaluates with `lookup`; nil when a name is unknown or a division is by zero.
    public func evaluate(_ lookup: (String) -> Int?) -> Int? {
        switch self {
        case .number(let value): return value
        case .name(let name): return lookup(name)
        case .binary(let op, let left, let right):
            guard let a = left.evaluate(lookup), let b = right.evaluate(lookup) else { return nil }
            // Config numbers are input: an overflow is no value, never a trap.
            let result: (partialValue: Int, overflow: Bool)
            switch op {
            case "+": result = a.addingReportingOverflow(b)
            case "-": result = a.subtractingReportingOverflow(b)
            case "*": result = a.multipliedReportingOverflow(by: b)
            default:
                guard b != 0 else { return nil }
                result = a.dividedReportingOverflow(by: b)
            }
            return result.overflow ? nil : result.partialValue
        }
    }
}

extension ArgumentExpression: CustomStringConvertible {
    public var description: String {
        switch self {
        case .number(let value): String(value)
        case .name(let name): name
        case .binary(let op, let left, let right): "\(left) \(op) \(right)"
        }
    }
}

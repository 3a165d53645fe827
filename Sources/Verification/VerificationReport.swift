import TensorCore

/// The outcome of `nembridge verify`: every tensor's verdict, a bounded human summary and a full
/// JSON form. Failing if any tensor differs, is missing on one side, or has another shape.
public struct VerificationReport: Sendable {
    public var mode: String
    public var first: String
    public var second: String?
    public var comparisons: [TensorComparison]
    public var notes: [String]

    public init(mode: String, first: String, second: String?, comparisons: [TensorComparison], notes: [String] = []) {
        self.mode = mode
        self.first = first
        self.second = second
        self.comparisons = comparisons
        self.notes = notes
    }

    public var failures: [TensorComparison] { comparisons.filter(\.isFailure) }
    public var passed: Bool { failures.isEmpty }

    /// Totals, then at most `limit` failures, worst first (missing, shape, then most differing).
    public func text(limit: Int = 10) -> String {
        let bytes = comparisons.reduce(Int64(0)) { $0 + $1.bytes }
        // Names and notes carry text from the checkpoints: escaped, so they cannot forge lines.
        var lines = ["verify (\(mode)): \(MessageText.path(first))" + (second.map { " vs \(MessageText.path($0))" } ?? "")]
        let identical = comparisons.filter { $0.status == .identical }.count
        let equalValues = comparisons.filter { $0.status == .equalValues }.count
        lines.append("\(comparisons.count) tensors, \(bytes) bytes: \(identical) identical"
            + (equalValues > 0 ? ", \(equalValues) equal by value in another dtype" : "")
            + ", \(failures.count) failing")
        let ranked = failures.sorted { rank($0) > rank($1) }
        for failure in ranked.prefix(limit) { lines.append("  " + Self.describe(failure)) }
        if ranked.count > limit { lines.append("  … \(ranked.count - limit) more (use --json)") }
        lines.append(contentsOf: notes.map { "note: \(MessageText.quoted($0, limit: nil))" })
        lines.append(passed ? "OK" : "FAILED")
        return lines.joined(separator: "\n")
    }

    private func rank(_ comparison: TensorComparison) -> Double {
        switch comparison.status {
        case .missingInFirst, .missingInSecond: 3e18
        case .shapeMismatch: 2e18
        default: Double(comparison.differing) + (comparison.maxAbsDifference ?? 0)
        }
    }

    public static func describe(_ comparison: TensorComparison) -> String {
        var comparison = comparison
        comparison.name = MessageText.quoted(comparison.name, limit: MessageText.pathLimit)
        switch comparison.status {
        case .identical: return "\(comparison.name): identical"
        case .equalValues: return "\(comparison.name): equal values (\(comparison.dtypes.0?.description ?? "?") vs \(comparison.dtypes.1?.description ?? "?"))"
        case .missingInFirst: return "\(comparison.name): missing in the first"
        case .missingInSecond: return "\(comparison.name): missing in the second"
        case .shapeMismatch:
            return "\(comparison.name): shape \(comparison.shapes.0.map(formatShape) ?? "?") vs \(comparison.shapes.1.map(formatShape) ?? "?")"
        case .mismatch:
            var text = "\(comparison.name): \(comparison.differing) elements differ"
            if let offset = comparison.firstDifference { text += ", first at byte \(offset)" }
            if let maxAbs = comparison.maxAbsDifference { text += ", max |Δ| \(maxAbs)" }
            if let ulp = comparison.maxULPDistance { text += ", max \(ulp) ULP" }
            return text
        }
    }

    public var json: JSONValue {
        func status(_ value: TensorComparison.Status) -> String {
            switch value {
            case .identical: "identical"
            case .equalValues: "equal_values"
            case .mismatch: "mismatch"
            case .missingInFirst: "missing_in_first"
            case .missingInSecond: "missing_in_second"
            case .shapeMismatch: "shape_mismatch"
            }
        }
        return .object([
            ("mode", .string(mode)), ("first", .string(first)), ("second", second.map { .string($0) } ?? .null),
            ("passed", .bool(passed)), ("tensors", .number(JSONNumber(comparisons.count))),
            ("failing", .number(JSONNumber(failures.count))),
            ("notes", .array(notes.map { .string($0) })),
            ("comparisons", .array(comparisons.map { item in
                .object([
                    ("name", .string(item.name)), ("status", .string(status(item.status))),
                    ("dtypes", .array([item.dtypes.0.map { .string($0.safetensorsName) } ?? .null,
                                       item.dtypes.1.map { .string($0.safetensorsName) } ?? .null])),
                    ("shapes", .array([item.shapes.0.map { .array($0.map { .number(JSONNumber($0)) }) } ?? .null,
                                       item.shapes.1.map { .array($0.map { .number(JSONNumber($0)) }) } ?? .null])),
                    ("bytes", .number(JSONNumber(Int(item.bytes)))),
                    ("differing", .number(JSONNumber(Int(item.differing)))),
                    ("max_abs", item.maxAbsDifference.map { .number(JSONNumber(text: "\($0)")) } ?? .null),
                    ("max_ulp", item.maxULPDistance.map { .number(JSONNumber($0)) } ?? .null),
                    ("first_difference", item.firstDifference.map { .number(JSONNumber(Int($0))) } ?? .null),
                ])
            })),
        ])
    }
}

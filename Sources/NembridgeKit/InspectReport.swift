import Foundation
import SafetensorsFormat
import TensorCore

/// What `nembridge inspect` shows of a checkpoint: every tensor with its place on disk, totals
/// per dtype, file metadata and the model config.
public struct InspectReport: Sendable {
    public enum Kind: String, Sendable {
        case safetensorsFile = "safetensors-file"
        case hfFolder = "hf-folder"
    }

    public struct Row: Sendable, Equatable {
        public let name: String
        public let dtype: DType
        public let shape: [Int]
        public let bytes: Int64
        /// File name relative to the inspected folder (or the file's own name).
        public let file: String
        /// Absolute offset of the first data byte in `file`.
        public let offset: Int64
    }

    public let kind: Kind
    public let path: String
    public let rows: [Row]
    /// `__metadata__` of each file, in file order.
    public let metadata: [(file: String, entries: [(key: String, value: String)]?)]
    public let config: HFConfig?
    /// Each quantized weight of an HF folder: its scheme, logical shape and scale tensors.
    public var quantized: [QuantizedRow] = []
    /// Why the folder's quantization could not be read, when it could not (shown, not thrown:
    /// inspect is how a broken folder is looked at).
    public var quantizationProblem: String?

    public struct QuantizedRow: Sendable, Equatable {
        public let name: String
        public let scheme: String
        public let shape: [Int]
        public let scales: [(name: String, dtype: DType, shape: [Int])]

        public static func == (lhs: QuantizedRow, rhs: QuantizedRow) -> Bool {
            lhs.name == rhs.name && lhs.scheme == rhs.scheme && lhs.shape == rhs.shape
                && lhs.scales.map(\.name) == rhs.scales.map(\.name) && lhs.scales.map(\.shape) == rhs.scales.map(\.shape)
        }
    }

    public var totalBytes: Int64 { rows.reduce(0) { $0 + $1.bytes } }

    /// Tensor count and bytes per dtype, largest dtype first.
    public var totals: [(dtype: DType, tensors: Int, bytes: Int64)] {
        var byType: [DType: (Int, Int64)] = [:]
        for row in rows { byType[row.dtype, default: (0, 0)].0 += 1; byType[row.dtype, default: (0, 0)].1 += row.bytes }
        return byType.map { ($0.key, $0.value.0, $0.value.1) }
            .sorted { $0.dtype.safetensorsOrder > $1.dtype.safetensorsOrder }
    }

    /// Reads only headers, the index and `config.json`.
    public static func inspect(path: String) throws -> InspectReport {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw FileIOError(path: path, operation: .open, errno: .noSuchFileOrDirectory)
        }
        if isDirectory.boolValue {
            let folder = try HFCheckpointFolder(directory: path)
            let names = folder.fileNames
            let rows = folder.tensors.map { entry in
                let file = folder.files[entry.file]
                return Row(name: entry.info.name, dtype: entry.info.dtype, shape: entry.info.shape,
                           bytes: entry.info.byteCount, file: names[entry.file],
                           offset: file.fileRange(of: entry.info).offset)
            }
            let metadata = zip(names, folder.files).map { ($0, $1.header.metadata) }
            var report = InspectReport(kind: .hfFolder, path: path, rows: rows, metadata: metadata, config: folder.config)
            do {
                if let quantization = try HFQuantization.of(folder) {
                    report.quantized = try quantization.weights.keys.sorted().map { name in
                        let weight = quantization.weights[name]!
                        let module = String(name.dropLast(".weight".count))
                        let scales = try HFQuantization.scaleSuffixes.compactMap { suffix -> (name: String, dtype: DType, shape: [Int])? in
                            guard folder.contains(module + "." + suffix) else { return nil }
                            let info = try folder.locate(module + "." + suffix).tensor
                            return (info.name, info.dtype, info.shape)
                        }
                        return QuantizedRow(name: name, scheme: weight.scheme.description, shape: weight.logicalShape, scales: scales)
                    }
                }
            } catch {
                report.quantizationProblem = "\(error)"
            }
            return report
        }
        let file = try SafetensorsFile(path: path)
        let name = (path as NSString).lastPathComponent
        let rows = file.tensors.map {
            Row(name: $0.name, dtype: $0.dtype, shape: $0.shape, bytes: $0.byteCount, file: name,
                offset: file.fileRange(of: $0).offset)
        }
        return InspectReport(kind: .safetensorsFile, path: path, rows: rows,
                             metadata: [(name, file.header.metadata)], config: nil)
    }

    /// The machine-readable form (`--json`).
    public var json: JSONValue {
        func number(_ value: Int64) -> JSONValue { .number(JSONNumber(Int(value))) }
        let tensors: [JSONValue] = rows.map { row in
            .object([
                ("name", .string(row.name)),
                ("dtype", .string(row.dtype.safetensorsName)),
                ("shape", .array(row.shape.map { .number(JSONNumber($0)) })),
                ("bytes", number(row.bytes)),
                ("file", .string(row.file)),
                ("offset", number(row.offset)),
            ])
        }
        let totalsJSON: JSONValue = .object(totals.map { total in
            (total.dtype.safetensorsName, .object([
                ("tensors", .number(JSONNumber(total.tensors))), ("bytes", number(total.bytes)),
            ]))
        })
        let metadataJSON: JSONValue = .object(metadata.map { file in
            (file.file, file.entries.map { .object($0.map { ($0.key, .string($0.value)) }) } ?? .null)
        })
        return .object([
            ("kind", .string(kind.rawValue)),
            ("path", .string(path)),
            ("tensors", .array(tensors)),
            ("totals", totalsJSON),
            ("total_bytes", number(totalBytes)),
            ("metadata", metadataJSON),
            ("config", config?.document ?? .null),
            ("quantized", .array(quantized.map { row in
                .object([
                    ("name", .string(row.name)), ("scheme", .string(row.scheme)),
                    ("shape", .array(row.shape.map { .number(JSONNumber($0)) })),
                    ("scales", .array(row.scales.map { scale in
                        .object([("name", .string(scale.name)), ("dtype", .string(scale.dtype.safetensorsName)),
                                 ("shape", .array(scale.shape.map { .number(JSONNumber($0)) }))])
                    })),
                ])
            })),
            ("quantization_problem", quantizationProblem.map { .string($0) } ?? .null),
        ])
    }

    /// The human-readable form: a tensor table (first `limit` rows), totals, metadata, config.
    public func text(limit: Int? = nil) -> String {
        // Names, files, config and metadata strings come from the input: escaped, so a hostile
        // one cannot forge lines of this report.
        let q = { (text: String) in MessageText.quoted(text, limit: MessageText.pathLimit) }
        var lines: [String] = []
        lines.append("\(MessageText.path(path)): \(kind == .hfFolder ? "Hugging Face folder" : "safetensors file"), \(rows.count) tensors, \(formatBytes(totalBytes))")
        if let config {
            var summary: [String] = []
            if !config.architectures.isEmpty { summary.append("architectures \(config.architectures.map(q).joined(separator: ", "))") }
            if let type = config.modelType { summary.append("model_type \(q(type))") }
            if let dtype = config.dtypeName { summary.append("dtype \(q(dtype))") }
            lines.append("config: " + (summary.isEmpty ? "present" : summary.joined(separator: ", ")))
        }
        lines.append("")
        let shown = limit.map { Array(rows.prefix($0)) } ?? rows
        let header = ["name", "dtype", "shape", "bytes", "file", "offset"]
        let cells = shown.map { row in
            [q(row.name), row.dtype.safetensorsName, formatShape(row.shape), String(row.bytes), q(row.file), String(row.offset)]
        }
        var widths = header.map(\.count)
        for cell in cells { for (column, text) in cell.enumerated() { widths[column] = max(widths[column], text.count) } }
        func render(_ cell: [String]) -> String {
            cell.enumerated().map { column, text in
                let pad = String(repeating: " ", count: widths[column] - text.count)
                return column == 3 || column == 5 ? pad + text : text + pad
            }.joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }
        lines.append(render(header))
        lines.append(contentsOf: cells.map(render))
        if shown.count < rows.count { lines.append("… \(rows.count - shown.count) more (use --limit or --json)") }
        lines.append("")
        lines.append("totals:")
        for total in totals {
            lines.append("  \(total.dtype.safetensorsName): \(total.tensors) tensors, \(formatBytes(total.bytes))")
        }
        if !quantized.isEmpty {
            lines.append("quantized: \(quantized.count) weight(s)")
            for row in limit.map({ Array(quantized.prefix($0)) }) ?? quantized {
                let scales = row.scales.map { "\(q($0.name)) \($0.dtype.safetensorsName) \(formatShape($0.shape))" }.joined(separator: ", ")
                lines.append("  \(q(row.name)): \(row.scheme), \(formatShape(row.shape)); scales \(scales)")
            }
            if let limit, quantized.count > limit { lines.append("  … \(quantized.count - limit) more (use --limit or --json)") }
        }
        if let quantizationProblem { lines.append("quantization: not readable: \(q(quantizationProblem))") }
        lines.append("metadata:")
        for file in metadata {
            let entries = file.entries.map { $0.map { "\(q($0.key))=\(q($0.value))" }.joined(separator: ", ") } ?? "none"
            lines.append("  \(q(file.file)): \(entries)")
        }
        return lines.joined(separator: "\n")
    }
}

/// `1234567` → `1.23 MB (1234567 bytes)`: decimal units, as model sizes are quoted.
public func formatBytes(_ bytes: Int64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB", "PB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1000, unit < units.count - 1 { value /= 1000; unit += 1 }
    if unit == 0 { return "\(bytes) B" }
    return String(format: "%.2f", value) + " \(units[unit]) (\(bytes) bytes)"
}

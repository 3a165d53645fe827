import Foundation
import MegatronCheckpoint
import TensorCore
import TorchPickle

/// What `nembridge inspect` shows of a Megatron-Core torch_dist (or plain DCP) checkpoint: the
/// format and iteration, every tensor with its global shape, dtype and chunks (where each chunk's
/// item is, and whether it is compressed), every object item with its value, and the common
/// state with `args` as sorted `field = value` lines. Reads `.metadata`, object items and the
/// common state; never tensor data.
public struct MegatronInspectReport: Sendable {
    public struct Chunk: Sendable, Equatable {
        /// Offsets and sizes (compact: a 409,000-chunk report holds one per chunk).
        public let box: DCPChunk
        public var offsets: [Int] { box.offsets.array }
        public var sizes: [Int] { box.sizes.array }
        /// `relative_path` of the data file.
        public let file: String
        /// The item's byte range in `file` (compressed bytes for zstd items).
        public let offset: Int64
        public let length: Int64
        public let transforms: [String]
        public var compressed: Bool { !transforms.isEmpty }
    }

    public struct Tensor: Sendable, Equatable {
        public let key: String
        public let dtype: DType
        public let shape: [Int]
        /// Bytes of the global tensor.
        public let bytes: Int64
        let source: ChunkSource

        init(key: String, dtype: DType, shape: [Int], bytes: Int64, chunks: [Chunk]) {
            (self.key, self.dtype, self.shape, self.bytes, source) = (key, dtype, shape, bytes, .held(chunks))
        }

        init(key: String, dtype: DType, shape: [Int], bytes: Int64, metadata: MetadataChunks, index: Int) {
            (self.key, self.dtype, self.shape, self.bytes, source) = (key, dtype, shape, bytes, .metadata(metadata, index))
        }

        /// The chunks with their items: held for a legacy checkpoint, made when asked for from the
        /// torch_dist `.metadata` (409,000 chunks held as report rows took 33 MB more).
        public var chunks: [Chunk] {
            switch source {
            case .held(let chunks): chunks
            case .metadata(let metadata, let index): metadata.chunks(of: index)
            }
        }

        public var chunkCount: Int {
            switch source {
            case .held(let chunks): chunks.count
            case .metadata(let metadata, let index): metadata.metadata.tensors[index].metadata.chunks.count
            }
        }

        public static func == (a: Tensor, b: Tensor) -> Bool {
            a.key == b.key && a.dtype == b.dtype && a.shape == b.shape && a.bytes == b.bytes && a.chunks == b.chunks
        }
    }

    enum ChunkSource: Sendable {
        case held([Chunk])
        case metadata(MetadataChunks, Int)
    }

    /// A checked `.metadata` (every chunk has a storage entry: `TorchDistCheckpoint` checks it on
    /// opening), from which a tensor's report rows are made.
    final class MetadataChunks: Sendable {
        let checkpoint: TorchDistCheckpoint
        var metadata: DCPMetadata { checkpoint.metadata }

        init(_ checkpoint: TorchDistCheckpoint) { self.checkpoint = checkpoint }

        func chunks(of index: Int) -> [Chunk] {
            metadata.tensors[index].metadata.chunks.enumerated().map { position, chunk in
                let info = checkpoint.storageInfo(tensor: index, chunk: position)
                return Chunk(box: chunk, file: info.relativePath, offset: info.offset, length: info.length, transforms: info.transformDescriptors ?? [])
            }
        }
    }

    public struct Object: Sendable, Equatable {
        public let key: String
        public let file: String
        public let offset: Int64
        public let length: Int64
        public let transforms: [String]
        /// The unpickled value, rendered Python-like (long values shortened).
        public let value: String
    }

    public let path: String
    /// The directory holding `.metadata`.
    public let directory: String
    public let format: MegatronCheckpointFolder.Format
    public let iteration: MegatronIteration?
    /// `metadata.json`'s members (torch_dist only).
    public let backend: ShardedBackendMetadata?
    /// The class of the `.metadata` root (`…Metadata`, or `MCoreMetadata` before core 0.16).
    public let rootClass: String
    public let version: String?
    public let dataFiles: [String]
    public let tensors: [Tensor]
    public let objects: [Object]
    /// `common.pt` or `common_state/shard_0_1`; nil without a common state.
    public let commonStateSource: String?
    /// Top-level entries of the common state other than `args`, rendered.
    public let commonState: [(key: String, value: String)]
    /// `args` (an `argparse.Namespace`) as `(field, rendered value)`, sorted by field.
    public let args: [(name: String, value: String)]
    /// Tensor-, pipeline- and expert-parallel sizes of a legacy checkpoint's rank files.
    public var legacyLayout: (tensor: Int, pipeline: Int, expert: Int)?

    /// Each tensor's bytes fit `Int64` (the checkpoint checks that), their sum need not: a hostile
    /// `.metadata` of several near-`Int64.max` tensors saturates instead of trapping.
    public var totalBytes: Int64 {
        tensors.reduce(0) { total, tensor in
            let (sum, overflow) = total.addingReportingOverflow(tensor.bytes)
            return overflow ? .max : sum
        }
    }

    /// Opens `path` (save directory, iteration directory or DCP directory) and describes it.
    public static func inspect(path: String, valueLength: Int = 200) throws -> MegatronInspectReport {
        let folder = try MegatronCheckpointFolder(path: path)
        if folder.format == .legacyTorch { return try inspectLegacy(path: path, folder: folder, valueLength: valueLength) }
        let checkpoint = try TorchDistCheckpoint(folder: folder)
        let metadata = checkpoint.metadata
        let rows = MetadataChunks(checkpoint)
        let tensors = try metadata.tensors.enumerated().map { index, entry in
            Tensor(key: entry.fqn, dtype: entry.metadata.dtype, shape: entry.metadata.size,
                   bytes: try checkpoint.boxByteCount(key: entry.fqn, sizes: entry.metadata.size), metadata: rows, index: index)
        }
        // An item's value depends on its bytes only: items of equal bytes (the 50,000 per-expert
        // `_extra_state` objects of an Ultra-sized checkpoint are one value) are read once.
        var rendered: [UInt64: (bytes: [UInt8], value: String)] = [:]
        let objects = try metadata.bytesItems.map { key in
            let info = try checkpoint.storageInfo(key: key, offsets: nil)
            let plain = (info.transformDescriptors ?? []).isEmpty && info.length <= 1 << 16
            let bytes = plain ? try checkpoint.rawBytes(key: key) : nil
            let digest = bytes.map { bytes in bytes.withUnsafeBytes { XXH3Hasher.hash($0) } }
            let value: String
            if let bytes, let digest, let known = rendered[digest], known.bytes == bytes {
                value = known.value
            } else {
                value = PickleRendering.render(try checkpoint.objectValue(key: key), limit: valueLength)
                if let bytes, let digest, rendered[digest] == nil { rendered[digest] = (bytes, value) }
            }
            return Object(key: key, file: info.relativePath, offset: info.offset, length: info.length,
                          transforms: info.transformDescriptors ?? [], value: value)
        }
        var source: String?
        var common: [(String, String)] = []
        var args: [(String, String)] = []
        if let state = try checkpoint.commonState() {
            source = FileManager.default.fileExists(atPath: folder.commonStatePath) ? "common.pt" : TorchDistCheckpoint.commonStateKey
            for (key, value) in state.dictEntries ?? [] {
                let name = key.stringValue ?? PickleRendering.render(key, limit: 80)
                if name == "args", case .dict(let fields)? = value.object?.state {
                    args = fields.map { (($0.key.stringValue ?? PickleRendering.render($0.key, limit: 80)), PickleRendering.render($0.value, limit: valueLength)) }
                        .sorted { $0.0 < $1.0 }
                } else {
                    common.append((name, PickleRendering.render(value, limit: valueLength)))
                }
            }
        }
        let files = Set(metadata.storage.fileNames).sorted()
        return MegatronInspectReport(
            path: path, directory: folder.directory, format: folder.format, iteration: folder.iteration, backend: folder.backend,
            rootClass: metadata.rootClass, version: metadata.version, dataFiles: files, tensors: tensors, objects: objects,
            commonStateSource: source, commonState: common, args: args)
    }

    /// A legacy checkpoint as its files hold it (no mapping needed): each rank file's local
    /// tensors as `mp_rank_…/name` with their storage range, `_extra_state` and other non-tensor
    /// entries as objects, the first file's top-level entries and `args` as the common state.
    static func inspectLegacy(path: String, folder: MegatronCheckpointFolder, valueLength: Int) throws -> MegatronInspectReport {
        let checkpoint = try LegacyTorchCheckpoint(directory: folder.directory, folder: folder)
        var tensors: [Tensor] = []
        var objects: [Object] = []
        var files: [String] = []
        for rank in checkpoint.ranks {
            let directory = ((rank.path as NSString).deletingLastPathComponent as NSString).lastPathComponent
            let file = directory + "/" + LegacyTorchCheckpoint.fileName
            files.append(file)
            for (name, value) in rank.model {
                switch value {
                case .tensor(let tensor):
                    let bytes = tensor.runs.reduce(0) { $0 + $1.source.count }
                    let chunks = tensor.runs.map { run in
                        Chunk(box: DCPChunk(offsets: tensor.shape.map { _ in 0 }, sizes: tensor.shape), file: file, offset: run.source.offset,
                              length: run.source.count, transforms: [])
                    }
                    tensors.append(Tensor(key: "\(directory)/\(name)", dtype: tensor.dtype, shape: tensor.shape, bytes: bytes, chunks: chunks))
                case .none:
                    objects.append(Object(key: "\(directory)/\(name)", file: file, offset: 0, length: 0, transforms: [], value: "None"))
                case .other(let kind):
                    objects.append(Object(key: "\(directory)/\(name)", file: file, offset: 0, length: 0, transforms: [], value: "<\(kind)>"))
                }
            }
        }
        var common: [(String, String)] = []
        var args: [(String, String)] = []
        let dropped = Set(checkpoint.trainingStateKeys)
        for (key, value) in checkpoint.ranks.first?.topLevel ?? [] {
            if key == "args", case .dict(let fields)? = value.object?.state {
                args = fields.map { (($0.key.stringValue ?? PickleRendering.render($0.key, limit: 80)), PickleRendering.render($0.value, limit: valueLength)) }
                    .sorted { $0.0 < $1.0 }
            } else {
                let rendered = PickleRendering.render(value, limit: valueLength)
                common.append((key, dropped.contains(key) ? "(training state: not read, dropped by conversions)" : rendered))
            }
        }
        var report = MegatronInspectReport(
            path: path, directory: folder.directory, format: folder.format, iteration: folder.iteration, backend: nil,
            rootClass: "", version: nil, dataFiles: files, tensors: tensors, objects: objects,
            commonStateSource: files.first, commonState: common, args: args)
        report.legacyLayout = (checkpoint.tensorParallelSize, checkpoint.pipelineParallelSize, checkpoint.expertParallelSize)
        return report
    }

    /// The machine-readable form (`--json`).
    public var json: JSONValue {
        func number(_ value: Int64) -> JSONValue { .number(JSONNumber(Int(value))) }
        func ints(_ values: [Int]) -> JSONValue { .array(values.map { .number(JSONNumber($0)) }) }
        func strings(_ values: [String]) -> JSONValue { .array(values.map { .string($0) }) }
        let tensorsJSON: [JSONValue] = tensors.map { tensor in
            .object([
                ("key", .string(tensor.key)),
                ("dtype", .string(tensor.dtype.torchName ?? tensor.dtype.safetensorsName)),
                ("shape", ints(tensor.shape)),
                ("bytes", number(tensor.bytes)),
                ("chunks", .array(tensor.chunks.map { chunk in
                    .object([
                        ("offsets", ints(chunk.offsets)), ("sizes", ints(chunk.sizes)), ("file", .string(chunk.file)),
                        ("offset", number(chunk.offset)), ("length", number(chunk.length)),
                        ("transforms", strings(chunk.transforms)), ("compressed", .bool(chunk.compressed)),
                    ])
                })),
            ])
        }
        let objectsJSON: [JSONValue] = objects.map { object in
            .object([
                ("key", .string(object.key)), ("file", .string(object.file)), ("offset", number(object.offset)),
                ("length", number(object.length)), ("transforms", strings(object.transforms)),
                ("compressed", .bool(!object.transforms.isEmpty)), ("value", .string(object.value)),
            ])
        }
        var commonJSON: JSONValue = .null
        if let commonStateSource {
            commonJSON = .object([
                ("source", .string(commonStateSource)),
                ("entries", .object(commonState.map { ($0.key, .string($0.value)) })),
                ("args", .object(args.map { ($0.name, .string($0.value)) })),
            ])
        }
        return .object([
            ("kind", .string("megatron")),
            ("path", .string(path)),
            ("directory", .string(directory)),
            ("format", .string(format.rawValue)),
            ("iteration", iteration.map { iteration -> JSONValue in
                if case .number(let value) = iteration { return .number(JSONNumber(value)) }
                return .string(iteration.description)
            } ?? .null),
            ("metadata_json", backend?.document ?? .null),
            ("metadata_class", format == .legacyTorch ? .null : .string(rootClass)),
            ("legacy_layout", legacyLayout.map { layout -> JSONValue in
                .object([("tp", .number(JSONNumber(layout.tensor))), ("pp", .number(JSONNumber(layout.pipeline))),
                         ("ep", .number(JSONNumber(layout.expert)))])
            } ?? .null),
            ("metadata_version", version.map { .string($0) } ?? .null),
            ("data_files", strings(dataFiles)),
            ("tensors", .array(tensorsJSON)),
            ("total_bytes", number(totalBytes)),
            ("objects", .array(objectsJSON)),
            ("common_state", commonJSON),
        ])
    }

    /// The human-readable form: a summary, a tensor table with each tensor's chunks (first
    /// `limit` tensors), objects, the common state and `args`.
    public func text(limit: Int? = nil) -> String { PlanTextOutput.collect { writeText(to: $0, limit: limit) } }

    /// `text`, streamed line by line: a 409,000-chunk checkpoint's report is 38 MB, and its lines
    /// held as strings were twice that.
    public func writeText(to out: PlanTextOutput, limit: Int? = nil) {
        // Keys, file names, metadata and pickle strings come from the input: escaped, so a
        // hostile one cannot forge lines of this report.
        let q = { (text: String) in MessageText.quoted(text, limit: MessageText.pathLimit) }
        let formatName = switch format {
        case .torchDist: "Megatron-Core torch_dist checkpoint"
        case .dcp: "PyTorch DCP checkpoint"
        case .legacyTorch: "Megatron legacy (--ckpt-format torch) checkpoint, \(dataFiles.count) rank files"
        }
        var summary = "\(MessageText.path(path)): \(formatName)"
        if let iteration { summary += ", iteration \(iteration) (\(iteration.directoryName))" }
        summary += ", \(tensors.count) tensors, \(formatBytes(totalBytes)), \(objects.count) objects"
        out.line(summary)
        if let backend {
            let members = backend.document.objectMembers?.map { "\(q($0.key))=\(q(JSONWriter.compact($0.value)))" } ?? []
            out.line("metadata.json: " + members.joined(separator: ", "))
        }
        if format == .legacyTorch {
            let layout = legacyLayout.map { "tp \($0.tensor), pp \($0.pipeline), ep \($0.expert)" } ?? "?"
            out.line("rank files (\(layout)): \(dataFiles.map(q).joined(separator: ", "))")
        } else {
            out.line(".metadata: \(q(rootClass))\(version.map { ", version \(q($0))" } ?? ""), data files \(dataFiles.map(q).joined(separator: ", "))")
        }
        out.line("")
        let shown = limit.map { Array(tensors.prefix($0)) } ?? tensors
        let header = ["key", "dtype", "shape", "bytes", "chunks"]
        let cells = shown.map { tensor in
            [q(tensor.key), tensor.dtype.torchName ?? tensor.dtype.safetensorsName, formatShape(tensor.shape), String(tensor.bytes), String(tensor.chunkCount)]
        }
        var widths = header.map(\.count)
        for cell in cells { for (column, text) in cell.enumerated() { widths[column] = max(widths[column], text.count) } }
        func render(_ cell: [String]) -> String {
            cell.enumerated().map { column, text in
                let pad = String(repeating: " ", count: widths[column] - text.count)
                return column >= 3 ? pad + text : text + pad
            }.joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }
        var quotedFiles: [String: String] = [:]
        out.line(render(header))
        for (tensor, cell) in zip(shown, cells) {
            out.line(render(cell))
            for chunk in tensor.chunks {
                out.write("    at ")
                out.write(shape: chunk.box.offsets)
                out.write(" size ")
                out.write(shape: chunk.box.sizes)
                out.write(": ")
                if let known = quotedFiles[chunk.file] {
                    out.write(known)
                } else {
                    let quoted = q(chunk.file)
                    quotedFiles[chunk.file] = quoted
                    out.write(quoted)
                }
                out.write(" @")
                out.write(chunk.offset)
                out.write(" +")
                out.write(chunk.length)
                if chunk.compressed { out.write(" compressed (\(chunk.transforms.map(q).joined(separator: ", ")))") }
                out.endLine()
            }
        }
        if shown.count < tensors.count { out.line("… \(tensors.count - shown.count) more (use --limit or --json)") }
        out.line("")
        out.line("objects:")
        for object in objects {
            var place = "\(q(object.file)) @\(object.offset) +\(object.length)"
            if !object.transforms.isEmpty { place += " compressed" }
            out.line("  \(q(object.key)) (\(place)): \(q(object.value))")
        }
        if let commonStateSource {
            out.line("")
            out.line("common state (\(q(commonStateSource))):")
            for (key, value) in commonState { out.line("  \(q(key)) = \(q(value))") }
            if !args.isEmpty {
                out.line("args (\(args.count) fields):")
                for (name, value) in args { out.line("  \(q(name)) = \(q(value))") }
            }
        }
    }
}

/// Python-like one-line renderings of pickle value trees, for people: `None`, `True`, `'text'`,
/// `[1, 2]`, `torch.bfloat16`, `AttnBackend(5)`, `tensor(BFloat16Storage, shape [2, 3])`.
/// Nothing is resolved; unknown objects show as `Class(args)` or `Class(field=value, …)`.
struct PickleRendering {
    private var text = ""
    private let limit: Int

    static func render(_ value: PickleValue, limit: Int) -> String {
        var renderer = PickleRendering(limit: limit)
        renderer.write(value)
        let text = renderer.text
        if text.count > limit { return String(text.prefix(max(0, limit - 1))) + "…" }
        return text
    }

    private init(limit: Int) { self.limit = limit }

    private mutating func list(_ items: [PickleValue], _ open: String, _ close: String, trailingComma: Bool = false) {
        text += open
        for (index, item) in items.enumerated() {
            if index > 0 { text += ", " }
            if text.count > limit { text += "…"; break }
            write(item)
        }
        if trailingComma && items.count == 1 { text += "," }
        text += close
    }

    private mutating func entries(_ entries: [(key: PickleValue, value: PickleValue)], separator: String, bareKeys: Bool) {
        for (index, entry) in entries.enumerated() {
            if index > 0 { text += ", " }
            if text.count > limit { text += "…"; break }
            if bareKeys, let name = entry.key.stringValue { text += name } else { write(entry.key) }
            text += separator
            write(entry.value)
        }
    }

    private mutating func write(_ value: PickleValue) {
        if text.count > limit { return }
        switch value {
        case .none: text += "None"
        case .bool(let flag): text += flag ? "True" : "False"
        case .int(let number): text += String(number)
        case .bigInt(let number): text += number.description
        case .float(let number): text += number.isNaN ? "nan" : number.isInfinite ? (number < 0 ? "-inf" : "inf") : "\(number)"
        case .string(let string): text += Self.quoted(string)
        case .bytes(let bytes), .byteArray(let bytes): text += Self.bytesLiteral(bytes)
        case .tuple(let items): list(items, "(", ")", trailingComma: true)
        case .list(let items): list(items, "[", "]")
        case .set(let items), .frozenSet(let items): list(items, "{", "}")
        case .dict(let items):
            text += "{"
            entries(items, separator: ": ", bareKeys: false)
            text += "}"
        case .global(let module, let name): text += "\(module).\(name)"
        case .persistentID(let id):
            if let parts = id.items, parts.count >= 3, let type = parts[1].globalName {
                text += "<storage \(type.name) \(parts[2].stringValue ?? "?")>"
            } else {
                text += "<persistent id>"
            }
        case .object(let object):
            writeObject(object)
        }
    }

    private mutating func writeObject(_ object: PickleObject) {
        let name = object.callable.globalName
        switch (name?.module, name?.name) {
        case ("torch._utils", "_rebuild_tensor_v2"?), ("torch._utils", "_rebuild_tensor_v3"?):
            var storage = "?"
            if case .persistentID(let id)? = object.args.first, let parts = id.items, parts.count >= 2, let type = parts[1].globalName {
                storage = type.name
            }
            if object.args.count >= 7, let dtype = object.args[6].globalName { storage = "torch.\(dtype.name)" }
            let shape = object.args.count > 2 ? (object.args[2].items?.compactMap(\.intValue) ?? []) : []
            text += "tensor(\(storage), shape \(formatShape(shape)))"
        case ("_codecs", "encode"?) where object.args.count == 2 && object.args[1].stringValue == "latin1" && object.args[0].stringValue != nil:
            let string = object.args[0].stringValue ?? ""
            text += Self.bytesLiteral(string.unicodeScalars.map { UInt8(truncatingIfNeeded: $0.value) })
        case ("collections", "OrderedDict"?):
            text += "OrderedDict({"
            entries(object.dictItems, separator: ": ", bareKeys: false)
            text += "})"
        case ("_io", "BytesIO"?) where object.args.isEmpty && object.state?.items?.first != nil:
            // `BytesIO.__getstate__`: (contents, position, __dict__).
            text += "BytesIO("
            write(object.state!.items![0])
            text += ")"
        default:
            text += name?.name ?? "object"
            if case .dict(let fields)? = object.state, object.args.isEmpty {
                text += "("
                entries(fields, separator: "=", bareKeys: true)
                text += ")"
            } else if let state = object.state {
                text += "("
                for argument in object.args {
                    write(argument)
                    text += ", "
                }
                text += "state="
                write(state)
                text += ")"
            } else {
                list(object.args, "(", ")")
            }
        }
    }

    static func quoted(_ string: String) -> String {
        var text = "'"
        for scalar in string.unicodeScalars {
            switch scalar {
            case "'": text += "\\'"
            case "\\": text += "\\\\"
            case "\n": text += "\\n"
            case "\t": text += "\\t"
            case "\r": text += "\\r"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7f {
                    text += "\\x" + (scalar.value < 16 ? "0" : "") + String(scalar.value, radix: 16)
                } else {
                    text.unicodeScalars.append(scalar)
                }
            }
        }
        return text + "'"
    }

    static func bytesLiteral(_ bytes: [UInt8]) -> String {
        var text = "b'"
        for byte in bytes.prefix(64) {
            if byte >= 0x20 && byte < 0x7f && byte != UInt8(ascii: "'") && byte != UInt8(ascii: "\\") {
                text.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                text += "\\x" + (byte < 16 ? "0" : "") + String(byte, radix: 16)
            }
        }
        if bytes.count > 64 { text += "…(\(bytes.count) bytes)" }
        return text + "'"
    }
}

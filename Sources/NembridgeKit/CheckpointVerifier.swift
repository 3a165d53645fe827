import Execution
import Foundation
import MegatronCheckpoint
import SafetensorsFormat
import TensorCore
import Verification
import WeightMapping

/// `nembridge verify`: compares two checkpoints from disk (HF↔HF, Megatron↔Megatron, or HF↔Megatron
/// through the mapping), or one folder against its checksum manifest.
public enum CheckpointVerifier {
    enum Side {
        case hf(HFCheckpointFolder)
        /// Global tensors, and for a legacy checkpoint the mapping that placed its rank files.
        case megatron(any GlobalTensorSource, legacy: LegacyCheckpointSource?)
    }

    /// Opens either side; a legacy checkpoint is placed through the mapping, with the config
    /// recorded beside it or in `configDirectory` (the other side's HF folder).
    static func open(_ path: String, configDirectory: String? = nil, mappingsDirectory: String? = nil) throws -> Side {
        var isDirectory: ObjCBool = false
        let fm = FileManager.default
        let looksMegatron = ["metadata.json", ".metadata", "latest_checkpointed_iteration.txt"].contains {
            fm.fileExists(atPath: (path as NSString).appendingPathComponent($0))
        } || ((try? fm.contentsOfDirectory(atPath: path)) ?? []).contains { $0.hasPrefix("mp_rank_") }
        if fm.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue, looksMegatron {
            let folder = try MegatronCheckpointFolder(path: path)
            guard folder.format == .legacyTorch else { return .megatron(try TorchDistCheckpoint(folder: folder), legacy: nil) }
            let tables = try MappingTable.load(directory: mappingsDirectory)
            let (directory, trainingConfig) = try MegatronExport.configDirectory(given: configDirectory, folder: folder, checkpoint: path,
                                                                                 tables: tables, tokenizer: nil)
            let config = try HFConfig(path: (directory as NSString).appendingPathComponent("config.json"))
            _ = trainingConfig  // read before this returns; the temporary folder goes with it
            let model = try ResolvedModel.resolve(tables: tables, config: config.document, configPath: config.path)
            let legacy = try LegacyCheckpointSource(checkpoint: try LegacyTorchCheckpoint(directory: folder.directory, folder: folder),
                                                    model: model)
            return .megatron(legacy.tensors, legacy: legacy)
        }
        return .hf(try HFCheckpointFolder(directory: path))
    }

    /// Checks a folder against the `nembridge-manifest.json` written with it: the files must
    /// still parse (safetensors headers, DCP metadata and item archives), place every tensor where
    /// the manifest says, and hash to the recorded XXH3.
    public static func verifyManifest(_ path: String, workers: Int = 2) throws -> VerificationReport {
        let manifest = try ChecksumManifest(path: (path as NSString).appendingPathComponent(ChecksumManifest.fileName))
        var problems: [String: String] = [:]
        var extra: [TensorComparison] = []
        // Objects (pickles) that do not decode to their expected shape, by a name of their own.
        var objectProblems: [(name: String, problem: String)] = []
        switch manifest.kind {
        case .hfSafetensors:
            let folder = try HFCheckpointFolder(directory: path)
            let listed = Set(manifest.entries.map(\.name))
            for entry in manifest.entries {
                guard folder.contains(entry.name) else { problems[entry.name] = "missing from the folder"; continue }
                let (file, info) = try folder.locate(entry.name)
                let name = (file.path as NSString).lastPathComponent
                if name != entry.file || file.fileRange(of: info) != entry.range {
                    problems[entry.name] = "the header places it at \(name) \(file.fileRange(of: info)), the manifest at \(entry.file) \(entry.range)"
                } else if let dtype = entry.dtype, dtype != info.dtype {
                    problems[entry.name] = "the header says \(info.dtype), the manifest \(dtype)"
                } else if let shape = entry.shape, shape != info.shape {
                    problems[entry.name] = "the header says shape \(info.shape), the manifest \(shape)"
                }
            }
            for item in folder.tensors where !listed.contains(item.info.name) {
                extra.append(TensorComparison(name: item.info.name, status: .missingInFirst, dtypes: (nil, item.info.dtype),
                                              shapes: (nil, item.info.shape), bytes: item.info.byteCount))
            }
        case .megatronTorchDist:
            let checkpoint = try TorchDistCheckpoint(path: path)
            let listedDTypes = Dictionary(manifest.entries.map { ($0.name, $0.dtype) }, uniquingKeysWith: { first, _ in first })
            var places: [String: (String, ByteRange)] = [:]
            for (key, tensor) in checkpoint.metadata.tensors {
                for chunk in tensor.chunks {
                    let name = "\(key)\(chunk.offsets)"
                    let info = try checkpoint.storageInfo(key: key, offsets: chunk.offsets.array)
                    let file = ((checkpoint.directory as NSString).lastPathComponent as NSString).appendingPathComponent(info.relativePath)
                    do {
                        // Parses the item's archive (or decodes its zstd frame): a damaged container fails here.
                        let data = try checkpoint.chunkData(key: key, chunk: chunk)
                        if let dtype = listedDTypes[name] ?? nil, dtype != tensor.dtype {
                            problems[name] = ".metadata says \(tensor.dtype), the manifest \(dtype)"
                        }
                        if info.transformDescriptors == nil, let range = data.contiguousRange { places[name] = (file, range) }
                        else { places[name + " (zstd)"] = (file, ByteRange(offset: info.offset, count: info.length)) }
                    } catch {
                        problems[info.transformDescriptors == nil ? name : name + " (zstd)"] = "\(error)"
                    }
                }
            }
            // Every object decoded and checked for its shape, not only hashed: a broken pickle
            // fails here even when the manifest was rewritten to match it.
            for key in checkpoint.metadata.bytesItems {
                let info = try checkpoint.storageInfo(key: key, offsets: nil)
                let compressed = info.transformDescriptors != nil
                let file = ((checkpoint.directory as NSString).lastPathComponent as NSString).appendingPathComponent(info.relativePath)
                do {
                    _ = try checkpoint.checkedObjectValue(key: key)
                    if compressed { places[key + " (zstd)"] = (file, ByteRange(offset: info.offset, count: info.length)) }
                } catch {
                    if compressed { problems[key + " (zstd)"] = "\(error)" } else { objectProblems.append((key + " (object)", "\(error)")) }
                }
            }
            if FileManager.default.fileExists(atPath: (checkpoint.directory as NSString).appendingPathComponent("common.pt")) {
                do { _ = try checkpoint.commonState() } catch { objectProblems.append(("common.pt (object)", "\(error)")) }
            }
            for entry in manifest.entries where problems[entry.name] == nil {
                guard let place = places[entry.name] else { problems[entry.name] = "missing from the checkpoint"; continue }
                if place.0 != entry.file || place.1 != entry.range {
                    problems[entry.name] = "the checkpoint places it at \(place.0) \(place.1), the manifest at \(entry.file) \(entry.range)"
                }
            }
        case .megatronTorch:
            // Parses every rank file (zip directory, data.pkl, storages): a damaged file fails here.
            let checkpoint = try LegacyTorchCheckpoint(path: path)
            let iteration = (checkpoint.directory as NSString).lastPathComponent
            var places: [String: (String, ByteRange)] = [:]
            for rank in checkpoint.ranks {
                let directory = ((rank.path as NSString).deletingLastPathComponent as NSString).lastPathComponent
                let file = "\(iteration)/\(directory)/\(LegacyTorchCheckpoint.fileName)"
                for (name, value) in rank.model {
                    guard case .tensor(let tensor) = value else { continue }
                    if tensor.runs.count == 1 { places["\(directory):\(name)"] = (file, tensor.runs[0].source) }
                }
            }
            for entry in manifest.entries {
                guard let place = places[entry.name] else { problems[entry.name] = "missing from the checkpoint"; continue }
                if place.0 != entry.file || place.1 != entry.range {
                    problems[entry.name] = "the checkpoint places it at \(place.0) \(place.1), the manifest at \(entry.file) \(entry.range)"
                }
            }
        }
        let checked = ChecksumManifest(kind: manifest.kind, entries: manifest.entries.filter { problems[$0.name] == nil })
        for mismatch in checked.verify(root: path, workers: workers) { problems[mismatch.name] = mismatch.description }
        // Every other byte of every file: headers, zip records, pickles, configs, tokenizer files.
        var fileProblems: [TensorComparison] = []
        for mismatch in manifest.verifyFiles(root: path) {
            problems[mismatch.name] = mismatch.description
            fileProblems.append(TensorComparison(name: mismatch.name, status: .mismatch, dtypes: (nil, nil), shapes: (nil, nil), bytes: 0))
        }
        for object in objectProblems {
            problems[object.name] = object.problem
            fileProblems.append(TensorComparison(name: object.name, status: .mismatch, dtypes: (nil, nil), shapes: (nil, nil), bytes: 0))
        }
        let comparisons = manifest.entries.map { entry in
            var item = TensorComparison(name: entry.name, status: problems[entry.name] == nil ? .identical : .mismatch,
                                        dtypes: (nil, nil), shapes: (nil, nil), bytes: entry.range.count)
            if let problem = problems[entry.name] {
                item.differing = 1
                if problem.hasPrefix("missing") { item.status = .missingInSecond }
            }
            return item
        } + extra + fileProblems.map { item in
            var item = item
            item.differing = 1
            return item
        }
        return VerificationReport(mode: "manifest \(manifest.kind.rawValue)", first: path, second: nil, comparisons: comparisons,
                                  notes: problems.sorted { $0.key < $1.key }.map { "`\(MessageText.quoted($0.key))`: \($0.value)" })
    }

    public static func verify(_ firstPath: String, _ secondPath: String, mappingsDirectory: String? = nil) throws -> VerificationReport {
        // A legacy checkpoint without a recorded config is placed with the other side's, when that is an HF folder.
        func hfDirectory(_ path: String) -> String? {
            FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent("config.json")) ? path : nil
        }
        let first = try open(firstPath, configDirectory: hfDirectory(secondPath), mappingsDirectory: mappingsDirectory)
        let second = try open(secondPath, configDirectory: hfDirectory(firstPath), mappingsDirectory: mappingsDirectory)
        switch (first, second) {
        case (.hf(let a), .hf(let b)):
            return try compareHF(a, b, firstPath, secondPath)
        case (.megatron(let a, let legacyA), .megatron(let b, let legacyB)):
            return try compareMegatron(a, b, firstPath, secondPath, objectsCompared: legacyA == nil && legacyB == nil)
        case (.hf(let hf), .megatron(let megatron, let legacy)):
            return try compareAcross(hf: hf, megatron: megatron, mapping: legacy?.mapping, hfFirst: true, firstPath, secondPath, mappingsDirectory)
        case (.megatron(let megatron, let legacy), .hf(let hf)):
            return try compareAcross(hf: hf, megatron: megatron, mapping: legacy?.mapping, hfFirst: false, firstPath, secondPath, mappingsDirectory)
        }
    }

    static func stream(_ folder: HFCheckpointFolder, _ name: String) throws -> (ByteStream, SafetensorsTensorInfo) {
        let (file, info) = try folder.locate(name)
        return (ByteStream(file: file.file, range: file.fileRange(of: info)), info)
    }

    /// The stream of HF tensor `name`, dequantized to `dtype` when the folder stores it quantized
    /// (with its logical shape), else its bytes.
    static func valueStream(_ folder: HFCheckpointFolder, _ quantization: HFQuantization?, _ name: String, rows: Range<Int>? = nil,
                            dequantizedTo dtype: DType) throws -> (stream: ByteStream, dtype: DType, shape: [Int]) {
        let (file, info) = try folder.locate(name)
        if let weight = quantization?.weights[name] {
            let target = DTypeCast.castable.contains(dtype) ? dtype : .bfloat16
            return (weight.dequantizedStream(file: file.file, range: file.fileRange(of: info), rows: rows ?? 0..<weight.rows, to: target),
                    target, weight.logicalShape)
        }
        let rowBytes = Int64(ShapeArithmetic.byteCount(Array(info.shape.dropFirst()), info.dtype) ?? 0)
        let range = file.fileRange(of: info)
        let part = rows.map { ByteRange(offset: range.offset + Int64($0.lowerBound) * rowBytes, count: Int64($0.count) * rowBytes) } ?? range
        return (ByteStream(file: file.file, range: part), info.dtype, info.shape)
    }

    static func compareHF(_ a: HFCheckpointFolder, _ b: HFCheckpointFolder, _ first: String, _ second: String) throws -> VerificationReport {
        var comparisons: [TensorComparison] = []
        let namesB = Set(b.tensors.map(\.info.name))
        // A weight quantized on one side only is compared by value: dequantized to the other's
        // dtype, bit for bit; the scales of that side have no counterpart and are not listed.
        let quantizationA = try HFQuantization.of(a), quantizationB = try HFQuantization.of(b)
        var notes: [String] = []
        var byValue = 0, companions = 0
        func oneSided(_ name: String, _ mine: HFQuantization?, otherHas: Bool) -> Bool {
            guard let mine, mine.consumed.contains(name), !otherHas else { return false }
            companions += 1
            return true
        }
        for entry in a.tensors {
            let name = entry.info.name
            if oneSided(name, quantizationA, otherHas: namesB.contains(name)) { continue }
            let quantizedA = quantizationA?.weights[name] != nil, quantizedB = quantizationB?.weights[name] != nil
            if namesB.contains(name), quantizedA != quantizedB {
                let infoA = entry.info, infoB = try b.locate(name).tensor
                let (streamA, dtypeA, shapeA) = try valueStream(a, quantizationA, name, dequantizedTo: infoB.dtype)
                let (streamB, dtypeB, shapeB) = try valueStream(b, quantizationB, name, dequantizedTo: infoA.dtype)
                byValue += 1
                guard shapeA == shapeB else {
                    comparisons.append(TensorComparison(name: name, status: .shapeMismatch, dtypes: (dtypeA, dtypeB), shapes: (shapeA, shapeB),
                                                        bytes: streamA.count))
                    continue
                }
                comparisons.append(try StreamComparator.compare(name: name, shape: shapeA, streamA, dtypeA, streamB, dtypeB))
                continue
            }
            guard namesB.contains(name) else {
                comparisons.append(TensorComparison(name: name, status: .missingInSecond, dtypes: (entry.info.dtype, nil),
                                                    shapes: (entry.info.shape, nil), bytes: entry.info.byteCount))
                continue
            }
            let (streamA, infoA) = try stream(a, name)
            let (streamB, infoB) = try stream(b, name)
            guard infoA.shape == infoB.shape else {
                comparisons.append(TensorComparison(name: name, status: .shapeMismatch, dtypes: (infoA.dtype, infoB.dtype),
                                                    shapes: (infoA.shape, infoB.shape), bytes: infoA.byteCount))
                continue
            }
            comparisons.append(try StreamComparator.compare(name: name, shape: infoA.shape, streamA, infoA.dtype, streamB, infoB.dtype))
        }
        let namesA = Set(a.tensors.map(\.info.name))
        for entry in b.tensors where !namesA.contains(entry.info.name) {
            if oneSided(entry.info.name, quantizationB, otherHas: false) { continue }
            comparisons.append(TensorComparison(name: entry.info.name, status: .missingInFirst, dtypes: (nil, entry.info.dtype),
                                                shapes: (nil, entry.info.shape), bytes: entry.info.byteCount))
        }
        if byValue > 0 {
            notes.append("\(byValue) weight(s) quantized on one side only compared by value (dequantized as import dequantizes, bit for bit); \(companions) scale tensor(s) of theirs not listed")
        }
        return VerificationReport(mode: "hf-hf", first: first, second: second, comparisons: comparisons, notes: notes)
    }

    static func megatronStream(_ checkpoint: any GlobalTensorSource, key: String, offsets: [Int], sizes: [Int]) throws -> ByteStream {
        let pieces = try checkpoint.boxPieces(key: key, offsets: offsets, sizes: sizes).sorted { $0.destinationOffset < $1.destinationOffset }
        return ByteStream(pieces.map { ByteStream.Piece(file: $0.file, range: $0.source) })
    }

    static func compareMegatron(_ a: any GlobalTensorSource, _ b: any GlobalTensorSource, _ first: String, _ second: String,
                                objectsCompared: Bool) throws -> VerificationReport {
        var comparisons: [TensorComparison] = []
        let keysA = Set(a.globalTensors.map(\.fqn))
        // Looked up in the list, not through `tensor(_:)`: only an absent key is "missing".
        let tensorsB = Dictionary(b.globalTensors.map { ($0.fqn, $0.metadata) }, uniquingKeysWith: { first, _ in first })
        for (key, tensor) in a.globalTensors where !MappingPlan.isTrainingState(key) {
            guard let other = tensorsB[key] else {
                comparisons.append(TensorComparison(name: key, status: .missingInSecond, dtypes: (tensor.dtype, nil),
                                                    shapes: (tensor.size, nil), bytes: 0))
                continue
            }
            guard other.size == tensor.size else {
                comparisons.append(TensorComparison(name: key, status: .shapeMismatch, dtypes: (tensor.dtype, other.dtype),
                                                    shapes: (tensor.size, other.size), bytes: 0))
                continue
            }
            let zeros = tensor.size.map { _ in 0 }
            comparisons.append(try StreamComparator.compare(
                name: key, shape: tensor.size, try megatronStream(a, key: key, offsets: zeros, sizes: tensor.size), tensor.dtype,
                try megatronStream(b, key: key, offsets: zeros, sizes: tensor.size), other.dtype))
        }
        for (key, tensor) in b.globalTensors where !keysA.contains(key) && !MappingPlan.isTrainingState(key) {
            comparisons.append(TensorComparison(name: key, status: .missingInFirst, dtypes: (nil, tensor.dtype),
                                                shapes: (nil, tensor.size), bytes: 0))
        }
        var notes: [String] = []
        if objectsCompared, let a = a as? TorchDistCheckpoint, let b = b as? TorchDistCheckpoint {
            let objectsA = Set(a.metadata.bytesItems), objectsB = Set(b.metadata.bytesItems)
            if objectsA != objectsB {
                notes.append("object keys differ: \(objectsA.subtracting(objectsB).count) only in the first, \(objectsB.subtracting(objectsA).count) only in the second")
            }
        } else {
            notes.append("legacy rank files compared as the global tensors they place; `_extra_state` entries are not compared")
        }
        return VerificationReport(mode: "megatron-megatron", first: first, second: second, comparisons: comparisons, notes: notes)
    }

    /// Through the mapping: every HF tensor's rows against the Megatron rows they map to.
    static func compareAcross(
        hf: HFCheckpointFolder, megatron: any GlobalTensorSource, mapping: MappingPlan?, hfFirst: Bool, _ first: String, _ second: String,
        _ mappingsDirectory: String?
    ) throws -> VerificationReport {
        guard let config = hf.config else {
            throw MappingError.missingConfigField(config: (hf.directory as NSString).appendingPathComponent("config.json"),
                                                  field: "config.json", neededFor: "mapping HF to Megatron")
        }
        let model = try ResolvedModel.resolve(tables: try MappingTable.load(directory: mappingsDirectory),
                                              config: config.document, configPath: config.path)
        var keyShapes: [String: [Int]] = [:]
        for (key, tensor) in megatron.globalTensors { keyShapes[key] = tensor.size }
        let plan = try mapping ?? MappingPlan(model: model, direction: .fromMegatron(keyShapes: keyShapes))
        let dialect = HFNameDialect.detect(hf.tensors.map(\.info.name), table: model.table)
        let specs = Dictionary(uniqueKeysWithValues: plan.megatronTensors.map { ($0.name, $0) })
        let expected = Dictionary(uniqueKeysWithValues: plan.hfTensors.map { ($0.name, $0.shape) })
        var comparisons: [TensorComparison] = []
        // A quantized folder is compared by value: each quantized weight dequantized to the
        // Megatron tensor's dtype as import dequantizes it, then bit for bit.
        let quantization = try HFQuantization.of(hf)
        var byTensor: [String: [RowCorrespondence]] = [:]
        for item in plan.correspondences { byTensor[item.hf.tensor, default: []].append(item) }
        for hfTensor in plan.hfTensors {
            let name = dialect.toSource(hfTensor.name)
            guard hf.contains(name) else {
                comparisons.append(TensorComparison(name: name, status: hfFirst ? .missingInFirst : .missingInSecond,
                                                    dtypes: (nil, nil), shapes: (nil, hfTensor.shape), bytes: 0))
                continue
            }
            let info = try hf.locate(name).tensor
            let shape = quantization?.weights[name]?.logicalShape ?? info.shape
            guard shape == expected[hfTensor.name] else {
                comparisons.append(TensorComparison(name: name, status: .shapeMismatch, dtypes: (info.dtype, nil),
                                                    shapes: (shape, expected[hfTensor.name]), bytes: info.byteCount))
                continue
            }
            var combined = TensorComparison(name: name, status: .identical, dtypes: (info.dtype, nil), shapes: (shape, shape),
                                            bytes: info.byteCount)
            for item in byTensor[hfTensor.name] ?? [] {
                let spec = specs[item.megatron.tensor]!
                let megatronDType = try megatron.tensor(spec.key).dtype
                let (offsets, sizes) = spec.box(rows: item.megatron.rows)
                let (hfStream, hfDType, _) = try valueStream(hf, quantization, name, rows: item.hf.rows, dequantizedTo: megatronDType)
                let rowBytes = Int64(ShapeArithmetic.byteCount(Array(shape.dropFirst()), hfDType) ?? 0)
                let megatronStream = try megatronStream(megatron, key: spec.key, offsets: offsets, sizes: sizes)
                let part = hfFirst
                    ? try StreamComparator.compare(name: name, shape: shape, hfStream, hfDType, megatronStream, megatronDType)
                    : try StreamComparator.compare(name: name, shape: shape, megatronStream, megatronDType, hfStream, hfDType)
                combined.dtypes = part.dtypes
                combined.differing += part.differing
                if combined.firstDifference == nil, let offset = part.firstDifference {
                    combined.firstDifference = Int64(item.hf.rows.lowerBound) * rowBytes + offset
                }
                if let value = part.maxAbsDifference { combined.maxAbsDifference = max(combined.maxAbsDifference ?? 0, value) }
                if let value = part.maxULPDistance { combined.maxULPDistance = max(combined.maxULPDistance ?? 0, value) }
                if part.status == .mismatch || part.status == .shapeMismatch { combined.status = part.status }
                else if part.status == .equalValues && combined.status == .identical { combined.status = .equalValues }
            }
            comparisons.append(combined)
        }
        let mapped = Set(plan.hfTensors.map { dialect.toSource($0.name) })
        for entry in hf.tensors where !mapped.contains(entry.info.name) && !(quantization?.consumed.contains(entry.info.name) ?? false)
            && !model.table.ignore.contains(where: { $0.match(dialect.toTable(entry.info.name)) != nil }) {
            comparisons.append(TensorComparison(name: entry.info.name, status: hfFirst ? .missingInSecond : .missingInFirst,
                                                dtypes: (entry.info.dtype, nil), shapes: (entry.info.shape, nil), bytes: entry.info.byteCount))
        }
        var notes: [String] = []
        if !plan.zeroFills.isEmpty { notes.append("\(plan.zeroFills.count) padded vocabulary region(s) on the Megatron side are not compared") }
        if let quantization, !quantization.weights.isEmpty {
            notes.append("\(quantization.weights.count) quantized weight(s) compared by value (dequantized as import dequantizes, bit for bit); their \(quantization.consumed.count) scale tensor(s) have no Megatron counterpart")
        }
        return VerificationReport(mode: hfFirst ? "hf-megatron" : "megatron-hf", first: first, second: second,
                                  comparisons: comparisons, notes: notes)
    }
}

import Foundation
import NembridgeTestSupport
import SafetensorsFormat
import TensorCore
import Testing
@testable import WeightMapping

/// The resolved mapping of every table at small configs, compared with committed golden files in
/// `Golden/<table>.<variant>.txt`: each HF tensor, then each Megatron tensor with its checkpoint
/// key (and place on the key's stacked axes), op, tensor-parallel split, shape, routed-expert
/// flag and the HF rows that fill it, then the `_extra_state` modules. The configs are the tiny
/// fixtures' (and the published-dialect ones'), the shapes their safetensors headers: only
/// headers are read. A second check reads the committed text against the headers, so a golden
/// cannot hold a mapping that drops or repeats a tensor's row.
/// `NEMBRIDGE_UPDATE_GOLDEN=1 swift test --filter MappingPlanGoldenTests` rewrites the files.
struct MappingPlanGoldenTests {
    struct Case: Sendable, CustomStringConvertible {
        let table: String
        let variant: String
        /// The HF folder under `TestCheckpoints/`.
        let folder: String
        var description: String { "\(table).\(variant)" }
        var golden: String { "\(table).\(variant).txt" }
    }

    static let cases: [Case] = [
        Case(table: "llama", variant: "llama3-gqa-untied", folder: "llama3-tiny/hf"),
        Case(table: "llama", variant: "llama32-tied", folder: "llama32-tied-tiny/hf"),
        Case(table: "decilm", variant: "linear-and-no-op-blocks", folder: "decilm-tiny/hf"),
        Case(table: "decilm", variant: "ultra253b-dialect-empty-layer", folder: "dialects/ultra253b-v1/hf"),
        Case(table: "nemotron-h", variant: "hybrid", folder: "nemotron-h-tiny/hf"),
        Case(table: "nemotron-h", variant: "dense-published-8b", folder: "dialects/nemotron-h-8b/hf"),
        Case(table: "nemotron-h", variant: "nemotron3-moe", folder: "nemotron3-moe-tiny/hf"),
        Case(table: "nemotron-h", variant: "nemotron3-super-latent-mtp", folder: "nemotron3-super-tiny/hf"),
    ]

    static let goldenDirectory = (TestCheckpoints.root as NSString).appendingPathComponent("Tests/WeightMappingTests/Golden")
    static let vocabDivisor = 128

    /// The fixture's HF tensors by name, from its safetensors headers.
    static func headerShapes(_ folder: String) throws -> [String: [Int]] {
        let checkpoint = try HFCheckpointFolder(directory: TestCheckpoints.path(folder))
        return Dictionary(uniqueKeysWithValues: checkpoint.tensors.map { ($0.info.name, $0.info.shape) })
    }

    static func plan(_ test: Case) throws -> MappingPlan {
        let configPath = TestCheckpoints.path("\(test.folder)/config.json")
        let config = try JSONParser.parse(TestCheckpoints.readFile(configPath))
        let model = try ResolvedModel.resolve(tables: LlamaMappingTests.tables, config: config, configPath: "\(test.folder)/config.json")
        #expect(model.table.name == test.table)
        let shapes = try headerShapes(test.folder)
        let dialect = HFNameDialect.detect(shapes.keys, table: model.table)
        let tableShapes = Dictionary(uniqueKeysWithValues: shapes.map { (dialect.toTable($0.key), $0.value) })
        return try MappingPlan(model: model, direction: .fromHF(shapes: tableShapes, vocabDivisor: vocabDivisor, tensorParallel: 1))
    }

    static func shapeText(_ shape: [Int]) -> String { "[" + shape.map(String.init).joined(separator: ", ") + "]" }

    /// The readable, stable text of a plan (tensors in plan order, which is model order).
    static func text(_ plan: MappingPlan, _ test: Case) -> String {
        let model = plan.model
        var lines: [String] = []
        lines.append("# \(test.table) table, \(test.variant): TestCheckpoints/\(test.folder), TP 1, vocab divisor \(vocabDivisor)")
        lines.append("model: \(model.table.megatronModel), \(model.table.layerKeys.rawValue) layer keys, spec \(model.spec.rawValue)")
        lines.append("layers: \(model.layerCount)")
        for (layer, values) in model.layerValues.enumerated() where !values.isEmpty {
            lines.append("  layer \(layer): " + values.keys.sorted().map { "\($0)=\(JSONWriter.compact(values[$0]!))" }.joined(separator: " "))
        }
        for (position, values) in model.mtpValues.enumerated() {
            lines.append("  mtp \(position): " + values.keys.sorted().map { "\($0)=\(JSONWriter.compact(values[$0]!))" }.joined(separator: " "))
        }
        lines.append("padded vocab: \(plan.paddedVocabSize.map(String.init) ?? "none")")
        if let output = model.table.outputLayer {
            let tied = !plan.megatronTensors.contains { $0.key == output.weight }
            lines.append("output layer: \(output.weight)" + (tied ? ", tied: absent, legacy files copy \(output.tiedTo) to the last stage" : ""))
        }
        lines.append("")
        lines.append("hf tensors (\(plan.hfTensors.count)):")
        for tensor in plan.hfTensors { lines.append("  \(tensor.name) \(shapeText(tensor.shape))") }
        lines.append("")
        lines.append("megatron tensors (\(plan.megatronTensors.count)):")
        var position = 0, zero = 0
        for tensor in plan.megatronTensors {
            var facts = ["op \(tensor.op.rawValue)"]
            switch tensor.split {
            case .column: facts.append("tp column (axis 0)")
            case .row: facts.append("tp row (axis 1)")
            case .vocab: facts.append("tp vocab (axis 0, padded)")
            case nil: facts.append("tp replicated")
            }
            if tensor.op.tensorParallelFragments > 1 { facts.append("\(tensor.op.tensorParallelFragments) x tp fragments") }
            if tensor.isRoutedExpert { facts.append("routed expert") }
            lines.append("  \(tensor.name) \(shapeText(tensor.shape)): " + facts.joined(separator: ", "))
            let place = tensor.prefix.isEmpty ? "" : " at \(shapeText(tensor.prefix)) of \(shapeText(tensor.prefixSizes))"
            lines.append("    key \(tensor.key) \(shapeText(tensor.globalShape))\(place)")
            while position < plan.correspondences.count, plan.correspondences[position].megatron.tensor == tensor.name {
                let correspondence = plan.correspondences[position]
                lines.append("    \(correspondence.megatron.rows.lowerBound)..<\(correspondence.megatron.rows.upperBound) <- \(correspondence.hf)")
                position += 1
            }
            if zero < plan.zeroFills.count, plan.zeroFills[zero].tensor == tensor.name {
                lines.append("    \(plan.zeroFills[zero].rows.lowerBound)..<\(plan.zeroFills[zero].rows.upperBound) <- zeros")
                zero += 1
            }
        }
        lines.append("")
        lines.append("extra state (\(plan.extraState.count)):")
        for extra in plan.extraState {
            let place = extra.prefix.isEmpty ? "" : " at \(shapeText(extra.prefix)) of \(shapeText(extra.prefixSizes))"
            lines.append("  \(extra.module) -> \(extra.key)._extra_state\(place)")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    @Test("each table's resolved mapping matches its golden file", arguments: cases)
    func golden(_ test: Case) throws {
        let text = Self.text(try Self.plan(test), test)
        let path = (Self.goldenDirectory as NSString).appendingPathComponent(test.golden)
        if let difference = try GoldenFile.difference(text, path: path) { Issue.record("\(difference)") }
    }

    /// Reads the committed golden text (not the plan) against the fixture's headers: every HF
    /// tensor of the folder is listed exactly once with its header shape, and its rows are used
    /// exactly once by the Megatron tensors' row lines (no gap, no overlap).
    @Test("each golden covers every HF tensor of its config exactly once, every row once", arguments: cases)
    func coverage(_ test: Case) throws {
        let path = (Self.goldenDirectory as NSString).appendingPathComponent(test.golden)
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let headers = try Self.headerShapes(test.folder)
        let ignored = try #require(LlamaMappingTests.tables.first { $0.name == test.table }).ignore
        let expected = headers.filter { name, _ in !ignored.contains { $0.match(name) != nil } }

        let start = try #require(lines.firstIndex { $0.hasPrefix("hf tensors (") })
        var listed: [String: Int] = [:]
        for line in lines[(start + 1)...] {
            guard line.hasPrefix("  ") else { break }
            let parts = line.dropFirst(2).split(separator: " ", maxSplits: 1).map(String.init)
            #expect(parts.count == 2 && headers[parts[0]].map(Self.shapeText) == parts[1], "\(test.golden): \(line)")
            listed[parts[0], default: 0] += 1
        }
        #expect(Set(listed.keys) == Set(expected.keys), "\(test.golden): listed HF tensors differ from the headers")
        #expect(listed.values.allSatisfy { $0 == 1 }, "\(test.golden): an HF tensor is listed twice")

        // `    A..<B <- NAME[x:y]`: HF rows x..<y of NAME fill Megatron rows A..<B.
        var used: [String: [Range<Int>]] = [:]
        for line in lines where line.hasPrefix("    ") && line.contains(" <- ") && !line.hasSuffix("<- zeros") {
            let source = line.components(separatedBy: " <- ")[1]
            let open = try #require(source.lastIndex(of: "["))
            let bounds = source[source.index(after: open)..<source.index(before: source.endIndex)].split(separator: ":").compactMap { Int($0) }
            try #require(bounds.count == 2, "\(test.golden): \(line)")
            used[String(source[..<open]), default: []].append(bounds[0]..<bounds[1])
        }
        #expect(Set(used.keys) == Set(expected.keys), "\(test.golden): HF tensors used by rows differ from the headers")
        for (name, ranges) in used {
            var next = 0
            for range in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) {
                #expect(range.lowerBound == next, "\(test.golden): rows of \(name) have a gap or overlap at \(range)")
                next = range.upperBound
            }
            #expect(next == (headers[name]?.first ?? 1), "\(test.golden): \(next) rows of \(name) used")
        }
    }
}

import Foundation
import MegatronCheckpoint
import NembridgeKit
import NembridgeTestSupport
import SafetensorsFormat
import TensorCore
import Testing

/// The dry-run plan of each tiny fixture (every table) at TP=1 and at one split layout, compared
/// with a committed golden file: the `--dry-run` text, then every chunk with every move that
/// fills it. A change of any byte range shows up as a diff; `PlanChecks` checks the same plans
/// against the safetensors headers, so a golden file cannot hold a plan that misses or repeats
/// a byte. `NEMBRIDGE_UPDATE_GOLDEN=1 swift test --filter PlanGoldenTests` rewrites the files.
struct PlanGoldenTests {
    struct Case: Sendable, CustomStringConvertible {
        let fixture: String
        let name: String
        let tp: Int
        let ep: Int
        var etp: Int? = nil
        var description: String { "\(fixture) \(layout)" }
        var layout: String { "tp\(tp)" + (ep > 1 ? "-ep\(ep)" : "") + (etp.map { "-etp\($0)" } ?? "") }
        var golden: String { "\(name).\(layout).plan.txt" }
    }

    /// TP=1, then a split layout; the Super fixture's single Mamba group allows no TP split, so its
    /// experts are split by the expert tensor-parallel size instead.
    static let cases: [Case] = [
        ("llama3-tiny", "llama3", 2, 1, nil), ("llama32-tied-tiny", "llama32-tied", 2, 1, nil),
        ("llama3-sharded-tiny", "llama3-sharded", 2, 1, nil), ("decilm-tiny", "decilm", 2, 1, nil),
        ("nemotron-h-tiny", "nemotron-h", 2, 1, nil), ("nemotron3-moe-tiny", "nemotron3-moe", 2, 2, nil),
        ("nemotron3-super-tiny", "nemotron3-super", 1, 2, 2),
    ].flatMap { fixture, name, tp, ep, etp in
        [Case(fixture: fixture, name: name, tp: 1, ep: 1), Case(fixture: fixture, name: name, tp: tp, ep: ep, etp: etp)]
    }

    static let goldenDirectory = (TestCheckpoints.root as NSString).appendingPathComponent("Tests/NembridgeKitTests/Golden")

    /// The plan text with the machine's paths replaced: `HF` for the source folder, `OUT` the output.
    static func text(_ plan: HFImport) -> String {
        var out = plan.planText()
        let fileNames = plan.plan.sources.map { ($0.path as NSString).lastPathComponent }
        let moves = PlanTextOutput.collect { output in
            output.line("moves:")
            plan.plan.writeMoves(to: output, group: { item in
                let chunk = plan.layout.chunk(item: item)
                return "chunk \(plan.layout.key(item: item)) \(chunk.offsets) \(formatShape(chunk.sizes.array)) -> \(plan.layout.fileNames[plan.layout.file(item: item)])@\(plan.layout.dataOffset(item: item))"
            }, source: { fileNames[$0] })
        }
        out += "\n" + moves + "\n"
        return out.replacingOccurrences(of: plan.source.directory, with: "HF")
    }

    @Test("dry-run plans match their golden files and the headers", arguments: cases)
    func golden(_ test: Case) throws {
        var options = HFImport.Options()
        options.tensorParallel = test.tp
        options.expertParallel = test.ep
        options.expertTensorParallel = test.etp
        let plan = try HFImport(source: TestCheckpoints.path("\(test.fixture)/hf"), output: "OUT", options: options)
        let totals = try PlanChecks.check(plan)
        // Totals from the headers alone, read here independently of the plan.
        let folder = try HFCheckpointFolder(directory: TestCheckpoints.path("\(test.fixture)/hf"))
        #expect(totals.tensors == folder.tensors.filter { $0.info.byteCount > 0 }.count)
        #expect(totals.tensorBytes == folder.tensors.reduce(0) { $0 + $1.info.byteCount })
        let text = Self.text(plan)
        #expect(text.contains("tensor bytes: \(formatBytes(totals.tensorBytes + totals.zeroBytes))"))
        #expect(text.contains("chunks: \(totals.chunks); plan: \(totals.chunks) groups"))

        let path = (Self.goldenDirectory as NSString).appendingPathComponent(test.golden)
        if let difference = try GoldenFile.difference(text, path: path) { Issue.record("\(difference)") }
    }
}

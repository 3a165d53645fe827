import Execution
import Foundation
import MegatronCheckpoint
import NembridgeKit
import NembridgeTestSupport
import SafetensorsFormat
import TensorCore
import Testing

/// The `export --dry-run` plan and one `reshard --dry-run` plan (the split layout -> TP=1) of each
/// tiny fixture, from a torch_dist checkpoint this test imports at the split layout into a scratch
/// folder, compared with committed golden files: the dry-run text, then every group with every
/// move. Paths are replaced (`TMP` for the scratch folder, sources by their path in the
/// checkpoint). The plans are also checked as PlanChecks checks an import's: every output byte
/// comes from exactly one move, no source byte is read twice, and the totals are the fixture's
/// header bytes. `NEMBRIDGE_UPDATE_GOLDEN=1 swift test --filter ExportReshardGoldenTests` rewrites them.
struct ExportReshardGoldenTests {
    static var cases: [PlanGoldenTests.Case] { PlanGoldenTests.cases.filter { $0.tp > 1 || $0.ep > 1 } }

    /// Imports `test`'s fixture at its layout into a fresh scratch folder (`<scratch>/mc`).
    static func imported(_ test: PlanGoldenTests.Case) throws -> String {
        let scratch = try TestCheckpoints.scratchDirectory("export-golden")
        var options = HFImport.Options()
        options.tensorParallel = test.tp
        options.expertParallel = test.ep
        options.expertTensorParallel = test.etp
        try HFImport(source: TestCheckpoints.path("\(test.fixture)/hf"), output: scratch + "/mc", options: options)
            .run(executor: MoveExecutor(workers: 2))
        return scratch
    }

    /// `moves` with each source named by its path inside the checkpoint.
    static func movesText(_ plan: ConversionPlan, checkpoint: String, group: (Int) -> String) -> String {
        let names = plan.sources.map { $0.path.hasPrefix(checkpoint + "/") ? String($0.path.dropFirst(checkpoint.count + 1)) : $0.path }
        return PlanTextOutput.collect { output in
            output.line("moves:")
            plan.writeMoves(to: output, group: group, source: { names[$0] })
        }
    }

    static func compare(_ text: String, golden name: String) throws {
        let path = (PlanGoldenTests.goldenDirectory as NSString).appendingPathComponent(name)
        if let difference = try GoldenFile.difference(text, path: path) { Issue.record("\(difference)") }
    }

    /// No byte of any source file is read by two moves (row by row for strided moves).
    static func checkSourcesReadOnce(_ plan: ConversionPlan, _ what: String) {
        var ranges: [Int32: [(Int64, Int64)]] = [:]
        for move in plan.moves where !move.isZeros {
            if move.isContiguous {
                ranges[move.source, default: []].append((move.offset, move.byteCount))
            } else {
                for row in 0..<Int(move.rows) { ranges[move.source, default: []].append((move.segment(row).offset, move.segmentBytes)) }
            }
        }
        for (source, list) in ranges {
            var end: Int64 = 0
            for (offset, count) in list.sorted(by: { $0.0 < $1.0 }) {
                #expect(offset >= end, "\(what): \(plan.sources[Int(source)].path) bytes at \(offset) are read twice")
                end = max(end, offset + count)
            }
        }
    }

    @Test("export --dry-run plans from a torch_dist at the split layout match their golden files and the headers", arguments: cases)
    func export(_ test: PlanGoldenTests.Case) throws {
        let scratch = try Self.imported(test)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let export = try MegatronExport(checkpoint: scratch + "/mc", output: "OUT")
        let (plan, tensors) = try export.conversionPlan()

        // Every output byte from one move: each group is its tensor's bytes, and a shard's groups
        // follow each other from its first data byte (the header's end) to its last.
        #expect(plan.groupCount == tensors.count)
        var shardEnds: [String: (start: Int64, end: Int64)] = [:]
        for (group, entry) in tensors.enumerated() {
            #expect(plan.byteCount(group: group) == entry.tensor.byteCount, "\(entry.tensor.name)")
            let start = plan.offset(group: group)
            if let earlier = shardEnds[entry.shard] {
                #expect(start == earlier.end, "\(entry.shard): \(entry.tensor.name) at \(start), not \(earlier.end)")
            } else {
                #expect(entry.tensor.dataOffsets.offset == 0, "\(entry.shard) starts with \(entry.tensor.name)")
            }
            shardEnds[entry.shard] = (shardEnds[entry.shard]?.start ?? start, start + entry.tensor.byteCount)
        }
        for shard in export.shards {
            let bytes = shard.tensors.reduce(Int64(0)) { $0 + $1.byteCount }
            #expect(shardEnds[shard.name].map { $0.end - $0.start } == bytes, "\(shard.name)")
        }
        Self.checkSourcesReadOnce(plan, "export of \(test)")
        // Totals from the fixture's headers, read here: the same tensors, shapes, dtypes and bytes.
        let folder = try HFCheckpointFolder(directory: TestCheckpoints.path("\(test.fixture)/hf"))
        let headers = Dictionary(uniqueKeysWithValues: folder.tensors.map { ($0.info.name, $0.info) })
        #expect(Set(tensors.map(\.tensor.name)) == Set(headers.keys))
        for entry in tensors {
            #expect(headers[entry.tensor.name].map { [$0.shape == entry.tensor.shape, $0.dtype == entry.tensor.dtype] } == [true, true],
                    "\(entry.tensor.name)")
        }
        #expect(plan.totalBytes == folder.tensors.reduce(0) { $0 + $1.info.byteCount })
        let zeroMoves = plan.moves.filter(\.isZeros).count
        #expect(zeroMoves == 0, "export writes no padding")

        var text = export.planText()
        text += "\n" + Self.movesText(plan, checkpoint: scratch + "/mc") { group in
            let entry = tensors[group]
            return "\(entry.shard) \(entry.tensor.name) \(entry.tensor.dtype) \(formatShape(entry.tensor.shape)) @\(plan.offset(group: group))"
        } + "\n"
        try Self.compare(text.replacingOccurrences(of: scratch, with: "TMP"), golden: "\(test.name).export-from-\(test.layout).plan.txt")
    }

    @Test("reshard --dry-run plans (the split layout -> TP=1) match their golden files and the headers", arguments: cases)
    func reshard(_ test: PlanGoldenTests.Case) throws {
        let scratch = try Self.imported(test)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let reshard = try MegatronReshard(checkpoint: scratch + "/mc", output: "OUT", options: MegatronReshard.Options())
        let layout = reshard.layout, plan = reshard.plan

        // Every output byte from one move: one group per chunk, each its chunk's bytes at its
        // item's place, and the chunks of each key tile it.
        #expect(plan.groupCount == layout.tensorItemCount)
        for item in layout.tensorItemIndices {
            let chunk = layout.chunk(item: item)
            #expect(plan.byteCount(group: item) == Int64(ShapeArithmetic.byteCount(chunk.sizes.array, layout.dtype(item: item))!),
                    "\(layout.key(item: item))\(chunk.offsets)")
            #expect(plan.output(group: item) == layout.file(item: item) && plan.offset(group: item) == layout.dataOffset(item: item))
        }
        for key in layout.keys {
            #expect(PlanChecks.tiles(key.items.map { layout.chunk(item: $0) }, size: key.size), "chunks of \(key.fqn) do not tile \(key.size)")
        }
        Self.checkSourcesReadOnce(plan, "reshard of \(test)")
        // Totals: the TP=1 import of the same fixture, itself checked against the headers.
        let direct = try HFImport(source: TestCheckpoints.path("\(test.fixture)/hf"), output: "OUT")
        let totals = try PlanChecks.check(direct)
        #expect(plan.totalBytes == totals.tensorBytes + totals.zeroBytes)
        #expect(Set(layout.keys.map(\.fqn)) == Set(direct.layout.keys.map(\.fqn)))

        var text = reshard.planText()
        text += "\n" + Self.movesText(plan, checkpoint: scratch + "/mc") { item in
            let chunk = layout.chunk(item: item)
            return "chunk \(layout.key(item: item)) \(chunk.offsets) \(formatShape(chunk.sizes.array)) -> \(layout.fileNames[layout.file(item: item)])@\(layout.dataOffset(item: item))"
        } + "\n"
        try Self.compare(text.replacingOccurrences(of: scratch, with: "TMP"), golden: "\(test.name).reshard-\(test.layout)-to-tp1.plan.txt")
    }

    /// A dry run opens one source item per layout (`planOnly`); on a checkpoint as a writer makes
    /// it that plan must be the one a run makes by opening every item, move for move.
    @Test("planOnly export and reshard plans equal the plans made by opening every item", arguments: cases)
    func planOnly(_ test: PlanGoldenTests.Case) throws {
        let scratch = try Self.imported(test)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        func moves(_ plan: ConversionPlan) -> String { Self.movesText(plan, checkpoint: scratch + "/mc") { "group \($0)" } }
        func withoutNote(_ text: String) -> String {
            text.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.hasPrefix("source items: ") }.joined(separator: "\n")
        }
        var exportOptions = MegatronExport.Options()
        exportOptions.planOnly = true
        let full = try MegatronExport(checkpoint: scratch + "/mc", output: "OUT")
        let sketched = try MegatronExport(checkpoint: scratch + "/mc", output: "OUT", options: exportOptions)
        #expect(moves(try sketched.conversionPlan().plan) == moves(try full.conversionPlan().plan))
        #expect(withoutNote(sketched.planText()) == full.planText())
        #expect(sketched.planText().contains("source items: one opened per layout"), "chunks alike in layout were opened anyway")

        var reshardOptions = MegatronReshard.Options()
        reshardOptions.planOnly = true
        let fullReshard = try MegatronReshard(checkpoint: scratch + "/mc", output: "OUT", options: MegatronReshard.Options())
        let sketchedReshard = try MegatronReshard(checkpoint: scratch + "/mc", output: "OUT", options: reshardOptions)
        #expect(moves(sketchedReshard.plan) == moves(fullReshard.plan))
        #expect(withoutNote(sketchedReshard.planText()) == fullReshard.planText())
    }
}

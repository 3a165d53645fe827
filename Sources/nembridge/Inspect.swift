import ArgumentParser
import Foundation
import NembridgeKit
import TensorCore

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the tensors of a safetensors file, a Hugging Face folder or a Megatron-Core checkpoint.",
        discussion: """
            Reads headers, indexes, DCP metadata and config only; tensor data is not read. For Megatron \
            checkpoints: keys, global shapes, dtypes, chunks, objects and the common state's args.
            """)

    @Argument(help: "A .safetensors file, a Hugging Face model folder, or a Megatron checkpoint folder.")
    var path: String

    @Flag(help: "Print a JSON report instead of a table.")
    var json = false

    @Option(help: "Show at most this many tensor rows in the table (all by default).")
    var limit: Int?

    func run() throws {
        try reportingFailures {
            let isMegatron = ["metadata.json", ".metadata", "latest_checkpointed_iteration.txt"].contains {
                FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent($0))
            } || ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).contains { $0.hasPrefix("mp_rank_") }
            if isMegatron {
                let report = try MegatronInspectReport.inspect(path: path)
                if json {
                    writeStandardOutput(JSONWriter.pythonIndented(report.json, sortKeys: false))
                } else {
                    let output = PlanTextOutput.standardOutput()
                    report.writeText(to: output, limit: limit)
                    output.flush()
                }
            } else {
                let report = try InspectReport.inspect(path: path)
                writeStandardOutput(json ? JSONWriter.pythonIndented(report.json, sortKeys: false) : report.text(limit: limit))
            }
        }
    }
}

import ArgumentParser
import Execution
import Foundation
import NembridgeKit
import SafetensorsFormat

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a Megatron-Core checkpoint (torch_dist, or legacy torch at any TP/PP/EP) into a Hugging Face folder.",
        discussion: """
            config.json and the tokenizer files come from the source recorded at import \
            (<save dir>/nembridge/hf), or from --hf-config for checkpoints Megatron-Core wrote itself. \
            Tensors keep their dtypes; padded vocabulary rows are removed; the source's shard layout \
            is reused when it was recorded.
            """)

    @Option(name: .customLong("megatron"), help: "Megatron save directory, iteration directory (torch_dist, DCP or legacy mp_rank_*).")
    var source: String

    @Option(name: .customLong("out"), help: "Output Hugging Face folder (must not exist).")
    var output: String

    @Option(help: "Folder with the model's config.json and tokenizer files (default: the one recorded at import).")
    var hfConfig: String?

    @Option(help: "Maximum shard size when no layout was recorded (e.g. 5GB).")
    var maxShardSize: String = "5GB"

    @Option(help: "Read mapping tables from this folder instead of the built-in ones.")
    var mappings: String?

    @OptionGroup var planned: PlannedRunOptions

    func run() throws {
        try reportingFailures {
            var options = MegatronExport.Options()
            options.hfConfigDirectory = hfConfig
            options.maxShardSize = try ByteCountParser.parse(maxShardSize)
            options.mappingsDirectory = mappings
            let plan = try MegatronExport(checkpoint: source, output: output, options: options)
            guard let seconds = try planned.run(phase: "export", planText: { $0.line(plan.planText()) },
                                               totalBytes: plan.totalBytes, run: { try plan.run(executor: $0, progress: $1) })
            else { return }
            writeStandardOutput(
                "exported \(source) -> \(output) (\(plan.mapping.model.table.name), \(plan.mapping.hfTensors.count) tensors in "
                    + "\(plan.shards.count) file(s), \(formatBytes(plan.totalBytes))) in \(formatRate(plan.totalBytes, seconds))")
            if !plan.skippedKeys.isEmpty {
                writeStandardOutput("not exported (training state, not model weights): \(plan.skippedKeys.count) entries (\(plan.skippedKeys.prefix(6).joined(separator: ", "))\(plan.skippedKeys.count > 6 ? ", …" : ""))")
            }
        }
    }
}

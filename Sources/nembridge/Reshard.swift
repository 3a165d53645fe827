import ArgumentParser
import Execution
import Foundation
import NembridgeKit
import SafetensorsFormat
import TensorCore

struct Reshard: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Re-shard a Hugging Face folder (shard sizes) or a Megatron checkpoint (TP/PP/EP layout, format).",
        discussion: """
            --hf SRC: rewrite the safetensors shards (keep the layout, or --max-shard-size). \
            --megatron SRC: rewrite a Megatron checkpoint (torch_dist or legacy torch) for a target \
            --tp/--pp/--ep/--etp layout in --ckpt-format torch_dist (the chunks each rank reads) or \
            torch (one mp_rank_* file per rank). A bare SRC is detected. Tensor bytes are copied, \
            never loaded; the output appears complete or not at all.
            """)

    @Argument(help: "Source folder (Hugging Face or Megatron; detected), instead of --hf / --megatron.")
    var path: String?

    @Option(name: .customLong("hf"), help: "Source Hugging Face folder.")
    var source: String?

    @Option(name: .customLong("megatron"), help: "Source Megatron torch_dist checkpoint.")
    var megatron: String?

    @OptionGroup(title: "Target Megatron layout (with --megatron)") var layout: MegatronLayoutOptions

    @Option(help: "Folder with the model's config.json, when the checkpoint has none recorded (--megatron).")
    var hfConfig: String?

    @Flag(help: "Leave the optimizer state out (the run resumes with --no-load-optim); needed to move a dp-reshardable distributed-optimizer checkpoint to another layout.")
    var dropOptimizer = false

    @Option(name: .customLong("out"), help: "Output folder (must not exist).")
    var output: String

    @Option(help: "Maximum shard size, e.g. 5GB, 500MB, 2GiB (default: keep the source's shards).")
    var maxShardSize: String?

    @OptionGroup var planned: PlannedRunOptions

    func run() throws {
        try reportingFailures {
            var source = self.source, megatron = self.megatron
            if let path {
                guard source == nil, megatron == nil else { throw ValidationError("give SRC, --hf or --megatron, not more than one") }
                if FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent("config.json")) {
                    source = path
                } else {
                    megatron = path
                }
            }
            if let megatron {
                guard source == nil else { throw ValidationError("give --hf or --megatron, not both") }
                var options = MegatronReshard.Options()
                options.tensorParallel = layout.tp
                options.expertParallel = layout.ep
                options.expertTensorParallel = layout.etp
                options.pipelineParallel = layout.pp
                options.firstStageLayers = layout.firstStageLayers
                options.lastStageLayers = layout.lastStageLayers
                options.format = layout.ckptFormat
                options.hfConfigDirectory = hfConfig
                options.dropOptimizer = dropOptimizer
                options.planOnly = planned.dryRun
                options.fileCount = max(1, planned.workers)
                let plan = try MegatronReshard(checkpoint: megatron, output: output, options: options)
                guard let seconds = try planned.run(phase: "reshard", planText: plan.writePlanText,
                                                   totalBytes: plan.totalBytes,
                                                   run: { try plan.run(executor: $0, progress: $1, resume: planned.resume, job: $2) })
                else { return }
                let written = plan.legacyPlan.map { "\($0.files.count) rank files" } ?? "\(plan.layout.tensorItemCount) chunks"
                writeStandardOutput("resharded \(megatron) -> \(output) (\(options.format.rawValue), \(written), "
                    + "\(formatBytes(plan.totalBytes))) in \(formatRate(plan.totalBytes, seconds))")
                if !plan.droppedState.isEmpty {
                    writeStandardOutput("dropped training state (not model weights): \(plan.droppedState.map { MessageText.quoted($0) }.joined(separator: ", "))")
                }
                for note in plan.trainingStateNotes { writeStandardOutput(note) }
                return
            }
            guard let source else { throw ValidationError("give --hf SRC or --megatron SRC") }
            let limit = try maxShardSize.map(ByteCountParser.parse)
            let plan = try HFReshard(source: source, output: output, maxShardSize: limit)
            guard let seconds = try planned.run(phase: "reshard", planText: { $0.line(plan.planText()) },
                                               totalBytes: plan.totalBytes,
                                               run: { try plan.run(executor: $0, progress: $1, resume: planned.resume, job: $2) })
            else { return }
            writeStandardOutput("wrote \(output): \(plan.files.count) file(s), \(formatBytes(plan.totalBytes)) in \(formatRate(plan.totalBytes, seconds))")
        }
    }
}

import ArgumentParser
import Execution
import Foundation
import NembridgeKit
import TensorCore
import WeightMapping

extension MegatronSpec: ExpressibleByArgument {}

struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Convert a Hugging Face folder into a Megatron-Core checkpoint (torch_dist, or the legacy per-rank format).",
        discussion: """
            The architecture comes from config.json and its table in Mappings/. Tensor bytes are moved \
            from the safetensors files straight into the .distcp files (or, with --ckpt-format torch, \
            into one mp_rank_*/model_optim_rng.pt per tensor/pipeline/expert rank); the output appears \
            complete or not at all. The source's config, generation config and tokenizer files are \
            recorded in OUT/nembridge/hf so `nembridge export` needs no extra flag.
            """)

    @Option(name: .customLong("hf"), help: "Source Hugging Face folder.")
    var source: String

    @Option(name: .customLong("out"), help: "Output Megatron checkpoint folder (must not exist).")
    var output: String

    @Option(help: "Pad the vocabulary to a multiple of this (× --tp), as Megatron-LM's --make-vocab-size-divisible-by.")
    var makeVocabSizeDivisibleBy = 128

    @OptionGroup(title: "Target Megatron layout") var layout: MegatronLayoutOptions

    @Option(help: "Write iter_XXXXXXX for this iteration (> 0) instead of release/.")
    var iteration: Int?

    @Option(help: "Megatron-Core layer spec the checkpoint is for: te or local.")
    var spec: MegatronSpec = .transformerEngine

    @Option(help: "Read mapping tables from this folder instead of the built-in ones.")
    var mappings: String?

    @Option(help: "Store items as zstd frames, as torch's ZStandard DCP extension does: zstd or zstd:LEVEL (1-22, default 3). Loading needs the `zstandard` Python package.")
    var compress: String?

    @Option(help: "Cast every floating tensor to bf16, fp16 or fp32 (round to nearest even), except those the table keeps (the fp32 router expert bias); default: unchanged.")
    var dtype: String?

    @OptionGroup var planned: PlannedRunOptions

    func run() throws {
        try reportingFailures {
            var options = HFImport.Options()
            options.vocabDivisor = makeVocabSizeDivisibleBy
            options.tensorParallel = layout.tp
            options.expertParallel = layout.ep
            options.expertTensorParallel = layout.etp
            options.pipelineParallel = layout.pp
            options.firstStageLayers = layout.firstStageLayers
            options.lastStageLayers = layout.lastStageLayers
            options.format = layout.ckptFormat
            if layout.ckptFormat == .torch, compress != nil { throw ValidationError("--compress applies to --ckpt-format torch_dist only") }
            if let iteration, iteration < 1 { throw ValidationError("--iteration must be > 0 (Megatron-LM refuses iteration 0)") }
            options.iteration = iteration
            options.spec = spec
            options.fileCount = max(1, planned.workers)
            options.mappingsDirectory = mappings
            if let compress {
                let parts = compress.split(separator: ":", maxSplits: 1).map(String.init)
                guard parts[0] == "zstd", let level = parts.count == 2 ? Int32(parts[1]) : 3, (1...22).contains(level) else {
                    throw ValidationError("--compress takes zstd or zstd:LEVEL with LEVEL in 1...22, not `\(compress)`")
                }
                options.zstdLevel = level
            }
            if let dtype {
                guard let parsed = DTypeCast.parse(dtype) else { throw ValidationError("--dtype must be bf16, fp16 or fp32, not `\(dtype)`") }
                options.dtype = parsed
            }
            let plan = try HFImport(source: source, output: output, options: options)
            for warning in plan.warnings { FileHandle.standardError.write(Data("nembridge: warning: \(warning)\n".utf8)) }
            let legacy = plan.legacy
            guard let seconds = try planned.run(phase: "import", planText: { output in
                                                   plan.writePlanText(to: output)
                                                   legacy?.writePlanText(to: output)
                                               },
                                               totalBytes: plan.totalBytes, run: { try plan.run(executor: $0, progress: $1, resume: planned.resume, job: $2) })
            else { return }
            if let summary = MegatronExport.castSummary(casts: plan.casts, kept: plan.keptDTypes) { writeStandardOutput(summary) }
            if let summary = plan.dequantizationSummary { writeStandardOutput(summary) }
            if let legacy {
                writeStandardOutput(
                    "imported \(source) -> \(output) (\(plan.mapping.model.table.name), legacy torch format, \(legacy.files.count) rank files, "
                        + "\(formatBytes(plan.totalBytes))) in \(formatRate(plan.totalBytes, seconds))"
                        + "\nMegatron-LM flags to load it: --ckpt-format torch " + plan.megatronLMFlags.joined(separator: " "))
                return
            }
            writeStandardOutput(
                "imported \(source) -> \(output) (\(plan.mapping.model.table.name), \(plan.layout.keys.count) keys, "
                    + "\(plan.layout.tensorItemCount) chunks, \(formatBytes(plan.totalBytes))) in \(formatRate(plan.totalBytes, seconds))"
                    + "\nMegatron-LM flags to load it: " + plan.megatronLMFlags.joined(separator: " "))
        }
    }
}

import ArgumentParser
import Execution
import Foundation
import NembridgeKit
import SafetensorsFormat
import TensorCore

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a Megatron-Core checkpoint (torch_dist, or legacy torch at any TP/PP/EP) into a Hugging Face folder.",
        discussion: """
            config.json and the tokenizer files come from the source recorded at import \
            (<save dir>/nembridge/hf), from --hf-config, or, for checkpoints Megatron-LM trained, are written from the training args in the checkpoint (tokenizer files from --tokenizer). \
            Tensors keep their dtypes; padded vocabulary rows are removed; the source's shard layout \
            is reused when it was recorded.
            """)

    @Option(name: .customLong("megatron"), help: "Megatron save directory, iteration directory (torch_dist, DCP or legacy mp_rank_*).")
    var source: String

    @Option(name: .customLong("out"), help: "Output Hugging Face folder (must not exist).")
    var output: String

    @Option(help: "Folder with the model's config.json and tokenizer files (default: the one recorded at import).")
    var hfConfig: String?

    @Option(help: "Tokenizer folder to carry when config.json is written from the training args (default: args.tokenizer_model when it is one).")
    var tokenizer: String?

    @Option(help: "Cast every floating tensor to bf16, fp16 or fp32 (round to nearest even), except those the table keeps (the fp32 router expert bias); default: unchanged.")
    var dtype: String?

    @Option(help: "Store the linear projection weights quantized: fp8-block[:B] (block FP8, B x B blocks, default 128), fp8 (ModelOpt per-tensor FP8), or like-source (the scheme and scales of the quantized folder the checkpoint was imported from; an untouched round trip is byte-identical). Other tensors follow --dtype.")
    var quantize: String?

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
            options.tokenizerDirectory = tokenizer
            options.planOnly = planned.dryRun
            if let dtype {
                guard let parsed = DTypeCast.parse(dtype) else { throw ValidationError("--dtype must be bf16, fp16 or fp32, not `\(dtype)`") }
                options.dtype = parsed
            }
            if let quantize {
                guard let parsed = ExportQuantization.parse(quantize) else {
                    throw ValidationError("--quantize must be fp8-block, fp8-block:B, fp8 or like-source, not `\(quantize)`")
                }
                options.quantize = parsed
            }
            let plan = try MegatronExport(checkpoint: source, output: output, options: options)
            guard let seconds = try planned.run(phase: "export", planText: { plan.writePlanText($0) },
                                               totalBytes: plan.totalBytes, run: { try plan.run(executor: $0, progress: $1, resume: planned.resume, job: $2) })
            else { return }
            writeStandardOutput(
                "exported \(source) -> \(output) (\(plan.mapping.model.table.name), \(plan.mapping.hfTensors.count) tensors in "
                    + "\(plan.shards.count) file(s), \(formatBytes(plan.totalBytes))) in \(formatRate(plan.totalBytes, seconds))")
            if let summary = plan.castSummary { writeStandardOutput(summary) }
            if let summary = plan.quantizationSummary { writeStandardOutput(summary) }
            if let made = plan.trainingConfig {
                let from = made.argumentSource.hasSuffix(": args") ? "the checkpoint's training args"
                    : "Megatron-Bridge's \(TrainingConfig.runConfigFile) (its model provider)"
                writeStandardOutput("config.json and generation_config.json written from \(from) (\(made.table) table); "
                    + (made.tokenizerSource.map { "tokenizer files from \($0)" }
                       ?? "no tokenizer carried (give --tokenizer DIR; args.tokenizer_model names no Hugging Face tokenizer folder)"))
                if let vocabulary = made.vocabularySource {
                    writeStandardOutput("vocab_size from \(vocabulary) (the training args record only the padded size)")
                }
            }
            if !plan.skippedKeys.isEmpty {
                writeStandardOutput("not exported (training state, not model weights): \(plan.skippedKeys.count) entries (\(plan.skippedKeys.prefix(6).map { MessageText.quoted($0) }.joined(separator: ", "))\(plan.skippedKeys.count > 6 ? ", …" : ""))")
            }
        }
    }
}

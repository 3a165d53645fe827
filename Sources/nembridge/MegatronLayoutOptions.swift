import ArgumentParser
import NembridgeKit

extension MegatronOutputFormat: ExpressibleByArgument {}

/// The target Megatron layout and format, as `import` and `reshard --megatron` take them.
struct MegatronLayoutOptions: ParsableArguments {
    @Option(help: "Target tensor-parallel size: vocabulary padding, and the chunks (or rank files) the TP ranks hold.")
    var tp = 1

    @Option(help: "Target expert-parallel size (routed experts must divide evenly).")
    var ep = 1

    @Option(help: "Target expert tensor-parallel size (default: --tp, as Megatron-Core).")
    var etp: Int?

    @Option(help: "Target pipeline-parallel size: recorded in the args of torch_dist; one file per stage for --ckpt-format torch.")
    var pp = 1

    @Option(name: .customLong("decoder-first-pipeline-num-layers"), help: "Layers of the first pipeline stage, when not the even split (as Megatron-LM's flag).")
    var firstStageLayers: Int?

    @Option(name: .customLong("decoder-last-pipeline-num-layers"), help: "Layers of the last pipeline stage, when not the even split (as Megatron-LM's flag).")
    var lastStageLayers: Int?

    @Option(help: "Output format: torch_dist, or torch (legacy mp_rank_*/model_optim_rng.pt, model weights and args only).")
    var ckptFormat: MegatronOutputFormat = .torchDist
}

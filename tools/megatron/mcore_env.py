"""Shared helpers for the Megatron-Core fixture generator and the load checker (CPU only).

Everything here runs real Megatron-Core (megatron-core 0.19.2 in the pinned venv) on CPU:
torch.distributed with the gloo backend, `parallel_state.initialize_model_parallel`, and a
`GPTModel` built from the *local* (non-Transformer-Engine) layer spec.

A fixture's `model_config.json` (written next to it by make_megatron_fixtures.py) holds every
field needed to rebuild the same model; `build_model(cfg)` turns it into a GPTModel.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import sys
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import torch  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

# TransformerConfig fields every model built on CPU here sets: no fused kernels (they need CUDA
# or Transformer Engine), no sequence parallelism, parameters initialised on the CPU.
CPU_ONLY_CONFIG = dict(
    use_cpu_initialization=True,
    sequence_parallel=False,
    gradient_accumulation_fusion=False,
    bias_activation_fusion=False,
    masked_softmax_fusion=False,
    persist_layer_norm=False,
    apply_rope_fusion=False,
    bias_dropout_fusion=False,
)


def allow_megatron_training_import():
    """megatron.training 0.19.2 imports `typing.override` (Python >= 3.12); on 3.11 the identical
    typing_extensions.override is aliased first. Call before importing megatron.training."""
    import typing

    if not hasattr(typing, "override"):
        import typing_extensions

        typing.override = typing_extensions.override


@contextlib.contextmanager
def cpu_tensor_cuda():
    """`Tensor.cuda()` returns the tensor itself inside this block when there is no CUDA build.
    LanguageModule.setup_embeddings_and_output_layer moves the tied embedding/output weight with
    `.cuda()` before all-reducing it over the embedding group (first and last pipeline stage);
    with gloo the CPU tensor is all-reduced instead."""
    if torch.cuda.is_available():
        yield
        return
    saved = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda = saved


def training_args(argv: list[str], world_size: int, rank: int):
    """A real megatron.training args Namespace for `pretrain_gpt.py ARGV` (parse_args +
    validate_args, as the training script builds it), with padded_vocab_size set the way the
    tokenizer step does. megatron.training 0.19.2 imports `typing.override` (Python >= 3.12); on
    3.11 the identical typing_extensions.override is aliased first. validate_args asks the GPU
    architecture (torch.cuda.get_device_properties) when TP > 1; on CPU it is told "9" (Hopper),
    and CUDA_DEVICE_MAX_CONNECTIONS=1 is set as Megatron's launch scripts do for TP > 1. argv
    and the environment are restored afterwards."""
    allow_megatron_training_import()
    import megatron.training.arguments as margs
    from megatron.training.arguments import parse_args, validate_args
    from megatron.training.vocab_utils import calculate_padded_vocab_size

    saved_argv, saved_env = sys.argv, dict(os.environ)
    sys.argv = ["pretrain_gpt.py"] + argv
    os.environ.update(WORLD_SIZE=str(world_size), RANK=str(rank), CUDA_DEVICE_MAX_CONNECTIONS="1")
    if not torch.cuda.is_available():
        margs.get_device_arch_version = lambda: 9
    try:
        with muted_stdout():
            args = parse_args()
            validate_args(args)
            if args.vocab_size is not None:  # else the tokenizer sets it when it is built
                args.padded_vocab_size = calculate_padded_vocab_size(
                    args.vocab_size, args.make_vocab_size_divisible_by,
                    args.tensor_model_parallel_size, logging_enabled=False)
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    return args


def cpu_shims():
    """The only CPU adaptations Megatron-Core 0.19.2's save/load path needs (no CUDA build):
    `filesystem_async.preload_tensors` calls `torch.cuda.synchronize()` and
    `state_dict_saver.save_state_dict_async_finalize` allocates its failure flag on
    `torch.cuda.current_device()`. With gloo these become a no-op and the CPU device."""
    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda *a, **k: None
        torch.cuda.current_device = lambda: "cpu"


cpu_shims()


def quiet_megatron():
    """Silence Megatron's per-module deprecation/info logging (it is noisy on every build)."""
    for name in ("megatron", "megatron.core", "torch.distributed.checkpoint"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def muted_stdout():
    """Swallow prints (Megatron's argument dump, etc.)."""
    saved = sys.stdout
    sys.stdout = io.StringIO()
    try:
        yield
    finally:
        sys.stdout = saved


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(rank: int, world_size: int, init_method: str, timeout=None):
    """gloo process group (CPU); one call per process. `timeout`: a datetime.timedelta for
    collectives (torch's default when None)."""
    if not torch.distributed.is_initialized():
        kw = {} if timeout is None else {"timeout": timeout}
        torch.distributed.init_process_group(
            backend="gloo", rank=rank, world_size=world_size, init_method=init_method, **kw)


def init_model_parallel(tp: int = 1, ep: int = 1, pp: int = 1):
    """(Re-)initialise Megatron's parallel state for a TP/EP/PP layout on the current world."""
    from megatron.core import parallel_state

    quiet_megatron()
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        expert_model_parallel_size=ep,
    )


def transformer_config(cfg: dict):
    """TransformerConfig from a fixture's model_config.json (local spec, CPU)."""
    from megatron.core import parallel_state
    from megatron.core.transformer.enums import AttnBackend
    from megatron.core.transformer.transformer_config import TransformerConfig

    dtype = DTYPES[cfg["params_dtype"]]
    kw = dict(
        num_layers=cfg["num_layers"],
        hidden_size=cfg["hidden_size"],
        ffn_hidden_size=cfg["ffn_hidden_size"],
        num_attention_heads=cfg["num_attention_heads"],
        num_query_groups=cfg["num_query_groups"],
        kv_channels=cfg["kv_channels"],
        normalization=cfg["normalization"],
        layernorm_epsilon=cfg["layernorm_epsilon"],
        gated_linear_unit=cfg["swiglu"],
        activation_func=torch.nn.functional.silu if cfg["swiglu"] else torch.nn.functional.gelu,
        add_bias_linear=cfg["add_bias_linear"],
        add_qkv_bias=cfg.get("add_qkv_bias", False),
        qk_layernorm=cfg.get("qk_layernorm", False),
        attention_backend=AttnBackend.local,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        init_method_std=0.02,
        tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        expert_model_parallel_size=parallel_state.get_expert_model_parallel_world_size(),
        **CPU_ONLY_CONFIG,  # CPU: no fused kernels, no CUDA init
    )
    if cfg.get("num_moe_experts"):
        kw.update(
            num_moe_experts=cfg["num_moe_experts"],
            moe_router_topk=cfg["moe_router_topk"],
            moe_ffn_hidden_size=cfg["moe_ffn_hidden_size"],
            moe_grouped_gemm=cfg["moe_grouped_gemm"],
            moe_token_dispatcher_type=cfg.get("moe_token_dispatcher_type", "allgather"),
            moe_router_load_balancing_type=cfg.get("moe_router_load_balancing_type", "aux_loss"),
            moe_aux_loss_coeff=cfg.get("moe_aux_loss_coeff", 0.0),
            moe_router_dtype=cfg.get("moe_router_dtype"),
        )
    return TransformerConfig(**kw)


def layer_spec(cfg: dict):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    return get_gpt_layer_local_spec(
        num_experts=cfg.get("num_moe_experts"),
        moe_grouped_gemm=cfg.get("moe_grouped_gemm", False),
        qk_layernorm=cfg.get("qk_layernorm", False),
        normalization=cfg["normalization"],
    )


def build_model(cfg: dict):
    """The GPTModel a fixture was saved from, for the current parallel state."""
    from megatron.core.models.gpt.gpt_model import GPTModel

    quiet_megatron()
    tcfg = transformer_config(cfg)
    model = GPTModel(
        config=tcfg,
        transformer_layer_spec=layer_spec(cfg),
        vocab_size=cfg["padded_vocab_size"],
        max_sequence_length=cfg["max_position_embeddings"],
        pre_process=True,
        post_process=True,
        share_embeddings_and_output_weights=not cfg["untie_embeddings_and_output_weights"],
        position_embedding_type=cfg["position_embedding_type"],
        rotary_percent=cfg.get("rotary_percent", 1.0),
        rotary_base=cfg["rotary_base"],
    )
    return model


def sharded_sd_metadata() -> dict:
    """What megatron.training.checkpointing._build_sharded_state_dict_metadata passes to
    `sharded_state_dict(metadata=...)` without a distributed optimizer."""
    from megatron.core import parallel_state

    return {
        "singleton_local_shards": False,
        "chained_optim_avoid_prefix": True,
        "dp_cp_group": parallel_state.get_data_parallel_group(with_context_parallel=True),
    }


def model_sharded_state_dict(model):
    return model.sharded_state_dict(metadata=sharded_sd_metadata())

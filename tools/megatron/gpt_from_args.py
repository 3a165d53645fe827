"""Build the Megatron-Core GPTModel that a torch_dist checkpoint's own `args` describe, and load
the checkpoint into it strictly (CPU, gloo, local layer spec).

    python tools/megatron/gpt_from_args.py --checkpoint DIR [--world-size 1|2] [--tp N]
        [--tokens 1,2,3] [--dump OUT.pt]
    python tools/megatron/gpt_from_args.py --jobs JOBS.json

This is what Megatron-LM does with `--use-checkpoint-args`: the model is described ONLY by the
`args` Namespace stored in the checkpoint's common state (`common_state/shard_0_1`, read with
`dist_checkpointing.load_common_state_dict`), turned into a `TransformerConfig` the way
`megatron.training.argument_utils.core_transformer_config_from_args` does and into a `GPTModel`
the way `GPTModelBuilder.build_model` does (padded_vocab_size as the vocabulary, rope scaling,
tied/untied output). The mapping args -> TransformerConfig is spelled out in
`transformer_config_from_args` below; args that would need a model feature this builder does not
handle (MoE, MLA, qk-layernorm, ...) are rejected instead of being ignored. Two deliberate
differences from a training run: the local (non-Transformer-Engine) layer spec, since there is no
Transformer Engine on CPU, and the TP and PP sizes come from the current parallel state (as with
`--use-checkpoint-args` without `--use-mp-args-from-checkpoint-args`); with PP > 1 `build_gpt`
builds the current pipeline stage.

Loading (`load_model`): bf16/fp16 params are wrapped in `Float16Module` like megatron.training
does for --bf16/--fp16, then
    dist_checkpointing.load({'model': model.sharded_state_dict()}, DIR,
                            strict=StrictHandling.RAISE_ALL)
(missing or unexpected keys raise) and `model.load_state_dict(..., strict=True)`.

`fp32_copy` builds the same model with fp32 params (bf16=False) and copies the loaded weights
into it (bf16 -> fp32 is exact): a bf16 config would otherwise round attention probabilities
to bf16 inside the local softmax, so an fp32 forward needs an fp32 config, not just `.float()`.

--jobs: a JSON list of {"checkpoint", "world_size", "tp", "tokens", "dump"} objects (and
"training_state_present": true for a training run's save, see load_model; "args_from": another
checkpoint whose args describe the model, for a save without args; "legacy": true for a
`--ckpt-format torch` save, see load_legacy; "save_dist": a folder where Megatron-Core saves the
loaded model with its own sharded_state_dict, so its global tensors can be read). World-size-1
jobs run in this process, all world-size-2 jobs in one pair of spawned gloo ranks (one Megatron
import per process). Each job writes `dump` (rank r of a world-size-2 job: `dump` with
`.rank{r}` before the suffix) holding {"ok", "error", "tp", "tp_rank", "state" (the loaded
model.state_dict() tensors, Megatron names without the Float16Module prefix), "extra_state"
(names of the _extra_state entries), "logits" (fp32 forward on `tokens`, full vocabulary,
[batch, seq, padded_vocab]) or None, "config" (the TransformerConfig fields used)}.
Exit 0 if every job loaded, 1 otherwise (the error is in the dump and printed).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import mcore_env as E  # noqa: E402  (CPU shims, warnings off)
import torch  # noqa: E402
from rank_jobs import dump_path, run_jobs  # noqa: E402

PG_TIMEOUT = datetime.timedelta(seconds=120)

# Args whose non-default value would describe a model this builder does not construct.
# (name, value that means "feature off"); a missing arg counts as off.
UNSUPPORTED_UNLESS = [
    ("num_experts", None),
    ("multi_latent_attention", False),
    ("qk_layernorm", False),
    ("squared_relu", False),
    ("quick_geglu", False),
    ("mtp_num_layers", None),
    ("hybrid_layer_pattern", None),
    ("heterogeneous_layers_config_path", None),
    ("rotary_seq_len_interpolation_factor", None),
]


def resolve_ckpt_dir(d) -> Path:
    """An iter_XXXXXXX/ (or release/) folder, or the save root holding
    latest_checkpointed_iteration.txt."""
    d = Path(d).resolve()
    if (d / ".metadata").exists() or (d / "metadata.json").exists():
        return d
    it = (d / "latest_checkpointed_iteration.txt").read_text().strip()
    return d / ("release" if it == "release" else f"iter_{int(it):07d}")


def read_common_state(ckpt_dir) -> dict:
    """The checkpoint's common state dict ({'args': Namespace, 'iteration', ...}) exactly as
    megatron.training reads it."""
    from megatron.core import dist_checkpointing

    E.quiet_megatron()
    return dist_checkpointing.load_common_state_dict(str(resolve_ckpt_dir(ckpt_dir)))


def read_args(ckpt_dir) -> argparse.Namespace:
    state = read_common_state(ckpt_dir)
    if "args" not in state:
        raise ValueError(f"{ckpt_dir}: common state has no 'args' (keys: {sorted(state)})")
    return state["args"]


def _dtype(args, override=None) -> torch.dtype:
    if override is not None:
        return override
    if getattr(args, "bf16", False):
        return torch.bfloat16
    if getattr(args, "fp16", False):
        return torch.float16
    return getattr(args, "params_dtype", torch.float32)


def transformer_config_from_args(args, tp: int, dtype: torch.dtype | None = None, pp: int = 1):
    """args -> TransformerConfig, as core_transformer_config_from_args (only the fields a dense
    Llama-like GPT needs), plus CPU settings (no fusions, local attention, CPU init). `tp`/`pp`:
    the parallel sizes of the current layout (not the ones recorded in args)."""
    from megatron.core.transformer.enums import AttnBackend
    from megatron.core.transformer.transformer_config import TransformerConfig

    for name, off in UNSUPPORTED_UNLESS:
        if getattr(args, name, off) != off:
            raise ValueError(f"checkpoint args: {name}={getattr(args, name)!r} is not supported "
                             f"by gpt_from_args (dense GPT only)")
    if args.position_embedding_type not in ("rope", "learned_absolute", "none"):
        raise ValueError(f"position_embedding_type={args.position_embedding_type!r} unsupported")
    params_dtype = _dtype(args, dtype)
    swiglu = bool(getattr(args, "swiglu", False))
    kw = dict(
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        ffn_hidden_size=args.ffn_hidden_size,
        num_attention_heads=args.num_attention_heads,
        # core_transformer_config_from_args: num_query_groups only with --group-query-attention
        num_query_groups=args.num_query_groups if getattr(args, "group_query_attention", False)
        else None,
        kv_channels=args.kv_channels,
        normalization=args.normalization,
        layernorm_epsilon=args.layernorm_epsilon,
        layernorm_zero_centered_gamma=getattr(args, "apply_layernorm_1p", False),
        gated_linear_unit=swiglu,
        activation_func=torch.nn.functional.silu if swiglu else torch.nn.functional.gelu,
        add_bias_linear=getattr(args, "add_bias_linear", True),
        add_qkv_bias=getattr(args, "add_qkv_bias", False),
        rotary_interleaved=getattr(args, "rotary_interleaved", False),
        hidden_dropout=getattr(args, "hidden_dropout", 0.1),
        attention_dropout=getattr(args, "attention_dropout", 0.1),
        init_method_std=getattr(args, "init_method_std", 0.02),
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        # CPU: local attention, no fused kernels, no TE, no CUDA init
        attention_backend=AttnBackend.local,
        **E.CPU_ONLY_CONFIG,  # CPU: no fused kernels, no CUDA init
    )
    return TransformerConfig(**kw)


def gpt_model_kwargs(args) -> dict:
    """GPTModel arguments beyond the TransformerConfig, as GPTModelBuilder.build_model takes them
    from gpt_config_from_args (padded_vocab_size set -> no further padding)."""
    return dict(
        vocab_size=args.padded_vocab_size,
        max_sequence_length=args.max_position_embeddings,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type=args.position_embedding_type,
        rotary_percent=getattr(args, "rotary_percent", 1.0),
        rotary_base=args.rotary_base,
        rope_scaling=bool(getattr(args, "use_rope_scaling", False)),
        rope_scaling_factor=getattr(args, "rope_scaling_factor", 8.0),
    )


def build_gpt(args, dtype: torch.dtype | None = None, parallel_output: bool = True,
              pre_process: bool | None = None, post_process: bool | None = None):
    """The bare GPTModel for the current parallel state (call E.init_model_parallel first): this
    pipeline stage's part, like get_model (pre_process = first stage, post_process = last stage,
    unless given); with PP=1 the whole model."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.gpt.gpt_model import GPTModel

    E.quiet_megatron()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage()
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage()
    config = transformer_config_from_args(args, tp, dtype, pp)
    spec = get_gpt_layer_local_spec(normalization=args.normalization)
    # PP > 1: tied embedding/output copies are all-reduced at construction (E.cpu_tensor_cuda)
    with E.cpu_tensor_cuda() if pp > 1 else contextlib.nullcontext():
        return GPTModel(config=config, transformer_layer_spec=spec, pre_process=pre_process,
                        post_process=post_process, parallel_output=parallel_output,
                        **gpt_model_kwargs(args))


def wrap(model):
    """Float16Module for bf16/fp16 params, like megatron.training.get_model."""
    from megatron.core.transformer.module import Float16Module

    if model.config.bf16 or model.config.fp16:
        return Float16Module(model.config, model)
    return model


def unwrap(model):
    return getattr(model, "module", model)


def load_model(ckpt_dir, args=None, training_state_present: bool = False):
    """(model, loaded_state) with the checkpoint loaded strictly into the args' model.
    `training_state_present`: the checkpoint also holds optimizer and RNG state (a training
    run's save), which a model-only load leaves unread: every model key must still be there
    (RAISE_UNEXPECTED) and load_state_dict stays strict."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    ckpt = resolve_ckpt_dir(ckpt_dir)
    args = args if args is not None else read_args(ckpt)
    torch.manual_seed(0)
    model = wrap(build_gpt(args))
    with torch.no_grad():  # a region the checkpoint does not fill must not keep init values
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.fill_(float("nan"))
    sharded = {"model": E.model_sharded_state_dict(model)}
    strict = StrictHandling.RAISE_UNEXPECTED if training_state_present else StrictHandling.RAISE_ALL
    loaded = dist_checkpointing.load(sharded, str(ckpt), strict=strict)
    model.load_state_dict(loaded["model"], strict=True)
    return model, loaded


def load_legacy(save_dir):
    """(model, args) of this TP rank's legacy rank file (`--ckpt-format torch`), loaded as
    load_checkpoint does for that format: torch.load of mp_rank_XX/model_optim_rng.pt, the model
    built from the file's own args, `load_state_dict(state_dict['model'], strict=True)`."""
    from megatron.core import parallel_state

    d = Path(save_dir)
    it = (d / "latest_checkpointed_iteration.txt").read_text().strip()
    d = d / ("release" if it == "release" else f"iter_{int(it):07d}")
    rank = parallel_state.get_tensor_model_parallel_rank()
    state = torch.load(d / f"mp_rank_{rank:02d}" / "model_optim_rng.pt", map_location="cpu",
                       weights_only=False)
    args = state["args"]
    torch.manual_seed(0)
    model = wrap(build_gpt(args))
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.fill_(float("nan"))
    unwrap(model).load_state_dict(state["model"], strict=True)
    return model, args


def fp32_copy(model, args, parallel_output: bool = False):
    """The same model with fp32 params and config, weights copied exactly from `model`."""
    m32 = build_gpt(args, dtype=torch.float32, parallel_output=parallel_output)
    sd = {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
          for k, v in unwrap(model).state_dict().items()}
    m32.load_state_dict(sd, strict=True)
    return m32.eval()


@torch.no_grad()
def forward_logits(model32, tokens) -> torch.Tensor:
    """[batch, seq, vocab] logits of a causal forward (position ids 0..seq-1). The causal mask
    is passed explicitly (Megatron convention: True = masked out): the default one that the
    local softmax builds when the mask is None is allocated on "cuda"."""
    ids = torch.as_tensor(tokens, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids[None]
    s = ids.shape[1]
    pos = torch.arange(s, dtype=torch.long)[None].expand_as(ids)
    mask = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)[None, None]
    # Megatron's inference RNG tracker (no CUDA RNG states; dropout is off in eval anyway)
    from megatron.core.tensor_parallel.random import initialize_rng_tracker

    initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    return model32(input_ids=ids, position_ids=pos, attention_mask=mask).float()


# ------------------------------------------------------------------------------------------------
# jobs

def config_summary(cfg) -> dict:
    keys = ["num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
            "num_query_groups", "kv_channels", "normalization", "layernorm_epsilon",
            "gated_linear_unit", "add_bias_linear", "params_dtype", "tensor_model_parallel_size"]
    return {k: str(getattr(cfg, k)) for k in keys}


def run_job(job: dict) -> dict:
    from megatron.core import parallel_state

    out = {"ok": False, "error": None, "tp": job["tp"], "tp_rank": None, "state": {},
           "extra_state": [], "logits": None, "config": {}}
    try:
        E.init_model_parallel(job["tp"], 1)
        out["tp_rank"] = parallel_state.get_tensor_model_parallel_rank()
        # "args_from": a checkpoint saved with no args (as Megatron-Bridge saves) is described by
        # the args of a run with the same flags
        if job.get("legacy"):
            model, args = load_legacy(job["checkpoint"])
        else:
            args = read_args(job.get("args_from") or job["checkpoint"])
            model, _ = load_model(job["checkpoint"], args, job.get("training_state_present", False))
        if job.get("save_dist"):
            # the loaded model's own sharded_state_dict saved by Megatron-Core: its global tensors
            from megatron.core import dist_checkpointing

            Path(job["save_dist"]).mkdir(parents=True, exist_ok=True)
            dist_checkpointing.save({"model": E.model_sharded_state_dict(model)}, job["save_dist"])
        out["config"] = config_summary(unwrap(model).config)
        out["config"]["rope"] = gpt_model_kwargs(args)
        for k, v in unwrap(model).state_dict().items():
            if isinstance(v, torch.Tensor):
                out["state"][k] = v.detach().clone()
            else:
                out["extra_state"].append(k)
        if job.get("tokens") is not None:
            out["logits"] = forward_logits(fp32_copy(model, args), job["tokens"])
        out["ok"] = True
    except BaseException as e:  # DCP's CheckpointException is a BaseException
        if isinstance(e, KeyboardInterrupt):
            raise
        out["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-6000:]}"
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint")
    ap.add_argument("--world-size", type=int, default=1, choices=(1, 2))
    ap.add_argument("--tp", type=int)
    ap.add_argument("--tokens", help="comma-separated token ids for an fp32 forward")
    ap.add_argument("--dump", help="write the job result (torch.save) here")
    ap.add_argument("--jobs", help="JSON list of jobs (see the module doc)")
    a = ap.parse_args(argv)
    if a.jobs:
        jobs = json.loads(Path(a.jobs).read_text())
    elif a.checkpoint:
        dump = a.dump or os.path.join(os.getcwd(), "gpt_from_args.pt")
        tokens = [int(t) for t in a.tokens.split(",")] if a.tokens else None
        jobs = [{"checkpoint": a.checkpoint, "world_size": a.world_size,
                 "tp": a.tp or a.world_size, "tokens": tokens, "dump": dump}]
    else:
        ap.error("give --checkpoint or --jobs")
    for j in jobs:
        j.setdefault("world_size", 1)
        j.setdefault("tp", j["world_size"])
    rc = run_jobs(jobs, run_job, timeout=PG_TIMEOUT)
    for j in jobs:
        for r in ((None,) if j["world_size"] == 1 else (0, 1)):
            res = torch.load(dump_path(j, r), weights_only=False)
            where = f"ws{j['world_size']}" + ("" if r is None else f" rank {r}")
            msg = (f"{len(res['state'])} tensors, {len(res['extra_state'])} _extra_state loaded "
                   f"strictly" if res["ok"] else res["error"].splitlines()[0])
            print(f"{'OK  ' if res['ok'] else 'FAIL'} {j['checkpoint']} [{where}]: {msg}")
    return rc


if __name__ == "__main__":
    sys.exit(main())

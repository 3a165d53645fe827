"""Ground truth for the Nemotron 3 Super extras: the torch_dist keys of a REAL Megatron-Core
0.19.2 `HybridModel` with LatentMoE (`moe_latent_size`) and an MTP block, built on CPU to match
TestCheckpoints/nemotron3-super-tiny/hf.

    PYTHONHASHSEED=0 OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES= \
        .venv/bin/python tools/hybrid/super_keys.py [--out TestCheckpoints/hybrid-keys] [--no-forward]

Model = tools/hybrid/hybrid_keys.py's (config from config.json as Megatron-Bridge derives it, local
hybrid_stack_spec with the pre-norms re-keyed to the TE names, SequentialMLP experts,
Float16Module bf16), plus
  - `moe_latent_size` from config.json. Megatron-Core builds `fc1_latent_proj`/`fc2_latent_proj`
    only with Transformer Engine (`TELinear(parallel_mode="duplicated")`, asserts HAVE_TE). On CPU
    they are `CpuDuplicatedLinear` below: same constructor, a replicated `weight` [out, in], a
    (None) `_extra_state` and TELinear's own `sharded_state_dict` (make_sharded_tensors_for_
    checkpoint with no TP axis), so the checkpoint keys are TELinear's.
  - MTP: `mtp_num_layers = num_nextn_predict_layers`, `mtp_use_repeated_layer=True` (what
    Megatron-Bridge sets), unified pattern `<main>/<mtp>` (e.g. `MEM*E/*E`), and an
    `mtp_block_spec` = Megatron's `_hybrid_mtp_block_spec` with local modules: enorm/hnorm/
    final layer norm = torch RMSNorm (TENorm there), eh_proj = ColumnParallelLinear
    (TEColumnParallelLinear there); the inner layers come from the hybrid stack spec.

Writes <out>/nemotron3-super-tiny-ws1.json in hybrid_keys.py's ws1 format (HF tensors, every
ShardedTensor / ShardedObject key, the HF source pieces of each key) and checks that the
HF <-> Megatron mapping (`mapping` below, which extends hybrid_keys.mapping with the latent
projections and the MTP block) covers every HF tensor and every Megatron key with matching
shapes. Unless --no-forward, the latent-MoE numerics are checked too: HF weights copied through
the mapping into an fp32 Megatron model WITHOUT the MTP block (transformers has no MTP module;
MTP does not change the main logits) and its logits compared with transformers'.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import hybrid_keys as HK  # noqa: E402  (stand-in + tools/megatron on sys.path, CPU shims)

E = HK.E
import torch  # noqa: E402

FIXTURE = "nemotron3-super-tiny"
BASE_MAPPING = HK.mapping  # hybrid_keys' rules (main-model layers without latent projections)


# ------------------------------------------------------------------------------------------------
# CPU stand-in for TELinear(parallel_mode="duplicated") (MoE latent projections)

def cpu_duplicated_linear_cls():
    from megatron.core.transformer.module import MegatronModule
    from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

    class CpuDuplicatedLinear(MegatronModule):
        """y = x W^T (+ b), W replicated on every rank; returns (y, None) like TELinear with
        skip_bias_add=False."""

        def __init__(self, input_size, output_size, *, parallel_mode, config, init_method, bias,
                     skip_bias_add, skip_weight_param_allocation=False, is_expert=False,
                     name=None, tp_comm_buffer_name=None, tp_group=None):
            super().__init__(config=config)
            assert parallel_mode == "duplicated" and not skip_bias_add and not is_expert
            self.weight = torch.nn.Parameter(torch.empty(output_size, input_size,
                                                         dtype=config.params_dtype))
            init_method(self.weight)
            self.bias = (torch.nn.Parameter(torch.zeros(output_size, dtype=config.params_dtype))
                         if bias else None)

        def forward(self, x):
            return torch.nn.functional.linear(x, self.weight, self.bias), None

        def get_extra_state(self):  # TE modules carry an _extra_state (FP8 metadata)
            return None

        def set_extra_state(self, state):
            pass

        def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
            # TELinear.sharded_state_dict for parallel_mode "duplicated" (parallel_mode None)
            from megatron.core import parallel_state as ps

            state_dict = self.state_dict(prefix="", keep_vars=True)
            dp_cp = (metadata or {}).get("dp_cp_group") or ps.get_data_parallel_group(
                with_context_parallel=True)
            return make_sharded_tensors_for_checkpoint(
                state_dict, prefix, None, sharded_offsets,
                tp_group=ps.get_tensor_model_parallel_group(), dp_cp_group=dp_cp)

    return CpuDuplicatedLinear


def cpu_latent_shims():
    import megatron.core.transformer.moe.moe_layer as moe_layer

    moe_layer.HAVE_TE = True  # only gates the latent projections' TELinear
    moe_layer.TELinear = cpu_duplicated_linear_cls()


# ------------------------------------------------------------------------------------------------
# model

def mtp_pattern(cfg: dict) -> str:
    if cfg.get("mtp_hybrid_override_pattern"):
        return cfg["mtp_hybrid_override_pattern"]
    return "".join(HK.SYMBOL[t] for t in cfg.get("mtp_layers_block_type") or [])


def mtp_depths(cfg: dict) -> int:
    return int(cfg.get("num_nextn_predict_layers") or 0)


def unified_pattern(cfg: dict, with_mtp: bool = True) -> str:
    main = HK.hf_pattern(cfg)
    if with_mtp and mtp_depths(cfg):
        return main + ("/" + mtp_pattern(cfg)) * mtp_depths(cfg)
    return main


def transformer_config(cfg: dict, dtype, with_mtp: bool):
    tcfg = HK.transformer_config(cfg, dtype)
    kw = {"moe_latent_size": cfg.get("moe_latent_size")}
    if with_mtp and mtp_depths(cfg):
        kw.update(mtp_num_layers=mtp_depths(cfg), mtp_use_repeated_layer=True)
    return dataclasses.replace(tcfg, **kw)


def stack_spec():
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear
    from megatron.core.transformer.multi_token_prediction import (
        MultiTokenPredictionBlock, MultiTokenPredictionBlockSubmodules,
        MultiTokenPredictionLayer, MultiTokenPredictionLayerSubmodules)
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    spec = HK.local_hybrid_stack_spec()
    spec.submodules.mtp_block_spec = ModuleSpec(
        module=MultiTokenPredictionBlock,
        submodules=MultiTokenPredictionBlockSubmodules(layer_specs=[ModuleSpec(
            module=MultiTokenPredictionLayer,
            submodules=MultiTokenPredictionLayerSubmodules(
                enorm=WrappedTorchNorm, hnorm=WrappedTorchNorm, eh_proj=ColumnParallelLinear,
                mtp_model_layer=None, layer_norm=WrappedTorchNorm))]))
    return spec


def build_model(cfg: dict, dtype=torch.bfloat16, float16_module=True, with_mtp=True,
                vocab_size=None, parallel_output=True):
    from megatron.core import parallel_state as ps
    from megatron.core.models.hybrid.hybrid_model import HybridModel
    from megatron.core.transformer.module import Float16Module

    E.quiet_megatron()
    HK.cpu_mamba_shims()
    cpu_latent_shims()
    tcfg = transformer_config(cfg, dtype, with_mtp)
    model = HybridModel(
        config=tcfg, hybrid_stack_spec=stack_spec(),
        vocab_size=vocab_size or cfg["vocab_size"],
        max_sequence_length=cfg["max_position_embeddings"],
        hybrid_layer_pattern=unified_pattern(cfg, with_mtp),
        # this pipeline stage's part (the whole model at PP=1), like get_model
        pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage(),
        parallel_output=parallel_output,
        share_embeddings_and_output_weights=cfg.get("tie_word_embeddings", False),
        position_embedding_type="none")
    if float16_module and dtype != torch.float32:
        model = Float16Module(tcfg, model)
    return model


# ------------------------------------------------------------------------------------------------
# HF <-> Megatron mapping: hybrid_keys.mapping + latent projections + MTP

def _layer_rows(cfg: dict, kind: str, m: str, h: str) -> list:
    """Rows for ONE layer of symbol `kind` with Megatron prefix m and HF prefix h, taken from
    hybrid_keys.mapping (applied to a one-layer pattern) and re-prefixed."""
    one = dict(cfg, hybrid_override_pattern=kind)
    out = []
    for mkey, idx, hname, rr, note in BASE_MAPPING(one):
        if not mkey.startswith("decoder.layers.0."):
            continue
        out.append([m + mkey[len("decoder.layers.0."):], idx,
                    h + hname[len("backbone.layers.0."):], rr, note])
    if kind == "E" and cfg.get("moe_latent_size"):
        for p in ("fc1_latent_proj", "fc2_latent_proj"):
            out.append([m + f"mlp.{p}.weight", None, h + f"mixer.{p}.weight", None,
                        "LatentMoE, replicated (TELinear duplicated)"])
    return out


def mapping(cfg: dict) -> list:
    """[megatron_key, prepended_index or None, hf_name, rows or None, note] for the whole model.

    MTP (mtp_use_repeated_layer=True: ONE Megatron MTP layer o=0 whatever the depth count;
    HF flattens depth d and pattern position i into f = d*len(pattern) + i):
      mtp.layers.0.enorm/hnorm/eh_proj.weight   <- mtp.layers.<d*Lp>.<same>
      mtp.layers.0.final_layernorm.weight       <- mtp.layers.<d*Lp+Lp-1>.final_layernorm.weight
      mtp.layers.0.mtp_model_layer.layers.<i>.X <- mtp.layers.<d*Lp+i>.<HF name of X>
    Only depth d = 0 is mapped (with one repeated layer, HF depths > 0 have no Megatron
    counterpart)."""
    main_pattern = HK.hf_pattern(cfg)
    rows = []
    for mkey, idx, hname, rr, note in BASE_MAPPING(cfg):
        rows.append([mkey, idx, hname, rr, note])
        m = mkey.split(".")
        if mkey.endswith("mlp.router.expert_bias") and cfg.get("moe_latent_size"):
            n = int(m[2])
            assert main_pattern[n] == "E"
            rows += _layer_rows(cfg, "E", f"decoder.layers.{n}.", f"backbone.layers.{n}.")[-2:]
    if mtp_depths(cfg):
        pat, lp = mtp_pattern(cfg), len(mtp_pattern(cfg))
        for p in ("enorm", "hnorm", "eh_proj"):
            rows.append([f"mtp.layers.0.{p}.weight", None, f"mtp.layers.0.{p}.weight", None, ""])
        for i, kind in enumerate(pat):
            rows += _layer_rows(cfg, kind, f"mtp.layers.0.mtp_model_layer.layers.{i}.",
                                f"mtp.layers.{i}.")
        rows.append(["mtp.layers.0.final_layernorm.weight", None,
                     f"mtp.layers.{lp - 1}.final_layernorm.weight", None, ""])
    return rows


def check(cfg: dict, header: dict, tens: list) -> list:
    saved = HK.mapping
    HK.mapping = mapping  # hybrid_keys' checker reads the module-level mapping()
    try:
        return HK.check_mapping(cfg, header, tens)
    finally:
        HK.mapping = saved


def hf_sources(cfg: dict) -> dict:
    saved = HK.mapping
    HK.mapping = mapping
    try:
        return HK.hf_sources(cfg)
    finally:
        HK.mapping = saved


# ------------------------------------------------------------------------------------------------
# numeric check of the latent MoE (main model, no MTP)

def forward_check(cfg: dict, tmp: Path) -> dict:
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    ids = [[(7 * i + 3) % cfg["vocab_size"] for i in range(19)],
           [(11 * i + 5) % cfg["vocab_size"] for i in range(19)]]
    ref_path = tmp / "hf-logits.pt"
    import os
    import subprocess

    subprocess.run([sys.executable, "-c", HK.HF_FORWARD, str(HK.hf_dir(FIXTURE)),
                    json.dumps(ids), str(ref_path)], check=True,
                   env=dict(os.environ, PYTHONPATH=""))
    ref = torch.load(ref_path)
    torch.manual_seed(0)
    model = build_model(cfg, dtype=torch.float32, float16_module=False, with_mtp=False)
    model.eval()
    hf = {k: v.float() for k, v in HK.hf_tensors(FIXTURE).items()}
    pieces = {}
    for mkey, idx, hname, rr, _ in mapping(cfg):
        if mkey.startswith("mtp."):
            continue
        t = hf[hname] if rr is None else hf[hname][rr[0]:rr[1]]
        pieces.setdefault(mkey, {}).setdefault(idx, []).append(t)
    glob = {k: (torch.cat(d[None], 0) if list(d) == [None] else
                torch.stack([torch.cat(d[i], 0) for i in sorted(d)], 0))
            for k, d in pieces.items()}
    with torch.no_grad():
        for t in list(model.parameters()) + [b for n, b in model.named_buffers()
                                             if n.endswith("expert_bias")]:
            t.fill_(float("nan"))

    def flat(x):
        if isinstance(x, dict):
            for v in x.values():
                yield from flat(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                yield from flat(v)
        else:
            yield x

    def put(sh):
        g = glob[sh.key]
        sl = tuple(slice(o, o + n) for o, n in zip(sh.global_offset, (1,) * sh.prepend_axis_num
                                                   + tuple(sh.local_shape)))
        src = g[sl].reshape(sh.local_shape) if sh.prepend_axis_num else g[sl]
        with torch.no_grad():
            sh.data.copy_(src)

    for v in E.model_sharded_state_dict(model).values():
        for x in flat(v):
            if isinstance(x, ShardedTensorFactory):
                for sh in flat(x.build()):
                    put(sh)
            elif isinstance(x, ShardedTensor):
                put(x)
    missed = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
              if t.is_floating_point() and torch.isnan(t).any()]
    assert not missed, f"not covered by the sharded state dict: {missed}"
    ids_t = torch.tensor(ids)
    s = ids_t.shape[1]
    pos = torch.arange(s)[None].expand_as(ids_t)
    mask = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)[None, None]
    with torch.no_grad():
        out = model(input_ids=ids_t, position_ids=pos, attention_mask=mask).float()
    if out.shape != ref.shape:
        out = out.transpose(0, 1)
    return {"max_abs_logit_diff_vs_hf": float(f"{(out - ref).abs().max().item():.3g}"),
            "hf_logit_abs_max": float(f"{ref.abs().max().item():.3g}")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(HK.ROOT / "TestCheckpoints/hybrid-keys"))
    ap.add_argument("--no-forward", action="store_true")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = HK.hf_config(FIXTURE)
    E.init_distributed(0, 1, f"tcp://127.0.0.1:{E.free_port()}")
    E.init_model_parallel(1, 1)
    torch.manual_seed(1234)
    model = build_model(cfg)
    tens, objs = HK.group_records(HK.sharded_records(model, 0))
    hdr = HK.hf_header(FIXTURE)
    problems = check(cfg, hdr, tens)
    header = {"fixture": FIXTURE, "pattern": unified_pattern(cfg), "world_size": 1, "tp": 1,
              "ep": 1, "moe_latent_size": cfg.get("moe_latent_size"),
              "mtp_num_layers": mtp_depths(cfg), "mtp_use_repeated_layer": True,
              "model": "HybridModel(local hybrid_stack_spec + local MTP block spec; latent "
                       "projections: TELinear stand-in) in Float16Module(bf16)",
              "vocab_size": cfg["vocab_size"]}
    HK.write_ws1_json(out / f"{FIXTURE}-ws1.json", header, tens, objs, hdr, hf_sources(cfg))
    print(f"{FIXTURE}: {len(tens)} tensor keys, {len(objs)} object keys; "
          f"mapping problems: {len(problems)}")
    for p in problems:
        print("   ", p)
    if not a.no_forward:
        with tempfile.TemporaryDirectory() as tmp:
            print("forward (main model, latent MoE):", forward_check(cfg, Path(tmp)))
    torch.distributed.destroy_process_group()
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

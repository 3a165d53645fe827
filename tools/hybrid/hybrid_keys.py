"""Ground truth for the Nemotron-H / Nemotron 3 MoE mapping: the torch_dist keys of a REAL
Megatron-Core `HybridModel` (megatron-core 0.19.2, CPU, gloo) built to match an HF fixture.

    .venv/bin/python tools/hybrid/hybrid_keys.py [--out TestCheckpoints/hybrid-keys]
                                                 [--fixtures nemotron-h-tiny nemotron3-moe-tiny]
                                                 [--no-forward]

For every fixture in TestCheckpoints/<fixture>/hf (NemotronHForCausalLM) it
  1. derives the Megatron TransformerConfig + `hybrid_layer_pattern` from config.json the way
     Megatron-Bridge's NemotronHBridge does (squared ReLU, non-gated MLPs, no RoPE, RMSNorm,
     sigmoid router with fp32 expert_bias, ...), with `moe_grouped_gemm=False` (no TE);
  2. builds HybridModel from a local (non-Transformer-Engine) copy of Megatron's
     `hybrid_stack_spec` whose norms are re-keyed to the TE names (see local_hybrid_stack_spec),
     wraps it in Float16Module (bf16, as megatron.training.get_model does) and dumps
     `sharded_state_dict()`: every ShardedTensor (factories built), every ShardedObject;
  3. does the same at world size 2 (TP=2 for a dense model, EP=2 for an MoE model, 2 gloo
     ranks) and records which chunk each rank holds;
  4. writes the HF -> Megatron mapping (which HF tensor / rows feed each Megatron key), checks it
     covers every HF tensor and every Megatron key with matching shapes, and (unless
     --no-forward) checks it numerically: HF weights are copied through the mapping into the
     Megatron model via the sharded tensors' own views (the placement a checkpoint load uses), and
     Megatron's forward (with the pure-PyTorch mamba_ssm stand-in) is compared to transformers'
     NemotronHForCausalLM forward (computed in a separate process without the stand-in).

Output files (compact JSON, one line per key): <fixture>-ws1.json (keys, HF tensors, mapping),
<fixture>-tp2.json or <fixture>-ep2.json (chunks per rank); see the README next to them.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
STANDIN = HERE / "mamba_ssm_standin"
sys.path.insert(0, str(HERE.parent / "megatron"))
sys.path.insert(0, str(STANDIN))  # mamba_ssm / causal_conv1d stand-ins (must come first)

import mcore_env as E  # noqa: E402  (CPU shims: cuda.current_device -> "cpu", ...)

import torch  # noqa: E402

FIXTURES = ["nemotron-h-tiny", "nemotron3-moe-tiny"]
SYMBOL = {"mamba": "M", "linear_attention": "M", "attention": "*", "full_attention": "*",
          "mlp": "-", "moe": "E"}
DT = {torch.bfloat16: "bf16", torch.float32: "f32", torch.float16: "f16"}
HF_DT = {"BF16": "bf16", "F32": "f32", "F16": "f16"}


# ------------------------------------------------------------------------------------------------
# HF side

def hf_dir(fixture: str) -> Path:
    return ROOT / "TestCheckpoints" / fixture / "hf"


def hf_config(fixture: str) -> dict:
    return json.loads((hf_dir(fixture) / "config.json").read_text())


def hf_pattern(cfg: dict) -> str:
    """`hybrid_override_pattern`, or derived from `layers_block_type` (newer configs)."""
    if cfg.get("hybrid_override_pattern"):
        return cfg["hybrid_override_pattern"]
    return "".join(SYMBOL[t] for t in cfg["layers_block_type"])


def hf_header(fixture: str) -> dict:
    """name -> (dtype, shape) from the safetensors header(s)."""
    out = {}
    for f in sorted(hf_dir(fixture).glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            hdr = json.loads(fh.read(n))
        for k, v in hdr.items():
            if k != "__metadata__":
                out[k] = (HF_DT[v["dtype"]], v["shape"])
    return out


def hf_tensors(fixture: str) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(hf_dir(fixture).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


# ------------------------------------------------------------------------------------------------
# Megatron model

def transformer_config(cfg: dict, dtype=torch.bfloat16):
    """What Megatron-Bridge's NemotronHBridge/HybridModelProvider would set (mappings.md §4/§5),
    except moe_grouped_gemm=False (no Transformer Engine) and no shared-expert overlap."""
    from megatron.core import parallel_state
    from megatron.core.activations import squared_relu
    from megatron.core.transformer.enums import AttnBackend
    from megatron.core.transformer.transformer_config import TransformerConfig

    pattern = hf_pattern(cfg)
    kw = dict(
        num_layers=len(pattern),
        hidden_size=cfg["hidden_size"],
        ffn_hidden_size=cfg["intermediate_size"],
        num_attention_heads=cfg["num_attention_heads"],
        num_query_groups=cfg["num_key_value_heads"],
        kv_channels=cfg.get("head_dim") or cfg.get("attention_head_dim"),
        normalization="RMSNorm",
        layernorm_epsilon=cfg.get("rms_norm_eps", cfg.get("layer_norm_epsilon", 1e-5)),
        gated_linear_unit=False,
        activation_func=squared_relu,
        add_bias_linear=cfg.get("mlp_bias", cfg.get("use_bias", False)),
        add_qkv_bias=cfg.get("attention_bias", False),
        attention_backend=AttnBackend.local,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bf16=dtype == torch.bfloat16,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        init_method_std=cfg.get("initializer_range", 0.02),
        tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        expert_model_parallel_size=parallel_state.get_expert_model_parallel_world_size(),
        pipeline_model_parallel_size=parallel_state.get_pipeline_model_parallel_world_size(),
        **E.CPU_ONLY_CONFIG,  # CPU: no fused kernels, no CUDA init
        is_hybrid_model=True,
        mamba_state_dim=cfg["ssm_state_size"],
        mamba_head_dim=cfg["mamba_head_dim"],
        mamba_num_groups=cfg.get("n_groups", 8),
        mamba_num_heads=cfg["mamba_num_heads"],
    )
    # an uneven pipeline split (hybrid_load jobs put it into cfg under these names)
    for name in ("num_layers_in_first_pipeline_stage", "num_layers_in_last_pipeline_stage"):
        if cfg.get(name) is not None:
            kw[name] = cfg[name]
    if "E" in pattern:  # the dense fixture's config.json carries MoE fields too; no E layer
        kw.update(
            num_moe_experts=cfg["n_routed_experts"],
            moe_router_topk=cfg["num_experts_per_tok"],
            moe_ffn_hidden_size=cfg["moe_intermediate_size"],
            moe_shared_expert_intermediate_size=cfg.get("moe_shared_expert_intermediate_size"),
            moe_router_num_groups=cfg.get("n_group"),
            moe_router_group_topk=cfg.get("topk_group"),
            moe_router_topk_scaling_factor=cfg.get("routed_scaling_factor"),
            moe_router_score_function="sigmoid",
            moe_router_enable_expert_bias=True,
            moe_router_dtype="fp32",
            moe_router_load_balancing_type="seq_aux_loss",
            moe_aux_loss_coeff=1e-4,
            moe_grouped_gemm=False,
            # MB uses "alltoall"; its dispatcher allocates a torch.cuda.Stream (no CPU). The
            # dispatcher holds no parameters, so the checkpoint keys do not depend on it.
            moe_token_dispatcher_type="allgather",
            moe_shared_expert_overlap=False,
            moe_permute_fusion=False,
        )
    return TransformerConfig(**kw)


def local_hybrid_stack_spec():
    """Megatron's `hybrid_stack_spec` (models/hybrid/hybrid_layer_specs.py) with the TE modules
    swapped for local ones: ColumnParallelLinear/RowParallelLinear, DotProductAttention, torch
    RMSNorm (WrappedTorchNorm), SequentialMLP experts. The TE spec fuses the pre-norms into the
    following linear (TELayerNormColumnParallelLinear.layer_norm_weight); here they are separate
    modules re-keyed with `sharded_state_dict_keys_map` to the same checkpoint names, the way
    post_training/modelopt/hybrid/model_specs.py does with remap_te_layernorm=True (that spec
    itself needs TE for its Norm)."""
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
    from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec
    from megatron.core.models.hybrid.hybrid_block import HybridStack, HybridStackSubmodules
    from megatron.core.ssm.mamba_layer import MambaLayer, MambaLayerSubmodules
    from megatron.core.ssm.mamba_mixer import MambaMixer, MambaMixerSubmodules
    from megatron.core.ssm.mlp_layer import MLPLayer
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.mlp import MLP, MLPSubmodules
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.torch_norm import WrappedTorchNorm
    from megatron.core.transformer.transformer_layer import (
        MoETransformerLayer, TransformerLayer, TransformerLayerSubmodules)

    mamba_layer = ModuleSpec(
        module=MambaLayer,
        submodules=MambaLayerSubmodules(
            norm=WrappedTorchNorm,
            mixer=ModuleSpec(module=MambaMixer, submodules=MambaMixerSubmodules(
                in_proj=ColumnParallelLinear, out_proj=RowParallelLinear)),
            mamba_bda=get_bias_dropout_add,
            sharded_state_dict_keys_map={"norm.": "mixer.in_proj.layer_norm_"},
        ),
    )
    attention_layer = ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=WrappedTorchNorm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=ColumnParallelLinear, core_attention=DotProductAttention,
                    linear_proj=RowParallelLinear),
            ),
            self_attn_bda=get_bias_dropout_add,
            sharded_state_dict_keys_map={
                "input_layernorm.": "self_attention.linear_qkv.layer_norm_"},
        ),
    )
    mlp_layer = ModuleSpec(
        module=MLPLayer,
        submodules=TransformerLayerSubmodules(
            pre_mlp_layernorm=WrappedTorchNorm,
            mlp=partial(MLP.as_mlp_submodule, submodules=MLPSubmodules(
                linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear)),
            mlp_bda=get_bias_dropout_add,
            sharded_state_dict_keys_map={"pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"},
        ),
    )
    moe_layer = ModuleSpec(
        module=MoETransformerLayer,
        submodules=TransformerLayerSubmodules(
            pre_mlp_layernorm=WrappedTorchNorm,
            mlp=get_moe_module_spec(use_te=False, num_experts=8, moe_grouped_gemm=False),
            mlp_bda=get_bias_dropout_add,
        ),
    )
    return ModuleSpec(module=HybridStack, submodules=HybridStackSubmodules(
        mamba_layer=mamba_layer, attention_layer=attention_layer, mlp_layer=mlp_layer,
        moe_layer=moe_layer))


class CpuRngTracker:
    """MambaMixer draws its conv/dt/A init inside `get_cuda_rng_tracker().fork()`, which needs
    a CUDA generator registered by model_parallel_cuda_manual_seed (torch.cuda.get_rng_state:
    no CPU equivalent), and DotProductAttention forks it in forward. On CPU: fork the CPU
    generator instead (init values are irrelevant here; dropout is 0)."""

    def fork(self, name=None):
        return torch.random.fork_rng(devices=[])


def cpu_mamba_shims():
    """The CPU adaptations HybridModel needs beyond mcore_env's (see README.md)."""
    import megatron.core.models.hybrid.hybrid_block as hybrid_block
    import megatron.core.ssm.mamba_mixer as mamba_mixer
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    import megatron.core.tensor_parallel as tensor_parallel

    assert mamba_mixer.HAVE_MAMBA_SSM, "mamba_ssm stand-in not importable"
    mamba_mixer.get_cuda_rng_tracker = CpuRngTracker
    # DotProductAttention.forward forks the tracker around its (p=0) dropout too
    tensor_parallel.get_cuda_rng_tracker = CpuRngTracker
    # HybridStack builds its final norm with TENorm directly (no spec entry): use torch RMSNorm.
    hybrid_block.TENorm = WrappedTorchNorm


def build_model(cfg: dict, dtype=torch.bfloat16, float16_module=True):
    """HybridModel for the current parallel state; bf16 via Float16Module like training."""
    from megatron.core.models.hybrid.hybrid_model import HybridModel
    from megatron.core.transformer.module import Float16Module

    E.quiet_megatron()
    cpu_mamba_shims()
    tcfg = transformer_config(cfg, dtype)
    model = HybridModel(
        config=tcfg,
        hybrid_stack_spec=local_hybrid_stack_spec(),
        vocab_size=cfg["vocab_size"],
        max_sequence_length=cfg["max_position_embeddings"],
        hybrid_layer_pattern=hf_pattern(cfg),
        pre_process=True,
        post_process=True,
        share_embeddings_and_output_weights=cfg.get("tie_word_embeddings", False),
        position_embedding_type="none",
    )
    if float16_module and dtype != torch.float32:
        model = Float16Module(tcfg, model)
    return model


# ------------------------------------------------------------------------------------------------
# sharded state dict -> records

def sharded_records(model, rank: int) -> list:
    """One record per ShardedTensor (factories built) / ShardedObject of this rank."""
    from megatron.core.dist_checkpointing.mapping import (
        ShardedObject, ShardedTensor, ShardedTensorFactory)

    sd = E.model_sharded_state_dict(model)
    recs = []

    def flat(x):
        if isinstance(x, dict):
            for v in x.values():
                yield from flat(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                yield from flat(v)
        else:
            yield x

    def tensor_rec(sh, name, factory):
        return {"t": "T", "key": sh.key, "dtype": DT[sh.dtype], "shape": list(sh.global_shape),
                "pre": sh.prepend_axis_num, "off": list(sh.global_offset),
                "local": list(sh.local_shape), "frag": list(sh.axis_fragmentations),
                "rep": list(sh.replica_id) if isinstance(sh.replica_id, tuple) else [sh.replica_id],
                "mismatch": bool(sh.allow_shape_mismatch), "name": name, "factory": factory,
                "rank": rank}

    for name, v in sd.items():
        for x in flat(v):
            if isinstance(x, ShardedTensorFactory):
                for sh in flat(x.build()):
                    recs.append(tensor_rec(sh, name, x.key))
            elif isinstance(x, ShardedTensor):
                recs.append(tensor_rec(x, name, None))
            elif isinstance(x, ShardedObject):
                recs.append({"t": "O", "key": x.key, "unique": x.unique_key,
                             "shape": list(x.global_shape), "off": list(x.global_offset),
                             "rep": list(x.replica_id) if isinstance(x.replica_id, tuple)
                             else [x.replica_id], "name": name, "rank": rank})
            else:
                recs.append({"t": "?", "key": name, "type": type(x).__name__, "rank": rank})
    return recs


def group_records(recs: list) -> tuple[list, list]:
    """Merge the records of one key (several chunks / ranks) into one line each."""
    tens, objs = {}, {}
    for r in recs:
        if r["t"] == "T":
            g = tens.setdefault(r["key"], {"key": r["key"], "dtype": r["dtype"],
                                           "shape": r["shape"], "pre": r["pre"],
                                           "mismatch": r["mismatch"], "names": set(),
                                           "factory": r["factory"], "chunks": []})
            assert (g["dtype"], g["shape"], g["pre"]) == (r["dtype"], r["shape"], r["pre"]), r
            g["names"].add(r["name"])
            g["chunks"].append([r["rank"], r["off"], r["local"], r["rep"]])
        elif r["t"] == "O":
            g = objs.setdefault(r["key"], {"key": r["key"], "shape": r["shape"], "names": set(),
                                           "chunks": []})
            g["names"].add(r["name"])
            g["chunks"].append([r["rank"], r["off"], r["rep"], r["unique"]])
        else:
            raise TypeError(f"unexpected sharded state dict entry {r}")
    for g in list(tens.values()) + list(objs.values()):
        g["names"] = sorted(g["names"])
        g["chunks"].sort()
    return sorted(tens.values(), key=lambda g: g["key"]), sorted(objs.values(),
                                                                  key=lambda g: g["key"])


def layer_sort_key(key: str):
    """decoder.layers.10 after decoder.layers.9."""
    parts = key.split(".")
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts]


def in_memory_name(names: list, key: str):
    """The module state-dict name(s) behind a key: null if it is the key itself; SequentialMLP's
    per-expert names collapse to one template with {i} = LOCAL expert index on the rank."""
    import re

    if names == [key]:
        return None
    t = sorted({re.sub(r"local_experts\.\d+\.", "local_experts.{i}.", n) for n in names})
    return t[0] if len(t) == 1 else t


def hf_sources(cfg: dict) -> dict:
    """megatron key -> [[hf_name, [row_start, row_stop] or null], ...] in concatenation order;
    per-expert pieces collapse to one with {e} (= index on the prepended expert axis);
    "~" abbreviates "backbone.layers.<N>." of the key's own layer N."""
    import re

    out = {}
    for mkey, idx, hname, rr, _ in mapping(cfg):
        if idx is not None:
            hname = hname.replace(f"experts.{idx}.", "experts.{e}.")
        m = re.match(r"decoder\.layers\.(\d+)\.", mkey)
        if m and hname.startswith(f"backbone.layers.{m.group(1)}."):
            hname = "~" + hname[len(f"backbone.layers.{m.group(1)}."):]
        piece = [hname, rr]
        if piece not in out.setdefault(mkey, []):
            out[mkey].append(piece)
    return out


def dump(rows: list) -> str:
    return ",\n".join(json.dumps(r, separators=(",", ":")) for r in rows)


def write_ws1_json(path: Path, header: dict, tens: list, objs: list, hf: dict, src: dict):
    """Compact, one line per HF tensor (template), ShardedTensor key and ShardedObject key."""
    lines = ['{"header":' + json.dumps(header, separators=(",", ":")) + ","]
    lines.append('"hf_columns":["name ({e} = expert 0..n_routed_experts-1)","dtype","shape"],')
    seen, hrows = set(), []
    for name in sorted(hf, key=layer_sort_key):
        parts = name.split(".")
        if "experts" in parts and parts[parts.index("experts") + 1].isdigit():
            parts[parts.index("experts") + 1] = "{e}"
        t = ".".join(parts)
        if t not in seen:
            seen.add(t)
            hrows.append([t, *hf[name]])
    lines += ['"hf":[', dump(hrows), "],"]
    lines.append('"tensors_columns":["key","dtype","global_shape","prepend_axis_num",'
                 '"allow_shape_mismatch","in-memory state_dict name (null: same as key)",'
                 '"1: built by a ShardedTensorFactory keyed <key minus its last .part>",'
                 '"chunks: [rank,global_offset,local_shape,replica_id]... (null: one chunk, rank 0,'
                 ' whole tensor, replica (0,0,0))","HF source pieces, concatenated on dim 0: '
                 '[hf_name (~ = backbone.layers.<N>. of this key), [row_start,row_stop] '
                 '(null: all rows)]..."],')
    rows = []
    for g in sorted(tens, key=lambda g: layer_sort_key(g["key"])):
        ch = g["chunks"]
        if len(ch) == 1 and ch[0][0] == 0 and ch[0][2] == g["shape"] and not any(ch[0][1]) \
                and not any(ch[0][3]):
            ch = None
        if g["factory"] is not None:
            assert g["key"].rsplit(".", 1)[0] == g["factory"], g
        rows.append([g["key"], g["dtype"], g["shape"], g["pre"], g["mismatch"],
                     in_memory_name(g["names"], g["key"]), int(g["factory"] is not None), ch,
                     src.get(g["key"])])
    lines += ['"tensors":[', dump(rows), "],"]
    lines.append('"objects_columns":["key","global_shape","in-memory state_dict name (null: same)",'
                 '"chunks: [rank,global_offset,replica_id,unique_key without the leading key/]..."],')
    lines += ['"objects":[', dump(object_rows(objs)), "]}"]
    path.write_text("\n".join(lines) + "\n")


def object_rows(objs: list) -> list:
    rows = []
    for g in sorted(objs, key=lambda g: layer_sort_key(g["key"])):
        chunks = []
        for rank, off, rep, uk in g["chunks"]:
            assert uk.startswith(g["key"] + "/"), uk
            chunks.append([rank, off, rep, uk[len(g["key"]) + 1:]])
        if chunks == [[0, [0], [0, 0, 0], "shard_0_1"]]:
            chunks = None
        rows.append([g["key"], g["shape"], in_memory_name(g["names"], g["key"]), chunks])
    return rows


def replicated_pattern(chunks: list, shape: list, pre: int, obj: bool):
    """For a key every rank holds whole: the replica_id per rank, else None."""
    n_ranks = max(c[0] for c in chunks) + 1
    if len(chunks) != n_ranks or sorted(c[0] for c in chunks) != list(range(n_ranks)):
        return None
    reps = []
    for c in sorted(chunks):
        if any(c[1]) or (not obj and c[2] != shape[pre:]) or (obj and c[3] != "shard_0_1"):
            return None
        reps.append(c[2] if obj else c[3])
    return reps


def write_ws2_json(path: Path, header: dict, tens: list, objs: list, ws1: Path):
    """Which chunk each rank holds; dtype/shape/names are those of the ws1 file (checked).
    Keys that every rank holds whole are only counted per replica_id pattern in the header."""
    ref = json.loads(ws1.read_text())
    ref_t = {r[0]: r for r in ref["tensors"]}
    ref_o = {r[0]: r for r in ref["objects"]}
    assert sorted(ref_t) == sorted(g["key"] for g in tens), "ws2 keys differ from ws1"
    assert sorted(ref_o) == sorted(g["key"] for g in objs), "ws2 object keys differ from ws1"
    repl = {}
    rows = []
    for g in sorted(tens, key=lambda g: layer_sort_key(g["key"])):
        r = ref_t[g["key"]]
        assert [g["dtype"], g["shape"], g["pre"]] == r[1:4], (g, r)
        pat = replicated_pattern(g["chunks"], g["shape"], g["pre"], False)
        if pat is None:
            rows.append([g["key"], g["chunks"]])
        else:
            repl.setdefault(json.dumps(pat, separators=(",", ":")), []).append(g["key"])
    orows = []
    orepl = {}
    for g in sorted(objs, key=lambda g: layer_sort_key(g["key"])):
        chunks = [[rk, off, rep, uk[len(g["key"]) + 1:]] for rk, off, rep, uk in g["chunks"]]
        pat = replicated_pattern(chunks, g["shape"], 0, True)
        if pat is None:
            orows.append([g["key"], chunks])
        else:
            orepl.setdefault(json.dumps(pat, separators=(",", ":")), []).append(g["key"])
    header = dict(header)
    header["whole_on_every_rank"] = {
        "tensors": {p: len(k) for p, k in sorted(repl.items())},
        "objects (unique_key <key>/shard_0_1)": {p: len(k) for p, k in sorted(orepl.items())},
        "note": "replica_id per rank -> number of keys; those keys are not listed below"}
    lines = ['{"header":' + json.dumps(header, separators=(",", ":")) + ","]
    lines.append('"tensors_columns":["key (dtype, global_shape, ... as in the ws1 file)",'
                 '"chunks: [rank,global_offset,local_shape,replica_id]..."],')
    lines += ['"tensors":[', dump(rows), "],"]
    lines.append('"objects_columns":["key","chunks: [rank,global_offset,replica_id,'
                 'unique_key without the leading key/]..."],')
    lines += ['"objects":[', dump(orows), "]}"]
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------
# HF -> Megatron mapping (the rules under test)

def mapping(cfg: dict) -> list:
    """[megatron_key, prepended_index or None, hf_name, [row_start, row_stop] or None, note].
    Rows refer to dim 0 of the HF tensor; a QKV key has several entries (one per group part)."""
    pattern = hf_pattern(cfg)
    H = cfg["hidden_size"]
    nh, hd_m, ng_m, ds = (cfg["mamba_num_heads"], cfg["mamba_head_dim"], cfg["n_groups"],
                          cfg["ssm_state_size"])
    d_in, d_ssm = nh * hd_m, ng_m * ds
    npq, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg.get("attention_head_dim")
    out = [["embedding.word_embeddings.weight", None, "backbone.embeddings.weight", None, ""]]
    for n, s in enumerate(pattern):
        m, h = f"decoder.layers.{n}.", f"backbone.layers.{n}."
        if s == "M":
            out.append([m + "mixer.in_proj.layer_norm_weight", None, h + "norm.weight", None,
                        "MambaLayer.norm (local spec) re-keyed to the TE fused name"])
            a = 0
            for part, size in (("z", d_in), ("x", d_in), ("B", d_ssm), ("C", d_ssm), ("dt", nh)):
                out.append([m + f"mixer.in_proj.weight.{part}", None, h + "mixer.in_proj.weight",
                            [a, a + size], ""])
                a += size
            for w in ("weight", "bias"):
                a = 0
                for part, size in (("x", d_in), ("B", d_ssm), ("C", d_ssm)):
                    out.append([m + f"mixer.conv1d.{w}.{part}", None, h + f"mixer.conv1d.{w}",
                                [a, a + size], "in-memory param conv1d_" + w])
                    a += size
            for p in ("A_log", "D", "dt_bias", "norm.weight", "out_proj.weight"):
                out.append([m + "mixer." + p, None, h + "mixer." + p, None, ""])
        elif s == "*":
            out.append([m + "self_attention.linear_qkv.layer_norm_weight", None,
                        h + "norm.weight", None, "input_layernorm re-keyed to the TE fused name"])
            q_per = npq // nkv
            for g in range(nkv):
                out.append([m + "self_attention.linear_qkv.weight", None, h + "mixer.q_proj.weight",
                            [g * q_per * hd, (g + 1) * q_per * hd], f"group {g}: q"])
                out.append([m + "self_attention.linear_qkv.weight", None, h + "mixer.k_proj.weight",
                            [g * hd, (g + 1) * hd], f"group {g}: k"])
                out.append([m + "self_attention.linear_qkv.weight", None, h + "mixer.v_proj.weight",
                            [g * hd, (g + 1) * hd], f"group {g}: v"])
            out.append([m + "self_attention.linear_proj.weight", None, h + "mixer.o_proj.weight",
                        None, ""])
        elif s == "-":
            out.append([m + "mlp.linear_fc1.layer_norm_weight", None, h + "norm.weight", None,
                        "pre_mlp_layernorm re-keyed to the TE fused name"])
            out.append([m + "mlp.linear_fc1.weight", None, h + "mixer.up_proj.weight", None, ""])
            out.append([m + "mlp.linear_fc2.weight", None, h + "mixer.down_proj.weight", None, ""])
        elif s == "E":
            out.append([m + "pre_mlp_layernorm.weight", None, h + "norm.weight", None, ""])
            out.append([m + "mlp.router.weight", None, h + "mixer.gate.weight", None, ""])
            out.append([m + "mlp.router.expert_bias", None,
                        h + "mixer.gate.e_score_correction_bias", None, "fp32 both sides"])
            for e in range(cfg["n_routed_experts"]):
                out.append([m + "mlp.experts.experts.linear_fc1.weight", e,
                            h + f"mixer.experts.{e}.up_proj.weight", None, ""])
                out.append([m + "mlp.experts.experts.linear_fc2.weight", e,
                            h + f"mixer.experts.{e}.down_proj.weight", None, ""])
            for a, b in (("linear_fc1", "up_proj"), ("linear_fc2", "down_proj")):
                out.append([m + f"mlp.shared_experts.{a}.weight", None,
                            h + f"mixer.shared_experts.{b}.weight", None, ""])
        else:
            raise ValueError(f"layer symbol {s!r}")
    out.append(["decoder.final_norm.weight", None, "backbone.norm_f.weight", None, ""])
    if not cfg.get("tie_word_embeddings", False):
        out.append(["output_layer.weight", None, "lm_head.weight", None, ""])
    return out


def check_mapping(cfg: dict, header: dict, tens: list) -> list:
    """Every HF tensor used (rows exactly covered once), every Megatron key fed, shapes agree."""
    problems = []
    by_key = {g["key"]: g for g in tens}
    rows = mapping(cfg)
    used = {}
    fed = {}
    for mkey, idx, hname, rr, _ in rows:
        if hname not in header:
            problems.append(f"HF tensor missing: {hname}")
            continue
        dt, shp = header[hname]
        n0 = shp[0] if shp else 1
        a, b = rr if rr else (0, n0)
        used.setdefault(hname, []).append((a, b))
        g = by_key.get(mkey)
        if g is None:
            problems.append(f"Megatron key missing: {mkey}")
            continue
        sub = g["shape"][g["pre"]:]
        piece = [b - a] + shp[1:]
        if list(sub[1:]) != list(piece[1:]):
            problems.append(f"{mkey} {g['shape']} vs {hname}{shp} rows {a}:{b}")
        f = fed.setdefault((mkey, idx), 0)
        fed[(mkey, idx)] = f + (b - a)
        if g["dtype"] != dt and not (dt == "bf16" and g["dtype"] == "bf16"):
            pass  # dtypes are reported, not required to agree
    for hname, (dt, shp) in header.items():
        spans = sorted(used.get(hname, []))
        n0 = shp[0] if shp else 1
        pos = 0
        for a, b in spans:
            if a != pos:
                problems.append(f"{hname}: rows {pos}:{a} unused or overlapping")
            pos = b
        if pos != n0:
            problems.append(f"{hname}: rows covered up to {pos} of {n0}")
    for g in tens:
        pre = g["pre"]
        n_index = 1
        for d in g["shape"][:pre]:
            n_index *= d
        want = g["shape"][pre] if len(g["shape"]) > pre else 1
        idxs = [None] if pre == 0 else list(range(n_index))
        for i in idxs:
            if fed.get((g["key"], i)) != want:
                problems.append(f"{g['key']}[{i}]: fed {fed.get((g['key'], i))} rows of {want}")
    return problems


# ------------------------------------------------------------------------------------------------
# numeric check of the mapping (world size 1)

HF_FORWARD = r"""
import sys, json, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
m.eval()
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    out = m(input_ids=ids, use_cache=False).logits
torch.save(out, sys.argv[3])
"""


def forward_check(fixture: str, cfg: dict, tmp: Path) -> dict:
    """Copy HF weights (fp32) into a fp32 Megatron model through the mapping, compare logits."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    ids = [[(7 * i + 3) % cfg["vocab_size"] for i in range(19)],
           [(11 * i + 5) % cfg["vocab_size"] for i in range(19)]]
    ref_path = tmp / f"{fixture}-hf-logits.pt"
    env = dict(os.environ, PYTHONPATH="")  # transformers without the stand-in on sys.path
    subprocess.run([sys.executable, "-c", HF_FORWARD, str(hf_dir(fixture)), json.dumps(ids),
                    str(ref_path)], check=True, env=env)
    ref = torch.load(ref_path)

    torch.manual_seed(0)
    model = build_model(cfg, dtype=torch.float32, float16_module=False)
    model.eval()
    hf = {k: v.float() for k, v in hf_tensors(fixture).items()}
    rows = mapping(cfg)
    # the global tensor each Megatron key is assembled from (prepended axis = expert index)
    pieces = {}
    for mkey, idx, hname, rr, _ in rows:
        t = hf[hname] if rr is None else hf[hname][rr[0]:rr[1]]
        pieces.setdefault(mkey, {}).setdefault(idx, []).append(t)
    glob = {}
    for mkey, d in pieces.items():
        if list(d) == [None]:
            glob[mkey] = torch.cat(d[None], 0)
        else:
            glob[mkey] = torch.stack([torch.cat(d[i], 0) for i in sorted(d)], 0)
    with torch.no_grad():  # NaN everywhere: anything the sharded views miss shows up below
        for t in list(model.parameters()) + [b for n, b in model.named_buffers()
                                             if n.endswith("expert_bias")]:
            t.fill_(float("nan"))
    sd = E.model_sharded_state_dict(model)
    written = set()

    def put(sh):
        g = glob[sh.key]
        sl = tuple(slice(o, o + n) for o, n in zip(sh.global_offset, (1,) * sh.prepend_axis_num
                                                   + tuple(sh.local_shape)))
        src = g[sl].reshape(sh.local_shape) if sh.prepend_axis_num else g[sl]
        with torch.no_grad():
            sh.data.copy_(src)  # sh.data is a view of the parameter (also for factory chunks)
        written.add((sh.key, tuple(sh.global_offset)))

    def flat(x):
        if isinstance(x, dict):
            for v in x.values():
                yield from flat(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                yield from flat(v)
        else:
            yield x

    for v in sd.values():
        for x in flat(v):
            if isinstance(x, ShardedTensorFactory):
                for sh in flat(x.build()):
                    put(sh)
            elif isinstance(x, ShardedTensor):
                put(x)
    # every parameter and persistent buffer reached through the sharded state dict?
    missed = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
              if t.is_floating_point() and torch.isnan(t).any()]
    assert not missed, f"not covered by the sharded state dict: {missed}"
    n_params = sum(1 for _ in model.named_parameters()) + sum(
        1 for n, _ in model.named_buffers() if n.endswith("expert_bias"))
    ids_t = torch.tensor(ids)
    pos = torch.arange(ids_t.shape[1]).unsqueeze(0).expand_as(ids_t)
    # explicit causal mask (True = masked): the default one is built on device="cuda"
    s_len = ids_t.shape[1]
    mask = torch.triu(torch.ones(s_len, s_len, dtype=torch.bool), diagonal=1)[None, None]
    with torch.no_grad():
        out = model(input_ids=ids_t, position_ids=pos, attention_mask=mask)
    logits = out.float()
    if logits.shape != ref.shape:
        logits = logits.transpose(0, 1) if logits.transpose(0, 1).shape == ref.shape else logits
    err = (logits - ref).abs().max().item()
    return {"max_abs_logit_diff_vs_hf": float(f"{err:.3g}"),
            "hf_logit_abs_max": float(f"{ref.abs().max().item():.3g}"),
            "shards_written": len(written), "params_and_expert_bias": n_params,
            "tokens": list(ids_t.shape)}


# ------------------------------------------------------------------------------------------------
# stages

def ws2_layout(cfg: dict) -> tuple[str, int, int]:
    return ("ep2", 1, 2) if "E" in hf_pattern(cfg) else ("tp2", 2, 1)


def unwrapped_dtypes(cfg: dict) -> dict:
    """dtypes of the non-bf16 parameters/persistent buffers when HybridModel is NOT wrapped in
    Float16Module (params_dtype bf16); layer index replaced by N."""
    import re

    m = build_model(cfg, float16_module=False)
    out = {}
    sd = m.state_dict()
    for n, t in sd.items():
        if isinstance(t, torch.Tensor) and t.dtype != torch.bfloat16:
            out[re.sub(r"layers\.\d+\.", "layers.N.", n)] = DT.get(t.dtype, str(t.dtype))
    return dict(sorted(out.items()))


def ws1(fixtures: list, out: Path, forward: bool, tmp: Path) -> dict:
    E.init_distributed(0, 1, f"tcp://127.0.0.1:{E.free_port()}")
    E.init_model_parallel(1, 1)
    results = {}
    for fx in fixtures:
        cfg = hf_config(fx)
        torch.manual_seed(1234)
        model = build_model(cfg)
        tens, objs = group_records(sharded_records(model, 0))
        header = {"fixture": fx, "pattern": hf_pattern(cfg), "world_size": 1, "tp": 1, "ep": 1,
                  "model": "HybridModel(local hybrid_stack_spec) in Float16Module(bf16)",
                  "vocab_size": cfg["vocab_size"],
                  "dtypes_without_Float16Module": unwrapped_dtypes(cfg)}
        hdr = hf_header(fx)
        problems = check_mapping(cfg, hdr, tens)
        write_ws1_json(out / f"{fx}-ws1.json", header, tens, objs, hdr, hf_sources(cfg))
        res = {"tensors": len(tens), "objects": len(objs), "mapping_problems": problems}
        if forward:
            res["forward"] = forward_check(fx, cfg, tmp)
        results[fx] = res
        print(f"  {fx}: ws1 {len(tens)} tensor keys, {len(objs)} object keys; "
              f"mapping problems: {len(problems)}; forward: {res.get('forward')}", flush=True)
        for p in problems:
            print("    ", p)
    torch.distributed.destroy_process_group()
    return results


def ws2_worker(rank: int, world: int, init_method: str, fixtures: list, out: str):
    E.init_distributed(rank, world, init_method)
    for fx in fixtures:
        cfg = hf_config(fx)
        tag, tp, ep = ws2_layout(cfg)
        E.init_model_parallel(tp, ep)
        torch.manual_seed(1234)
        model = build_model(cfg)
        recs = sharded_records(model, rank)
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, recs)
        if rank == 0:
            tens, objs = group_records([r for g in gathered for r in g])
            header = {"fixture": fx, "pattern": hf_pattern(cfg), "world_size": world, "tp": tp,
                      "ep": ep, "dp": world // (tp * 1),
                      "model": "HybridModel(local hybrid_stack_spec) in Float16Module(bf16)",
                      "vocab_size": cfg["vocab_size"]}
            write_ws2_json(Path(out) / f"{fx}-{tag}.json", header, tens, objs,
                           Path(out) / f"{fx}-ws1.json")
            print(f"  {fx}: {tag} {len(tens)} tensor keys, {len(objs)} object keys", flush=True)
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "TestCheckpoints/hybrid-keys"))
    ap.add_argument("--fixtures", nargs="*", default=FIXTURES)
    ap.add_argument("--no-forward", action="store_true")
    ap.add_argument("--results", help="also write the ws1 check results (JSON) here")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        res = ws1(a.fixtures, out, not a.no_forward, Path(tmp))
    init_method = f"tcp://127.0.0.1:{E.free_port()}"
    torch.multiprocessing.spawn(ws2_worker, args=(2, init_method, a.fixtures, str(out)),
                                nprocs=2, join=True)
    if a.results:
        Path(a.results).write_text(json.dumps(res, indent=1) + "\n")
    bad = [fx for fx, r in res.items() if r["mapping_problems"]]
    if bad:
        sys.exit(f"mapping problems in {bad}")


if __name__ == "__main__":
    main()

"""Nemotron-H / Nemotron 3 (hybrid Mamba + attention + MLP/MoE) against real Megatron-Core
(0.19.2, CPU, gloo) and real transformers (5.23, NemotronHForCausalLM).

Fixtures: nemotron-h-tiny (pattern M*M-, dense) and nemotron3-moe-tiny (MEM*EME, 8 experts top-2,
shared expert, sigmoid router with fp32 e_score_correction_bias).

(a) `nembridge import --spec local`, then a REAL Megatron-Core HybridModel loads it strictly
    (NaN-filled first; dist_checkpointing.load(strict=RAISE_ALL) + load_state_dict(strict=True))
    at world size 1 and at world size 2 (TP=2 for the dense fixture, EP=2 for the MoE one). The
    model is built from the HF config.json by tools/hybrid/hybrid_keys.py's machinery (local
    hybrid_stack_spec, SequentialMLP experts, Float16Module bf16; see tools/hybrid/hybrid_load.py)
    with the checkpoint's padded vocabulary (args.padded_vocab_size, 1024 = 1000 rounded up to
    a multiple of 128). Every loaded parameter/buffer equals, byte for byte, an independent
    Python mapping of the HF safetensors (below; no nembridge or hybrid_keys code).
(b) the fp32 Megatron forward (pure-PyTorch mamba_ssm stand-in) equals transformers' fp32
    NemotronHForCausalLM logits on the first vocab_size columns within float noise; the padded
    columns are exactly zero.
(c) HF -> import -> export is byte-identical for every source file (at --ep 1, and at --ep 2/4
    for the MoE fixture); `nembridge verify` passes HF<->Megatron both ways.
(d) bad input exits 1 with a clear message and leaves nothing behind.

All Megatron work runs in ONE tools/hybrid/hybrid_load.py call.
"""
from __future__ import annotations

import functools
import io
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import ROOT, hf_dir
from rank_tensors import raw_mismatch

HYBRID_LOAD = ROOT / "tools" / "hybrid" / "hybrid_load.py"
PYTHON = sys.executable
TIMEOUT = 600

# fixture -> world-size-2 layout (tp, ep). The dialects/ fixtures carry the config.json field
# sets as published on the hub (tools/fixtures/make_dialect_fixtures.py): no MoE fields in the
# dense ones, `hybrid_override_pattern` strings, `attention_head_dim`, `torch_dtype`, `norm_eps`,
# safetensors headers without `__metadata__`, `mtp_hybrid_override_pattern`.
DIALECTS = {"dialects/nemotron-h-8b": (2, 1), "dialects/nemotron-nano-9b-v2": (2, 1),
            "dialects/nemotron3-nano-30b-a3b": (1, 2)}
FIXTURES = {"nemotron-h-tiny": (2, 1), "nemotron3-moe-tiny": (1, 2), **DIALECTS}
MOE = "nemotron3-moe-tiny"
SUPER = "nemotron3-super-tiny"          # LatentMoE + MTP (tools/fixtures/make_super_fixture.py)
SUPER_LATENT = "nemotron3-super-tiny-no-mtp"  # derived: mtp.* dropped, num_nextn_predict_layers 0
SUPER_DIALECT = "dialects/nemotron3-super-120b-a12b"
SUPER_SOURCES = {SUPER_LATENT: (1, 2), SUPER: (1, 2), SUPER_DIALECT: (1, 2)}
LAYOUT = {**FIXTURES, **SUPER_SOURCES}
SUPER_KEYS = ROOT / "TestCheckpoints" / "hybrid-keys" / f"{SUPER}-ws1.json"
# Megatron-Core runs; world-size-2 jobs of sources expected to fail come last (a failing rank
# stops its process)
RUNS = [(n, ws) for n in FIXTURES for ws in (1, 2)] + [(n, ws) for n in SUPER_SOURCES
                                                         for ws in (1, 2)]


def _case(n, ws):
    return pytest.param(n, ws, id=f"{n}-ws{ws}")


CASES = [_case(n, ws) for n, ws in RUNS]
_DERIVED: list[Path] = []  # set by the session fixture `derived_root`
DIVISIBLE_BY = 128
BATCH, SEQ = 2, 24
LOGITS_RTOL = 1e-4  # max |megatron - hf| <= LOGITS_RTOL * max |hf logits|
SYMBOL = {"mamba": "M", "linear_attention": "M", "attention": "*", "full_attention": "*",
          "mlp": "-", "moe": "E"}


# ------------------------------------------------------------------------------------------------
# independent reading of the HF side

def src_dir(name: str) -> Path:
    """The HF folder of a fixture or of the derived latent-only Super copy."""
    if name != SUPER_LATENT:
        return hf_dir(name)
    d = _DERIVED[0] / name
    if not d.exists():
        shutil.copytree(hf_dir(SUPER), d)
        cfg = json.loads((d / "config.json").read_text())
        cfg["num_nextn_predict_layers"] = 0
        (d / "config.json").write_text(json.dumps(cfg, indent=2))
        t = load_file(d / "model.safetensors")
        save_file({k: v for k, v in t.items() if not k.startswith("mtp.")},
                  d / "model.safetensors", metadata={"format": "pt"})
    return d


@pytest.fixture(scope="session", autouse=True)
def derived_root(tmp_path_factory):
    _DERIVED[:] = [tmp_path_factory.mktemp("hybrid-derived")]
    yield _DERIVED[0]
    _DERIVED.clear()


def hf_config(name: str) -> dict:
    return json.loads((src_dir(name) / "config.json").read_text())


def pattern(cfg: dict) -> str:
    return cfg.get("hybrid_override_pattern") or "".join(SYMBOL[t]
                                                         for t in cfg["layers_block_type"])


@functools.lru_cache(maxsize=None)
def hf_tensors(name: str) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(src_dir(name).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def padded_vocab(vocab: int) -> int:
    return int(math.ceil(vocab / DIVISIBLE_BY) * DIVISIBLE_BY)


@functools.lru_cache(maxsize=None)
def expected_full(name: str) -> dict[str, torch.Tensor]:
    """The full (unsharded) Megatron-Core in-memory state dict of the HF model, local spec
    (separate norms), written out from the Nemotron-H layer definitions:
      M: norm.weight = HF norm; mixer.in_proj.weight = HF in_proj (rows z|x|B|C|dt);
         mixer.conv1d_weight/_bias = HF conv1d (rows x|B|C); A_log, D, dt_bias, mixer norm,
         out_proj as is;
      *: input_layernorm = HF norm; linear_qkv = per KV group [q heads of the group; k; v];
         linear_proj = o_proj;
      -: pre_mlp_layernorm = HF norm; linear_fc1 = up_proj; linear_fc2 = down_proj;
      E: pre_mlp_layernorm = HF norm; router.weight = gate.weight; router.expert_bias =
         gate.e_score_correction_bias; experts.<e>.linear_fc{1,2} = experts.<e>.{up,down}_proj
         (GLOBAL expert e; key `mlp.experts.local_experts.{e}` here); shared_experts.*;
         LatentMoE: mlp.fc{1,2}_latent_proj = mixer.fc{1,2}_latent_proj (experts in latent space);
      embedding/output rows zero-padded to the padded vocabulary; final_norm = norm_f;
      MTP (one repeated Megatron layer): mtp.layers.0.{enorm,hnorm,eh_proj} = HF mtp.layers.0.*,
         mtp.layers.0.final_layernorm = HF mtp.layers.<Lp-1>.final_layernorm,
         mtp.layers.0.mtp_model_layer.layers.<i>.<as above> = HF mtp.layers.<i>.<as above>."""
    cfg, hf = hf_config(name), hf_tensors(name)
    V, P = cfg["vocab_size"], padded_vocab(cfg["vocab_size"])
    used = set()

    class Reader(dict):
        def __getitem__(self, k):
            used.add(k)
            return hf[k]

    W = Reader(hf)

    def pad(t):
        assert t.shape[0] == V
        return torch.cat([t, torch.zeros((P - V, *t.shape[1:]), dtype=t.dtype)])

    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg.get("attention_head_dim") or cfg["hidden_size"] // nh
    out = {"embedding.word_embeddings.weight": pad(W["backbone.embeddings.weight"]),
           "decoder.final_norm.weight": W["backbone.norm_f.weight"],
           "output_layer.weight": pad(W["lm_head.weight"])}

    def layer(kind: str, m: str, h: str):
        if kind == "M":
            out[m + "norm.weight"] = W[h + "norm.weight"]
            out[m + "mixer.in_proj.weight"] = W[h + "mixer.in_proj.weight"]
            out[m + "mixer.conv1d_weight"] = W[h + "mixer.conv1d.weight"]
            out[m + "mixer.conv1d_bias"] = W[h + "mixer.conv1d.bias"]
            for p in ("A_log", "D", "dt_bias", "norm.weight", "out_proj.weight"):
                out[m + "mixer." + p] = W[h + "mixer." + p]
        elif kind == "*":
            q, k, v = (W[h + f"mixer.{p}_proj.weight"] for p in "qkv")
            per = nh // nkv
            rows = []
            for g in range(nkv):
                rows += [q[g * per * hd:(g + 1) * per * hd], k[g * hd:(g + 1) * hd],
                         v[g * hd:(g + 1) * hd]]
            out[m + "input_layernorm.weight"] = W[h + "norm.weight"]
            out[m + "self_attention.linear_qkv.weight"] = torch.cat(rows)
            out[m + "self_attention.linear_proj.weight"] = W[h + "mixer.o_proj.weight"]
        elif kind == "-":
            out[m + "pre_mlp_layernorm.weight"] = W[h + "norm.weight"]
            out[m + "mlp.linear_fc1.weight"] = W[h + "mixer.up_proj.weight"]
            out[m + "mlp.linear_fc2.weight"] = W[h + "mixer.down_proj.weight"]
        elif kind == "E":
            out[m + "pre_mlp_layernorm.weight"] = W[h + "norm.weight"]
            out[m + "mlp.router.weight"] = W[h + "mixer.gate.weight"]
            out[m + "mlp.router.expert_bias"] = W[h + "mixer.gate.e_score_correction_bias"]
            for e in range(cfg["n_routed_experts"]):
                out[m + f"mlp.experts.local_experts.{e}.linear_fc1.weight"] = \
                    W[h + f"mixer.experts.{e}.up_proj.weight"]
                out[m + f"mlp.experts.local_experts.{e}.linear_fc2.weight"] = \
                    W[h + f"mixer.experts.{e}.down_proj.weight"]
            for a, b in (("linear_fc1", "up_proj"), ("linear_fc2", "down_proj")):
                out[m + f"mlp.shared_experts.{a}.weight"] = W[h + f"mixer.shared_experts.{b}.weight"]
            if cfg.get("moe_latent_size"):
                for p in ("fc1_latent_proj", "fc2_latent_proj"):
                    out[m + f"mlp.{p}.weight"] = W[h + f"mixer.{p}.weight"]
        else:
            raise ValueError(kind)

    for n, kind in enumerate(pattern(cfg)):
        layer(kind, f"decoder.layers.{n}.", f"backbone.layers.{n}.")
    if int(cfg.get("num_nextn_predict_layers") or 0):
        # one (repeated) Megatron MTP layer; HF flattens depth d, position i to d*Lp+i (d = 0)
        mp = cfg.get("mtp_hybrid_override_pattern") or \
            "".join(SYMBOL[t] for t in cfg["mtp_layers_block_type"])
        for p in ("enorm", "hnorm", "eh_proj"):
            out[f"mtp.layers.0.{p}.weight"] = W[f"mtp.layers.0.{p}.weight"]
        for i, kind in enumerate(mp):
            layer(kind, f"mtp.layers.0.mtp_model_layer.layers.{i}.", f"mtp.layers.{i}.")
        out["mtp.layers.0.final_layernorm.weight"] = W[f"mtp.layers.{len(mp) - 1}.final_layernorm.weight"]
    unused = set(W) - used
    assert not unused, f"HF tensors the expected mapping does not use: {sorted(unused)}"
    return out


def expected_rank(name: str, tp: int, tp_rank: int, ep: int, ep_rank: int) -> dict:
    """What the local-spec HybridModel holds on one (tp_rank, ep_rank)."""
    cfg = hf_config(name)
    d_in = cfg["mamba_num_heads"] * cfg["mamba_head_dim"]
    d_ssm = cfg["n_groups"] * cfg["ssm_state_size"]
    nhm = cfg["mamba_num_heads"]

    def ch(t, dim=0):
        return t.chunk(tp, dim=dim)[tp_rank] if tp > 1 else t

    def parts(t, sizes):
        out, a = [], 0
        for s in sizes:
            out.append(ch(t[a:a + s]))
            a += s
        assert a == t.shape[0]
        return torch.cat(out)

    out = {}
    E = cfg.get("n_routed_experts") or 0
    for k, t in expected_full(name).items():
        leaf = k.split(".")
        if ".local_experts." in k:
            e = int(leaf[leaf.index("local_experts") + 1])
            per = E // ep
            if e // per != ep_rank:
                continue
            k = k.replace(f"local_experts.{e}.", f"local_experts.{e - ep_rank * per}.")
            t = ch(t, 0 if k.endswith("linear_fc1.weight") else 1)  # ETP = TP here
        elif k.endswith("mixer.in_proj.weight"):
            t = parts(t, (d_in, d_in, d_ssm, d_ssm, nhm))
        elif k.endswith(("mixer.conv1d_weight", "mixer.conv1d_bias")):
            t = parts(t, (d_in, d_ssm, d_ssm))
        elif k.endswith(("out_proj.weight", "linear_proj.weight", "linear_fc2.weight")):
            t = ch(t, 1)
        elif k.endswith(("mixer.A_log", "mixer.D", "mixer.dt_bias", "mixer.norm.weight",
                         "linear_qkv.weight", "linear_fc1.weight", "word_embeddings.weight",
                         "output_layer.weight")):
            t = ch(t, 0)
        # norms, router, expert_bias, latent projections: replicated
        out[k] = t
    return out


def token_ids(vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(20240611)
    return torch.randint(0, vocab, (BATCH, SEQ), generator=g)


@functools.lru_cache(maxsize=None)
def hf_logits(name: str) -> torch.Tensor:
    """transformers' fp32 forward (its own PyTorch Mamba path; no stand-in on sys.path here)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src_dir(name), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=token_ids(hf_config(name)["vocab_size"]),
                     use_cache=False).logits.float()


# ------------------------------------------------------------------------------------------------
# checkpoint side

def ckpt_dir(out: Path) -> Path:
    it = (out / "latest_checkpointed_iteration.txt").read_text().strip()
    return out / ("release" if it == "release" else f"iter_{int(it):07d}")


def read_common_args(d: Path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    sd = {"common_state/shard_0_1": io.BytesIO()}
    with warnings.catch_warnings():  # "torch.distributed is disabled ...": intended here
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(sd, storage_reader=FileSystemReader(str(d)), no_dist=True)
    v = sd["common_state/shard_0_1"]
    if isinstance(v, io.BytesIO):
        v = torch.load(io.BytesIO(v.getvalue()), weights_only=False)
    return v[0]["args"]


@pytest.fixture(scope="session")
def imported(nembridge, tmp_path_factory) -> dict[str, Path | str]:
    """name -> checkpoint folder; for a Super source whose import fails: the error text."""
    root = tmp_path_factory.mktemp("hybrid-import")
    outs = {}
    for name in LAYOUT:
        out = root / name.replace("/", "-")
        r = nembridge.run("import", "--hf", src_dir(name), "--out", out, "--spec", "local")
        if name in FIXTURES:
            r.ok()
        outs[name] = out if r.returncode == 0 else f"import exited {r.returncode}: " \
                                                            f"{r.stderr.strip()[:3000]}"
    return outs


def import_ok(imported, name: str) -> Path:
    out = imported[name]
    assert isinstance(out, Path), f"nembridge import --hf {name}: {out}"
    return out


@pytest.fixture(scope="session")
def megatron(imported, tmp_path_factory) -> dict[tuple[str, int], list[dict]]:
    """(fixture, world size) -> per-rank results of hybrid_load.py (one subprocess)."""
    work = tmp_path_factory.mktemp("hybrid-load")
    jobs = []
    runs = [(n, ws) for n, ws in RUNS if isinstance(imported[n], Path)]
    for name, ws in runs:
        tp, ep = LAYOUT[name] if ws == 2 else (1, 1)
        args = read_common_args(ckpt_dir(imported[name]))
        jobs.append({"hf": str(src_dir(name)), "checkpoint": str(ckpt_dir(imported[name])),
                     "world_size": ws, "tp": tp, "ep": ep,
                     "padded_vocab": args.padded_vocab_size,
                     "tokens": token_ids(hf_config(name)["vocab_size"]).tolist(),
                     "dump": str(work / f"{name.replace('/', '-')}.ws{ws}.pt")})
    (work / "jobs.json").write_text(json.dumps(jobs))
    env = dict(os.environ, PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    p = subprocess.run([PYTHON, str(HYBRID_LOAD), "--jobs", str(work / "jobs.json")],
                       capture_output=True, text=True, timeout=TIMEOUT, env=env)
    results = {}
    for j, (name, ws) in zip(jobs, runs):
        d = Path(j["dump"])
        files = [d] if ws == 1 else [d.with_name(f"{d.stem}.rank{r}{d.suffix}") for r in (0, 1)]
        if not all(f.exists() for f in files):
            raise AssertionError(f"hybrid_load.py exited {p.returncode} without results\n"
                                 f"--- stdout ---\n{p.stdout[-4000:]}\n"
                                 f"--- stderr ---\n{p.stderr[-8000:]}")
        results[(name, ws)] = [torch.load(f, weights_only=False) for f in files]
    return results


def loaded(megatron, name: str, ws: int, imported=None) -> list[dict]:
    if (name, ws) not in megatron:
        import_ok(imported, name)
    res = megatron[(name, ws)]
    for r, x in enumerate(res):
        assert x["ok"], f"Megatron-Core could not load {name} at world size {ws} (rank {r}):\n" \
                        f"{x['error']}"
    return res


# ------------------------------------------------------------------------------------------------
# (a) strict load + bit-exact

@pytest.mark.parametrize("name", [*FIXTURES, SUPER_LATENT, SUPER_DIALECT])
def test_common_state_args_describe_hf_config(imported, name):
    cfg = hf_config(name)
    a = read_common_args(ckpt_dir(import_ok(imported, name)))
    want = {"num_layers": len(pattern(cfg)), "hidden_size": cfg["hidden_size"],
            "hybrid_override_pattern": pattern(cfg), "vocab_size": cfg["vocab_size"],
            "padded_vocab_size": padded_vocab(cfg["vocab_size"]),
            "mamba_num_heads": cfg["mamba_num_heads"], "mamba_head_dim": cfg["mamba_head_dim"],
            "mamba_num_groups": cfg["n_groups"], "mamba_state_dim": cfg["ssm_state_size"],
            "num_attention_heads": cfg["num_attention_heads"],
            "num_query_groups": cfg["num_key_value_heads"], "squared_relu": True,
            "swiglu": False, "position_embedding_type": "none", "normalization": "RMSNorm",
            "untie_embeddings_and_output_weights": True, "transformer_impl": "local"}
    if "E" in pattern(cfg):
        want.update(num_moe_experts=cfg["n_routed_experts"],
                    moe_router_topk=cfg["num_experts_per_tok"],
                    moe_ffn_hidden_size=cfg["moe_intermediate_size"],
                    moe_shared_expert_intermediate_size=cfg["moe_shared_expert_intermediate_size"],
                    moe_router_topk_scaling_factor=cfg["routed_scaling_factor"],
                    moe_router_score_function="sigmoid", moe_router_enable_expert_bias=True,
                    moe_router_dtype="fp32", moe_latent_size=cfg.get("moe_latent_size"))
    else:  # a dense model: no MoE, whatever MoE defaults its config.json carries
        want.update(num_moe_experts=None, moe_ffn_hidden_size=None, moe_router_topk=None,
                    moe_latent_size=None)
    got = {k: getattr(a, k, "<missing>") for k in want}
    assert got == want, {k: (got[k], want[k]) for k in want if got[k] != want[k]}


@pytest.mark.parametrize("name,ws", CASES)
def test_megatron_loads_strictly(imported, megatron, name, ws):
    res = loaded(megatron, name, ws, imported)
    tp, ep = LAYOUT[name] if ws == 2 else (1, 1)
    for r, x in enumerate(res):
        assert (x["tp"], x["ep"]) == (tp, ep)
        assert x["nan_after_load"] == [], f"rank {r}: not filled by the load: {x['nan_after_load']}"
        exp = expected_rank(name, tp, x["tp_rank"], ep, x["ep_rank"])
        assert set(x["state"]) == set(exp), (
            f"rank {r}: only in Megatron {sorted(set(x['state']) - set(exp))}, "
            f"only expected {sorted(set(exp) - set(x['state']))}")


@pytest.mark.parametrize("name,ws", CASES)
def test_loaded_parameters_bit_identical_to_hf_mapping(imported, megatron, name, ws):
    res = loaded(megatron, name, ws, imported)
    tp, ep = LAYOUT[name] if ws == 2 else (1, 1)
    problems = []
    for r, x in enumerate(res):
        exp = expected_rank(name, tp, x["tp_rank"], ep, x["ep_rank"])
        for k in sorted(exp):
            m = raw_mismatch(k, x["state"][k], exp[k])
            if m:
                problems.append(f"rank {r}: {m}")
    assert not problems, "\n".join(problems)
    if ws == 2:  # the two ranks hold different shards (TP slices / EP experts)
        assert {(x["tp_rank"], x["ep_rank"]) for x in res} == \
            ({(0, 0), (1, 0)} if tp == 2 else {(0, 0), (0, 1)})


# ------------------------------------------------------------------------------------------------
# (b) logits

@pytest.mark.parametrize("name,ws", CASES)
def test_megatron_logits_match_transformers(imported, megatron, name, ws, record_property):
    """For MTP models the main-model logits (transformers has no MTP module)."""
    res = loaded(megatron, name, ws, imported)
    V = hf_config(name)["vocab_size"]
    ref = hf_logits(name)
    for r, x in enumerate(res):
        meg = x["logits"]
        assert meg.shape == (BATCH, SEQ, padded_vocab(V)), meg.shape
        assert torch.count_nonzero(meg[..., V:]) == 0, "padded vocabulary logits are not zero"
        diff, scale = float((meg[..., :V] - ref).abs().max()), float(ref.abs().max())
        record_property(f"rank{r}_max_abs_diff", diff)
        print(f"\n{name} ws{ws} rank {r}: max |megatron - transformers| = {diff:.3e} "
              f"(max |logit| {scale:.3f})")
        assert diff <= LOGITS_RTOL * scale, f"{diff:.3e} > {LOGITS_RTOL} x {scale:.3f}"
    if ws > 1:
        assert torch.equal(res[0]["logits"], res[1]["logits"])


# ------------------------------------------------------------------------------------------------
# Super (LatentMoE + MTP) against the real Megatron-Core key list (tools/hybrid/super_keys.py)

def super_ground_truth(with_mtp: bool) -> tuple[dict, set]:
    """{tensor key: (shape, dtype)}, {object key} of the Megatron-Core HybridModel (ws1)."""
    d = json.loads(SUPER_KEYS.read_text())
    dt = {"bf16": torch.bfloat16, "f32": torch.float32}
    keep = (lambda k: True) if with_mtp else (lambda k: not k.startswith("mtp."))
    tens = {r[0]: (tuple(r[2]), dt[r[1]]) for r in d["tensors"] if keep(r[0])}
    objs = {r[0] for r in d["objects"] if keep(r[0])}
    return tens, objs


def checkpoint_keys(out: Path) -> tuple[dict, set]:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    md = FileSystemReader(str(ckpt_dir(out))).read_metadata().state_dict_metadata
    tens = {k: (tuple(m.size), m.properties.dtype) for k, m in md.items()
            if isinstance(m, TensorStorageMetadata)}
    objs = {k.rsplit("/", 1)[0] for k, m in md.items()
            if not isinstance(m, TensorStorageMetadata) and k != "common_state/shard_0_1"}
    return tens, objs


def _diff(got: dict | set, want: dict | set) -> str:
    lines = [f"missing (Megatron has, nembridge lacks): {sorted(set(want) - set(got))}",
             f"unexpected (nembridge writes, Megatron lacks): {sorted(set(got) - set(want))}"]
    if isinstance(got, dict):
        lines.append("differ: " + str({k: (got[k], want[k]) for k in set(got) & set(want)
                                       if got[k] != want[k]}))
    return "\n".join(lines)


def test_super_latent_tensor_keys_shapes_dtypes_match_megatron(imported):
    got, _ = checkpoint_keys(import_ok(imported, SUPER_LATENT))
    want, _ = super_ground_truth(with_mtp=False)
    assert got == want, _diff(got, want)


def test_super_latent_object_keys_match_megatron(imported):
    _, got = checkpoint_keys(import_ok(imported, SUPER_LATENT))
    _, want = super_ground_truth(with_mtp=False)
    assert got == want, _diff(got, want)


def test_super_mtp_keys_match_megatron(imported):
    got_t, got_o = checkpoint_keys(import_ok(imported, SUPER))
    want_t, want_o = super_ground_truth(with_mtp=True)
    assert got_t == want_t, _diff(got_t, want_t)
    assert got_o == want_o, _diff(got_o, want_o)


# ------------------------------------------------------------------------------------------------
# (c) round trip + verify

ROUND_TRIPS = [pytest.param(n, spec, ep, id=f"{n}-{spec}-ep{ep}")
               for n in [*FIXTURES, SUPER_DIALECT] for spec in ("local", "te") for ep in (1,)] + \
              [pytest.param(MOE, "te", ep, id=f"{MOE}-te-ep{ep}") for ep in (2, 4)]


@pytest.mark.parametrize("name,spec,ep", ROUND_TRIPS)
def test_round_trip_byte_identical_and_verify(nembridge, tmp_path, name, spec, ep):
    src = hf_dir(name)
    meg, back = tmp_path / "meg", tmp_path / "back"
    nembridge.run("import", "--hf", src, "--out", meg, "--spec", spec, "--ep", ep).ok()
    nembridge.run("export", "--megatron", meg, "--out", back).ok()
    src_files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
    back_files = sorted(p.relative_to(back) for p in back.rglob("*") if p.is_file())
    assert set(back_files) - set(src_files) <= {Path("nembridge-manifest.json")}, back_files
    for f in src_files:
        assert (back / f).is_file(), f"export did not write {f}"
        assert (back / f).read_bytes() == (src / f).read_bytes(), f"{f} differs after round trip"
    nembridge.run("verify", src, meg).ok()
    nembridge.run("verify", meg, src).ok()
    nembridge.run("verify", back).ok()  # its own manifest


# ------------------------------------------------------------------------------------------------
# (d) bad input

def _copy(tmp_path: Path, name: str) -> Path:
    src = tmp_path / "src"
    shutil.copytree(hf_dir(name), src)
    return src


def _fails_cleanly(nembridge, src: Path, tmp_path: Path, *extra) -> str:
    parent = tmp_path / "parent"
    parent.mkdir()
    out = parent / "out"
    res = nembridge.run("import", "--hf", src, "--out", out, *extra)
    assert res.returncode == 1, (res.returncode, res.stderr, res.stdout[:2000])
    assert res.stderr.strip(), "no error message"
    assert not out.exists() and list(parent.iterdir()) == [], list(parent.iterdir())
    return res.stderr


def test_pattern_length_disagrees_with_num_hidden_layers(nembridge, tmp_path):
    src = _copy(tmp_path, MOE)
    cfg = json.loads((src / "config.json").read_text())
    assert len(cfg["layers_block_type"]) == 7
    cfg["num_hidden_layers"] = 6
    (src / "config.json").write_text(json.dumps(cfg, indent=2))
    err = _fails_cleanly(nembridge, src, tmp_path)
    assert "7 layers" in err and "6" in err and "config.json" in err, err


def test_missing_expert_tensor_named(nembridge, tmp_path):
    src = _copy(tmp_path, MOE)
    f = src / "model.safetensors"
    t = load_file(f)
    gone = "backbone.layers.1.mixer.experts.3.up_proj.weight"
    del t[gone]
    save_file(t, f, metadata={"format": "pt"})
    err = _fails_cleanly(nembridge, src, tmp_path)
    assert gone in err and "missing" in err, err


def test_ep_not_dividing_experts(nembridge, tmp_path):
    err = _fails_cleanly(nembridge, hf_dir(MOE), tmp_path, "--ep", "3")
    assert "--ep 3" in err and "8" in err, err

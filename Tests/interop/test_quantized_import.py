"""`nembridge import` of quantized Hugging Face folders (issue 15, import half) against torch,
transformers' own dequantization and real Megatron-Core (0.19.2, CPU, gloo).

Fixtures: TestCheckpoints/quantized/ (tools/fixtures/make_quantized_fixtures.py): block FP8 Llama
with ragged [48, 40] blocks, ModelOpt FP8 Llama (input/k/v scales), ModelOpt NVFP4 and
MIXED_PRECISION (FP8 + NVFP4 + bf16) Nemotron-3-Super-shaped hybrids (LatentMoE experts, shared
experts, latent projections, attention, MTP), and Nemotron-3-Nano-shaped hybrids in block FP8
and ModelOpt FP8 (NVIDIA's Nano selection: attention and the Mamba layer feeding it bf16).

- The reference dequantization is computed here in torch from the fixture's bytes:
  `(q.float() * scale).to(bf16)` with block scales expanded per block (ragged edges cut), NVFP4
  through a 16-entry table with `float(weight_scale) * weight_scale_2` multiplied first in fp32.
  It equals transformers 5.23's `Fp8Dequantize._dequantize_one` for every quantized weight.
- Each fixture imported by nembridge equals, byte for byte in every stored tensor (same keys,
  shapes, dtypes), the import of the reference-dequantized bf16 folder (written here with
  safetensors) — at TP 1, and chunked (Llama --tp 2; hybrids --ep 2 --etp 1), and with --dtype
  fp32 / fp16 against a reference dequantized straight to that dtype.
- Real Megatron-Core loads each import strictly (Llama: GPTModel from the checkpoint args, ws 1
  and TP 2; hybrids: HybridModel, ws 1 and EP 2), and the loaded Llama parameters equal an
  independent Python Llama mapping of the reference tensors; the hybrids' loaded state equals the
  loaded state of the reference folder's import.
- transformers loads the bf16 export of each Llama and Nano import, with its weights and its
  logits bit for bit those of the reference-dequantized folder loaded alike.
- Negative zeros stay 0x8000; the companions are consumed (nothing unmapped) and recorded.
- Missing / misshaped / extra scales and exclusion lists disagreeing with the stored dtypes exit
  1 naming the tensor, leaving nothing behind.
"""
from __future__ import annotations

import functools
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import CHECKPOINTS, ROOT
from rank_tensors import raw_mismatch, tp_slice

QDIR = CHECKPOINTS / "quantized"
LLAMA = ["llama3-fp8-block", "llama3-modelopt-fp8"]
HYBRID = ["super-nvfp4", "super-mixed", "nano-fp8-block", "nano-modelopt-fp8"]
# the fixtures transformers 5.23 builds natively (Llama, Nemotron 3 Nano)
TRANSFORMERS = LLAMA + ["nano-fp8-block", "nano-modelopt-fp8"]
FIXTURES = LLAMA + HYBRID
PYTHON = sys.executable
GPT_FROM_ARGS = ROOT / "tools" / "megatron" / "gpt_from_args.py"
HYBRID_LOAD = ROOT / "tools" / "hybrid" / "hybrid_load.py"
TIMEOUT = 900
COMPANIONS = ("weight_scale_inv", "weight_scale_2", "weight_scale", "input_scale", "k_scale", "v_scale")
E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])


def import_flags(name: str) -> list[str]:
    return ["--spec", "local"] if name in HYBRID else []


# ------------------------------------------------------------------------------------------------
# reference dequantization (torch)

@functools.lru_cache(maxsize=None)
def raw(name: str) -> dict[str, torch.Tensor]:
    return load_file(QDIR / name / "model.safetensors")


def qconfig(name: str) -> dict:
    return json.loads((QDIR / name / "config.json").read_text())["quantization_config"]


def expand_blocks(scale: torch.Tensor, rows: int, cols: int, block: list[int]) -> torch.Tensor:
    return scale.repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    low, high = (packed & 0x0F).long(), (packed >> 4).long()
    return torch.stack([E2M1[low], E2M1[high]], dim=-1).reshape(packed.shape[0], -1)


def dequantize_one(t: dict, base: str, dtype: torch.dtype, name: str) -> torch.Tensor:
    q = t[base + ".weight"]
    if q.dtype == torch.uint8:  # NVFP4: the two scales multiplied first, in fp32
        s = (t[base + ".weight_scale"].float() * t[base + ".weight_scale_2"]).repeat_interleave(16, 1)
        return (unpack_e2m1(q) * s).to(dtype)
    if base + ".weight_scale_inv" in t:
        return (q.float() * expand_blocks(t[base + ".weight_scale_inv"], *q.shape, block=BLOCK[name])).to(dtype)
    return (q.float() * t[base + ".weight_scale"]).to(dtype)


BLOCK = {name: qconfig(name).get("weight_block_size") for name in FIXTURES}


def quantized_bases(t: dict) -> list[str]:
    return sorted(k[:-len(".weight")] for k, v in t.items()
                  if k.endswith(".weight") and v.dtype in (torch.float8_e4m3fn, torch.uint8))


@functools.lru_cache(maxsize=None)
def reference(name: str, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """The fixture's tensors with every quantized weight dequantized, companions dropped."""
    t = raw(name)
    out = {k: v for k, v in t.items() if not k.endswith(tuple("." + c for c in COMPANIONS))}
    for base in quantized_bases(t):
        out[base + ".weight"] = dequantize_one(t, base, dtype, name)
    return out


def reference_folder(name: str, root: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    d = root / f"{name}-reference-{str(dtype).split('.')[-1]}"
    if d.exists():
        return d
    d.mkdir(parents=True)
    cfg = json.loads((QDIR / name / "config.json").read_text())
    del cfg["quantization_config"]
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    shutil.copy(QDIR / name / "generation_config.json", d)
    save_file(reference(name, dtype), d / "model.safetensors", metadata={"format": "pt"})
    return d


@pytest.mark.parametrize("name", FIXTURES)
def test_reference_equals_transformers_dequantization(name):
    """transformers 5.23's FP8 dequantizer (Fp8Dequantize._dequantize_one, the op of
    FineGrainedFP8Config(dequantize=True)) gives the reference bytes for every weight: block FP8
    (q zero-padded to whole blocks, the result cut back: it requires whole blocks), ModelOpt FP8
    (one 1 x 1 block) and NVFP4 (int8 view of the packed codes, [1, 16] blocks of
    float(weight_scale) * weight_scale_2)."""
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    op = Fp8Dequantize(None)
    t = raw(name)
    bases = quantized_bases(t)
    assert bases
    problems = []
    for base in bases:
        q = t[base + ".weight"]
        if q.dtype == torch.uint8:
            s = t[base + ".weight_scale"].float() * t[base + ".weight_scale_2"]
            got = op._dequantize_one(q.view(torch.int8), s, output_dtype=torch.bfloat16)
        elif base + ".weight_scale_inv" in t:
            s = t[base + ".weight_scale_inv"]
            rows, cols = s.shape[0] * BLOCK[name][0], s.shape[1] * BLOCK[name][1]
            padded = torch.zeros(rows, cols, dtype=torch.float8_e4m3fn)
            padded[:q.shape[0], :q.shape[1]] = q
            got = op._dequantize_one(padded, s, output_dtype=torch.bfloat16)[:q.shape[0], :q.shape[1]]
        else:
            got = op._dequantize_one(q, t[base + ".weight_scale"].reshape(1, 1), output_dtype=torch.bfloat16)
        m = raw_mismatch(base, got, reference(name)[base + ".weight"])
        if m:
            problems.append(m)
    assert not problems, "\n".join(problems)


def test_fixtures_exercise_the_edge_cases():
    """Ragged blocks, negative zeros (e4m3 0x80, E2M1 code 8) and an all-zero block are there."""
    t = raw("llama3-fp8-block")
    q = t["model.layers.0.self_attn.q_proj.weight"]
    block = BLOCK["llama3-fp8-block"]
    assert q.shape[0] % block[0] and q.shape[1] % block[1]
    assert (q.view(torch.uint8) == 0x80).any()
    for name in FIXTURES:  # nothing that is not a number (Megatron's load checks for NaN)
        assert all(torch.isfinite(v.float()).all() for v in reference(name).values())
    assert (t["model.layers.0.mlp.down_proj.weight_scale_inv"] == 1.0).any()
    for name in ("super-nvfp4", "super-mixed"):
        assert any(((v & 0x0F) == 8).any() or ((v >> 4) == 8).any() for v in raw(name).values() if v.dtype == torch.uint8)
    ref = reference("llama3-fp8-block")["model.layers.0.self_attn.q_proj.weight"]
    assert (ref.view(torch.int16) == -32768).any()  # 0x8000
    for name in ("nano-fp8-block", "nano-modelopt-fp8"):
        t = raw(name)
        fp8 = [v for v in t.values() if v.dtype == torch.float8_e4m3fn]
        assert any((v.view(torch.uint8) == 0x80).any() for v in fp8)
        assert any(b.endswith(".experts.0.up_proj") for b in quantized_bases(t))
    # the Nano block fixture: ragged edge blocks and an all-zero block (scale 1.0)
    t = raw("nano-fp8-block")
    assert (t["backbone.layers.1.mixer.shared_experts.down_proj.weight_scale_inv"] == 1.0).any()
    assert t["backbone.layers.0.mixer.in_proj.weight"].shape[0] % BLOCK["nano-fp8-block"][0]
    # the Nano ModelOpt fixture keeps NVIDIA's selection: attention and the Mamba layer before it bf16
    t = raw("nano-modelopt-fp8")
    assert t["backbone.layers.0.mixer.in_proj.weight"].dtype == torch.float8_e4m3fn
    for k in ("backbone.layers.2.mixer.in_proj.weight", "backbone.layers.3.mixer.q_proj.weight"):
        assert t[k].dtype == torch.bfloat16, k
    assert "backbone.layers.3.mixer.k_proj.k_scale" in t


# ------------------------------------------------------------------------------------------------
# nembridge imports

def ckpt_dir(out: Path) -> Path:
    it = (out / "latest_checkpointed_iteration.txt").read_text().strip()
    return out / ("release" if it == "release" else f"iter_{int(it):07d}")


def dcp_tensors(out: Path) -> dict[str, torch.Tensor]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = FileSystemReader(str(ckpt_dir(out)))
    md = reader.read_metadata().state_dict_metadata
    sd = {k: torch.empty(tuple(m.size), dtype=m.properties.dtype) for k, m in md.items()
          if isinstance(m, TensorStorageMetadata)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(sd, storage_reader=FileSystemReader(str(ckpt_dir(out))), no_dist=True)
    return sd


# (label, flags, reference dtype)
VARIANTS = {"tp1": ([], torch.bfloat16), "fp32": (["--dtype", "fp32"], torch.float32),
            "fp16": (["--dtype", "fp16"], torch.float16)}


def chunked_flags(name: str) -> list[str]:
    return ["--tp", "2"] if name in LLAMA else ["--ep", "2", "--etp", "1"]


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quantized")


@pytest.fixture(scope="session")
def imports(nembridge, work) -> dict:
    """(fixture, variant) -> (quantized import, reference import, stdout)."""
    out = {}
    for name in FIXTURES:
        for label, (flags, dtype) in [*VARIANTS.items(), ("chunked", (chunked_flags(name), torch.bfloat16))]:
            ref_src = reference_folder(name, work, dtype)
            q = work / f"{name}.{label}.imported"
            r = work / f"{name}.{label}.reference"
            got = nembridge.run("import", "--hf", QDIR / name, "--out", q, *import_flags(name), *flags).ok()
            # the reference's dequantized weights are already in the target dtype (no cast); its
            # unquantized tensors take --dtype's cast as the quantized import's do
            nembridge.run("import", "--hf", ref_src, "--out", r, *import_flags(name), *flags).ok()
            out[(name, label)] = (q, r, got.stdout)
    return out


@pytest.mark.parametrize("label", [*VARIANTS, "chunked"])
@pytest.mark.parametrize("name", FIXTURES)
def test_import_equals_reference_dequantization(imports, name, label):
    q, r, stdout = imports[(name, label)]
    assert "dequantized" in stdout
    got, want = dcp_tensors(q), dcp_tensors(r)
    assert set(got) == set(want)
    problems = [m for k in sorted(want) if (m := raw_mismatch(k, got[k], want[k]))]
    assert not problems, "\n".join(problems)
    if label == "fp32":
        assert any(v.dtype == torch.float32 and "linear_qkv.weight" in k for k, v in got.items())


def test_negative_zero_survives(imports):
    q, _, _ = imports[("llama3-fp8-block", "tp1")]
    qkv = dcp_tensors(q)["decoder.layers.self_attention.linear_qkv.weight"]
    assert (qkv[0, 0, :3].view(torch.int16) == -32768).all()  # 0x8000, q_proj row 0 leads


@pytest.mark.parametrize("name", FIXTURES)
def test_companions_recorded(imports, name):
    q, _, _ = imports[(name, "tp1")]
    rec = json.loads((q / "nembridge" / "hf" / "nembridge-hf-quantization.json").read_text())
    t = raw(name)
    assert set(rec["weights"]) == {b + ".weight" for b in quantized_bases(t)}
    recorded = {k for k in t if k.endswith((".input_scale", ".k_scale", ".v_scale"))}
    assert set(rec["recorded_scales"]) == recorded
    for k in recorded:
        assert torch.tensor(rec["recorded_scales"][k]["value"], dtype=torch.float32) == t[k]  # the fp32 value
    assert json.loads((q / "nembridge" / "hf" / "config.json").read_text())["quantization_config"] == qconfig(name)
    if (QDIR / name / "hf_quant_config.json").exists():
        assert (q / "nembridge" / "hf" / "hf_quant_config.json").read_bytes() == (QDIR / name / "hf_quant_config.json").read_bytes()


# ------------------------------------------------------------------------------------------------
# real Megatron-Core

def expected_llama(cfg: dict, W: dict, tp: int) -> dict[str, torch.Tensor]:
    """Independent Llama mapping (local spec names): QKV per query group, [gate; up], vocab
    rows zero-padded to a multiple of 128 x tp."""
    nh, ng, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    hpg, V, P = nh // ng, cfg["vocab_size"], 128 * tp

    def pad(t):
        return torch.cat([t, torch.zeros((P - V, *t.shape[1:]), dtype=t.dtype)])

    out = {"embedding.word_embeddings.weight": pad(W["model.embed_tokens.weight"]),
           "decoder.final_layernorm.weight": W["model.norm.weight"],
           "output_layer.weight": pad(W["lm_head.weight"])}
    for i in range(cfg["num_hidden_layers"]):
        h, m = f"model.layers.{i}.", f"decoder.layers.{i}."
        q, k, v = (W[h + f"self_attn.{p}_proj.weight"] for p in "qkv")
        rows = []
        for g in range(ng):
            rows += [q[g * hpg * hd:(g + 1) * hpg * hd], k[g * hd:(g + 1) * hd], v[g * hd:(g + 1) * hd]]
        out[m + "self_attention.linear_qkv.weight"] = torch.cat(rows)
        out[m + "self_attention.linear_proj.weight"] = W[h + "self_attn.o_proj.weight"]
        out[m + "input_layernorm.weight"] = W[h + "input_layernorm.weight"]
        out[m + "pre_mlp_layernorm.weight"] = W[h + "post_attention_layernorm.weight"]
        out[m + "mlp.linear_fc1.weight"] = torch.cat([W[h + "mlp.gate_proj.weight"], W[h + "mlp.up_proj.weight"]])
        out[m + "mlp.linear_fc2.weight"] = W[h + "mlp.down_proj.weight"]
    return out


def _run_jobs(tool: Path, jobs: list[dict], work: Path) -> list[list[dict]]:
    path = work / f"{tool.stem}-jobs.json"
    path.write_text(json.dumps(jobs))
    env = dict(os.environ, PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    p = subprocess.run([PYTHON, str(tool), "--jobs", str(path)], capture_output=True, text=True, timeout=TIMEOUT, env=env)
    results = []
    for j in jobs:
        d = Path(j["dump"])
        files = [d] if j["world_size"] == 1 else [d.with_name(f"{d.stem}.rank{r}{d.suffix}") for r in range(j["world_size"])]
        if not all(f.exists() for f in files):
            raise AssertionError(f"{tool.name} exited {p.returncode} without results\n--- stdout ---\n{p.stdout[-4000:]}\n"
                                 f"--- stderr ---\n{p.stderr[-8000:]}")
        results.append([torch.load(f, weights_only=False) for f in files])
    return results


@pytest.fixture(scope="session")
def megatron(imports, work) -> dict:
    """(fixture, world size, which) -> per-rank results; which: 'q' (the quantized import) or
    'r' (the reference folder's import; hybrids only)."""
    gpt, hybrid, keys = [], [], []
    for name in FIXTURES:
        for ws in (1, 2):
            label = "tp1" if ws == 1 else "chunked"
            q, r, _ = imports[(name, label)]
            if name in LLAMA:
                gpt.append({"checkpoint": str(q), "world_size": ws, "tp": ws, "tokens": None,
                            "dump": str(work / f"gpt.{name}.ws{ws}.pt")})
                keys.append(("gpt", name, ws, "q"))
            else:
                for which, folder in (("q", q), ("r", r)):
                    hybrid.append({"hf": str(reference_folder(name, work)), "checkpoint": str(ckpt_dir(folder)),
                                   "world_size": ws, "tp": 1, "ep": ws, "padded_vocab": 128, "tokens": None,
                                   "dump": str(work / f"hybrid.{name}.{which}.ws{ws}.pt")})
                    keys.append(("hybrid", name, ws, which))
    results = iter(_run_jobs(GPT_FROM_ARGS, gpt, work) + _run_jobs(HYBRID_LOAD, hybrid, work))
    ordered = [k for k in keys if k[0] == "gpt"] + [k for k in keys if k[0] == "hybrid"]
    return {k[1:]: next(results) for k in ordered}


def _loaded(megatron, key) -> list[dict]:
    res = megatron[key]
    for r, x in enumerate(res):
        assert x["ok"], f"Megatron-Core could not load {key} (rank {r}):\n{x['error']}"
    return res


@pytest.mark.parametrize("ws", [1, 2])
@pytest.mark.parametrize("name", LLAMA)
def test_megatron_loads_llama_strictly_and_bit_exact(megatron, name, ws):
    cfg = json.loads((QDIR / name / "config.json").read_text())
    exp = expected_llama(cfg, reference(name), tp=ws)
    problems = []
    for r, x in enumerate(_loaded(megatron, (name, ws, "q"))):
        assert x["tp"] == ws and set(x["state"]) == set(exp)
        problems += [m for k in sorted(exp) if (m := raw_mismatch(k, x["state"][k], tp_slice(k, exp[k], ws, r)))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("ws", [1, 2])
@pytest.mark.parametrize("name", HYBRID)
def test_megatron_loads_hybrid_strictly_and_bit_exact(megatron, name, ws):
    got, want = _loaded(megatron, (name, ws, "q")), _loaded(megatron, (name, ws, "r"))
    problems = []
    for r, (x, y) in enumerate(zip(got, want)):
        assert x["nan_after_load"] == [], x["nan_after_load"]
        assert (x["ep"], x["ep_rank"]) == (y["ep"], y["ep_rank"]) and x["ep"] == ws
        assert set(x["state"]) == set(y["state"])
        problems += [f"rank {r}: {m}" for k in sorted(y["state"]) if (m := raw_mismatch(k, x["state"][k], y["state"][k]))]
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------
# refused input

def _derive(tmp_path: Path, name: str, tensors=None, config=None, modelopt=None) -> Path:
    d = tmp_path / f"{name}-bad"
    shutil.copytree(QDIR / name, d)
    if tensors is not None:
        t = dict(raw(name))
        tensors(t)
        save_file(t, d / "model.safetensors", metadata={"format": "pt"})
    if config is not None:
        cfg = json.loads((d / "config.json").read_text())
        config(cfg)
        (d / "config.json").write_text(json.dumps(cfg, indent=2))
    if modelopt is not None:
        doc = json.loads((d / "hf_quant_config.json").read_text())
        modelopt(doc)
        (d / "hf_quant_config.json").write_text(json.dumps(doc, indent=2))
    return d


def _refused(nembridge, src: Path, tmp_path: Path, *needles: str) -> str:
    out = tmp_path / "out"
    r = nembridge.run("import", "--hf", src, "--out", out, *import_flags(src.name.removesuffix("-bad")))
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith("out")]
    return r.stderr


Q0 = "model.layers.0.self_attn.q_proj"
DOWN1 = "model.layers.1.mlp.down_proj"
EXPERT = "backbone.layers.1.mixer.experts.0.up_proj"


def test_missing_block_scale(nembridge, tmp_path):
    src = _derive(tmp_path, "llama3-fp8-block", tensors=lambda t: t.pop(Q0 + ".weight_scale_inv"))
    _refused(nembridge, src, tmp_path, Q0 + ".weight", "weight_scale_inv", "model.safetensors")


def test_misshaped_block_scale_same_count(nembridge, tmp_path):
    def change(t):
        t[DOWN1 + ".weight_scale_inv"] = t[DOWN1 + ".weight_scale_inv"].t().contiguous()
    src = _derive(tmp_path, "llama3-fp8-block", tensors=change)
    _refused(nembridge, src, tmp_path, DOWN1 + ".weight_scale_inv", "[6, 2]", "[2, 6]")


def test_extra_scale_on_unquantized_tensor(nembridge, tmp_path):
    def change(t):
        t["lm_head.weight_scale_inv"] = torch.ones(2, 2)
    src = _derive(tmp_path, "llama3-fp8-block", tensors=change)
    _refused(nembridge, src, tmp_path, "lm_head.weight_scale_inv", "not quantized")


def test_excluded_module_stored_quantized(nembridge, tmp_path):
    src = _derive(tmp_path, "llama3-fp8-block",
                  config=lambda c: c["quantization_config"]["modules_to_not_convert"].append(Q0))
    _refused(nembridge, src, tmp_path, Q0 + ".weight", "modules_to_not_convert")


def test_unquantized_module_not_excluded(nembridge, tmp_path):
    def change(t):
        t[DOWN1 + ".weight"] = reference("llama3-fp8-block")[DOWN1 + ".weight"]
        del t[DOWN1 + ".weight_scale_inv"]
    src = _derive(tmp_path, "llama3-fp8-block", tensors=change)
    _refused(nembridge, src, tmp_path, DOWN1 + ".weight", "does not exclude")


def test_missing_modelopt_tensor_scale(nembridge, tmp_path):
    src = _derive(tmp_path, "llama3-modelopt-fp8", tensors=lambda t: t.pop(Q0 + ".weight_scale"))
    _refused(nembridge, src, tmp_path, Q0 + ".weight", "weight_scale")


def test_misshaped_nvfp4_scale(nembridge, tmp_path):
    def change(t):
        t[EXPERT + ".weight_scale"] = t[EXPERT + ".weight_scale"].reshape(-1).contiguous()
    src = _derive(tmp_path, "super-nvfp4", tensors=change)
    _refused(nembridge, src, tmp_path, EXPERT + ".weight_scale", "[16, 1]")


def test_missing_nvfp4_second_scale(nembridge, tmp_path):
    src = _derive(tmp_path, "super-nvfp4", tensors=lambda t: t.pop(EXPERT + ".weight_scale_2"))
    _refused(nembridge, src, tmp_path, EXPERT + ".weight", "weight_scale_2")


def test_mixed_precision_list_disagreeing(nembridge, tmp_path):
    """quantized_layers says FP8 for a module stored NVFP4."""
    def change(doc):
        doc["quantization"]["quantized_layers"][EXPERT] = {"quant_algo": "FP8"}
    src = _derive(tmp_path, "super-mixed", modelopt=change)
    _refused(nembridge, src, tmp_path, EXPERT + ".weight", "quantized_layers")


# ------------------------------------------------------------------------------------------------
# export of a dequantized import: the reference tensors, a config.json without quantization

@pytest.mark.parametrize("name", FIXTURES)
def test_export_of_import_is_the_dequantized_model(nembridge, imports, work, name):
    q, _, _ = imports[(name, "tp1")]
    out = work / f"{name}.exported"
    nembridge.run("export", "--megatron", q, "--out", out).ok()
    got = {}
    for f in sorted(out.glob("*.safetensors")):
        got.update(load_file(f))
    want = reference(name)
    assert set(got) == set(want)
    problems = [m for k in sorted(want) if (m := raw_mismatch(k, got[k], want[k]))]
    assert not problems, "\n".join(problems)
    cfg = json.loads((out / "config.json").read_text())
    src = json.loads((QDIR / name / "config.json").read_text())
    del src["quantization_config"]
    assert cfg == src
    assert not (out / "hf_quant_config.json").exists() and not (out / "nembridge-hf-quantization.json").exists()
    if name in TRANSFORMERS:
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).eval()
        assert getattr(model.config, "quantization_config", None) is None
        sd = model.state_dict()
        assert all(torch.equal(sd[k].view(torch.int16), want[k].view(torch.int16)) for k in want if k in sd)
        # the same logits as the reference-dequantized folder (torch's dequantization) loaded alike
        ref = transformers.AutoModelForCausalLM.from_pretrained(reference_folder(name, work), dtype=torch.bfloat16).eval()
        ids = torch.randint(0, cfg["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(15))
        with torch.no_grad():
            a, b = model(input_ids=ids, use_cache=False).logits, ref(input_ids=ids, use_cache=False).logits
        assert torch.isfinite(a).all() and a.abs().max() > 0
        assert torch.equal(a.view(torch.int16), b.view(torch.int16))


# ------------------------------------------------------------------------------------------------
# legacy per-rank files (--ckpt-format torch): the dequantized values in every rank's file

@pytest.mark.parametrize("name,flags", [("llama3-fp8-block", ["--tp", "2"]), ("super-nvfp4", ["--ep", "2"])])
def test_legacy_rank_files_equal_reference(nembridge, work, name, flags):
    outs = []
    for label, src in (("q", QDIR / name), ("r", reference_folder(name, work))):
        out = work / f"{name}.legacy.{label}"
        nembridge.run("import", "--hf", src, "--out", out, "--ckpt-format", "torch", *import_flags(name), *flags).ok()
        outs.append(out)
    files = sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*.pt"))
    assert len(files) == 2 and files == sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*.pt"))
    problems = []
    for rel in files:
        got, want = (torch.load(o / rel, map_location="cpu", weights_only=False)["model"] for o in outs)
        tensors = {k for k, v in want.items() if isinstance(v, torch.Tensor)}
        assert tensors == {k for k, v in got.items() if isinstance(v, torch.Tensor)}
        problems += [f"{rel}: {m}" for k in sorted(tensors) if (m := raw_mismatch(k, got[k], want[k]))]
    assert not problems, "\n".join(problems)


def test_scales_in_another_shard(nembridge, imports, work):
    """A sharded folder (index + 2 files) whose scales all sit in the other file from their
    weights: the import reads each scale from its own shard."""
    name = "llama3-fp8-block"
    src = work / f"{name}-sharded"
    src.mkdir()
    for f in ("config.json", "generation_config.json"):
        shutil.copy(QDIR / name / f, src)
    t = raw(name)
    scales = {k: v for k, v in t.items() if k.endswith(".weight_scale_inv")}
    rest = {k: v for k, v in t.items() if k not in scales}
    files = {"model-00001-of-00002.safetensors": scales, "model-00002-of-00002.safetensors": rest}
    for f, part in files.items():
        save_file(part, src / f, metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in t.values())},
             "weight_map": {k: f for f, part in files.items() for k in part}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    out = work / f"{name}-sharded.imported"
    nembridge.run("import", "--hf", src, "--out", out, "--tp", "2").ok()
    got = dcp_tensors(out)
    want = dcp_tensors(imports[(name, "chunked")][1])  # the reference folder imported at --tp 2
    assert set(got) == set(want)
    problems = [m for k in sorted(want) if (m := raw_mismatch(k, got[k], want[k]))]
    assert not problems, "\n".join(problems)

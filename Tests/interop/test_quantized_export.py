"""`nembridge export --quantize` (issue 15, export half) against torch and transformers 5.23.

- like-source: each fixture of TestCheckpoints/quantized (block FP8 with ragged [48, 40]
  blocks, ModelOpt FP8 with input / k / v scales, Super-shaped NVFP4 and MIXED_PRECISION,
  Nano-shaped block FP8 and ModelOpt FP8 with NVIDIA's Nano selection)
  imported (TP 1, and chunked: Llama TP 2 so the export reads row-parallel chunks, the hybrids
  EP 2) and exported with `--quantize like-source` gives back every source tensor
  (names, dtypes, shapes, bytes, compared with the safetensors library), config.json's
  quantization_config and hf_quant_config.json as the source has them.
- fresh: `--quantize fp8-block` (128, and 32), `fp8-block:40` (ragged) and `fp8` of bf16 imports of
  llama3-tiny, nemotron3-moe-tiny and decilm-tiny (layers without attention or FFN, linears in
  their place): each quantized tensor and scale equals torch's quantization
  of the plain (bf16) export's weight by the rule, computed here: scale = amax / 448 in fp32 per
  block (1.0 for an all-zero block), q = (x.float() / scale).clamp(-448, 448).to(float8_e4m3fn);
  the quantized tensors are exactly the linear projections (a list written here); every other
  tensor equals the bf16 export byte for byte; the config is the releases' shape.
- transformers: 5.23's FineGrainedFP8 quantizer refuses to load on this machine without
  `accelerate` (not installed in the venv; the ImportError is asserted, as evidence); the folder's
  weights are dequantized with transformers' own `Fp8Dequantize._dequantize_one` (the op its
  loader runs on CPU when it dequantizes), which equals q.float() * scale -> bf16; transformers
  loads the folder of those weights, and its logits stay near the bf16 export's (lossy: a bound,
  not bit equality).
- Changed values under like-source: a checkpoint holding the fixture's dequantized weights with
  one block-aligned region changed (a bf16 import of the modified reference, with the quantized
  import's record put beside it, as after training) exports the unchanged blocks with their
  recorded scales and the changed ones with fresh scales by the rule (decided here in torch per
  block: the recorded scale is kept iff the block's values round-trip with it).
- NVFP4 changed values: one expert weight of super-nvfp4 changed gets fresh scales and codes by
  ModelOpt's NVFP4QTensor rule, computed here (weight_scale_2 = amax / (6 * 448); weight_scale =
  e4m3(group_amax / (6 * weight_scale_2)), 1.0 for zeros; codes by ModelOpt's bounds with ties to
  even; the sign from the sign bit, where ModelOpt takes x < 0).
- Refusals: like-source of a checkpoint not imported from a quantized folder exits 1, typed.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import CHECKPOINTS

QDIR = CHECKPOINTS / "quantized"
NANO_FIXTURES = ["nano-fp8-block", "nano-modelopt-fp8"]
FP8_FIXTURES = ["llama3-fp8-block", "llama3-modelopt-fp8"] + NANO_FIXTURES
NVFP4_FIXTURES = ["super-nvfp4", "super-mixed"]
# per fixture: import flags, and the chunked import (the export then reads chunks)
LAYOUTS = {name: ([], ["--tp", "2"]) for name in FP8_FIXTURES if name not in NANO_FIXTURES} | {
    name: (["--spec", "local"], ["--spec", "local", "--ep", "2", "--etp", "1"]) for name in NVFP4_FIXTURES + NANO_FIXTURES}
BF16 = {"llama3-tiny": CHECKPOINTS / "llama3-tiny" / "hf", "nemotron3-moe-tiny": CHECKPOINTS / "nemotron3-moe-tiny" / "hf",
        "decilm-tiny": CHECKPOINTS / "decilm-tiny" / "hf"}
HYBRID_FLAGS = {"nemotron3-moe-tiny": ["--spec", "local"], "decilm-tiny": ["--spec", "local"]}

# The linear projections NVIDIA's and DeepSeek's FP8 releases quantize, written here independently
# of the tables: attention q/k/v/o, MLP / expert / shared-expert up / gate / down, Mamba
# in_proj / out_proj, latent projections, DeciLM's linears in place of an attention or an FFN.
# Not: embeddings, norms, router, lm_head, conv1d, ...
QUANTIZED = re.compile(r".*\.(self_attn|mixer|mlp)\.(experts\.\d+\.|shared_experts\.)?"
                       r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|in_proj|out_proj|fc1_latent_proj|fc2_latent_proj"
                       r"|linear_attn|linear_mlp)\.weight$")


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def raw_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def headers(folder: Path) -> dict[str, tuple[str, list[int]]]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "pt") as h:
            for k in h.keys():
                s = h.get_slice(k)
                out[k] = (s.get_dtype(), list(s.get_shape()))
    return out


def same_tensors(got: Path, want: Path) -> list[str]:
    g, w = tensors(got), tensors(want)
    problems = []
    if set(g) != set(w):
        problems.append(f"names differ: missing {sorted(set(w) - set(g))[:5]}, extra {sorted(set(g) - set(w))[:5]}")
    hg, hw = headers(got), headers(want)
    for k in sorted(set(g) & set(w)):
        if hg[k] != hw[k]:
            problems.append(f"{k}: {hg[k]} != {hw[k]}")
        elif raw_bytes(g[k]) != raw_bytes(w[k]):
            problems.append(f"{k}: bytes differ")
    return problems


# ------------------------------------------------------------------------------------------------
# the rule, in torch

def block_scales(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """amax / 448 per [rows, cols] block (ragged edges), 1.0 for an all-zero block, fp32."""
    r, c = x.shape
    gr, gc = -(-r // rows), -(-c // cols)
    s = torch.empty(gr, gc, dtype=torch.float32)
    xf = x.float()
    for i in range(gr):
        for j in range(gc):
            amax = xf[i * rows:(i + 1) * rows, j * cols:(j + 1) * cols].abs().amax()
            s[i, j] = torch.where(amax == 0, torch.tensor(1.0), amax / 448.0)
    return s


def expand(s: torch.Tensor, shape, rows: int, cols: int) -> torch.Tensor:
    return s.repeat_interleave(rows, 0)[:shape[0]].repeat_interleave(cols, 1)[:, :shape[1]]


def quantize(x: torch.Tensor, s_full: torch.Tensor) -> torch.Tensor:
    return (x.float() / s_full).clamp(-448, 448).to(torch.float8_e4m3fn)


# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("qexport")


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("name", FP8_FIXTURES + NVFP4_FIXTURES)
def test_like_source_round_trip_is_byte_identical(nembridge, work, name, layout):
    m, out = work / f"{name}.{layout}.megatron", work / f"{name}.{layout}.like-source"
    nembridge.run("import", "--hf", QDIR / name, "--out", m, *LAYOUTS[name][layout]).ok()
    got = nembridge.run("export", "--megatron", m, "--out", out, "--quantize", "like-source").ok()
    assert "like-source" in got.stdout
    problems = same_tensors(out, QDIR / name)
    assert not problems, "\n".join(problems)
    src_cfg = json.loads((QDIR / name / "config.json").read_text())
    assert json.loads((out / "config.json").read_text())["quantization_config"] == src_cfg["quantization_config"]
    if (QDIR / name / "hf_quant_config.json").exists():
        assert (out / "hf_quant_config.json").read_bytes() == (QDIR / name / "hf_quant_config.json").read_bytes()
    # the recorded scales are the source's, byte for byte
    rec = tensors(m / "nembridge" / "hf")
    src = tensors(QDIR / name)
    assert rec and all(raw_bytes(v) == raw_bytes(src[k]) for k, v in rec.items())
    assert not (out / "nembridge-hf-scales.safetensors").exists()


@pytest.fixture(scope="session")
def bf16_imports(nembridge, work) -> dict[str, tuple[Path, Path]]:
    """model -> (Megatron import, plain bf16 export of it)."""
    out = {}
    for model, hf in BF16.items():
        m, e = work / f"{model}.megatron", work / f"{model}.bf16-export"
        nembridge.run("import", "--hf", hf, "--out", m, *HYBRID_FLAGS.get(model, [])).ok()
        nembridge.run("export", "--megatron", m, "--out", e).ok()
        out[model] = (m, e)
    return out


SCHEMES = {"fp8-block": (128, 128), "fp8-block:32": (32, 32), "fp8-block:40": (40, 40), "fp8": None}


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("model", BF16)
def test_fresh_quantization_equals_torch_rule(nembridge, work, bf16_imports, model, scheme):
    m, plain = bf16_imports[model]
    out = work / f"{model}.{scheme.replace(':', '-')}"
    nembridge.run("export", "--megatron", m, "--out", out, "--quantize", scheme).ok()
    got, bf16 = tensors(out), tensors(plain)
    block = SCHEMES[scheme]
    scale_suffix = ".weight_scale_inv" if block else ".weight_scale"
    expected_names = set(bf16) | {k[:-len(".weight")] + scale_suffix for k in bf16 if QUANTIZED.match(k)}
    assert set(got) == expected_names
    quantized = [k for k in bf16 if QUANTIZED.match(k)]
    assert quantized and any("experts" in k for k in quantized) == (model == "nemotron3-moe-tiny")
    if model == "decilm-tiny":  # layers without attention (2) or FFN (4), linears in place of them (3, 5)
        assert "model.layers.3.self_attn.linear_attn.weight" in quantized and "model.layers.5.mlp.linear_mlp.weight" in quantized
        assert not any(k.startswith(("model.layers.2.self_attn.", "model.layers.4.mlp.")) for k in got)
    problems = []
    for k, x in bf16.items():
        if k not in quantized:
            if got[k].dtype != x.dtype or raw_bytes(got[k]) != raw_bytes(x):
                problems.append(f"{k}: not the bf16 export's")
            continue
        base = k[:-len(".weight")]
        rows, cols = block or x.shape
        s = block_scales(x, rows, cols)
        q = quantize(x, expand(s, x.shape, rows, cols))
        want_scale = s if block else s.reshape(())
        gs = got[base + scale_suffix]
        if gs.dtype != torch.float32 or gs.shape != want_scale.shape or raw_bytes(gs) != raw_bytes(want_scale):
            problems.append(f"{base + scale_suffix}: {gs.dtype} {tuple(gs.shape)} differs from the rule's {tuple(want_scale.shape)}")
        if got[k].dtype != torch.float8_e4m3fn or raw_bytes(got[k]) != raw_bytes(q):
            problems.append(f"{k}: codes differ from torch's")
        elif x.numel() >= 4096 and len(torch.unique(q.view(torch.uint8))) < 64:
            problems.append(f"{k}: only {len(torch.unique(q.view(torch.uint8)))} distinct codes (a vacuous comparison)")
    assert not problems, "\n".join(problems[:20])
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    if block:
        assert cfg == {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": list(block),
                       "modules_to_not_convert": cfg["modules_to_not_convert"]}
        assert "lm_head" in cfg["modules_to_not_convert"]
        assert not (out / "hf_quant_config.json").exists()
    else:
        assert cfg["quant_method"] == "modelopt" and cfg["quant_algo"] == "FP8" and "lm_head" in cfg["exclude_modules"]
        hq = json.loads((out / "hf_quant_config.json").read_text())["quantization"]
        assert hq["quant_algo"] == "FP8" and hq["exclude_modules"] == cfg["exclude_modules"]
    # the written bytes match the manifest's checksums; nembridge's own import reads it back (the
    # config and the stored tensors agree), and verify finds the folder equal by value to it
    assert "OK" in nembridge.run("verify", out).ok().stdout
    back = work / f"{out.name}.reimported"
    nembridge.run("import", "--hf", out, "--out", back, *HYBRID_FLAGS.get(model, [])).ok()
    assert "compared by value" in nembridge.run("verify", out, back).ok().stdout


def test_transformers_dequantizes_the_fp8_block_export(nembridge, work, bf16_imports):
    from transformers import AutoModelForCausalLM
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    m, _ = bf16_imports["llama3-tiny"]
    out = work / "llama3-tiny.for-transformers"
    # 32 x 32 blocks: transformers derives the block from the scale grid (it needs whole blocks)
    nembridge.run("export", "--megatron", m, "--out", out, "--quantize", "fp8-block:32").ok()
    with pytest.raises(ImportError, match="accelerate"):
        AutoModelForCausalLM.from_pretrained(out)  # evidence: the FP8 loader needs accelerate, absent here
    op = Fp8Dequantize(None)
    t = tensors(out)
    sd = {}
    for k, v in t.items():
        if k.endswith(".weight_scale_inv"):
            continue
        if v.dtype == torch.float8_e4m3fn:
            sd[k] = op._dequantize_one(v, t[k[:-len(".weight")] + ".weight_scale_inv"], output_dtype=torch.bfloat16)
        else:
            sd[k] = v
    deq = work / "llama3-tiny.dequantized"
    deq.mkdir(exist_ok=True)
    raw_cfg = json.loads((out / "config.json").read_text())
    del raw_cfg["quantization_config"]
    (deq / "config.json").write_text(json.dumps(raw_cfg))
    save_file(sd, deq / "model.safetensors", metadata={"format": "pt"})
    loaded = AutoModelForCausalLM.from_pretrained(deq, dtype=torch.bfloat16)
    # transformers' dequantization is the rule's inverse, computed here too: q.float() * scale -> bf16
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k]), k
        if t[k].dtype == torch.float8_e4m3fn:
            s = t[k[:-len(".weight")] + ".weight_scale_inv"]
            assert torch.equal(v, (t[k].float() * expand(s, v.shape, 32, 32)).to(torch.bfloat16)), k
    # lossy, so not bit for bit: the quantized model's logits stay near the bf16 export's
    plain = AutoModelForCausalLM.from_pretrained(bf16_imports["llama3-tiny"][1], dtype=torch.bfloat16)
    ids = torch.tensor([[1, 5, 17, 99, 3, 42]])
    with torch.no_grad():
        a, b = loaded(ids).logits.float(), plain(ids).logits.float()
    assert torch.isfinite(a).all() and not torch.equal(a, b)
    assert (a - b).abs().max() < 0.1 * b.abs().max()


def test_changed_values_get_fresh_scales(nembridge, work):
    name = "llama3-fp8-block"
    block = json.loads((QDIR / name / "config.json").read_text())["quantization_config"]["weight_block_size"]
    q_import = work / f"{name}.changed.quantized-import"
    nembridge.run("import", "--hf", QDIR / name, "--out", q_import).ok()
    src = tensors(QDIR / name)
    # the dequantized model, as torch computes it; one block-aligned region changed ("training")
    target = "model.layers.0.mlp.down_proj.weight"
    ref = {}
    for k, v in src.items():
        if k.endswith(".weight_scale_inv"):
            continue
        if v.dtype == torch.float8_e4m3fn:
            s = src[k[:-len(".weight")] + ".weight_scale_inv"]
            v = (v.float() * expand(s, v.shape, *block)).to(torch.bfloat16)
        ref[k] = v
    changed = ref[target].clone()
    changed[:block[0], :block[1]] = (changed[:block[0], :block[1]].float() * 1.37 + 0.01).to(torch.bfloat16)
    ref[target] = changed
    folder = work / f"{name}.changed.hf"
    folder.mkdir()
    cfg = json.loads((QDIR / name / "config.json").read_text())
    del cfg["quantization_config"]
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file(ref, folder / "model.safetensors", metadata={"format": "pt"})
    m = work / f"{name}.changed.megatron"
    nembridge.run("import", "--hf", folder, "--out", m).ok()
    # the record of the quantized import beside it, as a trained continuation of it would have
    for f in ("config.json", "nembridge-hf-quantization.json", "nembridge-hf-scales.safetensors"):
        shutil.copy(q_import / "nembridge" / "hf" / f, m / "nembridge" / "hf" / f)
    out = work / f"{name}.changed.export"
    nembridge.run("export", "--megatron", m, "--out", out, "--quantize", "like-source").ok()
    got = tensors(out)
    problems = [p for p in same_tensors(out, QDIR / name) if not p.startswith(target[:-len(".weight")])]
    assert not problems, "\n".join(problems)
    # the changed weight: per block, the recorded scale where the block round-trips with it, else fresh
    x = changed
    recorded = src[target[:-len(".weight")] + ".weight_scale_inv"]
    fresh = block_scales(x, *block)
    s = recorded.clone()
    kept = 0
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            xb = x[i * block[0]:(i + 1) * block[0], j * block[1]:(j + 1) * block[1]]
            back = (quantize(xb, recorded[i, j]).float() * recorded[i, j]).to(torch.bfloat16)
            if torch.equal(back.view(torch.int16), xb.view(torch.int16)):
                kept += 1
            else:
                s[i, j] = fresh[i, j]
    assert 0 < kept < s.numel()  # both kinds of block are there
    assert not torch.equal(s, recorded)
    assert raw_bytes(got[target[:-len(".weight")] + ".weight_scale_inv"]) == raw_bytes(s)
    assert raw_bytes(got[target]) == raw_bytes(quantize(x, expand(s, x.shape, *block)))


def test_like_source_needs_a_quantized_source(nembridge, bf16_imports, work):
    m, _ = bf16_imports["llama3-tiny"]
    got = nembridge.run("export", "--megatron", m, "--out", work / "refused", "--quantize", "like-source")
    assert got.returncode == 1 and "like-source needs a checkpoint imported from a quantized folder" in got.stderr
    assert not (work / "refused").exists()


E2M1_BOUNDS = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])


def nvfp4_rule(x: torch.Tensor):
    """ModelOpt's NVFP4 weight quantization (NVFP4QTensor), sign from the sign bit."""
    x = x.float()
    rows, cols = x.shape
    amax = x.abs().amax()
    second = (amax / (6.0 * 448.0) if amax > 0 else torch.tensor(1.0)).to(torch.float32).reshape(())
    groups = x.reshape(rows, cols // 16, 16)
    scale = groups.abs().amax(dim=-1) / (6.0 * second)
    scale[scale == 0] = 1.0
    scale = scale.to(torch.float8_e4m3fn)
    m = (groups / (scale.float() * second).unsqueeze(-1)).abs().reshape(rows, cols)
    code = torch.searchsorted(E2M1_BOUNDS, m.contiguous(), right=False).to(torch.uint8)
    code += (m.unsqueeze(-1) == E2M1_BOUNDS[[1, 3, 5]]).any(-1).to(torch.uint8)  # ties at 0.75, 1.75, 3.5 go up (even)
    code |= torch.signbit(x).to(torch.uint8) << 3
    return (code[:, 0::2] | (code[:, 1::2] << 4)).contiguous(), scale, second


def test_nvfp4_changed_weight_gets_fresh_scales(nembridge, work):
    name = "super-nvfp4"
    q_import = work / f"{name}.changed.quantized-import"
    nembridge.run("import", "--hf", QDIR / name, "--out", q_import, "--spec", "local").ok()
    src = tensors(QDIR / name)
    e2m1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])
    ref = {}
    for k, v in src.items():
        if k.endswith((".weight_scale", ".weight_scale_2", ".input_scale")):
            continue
        if v.dtype == torch.uint8:
            base = k[:-len(".weight")]
            codes = torch.stack([e2m1[(v & 0x0F).long()], e2m1[(v >> 4).long()]], -1).reshape(v.shape[0], -1)
            mult = (src[base + ".weight_scale"].float() * src[base + ".weight_scale_2"]).repeat_interleave(16, 1)
            v = (codes * mult).to(torch.bfloat16)
        ref[k] = v
    target = next(k for k in sorted(ref) if ".experts.0.up_proj.weight" in k and src[k].dtype == torch.uint8)
    changed = ref[target].clone()
    changed[0, :16] = (changed[0, :16].float() * 1.37 + 0.01).to(torch.bfloat16)
    ref[target] = changed
    folder = work / f"{name}.changed.hf"
    folder.mkdir()
    cfg = json.loads((QDIR / name / "config.json").read_text())
    del cfg["quantization_config"]
    (folder / "config.json").write_text(json.dumps(cfg))
    shutil.copy(QDIR / name / "generation_config.json", folder)
    save_file(ref, folder / "model.safetensors", metadata={"format": "pt"})
    m = work / f"{name}.changed.megatron"
    nembridge.run("import", "--hf", folder, "--out", m, "--spec", "local").ok()
    for f in ("config.json", "hf_quant_config.json", "nembridge-hf-quantization.json", "nembridge-hf-scales.safetensors"):
        shutil.copy(q_import / "nembridge" / "hf" / f, m / "nembridge" / "hf" / f)
    out = work / f"{name}.changed.export"
    nembridge.run("export", "--megatron", m, "--out", out, "--quantize", "like-source").ok()
    base = target[:-len(".weight")]
    problems = [p for p in same_tensors(out, QDIR / name) if not p.startswith(base + ".")]
    assert not problems, "\n".join(problems)
    got = tensors(out)
    packed, scale, second = nvfp4_rule(changed)
    assert raw_bytes(got[base + ".weight_scale_2"]) == raw_bytes(second)
    assert raw_bytes(got[base + ".weight_scale_2"]) != raw_bytes(src[base + ".weight_scale_2"])
    assert got[base + ".weight_scale"].dtype == torch.float8_e4m3fn and raw_bytes(got[base + ".weight_scale"]) == raw_bytes(scale)
    assert got[target].dtype == torch.uint8 and raw_bytes(got[target]) == raw_bytes(packed)



# ------------------------------------------------------------------------------------------------
# verify

IMPORT_FLAGS = {name: LAYOUTS[name][0] for name in LAYOUTS}


@pytest.mark.parametrize("name", FP8_FIXTURES + NVFP4_FIXTURES)
def test_verify_compares_quantized_folders_by_value(nembridge, work, name):
    m = work / f"{name}.verify.megatron"
    nembridge.run("import", "--hf", QDIR / name, "--out", m, *IMPORT_FLAGS[name]).ok()
    got = nembridge.run("verify", QDIR / name, m).ok()
    assert "compared by value" in got.stdout
    bf16 = work / f"{name}.verify.bf16"
    nembridge.run("export", "--megatron", m, "--out", bf16).ok()
    assert "compared by value" in nembridge.run("verify", QDIR / name, bf16).ok().stdout
    assert "compared by value" in nembridge.run("verify", bf16, QDIR / name).ok().stdout
    # the bf16 export's weights are torch's dequantization of the source (so "by value" means that)
    src = tensors(QDIR / name)
    b = tensors(bf16)
    base = next(k[:-len(".weight")] for k in sorted(src) if k.endswith(".weight") and src[k].dtype in (torch.float8_e4m3fn, torch.uint8))
    q = src[base + ".weight"]
    if q.dtype == torch.float8_e4m3fn:
        s = src.get(base + ".weight_scale_inv", src.get(base + ".weight_scale"))
        block = json.loads((QDIR / name / "config.json").read_text())["quantization_config"].get("weight_block_size")
        full = expand(s, q.shape, *block) if s.dim() == 2 else s
        assert torch.equal(b[base + ".weight"].view(torch.int16), (q.float() * full).to(torch.bfloat16).view(torch.int16))


def flip_byte(folder: Path, tensor: str, index: int = 7) -> None:
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    start = 8 + n + json.loads(data[8:8 + n])[tensor]["data_offsets"][0]
    data[start + index] ^= 0x11
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["llama3-fp8-block", "super-nvfp4"])
def test_verify_names_a_flipped_quantized_byte(nembridge, work, name):
    m = work / f"{name}.flip.megatron"
    nembridge.run("import", "--hf", QDIR / name, "--out", m, *IMPORT_FLAGS[name]).ok()
    changed = work / f"{name}.flip.hf"
    shutil.copytree(QDIR / name, changed)
    src = tensors(QDIR / name)
    tensor = next(k for k in sorted(src) if k.endswith(".weight") and src[k].dtype in (torch.float8_e4m3fn, torch.uint8))
    flip_byte(changed, tensor)
    for other in (m, QDIR / name):  # by value against the import; bit for bit against the source
        got = nembridge.run("verify", changed, other)
        assert got.returncode == 1 and tensor in got.stdout, got.stdout


@pytest.mark.parametrize("name", FP8_FIXTURES + NVFP4_FIXTURES)
def test_inspect_lists_each_quantized_weight_with_its_scales(nembridge, name):
    report = nembridge.run("inspect", QDIR / name, "--json").ok().json()
    src = tensors(QDIR / name)
    bases = sorted(k[:-len(".weight")] for k, v in src.items() if k.endswith(".weight") and v.dtype in (torch.float8_e4m3fn, torch.uint8))
    rows = {r["name"]: r for r in report["quantized"]}
    assert sorted(rows) == [b + ".weight" for b in bases]
    for base in bases:
        row, q = rows[base + ".weight"], src[base + ".weight"]
        scales = {s["name"]: s for s in row["scales"]}
        if q.dtype == torch.uint8:
            assert row["scheme"] == "nvfp4 (group 16)" and row["shape"] == [q.shape[0], 2 * q.shape[1]]
            assert scales[base + ".weight_scale"]["shape"] == list(src[base + ".weight_scale"].shape)
            assert scales[base + ".weight_scale_2"]["dtype"] == "F32"
        elif base + ".weight_scale_inv" in src:
            assert row["scheme"].startswith("block fp8") and row["shape"] == list(q.shape)
            assert scales[base + ".weight_scale_inv"]["shape"] == list(src[base + ".weight_scale_inv"].shape)
        else:
            assert row["scheme"] == "modelopt fp8" and scales[base + ".weight_scale"]["shape"] == []
    assert report["quantization_problem"] is None

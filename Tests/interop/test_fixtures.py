"""Sanity of the committed fixtures themselves (no nembridge binary needed):
the README hashes match, the reference reader's verdicts in the malformed manifest still hold
for the installed safetensors, and the sharded Llama holds the same tensors as llama3-tiny.

    .venv/bin/python -m pytest Tests/interop/test_fixtures.py -q
"""
from __future__ import annotations

import hashlib
import json
import re

import pytest
import safetensors

from conftest import CHECKPOINTS, HF_FIXTURES, hf_dir
from st_reference import folder_tensors, raw_bytes

FIXTURE_DIRS = sorted(d for d in CHECKPOINTS.iterdir()
                      if d.is_dir() and d.name != "malformed-safetensors")


@pytest.mark.parametrize("folder", FIXTURE_DIRS, ids=lambda d: d.name)
def test_readme_hashes(folder):
    rows = re.findall(r"^\| `([^`]+)` \| (\d+) \| `([0-9a-f]{64})` \|$",
                      (folder / "README.md").read_text(), re.M)
    listed = {r[0] for r in rows}
    actual = {str(p.relative_to(folder)) for p in folder.rglob("*")
              if p.is_file() and p.name != "README.md"}
    assert listed == actual
    for rel, size, digest in rows:
        data = (folder / rel).read_bytes()
        assert len(data) == int(size) and hashlib.sha256(data).hexdigest() == digest, rel


def test_total_size_small():
    total = sum(p.stat().st_size for p in CHECKPOINTS.rglob("*") if p.is_file())
    # 5.4 MB with the published-dialect fixtures (dialects/, 0.47 MB); 6.36 MB with the quantized
    # Nemotron 3 Nano fixtures (quantized/nano-*, 0.44 MB: a Mamba layer feeding an attention layer
    # and MoE layers are what NVIDIA's Nano selection needs, so they cannot be cut further)
    assert total < 6.5 * 10**6, total


def test_malformed_manifest_matches_reader():
    import sys
    sys.path.insert(0, str(CHECKPOINTS.parent / "tools"))
    import make_malformed_corpus as mc
    cases = json.loads((CHECKPOINTS / "malformed-safetensors" / "manifest.json").read_text())["cases"]
    for c in cases:
        data = (CHECKPOINTS / "malformed-safetensors" / c["file"]).read_bytes()
        msg = mc.run_deserialize(data)
        assert mc.verdict(msg) == c["verdict"], c["file"]
        if not c.get("message_varies"):
            assert msg == c["message"], c["file"]


def test_sharded_equals_single():
    a, b = folder_tensors(hf_dir("llama3-tiny")), folder_tensors(hf_dir("llama3-sharded-tiny"))
    assert set(a) == set(b)
    for k in a:
        assert raw_bytes(hf_dir("llama3-tiny") / a[k].file, a[k]) == \
            raw_bytes(hf_dir("llama3-sharded-tiny") / b[k].file, b[k]), k
    assert len(list(hf_dir("llama3-sharded-tiny").glob("model-*.safetensors"))) >= 3


def test_tied_has_no_lm_head():
    assert "lm_head.weight" not in folder_tensors(hf_dir("llama32-tied-tiny"))
    assert "lm_head.weight" in folder_tensors(hf_dir("llama3-tiny"))


def test_decilm_no_op_blocks_have_no_keys():
    cfg = json.loads((hf_dir("decilm-tiny") / "config.json").read_text())
    names = set(folder_tensors(hf_dir("decilm-tiny")))
    for i, b in enumerate(cfg["block_configs"]):
        p = f"model.layers.{i}."
        attn = {n for n in names if n.startswith(p + "self_attn.") or n == p + "input_layernorm.weight"}
        ffn = {n for n in names if n.startswith(p + "mlp.") or n == p + "post_attention_layernorm.weight"}
        assert (not attn) == b["attention"]["no_op"], i
        assert (not ffn) == b["ffn"]["no_op"], i
        if b["attention"]["replace_with_linear"]:
            assert attn == {p + "input_layernorm.weight", p + "self_attn.linear_attn.weight"}
        if b["ffn"]["replace_with_linear"]:
            assert ffn == {p + "post_attention_layernorm.weight", p + "mlp.linear_mlp.weight"}
        if b["ffn"]["ffn_mult"] is not None:
            h = cfg["hidden_size"]
            f = -(-int(2 * b["ffn"]["ffn_mult"] * h / 3) // 256) * 256
            with safetensors.safe_open(str(hf_dir("decilm-tiny") / "model.safetensors"), "np") as sf:
                assert sf.get_slice(p + "mlp.up_proj.weight").get_shape() == [f, h]


def test_hf_fixture_list_complete():
    assert set(HF_FIXTURES) == {d.parent.name for d in CHECKPOINTS.glob("*/hf")}

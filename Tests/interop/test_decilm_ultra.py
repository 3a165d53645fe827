"""The published Llama-3.1-Nemotron-Ultra-253B dialect (TestCheckpoints/dialects/ultra253b-v1,
made by tools/fixtures/make_dialect_fixtures.py): its config.json field set, llama3 RoPE factor 16,
and a FULLY EMPTY layer (attention and FFN both no_op, no tensors at all), which half of the
published model's 162 layers are and decilm-tiny has none of.

Real Megatron-Core 0.19.2 builds the heterogeneous GPTModel from the checkpoint's own args
(tools/decilm/hetero_from_args.py, local spec) and loads `nembridge import --spec local` strictly
at world size 1 and TP=2; every parameter equals an independent mapping of the HF tensors
(tools/decilm/decilm_expected.py) bit for bit; the fp32 logits match the pure-torch DeciLM
forward (tools/decilm/reference_forward.py); import -> export is byte-identical.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, hf_dir
from rank_tensors import raw_mismatch, tp_slice

TOOLS = ROOT / "tools" / "decilm"
sys.path.insert(0, str(TOOLS))
import decilm_expected as X  # noqa: E402
import reference_forward as R  # noqa: E402

SRC = hf_dir("dialects/ultra253b-v1")
BATCH, SEQ = 2, 48
LOGITS_RTOL = 1e-4
RUNS = [1, 2]  # world size = TP


def tokens(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (BATCH, SEQ), generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def results(nembridge, tmp_path_factory):
    work = tmp_path_factory.mktemp("decilm-ultra")
    nembridge.run("import", "--hf", SRC, "--out", work / "mc", "--spec", "local").ok()
    cfg = X.hf_config(SRC)
    jobs = [{"checkpoint": str(work / "mc"), "hf": str(SRC), "world_size": ws, "tp": ws,
             "tokens": tokens(cfg["vocab_size"]).tolist(), "dump": str(work / f"ws{ws}.pt")} for ws in RUNS]
    (work / "jobs.json").write_text(json.dumps(jobs))
    p = subprocess.run([sys.executable, str(TOOLS / "hetero_from_args.py"), "--jobs", str(work / "jobs.json")],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    out = {}
    for ws, job in zip(RUNS, jobs):
        dump = Path(job["dump"])
        files = [dump] if ws == 1 else [dump.with_name(f"{dump.stem}.rank{r}.pt") for r in (0, 1)]
        assert all(f.exists() for f in files), f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        out[ws] = [torch.load(f, weights_only=False) for f in files]
    return work, out


def test_fixture_has_a_fully_empty_layer():
    cfg = X.hf_config(SRC)
    empty = [i for i, b in enumerate(cfg["block_configs"]) if b["attention"]["no_op"] and b["ffn"]["no_op"]]
    assert empty == [2]
    assert not [k for k in X.hf_tensors(SRC) if k.startswith("model.layers.2.")]
    assert cfg["rope_scaling"]["factor"] == 16.0 and "_name_or_path" in cfg


@pytest.mark.parametrize("ws", RUNS)
def test_megatron_loads_strictly_bit_exact(results, ws):
    _, out = results
    for res in out[ws]:
        assert res["ok"], res["error"]
        assert res["key_diff"] == {"missing_in_checkpoint": [], "unexpected_in_checkpoint": [],
                                   "shape_mismatch": []}, res["key_diff"]
        per_layer = [(b["attn_no_op"], b["ffn_no_op"]) for b in res["per_layer"]]
        assert per_layer[2] == (True, True), per_layer
        exp = X.expected_megatron(SRC, "local", 128, tensors=X.hf_tensors(SRC))
        assert sorted(res["state"]) == sorted(exp)
        bad = [m for k in sorted(exp)
               if (m := raw_mismatch(k, res["state"][k], tp_slice(k, exp[k], res["tp"], res["tp_rank"])))]
        assert not bad, "\n".join(bad[:20])


@pytest.mark.parametrize("ws", RUNS)
def test_megatron_logits_match_reference(results, ws):
    _, out = results
    cfg = X.hf_config(SRC)
    V = cfg["vocab_size"]
    ref = R.forward(SRC, tokens(V))
    for res in out[ws]:
        assert res["forward_error"] is None, res["forward_error"]
        logits = res["logits"]
        assert torch.count_nonzero(logits[..., V:]) == 0
        diff = (logits[..., :V] - ref).abs().max().item()
        assert diff <= LOGITS_RTOL * ref.abs().max().item(), f"max |diff| {diff}"


def test_round_trip_byte_identical(nembridge, results):
    work, _ = results
    nembridge.run("export", "--megatron", work / "mc", "--out", work / "back").ok()
    for p in sorted(SRC.iterdir()):
        assert (work / "back" / p.name).read_bytes() == p.read_bytes(), p.name

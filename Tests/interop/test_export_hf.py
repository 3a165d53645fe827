"""`nembridge export --megatron DIR --out OUT` of checkpoints written by Megatron-Core itself.

For llama3-tiny (untied, GQA, vocab 1000 -> 1024) and llama32-tied-tiny (tied, vocab 1003):
tools/megatron/save_from_hf.py builds the Megatron-Core GPTModel (local spec, bf16 through
Float16Module, args from megatron.training's own parser), fills it from the HF tensors with its
own Llama mapping and saves it with `dist_checkpointing.save` like the training loop does, at
world size 1 and at TP=2 with two gloo ranks (one subprocess for all saves). Then

    nembridge export --megatron DIR --out OUT --hf-config <the HF fixture folder>

and:
- (a) OUT's tensors are the original's exactly: same names, dtypes, shapes, raw bytes (our own
  header parse, cross-checked with `safe_open`); tied: no lm_head; config/tokenizer files are
  copied byte for byte from --hf-config;
- (b) transformers loads OUT and its fp32 eager logits on fixed token ids are EXACTLY the
  original's (same bf16 weights, same computation);
- (c) `nembridge verify <fixture> OUT` and `nembridge verify OUT` (manifest) exit 0;
- (d) `nembridge verify <fixture> DIR` (HF vs the Megatron-written checkpoint) exits 0.
Also: export of a Megatron-written checkpoint without --hf-config writes config.json from the
checkpoint's args (the fixture's own values; the same logits); HF -> import -> export of llama3-sharded-tiny reproduces every file of the
source folder byte for byte.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, hf_dir
from st_reference import folder_tensors, non_weight_files, raw_bytes

SAVE_FROM_HF = ROOT / "tools" / "megatron" / "save_from_hf.py"
PYTHON = sys.executable
TIMEOUT = 600
FIXTURES = ["llama3-tiny", "llama32-tied-tiny"]
WORLD_SIZES = [1, 2]
CASES = [pytest.param(n, ws, id=f"{n}-ws{ws}") for n in FIXTURES for ws in WORLD_SIZES]
BATCH, SEQ = 2, 64


@pytest.fixture(scope="session")
def megatron_saves(tmp_path_factory) -> dict[tuple[str, int], Path]:
    """(fixture, world size) -> save dir written by Megatron-Core (one subprocess for all)."""
    root = tmp_path_factory.mktemp("mcore-saves")
    jobs, outs = [], {}
    for n in FIXTURES:
        for ws in WORLD_SIZES:
            out = root / f"{n}-ws{ws}"
            jobs.append({"hf": str(hf_dir(n)), "out": str(out), "world_size": ws})
            outs[(n, ws)] = out
    (root / "jobs.json").write_text(json.dumps(jobs))
    env = dict(os.environ, PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    p = subprocess.run([PYTHON, str(SAVE_FROM_HF), "--jobs", str(root / "jobs.json")],
                       capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert p.returncode == 0, (f"save_from_hf.py exited {p.returncode}\n--- stdout ---\n"
                               f"{p.stdout[-4000:]}\n--- stderr ---\n{p.stderr[-8000:]}")
    for (n, ws), out in outs.items():
        assert (out / "latest_checkpointed_iteration.txt").read_text() == "1"
        files = sorted(f.name for f in (out / "iter_0000001").glob("*.distcp"))
        assert len(files) == ws, files  # one data file per rank: really saved by ws ranks
    return outs


@pytest.fixture(scope="session")
def exported(nembridge, megatron_saves, tmp_path_factory) -> dict[tuple[str, int], Path]:
    root = tmp_path_factory.mktemp("exported")
    outs = {}
    for (n, ws), d in megatron_saves.items():
        out = root / f"{n}-ws{ws}"
        nembridge.run("export", "--megatron", d, "--out", out, "--hf-config", hf_dir(n)).ok()
        outs[(n, ws)] = out
    return outs


def tensor_problems(want_dir: Path, got_dir: Path) -> list[str]:
    want, got = folder_tensors(want_dir), folder_tensors(got_dir)
    problems = []
    if set(got) != set(want):
        problems.append(f"only in export: {sorted(set(got) - set(want))}; "
                        f"missing from export: {sorted(set(want) - set(got))}")
    for k in sorted(set(want) & set(got)):
        w, g = want[k], got[k]
        if (g.dtype, g.shape) != (w.dtype, w.shape):
            problems.append(f"{k}: {g.dtype} {g.shape}, expected {w.dtype} {w.shape}")
        elif raw_bytes(got_dir / g.file, g) != raw_bytes(want_dir / w.file, w):
            problems.append(f"{k}: bytes differ")
    return problems


@pytest.mark.parametrize("name,ws", CASES)
def test_export_tensors_byte_identical(exported, name, ws):
    out = exported[(name, ws)]
    problems = tensor_problems(hf_dir(name), out)
    assert not problems, "\n".join(problems)
    names = set(folder_tensors(out))
    tied = json.loads((hf_dir(name) / "config.json").read_text()).get("tie_word_embeddings")
    assert ("lm_head.weight" in names) == (not tied)


@pytest.mark.parametrize("name,ws", CASES)
def test_export_copies_config_and_tokenizer_from_hf_config(exported, name, ws):
    out = exported[(name, ws)]
    for f in non_weight_files(hf_dir(name)):
        assert (out / f).is_file(), f"{f} not in the export"
        assert (out / f).read_bytes() == (hf_dir(name) / f).read_bytes(), f"{f} differs"


def token_ids(vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(20251123)
    return torch.randint(0, vocab, (BATCH, SEQ), generator=g)


@functools.lru_cache(maxsize=None)
def logits(folder: str) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    vocab = model.config.vocab_size
    with torch.no_grad():
        return model(token_ids(vocab)).logits.float()


@pytest.mark.parametrize("name,ws", CASES)
def test_transformers_logits_exactly_equal(exported, name, ws):
    ref = logits(str(hf_dir(name)))
    got = logits(str(exported[(name, ws)]))
    assert got.shape == ref.shape
    diff = float((got - ref).abs().max())
    assert torch.equal(got, ref), f"logits differ (max |diff| {diff:.3e})"


@pytest.mark.parametrize("name,ws", CASES)
def test_verify_export_against_fixture_and_manifest(nembridge, exported, name, ws):
    out = exported[(name, ws)]
    r = nembridge.run("verify", hf_dir(name), out).ok()
    assert "OK" in r.stdout
    assert (out / "nembridge-manifest.json").is_file()
    nembridge.run("verify", out).ok()


@pytest.mark.parametrize("name,ws", CASES)
def test_verify_fixture_against_megatron_written_checkpoint(nembridge, megatron_saves, name, ws):
    nembridge.run("verify", hf_dir(name), megatron_saves[(name, ws)]).ok()


@pytest.mark.parametrize("name,ws", CASES)
def test_export_without_hf_config_writes_it_from_the_training_args(nembridge, megatron_saves,
                                                                   tmp_path, name, ws):
    """No recorded config and no --hf-config: config.json comes from the checkpoint's args (the
    llama table's hf_config section). Every field it writes is the fixture's own value, and
    transformers' logits of the export are exactly the fixture's."""
    out = tmp_path / "out"
    r = nembridge.run("export", "--megatron", megatron_saves[(name, ws)], "--out", out).ok()
    assert "written from the checkpoint's training args" in r.stdout, r.stdout
    assert "no tokenizer carried" in r.stdout, r.stdout
    got = json.loads((out / "config.json").read_text())
    want = json.loads((hf_dir(name) / "config.json").read_text())
    if "rope_parameters" not in want:  # transformers 4.x spelling of the same fields
        want["rope_parameters"] = {**want.get("rope_scaling", {}), "rope_theta": want["rope_theta"]}
        want.setdefault("dtype", want.get("torch_dtype"))
    differ = {k: (got[k], want.get(k)) for k in got if got[k] != want.get(k)}
    assert not differ, f"config.json fields written from the args differ from the fixture's: {differ}"
    assert json.loads((out / "generation_config.json").read_text()) == {"_from_model_config": True}
    assert torch.equal(logits(str(out)), logits(str(hf_dir(name))))


def test_import_export_round_trip_sharded_byte_identical(nembridge, tmp_path):
    src = hf_dir("llama3-sharded-tiny")
    nembridge.run("import", "--hf", src, "--out", tmp_path / "mcore").ok()
    out = tmp_path / "hf"
    nembridge.run("export", "--megatron", tmp_path / "mcore", "--out", out).ok()
    files = sorted(p.name for p in src.iterdir() if p.is_file())
    assert sum(f.endswith(".safetensors") for f in files) == 5
    differ = [f for f in files
              if not (out / f).is_file() or (out / f).read_bytes() != (src / f).read_bytes()]
    assert not differ, f"not reproduced byte for byte: {differ}"
    extra = sorted(p.name for p in out.iterdir() if p.name not in files)
    assert extra == ["nembridge-manifest.json"], extra

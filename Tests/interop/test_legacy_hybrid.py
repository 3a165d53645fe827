"""Legacy `--ckpt-format torch` checkpoints of the hybrid models against a real Megatron-Core
HybridModel (tools/hybrid/hybrid_load.py: CPU, gloo, world size 2, local spec with the pre-norms
re-keyed, SequentialMLP experts).

For nemotron3-moe-tiny at EP=2 (8 routed experts: 4 local experts per rank, `local_experts.<k>`),
nemotron-h-tiny at TP=2 (Mamba in_proj/conv1d split per component, `conv1d_weight`) and
nemotron3-super-tiny at EP=2 (LatentMoE, the MTP block), and nemotron-h-tiny at PP=2, evenly and
with 1 + 3 layers (stage-local layer numbers; no forward across stages):
- `nembridge import --spec local` -> DIST (torch_dist, TP=1), which Megatron-Core loads strictly
  through dist_checkpointing at the target layout (proven in test_hybrid / test_reshard_megatron);
- `nembridge import --ckpt-format torch` and `nembridge reshard DIST --ckpt-format torch` at the
  target layout -> legacy rank files, each loaded by its rank as Megatron-LM's load_checkpoint
  does (get_checkpoint_name, torch.load, load_state_dict(strict=True) into a NaN-filled model).
Every parameter of every rank must be byte-identical to the DIST load, nothing may stay NaN, and
the fp32 logits must be equal (torch.equal) where there is one stage. `export` of the legacy files gives the source HF
tensors byte for byte.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, hf_dir
from rank_tensors import raw_mismatch
from st_reference import weight_files

TOOL = ROOT / "tools" / "hybrid" / "hybrid_load.py"
TIMEOUT = 900
# case -> (fixture, layout flags, tp, ep, pp)
CASES = {
    "moe-ep2": ("nemotron3-moe-tiny", ["--ep", "2"], 1, 2, 1),
    "mamba-tp2": ("nemotron-h-tiny", ["--tp", "2"], 2, 1, 1),
    "mamba-pp2": ("nemotron-h-tiny", ["--pp", "2"], 1, 1, 2),
    # 4 layers: 1 on the first stage, 3 on the last (Megatron-LM's --decoder-first/last-pipeline-num-layers)
    "mamba-pp2-uneven": ("nemotron-h-tiny", ["--pp", "2", "--decoder-first-pipeline-num-layers", "1",
                                             "--decoder-last-pipeline-num-layers", "3"], 1, 1, 2),
    "super-ep2": ("nemotron3-super-tiny", ["--ep", "2"], 1, 2, 1),
}
SOURCES = ["import", "reshard"]


def padded_vocab(name: str, tp: int) -> int:
    vocab = json.loads((hf_dir(name) / "config.json").read_text())["vocab_size"]
    step = 128 * tp
    return (vocab + step - 1) // step * step


def ckpt_dir(out: Path) -> Path:
    it = (out / "latest_checkpointed_iteration.txt").read_text().strip()
    return out / ("release" if it == "release" else f"iter_{int(it):07d}")


@pytest.fixture(scope="module")
def checkpoints(nembridge, tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("legacy-hybrid")
    out = {}
    for case, (name, flags, tp, _, _) in CASES.items():
        # The torch_dist reference is written at the target TP, so its vocabulary padding
        # (128 x TP) is the one the legacy files have.
        dist = root / f"{case}.dist"
        nembridge.run("import", "--hf", hf_dir(name), "--out", dist, "--spec", "local", "--tp", str(tp)).ok()
        out[(case, "dist")] = dist
        imported = root / f"{case}.import"
        nembridge.run("import", "--hf", hf_dir(name), "--out", imported, "--spec", "local",
                      "--ckpt-format", "torch", *flags).ok()
        out[(case, "import")] = imported
        resharded = root / f"{case}.reshard"
        nembridge.run("reshard", dist, "--out", resharded, "--ckpt-format", "torch", *flags).ok()
        out[(case, "reshard")] = resharded
    return out


@pytest.fixture(scope="module")
def loads(checkpoints, tmp_path_factory) -> dict[tuple[str, str], list[dict]]:
    import test_hybrid as TH

    work = tmp_path_factory.mktemp("legacy-hybrid-load")
    jobs, tags = [], []
    for case, (name, _, tp, ep, pp) in CASES.items():
        toks = TH.token_ids(TH.hf_config(name)["vocab_size"]).tolist()
        for source in ["dist"] + SOURCES:
            path = checkpoints[(case, source)]
            uneven = case.endswith("-uneven")
            jobs.append({"hf": str(hf_dir(name)), "world_size": 2, "tp": tp, "ep": ep, "pp": pp,
                         "first_stage_layers": 1 if uneven else None, "last_stage_layers": 3 if uneven else None,
                         "padded_vocab": padded_vocab(name, tp), "tokens": toks,
                         "checkpoint": str(ckpt_dir(path) if source == "dist" else path),
                         "format": "torch_dist" if source == "dist" else "torch",
                         "dump": str(work / f"{case}.{source}.pt")})
            tags.append((case, source))
    (work / "jobs.json").write_text(json.dumps(jobs))
    env = dict(os.environ, PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, str(TOOL), "--jobs", str(work / "jobs.json")],
                       capture_output=True, text=True, timeout=TIMEOUT, env=env)
    results = {}
    for tag, job in zip(tags, jobs):
        dump = Path(job["dump"])
        files = [dump.with_name(f"{dump.stem}.rank{r}{dump.suffix}") for r in (0, 1)]
        if not all(f.exists() for f in files):
            raise AssertionError(f"hybrid_load exited {p.returncode} without results for {tag}\n"
                                 f"--- stdout ---\n{p.stdout[-4000:]}\n--- stderr ---\n{p.stderr[-8000:]}")
        results[tag] = [torch.load(f, weights_only=False) for f in files]
    return results


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("case", list(CASES))
def test_legacy_loads_per_rank_bit_identical_to_torch_dist(loads, case, source):
    name, pp = CASES[case][0], CASES[case][4]
    reference, legacy = loads[(case, "dist")], loads[(case, source)]
    for rank, (want, got) in enumerate(zip(reference, legacy)):
        assert want["ok"], f"{name} torch_dist rank {rank}: {want['error']}"
        assert got["ok"], f"{name} legacy ({source}) rank {rank}: {got['error']}"
        assert not got["nan_after_load"], f"rank {rank}: still NaN after the legacy load: {got['nan_after_load'][:5]}"
        assert set(got["state"]) == set(want["state"])
        assert sorted(got["extra_state"]) == sorted(want["extra_state"])
        bad = [m for k in want["state"] if (m := raw_mismatch(k, got["state"][k], want["state"][k]))]
        assert not bad, f"rank {rank}: {len(bad)} parameters differ from the torch_dist load: {bad[:5]}"
        if pp == 1:
            assert torch.equal(got["logits"], want["logits"]), f"rank {rank}: logits differ"
    if pp == 2:
        # Each stage numbers its layers from 0: both ranks hold a `decoder.layers.0.`, the
        # embedding only on the first, the output layer only on the last.
        assert all(any(k.startswith("decoder.layers.0.") for k in x["state"]) for x in legacy)
        layers = [len({k.split(".")[2] for k in x["state"] if k.startswith("decoder.layers.")}) for x in legacy]
        assert layers == ([1, 3] if case.endswith("-uneven") else [2, 2])
        assert "embedding.word_embeddings.weight" in legacy[0]["state"]
        assert "embedding.word_embeddings.weight" not in legacy[1]["state"]
        assert "output_layer.weight" in legacy[1]["state"] and "output_layer.weight" not in legacy[0]["state"]
    if name == "nemotron3-moe-tiny":
        # EP rank r holds global experts 4r..4r+3 as local experts 0..3.
        assert [x["ep_rank"] for x in legacy] == [0, 1]
        assert any(".local_experts.3." in k for k in legacy[1]["state"])


@pytest.mark.parametrize("case", list(CASES))
def test_legacy_export_is_the_source(nembridge, checkpoints, tmp_path, case):
    from safetensors import safe_open

    name = CASES[case][0]
    out = tmp_path / "hf"
    nembridge.run("export", "--megatron", checkpoints[(case, "import")], "--out", out).ok()
    src = {}
    for f in weight_files(hf_dir(name)):
        with safe_open(hf_dir(name) / f, "pt") as h:
            src.update({k: h.get_tensor(k) for k in h.keys()})
    got = {}
    for f in weight_files(out):
        with safe_open(out / f, "pt") as h:
            got.update({k: h.get_tensor(k) for k in h.keys()})
    assert set(got) == set(src)
    bad = [m for k in src if (m := raw_mismatch(k, got[k], src[k]))]
    assert not bad, bad[:5]

"""Legacy Megatron-LM checkpoints (`--ckpt-format torch`: release/mp_rank_TT[_PPP]/
model_optim_rng.pt) against real Megatron (megatron-core / megatron.training 0.19.2, CPU, gloo).

For llama3-tiny (untied, vocab 1000 -> 1024) and llama32-tied-tiny (tied: at PP > 1 the last
stage holds its own output_layer.weight, the embedding's copy):
1. `nembridge import --spec local` -> DIST (torch_dist, TP=1). The local spec because the
   Megatron side runs on CPU without Transformer Engine: legacy files hold the module names of
   the spec (input_layernorm.weight, not linear_qkv.layer_norm_weight), and nembridge follows
   the spec recorded in args.transformer_impl.
2. tools/megatron/legacy_checkpoint.py save: four gloo ranks (TP=2, PP=2) load DIST strictly
   and write MLEGACY with Megatron-LM's own code (generate_state_dict, get_checkpoint_name).
3. `nembridge export --megatron MLEGACY --hf-config HF` -> every tensor byte-identical to the
   source's (safe_open; same names, dtypes, shapes), and transformers loads it (no missing or
   unexpected keys) with logits equal (torch.equal) to the source's.
4. `nembridge import --ckpt-format torch --tp 2 --pp 2 --spec local` -> NLEGACY: the rank files
   and tracker Megatron-LM expects, and legacy_checkpoint.py check (each rank: load_checkpoint's
   torch.load + load_state_dict(strict=True) of its file, compared byte for byte with DIST
   loaded strictly through dist_checkpointing) passes on all four ranks.
5. `reshard --megatron` between formats and layouts: MLEGACY -> torch_dist TP=1 (export
   byte-identical; Megatron loads it and equals MLEGACY), DIST -> legacy TP=2 PP=2 (check
   passes), MLEGACY -> legacy TP=1 PP=2 (export byte-identical). The default (te) spec's legacy
   import exports byte-identical too.
   A torch_dist source padded for TP=1 (multiple of 8) -> legacy TP=2: the vocabulary is
   re-padded for the target (multiple of 16, zero rows), as the model Megatron-LM builds there.
6. A legacy checkpoint with a rank file missing, or with a truncated rank file: export exits
   non-zero naming it and writes nothing.

Megatron runs in two subprocesses of legacy_checkpoint.py `jobs` (all saves, then all checks),
each one set of four spawned ranks.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, hf_dir
from rank_tensors import raw_mismatch
from st_reference import weight_files

TOOL = ROOT / "tools" / "megatron" / "legacy_checkpoint.py"
PYTHON = sys.executable
TIMEOUT = 900
FIXTURES = ["llama3-tiny", "llama32-tied-tiny"]
TP, PP = 2, 2
RANK_FILES = [f"release/mp_rank_{t:02d}_{p:03d}/model_optim_rng.pt"
              for p in range(PP) for t in range(TP)]
BATCH, SEQ = 2, 48


# ------------------------------------------------------------------------------------------------
# checkpoints

def run_tool(jobs: list[dict], work: Path, tag: str) -> tuple[subprocess.CompletedProcess, list]:
    """legacy_checkpoint.py jobs (TP=2, PP=2); (process, results[job][rank])."""
    (work / f"{tag}.json").write_text(json.dumps(jobs))
    env = dict(os.environ, PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    p = subprocess.run([PYTHON, str(TOOL), "jobs", str(work / f"{tag}.json"), "--tp", str(TP),
                        "--pp", str(PP), "--json", str(work / f"{tag}.results.json")],
                       capture_output=True, text=True, timeout=TIMEOUT, env=env)
    f = work / f"{tag}.results.json"
    if not f.exists():
        raise AssertionError(f"legacy_checkpoint.py exited {p.returncode} without results\n"
                             f"--- stdout ---\n{p.stdout[-4000:]}\n--- stderr ---\n"
                             f"{p.stderr[-8000:]}")
    return p, json.loads(f.read_text())


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("legacy")


@pytest.fixture(scope="module")
def dist(nembridge, work) -> dict[str, Path]:
    """Step 1: name -> torch_dist import (TP=1, local spec)."""
    outs = {}
    for n in FIXTURES:
        outs[n] = work / f"{n}.dist"
        nembridge.run("import", "--hf", hf_dir(n), "--out", outs[n], "--spec", "local").ok()
    return outs


@pytest.fixture(scope="module")
def mlegacy(dist, work) -> dict[str, Path]:
    """Step 2: name -> legacy checkpoint written by Megatron (TP=2, PP=2)."""
    outs = {n: work / f"{n}.mlegacy" for n in FIXTURES}
    jobs = [{"cmd": "save", "from": str(dist[n]), "out": str(outs[n])} for n in FIXTURES]
    p, results = run_tool(jobs, work, "save")
    bad = [f"{r['out']} rank {r['rank']}: {r['error']}" for row in results for r in row
           if not r["ok"]]
    assert p.returncode == 0 and not bad, (
        f"Megatron could not write the legacy checkpoints (exit {p.returncode}):\n"
        + "\n".join(bad) + f"\n--- stdout ---\n{p.stdout[-4000:]}")
    return outs


@pytest.fixture(scope="module")
def made(nembridge, dist, mlegacy, work) -> dict[tuple[str, str], tuple]:
    """(name, step) -> (nembridge Result, output folder) for steps 4 and 5."""
    out = {}
    for n in FIXTURES:
        hf = hf_dir(n)
        steps = {
            "nlegacy": ["import", "--hf", hf, "--ckpt-format", "torch", "--tp", TP, "--pp", PP,
                        "--spec", "local"],
            "nlegacy-te": ["import", "--hf", hf, "--ckpt-format", "torch", "--tp", TP,
                           "--pp", PP],
            "l3": ["reshard", "--megatron", dist[n], "--ckpt-format", "torch", "--tp", TP,
                   "--pp", PP],
            "d2": ["reshard", "--megatron", mlegacy[n], "--ckpt-format", "torch_dist",
                   "--hf-config", hf],
            "l12": ["reshard", "--megatron", mlegacy[n], "--ckpt-format", "torch", "--tp", 1,
                    "--pp", 2, "--hf-config", hf],
            # vocabulary padded to a multiple of 8 at TP=1; the TP=2 legacy files need a multiple
            # of 16 (Megatron-LM's padding for the target's TP): zero rows are added
            "dist8": ["import", "--hf", hf, "--spec", "local", "--make-vocab-size-divisible-by", 8],
            "l8": ["reshard", work / f"{n}.dist8", "--ckpt-format", "torch", "--tp", TP, "--pp", PP],
        }
        for step, args in steps.items():
            d = work / f"{n}.{step}"
            out[(n, step)] = (nembridge.run(*args, "--out", d), d)
    return out


def made_ok(made, name: str, step: str) -> Path:
    res, d = made[(name, step)]
    res.ok()
    return d


@pytest.fixture(scope="module")
def checks(dist, mlegacy, made, work) -> dict[tuple[str, str], list[dict]]:
    """(name, what) -> per-rank results of legacy_checkpoint.py check (one subprocess)."""
    jobs, tags = [], []
    for n in FIXTURES:
        for tag, legacy, ref in (("megatron", mlegacy[n], dist[n]),
                                 ("nlegacy", made[(n, "nlegacy")][1], dist[n]),
                                 ("l3", made[(n, "l3")][1], dist[n]),
                                 ("d2", mlegacy[n], made[(n, "d2")][1]),
                                 ("l8", made[(n, "l8")][1], made[(n, "dist8")][1])):
            jobs.append({"cmd": "check", "legacy": str(legacy), "reference": str(ref)})
            tags.append((n, tag))
    _, results = run_tool(jobs, work, "check")
    return dict(zip(tags, results))


def assert_check_passed(checks, name: str, what: str) -> None:
    rows = checks[(name, what)]
    assert len(rows) == TP * PP
    lines = [f"rank {r['rank']}: {'OK' if r['ok'] else 'FAIL'} {r.get('summary') or ''}"
             f"{'' if r['ok'] else chr(10) + str(r['error'])}" for r in rows]
    assert all(r["ok"] for r in rows), "\n".join(lines)
    files = sorted(r["file"] for r in rows)
    assert files == sorted(RANK_FILES), files


# ------------------------------------------------------------------------------------------------
# HF comparisons

def st_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    out = {}
    for fn in weight_files(folder):
        with safe_open(str(folder / fn), "pt") as f:
            for k in f.keys():
                assert k not in out, f"{folder}: {k} in two files"
                out[k] = f.get_tensor(k)
    return out


def tensor_problems(want_dir: Path, got_dir: Path) -> list[str]:
    want, got = st_tensors(want_dir), st_tensors(got_dir)
    if set(got) != set(want):
        return [f"only in export: {sorted(set(got) - set(want))}; missing from export: "
                f"{sorted(set(want) - set(got))}"]
    return [m for k in sorted(want) if (m := raw_mismatch(k, got[k], want[k]))]


def token_ids(vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(20251124)
    return torch.randint(0, vocab, (BATCH, SEQ), generator=g)


@functools.lru_cache(maxsize=None)
def hf_logits(folder: str) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model, info = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"transformers loading {folder}: {bad}"
    with torch.no_grad():
        return model.eval()(token_ids(model.config.vocab_size)).logits.float()


def export(nembridge, src: Path, out: Path, name: str) -> Path:
    nembridge.run("export", "--megatron", src, "--out", out, "--hf-config", hf_dir(name)).ok()
    return out


def assert_byte_identical(name: str, out: Path) -> None:
    problems = tensor_problems(hf_dir(name), out)
    assert not problems, "\n".join(problems)


def assert_legacy_layout(d: Path, files: list[str]) -> None:
    assert (d / "latest_checkpointed_iteration.txt").read_text().strip() == "release"
    got = sorted(str(p.relative_to(d)) for p in (d / "release").rglob("*") if p.is_file())
    assert got == sorted(files), got


# ------------------------------------------------------------------------------------------------
# 2-3: Megatron's legacy checkpoint -> HF

@pytest.mark.parametrize("name", FIXTURES)
def test_megatron_writes_the_expected_rank_files(mlegacy, name):
    assert_legacy_layout(mlegacy[name], RANK_FILES)


@pytest.mark.parametrize("name", FIXTURES)
def test_checker_accepts_megatrons_own_legacy(checks, name):
    assert_check_passed(checks, name, "megatron")


@pytest.mark.parametrize("name", FIXTURES)
def test_export_megatron_legacy_byte_identical_and_same_logits(nembridge, mlegacy, work, name):
    out = export(nembridge, mlegacy[name], work / f"{name}.mlegacy.hf", name)
    assert_byte_identical(name, out)
    ref, got = hf_logits(str(hf_dir(name))), hf_logits(str(out))
    assert got.shape == ref.shape
    assert torch.equal(got, ref), f"logits differ (max |diff| {float((got - ref).abs().max()):.3e})"


# ------------------------------------------------------------------------------------------------
# 4: nembridge's legacy import, loaded by Megatron

@pytest.mark.parametrize("name", FIXTURES)
def test_import_legacy_writes_the_rank_files(made, name):
    assert_legacy_layout(made_ok(made, name, "nlegacy"), RANK_FILES)


@pytest.mark.parametrize("name", FIXTURES)
def test_import_legacy_loads_in_megatron_identical_to_dist(made, checks, name):
    made_ok(made, name, "nlegacy")
    assert_check_passed(checks, name, "nlegacy")


@pytest.mark.parametrize("name", FIXTURES)
def test_import_legacy_te_spec_export_byte_identical(nembridge, made, work, name):
    d = made_ok(made, name, "nlegacy-te")
    assert_legacy_layout(d, RANK_FILES)
    assert_byte_identical(name, export(nembridge, d, work / f"{name}.nlegacy-te.hf", name))


# ------------------------------------------------------------------------------------------------
# 5: reshard between the formats

@pytest.mark.parametrize("name", FIXTURES)
def test_reshard_megatron_legacy_to_dist(nembridge, made, checks, work, name):
    d = made_ok(made, name, "d2")
    assert (d / "latest_checkpointed_iteration.txt").read_text().strip() == "release"
    assert (d / "release" / ".metadata").is_file() and (d / "release" / "metadata.json").is_file()
    assert_byte_identical(name, export(nembridge, d, work / f"{name}.d2.hf", name))
    assert_check_passed(checks, name, "d2")  # Megatron loads it, equal to its own legacy


@pytest.mark.parametrize("name", FIXTURES)
def test_reshard_dist_to_legacy_loads_in_megatron(made, checks, name):
    assert_legacy_layout(made_ok(made, name, "l3"), RANK_FILES)
    assert_check_passed(checks, name, "l3")


@pytest.mark.parametrize("name", FIXTURES)
def test_reshard_megatron_legacy_to_tp1_pp2_export_byte_identical(nembridge, made, work, name):
    d = made_ok(made, name, "l12")
    assert_legacy_layout(d, [f"release/mp_rank_00_{p:03d}/model_optim_rng.pt" for p in (0, 1)])
    assert_byte_identical(name, export(nembridge, d, work / f"{name}.l12.hf", name))


@pytest.mark.parametrize("name", FIXTURES)
def test_reshard_to_legacy_pads_the_vocabulary_for_the_target_tp(nembridge, made, checks, work, name):
    """The torch_dist source pads to a multiple of 8 (TP=1); Megatron-LM builds the TP=2 model
    with a multiple of 8 x 2: the legacy rows are the source's, then zeros, and load there."""
    d = made_ok(made, name, "l8")
    assert_legacy_layout(d, RANK_FILES)
    vocab = json.loads((hf_dir(name) / "config.json").read_text())["vocab_size"]
    state = torch.load(d / RANK_FILES[0], map_location="cpu", weights_only=False)
    want = -(-vocab // (8 * TP)) * 8 * TP
    assert state["args"].padded_vocab_size == want
    assert state["model"]["embedding.word_embeddings.weight"].shape[0] == want // TP
    assert_check_passed(checks, name, "l8")
    assert_byte_identical(name, export(nembridge, d, work / f"{name}.l8.hf", name))


# ------------------------------------------------------------------------------------------------
# 6: damaged legacy checkpoints

def assert_export_fails_naming(nembridge, src: Path, tmp_path: Path, needle: str) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    out = parent / "out"
    r = nembridge.run("export", "--megatron", src, "--out", out, "--hf-config",
                      hf_dir(FIXTURES[0]))
    assert r.returncode > 0, (r.returncode, r.stderr, r.stdout[:2000])  # < 0: killed by a signal
    assert needle in r.stderr, f"stderr does not name {needle}:\n{r.stderr}"
    assert not out.exists() and list(parent.iterdir()) == [], list(parent.iterdir())


def test_export_with_a_rank_file_missing_fails_cleanly(nembridge, made, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(made_ok(made, FIXTURES[0], "nlegacy"), src)
    shutil.rmtree(src / "release" / "mp_rank_01_001")
    assert_export_fails_naming(nembridge, src, tmp_path, "mp_rank_01_001")


def test_export_with_a_truncated_rank_file_fails_cleanly(nembridge, made, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(made_ok(made, FIXTURES[0], "nlegacy"), src)
    f = src / "release" / "mp_rank_00_001" / "model_optim_rng.pt"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    assert_export_fails_naming(nembridge, src, tmp_path, "mp_rank_00_001")


# ------------------------------------------------------------------------------------------------
# inspect: what nembridge reads in Megatron's own rank files

@pytest.mark.parametrize("name", FIXTURES)
def test_inspect_lists_megatrons_rank_files_as_torch_load_reads_them(nembridge, mlegacy, name):
    report = nembridge.run("inspect", "--json", mlegacy[name]).ok().json()
    assert report["format"] == "torch"
    assert report["legacy_layout"] == {"tp": TP, "pp": PP, "ep": 1}
    got = {t["key"]: t for t in report["tensors"]}
    want = {}
    for rel in RANK_FILES:
        path = mlegacy[name] / rel
        state = torch.load(path, map_location="cpu", weights_only=False)["model"]
        rank = rel.split("/")[1]
        for k, v in state.items():
            if not isinstance(v, torch.Tensor):
                continue
            want[f"{rank}/{k}"] = v
            t = got.get(f"{rank}/{k}")
            assert t is not None, f"inspect misses {rank}/{k}"
            assert t["shape"] == list(v.shape) and t["dtype"] == str(v.dtype).removeprefix("torch.")
            # the byte range inspect reports holds exactly the tensor's bytes
            (chunk,) = t["chunks"]
            with open(path, "rb") as f:
                f.seek(chunk["offset"])
                raw = f.read(chunk["length"])
            assert raw == v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(), f"{rank}/{k}"
    assert set(got) == set(want)


def test_many_rank_files_under_a_low_open_file_limit(nembridge, made, tmp_path):
    """A legacy checkpoint keeps one file open per rank (1024 at PP 16 x TP 8 x EP 8, the usual
    soft limit): nembridge raises its soft limit on open files to the hard one. Run with a soft
    limit of 7 (stdio + 4 rank files + the output would not fit)."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    out = tmp_path / "out"
    p = subprocess.run([nembridge.exe, "export", "--megatron", str(made_ok(made, FIXTURES[0], "nlegacy")),
                        "--out", str(out)], capture_output=True, text=True, timeout=300,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (7, hard)))
    assert p.returncode == 0, p.stderr
    assert_byte_identical(FIXTURES[0], out)

"""`nembridge reshard --megatron SRC --out DST --tp N [--ep N]` against real Megatron-Core
(0.19.2, CPU, gloo).

(a) llama3-tiny: `import` (TP=1 chunks) -> `reshard --tp 4` -> `reshard --tp 2`. Megatron-Core
    builds the GPTModel from the checkpoint's args (tools/megatron/gpt_from_args.py) and loads the
    TP=2 result strictly (RAISE_ALL + load_state_dict(strict=True), NaN-filled first) at world
    size 2 with TP=2 and at world size 1; every parameter of every rank is byte-identical to
    test_import_megatron's independent mapping of the HF tensors (`expected_megatron`,
    `tp_slice`). Whole items: for every key in the TP=2 checkpoint's `.metadata` the stored
    chunk boxes are exactly the boxes TP ranks 0 and 1 ask for in `model.sharded_state_dict()`
    (ShardedTensor global_offset / local_shape, prepended layer axes of size 1; a box asked by
    both ranks -- replicated tensors -- stored once), each chunk is one whole stored item, and
    the object keys are exactly the ShardedObjects the ranks ask for.
(b) nemotron3-moe-tiny: `import --spec local` -> `reshard --ep 4` -> `reshard --ep 2`; a real
    HybridModel (tools/hybrid/hybrid_load.py) loads it strictly at world size 2 with EP=2, every
    parameter byte-identical to test_hybrid's mapping (`expected_rank`), chunk boxes as in (a),
    and the fp32 logits equal (torch.equal) those of the TP=1 import loaded at world size 1.
(c) `nembridge export` of every resharded checkpoint gives the source HF files byte-identical;
    reshard carries the objects, common state, common.pt, run_config.yaml, metadata.json, the
    recorded HF files and latest_checkpointed_iteration.txt unchanged.
    `import --tp/--ep N` stores the same chunks, byte for byte, as the reshard chain ending at N.
(d) a layout the tensors cannot be split into (`--tp 3` on llama3-tiny, `--ep 3` on 8 experts)
    exits 1 naming what cannot be split and leaves nothing behind. xfail(strict): `--tp 8` on
    llama3-tiny (4 heads; Megatron-Core rejects TP=8) is written instead of refused.

All Megatron work runs in ONE subprocess: this file run as a script (`--jobs JOBS.json`), which
reuses gpt_from_args.run_job / hybrid_load.run_job and hybrid_keys.sharded_records
(world-size-1 jobs in that process, world-size-2 jobs in one pair of spawned gloo ranks).
"""
from __future__ import annotations

import datetime
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from conftest import ROOT, hf_dir
from rank_tensors import raw_mismatch, tp_slice

LLAMA = "llama3-tiny"
MOE = "nemotron3-moe-tiny"
PYTHON = sys.executable
TIMEOUT = 600
# fixture -> (import flags, reshard steps [(label, flags)], each step from the previous one)
CHAINS = {
    LLAMA: ([], [("tp4", ["--tp", "4"]), ("tp2", ["--tp", "2"])]),
    MOE: (["--spec", "local"], [("ep4", ["--ep", "4"]), ("ep2", ["--ep", "2"])]),
}
RESHARDED = [(n, lbl) for n, (_, steps) in CHAINS.items() for lbl, _ in steps]


# ------------------------------------------------------------------------------------------------
# checkpoints

def ckpt_dir(out: Path) -> Path:
    it = (out / "latest_checkpointed_iteration.txt").read_text().strip()
    return out / ("release" if it == "release" else f"iter_{int(it):07d}")


def read_metadata(d: Path):
    from torch.distributed.checkpoint import FileSystemReader

    return FileSystemReader(str(d)).read_metadata()


@pytest.fixture(scope="session")
def chains(nembridge, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """(fixture, "import" | step label) -> checkpoint folder; each step reshards the previous."""
    root = tmp_path_factory.mktemp("reshard-megatron")
    outs = {}
    for name, (flags, steps) in CHAINS.items():
        prev = root / f"{name}.import"
        nembridge.run("import", "--hf", hf_dir(name), "--out", prev, *flags).ok()
        outs[(name, "import")] = prev
        for label, rflags in steps:
            out = root / f"{name}.{label}"
            nembridge.run("reshard", "--megatron", prev, "--out", out, *rflags).ok()
            outs[(name, label)] = prev = out
    return outs


# ------------------------------------------------------------------------------------------------
# Megatron-Core (one subprocess)

@pytest.fixture(scope="session")
def megatron(chains, tmp_path_factory) -> dict[str, list[dict]]:
    import test_hybrid as TH

    work = tmp_path_factory.mktemp("reshard-megatron-load")
    moe_args = read_common_state(ckpt_dir(chains[(MOE, "ep2")]))["args"]
    toks = TH.token_ids(TH.hf_config(MOE)["vocab_size"]).tolist()
    hyb = {"kind": "hybrid", "hf": str(hf_dir(MOE)), "padded_vocab": moe_args.padded_vocab_size,
           "tp": 1, "tokens": toks}
    jobs = {
        # world size 2 (GPT first: hybrid_keys' CPU shims patch tensor_parallel globally)
        "llama-tp2": {"kind": "gpt", "checkpoint": chains[(LLAMA, "tp2")], "world_size": 2,
                      "tp": 2, "ep": 1, "tokens": None, "records": True},
        "moe-ep2": {**hyb, "checkpoint": chains[(MOE, "ep2")], "world_size": 2, "ep": 2,
                    "records": True},
        # world size 1
        "llama-ws1": {"kind": "gpt", "checkpoint": chains[(LLAMA, "tp2")], "world_size": 1,
                      "tp": 1, "ep": 1, "tokens": None, "records": False},
        "moe-import-ws1": {**hyb, "checkpoint": chains[(MOE, "import")], "world_size": 1,
                           "ep": 1, "records": False},
    }
    for tag, j in jobs.items():
        j["checkpoint"] = str(ckpt_dir(Path(j["checkpoint"])))
        j["dump"] = str(work / f"{tag}.pt")
    (work / "jobs.json").write_text(json.dumps(list(jobs.values())))
    env = dict(os.environ, PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    p = subprocess.run([PYTHON, str(Path(__file__).resolve()), "--jobs", str(work / "jobs.json")],
                       capture_output=True, text=True, timeout=TIMEOUT, env=env)
    results = {}
    for tag, j in jobs.items():
        files = [_dump(j, None)] if j["world_size"] == 1 else [_dump(j, r) for r in (0, 1)]
        if not all(f.exists() for f in files):
            raise AssertionError(f"Megatron runner exited {p.returncode} without results\n"
                                 f"--- stdout ---\n{p.stdout[-4000:]}\n"
                                 f"--- stderr ---\n{p.stderr[-8000:]}")
        results[tag] = [torch.load(f, weights_only=False) for f in files]
    return results


def loaded(megatron, tag: str) -> list[dict]:
    res = megatron[tag]
    for r, x in enumerate(res):
        assert x["ok"], f"Megatron-Core could not load {tag} (rank {r}):\n{x['error']}"
    return res


def read_common_state(d: Path) -> dict:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    sd = {"common_state/shard_0_1": io.BytesIO()}
    with warnings.catch_warnings():  # "torch.distributed is disabled ...": intended here
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(sd, storage_reader=FileSystemReader(str(d)), no_dist=True)
    v = sd["common_state/shard_0_1"]
    if isinstance(v, io.BytesIO):
        v = torch.load(io.BytesIO(v.getvalue()), weights_only=False)
    return v[0]


# ------------------------------------------------------------------------------------------------
# (a) llama3-tiny at TP=2

def test_llama_tp2_loads_strictly_bit_identical(megatron):
    import test_import_megatron as TIM

    exp = TIM.expected_megatron(LLAMA)
    problems = []
    for tag, tp in (("llama-tp2", 2), ("llama-ws1", 1)):
        res = loaded(megatron, tag)
        assert [x["tp_rank"] for x in res] == list(range(len(res)))
        for r, x in enumerate(res):
            assert x["tp"] == tp
            assert set(x["state"]) == set(exp), (
                f"{tag} rank {r}: only in Megatron {sorted(set(x['state']) - set(exp))}, "
                f"only expected {sorted(set(exp) - set(x['state']))}")
            for k in sorted(exp):
                m = raw_mismatch(k, x["state"][k], tp_slice(k, exp[k], tp, r))
                if m:
                    problems.append(f"{tag} rank {r}: {m}")
    assert not problems, "\n".join(problems)


def asked_boxes(res: list[dict]) -> tuple[dict, set]:
    """{tensor key: {(offset, size)}}, {object unique key} over the ranks' sharded state dicts."""
    tens, objs = {}, set()
    for x in res:
        for rec in x["records"]:
            if rec["t"] == "T":
                size = (1,) * rec["pre"] + tuple(rec["local"])
                assert len(size) == len(rec["off"]) == len(rec["shape"]), rec
                tens.setdefault(rec["key"], set()).add((tuple(rec["off"]), size))
            elif rec["t"] == "O":
                objs.add(rec["unique"])
            else:
                raise AssertionError(f"unexpected sharded state dict entry {rec}")
    return tens, objs


def check_whole_items(ckpt: Path, res: list[dict]) -> None:
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    want_t, want_o = asked_boxes(res)
    md = read_metadata(ckpt_dir(ckpt))
    tens = {k: m for k, m in md.state_dict_metadata.items()
            if isinstance(m, TensorStorageMetadata)}
    objs = {k for k in md.state_dict_metadata if k not in tens} - {"common_state/shard_0_1"}
    assert set(tens) == set(want_t), (f"tensor keys only stored: {sorted(set(tens) - set(want_t))}"
                                      f"; only asked: {sorted(set(want_t) - set(tens))}")
    assert objs == want_o, (f"object keys only stored: {sorted(objs - want_o)}; "
                            f"only asked: {sorted(want_o - objs)}")
    problems = []
    for k, m in sorted(tens.items()):
        got = [(tuple(c.offsets), tuple(c.sizes)) for c in m.chunks]
        if len(got) != len(set(got)):
            problems.append(f"{k}: a chunk is stored more than once: {got}")
        if set(got) != want_t[k]:
            problems.append(f"{k}: stored chunks {sorted(got)} != asked boxes "
                            f"{sorted(want_t[k])}")
        for c in m.chunks:  # the stored item is exactly this chunk (torch.save'd tensor)
            t = torch.load(io.BytesIO(stored_item(ckpt_dir(ckpt), md, k, c.offsets)),
                           weights_only=True)
            if (tuple(t.shape), t.dtype) != (tuple(c.sizes), m.properties.dtype):
                problems.append(f"{k} chunk {tuple(c.offsets)}: stored item is "
                                f"{tuple(t.shape)} {t.dtype}, the chunk {tuple(c.sizes)} "
                                f"{m.properties.dtype}")
    assert not problems, "\n".join(problems)


def test_llama_tp2_chunks_are_the_boxes_tp_ranks_ask_for(chains, megatron):
    res = loaded(megatron, "llama-tp2")
    assert [x["tp_rank"] for x in res] == [0, 1]
    check_whole_items(chains[(LLAMA, "tp2")], res)


# ------------------------------------------------------------------------------------------------
# (b) nemotron3-moe-tiny at EP=2

def test_moe_ep2_loads_strictly_bit_identical(megatron):
    import test_hybrid as TH

    res = loaded(megatron, "moe-ep2")
    assert sorted((x["tp_rank"], x["ep_rank"]) for x in res) == [(0, 0), (0, 1)]
    problems = []
    for x in res:
        assert (x["tp"], x["ep"]) == (1, 2)
        assert x["nan_after_load"] == [], f"not filled by the load: {x['nan_after_load']}"
        exp = TH.expected_rank(MOE, 1, 0, 2, x["ep_rank"])
        assert set(x["state"]) == set(exp), (
            f"ep rank {x['ep_rank']}: only in Megatron {sorted(set(x['state']) - set(exp))}, "
            f"only expected {sorted(set(exp) - set(x['state']))}")
        for k in sorted(exp):
            m = raw_mismatch(k, x["state"][k], exp[k])
            if m:
                problems.append(f"ep rank {x['ep_rank']}: {m}")
    assert not problems, "\n".join(problems)


def test_moe_ep2_chunks_are_the_boxes_ep_ranks_ask_for(chains, megatron):
    check_whole_items(chains[(MOE, "ep2")], loaded(megatron, "moe-ep2"))


def test_moe_ep2_logits_equal_the_tp1_imports(megatron):
    ref = loaded(megatron, "moe-import-ws1")[0]["logits"]
    assert ref is not None and torch.isfinite(ref).all()
    for x in loaded(megatron, "moe-ep2"):
        got = x["logits"]
        assert got.shape == ref.shape, (got.shape, ref.shape)
        assert torch.equal(got, ref), (f"ep rank {x['ep_rank']}: max |diff| = "
                                       f"{float((got - ref).abs().max()):.3e}")


# ------------------------------------------------------------------------------------------------
# (c) export round trip; what reshard carries

@pytest.mark.parametrize("name,label", [pytest.param(n, lbl, id=f"{n}-{lbl}")
                                        for n, lbl in RESHARDED])
def test_export_of_resharded_is_byte_identical_to_source(nembridge, chains, tmp_path, name,
                                                         label):
    src, back = hf_dir(name), tmp_path / "back"
    nembridge.run("export", "--megatron", chains[(name, label)], "--out", back).ok()
    src_files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
    back_files = sorted(p.relative_to(back) for p in back.rglob("*") if p.is_file())
    assert set(back_files) - set(src_files) <= {Path("nembridge-manifest.json")}, back_files
    for f in src_files:
        assert (back / f).is_file(), f"export did not write {f}"
        assert (back / f).read_bytes() == (src / f).read_bytes(), f"{f} differs after export"


def stored_item(d: Path, md, key: str, offset=None) -> bytes:
    """The raw bytes of one stored item (uncompressed: no transform descriptors)."""
    from torch.distributed.checkpoint.metadata import MetadataIndex

    info = md.storage_data[MetadataIndex(key, offset)]
    assert not info.transform_descriptors, (key, info)
    with open(d / info.relative_path, "rb") as f:
        f.seek(info.offset)
        raw = f.read(info.length)
    assert len(raw) == info.length, (key, info)
    return raw


def object_payloads(d: Path) -> dict[str, bytes]:
    """{object key: its stored bytes} (common state and _extra_state objects)."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    md = read_metadata(d)
    return {k: stored_item(d, md, k) for k, m in md.state_dict_metadata.items()
            if isinstance(m, BytesStorageMetadata)}


def files_under(d: Path, skip=lambda p: False) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and not skip(p)}


@pytest.mark.parametrize("name,label", [pytest.param(n, lbl, id=f"{n}-{lbl}")
                                        for n, lbl in RESHARDED])
def test_reshard_carries_objects_common_state_and_recorded_files(chains, name, label):
    labels = ["import"] + [lbl for lbl, _ in CHAINS[name][1]]
    src = chains[(name, labels[labels.index(label) - 1])]
    dst = chains[(name, label)]
    assert (dst / "latest_checkpointed_iteration.txt").read_bytes() == \
        (src / "latest_checkpointed_iteration.txt").read_bytes()
    # The common state (item and common.pt) is rewritten with the target's parallel sizes in
    # its args; everything else is carried byte for byte.
    side = lambda p: p.suffix == ".distcp" or p.name in (".metadata", "common.pt")  # noqa: E731
    s, d = files_under(ckpt_dir(src), side), files_under(ckpt_dir(dst), side)
    assert "metadata.json" in s and (ckpt_dir(dst) / "common.pt").is_file()
    if name == LLAMA:
        assert "run_config.yaml" in s
    assert sorted(d) == sorted(s)
    # Megatron-Bridge's run_config.yaml travels with the target's parallel sizes (checked below).
    assert [f for f in s if s[f] != d[f] and f != "run_config.yaml"] == []
    assert files_under(src / "nembridge") == files_under(dst / "nembridge")
    so, do = object_payloads(ckpt_dir(src)), object_payloads(ckpt_dir(dst))
    assert sorted(do) == sorted(so)
    assert [k for k in so if so[k] != do[k] and k != "common_state/shard_0_1"] == []
    src_args = vars(read_common_state(ckpt_dir(src))["args"])
    dst_args = vars(read_common_state(ckpt_dir(dst))["args"])
    sizes = dict(CHAINS[name][1])[label]
    want = {"tensor_model_parallel_size": int(sizes[sizes.index("--tp") + 1]) if "--tp" in sizes else 1,
            "expert_model_parallel_size": int(sizes[sizes.index("--ep") + 1]) if "--ep" in sizes else 1}
    for k, v in want.items():
        assert dst_args[k] == v, (k, dst_args[k], v)
    if "run_config.yaml" in s:
        import yaml

        src_run, dst_run = yaml.safe_load(s["run_config.yaml"]), yaml.safe_load(d["run_config.yaml"])
        assert "tensor_model_parallel_size" in src_run["model"]
        for k, v in want.items():
            if k in src_run["model"]:  # a field the source's file has (only those lines change)
                assert dst_run["model"][k] == v, (k, dst_run["model"][k], v)
        layout = {"tensor_model_parallel_size", "expert_model_parallel_size", "pipeline_model_parallel_size",
                  "expert_tensor_parallel_size"}
        assert {k: v for k, v in dst_run["model"].items() if k not in layout} == \
            {k: v for k, v in src_run["model"].items() if k not in layout}
        assert {k: v for k, v in dst_run.items() if k not in ("model", "checkpoint")} == \
            {k: v for k, v in src_run.items() if k not in ("model", "checkpoint")}
    parallel = set(want) | {"expert_tensor_parallel_size"}
    assert {k: v for k, v in dst_args.items() if k not in parallel} == \
        {k: v for k, v in src_args.items() if k not in parallel}


def chunk_tensors(out: Path) -> dict[tuple, torch.Tensor]:
    """{(key, offsets, sizes): stored tensor} of every chunk."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    d = ckpt_dir(out)
    md = read_metadata(d)
    return {(k, tuple(c.offsets), tuple(c.sizes)):
            torch.load(io.BytesIO(stored_item(d, md, k, c.offsets)), weights_only=True)
            for k, m in md.state_dict_metadata.items() if isinstance(m, TensorStorageMetadata)
            for c in m.chunks}


@pytest.mark.parametrize("name,label", [pytest.param(n, lbl, id=f"{n}-{lbl}")
                                        for n, lbl in RESHARDED])
def test_resharded_chunks_equal_a_direct_import_at_that_layout(nembridge, chains, tmp_path,
                                                               name, label):
    """import ... --tp/--ep N and the reshard chain ending at N store the same chunks, bytes."""
    flags, steps = CHAINS[name]
    direct = tmp_path / "direct"
    nembridge.run("import", "--hf", hf_dir(name), "--out", direct, *flags,
                  *dict(steps)[label]).ok()
    got, want = chunk_tensors(chains[(name, label)]), chunk_tensors(direct)
    assert sorted(got) == sorted(want)
    assert [k for k in want if raw_mismatch(str(k), got[k], want[k])] == []


# ------------------------------------------------------------------------------------------------
# (d) layouts the tensors cannot be split into

UNSPLITTABLE = [
    # (command, fixture, flags, words the message must contain; a tuple: one of them)
    pytest.param("reshard", LLAMA, ["--tp", "3"], ["3", ("rows", "columns", "heads")],
                 id=f"reshard-{LLAMA}-tp3"),
    pytest.param("reshard", MOE, ["--ep", "3"], ["3", "8", "experts"], id=f"reshard-{MOE}-ep3"),
    # Megatron-Core: num_attention_heads (4) must be a multiple of tensor_model_parallel_size (8)
    pytest.param("reshard", LLAMA, ["--tp", "8"], ["8", "heads"], id=f"reshard-{LLAMA}-tp8"),
    pytest.param("import", LLAMA, ["--tp", "8"], ["8", "heads"], id=f"import-{LLAMA}-tp8"),
]


@pytest.mark.parametrize("command,name,flags,needles", UNSPLITTABLE)
def test_unsplittable_layout_fails_cleanly(nembridge, chains, tmp_path, command, name, flags,
                                           needles):
    parent = tmp_path / "parent"
    parent.mkdir()
    out = parent / "out"
    if command == "reshard":
        args = ["reshard", "--megatron", chains[(name, "import")]]
    else:
        args = ["import", "--hf", hf_dir(name), *CHAINS[name][0]]
    res = nembridge.run(*args, "--out", out, *flags)
    assert res.returncode == 1, (res.returncode, res.stderr, res.stdout[:2000])
    err = res.stderr
    assert "cannot be split" in err, err
    for n in needles:
        words = n if isinstance(n, tuple) else (n,)
        assert any(w in err for w in words), f"stderr names none of {words}:\n{err}"
    assert not out.exists() and list(parent.iterdir()) == [], list(parent.iterdir())


# ================================================================================================
# the Megatron runner (this file run as a script; no pytest involved)

def _dump(job: dict, rank: int | None) -> Path:
    """Where the runner saved a result (rank_jobs.dump_path; read here without importing Megatron)."""
    p = Path(job["dump"])
    return p if rank is None else p.with_name(f"{p.stem}.rank{rank}{p.suffix}")


def _tools():
    """gpt_from_args, hybrid_load, hybrid_keys, rank_jobs (imported on first use, in every process)."""
    for sub in ("megatron", "hybrid"):
        p = str(ROOT / "tools" / sub)
        if p not in sys.path:
            sys.path.insert(0, p)
    import gpt_from_args as GFA
    import hybrid_keys as HK
    import hybrid_load as HL
    import rank_jobs as RJ

    return GFA, HL, HK, RJ


def _run_job(job: dict) -> dict:
    import traceback

    GFA, HL, HK, _ = _tools()
    rank = torch.distributed.get_rank()
    if job["kind"] == "gpt":
        res = GFA.run_job(job)
        res.update(ep=1, ep_rank=0)
    else:
        res = HL.run_job(job)
    res["records"] = None
    if res["ok"] and job["records"]:
        try:  # the same model again (fresh), only to ask for its sharded state dict
            if job["kind"] == "gpt":
                model = GFA.wrap(GFA.build_gpt(GFA.read_args(job["checkpoint"])))
            else:
                cfg = json.loads((Path(job["hf"]) / "config.json").read_text())
                model = HL.build(cfg, job["padded_vocab"])
            res["records"] = HK.sharded_records(model, rank)
        except Exception as e:
            res["ok"] = False
            res["error"] = f"sharded_state_dict: {type(e).__name__}: {e}\n" \
                           f"{traceback.format_exc()[-6000:]}"
    return res


def _run_jobs(jobs: list) -> int:
    *_, RJ = _tools()
    failed = RJ.run_jobs(jobs, _run_job, timeout=datetime.timedelta(seconds=180), threads=1)
    for j in jobs:
        for r in ((None,) if j["world_size"] == 1 else (0, 1)):
            res = torch.load(RJ.dump_path(j, r), weights_only=False)
            msg = "loaded strictly" if res["ok"] else res["error"].splitlines()[0]
            print(f"{'OK  ' if res['ok'] else 'FAIL'} {j['checkpoint']} ws{j['world_size']} "
                  f"rank {r}: {msg}")
    return failed


if __name__ == "__main__":
    assert sys.argv[1:2] == ["--jobs"] and len(sys.argv) == 3, "usage: --jobs JOBS.json"
    sys.exit(_run_jobs(json.loads(Path(sys.argv[2]).read_text())))

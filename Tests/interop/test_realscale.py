"""Real-scale plans of every published model nembridge names (issue 12): sparse folders at the
real dimensions (tools/realscale/make_sparse.py: the published config.json field sets, real
safetensors headers, tensor data as file holes — a 1.1 TB model in ~12 MB), checked against an
independent header reader (tools/realscale/check_sparse.py):

- `inspect --json` lists every tensor with the header's dtype, shape, byte count and file;
- `import --dry-run` plans each model: every source tensor is consumed, each target's byte count
  is positive, and the plan's target bytes equal the headers' bytes (the published vocabularies
  need no padding at TP=1), and nothing is written.
Timing and memory are `make bench`'s (BENCHMARKS.md), not asserted here.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT

REALSCALE = ROOT / "tools" / "realscale"
sys.path.insert(0, str(REALSCALE))
import published_configs as P  # noqa: E402

MODELS = sorted(P.MODELS)
TARGET = re.compile(r"^  (\S+)(?: at \[[^\]]*\] of)? \[[^\]]*\] \S+ (\d+) bytes -> ")
SOURCE = re.compile(r"^      <- (\S+) \(")


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    root = tmp_path_factory.mktemp("realscale") / "models"
    subprocess.run([sys.executable, str(REALSCALE / "make_sparse.py"), str(root), "--all"], check=True,
                   capture_output=True, text=True, timeout=300)
    return root


def headers(folder) -> dict:
    out = subprocess.run([sys.executable, str(REALSCALE / "check_sparse.py"), str(folder), "--json"],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    summary = json.loads(out)
    return summary[0] if isinstance(summary, list) else summary


def header_tensors(folder) -> dict:
    """name -> (dtype, shape, bytes, file), read with struct + json only."""
    import struct
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            for name, info in json.loads(fh.read(n)).items():
                if name != "__metadata__":
                    b0, b1 = info["data_offsets"]
                    out[name] = (info["dtype"], info["shape"], b1 - b0, f.name)
    return out


@pytest.mark.parametrize("model", MODELS)
def test_inspect_lists_every_tensor_as_the_headers_say(nembridge, sparse, model):
    folder = sparse / model
    report = nembridge.run("inspect", folder, "--json").ok().json()
    want = header_tensors(folder)
    got = {t["name"]: (t["dtype"], t["shape"], t["bytes"], t["file"]) for t in report["tensors"]}
    assert got == want
    assert report["total_bytes"] == headers(folder)["bytes"]


@pytest.mark.parametrize("model", MODELS)
def test_import_plan_accounts_for_every_tensor_and_byte(nembridge, sparse, tmp_path, model):
    folder = sparse / model
    plan = nembridge.run("import", "--hf", folder, "--out", tmp_path / "out", "--dry-run").ok().stdout
    targets, sources = {}, set()
    for line in plan.splitlines():
        if m := TARGET.match(line):
            targets[m.group(1)] = targets.get(m.group(1), 0) + int(m.group(2))
        elif m := SOURCE.match(line):
            sources.add(m.group(1))
    want = header_tensors(folder)
    assert sources == set(want), (sorted(set(want) - sources)[:5], sorted(sources - set(want))[:5])
    assert targets and all(v > 0 for v in targets.values())
    assert sum(targets.values()) == headers(folder)["bytes"]
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []

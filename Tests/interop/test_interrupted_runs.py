"""Interrupted runs: kill -9 at chosen points of import, export and both reshards (torch_dist
and legacy), then a clean re-run and a --resume.

A killed run must leave no complete-looking output; the next run on the same --out removes the
dead run's staging (or, with --resume, keeps the files whose records still verify); either way the
result is byte-identical to an uninterrupted run's and no staging or lock file is left behind.
A staged file changed after it was recorded is redone, never kept. The kill points are
reproducible: the binary SIGKILLs itself when its progress passes N bytes or after N staged files
are recorded (NEMBRIDGE_TEST_KILL_AFTER_BYTES / _RECORDS), seeded from a fixed random generator.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import hf_dir

SEED = 20261203


def run(exe, args, env=None):
    full = {**os.environ, **(env or {})}
    p = subprocess.run([exe, *map(str, args)], capture_output=True, timeout=300, stdin=subprocess.DEVNULL, env=full)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if "nembridge-" in p.name)


@pytest.fixture(scope="module")
def megatron_tp2(nembridge, tmp_path_factory):
    out = tmp_path_factory.mktemp("src") / "moe-tp2"
    nembridge.run("import", "--hf", hf_dir("nemotron3-moe-tiny"), "--out", out, "--tp", "2", "--ep", "2").ok()
    return out


@pytest.fixture(scope="module")
def megatron_legacy(nembridge, tmp_path_factory):
    out = tmp_path_factory.mktemp("src") / "llama-legacy"
    nembridge.run("import", "--hf", hf_dir("llama3-sharded-tiny"), "--out", out, "--tp", "2", "--ckpt-format", "torch").ok()
    return out


# name -> arguments of the command, given the two Megatron sources; each writes several data files
CASES = {
    "import-torch-dist": lambda tp2, legacy: ["import", "--hf", hf_dir("nemotron3-moe-tiny"), "--tp", "2", "--ep", "2", "--workers", "3"],
    "import-legacy": lambda tp2, legacy: ["import", "--hf", hf_dir("nemotron3-moe-tiny"), "--tp", "2", "--ep", "2", "--ckpt-format", "torch"],
    "export": lambda tp2, legacy: ["export", "--megatron", tp2, "--max-shard-size", "200KB"],
    "export-legacy": lambda tp2, legacy: ["export", "--megatron", legacy],
    "reshard-torch-dist": lambda tp2, legacy: ["reshard", "--megatron", tp2, "--tp", "1", "--ep", "1", "--workers", "3"],
    "reshard-legacy": lambda tp2, legacy: ["reshard", "--megatron", legacy, "--tp", "1", "--pp", "2", "--ckpt-format", "torch"],
    "reshard-hf": lambda tp2, legacy: ["reshard", "--hf", hf_dir("llama3-sharded-tiny"), "--max-shard-size", "100KB"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_kill_then_rerun_and_resume(nembridge, megatron_tp2, megatron_legacy, tmp_path, case):
    args = CASES[case](megatron_tp2, megatron_legacy)
    ref = tmp_path / "ref"
    code, out, err = run(nembridge.exe, [*args, "--out", ref])
    assert code == 0, err
    expected = tree(ref)
    data_files = [k for k in expected if k.endswith((".distcp", ".safetensors", ".pt"))]
    assert len(data_files) >= 2, f"{case}: needs several data files to test keeping some, has {sorted(expected)}"
    # the bytes the run's progress counts (its summary line), where the byte kill points lie
    total = int(re.findall(r"\((\d+) bytes\)", out)[-1])
    rng = random.Random(f"{SEED}-{case}")
    work = tmp_path / "work"
    work.mkdir()
    target = work / "out"

    def killed(env):
        code, out, err = run(nembridge.exe, [*args, "--out", target], env)
        assert code == -9, (env, code, out, err)
        assert not target.exists(), f"{case}: a killed run left {target}"
        assert any(n.endswith("nembridge-staging") for n in leftovers(work)), leftovers(work)

    def finished(extra, note):
        code, out, err = run(nembridge.exe, [*args, "--out", target, *extra])
        assert code == 0, err
        assert re.search(note, err + out), (note, err, out)
        assert tree(target) == expected, f"{case}: differs from the uninterrupted run"
        assert leftovers(work) == [], f"{case}: left behind {leftovers(work)}"
        shutil.rmtree(target)

    # killed at random byte counts: a clean re-run removes the dead run's staging; --resume redoes
    # what was not recorded complete
    for point in sorted(rng.randrange(1, total) for _ in range(3)):
        killed({"NEMBRIDGE_TEST_KILL_AFTER_BYTES": str(point)})
        finished([], r"removed the staging folder of an interrupted run")
        killed({"NEMBRIDGE_TEST_KILL_AFTER_BYTES": str(point)})
        finished(["--resume"], r"resumed: kept \d+ complete file")

    def records():
        staging = next(p for p in work.iterdir() if p.name.endswith("nembridge-staging"))
        return staging, [p for p in (staging / ".nembridge-records").iterdir() if p.name.endswith(".json") and not p.name.startswith(".")]

    # killed after the first file is recorded (workers may record a few at once): --resume keeps
    # every recorded file
    killed({"NEMBRIDGE_TEST_KILL_AFTER_RECORDS": "1"})
    _, recorded = records()
    assert recorded
    finished(["--resume"], rf"resumed: kept {len(recorded)} complete file\(s\)")

    # a recorded file changed afterwards (a flipped byte, then a truncation) is redone, not kept
    for damage in ("flip", "truncate"):
        killed({"NEMBRIDGE_TEST_KILL_AFTER_RECORDS": "1"})
        staging, recorded = records()
        victim = staging / json.loads(recorded[0].read_text())["name"]
        assert victim.is_file(), sorted(str(p) for p in staging.rglob("*"))
        data = bytearray(victim.read_bytes())
        if damage == "flip":
            data[len(data) // 2] ^= 0x01
        else:
            data = data[: len(data) - 1]
        victim.write_bytes(bytes(data))
        finished(["--resume"], rf"resumed: kept {len(recorded) - 1} complete file\(s\)")

    # twice killed, then resumed: records of the first attempt still count
    killed({"NEMBRIDGE_TEST_KILL_AFTER_RECORDS": "1"})
    code, out, err = run(nembridge.exe, [*args, "--out", target, "--resume"], {"NEMBRIDGE_TEST_KILL_AFTER_RECORDS": "2"})
    assert code in (0, -9), err
    if code == 0:
        assert tree(target) == expected
        shutil.rmtree(target)
        assert leftovers(work) == []
    else:
        finished(["--resume"], r"resumed: kept \d+ complete file")


def test_resume_of_another_command_starts_over(nembridge, tmp_path):
    """Staging from a different plan (other --tp) is not resumed into the wrong output."""
    src = hf_dir("nemotron3-moe-tiny")
    target = tmp_path / "out"
    code, _, err = run(nembridge.exe, ["import", "--hf", src, "--out", target, "--tp", "2", "--ep", "2"],
                       {"NEMBRIDGE_TEST_KILL_AFTER_RECORDS": "1"})
    assert code == -9, err
    code, out, err = run(nembridge.exe, ["import", "--hf", src, "--out", target, "--tp", "1", "--resume"])
    assert code == 0, err
    assert "kept 1" not in err + out, err + out
    ref = tmp_path / "ref"
    assert run(nembridge.exe, ["import", "--hf", src, "--out", ref, "--tp", "1"])[0] == 0
    assert tree(target) == tree(ref)
    assert leftovers(tmp_path) == []

"""One conversion spread over N processes, started as srun, torchrun or mpirun start them (their
environment variables) or with --rank/--world-size: the output is byte-identical to a lone run's
whatever N, each process writes a disjoint byte-balanced share of the data files, only rank 0
publishes, and nothing of the job's staging is left. A killed process: nothing is published, the
others stop within the part timeout naming it, and re-running the job completes it without redoing
the parts that were finished.
"""
from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from test_interrupted_runs import CASES, leftovers, megatron_legacy, megatron_tp2, tree  # noqa: F401 (fixtures)

LAUNCHERS = ("srun", "torchrun", "mpirun", "flags")


def placement(launcher: str, rank: int, size: int, job: str) -> tuple[dict[str, str], list[str]]:
    """The environment (and flags) a launcher gives process `rank` of `size`."""
    if launcher == "srun":
        return {"SLURM_JOB_ID": job, "SLURM_STEP_ID": "0", "SLURM_PROCID": str(rank), "SLURM_NTASKS": str(size)}, []
    if launcher == "torchrun":
        return {"TORCHELASTIC_RUN_ID": job, "RANK": str(rank), "WORLD_SIZE": str(size), "LOCAL_RANK": str(rank)}, []
    if launcher == "mpirun":
        return {"PMIX_NAMESPACE": job, "OMPI_COMM_WORLD_RANK": str(rank), "OMPI_COMM_WORLD_SIZE": str(size)}, []
    return {}, ["--rank", str(rank), "--world-size", str(size), "--job-id", job]


def clean_env() -> dict[str, str]:
    drop = ("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC", "OMPI_", "PMIX_", "NEMBRIDGE_TEST_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def run_job(exe, args, out, size, launcher, job, extra_env=None, timeout=120):
    """Starts `size` processes at once; returns [(returncode, stdout, stderr, seconds)] by rank."""
    procs = []
    for rank in range(size):
        env, flags = placement(launcher, rank, size, job)
        full = {**clean_env(), **env, **((extra_env or {}).get(rank, {}))}
        procs.append((time.monotonic(), subprocess.Popen([exe, *map(str, args), "--out", str(out), *flags], env=full,
                                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)))
    results = []
    for start, p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        results.append((p.returncode, stdout.decode(), stderr.decode(), time.monotonic() - start))
    return results


SHARE = re.compile(r"rank (\d+) of (\d+) \(\S+, job [^)]*\): its share is (\d+) of (\d+) file\(s\), (\d+) of (\d+) bytes; kept (\d+)")


def shares(results):
    """{rank: (files, bytes, kept)} from each process's note, and the job's (files, bytes)."""
    found, job = {}, set()
    for code, out, err, _ in results:
        m = SHARE.search(err)
        assert m, err
        rank, _, files, all_files, nbytes, all_bytes, kept = map(int, m.groups())
        found[rank] = (files, nbytes, kept)
        job.add((all_files, all_bytes))
    assert len(job) == 1, job
    return found, job.pop()


@pytest.fixture(scope="module")
def references(nembridge, megatron_tp2, megatron_legacy, tmp_path_factory):  # noqa: F811
    """Each case's lone run (no launcher in the environment)."""
    root = tmp_path_factory.mktemp("lone")
    refs = {}
    for case, make in CASES.items():
        out = root / case
        p = subprocess.run([nembridge.exe, *map(str, make(megatron_tp2, megatron_legacy)), "--out", str(out)],
                           env=clean_env(), capture_output=True)
        assert p.returncode == 0, p.stderr.decode()
        refs[case] = tree(out)
    return refs


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_any_process_count_gives_the_same_bytes(nembridge, megatron_tp2, megatron_legacy, references, tmp_path, case, launcher):  # noqa: F811
    args = CASES[case](megatron_tp2, megatron_legacy)
    for size in (1, 2, 3, 4):
        out = tmp_path / f"n{size}"
        results = run_job(nembridge.exe, args, out, size, launcher, job=f"{case}-{size}")
        for rank, (code, stdout, stderr, _) in enumerate(results):
            assert code == 0, (case, size, launcher, rank, stderr)
        assert tree(out) == references[case], f"{case}: {size} processes under {launcher} differ from a lone run"
        assert leftovers(tmp_path) == [], leftovers(tmp_path)
        if size == 1:
            continue
        found, (files, nbytes) = shares(results)
        assert sorted(found) == list(range(size))
        # disjoint shares that add up to the job, each process writing only its own
        assert sum(f for f, _, _ in found.values()) == files and sum(b for _, b, _ in found.values()) == nbytes
        assert all(kept == 0 for _, _, kept in found.values())
        # byte-balanced: no process has more than the largest file beyond the ideal share
        sizes = sorted((len(v) for k, v in references[case].items() if k.endswith((".distcp", ".safetensors", ".pt"))), reverse=True)
        assert max(b for _, b, _ in found.values()) <= nbytes / size + sizes[0], found
        assert "rank 0 published" in "".join(r[1] for r in results[1:]) or all(found[r][0] == 0 for r in range(1, size))
        job_note = re.search(r"job \S+: (\d+) processes wrote", results[0][2])
        assert job_note and int(job_note.group(1)) == size, results[0][2]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_each_launcher_places_the_process(nembridge, megatron_tp2, references, tmp_path, launcher):  # noqa: F811
    args = CASES["reshard-torch-dist"](megatron_tp2, None)
    results = run_job(nembridge.exe, args, tmp_path / "out", 2, launcher, job="j1")
    assert [r[0] for r in results] == [0, 0], [r[2] for r in results]
    found, _ = shares(results)
    assert sorted(found) == [0, 1]
    name = {"flags": "--rank"}.get(launcher, launcher)
    assert all(f"({name}, job" in r[2] for r in results), [r[2] for r in results]
    assert tree(tmp_path / "out") == references["reshard-torch-dist"]


@pytest.mark.parametrize("case", ["import-torch-dist", "export", "reshard-legacy"])
def test_a_killed_process_publishes_nothing_and_a_rerun_completes(nembridge, megatron_tp2, megatron_legacy, references, tmp_path, case):  # noqa: F811
    args = CASES[case](megatron_tp2, megatron_legacy)
    out = tmp_path / "out"
    timeout = 3
    # rank 1 dies (kill -9) after its first bytes; the others stop within the part timeout
    results = run_job(nembridge.exe, [*args, "--part-timeout", timeout], out, 3, "srun", job="77",
                      extra_env={1: {"NEMBRIDGE_TEST_KILL_AFTER_BYTES": "1"}})
    codes = [r[0] for r in results]
    assert codes[1] == -9, results[1]
    assert codes[0] == 1 and codes[2] == 1, [(r[0], r[2]) for r in results]
    for rank in (0, 2):
        assert "rank 1 of the job" in results[rank][2] and "nothing is published" in results[rank][2], results[rank][2]
        assert results[rank][3] < timeout + 20, results[rank][3]
        assert "\n" not in results[rank][2].strip().splitlines()[-1]
    assert not out.exists()
    first, _ = shares([r for i, r in enumerate(results) if i != 1])
    # the same job again: finished parts are kept, the rest written, one output, nothing left over
    results = run_job(nembridge.exe, args, out, 3, "srun", job="77")
    assert [r[0] for r in results] == [0, 0, 0], [r[2] for r in results]
    assert tree(out) == references[case]
    assert leftovers(tmp_path) == [], leftovers(tmp_path)
    again, _ = shares(results)
    # ranks 0 and 2 had written their shares before waiting: none of it is redone
    for rank in (0, 2):
        assert again[rank][2] == first[rank][0], (rank, first, again)


def test_a_killed_job_resumed_by_one_process(nembridge, megatron_tp2, references, tmp_path):  # noqa: F811
    """A single-process --resume uses the same records as a job's re-run."""
    args = CASES["reshard-torch-dist"](megatron_tp2, None)
    out = tmp_path / "out"
    results = run_job(nembridge.exe, [*args, "--part-timeout", 2], out, 2, "torchrun", job="x",
                      extra_env={1: {"NEMBRIDGE_TEST_KILL_AFTER_BYTES": "1"}})
    assert [r[0] for r in results] == [1, -9], [r[2] for r in results]
    p = subprocess.run([nembridge.exe, *map(str, args), "--out", str(out), "--resume"], env=clean_env(), capture_output=True)
    assert p.returncode == 0, p.stderr.decode()
    assert re.search(r"resumed: kept [1-9]\d* complete file", p.stderr.decode()), p.stderr.decode()
    assert tree(out) == references["reshard-torch-dist"]
    assert leftovers(tmp_path) == []


def test_a_lone_run_does_not_join_a_running_job(nembridge, megatron_tp2, tmp_path):  # noqa: F811
    """While a job's processes hold the output, a lone run on it stops naming the owner."""
    args = CASES["reshard-torch-dist"](megatron_tp2, None)
    out = tmp_path / "out"
    env, flags = placement("flags", 0, 2, "held")
    # rank 0 alone: it writes its share and waits for rank 1, holding the output
    p = subprocess.Popen([nembridge.exe, *map(str, args), "--out", str(out), *flags, "--part-timeout", "20"], env=clean_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while not any(n.endswith("nembridge-job") for n in leftovers(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        lone = subprocess.run([nembridge.exe, *map(str, args), "--out", str(out)], env=clean_env(), capture_output=True)
        assert lone.returncode == 1
        assert "another nembridge run is writing this output" in lone.stderr.decode(), lone.stderr.decode()
    finally:
        p.kill()
        p.communicate()


@pytest.mark.parametrize("case", ["import-torch-dist", "reshard-legacy", "export"])
def test_under_the_real_torchrun(nembridge, megatron_tp2, megatron_legacy, references, tmp_path, case):  # noqa: F811
    """torch's own launcher (`torchrun --no-python`) starts the processes; it sets their
    environment, nembridge reads it."""
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    args = CASES[case](megatron_tp2, megatron_legacy)
    out = tmp_path / "out"
    p = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "3", "--no-python", nembridge.exe, *map(str, args),
                        "--out", str(out)], env=clean_env(), capture_output=True, timeout=300)
    err = p.stderr.decode()
    assert p.returncode == 0, err
    found = {int(m.group(1)) for m in SHARE.finditer(err)}
    assert found == {0, 1, 2} and "(torchrun, job" in err, err
    assert tree(out) == references[case]
    assert leftovers(tmp_path) == []

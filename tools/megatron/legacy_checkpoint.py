"""Write and check Megatron-LM legacy checkpoints (`--ckpt-format torch`) with real Megatron code
(megatron-core / megatron.training 0.19.2; CPU, gloo, local layer spec; dense Llama-like GPT).

    python tools/megatron/legacy_checkpoint.py save --from DIST --out SAVE [--tp N --pp N]
    python tools/megatron/legacy_checkpoint.py check --legacy SAVE --reference DIST [--tp N --pp N]
    python tools/megatron/legacy_checkpoint.py jobs JOBS.json [--tp N --pp N]

TP and PP default to 2; --dump-names prints every rank file's model keys, shapes and dtypes.
JOBS.json is a list of {"cmd": "save", "from", "out"} / {"cmd": "check", "legacy", "reference"}
run one after the other by the same ranks (one Megatron import). --json FILE writes the results
(per job, per rank: ok, error, summary, file, names, ...).

TP x PP gloo ranks are spawned (DP = 1). Every rank builds its pipeline stage's GPTModel from a
checkpoint's `args` (with padded_vocab_size recomputed for the layout's TP, as Megatron-LM's
tokenizer step does) and loads the torch_dist checkpoint DIST into it strictly
(gpt_from_args.load_model: NaN fill, RAISE_ALL, load_state_dict(strict=True)).

save: `torch.save` of what save_checkpoint builds for ckpt_format 'torch' -- generate_state_dict
(args, [model], no optimizer / scheduler / RNG state; model = state_dict_for_save_checkpoint())
plus num_floating_point_operations_so_far -- at get_checkpoint_name(SAVE, iteration, release).
`args` are DIST's with tensor/pipeline_model_parallel_size = the layout, ckpt_format 'torch' and
transformer_impl 'local' (the layer spec whose module names the file holds). Rank 0 then writes
latest_checkpointed_iteration.txt with DIST's iteration (or "release").

check: each rank loads its file as load_checkpoint does for ckpt_format 'torch' (format detection,
get_checkpoint_name, torch.load(map_location='cpu') with Megatron's safe globals,
load_state_dict(state_dict['model'], strict=True) into a NaN-filled model built from the file's
args) and DIST as above. Every state_dict() tensor of the two models must have the same dtype,
shape and bytes, and the non-tensor (_extra_state) keys must be the same; the file's args must
record the layout, and it must hold 'checkpoint_version' and 'iteration'.

One line per job and rank; exit 0 only if all are OK. A rank that fails on its own (reading its
file, a strict load) tells the others before the next collective step, and the job fails on every
rank; an error inside a collective step ends that rank at once, and the rest are stopped.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import mcore_env as E  # noqa: E402  (CPU shims, warnings off)
import torch  # noqa: E402

PG_TIMEOUT = datetime.timedelta(seconds=120)
RUN_TIMEOUT = 900  # seconds, all jobs
GRACE = 10  # seconds the other ranks get after one ended with an error


# ------------------------------------------------------------------------------------------------
# checkpoint locations

def read_tracker(root: Path) -> tuple[int, bool]:
    """(iteration, release) from latest_checkpointed_iteration.txt, as
    megatron.training.checkpointing.read_metadata parses it (release -> iteration 0)."""
    text = (root / "latest_checkpointed_iteration.txt").read_text().strip()
    if text == "release":
        return 0, True
    return int(text), False


def legacy_root(d) -> Path:
    """The save root of a legacy checkpoint: `d` itself, or the parent of an iteration folder."""
    d = Path(d).resolve()
    if d.is_dir() and not (d / "latest_checkpointed_iteration.txt").exists() and \
            any(p.name.startswith("mp_rank_") for p in d.iterdir()):
        return d.parent
    return d


def dist_iteration(dist_dir: Path, common: dict) -> tuple[int, bool]:
    """(iteration, release) of a torch_dist iteration folder (release/ or iter_XXXXXXX/)."""
    if dist_dir.name == "release":
        return int(common.get("iteration", 0)), True
    return int(dist_dir.name.removeprefix("iter_")), False


def key_list(sd: dict) -> list[tuple]:
    """[(key, shape, dtype)] for tensors, [(key, None, repr(value))] for anything else."""
    return [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) if isinstance(v, torch.Tensor)
            else (k, None, repr(v)) for k, v in sd.items()]


def layout() -> dict:
    from megatron.core import parallel_state as ps

    return {"tp_rank": ps.get_tensor_model_parallel_rank(),
            "pp_rank": ps.get_pipeline_model_parallel_rank()}


def training_checkpointing():
    E.allow_megatron_training_import()
    import megatron.training.checkpointing as C

    E.quiet_megatron()
    return C


# ------------------------------------------------------------------------------------------------
# ranks agree before collective steps

class JobFailed(Exception):
    """Raised on every rank when a local step failed on at least one of them."""

    def __init__(self, msg: str, secondary: bool):
        super().__init__(msg)
        self.secondary = secondary


def local_step(fn):
    """fn() (no collectives inside) on every rank; then all ranks learn whether every one of them
    succeeded (all_reduce MIN) and all raise JobFailed if not."""
    try:
        out, err = fn(), None
    except Exception as e:
        out, err = None, f"{type(e).__name__}: {e}"
    flag = torch.tensor([0 if err else 1], dtype=torch.int32)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    if err or not flag.item():
        raise JobFailed(err or "another rank failed", secondary=err is None)
    return out


# ------------------------------------------------------------------------------------------------
# save

def layout_vocab(args, tp: int):
    """A copy of `args` with padded_vocab_size as Megatron-LM's tokenizer step computes it for
    this run's TP (vocab_size rounded up to make_vocab_size_divisible_by x TP): the size of the
    vocabulary-parallel tensors of the model a run at this layout builds."""
    from megatron.training.vocab_utils import calculate_padded_vocab_size

    out = argparse.Namespace(**vars(args))
    out.padded_vocab_size = calculate_padded_vocab_size(
        args.vocab_size, args.make_vocab_size_divisible_by, tp, logging_enabled=False)
    return out


def run_save(job: dict, tp: int, pp: int) -> dict:
    import gpt_from_args as G

    C = training_checkpointing()
    dist = local_step(lambda: G.resolve_ckpt_dir(job["from"]))
    common = local_step(lambda: G.read_common_state(dist))
    args = layout_vocab(common["args"], tp)
    model, _ = G.load_model(dist, args)
    iteration, release = dist_iteration(dist, common)

    saved_args = argparse.Namespace(**vars(args))
    saved_args.tensor_model_parallel_size = tp
    saved_args.pipeline_model_parallel_size = pp
    saved_args.ckpt_format = "torch"
    # the names in the file are the local spec's (input_layernorm, pre_mlp_layernorm): the args
    # of a Megatron-LM run that writes them say --transformer-impl local
    saved_args.transformer_impl = "local"
    if hasattr(saved_args, "use_dist_ckpt"):  # update_use_dist_ckpt: ckpt_format != 'torch'
        saved_args.use_dist_ckpt = False
    # generate_state_dict also reads no_save_optim / no_save_rng (Megatron's defaults: False);
    # it gets them on a copy, the file stores saved_args itself.
    gen_args = argparse.Namespace(**vars(saved_args))
    gen_args.no_save_optim = getattr(args, "no_save_optim", False)
    gen_args.no_save_rng = getattr(args, "no_save_rng", False)
    # save_checkpoint: model = unwrap_model(model); generate_state_dict(args, model, optimizer,
    # opt_param_scheduler, rng_state, iteration=..., rerun_state=...)
    state = C.generate_state_dict(gen_args, [G.unwrap(model)], None, None, None,
                                  iteration=iteration, rerun_state=None)
    state["args"] = saved_args
    state["num_floating_point_operations_so_far"] = common.get(
        "num_floating_point_operations_so_far", 0)
    out = Path(job["out"]).resolve()
    name = C.get_checkpoint_name(str(out), iteration, release=release)
    rel = str(Path(name).relative_to(out))

    def write():
        C.ensure_directory_exists(name)
        torch.save(state, name)

    local_step(write)
    if torch.distributed.get_rank() == 0:  # save_checkpoint: after a barrier, rank 0
        (out / "latest_checkpointed_iteration.txt").write_text(
            "release" if release else str(iteration))
    torch.distributed.barrier()
    return {"ok": True, "file": rel, "top": sorted(state), "names": key_list(state["model"]),
            "summary": f"wrote {rel} ({len(state['model'])} model keys)"}


# ------------------------------------------------------------------------------------------------
# check

def run_check(job: dict, tp: int, pp: int) -> dict:
    import gpt_from_args as G
    from rank_tensors import raw_mismatch

    C = training_checkpointing()
    problems = []
    # (a) the legacy rank file, as load_checkpoint / _load_base_checkpoint read it
    def read():
        root = legacy_root(job["legacy"])
        iteration, release = read_tracker(root)
        base = C.get_checkpoint_name(str(root), iteration, release, return_base_dir=True)
        fmt = C._get_checkpoint_format(base, None)
        if fmt != "torch":
            problems.append(f"{base}: Megatron detects format {fmt!r}, not 'torch'")
        name = C.get_checkpoint_name(str(root), iteration, release)
        if not os.path.isfile(name):
            raise FileNotFoundError(f"{name}: no such rank file")
        try:
            state = torch.load(name, map_location="cpu")  # weights_only, Megatron's safe globals
        except Exception as e:
            raise RuntimeError(f"{name}: torch.load failed: {type(e).__name__}: {e}") from e
        missing = [k for k in ("args", "checkpoint_version", "iteration", "model")
                   if k not in state]
        if "args" in missing or "model" in missing:
            raise KeyError(f"{name}: no {missing} (keys: {sorted(state)})")
        if missing:
            problems.append(f"{name}: no {missing} (keys: {sorted(state)})")
        return str(Path(name).relative_to(root)), state

    rel, state = local_step(read)
    largs = state["args"]
    got = (getattr(largs, "tensor_model_parallel_size", None),
           getattr(largs, "pipeline_model_parallel_size", None))
    if got != (tp, pp):
        problems.append(f"{rel}: args record TP, PP = {got}, the layout is {(tp, pp)}")
    torch.manual_seed(0)
    legacy = G.wrap(G.build_gpt(largs))  # collective when PP > 1 and tied

    def load():
        with torch.no_grad():
            for t in list(legacy.parameters()) + list(legacy.buffers()):
                if t.is_floating_point():
                    t.fill_(float("nan"))
        try:
            legacy.load_state_dict(state["model"], strict=True)  # Float16Module -> module
        except Exception as e:
            impl = getattr(largs, "transformer_impl", None)
            if impl != "local":  # TE module names (linear_qkv.layer_norm_weight, ...)
                raise type(e)(f"{e}\n(the file's args say transformer_impl={impl!r}; this "
                              f"check builds the local layer spec)") from e
            raise

    local_step(load)
    # (b) the torch_dist reference (collective)
    ref_dir = local_step(lambda: G.resolve_ckpt_dir(job["reference"]))
    ref_args = local_step(lambda: layout_vocab(G.read_args(ref_dir), tp))
    ref, _ = G.load_model(ref_dir, ref_args)
    a, b = G.unwrap(legacy).state_dict(), G.unwrap(ref).state_dict()
    at = {k for k, v in a.items() if isinstance(v, torch.Tensor)}
    bt = {k for k, v in b.items() if isinstance(v, torch.Tensor)}
    if at != bt:
        problems.append(f"tensors only from the legacy file: {sorted(at - bt)}; only from the "
                        f"reference: {sorted(bt - at)}")
    if set(a) - at != set(b) - bt:
        problems.append(f"non-tensor keys differ: legacy {sorted(set(a) - at)}, reference "
                        f"{sorted(set(b) - bt)}")
    same = 0
    for k in sorted(at & bt):
        m = raw_mismatch(k, a[k], b[k])
        if m:
            problems.append(m)
        else:
            same += 1
    summary = (f"{rel}: {same}/{len(at)} tensors byte-identical to the reference, "
               f"{len(set(a) - at)} _extra_state keys, checkpoint_version "
               f"{state.get('checkpoint_version')}, iteration {state.get('iteration')}, "
               f"args TP={got[0]} PP={got[1]} "
               f"ckpt_format={getattr(largs, 'ckpt_format', None)!r} "
               f"transformer_impl={getattr(largs, 'transformer_impl', None)!r}")
    return {"ok": not problems, "file": rel, "top": sorted(state),
            "names": key_list(state["model"]), "summary": summary,
            "error": "\n".join(problems) or None}


COMMANDS = {"save": run_save, "check": run_check}


# ------------------------------------------------------------------------------------------------
# ranks

def result_path(resdir, i: int, rank: int) -> Path:
    return Path(resdir) / f"job{i}.rank{rank}.pt"


def _worker(rank: int, world: int, init: str, jobs: list, tp: int, pp: int, resdir: str):
    torch.set_num_threads(1)
    E.quiet_megatron()
    try:
        E.init_distributed(rank, world, init, timeout=PG_TIMEOUT)
        E.init_model_parallel(tp, 1, pp)
        where = layout()
    except BaseException as e:
        print(f"rank {rank}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        os._exit(1)
    for i, job in enumerate(jobs):
        res = {"ok": False, "error": None, "rank": rank, **where}
        fatal = False
        try:
            res.update(COMMANDS[job["cmd"]](job, tp, pp))
        except JobFailed as e:  # every rank is here: go on with the next job
            res.update(ok=False, error=str(e), secondary=e.secondary)
        except BaseException as e:  # DCP's CheckpointException is a BaseException
            res.update(ok=False, error=f"{type(e).__name__}: {e}",
                       trace=traceback.format_exc()[-4000:],
                       secondary="gloo/transport" in str(e))  # broken by a rank that failed
            fatal = True
        torch.save(res, result_path(resdir, i, rank))
        if fatal:  # the other ranks may be inside a collective: stop here
            os._exit(1)
    torch.distributed.destroy_process_group()


def run_ranks(jobs: list, tp: int, pp: int, resdir: str) -> list[list[dict]]:
    """Spawns TP x PP gloo ranks running `jobs`; results[job][rank]."""
    import torch.multiprocessing as mp

    world = tp * pp
    ctx = mp.get_context("spawn")
    init = f"tcp://127.0.0.1:{E.free_port()}"
    procs = [ctx.Process(target=_worker, args=(r, world, init, jobs, tp, pp, resdir))
             for r in range(world)]
    for p in procs:
        p.start()
    deadline, failed_at = time.monotonic() + RUN_TIMEOUT, None
    while any(p.is_alive() for p in procs):
        now = time.monotonic()
        if failed_at is None and any(p.exitcode not in (None, 0) for p in procs):
            failed_at = now
        if now > deadline or (failed_at is not None and now > failed_at + GRACE):
            for p in procs:
                if p.is_alive():
                    p.terminate()
            break
        time.sleep(0.2)
    for p in procs:
        p.join()
    results = []
    for i in range(len(jobs)):
        row = []
        for r, p in enumerate(procs):
            f = result_path(resdir, i, r)
            row.append(torch.load(f, weights_only=False) if f.exists() else
                       {"ok": False, "rank": r, "secondary": failed_at is not None,
                        "error": f"no result (exit code {p.exitcode}; stopped after a rank "
                                 f"failed, or timed out)"})
        results.append(row)
    return results


def report(job: dict, res: dict, dump_names: bool, show_trace: bool) -> None:
    target = job.get("out") or job.get("legacy")
    where = (f"rank {res['rank']} (tp {res['tp_rank']}, pp {res['pp_rank']})"
             if "tp_rank" in res else f"rank {res['rank']}")
    if res["ok"]:
        msg = res["summary"]
    elif res.get("secondary"):
        msg = f"(another rank failed first) {res['error'].splitlines()[0][:160]}"
    else:
        msg = "\n".join(x for x in (res.get("summary"), res["error"]) if x)
        if res.get("trace") and show_trace:
            msg += "\n" + res["trace"]
    print(f"{'OK  ' if res['ok'] else 'FAIL'} {job['cmd']} {target} {where}: {msg}")
    if dump_names and res.get("names") is not None:
        print(f"  {res['file']}: {res['top']}")
        for k, shape, dt in res["names"]:
            print(f"    {k} {list(shape) if shape is not None else '-'} {dt}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save", help="torch_dist -> legacy, written by Megatron")
    s.add_argument("--from", dest="from_", required=True, help="torch_dist checkpoint")
    s.add_argument("--out", required=True, help="legacy save directory to write")
    c = sub.add_parser("check", help="load a legacy checkpoint and compare with torch_dist")
    c.add_argument("--legacy", required=True, help="legacy save directory")
    c.add_argument("--reference", required=True, help="torch_dist checkpoint")
    j = sub.add_parser("jobs", help="several save/check jobs on the same ranks")
    j.add_argument("file", help="JSON list of jobs (see the module doc)")
    for p in (s, c, j):
        p.add_argument("--tp", type=int, default=2)
        p.add_argument("--pp", type=int, default=2)
        p.add_argument("--dump-names", action="store_true",
                       help="print each rank file's model keys with shapes")
        p.add_argument("--traceback", action="store_true", help="print a failing rank's traceback")
        p.add_argument("--json", help="also write [[result of each rank] for each job] here")
    a = ap.parse_args(argv)
    if a.cmd == "jobs":
        jobs = json.loads(Path(a.file).read_text())
    elif a.cmd == "save":
        jobs = [{"cmd": "save", "from": a.from_, "out": a.out}]
    else:
        jobs = [{"cmd": "check", "legacy": a.legacy, "reference": a.reference}]
    for job in jobs:
        if job.get("cmd") not in COMMANDS:
            ap.error(f"job {job}: cmd must be one of {sorted(COMMANDS)}")
        for k in ("from", "out", "legacy", "reference"):
            if job.get(k):
                job[k] = str(Path(job[k]).resolve())
    with tempfile.TemporaryDirectory(prefix="legacy_checkpoint.") as resdir:
        results = run_ranks(jobs, a.tp, a.pp, resdir)
    for job, row in zip(jobs, results):
        for res in row:
            report(job, res, a.dump_names, a.traceback)
    if a.json:
        Path(a.json).write_text(json.dumps(
            [[{**job, **{k: v for k, v in res.items() if k != "trace"}} for res in row]
             for job, row in zip(jobs, results)], indent=1))
    return 0 if all(res["ok"] for row in results for res in row) else 1


if __name__ == "__main__":
    sys.exit(main())

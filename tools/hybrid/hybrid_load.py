"""Load a torch_dist checkpoint (e.g. written by `nembridge import --spec local`) strictly into a
REAL Megatron-Core 0.19.2 `HybridModel` on CPU and run an fp32 forward.

    .venv/bin/python tools/hybrid/hybrid_load.py --jobs JOBS.json

The model is built from the HF config.json of the source folder, exactly as
tools/hybrid/hybrid_keys.py builds it (its `transformer_config`, `local_hybrid_stack_spec` and
CPU shims: local modules with the pre-norms re-keyed to the TE fused names, SequentialMLP
experts, Float16Module bf16; plus, through tools/hybrid/super_keys.py, `moe_latent_size` and an
MTP block when config.json sets them), except that the vocabulary is the PADDED size the checkpoint
holds (Megatron-LM's make_vocab_size_divisible_by) and `parallel_output=False` (every TP rank
gets the full logits).

Loading: every floating parameter and buffer is NaN-filled, then
    dist_checkpointing.load({'model': model.sharded_state_dict()}, CKPT,
                            strict=StrictHandling.RAISE_ALL)
    model.load_state_dict(loaded['model'], strict=True)
An fp32 copy of the main model (no Float16Module, bf16 -> fp32 exact; no MTP block) runs the forward with the pure-PyTorch
mamba_ssm stand-in (tools/hybrid/mamba_ssm_standin).

JOBS.json: a list of {"hf": HF_DIR, "checkpoint": DIR, "world_size": 1|2, "tp", "ep", "pp" (1
by default; with 2 each rank builds and loads its stage, and no forward is run),
"first_stage_layers"/"last_stage_layers" (optional: an uneven pipeline split),
"padded_vocab", "tokens": [[...]] or null, "dump": OUT.pt, "format": "torch_dist" (default) or
"torch"}. A "torch" (legacy) checkpoint is read as Megatron-LM's load_checkpoint reads it: the
rank's file from get_checkpoint_name, torch.load, load_state_dict(strict=True) (`load_legacy`).
World-size-1 jobs run in this process;
world-size-2 jobs in one pair of spawned gloo ranks. Each job writes `dump` (rank r of a
world-size-2 job: `.rank{r}` before the suffix) = {"ok", "error", "rank", "tp", "tp_rank", "ep",
"ep_rank", "state" (loaded model.state_dict() tensors, names without the Float16Module prefix),
"extra_state" (names), "nan_after_load" (names still holding NaN), "logits" (fp32
[batch, seq, padded_vocab]) or None}. Exit 0 iff every job loaded.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import hybrid_keys as HK  # noqa: E402  (puts the stand-in and tools/megatron on sys.path)
import super_keys as SK  # noqa: E402  (LatentMoE TELinear stand-in, MTP block spec)

E = HK.E
import torch  # noqa: E402
from rank_jobs import dump_path, run_jobs  # noqa: E402  (tools/megatron, on sys.path via hybrid_keys)

PG_TIMEOUT = datetime.timedelta(seconds=180)


def build(cfg: dict, padded_vocab: int, dtype=torch.bfloat16, float16_module=True):
    """hybrid_keys.py's model (via super_keys.build_model, which adds `moe_latent_size` and the
    MTP block when config.json asks for them) with the padded vocabulary, full logits."""
    return SK.build_model(cfg, dtype=dtype, float16_module=float16_module,
                          with_mtp=SK.mtp_depths(cfg) > 0, vocab_size=padded_vocab,
                          parallel_output=False)


def unwrap(model):
    return getattr(model, "module", model)


def nan_filled(cfg: dict, padded_vocab: int):
    """The model with every floating parameter and buffer NaN, so a region a load does not
    fill cannot keep its init values."""
    torch.manual_seed(0)
    model = build(cfg, padded_vocab)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.fill_(float("nan"))
    return model


def load_strict(cfg: dict, ckpt: str, padded_vocab: int, training_state_present: bool = False):
    """`training_state_present`: a training run's save also holds optimizer and RNG state,
    which a model-only load leaves unread; every model key must still be there
    (RAISE_UNEXPECTED) and load_state_dict stays strict."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    model = nan_filled(cfg, padded_vocab)
    sharded = {"model": E.model_sharded_state_dict(model)}
    strict = StrictHandling.RAISE_UNEXPECTED if training_state_present else StrictHandling.RAISE_ALL
    loaded = dist_checkpointing.load(sharded, ckpt, strict=strict)
    model.load_state_dict(loaded["model"], strict=True)
    return model


def load_legacy(cfg: dict, ckpt: str, padded_vocab: int):
    """A legacy (`--ckpt-format torch`) checkpoint, as Megatron-LM's load_checkpoint reads it:
    this rank's file from get_checkpoint_name (tensor/pipeline/expert ranks of the current
    parallel state), torch.load on the CPU, load_state_dict(state_dict['model'], strict=True)
    into the NaN-filled model."""
    from megatron.core import parallel_state as ps

    E.allow_megatron_training_import()
    from megatron.training.checkpointing import get_checkpoint_name

    root = Path(ckpt)
    tracker = (root / "latest_checkpointed_iteration.txt").read_text().strip()
    release = tracker == "release"
    name = get_checkpoint_name(
        str(root), 0 if release else int(tracker), release,
        pipeline_parallel=ps.get_pipeline_model_parallel_world_size() > 1,
        tensor_rank=ps.get_tensor_model_parallel_rank(), pipeline_rank=ps.get_pipeline_model_parallel_rank(),
        expert_parallel=ps.get_expert_model_parallel_world_size() > 1,
        expert_rank=ps.get_expert_model_parallel_rank())
    state = torch.load(name, map_location="cpu", weights_only=False)
    model = nan_filled(cfg, padded_vocab)
    unwrap(model).load_state_dict(state["model"], strict=True)
    return model


@torch.no_grad()
def forward(model, cfg: dict, padded_vocab: int, tokens) -> torch.Tensor:
    from megatron.core.tensor_parallel.random import initialize_rng_tracker

    # the main model only: MTP does not change the logits (and transformers has no MTP module)
    m32 = SK.build_model(cfg, dtype=torch.float32, float16_module=False, with_mtp=False,
                         vocab_size=padded_vocab, parallel_output=False)
    sd = {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
          for k, v in unwrap(model).state_dict().items() if not k.startswith("mtp.")}
    m32.load_state_dict(sd, strict=True)
    m32.eval()
    ids = torch.as_tensor(tokens, dtype=torch.long)
    s = ids.shape[1]
    pos = torch.arange(s)[None].expand_as(ids)
    mask = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)[None, None]
    initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    out = m32(input_ids=ids, position_ids=pos, attention_mask=mask).float()
    if out.shape[0] != ids.shape[0]:  # [s, b, v] -> [b, s, v]
        out = out.transpose(0, 1)
    return out.contiguous()


def run_job(job: dict) -> dict:
    from megatron.core import parallel_state as ps

    rank = torch.distributed.get_rank()

    out = {"ok": False, "error": None, "rank": rank, "tp": job["tp"], "ep": job["ep"],
           "state": {}, "extra_state": [], "nan_after_load": [], "logits": None}
    try:
        E.init_model_parallel(job["tp"], job["ep"], job.get("pp", 1))
        out["tp_rank"] = ps.get_tensor_model_parallel_rank()
        out["ep_rank"] = ps.get_expert_model_parallel_rank()
        cfg = json.loads((Path(job["hf"]) / "config.json").read_text())
        # an uneven pipeline split, as Megatron-LM's --decoder-first/last-pipeline-num-layers
        cfg["num_layers_in_first_pipeline_stage"] = job.get("first_stage_layers")
        cfg["num_layers_in_last_pipeline_stage"] = job.get("last_stage_layers")
        if job.get("format") == "torch":
            model = load_legacy(cfg, job["checkpoint"], job["padded_vocab"])
        else:
            model = load_strict(cfg, job["checkpoint"], job["padded_vocab"],
                                job.get("training_state_present", False))
        for k, v in unwrap(model).state_dict().items():
            if isinstance(v, torch.Tensor):
                out["state"][k] = v.detach().clone()
                if v.is_floating_point() and torch.isnan(v).any():
                    out["nan_after_load"].append(k)
            else:
                out["extra_state"].append(k)
        # A forward needs every stage: only without pipeline parallelism.
        if job.get("tokens") is not None and job.get("pp", 1) == 1:
            out["logits"] = forward(model, cfg, job["padded_vocab"], job["tokens"])
        out["ok"] = True
    except BaseException as e:  # DCP's CheckpointException is a BaseException
        if isinstance(e, KeyboardInterrupt):
            raise
        out["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-6000:]}"
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", required=True)
    a = ap.parse_args(argv)
    jobs = json.loads(Path(a.jobs).read_text())
    rc = run_jobs(jobs, run_job, timeout=PG_TIMEOUT, threads=1)
    for j in jobs:
        for r in ((None,) if j["world_size"] == 1 else (0, 1)):
            res = torch.load(dump_path(j, r), weights_only=False)
            where = f"ws{j['world_size']}" + ("" if r is None else f" rank {r}")
            msg = (f"{len(res['state'])} tensors, {len(res['extra_state'])} _extra_state loaded "
                   f"strictly" if res["ok"] else res["error"].splitlines()[0])
            print(f"{'OK  ' if res['ok'] else 'FAIL'} {j['checkpoint']} [{where}]: {msg}")
    return rc


if __name__ == "__main__":
    sys.exit(main())

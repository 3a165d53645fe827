"""Real Megatron-LM training checkpoints, written by megatron.training's own code on CPU.

    python tools/megatron/train_checkpoint.py --model llama|hybrid --out SAVE [--tp N]
        [--optimizer dist-fully|dist-dp|fp16] [--iters N] [--load SAVE --continue N]
        [--tokenizer DIR] [--no-args] [--ckpt-format torch_dist|torch] [--pp N] [--ep N]

What a training run does, minus the launcher: `parse_args` + `validate_args` (pretrain_gpt.py's
flags for a tiny Llama-like GPT or a Mamba+attention+MoE hybrid), `set_global_variables`,
`initialize_model_parallel`, `model_parallel_cuda_manual_seed`, `setup_model_and_optimizer`
(DDP-wrapped model, Megatron optimizer: the distributed optimizer saved in its dp-reshardable or
fully-reshardable form, or the plain mixed-precision one), a few `train_step` calls on random
tokens and `save_checkpoint` (torch_dist). TP gloo ranks (DP = 1). The only shims are for CUDA
calls on a CPU build (mcore_env.cpu_shims, plus the CUDA RNG state, which is replaced by the CPU
one) -- the checkpoint is Megatron's.

--tokenizer DIR: the vocabulary comes from a Hugging Face tokenizer folder
(`--tokenizer-type HuggingFaceTokenizer --tokenizer-model DIR`, no --vocab-size) and the tokenizer is
built, as a run on real data does: Megatron-LM then records `args.vocab_size = None` and only
`padded_vocab_size` (the tokenizer's `len()` padded).

--no-args: the checkpoint as Megatron-Bridge's save_checkpoint writes it, whose common state holds
no `args` (Bridge records its config in run_config.yaml instead): Megatron-LM's generate_state_dict
is wrapped to leave `args` out, nothing else changes.

--pp N / --ep N: pipeline stages / expert-parallel ranks (world size tp x pp x ep; expert
parallelism is carved out of data parallelism, so --ep 2 runs DP = 2 with one sequence per micro
batch, keeping the global batch of 2).

--ckpt-format torch: the legacy format (mp_rank_XX/model_optim_rng.pt per rank, and
distrib_optim.pt beside it for the distributed optimizer) instead of torch_dist.

--load SAVE --continue N: the same run (its --iters) resumes from SAVE: setup_model_and_optimizer
calls load_checkpoint (--dist-ckpt-strictness raise_all: every model and optimizer key present,
none left over; --use-checkpoint-opt_param-scheduler; --no-load-optim / --no-load-rng when
given) and N more train_step calls follow; exit 0 if it loaded and every loss is finite. The
per-rank results (--json) hold the losses and the iteration loaded. The model provider builds the local layer spec (no
Transformer Engine on CPU): GPTModel via gpt_from_args.build_gpt, HybridModel via
hybrid_load.build_hybrid.
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
sys.path.insert(0, str(HERE.parent / "hybrid"))
# mamba_ssm / causal_conv1d stand-ins (tools/hybrid), before Megatron's mamba_mixer is imported
sys.path.insert(0, str(HERE.parent / "hybrid" / "mamba_ssm_standin"))

import mcore_env as E  # noqa: E402
import torch  # noqa: E402

PG_TIMEOUT = datetime.timedelta(seconds=120)
SEQ = 16
VOCAB = 250
MICRO_BATCH = 2  # sequences per step (the global batch)

COMMON = [
    "--seq-length", str(SEQ), "--max-position-embeddings", "64",
    "--micro-batch-size", "2", "--global-batch-size", "2",
    "--lr", "1e-3", "--min-lr", "1e-4", "--lr-decay-style", "cosine", "--lr-warmup-iters", "1",
    "--weight-decay", "0.01", "--clip-grad", "1.0",
    "--attention-dropout", "0.0", "--hidden-dropout", "0.0",
    "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB),
    "--make-vocab-size-divisible-by", "128",
    "--transformer-impl", "local", "--use-cpu-initialization",
    "--no-gradient-accumulation-fusion", "--no-masked-softmax-fusion",
    "--no-bias-swiglu-fusion", "--no-bias-dropout-fusion", "--no-rope-fusion",
    "--no-persist-layer-norm",
    "--ckpt-format", "torch_dist", "--save-interval", "1000", "--seed", "1234",
    "--eval-iters", "0", "--log-interval", "1000",
]

LLAMA = [
    "--num-layers", "2", "--hidden-size", "64", "--ffn-hidden-size", "128",
    "--num-attention-heads", "4", "--group-query-attention", "--num-query-groups", "2",
    "--kv-channels", "16", "--normalization", "RMSNorm", "--norm-epsilon", "1e-5",
    "--swiglu", "--disable-bias-linear", "--untie-embeddings-and-output-weights",
    "--position-embedding-type", "rope", "--rotary-base", "500000",
]


def argv_for(model: str, tp: int, optimizer: str, iters: int, save: str | None,
             load: str | None, tokenizer: str | None = None, ckpt_format: str = "torch_dist",
             pp: int = 1, ep: int = 1) -> list[str]:
    a = list(COMMON) + (LLAMA if model == "llama" else HYBRID)
    a += ["--pipeline-model-parallel-size", str(pp), "--expert-model-parallel-size", str(ep)]
    a[a.index("--micro-batch-size") + 1] = str(MICRO_BATCH // ep)
    a[a.index("--ckpt-format") + 1] = ckpt_format
    if tokenizer:
        at = a.index("--tokenizer-type")
        a[at:at + 4] = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tokenizer]
    a += ["--tensor-model-parallel-size", str(tp), "--train-iters", str(iters), "--bf16"]
    if optimizer.startswith("dist"):
        a.append("--use-distributed-optimizer")
        if optimizer == "dist-fully":
            a.append("--dist-ckpt-optim-fully-reshardable")
    if save:
        a += ["--save", save]
    if load:
        a += ["--load", load]
    return a


HYBRID = [
    "--num-layers", "4", "--hybrid-layer-pattern", "M*ME", "--hidden-size", "64",
    "--ffn-hidden-size", "128", "--num-attention-heads", "4", "--group-query-attention",
    "--num-query-groups", "2", "--kv-channels", "16", "--normalization", "RMSNorm",
    "--norm-epsilon", "1e-5", "--disable-bias-linear", "--untie-embeddings-and-output-weights",
    "--position-embedding-type", "none", "--squared-relu",
    "--mamba-state-dim", "16", "--mamba-head-dim", "16", "--mamba-num-groups", "2",
    "--num-experts", "4", "--moe-router-topk", "2", "--moe-ffn-hidden-size", "32",
    "--moe-shared-expert-intermediate-size", "32", "--moe-router-score-function", "sigmoid",
    "--moe-router-enable-expert-bias", "--moe-router-dtype", "fp32",
    "--moe-token-dispatcher-type", "allgather", "--moe-aux-loss-coeff", "0.0",
    "--moe-router-topk-scaling-factor", "2.5",
]


# ------------------------------------------------------------------------------------------------

def model_provider(pre_process=True, post_process=True, vp_stage=None, config=None,
                   pg_collection=None):
    from megatron.training import get_args

    args = get_args()
    if getattr(args, "hybrid_layer_pattern", None):
        return build_hybrid(args, pre_process, post_process)
    import gpt_from_args as G

    return G.build_gpt(args, pre_process=pre_process, post_process=post_process)


def build_hybrid(args, pre_process: bool, post_process: bool):
    """HybridModel as pretrain_hybrid's provider builds it: the TransformerConfig from
    megatron.training's own core_transformer_config_from_args, with the local-module stack of
    tools/hybrid (no Transformer Engine on CPU) and local attention."""
    import hybrid_keys as HK
    import megatron.core.models.hybrid.hybrid_block as hybrid_block
    from megatron.core.models.hybrid.hybrid_model import HybridModel
    from megatron.core.transformer.enums import AttnBackend
    from megatron.core.transformer.torch_norm import WrappedTorchNorm
    from megatron.training.argument_utils import core_transformer_config_from_args

    # HybridStack builds its final norm with TENorm directly (no spec entry); Megatron's own
    # CUDA RNG tracker works here (cpu_rng_shims), so hybrid_keys' CPU tracker is not used.
    hybrid_block.TENorm = WrappedTorchNorm
    config = core_transformer_config_from_args(args)
    config.attention_backend = AttnBackend.local
    return HybridModel(
        config=config, hybrid_stack_spec=HK.local_hybrid_stack_spec(),
        vocab_size=args.padded_vocab_size, max_sequence_length=args.max_position_embeddings,
        hybrid_layer_pattern=args.hybrid_layer_pattern, pre_process=pre_process,
        post_process=post_process, fp16_lm_cross_entropy=False, parallel_output=True,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type=args.position_embedding_type)


def forward_step(data_iterator, model):
    from functools import partial

    tokens, labels = next(data_iterator)
    pos = torch.arange(SEQ).unsqueeze(0).expand_as(tokens)
    out = model(tokens, pos, None, labels=labels)

    def loss_func(output_tensor):
        loss = output_tensor.float().mean()
        return loss, torch.tensor(1, dtype=torch.int), {"lm loss": loss.detach()}

    return out, loss_func


def batches(seed: int, micro_batch: int = MICRO_BATCH):
    g = torch.Generator().manual_seed(seed)
    while True:
        t = torch.randint(0, VOCAB, (micro_batch, SEQ + 1), generator=g)
        yield t[:, :-1].contiguous(), t[:, 1:].contiguous()


def cpu_rng_shims():
    """megatron.core.tensor_parallel.random keeps a CUDA RNG state per parallel region and
    save_checkpoint records torch.cuda.get_rng_state(); without CUDA both are the CPU generator."""
    if torch.cuda.is_available():
        return
    torch.cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    torch.cuda.set_rng_state = lambda *a, **k: None
    torch.cuda.manual_seed = lambda *a, **k: None
    torch.cuda.manual_seed_all = lambda *a, **k: None
    torch.cuda.random.get_rng_state = torch.cuda.get_rng_state
    import megatron.core.tensor_parallel.random as R

    R._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    R._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    # get_model moves the model with .cuda(current_device()) and buffers are made with
    # .cuda(): on a CPU build both stay where they are
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.cuda = lambda self, *a, **k: self
    # get_model wraps DDP in a side stream; on CPU there is only the one
    import contextlib

    class Stream:
        def __init__(self, *a, **k):
            pass

        def wait_stream(self, other):
            pass

        def synchronize(self):
            pass

    torch.cuda.Stream = Stream
    torch.cuda.current_stream = lambda *a, **k: Stream()
    torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()
    CpuDevice().__enter__()  # for the rest of this process


class CpuDevice(torch.overrides.TorchFunctionMode):
    """Tensors that Megatron allocates with device='cuda' (the optimizer's loss-scale constants,
    ...) are made on the CPU instead; `Tensor.to('cuda')` stays put; `Tensor.type()` names the
    CUDA tensor type the optimizers check for."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dev = kwargs.get("device")
        if dev is not None and "cuda" in str(dev):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # the optimizers sort parameters by `param.type() == 'torch.cuda.FloatTensor'`
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if "cuda" not in name else name
        if func is torch.Tensor.to:
            args = tuple("cpu" if (isinstance(x, (str, torch.device)) and "cuda" in str(x))
                         else x for x in args)
        return func(*args, **kwargs)


def prime_torch_adam_before_load():
    """Without Transformer Engine or Apex the distributed optimizer falls back to torch.optim.Adam,
    whose per-parameter state (with its `step`) exists only after a first step; load_checkpoint
    asks the fresh optimizer for its state_dict() first and DistributedOptimizer.state_dict
    asserts one `step`. TE's FusedAdam needs no such priming. So before the real load_checkpoint
    runs, every parameter gets the state a fresh FusedAdam would report (step 0, zero moments);
    the load then replaces all of it."""
    import megatron.training.training as T

    real = T.load_checkpoint

    def load_checkpoint(model, optimizer, *a, **k):
        for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
            inner = getattr(opt, "optimizer", None)
            if isinstance(inner, torch.optim.Adam):
                for group in inner.param_groups:
                    for p in group["params"]:
                        if not inner.state[p]:
                            inner.state[p].update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p),
                                                  exp_avg_sq=torch.zeros_like(p))
        return real(model, optimizer, *a, **k)

    T.load_checkpoint = load_checkpoint
    # The same fallback keeps `step` as a tensor in each parameter's state, and
    # _set_main_param_and_optimizer_states copies every state tensor from the checkpoint's
    # per-parameter tensors, where `step` is not (load_state_dict restores it from the param
    # groups): `step` is marked absent there, as the code already does for non-tensors.
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer as DO

    set_states = DO._set_main_param_and_optimizer_states

    def _set_main_param_and_optimizer_states(self, model_param, tensors):
        return set_states(self, model_param, {"step": None, **tensors})

    DO._set_main_param_and_optimizer_states = _set_main_param_and_optimizer_states


def run(rank: int, world: int, init: str, job: dict, res_file: str):
    torch.set_num_threads(1)
    res = {"ok": False, "rank": rank}
    try:
        cpu_rng_shims()
        E.init_distributed(rank, world, init, timeout=PG_TIMEOUT)
        argv = argv_for(job["model"], world // (job.get("pp", 1) * job.get("ep", 1)), job["optimizer"], job["iters"], job.get("out"),
                        job.get("load"), job.get("tokenizer"), job.get("ckpt_format", "torch_dist"),
                        job.get("pp", 1), job.get("ep", 1))
        if job.get("load"):
            # resume as a run does: strict load (every key of the model and optimizer present,
            # nothing left over), the checkpoint's LR schedule
            argv += ["--dist-ckpt-strictness", "raise_all", "--use-checkpoint-opt_param-scheduler"]
        if job.get("no_load_optim"):
            argv += ["--no-load-optim"]
        if job.get("no_load_rng"):
            argv += ["--no-load-rng"]
        args = E.training_args(argv, world, rank)
        E.allow_megatron_training_import()
        from megatron.core import parallel_state, tensor_parallel
        from megatron.core.enums import ModelType
        from megatron.core.num_microbatches_calculator import init_num_microbatches_calculator
        from megatron.training import global_vars
        from megatron.training.checkpointing import save_checkpoint
        from megatron.training.training import (get_model_config, setup_model_and_optimizer,
                                                train_step)
        from megatron.core.pipeline_parallel import get_forward_backward_func

        with E.muted_stdout():
            # a tokenizer folder sets padded_vocab_size from len(tokenizer), as in a real run
            global_vars.set_global_variables(args, build_tokenizer=bool(job.get("tokenizer")))
        if job.get("no_args"):
            import megatron.training.checkpointing as C

            generate = C.generate_state_dict

            def generate_state_dict(*a, **k):
                state = generate(*a, **k)
                del state["args"]
                return state

            C.generate_state_dict = generate_state_dict
        tp = world // (job.get("pp", 1) * job.get("ep", 1))
        E.init_model_parallel(tp, job.get("ep", 1), job.get("pp", 1))
        tensor_parallel.model_parallel_cuda_manual_seed(args.seed)
        if job.get("load") and not job.get("no_load_optim"):
            prime_torch_adam_before_load()
        with E.muted_stdout():
            model, optimizer, sched = setup_model_and_optimizer(
                ModelType.encoder_or_decoder, model_provider)
        config = get_model_config(model[0])
        fb = get_forward_backward_func()
        it = batches(1000 + args.iteration, args.micro_batch_size)
        losses = []
        iteration = args.iteration
        for _ in range(job["iters"] - iteration if not job.get("load") else job["continue"]):
            with E.muted_stdout():
                loss, skipped, grad_norm, *_ = train_step(forward_step, it, model, optimizer,
                                                          sched, config, fb, iteration=iteration)
            iteration += 1
            args.curr_iteration = iteration
            if loss:  # the loss exists on the last pipeline stage only
                losses.append(float(loss["lm loss"]))
        if job.get("out") and not job.get("load"):
            with E.muted_stdout():
                save_checkpoint(iteration, model, optimizer, sched, 0)
        res.update(ok=True, losses=losses, iteration=iteration, loaded_iteration=args.iteration)
    except BaseException as e:
        res.update(error=f"{type(e).__name__}: {e}", trace=traceback.format_exc()[-6000:])
    torch.save(res, res_file)
    if not res["ok"]:
        os._exit(1)
    torch.distributed.destroy_process_group()


def spawn(job: dict, world: int) -> list[dict]:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    init = f"tcp://127.0.0.1:{E.free_port()}"
    with tempfile.TemporaryDirectory(prefix="train_checkpoint.") as d:
        files = [f"{d}/rank{r}.pt" for r in range(world)]
        procs = [ctx.Process(target=run, args=(r, world, init, job, files[r]))
                 for r in range(world)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + 600
        while any(p.is_alive() for p in procs):
            if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in procs):
                time.sleep(2)
                for p in procs:
                    if p.is_alive():
                        p.terminate()
                break
            time.sleep(0.1)
        for p in procs:
            p.join()
        return [torch.load(f, weights_only=False) if os.path.exists(f) else
                {"ok": False, "rank": r, "error": f"no result (exit {procs[r].exitcode})"}
                for r, f in enumerate(files)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["llama", "hybrid"], default="llama")
    ap.add_argument("--out", help="save directory (--save)")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--optimizer", choices=["dist-fully", "dist-dp", "fp16"], default="dist-fully")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--load", help="load this save directory and continue training")
    ap.add_argument("--continue", dest="cont", type=int, default=2)
    ap.add_argument("--no-load-optim", action="store_true")
    ap.add_argument("--no-load-rng", action="store_true")
    ap.add_argument("--json", help="write the per-rank results here")
    ap.add_argument("--tokenizer", help="Hugging Face tokenizer folder giving the vocabulary")
    ap.add_argument("--no-args", action="store_true", help="save without args (as Megatron-Bridge does)")
    ap.add_argument("--ckpt-format", choices=["torch_dist", "torch"], default="torch_dist")
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--ep", type=int, default=1)
    a = ap.parse_args(argv)
    job = {"model": a.model, "optimizer": a.optimizer, "iters": a.iters,
           "out": str(Path(a.out).resolve()) if a.out else None,
           "load": str(Path(a.load).resolve()) if a.load else None, "continue": a.cont,
           "no_load_optim": a.no_load_optim, "no_load_rng": a.no_load_rng,
           "tokenizer": str(Path(a.tokenizer).resolve()) if a.tokenizer else None, "no_args": a.no_args,
           "ckpt_format": a.ckpt_format, "pp": a.pp, "ep": a.ep}
    if a.load:
        job["iters"] = a.iters + a.cont
    results = spawn(job, a.tp * a.pp * a.ep)
    ok = True
    for r in results:
        if r["ok"]:
            print(f"OK   rank {r['rank']}: iteration {r['iteration']}, losses {r['losses']}")
        else:
            ok = False
            print(f"FAIL rank {r['rank']}: {r.get('error')}\n{r.get('trace', '')}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, default=str))
    return 0 if ok and all(all(x == x for x in r["losses"]) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Checkpoints written by a real Megatron-LM training run, exported and resharded with no
Hugging Face config anywhere.

tools/megatron/train_checkpoint.py runs megatron.training's own code on CPU (parse_args +
validate_args, setup_model_and_optimizer, 3 train_step calls on random tokens, save_checkpoint;
gloo, shims only for CUDA calls) for a Llama-like GPT (RMSNorm, SwiGLU, GQA 4/2, RoPE, untied,
vocab 250 padded to 256, bf16) at TP=1 and TP=2 with the distributed optimizer saved
fully-reshardable, and at TP=1 dp-reshardable; the same GPT saved as Megatron-Bridge saves (no
`args` in the common state, Bridge 0.6.2's own run_config.yaml beside it), with its vocabulary
from a Hugging Face tokenizer folder (args.vocab_size None), and at TP=2 in the legacy format
(`--ckpt-format torch`, fp16 optimizer state inside the rank files). Generated once per session
into a temp dir (about 20 s per checkpoint). Then, with no --hf-config:

- export writes config.json from the args; transformers loads the folder with its native
  LlamaForCausalLM; every exported tensor equals the checkpoint's model tensor as Megatron-Core
  loads it (bf16, not the optimizer's fp32 master copies), mapped back with save_from_hf's own
  Llama mapping; transformers' logits equal Megatron-Core's forward of the training checkpoint
  (gpt_from_args, loaded strictly for every model key);
- verify (HF <-> training checkpoint) and reshard TP=2 -> TP=1 need no config either.
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

from conftest import ROOT

TRAIN = ROOT / "tools" / "megatron" / "train_checkpoint.py"
GPT_FROM_ARGS = ROOT / "tools" / "megatron" / "gpt_from_args.py"
HYBRID_LOAD = ROOT / "tools" / "hybrid" / "hybrid_load.py"
PYTHON = sys.executable
TIMEOUT = 600
VOCAB = 250
RUNS = {  # name -> (tp, optimizer form, more train_checkpoint.py flags)
    "llama-tp1": (1, "dist-fully", []),
    "llama-tp2": (2, "dist-fully", []),
    "llama-tp1-dp": (1, "dist-dp", []),
    "hybrid-tp1": (1, "dist-fully", []),
    # saved as Megatron-Bridge saves (no args in the common state), run_config.yaml beside it
    "llama-tp1-bridge": (1, "dist-fully", ["--no-args"]),
    # the vocabulary from a Hugging Face tokenizer folder: args.vocab_size is None
    "llama-tp1-tok": (1, "dist-fully", ["--tokenizer", "{tokenizer}"]),
    # the legacy format (mp_rank_XX/model_optim_rng.pt), the optimizer state inside each file
    "llama-tp2-legacy": (2, "fp16", ["--ckpt-format", "torch"]),
}
BRIDGE_RUN_CONFIG = ROOT / "TestCheckpoints" / "bridge-run-config" / "llama-run_config.yaml"
ENV = dict(os.environ, PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")


def run_tool(*args) -> subprocess.CompletedProcess:
    p = subprocess.run([PYTHON, *map(str, args)], capture_output=True, text=True,
                       timeout=TIMEOUT, env=ENV)
    assert p.returncode == 0, f"{' '.join(map(str, args))} exited {p.returncode}\n" \
                              f"--- stdout ---\n{p.stdout[-4000:]}\n--- stderr ---\n{p.stderr[-6000:]}"
    return p


def make_tokenizer(folder: Path) -> None:
    """A Hugging Face tokenizer of VOCAB tokens, saved by transformers: a word-level model
    vocabulary of VOCAB - 4 tokens and 4 added special tokens (len(tokenizer) == VOCAB)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(VOCAB - 4)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="w0")
    fast.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    assert len(fast) == VOCAB
    fast.save_pretrained(str(folder))


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Save directories of real training runs (the TP=1 runs side by side, then the TP=2 ones)."""
    work = tmp_path_factory.mktemp("training-checkpoints")
    out = {name: work / name for name in RUNS}
    out["tokenizer"] = work / "tokenizer"
    make_tokenizer(out["tokenizer"])

    def start(name):
        tp, form, flags = RUNS[name]
        flags = [f.format(tokenizer=out["tokenizer"]) for f in flags]
        return subprocess.Popen([PYTHON, str(TRAIN), "--model", name.split("-")[0], "--tp", str(tp),
                                 "--optimizer", form, "--out", str(out[name]), *flags],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)

    for batch in (["llama-tp1", "llama-tp1-dp", "hybrid-tp1", "llama-tp1-bridge"],
                  ["llama-tp2", "llama-tp2-legacy", "llama-tp1-tok"]):
        procs = {name: start(name) for name in batch}
        for name, p in procs.items():
            text, _ = p.communicate(timeout=TIMEOUT)
            assert p.returncode == 0, f"train_checkpoint {name} exited {p.returncode}:\n{text[-6000:]}"
    # Megatron-Bridge writes run_config.yaml into the iteration folder
    (out["llama-tp1-bridge"] / "iter_0000003" / "run_config.yaml").write_bytes(BRIDGE_RUN_CONFIG.read_bytes())
    return out


@pytest.fixture(scope="session")
def exported(nembridge, trained, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    work = tmp_path_factory.mktemp("training-exports")
    res = {}
    for name in ("llama-tp1", "llama-tp2", "hybrid-tp1", "llama-tp1-bridge", "llama-tp1-tok",
                 "llama-tp2-legacy"):
        r = nembridge.run("export", "--megatron", trained[name], "--out", work / name).ok()
        res[name] = (work / name, r.stdout)
    return res


def token_ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(20261202)
    return torch.randint(0, VOCAB, (2, 16), generator=g)


@pytest.fixture(scope="session")
def megatron(trained, tmp_path_factory) -> dict[str, dict]:
    """Megatron-Core's own load (strict for every model key) and fp32 forward of each training
    checkpoint at world size 1 (the TP=2 one resharded by DCP on load)."""
    work = tmp_path_factory.mktemp("training-megatron")
    jobs = [{"checkpoint": str(trained[name]), "world_size": 1, "tp": 1,
             "tokens": token_ids().tolist(), "dump": str(work / f"{name}.pt"),
             "training_state_present": True} for name in ("llama-tp1", "llama-tp2", "llama-tp1-tok")]
    # Bridge's own provider cannot be built here (Bridge is not in the venv): the GPTModel that
    # loads the no-args checkpoint is described by the args of the run with the same flags
    jobs.append({**jobs[0], "checkpoint": str(trained["llama-tp1-bridge"]),
                 "args_from": str(trained["llama-tp1"]), "dump": str(work / "llama-tp1-bridge.pt")})
    # the legacy TP=2 save: each rank loads its own rank file as load_checkpoint does, Megatron-Core
    # saves the loaded model (its global tensors), the forward gathers the vocabulary
    jobs.append({"checkpoint": str(trained["llama-tp2-legacy"]), "legacy": True, "world_size": 2,
                 "tp": 2, "tokens": token_ids().tolist(), "dump": str(work / "llama-tp2-legacy.pt"),
                 "save_dist": str(work / "llama-tp2-legacy-dist")})
    (work / "jobs.json").write_text(json.dumps(jobs))
    run_tool(GPT_FROM_ARGS, "--jobs", work / "jobs.json")
    res = {name: torch.load(work / f"{name}.pt", weights_only=False)
           for name in ("llama-tp1", "llama-tp2", "llama-tp1-tok", "llama-tp1-bridge")}
    legacy = torch.load(work / "llama-tp2-legacy.rank0.pt", weights_only=False)
    if legacy["ok"]:
        legacy["state"] = per_layer(dcp_global(work / "llama-tp2-legacy-dist"))
    res["llama-tp2-legacy"] = legacy
    # the hybrid: HybridModel built from the exported config.json (tools/hybrid), the training
    # checkpoint loaded into it strictly for every model key
    ckpt = trained["hybrid-tp1"] / "iter_0000003"
    job = {"kind": "hybrid", "hf": None, "checkpoint": str(ckpt), "world_size": 1, "tp": 1,
           "ep": 1, "padded_vocab": 256, "tokens": token_ids().tolist(),
           "dump": str(work / "hybrid-tp1.pt"), "training_state_present": True}
    res["hybrid-tp1"] = job
    return res


@pytest.fixture(scope="session")
def megatron_hybrid(megatron, exported, tmp_path_factory) -> dict:
    job = dict(megatron["hybrid-tp1"], hf=str(exported["hybrid-tp1"][0]))
    work = Path(job["dump"]).parent
    (work / "hybrid-jobs.json").write_text(json.dumps([job]))
    run_tool(HYBRID_LOAD, "--jobs", work / "hybrid-jobs.json")
    return torch.load(job["dump"], weights_only=False)


@functools.lru_cache(maxsize=None)
def hf_model(folder: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                attn_implementation="eager").eval()


NAMES = ["llama-tp1", "llama-tp2", "llama-tp1-bridge", "llama-tp1-tok", "llama-tp2-legacy"]
# what each export says about where config.json and the tokenizer came from
ORIGIN = {
    "llama-tp1": ["written from the checkpoint's training args (llama table)", "no tokenizer carried"],
    "llama-tp2": ["written from the checkpoint's training args (llama table)", "no tokenizer carried"],
    "llama-tp1-bridge": ["written from Megatron-Bridge's run_config.yaml (its model provider) (llama table)",
                         "no tokenizer carried"],
    "llama-tp1-tok": ["written from the checkpoint's training args (llama table)", "tokenizer files from ",
                      "tokenizer.json (the training args record only the padded size)"],
    "llama-tp2-legacy": ["written from the checkpoint's training args (llama table)", "no tokenizer carried",
                         "not exported (training state, not model weights): 3 entries (opt_param_scheduler, optimizer, rng_state)"],
}


@pytest.mark.parametrize("name", NAMES)
def test_export_with_no_config_loads_with_the_native_class(exported, name):
    from transformers import LlamaForCausalLM

    out, stdout = exported[name]
    for line in ORIGIN[name]:
        assert line in stdout, stdout
    assert "not exported (training state" in stdout, stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vocab_size"] == VOCAB and cfg["rms_norm_eps"] == 1e-5, cfg
    assert type(hf_model(str(out))) is LlamaForCausalLM


@pytest.mark.parametrize("name", NAMES)
def test_exported_tensors_are_the_checkpoints_model_tensors(exported, megatron, name):
    """The HF tensors, mapped into Megatron's layout by save_from_hf's own Llama mapping, are
    bit-identical to the bf16 model tensors Megatron-Core loads from the training checkpoint."""
    from safetensors.torch import load_file
    import save_from_hf as S

    res = megatron[name]
    assert res["ok"], res["error"]
    out, _ = exported[name]
    hf = load_file(str(out / "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in hf.values()), {k: t.dtype for k, t in hf.items()}
    cfg = json.loads((out / "config.json").read_text())
    want = S.megatron_tensors(cfg, hf, VOCAB)  # the padded rows (trained, not zero) are not exported
    state = {k: (v[:VOCAB] if k in ("embedding.word_embeddings.weight", "output_layer.weight") else v)
             for k, v in res["state"].items()}
    assert set(want) == set(state), (sorted(set(want) ^ set(state)))
    for k, t in want.items():
        same = t.dtype == state[k].dtype and torch.equal(t.view(torch.int16), state[k].view(torch.int16))
        assert same, f"{k}: exported {t.dtype} {list(t.shape)} differs from Megatron's {state[k].dtype} {list(state[k].shape)}"


@pytest.mark.parametrize("name", NAMES)
def test_transformers_logits_equal_megatrons_forward_of_the_training_checkpoint(exported, megatron,
                                                                                name):
    res = megatron[name]
    assert res["ok"], res["error"]
    meg = res["logits"][..., :VOCAB]
    with torch.no_grad():
        got = hf_model(str(exported[name][0]))(token_ids()).logits.float()
    scale = float(got.abs().max())
    diff = float((got - meg).abs().max())
    assert diff <= 1e-4 * scale, f"max |transformers - megatron| {diff:.3e} (scale {scale:.3e})"


def test_hybrid_export_loads_natively_and_its_logits_equal_megatrons(exported, megatron_hybrid):
    """Mamba + attention + MoE (pattern M*ME): NemotronHForCausalLM from the config written from
    args.hybrid_layer_pattern; the fp32 router expert_bias stays fp32, the rest is bf16; logits
    equal Megatron-Core's HybridModel forward of the training checkpoint."""
    from safetensors.torch import load_file
    from transformers import NemotronHForCausalLM

    out, stdout = exported["hybrid-tp1"]
    assert "(nemotron-h table)" in stdout, stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hybrid_override_pattern"] == "M*ME" and cfg["layer_norm_epsilon"] == 1e-5, cfg
    tensors = load_file(str(out / "model.safetensors"))
    dtypes = {k: t.dtype for k, t in tensors.items()}
    assert {k for k, d in dtypes.items() if d != torch.bfloat16} == \
        {"backbone.layers.3.mixer.gate.e_score_correction_bias"}, dtypes
    assert dtypes["backbone.layers.3.mixer.gate.e_score_correction_bias"] == torch.float32
    model = hf_model(str(out))
    assert type(model) is NemotronHForCausalLM
    res = megatron_hybrid
    assert res["ok"], res["error"]
    assert not res["nan_after_load"], res["nan_after_load"]
    meg = res["logits"][..., :VOCAB]
    with torch.no_grad():
        got = model(token_ids()).logits.float()
    scale = float(got.abs().max())
    diff = float((got - meg).abs().max())
    assert diff <= 1e-4 * scale, f"max |transformers - megatron| {diff:.3e} (scale {scale:.3e})"


def test_verify_and_reshard_need_no_config(nembridge, trained, exported, tmp_path):
    out, _ = exported["llama-tp2"]
    nembridge.run("verify", out, trained["llama-tp2"]).ok()
    r1 = tmp_path / "tp1"
    nembridge.run("reshard", trained["llama-tp2"], "--out", r1, "--tp", "1").ok()
    nembridge.run("verify", trained["llama-tp2"], r1).ok()


def test_vocab_size_from_the_tokenizer_when_the_args_have_none(nembridge, trained, exported, tmp_path):
    """A run whose vocabulary came from a Hugging Face tokenizer records args.vocab_size = None:
    vocab_size is the tokenizer's (args.tokenizer_model names its folder, whose files are
    carried); without that folder the export is refused naming the field and --tokenizer, and
    --tokenizer DIR supplies it."""
    from transformers import AutoTokenizer

    out, _ = exported["llama-tp1-tok"]
    assert len(AutoTokenizer.from_pretrained(str(out))) == VOCAB
    moved = trained["tokenizer"].with_name("tokenizer-moved")
    trained["tokenizer"].rename(moved)
    try:
        r = nembridge.run("export", "--megatron", trained["llama-tp1-tok"], "--out", tmp_path / "x")
        assert r.returncode == 1 and not (tmp_path / "x").exists(), (r.stdout, r.stderr)
        assert "no `vocab_size`" in r.stderr and "--tokenizer DIR" in r.stderr \
            and str(trained["tokenizer"]) in r.stderr, r.stderr
        r = nembridge.run("export", "--megatron", trained["llama-tp1-tok"], "--out", tmp_path / "y",
                          "--tokenizer", moved).ok()
    finally:
        moved.rename(trained["tokenizer"])
    assert json.loads((tmp_path / "y" / "config.json").read_text())["vocab_size"] == VOCAB
    assert (tmp_path / "y" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


# ------------------------------------------------------------------------------------------------
# training state: the optimizer re-sharded with the model, and resumed by Megatron-LM

def dcp_tensors(save: Path) -> dict[str, torch.Tensor]:
    """Every tensor key of a torch_dist checkpoint as its global tensor (torch's DCP reader)."""
    it = (save / "latest_checkpointed_iteration.txt").read_text().strip()
    return dcp_global(save / ("release" if it == "release" else f"iter_{int(it):07d}"))


# the local spec's norms, saved by sharded_state_dict under the fused names (TransformerLayer's
# sharded_state_dict_keys_map), are separate modules in model.state_dict()
LOCAL_NORMS = {"self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
               "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight"}


def per_layer(sharded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Global tensors of a GPTModel's sharded_state_dict (layers stacked on axis 0) under the
    model.state_dict() names of the local spec (decoder.layers.<i>.…)."""
    out = {}
    for k, t in sharded.items():
        if not k.startswith("decoder.layers."):
            out[k] = t
            continue
        rest = k[len("decoder.layers."):]
        for i in range(t.shape[0]):
            out[f"decoder.layers.{i}.{LOCAL_NORMS.get(rest, rest)}"] = t[i]
    return out


def dcp_global(d: Path) -> dict[str, torch.Tensor]:
    import torch.distributed.checkpoint as dcp

    md = dcp.FileSystemReader(str(d)).read_metadata()
    sd = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in md.state_dict_metadata.items()
          if isinstance(m, dcp.metadata.TensorStorageMetadata)}
    dcp.load(sd, checkpoint_id=str(d), no_dist=True)
    return sd


@pytest.fixture(scope="session")
def resharded(nembridge, trained, tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("training-reshard")
    out = {"tp1": work / "tp1", "tp2": work / "tp2"}
    r1 = nembridge.run("reshard", trained["llama-tp2"], "--out", out["tp1"], "--tp", "1").ok()
    assert "optimizer state re-sharded with the model: 27 tensors" in r1.stdout, r1.stdout
    assert "RNG state dropped" in r1.stdout and "--no-load-rng" in r1.stdout, r1.stdout
    nembridge.run("reshard", out["tp1"], "--out", out["tp2"], "--tp", "2").ok()
    return out


def test_reshard_tp2_tp1_tp2_is_byte_identical_for_model_and_optimizer_state(trained, resharded):
    src, back = dcp_tensors(trained["llama-tp2"]), dcp_tensors(resharded["tp2"])
    assert sum(k.startswith("optimizer.state.") for k in src) == 27, sorted(src)
    assert set(src) == set(back), sorted(set(src) ^ set(back))
    for k, t in src.items():
        assert t.dtype == back[k].dtype and torch.equal(t.view(torch.uint8), back[k].view(torch.uint8)), k
    # the TP=1 copy holds the same global tensors, chunked for one rank
    assert all(torch.equal(v, src[k]) for k, v in dcp_tensors(resharded["tp1"]).items())


def resume(save: Path, tp: int, *flags) -> list[list[float]]:
    """Megatron-LM resumes the run from `save` at TP `tp` (load_checkpoint strict: raise_all) and
    trains 2 more steps; the per-rank losses."""
    out = save.parent / f"{save.name}-resume-tp{tp}.json"
    run_tool(TRAIN, "--load", save, "--tp", tp, "--continue", 2, "--json", out, *flags)
    res = json.loads(out.read_text())
    assert all(r["ok"] and r["loaded_iteration"] == 3 and r["iteration"] == 5 for r in res), res
    return [r["losses"] for r in res]


def test_megatron_lm_resumes_the_resharded_checkpoint_with_its_optimizer(trained, resharded):
    """TP=2 -> TP=1 -> TP=2 resumes at TP=2 with the very losses of resuming the original, and the
    TP=1 copy resumes at TP=1 (the optimizer state loaded strictly both times)."""
    original = resume(trained["llama-tp2"], 2)
    assert resume(resharded["tp2"], 2, "--no-load-rng") == original
    tp1 = resume(resharded["tp1"], 1, "--no-load-rng")[0]
    assert all(abs(a - b) < 1e-2 for a, b in zip(tp1, original[0])), (tp1, original)


@pytest.fixture(scope="session")
def resharded_pp_ep(nembridge, trained, tmp_path_factory) -> dict[str, Path]:
    """The GPT TP=1 -> PP=2 -> PP=1 and the hybrid EP=1 -> EP=2 -> EP=1, optimizer included."""
    work = tmp_path_factory.mktemp("training-reshard-pp-ep")
    out = {k: work / k for k in ("pp2", "pp1", "ep2", "ep1")}
    r = nembridge.run("reshard", trained["llama-tp1"], "--out", out["pp2"], "--pp", "2").ok()
    assert "optimizer state re-sharded with the model: 27 tensors" in r.stdout, r.stdout
    nembridge.run("reshard", out["pp2"], "--out", out["pp1"], "--pp", "1").ok()
    r = nembridge.run("reshard", trained["hybrid-tp1"], "--out", out["ep2"], "--ep", "2").ok()
    assert "optimizer param groups split into the dense and the expert optimizer" in r.stdout, r.stdout
    r = nembridge.run("reshard", out["ep2"], "--out", out["ep1"], "--ep", "1").ok()
    assert "merged into the one Megatron-Core builds at ep 1" in r.stdout, r.stdout
    return out


def common_state(save: Path) -> dict:
    import io
    import torch.distributed.checkpoint as dcp

    it = (save / "latest_checkpointed_iteration.txt").read_text().strip()
    sd = {"common_state/shard_0_1": io.BytesIO()}
    dcp.load(sd, checkpoint_id=str(save / f"iter_{int(it):07d}"), no_dist=True)
    v = sd["common_state/shard_0_1"]
    return (torch.load(io.BytesIO(v.getvalue()), weights_only=False) if isinstance(v, io.BytesIO) else v)[0]


@pytest.mark.parametrize("source, back", [("llama-tp1", "pp1"), ("hybrid-tp1", "ep1")])
def test_reshard_across_pp_and_ep_and_back_is_byte_identical(trained, resharded_pp_ep, source, back):
    """Every model and optimizer tensor comes back byte for byte, and so do the optimizer's param
    groups and the LR scheduler in the common state (split for EP=2, merged again for EP=1)."""
    src, got = dcp_tensors(trained[source]), dcp_tensors(resharded_pp_ep[back])
    assert sum(k.startswith("optimizer.state.") for k in src) >= 27, sorted(src)
    assert set(src) == set(got), sorted(set(src) ^ set(got))
    for k, t in src.items():
        assert t.dtype == got[k].dtype and torch.equal(t.view(torch.uint8), got[k].view(torch.uint8)), k
    a, b = common_state(trained[source]), common_state(resharded_pp_ep[back])
    assert a["optimizer"] == b["optimizer"] and a["opt_param_scheduler"] == b["opt_param_scheduler"]
    if back == "ep1":
        split = common_state(resharded_pp_ep["ep2"])["optimizer"]
        assert sorted(split) == [0, 1], split
        assert [g["is_expert_parallel"] for g in split[1]["optimizer"]["param_groups"]] == [True, True]


def test_megatron_lm_resumes_across_pp_and_ep_with_its_optimizer(trained, resharded_pp_ep):
    """Megatron-LM loads the PP=2 copy of the GPT (two pipeline stages) and the EP=2 copy of the
    hybrid (experts split over two ranks, DP=2) with their optimizer state, strictly, and trains
    on: the PP=2 losses are those of resuming the original at PP=1 (same data, same state)."""
    runs = {"original": (trained["llama-tp1"], []),
            "pp2": (resharded_pp_ep["pp2"], ["--pp", "2", "--no-load-rng"]),
            "ep2": (resharded_pp_ep["ep2"], ["--model", "hybrid", "--ep", "2", "--no-load-rng"])}
    procs = {}
    for name, (save, flags) in runs.items():
        out = save.parent / f"{save.name}-resume-{name}.json"
        procs[name] = (out, subprocess.Popen([PYTHON, str(TRAIN), "--load", str(save), "--continue", "2",
                                              "--json", str(out), *flags], stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True, env=ENV))
    losses = {}
    for name, (out, p) in procs.items():
        text, _ = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, f"resume {name} exited {p.returncode}:\n{text[-6000:]}"
        res = json.loads(out.read_text())
        assert all(r["ok"] and r["loaded_iteration"] == 3 and r["iteration"] == 5 for r in res), res
        losses[name] = [r["losses"] for r in res if r["losses"]]  # the last pipeline stage's
    (original,), (pp2,) = losses["original"], losses["pp2"]
    assert all(abs(a - b) < 1e-3 for a, b in zip(pp2, original)) and len(pp2) == 2, (pp2, original)
    assert len(losses["ep2"]) == 2 and all(len(x) == 2 and all(v == v for v in x) for x in losses["ep2"])


def test_reshard_of_a_bridge_checkpoint_sets_its_run_config(nembridge, trained, tmp_path):
    """A checkpoint saved as Megatron-Bridge saves it (no args): reshard TP=1 -> TP=2 -> TP=1
    takes the source layout and the split axes from run_config.yaml, re-shards the optimizer
    state byte for byte, and the run config travels with the target's TP (read by PyYAML, every
    other field as Bridge wrote it)."""
    import yaml

    src = trained["llama-tp1-bridge"]
    r = nembridge.run("reshard", src, "--out", tmp_path / "tp2", "--tp", "2").ok()
    assert "optimizer state re-sharded with the model: 27 tensors" in r.stdout, r.stdout
    assert "RNG state dropped (per rank of the tp 1, pp 1, ep 1, etp 1 layout)" in r.stdout, r.stdout
    nembridge.run("reshard", tmp_path / "tp2", "--out", tmp_path / "tp1", "--tp", "1").ok()
    a, b = dcp_tensors(src), dcp_tensors(tmp_path / "tp1")
    assert set(a) == set(b), sorted(set(a) ^ set(b))
    assert all(torch.equal(t.view(torch.uint8), b[k].view(torch.uint8)) for k, t in a.items())
    original = yaml.safe_load(BRIDGE_RUN_CONFIG.read_text())
    for folder, tp in (("tp2", 2), ("tp1", 1)):
        got = yaml.safe_load((tmp_path / folder / "iter_0000003" / "run_config.yaml").read_text())
        assert got["model"]["tensor_model_parallel_size"] == tp
        assert {**got, "model": {**got["model"], "tensor_model_parallel_size": 1}} == original


def test_dp_reshardable_optimizer_is_refused_on_a_layout_change(nembridge, trained, tmp_path):
    r = nembridge.run("reshard", trained["llama-tp1-dp"], "--out", tmp_path / "x", "--tp", "2")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "dp-reshardable" in r.stderr and "--dist-ckpt-optim-fully-reshardable" in r.stderr \
        and "--drop-optimizer" in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()
    r = nembridge.run("reshard", trained["llama-tp1-dp"], "--out", tmp_path / "y", "--tp", "2",
                      "--drop-optimizer").ok()
    assert "--no-load-optim" in r.stdout, r.stdout
    keys = dcp_tensors(tmp_path / "y")
    assert not [k for k in keys if k.startswith("optimizer.")] and len(keys) == 9, sorted(keys)
    # the same layout keeps the dp-reshardable state as it is
    nembridge.run("reshard", trained["llama-tp1-dp"], "--out", tmp_path / "z", "--tp", "1").ok()
    assert sum(k.startswith("optimizer.distributed.") for k in dcp_tensors(tmp_path / "z")) == 3


# ------------------------------------------------------------------------------------------------
# --dtype

def special_fp32(shape, seed: int) -> torch.Tensor:
    """Random fp32 values with the cases rounding gets wrong: bf16/fp16 halfway points (ties to
    even both ways), NaN, +-inf, -0, fp32 and fp16 subnormals, values that overflow fp16."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g) * 0.05
    flat = t.view(-1)
    specials = torch.tensor([float("nan"), -float("nan"), float("inf"), -float("inf"), -0.0, 1e-40,
                             -3e-39, 6e-8, 3e-5, 70000.0, -65520.0, 65504.0], dtype=torch.float32)
    flat[:len(specials)] = specials
    bits = flat.view(torch.int32)
    n = min(64, flat.numel() - len(specials))
    base = torch.randint(0x3C000000, 0x40000000, (n,), generator=g, dtype=torch.int32)
    # exact bf16 ties (low 16 bits 0x8000, both parities) and fp16 ties (low 13 bits 0x1000)
    ties = torch.where(torch.arange(n) % 2 == 0, (base & ~0xFFFF) | 0x8000, (base & ~0x1FFF) | 0x1000)
    bits[len(specials):len(specials) + n] = ties
    return t


def test_export_dtype_casts_are_bit_exact_against_torch(nembridge, exported, tmp_path):
    """fp32 weights (random, with NaN, inf, subnormals and exact ties) imported, then exported
    with --dtype bf16 and fp16: every tensor equals torch's own `.to(dtype)` bit for bit; --dtype
    fp32 of the bf16 export widens exactly."""
    from safetensors.torch import load_file, save_file

    src, _ = exported["llama-tp1"]
    hf = tmp_path / "fp32"
    hf.mkdir()
    tensors = {k: special_fp32(t.shape, i) for i, (k, t) in
               enumerate(sorted(load_file(str(src / "model.safetensors")).items()))}
    save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**cfg, "dtype": "float32"}))
    nembridge.run("import", "--hf", hf, "--out", tmp_path / "mc").ok()
    for flag, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        out = tmp_path / flag
        r = nembridge.run("export", "--megatron", tmp_path / "mc", "--out", out, "--dtype", flag).ok()
        assert f"cast {len(tensors)} tensor(s)" in r.stdout, r.stdout
        got = load_file(str(out / "model.safetensors"))
        for k, t in tensors.items():
            want = t.to(dtype)
            assert got[k].dtype == dtype and torch.equal(got[k].view(torch.int16), want.view(torch.int16)), \
                (flag, k, (got[k].view(torch.int16) != want.view(torch.int16)).nonzero()[:5])
        nembridge.run("verify", out).ok()
    nembridge.run("import", "--hf", tmp_path / "bf16", "--out", tmp_path / "mc16").ok()
    nembridge.run("export", "--megatron", tmp_path / "mc16", "--out", tmp_path / "fp32b", "--dtype",
                  "fp32").ok()
    wide = load_file(str(tmp_path / "fp32b" / "model.safetensors"))
    for k, t in tensors.items():
        assert torch.equal(wide[k].view(torch.int32), t.to(torch.bfloat16).float().view(torch.int32)), k


def test_import_dtype_casts_are_bit_exact_against_torch(nembridge, exported, tmp_path):
    """import --dtype bf16 / fp16 of fp32 weights (NaN, inf, subnormals, exact ties): Megatron-Core
    loads each checkpoint strictly and its tensors are torch's own `.to(dtype)` of the HF tensors
    bit for bit (padded vocabulary rows zero); the legacy format at TP=2 casts the same (read back
    by export); the hybrid's fp32 router expert_bias is kept (the table's dtype_kept)."""
    from safetensors.torch import load_file, save_file
    import save_from_hf as S

    src, _ = exported["llama-tp1"]
    hf = tmp_path / "fp32"
    hf.mkdir()
    tensors = {k: special_fp32(t.shape, 100 + i) for i, (k, t) in
               enumerate(sorted(load_file(str(src / "model.safetensors")).items()))}
    save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**cfg, "dtype": "float32"}))
    jobs = []
    count = len(S.megatron_tensors(cfg, tensors, VOCAB))  # import counts the Megatron tensors it writes
    for flag in ("bf16", "fp16"):
        r = nembridge.run("import", "--hf", hf, "--out", tmp_path / f"mc-{flag}", "--dtype", flag).ok()
        assert f"cast {count} tensor(s): F32 -> {dict(bf16='BF16', fp16='F16')[flag]} ({count})" in r.stdout, r.stdout
        jobs.append({"checkpoint": str(tmp_path / f"mc-{flag}"), "world_size": 1, "tp": 1, "tokens": None,
                     "dump": str(tmp_path / f"mc-{flag}.pt")})
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    run_tool(GPT_FROM_ARGS, "--jobs", tmp_path / "jobs.json")
    for flag, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        res = torch.load(tmp_path / f"mc-{flag}.pt", weights_only=False)
        assert res["ok"], res["error"]
        want = S.megatron_tensors(cfg, {k: t.to(dtype) for k, t in tensors.items()}, VOCAB)
        assert set(want) == set(res["state"]), sorted(set(want) ^ set(res["state"]))
        for k, t in want.items():
            got = res["state"][k]
            if k in ("embedding.word_embeddings.weight", "output_layer.weight"):
                assert not got[VOCAB:].view(torch.int16).any(), k  # the padded rows are zeros
                got = got[:VOCAB]
            assert got.dtype == dtype and torch.equal(got.view(torch.int16), t.view(torch.int16)), \
                (flag, k, (got.view(torch.int16) != t.view(torch.int16)).nonzero()[:5])
    r = nembridge.run("import", "--hf", hf, "--out", tmp_path / "legacy", "--dtype", "bf16",
                      "--ckpt-format", "torch", "--tp", "2").ok()
    nembridge.run("export", "--megatron", tmp_path / "legacy", "--out", tmp_path / "legacy-hf").ok()
    back = load_file(str(tmp_path / "legacy-hf" / "model.safetensors"))
    for k, t in tensors.items():
        assert torch.equal(back[k].view(torch.int16), t.to(torch.bfloat16).view(torch.int16)), k
    # the hybrid (bf16, its router bias fp32) to fp16: the bias stays fp32
    hybrid, _ = exported["hybrid-tp1"]
    r = nembridge.run("import", "--hf", hybrid, "--out", tmp_path / "hybrid", "--dtype", "fp16").ok()
    assert "kept in their dtype (the table's dtype_kept): decoder.layers.3.mlp.router.expert_bias" in r.stdout, r.stdout
    kept = dcp_tensors(tmp_path / "hybrid")
    assert {k for k, t in kept.items() if t.dtype != torch.float16} == {"decoder.layers.3.mlp.router.expert_bias"}
    original = load_file(str(hybrid / "model.safetensors"))["backbone.layers.3.mixer.gate.e_score_correction_bias"]
    assert torch.equal(kept["decoder.layers.3.mlp.router.expert_bias"], original)

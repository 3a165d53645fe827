"""Write Hugging Face folders at the REAL dimensions of published models as sparse files.

    python3 tools/realscale/make_sparse.py OUT_DIR MODEL [--max-shard-size 5GB]
    python3 tools/realscale/make_sparse.py OUT_DIR --all [--max-shard-size 5GB]
    python3 tools/realscale/make_sparse.py --list

MODEL is a key of published_configs.MODELS. --all writes every model into OUT_DIR/<name>/.
OUT_DIR (or OUT_DIR/<name>) must not exist yet.

Each folder holds:
- config.json: the model's field set from published_configs (json.dump indent=2, key order as
  recorded) and a generation_config.json derived from it (bos/eos/pad ids; not a published file);
- model-0000i-of-0000n.safetensors: real headers (8-byte little-endian length, compact JSON with
  "__metadata__":{"format":"pt"} first (none for models whose published shards have none), then
  the tensors in the reference writer's order - dtype
  descending (F32 before BF16), then name bytewise - with data_offsets contiguous from 0, padded
  with spaces to a multiple of 8), and a data section that is a file hole (truncate), so a
  terabyte model takes a few kilobytes of disk; reading the data gives zeros;
- model.safetensors.index.json: {"metadata": {"total_size": N}, "weight_map": {...}} with
  indent=2, sort_keys=True.

Tensors are enumerated in model key order (embeddings, layers 0..N-1, final norm, lm_head, MTP) and
sharded greedily: a new shard starts when the next tensor would take the current one over
--max-shard-size (transformers' rule; "5GB" = 5*10**9 bytes, "5GiB" = 5*2**30). Within a layer the
order is the modules' order (a Nemotron MoE block: routed experts, router, shared expert, latent
projections, then the block norm - the order that reproduces shard 1 of the published Nano-30B).

Tensor names, shapes and dtypes follow the published checkpoints (see README.md):
- LlamaForCausalLM / DeciLMForCausalLM: model.embed_tokens, model.layers.N.{self_attn.{q,k,v,o}_proj,
  mlp.{gate,up,down}_proj, input_layernorm, post_attention_layernorm}.weight, model.norm, lm_head
  (absent when tie_word_embeddings); DeciLM no_op sub-blocks have no tensors, not even their norm.
- NemotronHForCausalLM: backbone.embeddings, backbone.layers.N.{norm.weight, mixer.*},
  backbone.norm_f, lm_head, mtp.layers.F.* (MTP inner layers flattened, F = depth*len(pattern)+i).
Stdlib only; prints, per model, the tensor count and total bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from published_configs import MODELS  # noqa: E402

DTYPE_SIZE = {"BF16": 2, "F16": 2, "F32": 4}
# The reference writer sorts by dtype descending (its enum order), then by name.
DTYPE_ORDER = {"F16": 7, "BF16": 8, "F32": 11}


# ---------------------------------------------------------------------------- tensor lists
def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def llama_tensors(cfg):
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or nh
    hd = cfg.get("head_dim") or H // nh
    F, V = cfg["intermediate_size"], cfg["vocab_size"]
    out = [("model.embed_tokens.weight", [V, H])]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", [nh * hd, H]),
                (p + "self_attn.k_proj.weight", [kv * hd, H]),
                (p + "self_attn.v_proj.weight", [kv * hd, H]),
                (p + "self_attn.o_proj.weight", [H, nh * hd]),
                (p + "mlp.gate_proj.weight", [F, H]),
                (p + "mlp.up_proj.weight", [F, H]),
                (p + "mlp.down_proj.weight", [H, F]),
                (p + "input_layernorm.weight", [H]),
                (p + "post_attention_layernorm.weight", [H])]
    out.append(("model.norm.weight", [H]))
    if not cfg.get("tie_word_embeddings", False):
        out.append(("lm_head.weight", [V, H]))
    return out


def decilm_ffn_size(mult, hidden):
    n = int(2 * mult * hidden / 3)
    return -(-n // 256) * 256


def decilm_tensors(cfg):
    H, nh, V = cfg["hidden_size"], cfg["num_attention_heads"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or H // nh
    out = [("model.embed_tokens.weight", [V, H])]
    for i, block in enumerate(cfg["block_configs"]):
        p = f"model.layers.{i}."
        a, f = block["attention"], block.get("ffn", block.get("mlp"))
        if a.get("replace_with_linear"):
            out += [(p + "self_attn.linear_attn.weight", [H, H]), (p + "input_layernorm.weight", [H])]
        elif not a.get("no_op"):
            kv = nh // a["n_heads_in_group"]
            out += [(p + "self_attn.q_proj.weight", [nh * hd, H]),
                    (p + "self_attn.k_proj.weight", [kv * hd, H]),
                    (p + "self_attn.v_proj.weight", [kv * hd, H]),
                    (p + "self_attn.o_proj.weight", [H, nh * hd]),
                    (p + "input_layernorm.weight", [H])]
        if f.get("replace_with_linear"):
            out += [(p + "mlp.linear_mlp.weight", [H, H]), (p + "post_attention_layernorm.weight", [H])]
        elif not f.get("no_op"):
            F = decilm_ffn_size(f["ffn_mult"], H)
            out += [(p + "mlp.gate_proj.weight", [F, H]),
                    (p + "mlp.up_proj.weight", [F, H]),
                    (p + "mlp.down_proj.weight", [H, F]),
                    (p + "post_attention_layernorm.weight", [H])]
    out.append(("model.norm.weight", [H]))
    if not cfg.get("tie_word_embeddings", False):
        out.append(("lm_head.weight", [V, H]))
    return out


_KIND = {"M": "M", "mamba": "M", "linear_attention": "M", "*": "*", "attention": "*",
         "full_attention": "*", "-": "-", "mlp": "-", "E": "E", "moe": "E"}


def hybrid_pattern(cfg):
    if cfg.get("hybrid_override_pattern"):
        return [_KIND[c] for c in cfg["hybrid_override_pattern"]]
    return [_KIND[c] for c in cfg["layers_block_type"]]


def mtp_pattern(cfg):
    if cfg.get("mtp_hybrid_override_pattern"):
        return [_KIND[c] for c in cfg["mtp_hybrid_override_pattern"]]
    return [_KIND[c] for c in cfg.get("mtp_layers_block_type") or []]


def nemotron_h_layer(cfg, p, kind):
    H = cfg["hidden_size"]
    if kind == "M":
        nH, hdm = cfg["mamba_num_heads"], cfg["mamba_head_dim"]
        d_inner, d_ssm = nH * hdm, cfg["n_groups"] * cfg["ssm_state_size"]
        conv_dim = d_inner + 2 * d_ssm
        t = [(p + "mixer.conv1d.weight", [conv_dim, 1, cfg["conv_kernel"]])]
        if cfg.get("use_conv_bias", True):
            t.append((p + "mixer.conv1d.bias", [conv_dim]))
        t += [(p + "mixer.in_proj.weight", [2 * d_inner + 2 * d_ssm + nH, H]),
              (p + "mixer.dt_bias", [nH]),
              (p + "mixer.A_log", [nH]),
              (p + "mixer.D", [nH]),
              (p + "mixer.norm.weight", [d_inner]),
              (p + "mixer.out_proj.weight", [H, d_inner])]
    elif kind == "*":
        nh = cfg["num_attention_heads"]
        kv = cfg.get("num_key_value_heads") or nh
        hd = cfg.get("head_dim") or cfg.get("attention_head_dim") or H // nh
        t = [(p + "mixer.q_proj.weight", [nh * hd, H]),
             (p + "mixer.k_proj.weight", [kv * hd, H]),
             (p + "mixer.v_proj.weight", [kv * hd, H]),
             (p + "mixer.o_proj.weight", [H, nh * hd])]
    elif kind == "-":
        F = cfg["intermediate_size"]
        t = [(p + "mixer.up_proj.weight", [F, H]), (p + "mixer.down_proj.weight", [H, F])]
    elif kind == "E":
        E, Fm = cfg["n_routed_experts"], cfg["moe_intermediate_size"]
        Fs, L = cfg["moe_shared_expert_intermediate_size"], cfg.get("moe_latent_size")
        X = L or H
        t = []
        for e in range(E):
            t += [(p + f"mixer.experts.{e}.up_proj.weight", [Fm, X]),
                  (p + f"mixer.experts.{e}.down_proj.weight", [X, Fm])]
        t += [(p + "mixer.gate.weight", [E, H]),
              (p + "mixer.gate.e_score_correction_bias", [E]),
              (p + "mixer.shared_experts.up_proj.weight", [Fs, H]),
              (p + "mixer.shared_experts.down_proj.weight", [H, Fs])]
        if L:
            t += [(p + "mixer.fc1_latent_proj.weight", [L, H]),
                  (p + "mixer.fc2_latent_proj.weight", [H, L])]
    else:
        raise ValueError(f"unknown block kind {kind!r}")
    return t + [(p + "norm.weight", [H])]


def nemotron_h_tensors(cfg):
    H, V = cfg["hidden_size"], cfg["vocab_size"]
    out = [("backbone.embeddings.weight", [V, H])]
    for i, kind in enumerate(hybrid_pattern(cfg)):
        out += nemotron_h_layer(cfg, f"backbone.layers.{i}.", kind)
    out.append(("backbone.norm_f.weight", [H]))
    if not cfg.get("tie_word_embeddings", False):
        out.append(("lm_head.weight", [V, H]))
    mtp = mtp_pattern(cfg)
    for d in range(cfg.get("num_nextn_predict_layers") or 0):
        for i, kind in enumerate(mtp):
            p = f"mtp.layers.{d * len(mtp) + i}."
            if i == 0:
                out += [(p + "enorm.weight", [H]), (p + "hnorm.weight", [H]),
                        (p + "eh_proj.weight", [H, 2 * H])]
            out += nemotron_h_layer(cfg, p, kind)
            if i == len(mtp) - 1:
                out.append((p + "final_layernorm.weight", [H]))
    return out


def tensors(model):
    """[(name, dtype, shape)] of a MODELS entry, in model key order."""
    cfg = model["config"]
    arch = cfg["architectures"][0]
    if arch == "LlamaForCausalLM":
        names = llama_tensors(cfg)
    elif arch == "DeciLMForCausalLM":
        names = decilm_tensors(cfg)
    elif arch == "NemotronHForCausalLM":
        names = nemotron_h_tensors(cfg)
    else:
        raise ValueError(f"no tensor list for {arch}")
    fp32 = tuple(model.get("fp32", []))
    out = [(n, "F32" if fp32 and n.endswith(fp32) else "BF16", s) for n, s in names]
    seen = set()
    for n, _, _ in out:
        if n in seen:
            raise AssertionError(f"duplicate tensor {n}")
        seen.add(n)
    return out


# ---------------------------------------------------------------------------- files
def parse_size(text):
    t = str(text).strip()
    units = [("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10), ("GB", 10**9), ("MB", 10**6),
             ("KB", 10**3), ("B", 1)]
    up = t.upper()
    for suffix, mult in units:
        if up.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(t)


def nbytes(dtype, shape):
    return DTYPE_SIZE[dtype] * _numel(shape)


def shard(entries, max_shard_size):
    shards, size = [[]], 0
    for e in entries:
        b = nbytes(e[1], e[2])
        if shards[-1] and size + b > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += b
    return shards


def header_bytes(entries, metadata=None):
    """(8-byte length + padded compact JSON header, data length) of one safetensors file;
    metadata is the __metadata__ map (None: no __metadata__ entry)."""
    ordered = sorted(entries, key=lambda e: (-DTYPE_ORDER[e[1]], e[0].encode()))
    parts = []
    if metadata is not None:
        parts.append('"__metadata__":{' + ",".join(
            json.dumps(k) + ":" + json.dumps(v) for k, v in sorted(metadata.items())) + "}")
    off = 0
    for name, dtype, shape in ordered:
        end = off + nbytes(dtype, shape)
        parts.append(json.dumps(name) + ':{"dtype":"' + dtype + '","shape":[' +
                     ",".join(str(s) for s in shape) + f'],"data_offsets":[{off},{end}]}}')
        off = end
    js = ("{" + ",".join(parts) + "}").encode()
    js += b" " * (-len(js) % 8)
    return struct.pack("<Q", len(js)) + js, off


def generation_config(cfg):
    g = {"_from_model_config": True}
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if k in cfg:
            g[k] = cfg[k]
    g["transformers_version"] = cfg.get("transformers_version", "4.48.3")
    return g


def write(out, name, max_shard_size=5 * 10**9):
    model = MODELS[name]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=False)
    entries = tensors(model)
    shards = shard(entries, max_shard_size)
    n = len(shards)
    weight_map, total, first = {}, 0, None
    metadata = model.get("st_metadata", {"format": "pt"})
    for i, part in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        head, data_len = header_bytes(part, metadata)
        if first is None:
            first = {"tensors": len(part), "f32": sum(1 for e in part if e[1] == "F32"),
                     "file_size": len(head) + data_len, "header_len": len(head) - 8}
        with open(out / fname, "wb") as f:
            f.write(head)
            f.truncate(len(head) + data_len)      # the data section is a hole
        for e in part:
            weight_map[e[0]] = fname
        total += data_len
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    with open(out / "model.safetensors.index.json", "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(out / "config.json", "w") as f:
        json.dump(model["config"], f, indent=2)
        f.write("\n")
    with open(out / "generation_config.json", "w") as f:
        json.dump(generation_config(model["config"]), f, indent=2)
        f.write("\n")
    f32 = sum(1 for e in entries if e[1] == "F32")
    params = sum(_numel(e[2]) for e in entries)
    return {"model": name, "repo": model["repo"], "tensors": len(entries), "bytes": total,
            "parameters": params, "f32_tensors": f32, "shards": n, "shard1": first}


def disk_usage(path):
    return sum(os.stat(p).st_blocks * 512 for p in Path(path).iterdir())


def describe(info, out, expect):
    gb = info["bytes"] / 1e9
    line = (f"{info['model']}: {info['tensors']:,} tensors, {info['bytes']:,} bytes ({gb:,.1f} GB), "
            f"{info['parameters']:,} parameters, {info['f32_tensors']} F32, {info['shards']} shards, "
            f"{disk_usage(out):,} bytes on disk")
    checks = []
    for key, got in (("tensors", info["tensors"]), ("bytes", info["bytes"]),
                     ("elements", info["parameters"]), ("f32", info["f32_tensors"]),
                     ("shards", info["shards"])):
        if key in expect:
            checks.append(f"{key} {'==' if expect[key] == got else '!='} expected {expect[key]:,}")
    for key, got in sorted(info["shard1"].items()):
        if key in expect.get("shard1", {}):
            want = expect["shard1"][key]
            checks.append(f"shard 1 {key} {'==' if want == got else '!='} expected {want:,}")
    return line + (f"  [{'; '.join(checks)}]" if checks else "")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?")
    ap.add_argument("model", nargs="?")
    ap.add_argument("--all", action="store_true", help="every model, into OUT/<name>/")
    ap.add_argument("--list", action="store_true", help="list the models and exit")
    ap.add_argument("--max-shard-size", default="5GB")
    a = ap.parse_args(argv)
    if a.list:
        for k, m in MODELS.items():
            print(f"{k:32} {m['status']:14} {m['repo']}")
        return 0
    if not a.out or (a.all == bool(a.model)):
        ap.error("give OUT_DIR and either MODEL or --all")
    if a.model and a.model not in MODELS:
        ap.error(f"unknown model {a.model!r}; --list shows them")
    limit = parse_size(a.max_shard_size)
    names = list(MODELS) if a.all else [a.model]
    t = time.perf_counter()
    for name in names:
        out = Path(a.out) / name if a.all else Path(a.out)
        info = write(out, name, limit)
        print(describe(info, out, MODELS[name].get("expect", {})), flush=True)
    print(f"done in {time.perf_counter() - t:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

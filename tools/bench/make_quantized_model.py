"""Write a quantized Llama-3.2-1B-shaped HF folder (16 layers, as make_llama_model.py) for `make bench`:
block FP8 ([128, 128], DeepSeek-V3 / Qwen3 style) or ModelOpt NVFP4, from weight-like random bf16
values (normal, std 0.02) quantized as tools/fixtures/make_quantized_fixtures.py quantizes (here
vectorized). Embeddings and norms stay bf16; every linear is quantized. Sharded at 1 GB with the index.

Usage: make_quantized_model.py fp8|nvfp4 OUT_DIR
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
EDGES = (E2M1[1:] + E2M1[:-1]) / 2


def fp8_block(w, b=128):
    r, c = w.shape
    blocks = w.float().reshape(r // b, b, c // b, b)
    amax = blocks.abs().amax(dim=(1, 3), keepdim=True)
    scale = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
    q = (blocks / scale).clamp(-448, 448).to(torch.float8_e4m3fn).reshape(r, c)
    return {"weight": q, "weight_scale_inv": scale.reshape(r // b, c // b).contiguous()}


def nvfp4(w):
    r, c = w.shape
    w = w.float()
    second = (w.abs().max() / (6 * 448.0)).reshape(())
    groups = w.reshape(r, c // 16, 16)
    scale = (groups.abs().amax(-1) / 6 / second).clamp(min=2.0 ** -9, max=448).to(torch.float8_e4m3fn)
    x = (groups / (scale.float() * second).unsqueeze(-1)).abs().clamp(max=6)
    code = torch.bucketize(x, EDGES).to(torch.uint8) | (torch.signbit(groups).to(torch.uint8) << 3)
    code = code.reshape(r, c)
    return {"weight": (code[:, 0::2] | (code[:, 1::2] << 4)).contiguous(), "weight_scale": scale, "weight_scale_2": second}


def main() -> None:
    scheme, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    hidden, inter, vocab, heads, kv, hd, layers = 2048, 8192, 128256, 32, 8, 64, 16

    def rand(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float32).mul_(0.02).to(torch.bfloat16)

    names = [("model.embed_tokens.weight", (vocab, hidden), False)]
    for i in range(layers):
        p = f"model.layers.{i}."
        names += [(p + "self_attn.q_proj.weight", (heads * hd, hidden), True), (p + "self_attn.k_proj.weight", (kv * hd, hidden), True),
                  (p + "self_attn.v_proj.weight", (kv * hd, hidden), True), (p + "self_attn.o_proj.weight", (hidden, heads * hd), True),
                  (p + "mlp.gate_proj.weight", (inter, hidden), True), (p + "mlp.up_proj.weight", (inter, hidden), True),
                  (p + "mlp.down_proj.weight", (hidden, inter), True), (p + "input_layernorm.weight", (hidden,), False),
                  (p + "post_attention_layernorm.weight", (hidden,), False)]
    names.append(("model.norm.weight", (hidden,), False))
    tensors = []
    for name, shape, quantized in names:
        w = rand(*shape)
        if not quantized:
            tensors.append((name, w))
            continue
        base = name[:-len(".weight")]
        for suffix, t in (fp8_block(w) if scheme == "fp8" else nvfp4(w)).items():
            tensors.append((f"{base}.{suffix}", t))
    limit, shards, current, size = 10**9, [], [], 0
    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = [], 0
        current.append((name, t))
        size += nbytes
    shards.append(current)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: t for n, t in shard}, os.path.join(out, fname), metadata={"format": "pt"})
        for n, t in shard:
            weight_map[n] = fname
            total += t.numel() * t.element_size()
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    if scheme == "fp8":
        quant = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}
    else:
        modelopt = {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16, "exclude_modules": ["lm_head"]}
        quant = {"quant_method": "modelopt", **modelopt}
        with open(os.path.join(out, "hf_quant_config.json"), "w") as f:
            json.dump({"producer": {"name": "modelopt", "version": "0.37.0"}, "quantization": modelopt}, f, indent=2)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden, "intermediate_size": inter,
              "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd,
              "vocab_size": vocab, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
              "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                               "original_max_position_embeddings": 8192, "rope_type": "llama3"},
              "tie_word_embeddings": True, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
              "torch_dtype": "bfloat16", "bos_token_id": 128000, "eos_token_id": 128001, "quantization_config": quant}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


if __name__ == "__main__":
    main()

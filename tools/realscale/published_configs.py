"""The published `config.json` field sets of the models nembridge targets, as data.

MODELS = {short_name: {
    "repo":     Hugging Face repository id,
    "source":   where the config values were read (repository/path@commit, or page),
    "status":   "verbatim"      - a complete copy of the published config.json was found and is
                                  transcribed field for field (values, nulls, key order);
                "fixture"       - a complete-looking copy kept as a test fixture by NVIDIA's own
                                  converter (Megatron-Bridge); it may lack late-added fields;
                "reconstructed" - no copy of the file was found; the field set is a sibling
                                  model's published set and the values come from the sources
                                  named; every field not in "verified" is an ASSUMPTION,
    "verified": the fields whose values a source gives (all of them for verbatim/fixture),
    "config":   the dict written as config.json (json.dump indent=2, insertion order kept),
    "fp32":     tensor-name suffixes stored as F32 in the published safetensors (all else BF16),
    "st_metadata": the shards' __metadata__ (absent: {"format": "pt"}, as transformers writes it;
                None: the published shards have no __metadata__ entry),
    "expect":   totals of the checkpoint where a source states them ("expect_source" names it),
    "notes":    dialect notes, disagreements, what is unknown,
}}

Only facts (field names and values) are transcribed here; see README.md for the dialect table and
the sources. Nothing here was fetched from the Hub: this machine has no network.
"""
from __future__ import annotations

import copy

# --------------------------------------------------------------------------------------------
# Sources (commits are the stored snapshots that were read).
# --------------------------------------------------------------------------------------------
MB = "NVIDIA-NeMo/Megatron-Bridge"
SRC_MB_DECILM = (f"{MB} src/megatron/bridge/models/llama_nemotron/llama_nemotron_config.py"
                 "@2cec89e0a0060fda970283dd4f0211e34abc1daf (2025-09-18), comment 'Config copy from "
                 "https://huggingface.co/<repo>/blob/main/config.json'; identical copy in NVIDIA/NeMo "
                 "nemo/collections/llm/gpt/model/llama_nemotron_config.py@8cfedd7203462cb251a914e700e5605444277561")
SRC_MB_NH8B = (f"{MB} tests/unit_tests/models/nemotronh/test_nemotron_h_bridge.py"
               "@8c03a22a6 (2025-09-23), fixture nemotronh_8b_config_dict")
SRC_MB_NH_PROVIDERS = (f"{MB} src/megatron/bridge/models/nemotronh/nemotron_h_provider.py"
                       "@53d40d1bc (2026-03-25), NemotronHModelProvider{4B,8B,47B,56B}, "
                       "NemotronNanoModelProvider{9Bv2,12Bv2} (num_query_groups 8, mamba_num_groups 8, "
                       "mamba_head_dim 64 are the base-class defaults)")
SRC_JAX_NANO30B = ("jax-ml/jax-llm-examples nemotron3/tests/test_model.py"
                   "@8b4b24602e0652100e9835ec6d91fed58bbea472 (file commit d8baecd, 2026-04-04), "
                   "NEMOTRON3_30B_JSON: the config.json of nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16 "
                   "(transformers_version 4.55.4 revision)")
SRC_SUPER_CARD = (f"{MB} examples/model_verification_cards/nemotron-3-super-120b-a12b/card.yaml"
                  "@067f987df03b8355b03192d88d70f1709fedf51a: hf_revision "
                  "d51eab0d1f979ebc26b546e634a04f450d99158e, 42,683 tensors, 123,611,033,088 elements, "
                  "247,222,108,160 bytes, 41 FP32 router correction-bias tensors")


# --------------------------------------------------------------------------------------------
# Llama 3.1 (LlamaForCausalLM)
# --------------------------------------------------------------------------------------------
def _llama31(hidden, inter, layers, heads, kv, *, head_dim=None, eos=128001, tv="4.43.0.dev0",
             tied=False, factor=8.0):
    """The Llama-3.1 release field set (that of meta-llama/Llama-3.1-405B, in its key order)."""
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 128000,
        "eos_token_id": eos,
    }
    if head_dim is not None:
        cfg["head_dim"] = head_dim
    cfg.update({
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": inter,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
        "transformers_version": tv,
        "use_cache": True,
        "vocab_size": 128256,
    })
    return cfg


# --------------------------------------------------------------------------------------------
# Llama-Nemotron DeciLM (DeciLMForCausalLM, model_type nemotron-nas)
# --------------------------------------------------------------------------------------------
# block_configs as run lengths: (count, attention, ffn_mult); attention "A" is a normal attention
# with the model's n_heads_in_group, "-" is attention no_op (n_heads_in_group null); ffn_mult
# None is FFN no_op (ffn_mult null). In both published files every block also carries
# num_sink_tokens null, replace_with_linear false, sparsify null, unshifted_sink false,
# use_prefill_window_in_sink_attention false, window_length null (attention) and
# replace_with_linear false, sparsify null (ffn): no replace_with_linear block anywhere.
SUPER49B_RUNS = [
    (1, "A", 2.625), (5, "A", 5.25), (2, "-", 2.625), (3, "A", 5.25), (1, "-", 3.28125),
    (30, "A", 5.25), (1, "-", 1.3125), (2, "-", 2.625), (1, "-", 1.3125), (1, "-", 5.25),
    (1, "-", 1.3125), (1, "-", 2.625), (3, "-", 1.3125), (1, "A", 5.25), (1, "-", 1.3125),
    (2, "-", 1.0), (1, "-", 1.3125), (3, "-", 1.0), (2, "-", 1.3125), (2, "-", 0.5),
    (2, "-", 1.0), (2, "-", 0.5), (1, "-", 1.0), (2, "-", 0.5), (9, "A", 5.25),
]
ULTRA253B_RUNS = [
    (1, "A", 0.4875), (1, "A", 0.975), (6, "A", 1.4625), (1, "A", 1.95), (4, "-", None),
    (3, "A", 1.95), (2, "A", 4.875), (6, "-", None), (3, "A", 4.875), (5, "-", None),
    (3, "A", 4.875), (1, "A", 2.4375), (3, "-", None), (3, "A", 1.95), (1, "-", 1.95),
    (1, "A", 4.875), (1, "-", 4.875), (5, "-", None), (4, "A", 4.875), (5, "-", None),
    (4, "A", 4.875), (5, "-", None), (4, "A", 4.875), (5, "-", None), (4, "A", 4.875),
    (5, "-", None), (1, "A", 4.875), (3, "A", 3.4125), (2, "-", None), (1, "A", 2.925),
    (3, "A", 2.4375), (2, "-", 2.4375), (1, "A", 2.4375), (1, "-", None), (7, "-", 2.4375),
    (1, "A", 2.4375), (5, "-", None), (1, "A", 2.925), (1, "A", 4.875), (1, "-", 4.875),
    (1, "A", 4.875), (8, "-", None), (1, "-", 36.5625), (8, "-", None), (1, "-", 39.0),
    (8, "-", None), (1, "-", 31.40625), (5, "-", None), (1, "-", 27.5625), (1, "-", 1.95),
    (1, "A", 1.95), (1, "A", 2.4375), (1, "-", None), (2, "A", 2.4375), (1, "A", 3.4125),
    (4, "A", 4.875), (1, "A", 2.4375),
]


def _block_configs(runs, n_heads_in_group):
    out = []
    for count, attn, mult in runs:
        for _ in range(count):
            out.append({
                "attention": {
                    "n_heads_in_group": n_heads_in_group if attn == "A" else None,
                    "no_op": attn != "A",
                    "num_sink_tokens": None,
                    "replace_with_linear": False,
                    "sparsify": None,
                    "unshifted_sink": False,
                    "use_prefill_window_in_sink_attention": False,
                    "window_length": None,
                },
                "ffn": {
                    "ffn_mult": mult,
                    "no_op": mult is None,
                    "replace_with_linear": False,
                    "sparsify": None,
                },
            })
    return out


def _decilm(name_or_path, runs, n_heads_in_group, hidden, heads, layers, factor, tv):
    blocks = _block_configs(runs, n_heads_in_group)
    assert len(blocks) == layers, (name_or_path, len(blocks))
    return {
        "_name_or_path": name_or_path,
        "architectures": ["DeciLMForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_decilm.DeciLMConfig",
                     "AutoModelForCausalLM": "modeling_decilm.DeciLMForCausalLM"},
        "block_configs": blocks,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": None,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "nemotron-nas",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": None,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": factor, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": tv,
        "use_cache": True,
        "vocab_size": 128256,
    }


# --------------------------------------------------------------------------------------------
# Nemotron-H v1 / Nano v2 (NemotronHForCausalLM, dense hybrid: M * -)
# --------------------------------------------------------------------------------------------
PATTERN_NH_4B_8B = "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-"
PATTERN_NH_47B = ("M-M-M-M-M-M-M-M-M*-M-M-M-M-M-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-M-M---MM---"
                  "M-M*-M-M-M-M-M-")
PATTERN_NH_56B = ("M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-"
                  "M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-")
PATTERN_NANO_9B_V2 = "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-"
PATTERN_NANO_12B_V2 = "M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M-"


def _nemotron_h_v1(*, hidden, pattern, inter, heads, kv, head_dim, mamba_heads, mamba_head_dim,
                   state, max_pos=8192, head_dim_key="attention_head_dim"):
    """The field set of nvidia/Nemotron-H-8B-Base-8K's config.json (as MB's fixture has it)."""
    cfg = {
        "architectures": ["NemotronHForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        head_dim_key: head_dim,
        "auto_map": {"AutoConfig": "configuration_nemotron_h.NemotronHConfig",
                     "AutoModelForCausalLM": "modeling_nemotron_h.NemotronHForCausalLM"},
        "bos_token_id": 1,
        "chunk_size": 128,
        "conv_kernel": 4,
        "eos_token_id": 2,
        "expand": 2,
        "hidden_dropout": 0.0,
        "hidden_size": hidden,
        "hybrid_override_pattern": pattern,
        "initializer_range": 0.02,
        "intermediate_size": inter,
        "layer_norm_epsilon": 1e-05,
        "mamba_head_dim": mamba_head_dim,
        "mamba_hidden_act": "silu",
        "mamba_num_heads": mamba_heads,
        "mamba_proj_bias": False,
        "max_position_embeddings": max_pos,
        "mlp_bias": False,
        "mlp_hidden_act": "relu2",
        "model_type": "nemotron_h",
        "n_groups": 8,
        "num_attention_heads": heads,
        "num_hidden_layers": len(pattern),
        "num_key_value_heads": kv,
        "num_logits_to_keep": 1,
        "pad_token_id": 0,
        "rescale_prenorm_residual": True,
        "residual_in_fp32": False,
        "rms_norm_eps": 1e-05,
        "ssm_state_size": state,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.48.0.dev0",
        "use_bias": False,
        "use_cache": True,
        "use_conv_bias": True,
        "use_mamba_kernels": True,
        "vocab_size": 131072,
    }
    if head_dim_key != "attention_head_dim":
        # keep the key where the 8B file has attention_head_dim (alphabetical order)
        cfg = dict(sorted(cfg.items(), key=lambda kv_: kv_[0]))
    return cfg


# --------------------------------------------------------------------------------------------
# Nemotron 3 (NemotronHForCausalLM with MoE: M * E, LatentMoE, MTP)
# --------------------------------------------------------------------------------------------
PATTERN_NANO30B = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"
PATTERN_SUPER120B = ("MEMEMEM*EMEMEMEM*EMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEM*"
                     "EMEMEMEME")
PATTERN_ULTRA550B = ("MEMEMEM*EMEMEM*EMEMEMEM*EMEMEMEM*EMEMEM*EMEMEMEM*EMEMEMEM*EMEMEM*EMEMEMEM*"
                     "EMEMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME")
_BLOCK_NAME = {"M": "mamba", "*": "attention", "E": "moe", "-": "mlp"}

# The published config.json of nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16, field for field, in
# the file's (alphabetical) order.
NANO30B_CONFIG = {
    "architectures": ["NemotronHForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_nemotron_h.NemotronHConfig",
                 "AutoModel": "modeling_nemotron_h.NemotronHForCausalLM",
                 "AutoModelForCausalLM": "modeling_nemotron_h.NemotronHForCausalLM"},
    "bos_token_id": 1,
    "chunk_size": 128,
    "conv_kernel": 4,
    "eos_token_id": 2,
    "expand": 2,
    "head_dim": 128,
    "hidden_dropout": 0.0,
    "hidden_size": 2688,
    "hybrid_override_pattern": PATTERN_NANO30B,
    "initializer_range": 0.02,
    "intermediate_size": 1856,
    "layer_norm_epsilon": 1e-05,
    "mamba_head_dim": 64,
    "mamba_hidden_act": "silu",
    "mamba_num_heads": 64,
    "mamba_proj_bias": False,
    "mamba_ssm_cache_dtype": "float32",
    "max_position_embeddings": 262144,
    "mlp_bias": False,
    "mlp_hidden_act": "relu2",
    "model_type": "nemotron_h",
    "moe_intermediate_size": 1856,
    "moe_shared_expert_intermediate_size": 3712,
    "n_group": 1,
    "n_groups": 8,
    "n_routed_experts": 128,
    "n_shared_experts": 1,
    "norm_eps": 1e-05,
    "norm_topk_prob": True,
    "num_attention_heads": 32,
    "num_experts_per_tok": 6,
    "num_hidden_layers": 52,
    "num_key_value_heads": 2,
    "num_logits_to_keep": 1,
    "pad_token_id": 0,
    "partial_rotary_factor": 1.0,
    "rescale_prenorm_residual": True,
    "residual_in_fp32": False,
    "rope_theta": 10000,
    "routed_scaling_factor": 2.5,
    "sliding_window": None,
    "ssm_state_size": 128,
    "tie_word_embeddings": False,
    "time_step_floor": 0.0001,
    "time_step_max": 0.1,
    "time_step_min": 0.001,
    "topk_group": 1,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.55.4",
    "use_bias": False,
    "use_cache": True,
    "use_conv_bias": True,
    "use_mamba_kernels": True,
    "vocab_size": 131072,
}


def _nemotron3_large(values, *, list_spelling):
    """Nano-30B's published field set with the larger model's values and MTP/LatentMoE fields,
    in alphabetical order; the pattern as a string or (list_spelling) as layers_block_type."""
    cfg = dict(NANO30B_CONFIG)
    cfg.update(values)
    pattern = cfg.pop("hybrid_override_pattern")
    mtp = cfg.pop("mtp_hybrid_override_pattern")
    if list_spelling:
        cfg["layers_block_type"] = [_BLOCK_NAME[c] for c in pattern]
        cfg["mtp_layers_block_type"] = [_BLOCK_NAME[c] for c in mtp]
        cfg.pop("num_hidden_layers", None)   # derived from the list in transformers 5's NemotronH
        # a file written by transformers 5 says dtype, not torch_dtype
        cfg["dtype"] = cfg.pop("torch_dtype")
        cfg["transformers_version"] = "5.8.1"
    else:
        cfg["hybrid_override_pattern"] = pattern
        cfg["mtp_hybrid_override_pattern"] = mtp
    return dict(sorted(cfg.items(), key=lambda kv_: kv_[0]))


SUPER120B_VALUES = {
    "hidden_size": 4096, "hybrid_override_pattern": PATTERN_SUPER120B, "num_hidden_layers": 88,
    "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128,
    "intermediate_size": 2688, "moe_intermediate_size": 2688,
    "moe_shared_expert_intermediate_size": 5376, "n_routed_experts": 512, "n_shared_experts": 1,
    "num_experts_per_tok": 22, "routed_scaling_factor": 5.0, "n_group": 1, "topk_group": 1,
    "moe_latent_size": 1024, "moe_shared_expert_overlap": False,
    "mamba_num_heads": 128, "mamba_head_dim": 64, "ssm_state_size": 128, "n_groups": 8,
    "conv_kernel": 4, "chunk_size": 128, "max_position_embeddings": 262144, "norm_eps": 1e-05,
    "vocab_size": 131072, "eos_token_id": [2, 11],
    "num_nextn_predict_layers": 1, "mtp_hybrid_override_pattern": "*E",
}
SUPER120B_VERIFIED = sorted(set(SUPER120B_VALUES) - {"moe_shared_expert_overlap"} | {
    "architectures", "model_type", "torch_dtype", "tie_word_embeddings"})

ULTRA550B_VALUES = {
    "hidden_size": 8192, "hybrid_override_pattern": PATTERN_ULTRA550B, "num_hidden_layers": 108,
    "num_attention_heads": 64, "num_key_value_heads": 2, "head_dim": 128,
    "intermediate_size": 5120, "moe_intermediate_size": 5120,
    "moe_shared_expert_intermediate_size": 10240, "n_routed_experts": 512, "n_shared_experts": 1,
    "num_experts_per_tok": 22, "routed_scaling_factor": 5.0, "n_group": 1, "topk_group": 1,
    "moe_latent_size": 2048, "mamba_num_heads": 256, "mamba_head_dim": 64,
    "ssm_state_size": 128, "n_groups": 8, "vocab_size": 131072,
    "num_nextn_predict_layers": 1, "mtp_hybrid_override_pattern": "*E",
}
ULTRA550B_VERIFIED = sorted({
    "model_type", "hidden_size", "layers_block_type", "mtp_layers_block_type",
    "num_nextn_predict_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "intermediate_size", "moe_intermediate_size", "moe_shared_expert_intermediate_size",
    "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "routed_scaling_factor",
    "n_group", "topk_group", "moe_latent_size", "mamba_num_heads", "mamba_head_dim", "n_groups",
    "vocab_size"})


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------
_LLAMA_405B = _llama31(16384, 53248, 126, 128, 8)
_NANO_8B = _llama31(4096, 14336, 32, 32, 8, head_dim=128)
del _NANO_8B["transformers_version"]   # the fixture has none
_NANO_4B = _llama31(3072, 9216, 32, 32, 8, head_dim=128, eos=[128001, 128008, 128009])
_NEMOTRON_70B = _llama31(8192, 28672, 80, 64, 8, eos=[128001, 128008, 128009])

MODELS: dict[str, dict] = {
    # ---------------------------------------------------------------- LlamaForCausalLM
    "llama31-405b": {
        "repo": "meta-llama/Llama-3.1-405B",
        "source": ("SiyuanMa0316/LLMServingSim configs/model/meta-llama/Llama-3.1-405B.json"
                   "@39b6c37a63398d61c65bf2f5a2ee05f8e0300284 (a copy of the published config.json; "
                   "rope_scaling written on one line there, same keys and values)"),
        "status": "verbatim",
        "verified": sorted(_LLAMA_405B),
        "config": _LLAMA_405B,
        "fp32": [],
        "expect": {"tensors": 1137},
        "expect_source": "the nembridge brief (1,137 tensors / ~812 GB); also 126 x 9 + 3",
        "notes": ("No head_dim field (kv_channels = 16384/128 = 128); torch_dtype (not dtype); "
                  "rope_scaling (not rope_parameters) with rope_type llama3; untied, so lm_head.weight "
                  "is a tensor. Tensor prefix model.; no rotary_emb.inv_freq buffers."),
    },
    "llama31-nemotron-70b-instruct": {
        "repo": "nvidia/Llama-3.1-Nemotron-70B-Instruct-HF",
        "source": ("NOT FOUND. Dimensions from NVIDIA/NeMo nemo/collections/llm/gpt/model/llama_nemotron.py"
                   "@8cfedd72 (Llama31Nemotron70BConfig = Llama31Config70B + kv_channels 128) and MB "
                   "llama_nemotron_provider.py@2cec89e0a (Llama31Nemotron70BProvider); field set that of "
                   "Llama-3.1-405B"),
        "status": "reconstructed",
        "verified": ["architectures", "hidden_size", "intermediate_size", "num_attention_heads",
                     "num_hidden_layers", "num_key_value_heads", "vocab_size", "rope_scaling", "rope_theta",
                     "max_position_embeddings", "tie_word_embeddings", "torch_dtype"],
        "config": _NEMOTRON_70B,
        "fp32": [],
        "expect": {},
        "notes": ("eos_token_id, transformers_version and the presence/absence of head_dim are "
                  "assumptions. Tensor names are the standard Llama ones (model. prefix, lm_head)."),
    },
    "llama31-nemotron-nano-8b-v1": {
        "repo": "nvidia/Llama-3.1-Nemotron-Nano-8B-v1",
        "source": (f"{MB} tests/unit_tests/models/llama_nemotron/test_llama_nemotron_bridge.py"
                   "@2cec89e0a (fixture llama_nemotron_nano_config_dict, 'a sample Llama-Nemotron Nano "
                   "configuration'); NeMo Llama31NemotronNano8BConfig = Llama31Config8B + kv_channels 128"),
        "status": "fixture",
        "verified": sorted(_NANO_8B),
        "config": _NANO_8B,
        "fp32": [],
        "expect": {},
        "notes": ("The fixture carries head_dim 128 and no transformers_version; it is a sample, "
                  "not declared a copy. eos_token_id 128001 there."),
    },
    "llama31-nemotron-nano-4b-v1.1": {
        "repo": "nvidia/Llama-3.1-Nemotron-Nano-4B-v1.1",
        "source": ("NOT FOUND. Width-pruned Llama-3.1-Minitron-4B-Width shape as third-party material "
                   "states it (hidden 3072, ffn 9216, 32 heads, 32 layers, 8 KV heads); head_dim 128 "
                   "(3072/32 = 96 would be wrong)"),
        "status": "reconstructed",
        "verified": ["hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                     "num_key_value_heads"],
        "config": _NANO_4B,
        "fp32": [],
        "expect": {},
        "notes": ("head_dim MUST be present (3072/32 = 96 but q_proj has 32*128 rows) - assumed 128. "
                  "tie_word_embeddings false, rope factor 8, eos list and transformers_version are "
                  "assumptions; nothing here was read from the real file."),
    },
    # ---------------------------------------------------------------- DeciLMForCausalLM
    "super49b-v1": {
        "repo": "nvidia/Llama-3_3-Nemotron-Super-49B-v1",
        "source": SRC_MB_DECILM,
        "status": "verbatim",
        "verified": ["*"],
        "config": _decilm("llama_nemotron_super", SUPER49B_RUNS, 8, 8192, 64, 80, 8.0, "4.48.3"),
        "fp32": [],
        "expect": {},
        "notes": ("block_configs per layer: 49 normal attentions (n_heads_in_group 8 -> 8 KV heads), "
                  "31 attention no_op, no FFN no_op, no replace_with_linear. intermediate_size and "
                  "num_key_value_heads are null. No head_dim (8192/64 = 128). "
                  "The file has _name_or_path 'llama_nemotron_super' (tools/decilm/make_sparse_super49b.py "
                  "omits it)."),
    },
    "ultra253b-v1": {
        "repo": "nvidia/Llama-3_1-Nemotron-Ultra-253B-v1",
        "source": SRC_MB_DECILM,
        "status": "verbatim",
        "verified": ["*"],
        "config": _decilm("llama_nemotron_ultra", ULTRA253B_RUNS, 16, 16384, 128, 162, 16.0, "4.45.1"),
        "fp32": [],
        "expect": {},
        "notes": ("162 blocks: 64 normal attentions (n_heads_in_group 16 -> 8 KV heads), 98 attention "
                  "no_op; 81 blocks are no_op in BOTH attention and FFN (ffn_mult null): layers with no "
                  "tensor at all. Four huge FFNs (ffn_mult 36.5625/39/31.40625/27.5625 -> 399360/425984/"
                  "343040/301056). rope factor 16, transformers 4.45.1."),
    },
    # ---------------------------------------------------------------- NemotronH dense
    "nemotron-h-4b": {
        "repo": "nvidia/Nemotron-H-4B-Base-8K",
        "source": f"NOT FOUND as a file. Values: {SRC_MB_NH_PROVIDERS}; field set: {SRC_MB_NH8B}",
        "status": "reconstructed",
        "verified": ["hidden_size", "hybrid_override_pattern", "intermediate_size", "mamba_num_heads",
                     "mamba_head_dim", "ssm_state_size", "num_attention_heads", "attention_head_dim",
                     "num_key_value_heads", "n_groups", "max_position_embeddings", "vocab_size"],
        "config": _nemotron_h_v1(hidden=3072, pattern=PATTERN_NH_4B_8B, inter=12288, heads=32, kv=8,
                                 head_dim=128, mamba_heads=112, mamba_head_dim=64, state=128),
        "fp32": [],
        "expect": {},
        "notes": "attention_head_dim 128 != 3072/32 = 96: the field is required. Assumed all-BF16.",
    },
    "nemotron-h-8b": {
        "repo": "nvidia/Nemotron-H-8B-Base-8K",
        "source": SRC_MB_NH8B,
        "status": "fixture",
        "verified": ["*"],
        "config": _nemotron_h_v1(hidden=4096, pattern=PATTERN_NH_4B_8B, inter=21504, heads=32, kv=8,
                                 head_dim=128, mamba_heads=128, mamba_head_dim=64, state=128),
        "fp32": [],
        "expect": {},
        "notes": ("The fixture also has hidden_act 'relu2' marked '# Required for base class "
                  "activation mapping' (added by MB, left out here). "
                  "attention_head_dim (not head_dim); both layer_norm_epsilon and rms_norm_eps; "
                  "torch_dtype; hybrid_override_pattern string; no MoE and no MTP fields at all. "
                  "Dtypes of A_log/D unknown (assumed BF16)."),
    },
    "nemotron-h-47b": {
        "repo": "nvidia/Nemotron-H-47B-Base-8K",
        "source": f"NOT FOUND as a file. Values: {SRC_MB_NH_PROVIDERS}; field set: {SRC_MB_NH8B}",
        "status": "reconstructed",
        "verified": ["hidden_size", "hybrid_override_pattern", "intermediate_size", "mamba_num_heads",
                     "ssm_state_size", "num_attention_heads", "num_key_value_heads", "n_groups",
                     "vocab_size"],
        "config": _nemotron_h_v1(hidden=8192, pattern=PATTERN_NH_47B, inter=30720, heads=64, kv=8,
                                 head_dim=128, mamba_heads=256, mamba_head_dim=64, state=256),
        "fp32": [],
        "expect": {},
        "notes": "98 layers (MiniPuzzle-pruned 56B); attention_head_dim 128 = 8192/64.",
    },
    "nemotron-h-56b": {
        "repo": "nvidia/Nemotron-H-56B-Base-8K",
        "source": f"NOT FOUND as a file. Values: {SRC_MB_NH_PROVIDERS}; field set: {SRC_MB_NH8B}",
        "status": "reconstructed",
        "verified": ["hidden_size", "hybrid_override_pattern", "intermediate_size", "mamba_num_heads",
                     "ssm_state_size", "num_attention_heads", "num_key_value_heads", "n_groups",
                     "vocab_size"],
        "config": _nemotron_h_v1(hidden=8192, pattern=PATTERN_NH_56B, inter=32768, heads=64, kv=8,
                                 head_dim=128, mamba_heads=256, mamba_head_dim=64, state=256),
        "fp32": [],
        "expect": {},
        "notes": "118 layers.",
    },
    "nemotron-nano-9b-v2": {
        "repo": "nvidia/NVIDIA-Nemotron-Nano-9B-v2",
        "source": ("NOT FOUND as a file. Values: MB NemotronNanoModelProvider9Bv2 and several "
                   "third-party partial copies of the config (head_dim 128, max_position_embeddings "
                   f"131072, num_key_value_heads 8, mamba_head_dim 80); field set: {SRC_MB_NH8B}"),
        "status": "reconstructed",
        "verified": ["hidden_size", "hybrid_override_pattern", "intermediate_size", "mamba_num_heads",
                     "mamba_head_dim", "ssm_state_size", "num_attention_heads", "head_dim",
                     "num_key_value_heads", "n_groups", "conv_kernel", "max_position_embeddings",
                     "vocab_size", "num_hidden_layers"],
        "config": _nemotron_h_v1(hidden=4480, pattern=PATTERN_NANO_9B_V2, inter=15680, heads=40, kv=8,
                                 head_dim=128, mamba_heads=128, mamba_head_dim=80, state=128,
                                 max_pos=131072, head_dim_key="head_dim"),
        "fp32": [],
        "expect": {},
        "notes": ("Third-party copies spell head_dim (not attention_head_dim); whether the real file "
                  "has both is unknown. 4480/40 = 112 != 128, so the head-dim field is required."),
    },
    "nemotron-nano-12b-v2": {
        "repo": "nvidia/NVIDIA-Nemotron-Nano-12B-v2",
        "source": f"NOT FOUND as a file. Values: {SRC_MB_NH_PROVIDERS}; field set: {SRC_MB_NH8B}",
        "status": "reconstructed",
        "verified": ["hidden_size", "hybrid_override_pattern", "intermediate_size", "mamba_num_heads",
                     "mamba_head_dim", "ssm_state_size", "num_attention_heads", "num_key_value_heads",
                     "max_position_embeddings", "vocab_size"],
        "config": _nemotron_h_v1(hidden=5120, pattern=PATTERN_NANO_12B_V2, inter=20480, heads=40, kv=8,
                                 head_dim=128, mamba_heads=128, mamba_head_dim=80, state=128,
                                 max_pos=131072, head_dim_key="head_dim"),
        "fp32": [],
        "expect": {},
        "notes": "Spelling of the head-dim field assumed as for 9B-v2 (head_dim).",
    },
    # ---------------------------------------------------------------- Nemotron 3 MoE
    "nemotron3-nano-30b-a3b": {
        "repo": "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16",
        "source": SRC_JAX_NANO30B,
        "status": "verbatim",
        "verified": ["*"],
        "config": copy.deepcopy(NANO30B_CONFIG),
        "fp32": ["mixer.A_log", "mixer.D", "mixer.gate.e_score_correction_bias"],
        # Shard 1's published header is 55,432 bytes: exactly what the reference writer's order
        # (F32 first, then names) gives for these 434 tensors WITHOUT a __metadata__ entry.
        "st_metadata": None,
        "expect_source": ("tensors: the nembridge brief; shards and shard 1: the public walkthrough "
                          "of model-00001-of-00013.safetensors quoted in notes"),
        "expect": {"tensors": 6243, "shards": 13,
                   "shard1": {"tensors": 434, "f32": 5, "file_size": 4991205008, "header_len": 55432}},
        "notes": ("hybrid_override_pattern string; head_dim (not attention_head_dim); norm_eps AND "
                  "layer_norm_epsilon, no rms_norm_eps; torch_dtype; rope_theta but no RoPE is used; "
                  "MoE: n_routed_experts / moe_intermediate_size / moe_shared_expert_intermediate_size / "
                  "num_experts_per_tok / n_group / topk_group / routed_scaling_factor; no "
                  "moe_latent_size and no MTP fields. Per-expert keys backbone.layers.N.mixer.experts.E."
                  "{up,down}_proj.weight. Dtypes from a public walkthrough of shard 1 of 13 "
                  "(model-00001-of-00013.safetensors: 4,991,205,008 bytes, header 55,432, 434 tensors = "
                  "429 BF16 + 5 F32; layer-0 Mamba 77,490,048 bytes, layer-1 MoE 2,594,936,576 bytes): "
                  "A_log and D are F32, dt_bias BF16, gate.e_score_correction_bias F32, gate.weight BF16. "
                  "The MB card pins revision 2d59de1cbd51c0adf384eb906b766d1aee0e0517 with "
                  "min_transformers_version 5.8.1: that revision's config may differ from this one."),
    },
    "nemotron3-super-120b-a12b": {
        "repo": "nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-BF16",
        "source": (f"NOT FOUND as a file. Totals: {SRC_SUPER_CARD}. Values: third-party partial copies "
                   "(num_hidden_layers 88, hidden 4096, 32/2 heads, head_dim 128, 512 experts top-22, "
                   "moe_intermediate 2688, shared 5376, latent 1024, routed_scaling 5.0, n_group/"
                   "topk_group 1, mamba 128x64, state 128, n_groups 8, chunk 128, conv 4, "
                   "num_nextn_predict_layers 1, mtp_hybrid_override_pattern '*E', "
                   "hybrid_override_pattern string, max_position_embeddings 262144, norm_eps 1e-05, "
                   "eos_token_id [2, 11]) and MB's Super-like unit-test dict; field set: Nano-30B's"),
        "status": "reconstructed",
        "verified": SUPER120B_VERIFIED,
        "config": _nemotron3_large(SUPER120B_VALUES, list_spelling=False),
        "fp32": ["mixer.gate.e_score_correction_bias"],
        "expect": {"tensors": 42683, "bytes": 247222108160, "elements": 123611033088, "f32": 41},
        "expect_source": SRC_SUPER_CARD,
        "notes": ("Only the 41 router biases are F32 (40 layers + 1 MTP): bytes - 2*elements = 41,984 = "
                  "41*512*2, so A_log/D/dt_bias are BF16 here, unlike Nano-30B. MTP flattened as "
                  "mtp.layers.0 (attention: enorm, hnorm, eh_proj, norm, mixer.{q,k,v,o}_proj) and "
                  "mtp.layers.1 (MoE + final_layernorm). Pattern spelling: two independent third-party "
                  "readers of the published file use hybrid_override_pattern/mtp_hybrid_override_pattern; "
                  "shared/reference/mappings.md §4 says Super stores layers_block_type - unresolved."),
    },
    "nemotron3-ultra-550b-a55b": {
        "repo": "nvidia/NVIDIA-Nemotron-3-Ultra-550B-A55B-BF16",
        "source": ("NOT FOUND as a file (published 2026-06 per MB examples/models/nemotron/nemotron_3/ultra/"
                   "README.md@067f987d: '550B total / A55B active', 'BF16 Hugging Face cache ... about 1.1 TB'). "
                   "Values: third-party readers of the published config (108 layers, hidden 8192, 64/2 heads, "
                   "head_dim 128, intermediate/moe_intermediate 5120, shared 10240, 512 experts top-22, "
                   "latent 2048, routed_scaling 5.0, n_group/topk_group 1, num_nextn_predict_layers 1, "
                   "n_groups 8, vocab 131072, layers_block_type + mtp_layers_block_type ['attention','moe']) "
                   "and Megatron-LM launch scripts (mamba_num_heads 256, mamba_head_dim 64, the same "
                   "108-layer pattern); field set: Nano-30B's"),
        "status": "reconstructed",
        "verified": ULTRA550B_VERIFIED,
        "config": _nemotron3_large(ULTRA550B_VALUES, list_spelling=True),
        "fp32": ["mixer.gate.e_score_correction_bias"],
        "expect": {"tensors": 51023},
        "expect_source": "the nembridge brief (~51,023 tensors, ~1.12 TB)",
        "notes": ("The brief's 'Ultra-like' guess (100 layers, latent 2048) is superseded: the release "
                  "has 108 layers (48 M, 48 E, 12 *). ssm_state_size 128 is Megatron-LM's default (the "
                  "scripts do not set it) - assumed. F32 only for router biases (as in Super) - assumed. "
                  "Spelled with layers_block_type/mtp_layers_block_type (mamba/moe/attention) and without "
                  "num_hidden_layers, hybrid_override_pattern or mtp_hybrid_override_pattern - as one "
                  "third-party reader states; not confirmed. Written with dtype (not torch_dtype) and "
                  "transformers_version 5.8.1 (MB's min_transformers_version for Nemotron 3) as a "
                  "transformers-5 file would be - both assumed; such a file may also carry "
                  "rope_parameters instead of rope_theta (kept rope_theta here)."),
    },
}

# Looked for and not found (no copy of the file in any stored source; not generated):
NOT_FOUND = {
    "nvidia/Llama-3_3-Nemotron-Super-49B-v1_5": (
        "no config.json copy found; believed to share v1's architecture (same block_configs) but "
        "that is unverified, so no separate entry"),
}

for _name, _m in MODELS.items():
    if _m["verified"] == ["*"]:
        _m["verified"] = sorted(_m["config"])

"""run_config.yaml files as Megatron-Bridge writes them, for the models of
tools/megatron/train_checkpoint.py (committed under TestCheckpoints/training/).

    python tools/bridge/run_config.py --bridge DIR --out DIR

Bridge's checkpoint save (megatron.bridge.training.checkpointing.save_checkpoint) writes the
training's ConfigContainer with `cfg.to_yaml()` into the iteration folder; its `model:` section is
the model provider serialized field by field (`_ConfigContainerBase._convert_value_to_dict`),
functions and dtypes as `{_call_: false, _target_: ...}`, dumped by
`megatron.bridge.utils.yaml_utils.dump_dataclass_to_yaml`. This script runs that same code on
Bridge's own GPTModelProvider / HybridModelProvider and TokenizerConfig, configured as the training
runs are (after `finalize()`, as a run saves them); the other sections of a real run (train,
optimizer, ...) are not written: nembridge reads `model:` and `tokenizer:` only.

Megatron-Bridge is not part of the pinned venv (it needs Python >= 3.12 and Transformer Engine in
its package imports): --bridge names an unpacked megatron_bridge-0.6.2 wheel
(`pip download megatron-bridge==0.6.2 --no-deps --python-version 3.12 --only-binary=:all:`, unzip)
and omegaconf must be importable (PYTHONPATH). The package `__init__`s, which import every model
and Transformer Engine, are bypassed; the provider modules themselves are imported unchanged.
"""
from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "megatron"))


def import_bridge(root: Path):
    import typing_extensions

    if not hasattr(typing, "override"):  # megatron.training 0.19.2 on Python 3.11
        typing.override = typing_extensions.override
    import megatron

    package = root / "megatron" / "bridge"
    for name in ["", ".models", ".models.hybrid", ".models.mamba", ".utils", ".training", ".training.utils",
                 ".training.tokenizers"]:
        module = types.ModuleType("megatron.bridge" + name)
        module.__path__ = [str(package / name[1:].replace(".", "/"))]
        sys.modules["megatron.bridge" + name] = module
    megatron.bridge = sys.modules["megatron.bridge"]


def providers():
    import torch
    import torch.nn.functional as F
    from megatron.core.activations import squared_relu
    from megatron.bridge.models.gpt_provider import GPTModelProvider
    from megatron.bridge.models.hybrid.hybrid_provider import HybridModelProvider

    common = dict(hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
                  kv_channels=16, normalization="RMSNorm", layernorm_epsilon=1e-5, add_bias_linear=False,
                  share_embeddings_and_output_weights=False, vocab_size=250,
                  make_vocab_size_divisible_by=128, bf16=True, params_dtype=torch.bfloat16,
                  init_method_std=0.02, hidden_dropout=0.0, attention_dropout=0.0, seq_length=64)
    llama = GPTModelProvider(num_layers=2, gated_linear_unit=True, activation_func=F.silu,
                             position_embedding_type="rope", rotary_base=500000, **common)
    hybrid = HybridModelProvider(
        hybrid_layer_pattern="M*ME", activation_func=squared_relu, position_embedding_type="none",
        mamba_state_dim=16, mamba_head_dim=16, mamba_num_groups=2, num_moe_experts=4,
        moe_router_topk=2, moe_ffn_hidden_size=32, moe_shared_expert_intermediate_size=32,
        moe_router_score_function="sigmoid", moe_router_enable_expert_bias=True,
        moe_router_dtype="fp32", moe_token_dispatcher_type="allgather", moe_aux_loss_coeff=0.0,
        moe_router_topk_scaling_factor=2.5, apply_rope_fusion=False, **common)
    return {"llama": llama, "hybrid": hybrid}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bridge", required=True, type=Path, help="unpacked megatron_bridge wheel")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    import_bridge(a.bridge)
    from megatron.bridge.training.tokenizers.config import TokenizerConfig
    from megatron.bridge.training.utils.config_utils import _ConfigContainerBase
    from megatron.bridge.utils.yaml_utils import dump_dataclass_to_yaml

    a.out.mkdir(parents=True, exist_ok=True)
    tokenizer = TokenizerConfig(tokenizer_type="NullTokenizer", vocab_size=250)
    for name, provider in providers().items():
        provider.finalize()
        document = {
            "_target_": "megatron.bridge.training.config.ConfigContainer",
            "model": _ConfigContainerBase._convert_value_to_dict(provider),
            "tokenizer": _ConfigContainerBase._convert_value_to_dict(tokenizer),
        }
        (a.out / f"{name}-run_config.yaml").write_text(dump_dataclass_to_yaml(document))
        print(f"wrote {a.out / f'{name}-run_config.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GPT-2's and GPT-J's descendants whose checkpoints differ from them in more than names: GPT-Neo (GPT-2's
decoder with separate q/k/v, unscaled scores and alternating global and local layers) and CodeGen (GPT-J's decoder
with one fused ``qkv_proj`` laid out in the four model-parallel shards it was trained with).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from jllm.models.families.common import activation, gpt_decoder
from jllm.models.families.layer_norm import gptj_layout
from jllm.models.model_args import CODEGEN_SHARDS, LayerSpec, ModelArgs, WeightMap

GPT_NEO_ATTENTION = ("global", "local")


def gpt_neo(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """GPT-Neo: learned absolute positions, LayerNorms, separate bias-free q/k/v and a biased ``out_proj``, scores
    not scaled by ``head_dim ** -0.5``, a plain gelu_new MLP (``c_fc`` / ``c_proj``), a tied head by default; each
    layer global or local (a window of ``window_size`` tokens) as ``attention_types`` (``[[kinds, repeats], ...]``)
    expands."""
    heads, hidden = cfg["num_heads"], cfg["hidden_size"]
    kinds = [
        kind
        for names, repeats in cfg.get("attention_types") or [[list(GPT_NEO_ATTENTION), 12]]
        for kind in names * repeats
    ]
    if len(kinds) != cfg["num_layers"] or not set(kinds) <= set(GPT_NEO_ATTENTION):
        raise ValueError(
            f"GPT-Neo attention_types={cfg.get('attention_types')!r} is not supported (supported: kinds among "
            f"{GPT_NEO_ATTENTION} for each of the num_layers={cfg['num_layers']} layers)"
        )
    cfg = {
        **cfg,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,  # always multi-head
        "num_hidden_layers": cfg["num_layers"],
        "intermediate_size": cfg.get("intermediate_size") or 4 * hidden,
        "head_dim": hidden // heads,
        "rms_norm_eps": cfg.get("layer_norm_epsilon", 1e-5),
        "max_position_embeddings": cfg.get("max_position_embeddings", 2048),
        "tie_word_embeddings": cfg.get("tie_word_embeddings", True),
    }
    window = cfg.get("window_size", 256)
    rename = (("embed_tokens", "wte"), ("embed_positions", "wpe"), ("layers", "h"), ("self_attn", "attn.attention"))
    norms = (("input_layernorm", "ln_1"), ("post_attention_layernorm", "ln_2"), ("norm", "ln_f"))
    return gpt_decoder(
        cfg,
        dtype,
        layers=tuple(LayerSpec(None, window if kind == "local" else None) for kind in kinds),
        qkv_bias=False,
        mlp_act=activation(cfg, "activation_function", "gelu_new", "GPT-Neo"),
        sm_scale=1.0,
        learned_positions=True,
        weights=WeightMap(
            rename=(*rename, *norms, ("o_proj", "out_proj"), ("up_proj", "c_fc"), ("down_proj", "c_proj")),
            prefix="transformer.",
        ),
    )


def codegen(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """CodeGen (350M-16B mono / multi / nl): GPT-J's decoder (``gptj_layout``) with q, k and v in one ``qkv_proj``
    whose rows are four shards, each its quarter of the heads' queries, then values, then keys (the "codegen"
    ``qkv_layout``), so ``n_head`` must split into the four."""
    if cfg["n_head"] % CODEGEN_SHARDS:
        raise ValueError(
            f"CodeGen n_head={cfg['n_head']} is not supported (supported: a multiple of {CODEGEN_SHARDS}, the "
            "shards its fused qkv_proj is stored in, so that no head straddles two)"
        )
    attention = WeightMap(qkv=("qkv_proj",), qkv_layout="codegen", rename=(("o_proj", "out_proj"),))
    return gptj_layout(cfg, dtype, "CodeGen", attention)

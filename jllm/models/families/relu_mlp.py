"""The LayerNorm families with a plain (not gated) ReLU-kind MLP: Nemotron and Persimmon (squared ReLU, partial
rotary), OPT (ReLU, learned positions).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from jllm.models.families.common import FULL, activation, gpt_decoder, uniform
from jllm.models.families.layer_norm import DENSE_NAMES
from jllm.models.model_args import ModelArgs, WeightMap


def nemotron(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Nemotron (Nemotron-3, Minitron): LayerNorm1P (a LayerNorm whose stored weight is the scale minus one, with a
    bias; ``norm_eps``), the first half of each head rotated (``partial_rotary_factor``, 0.5 by default), a plain
    squared-ReLU MLP, biases where ``attention_bias`` / ``mlp_bias``."""
    cfg = {"partial_rotary_factor": 0.5, **cfg, "rms_norm_eps": cfg.get("norm_eps", 1e-5)}
    base, layers = uniform(cfg, dtype, FULL)
    bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(
        **base,
        layers=layers,
        norm="layer_unit_offset",
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        mlp_gated=False,
        mlp_act=activation(cfg, "hidden_act", "relu2", "Nemotron"),
    )


def persimmon(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Persimmon (Adept's 8B): multi-head attention from one per-head fused ``query_key_value`` ``[q, k, v]``,
    LayerNorms (also on each query and key head where ``qk_layernorm``, the default), half of each head rotated
    (``partial_rotary_factor``, 0.5 by default), biases on every linear, a plain squared-ReLU MLP."""
    heads = cfg["num_attention_heads"]
    cfg = {
        "partial_rotary_factor": 0.5,
        "max_position_embeddings": 16_384,
        **cfg,
        "num_key_value_heads": heads,
        "head_dim": cfg["hidden_size"] // heads,  # transformers ignores a head_dim key here
        "rms_norm_eps": cfg.get("layer_norm_eps", 1e-5),
    }
    base, layers = uniform(cfg, dtype, FULL)
    return ModelArgs(
        **base,
        layers=layers,
        norm="layer",
        qk_norm=bool(cfg.get("qk_layernorm", True)),
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        mlp_gated=False,
        mlp_act=activation(cfg, "hidden_act", "relu2", "Persimmon"),
        weights=WeightMap(
            qkv=("query_key_value",),
            qkv_layout="grouped",
            rename=(*DENSE_NAMES, ("norm", "final_layernorm"), ("q_norm", "q_layernorm"), ("k_norm", "k_layernorm")),
        ),
    )


def opt(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """OPT: learned positions read two rows on (``embed_positions``' offset), pre-norm LayerNorms
    (``do_layer_norm_before``), multi-head attention and a plain ReLU MLP (``fc1`` / ``fc2``) with biases where
    ``enable_bias``, a tied head by default. OPT-350m's post-norm layout and embedding projections
    (``word_embed_proj_dim`` other than ``hidden_size``) are refused, as are checkpoints without the final norm."""
    hidden = cfg["hidden_size"]
    refused = {
        "do_layer_norm_before": (cfg.get("do_layer_norm_before", True), True),
        "word_embed_proj_dim": (cfg.get("word_embed_proj_dim") or hidden, hidden),
        "_remove_final_layer_norm": (cfg.get("_remove_final_layer_norm", False), False),
    }
    for key, (value, supported) in refused.items():
        if value != supported:
            raise ValueError(f"OPT {key}={value!r} is not supported (supported: {supported!r})")
    heads = cfg["num_attention_heads"]
    cfg = {
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
        **cfg,
        "num_key_value_heads": heads,
        "head_dim": hidden // heads,
        "intermediate_size": cfg.get("ffn_dim", 3072),
        "rms_norm_eps": 1e-5,  # torch's LayerNorm default
    }
    norms = (("input_layernorm", "self_attn_layer_norm"), ("post_attention_layernorm", "final_layer_norm"))
    return gpt_decoder(
        cfg,
        dtype,
        bias=bool(cfg.get("enable_bias", True)),
        norm="layer" if cfg.get("layer_norm_elementwise_affine", True) else "layer_no_affine",
        mlp_act=activation(cfg, "activation_function", "relu", "OPT"),
        learned_positions=True,
        position_offset=2,
        weights=WeightMap(
            rename=(
                *norms,
                ("norm", "final_layer_norm"),
                ("o_proj", "out_proj"),
                ("mlp", ""),
                ("up_proj", "fc1"),
                ("down_proj", "fc2"),
            ),
            prefix="model.decoder.",
        ),
    )

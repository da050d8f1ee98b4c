"""RecurrentGemma (Griffin, ``RecurrentGemmaForCausalLM``): residual blocks of a temporal block and a GeGLU, each
after Gemma's ``1 + w`` RMSNorm; the temporal block a recurrent one (``jllm.models.rg_lru``: conv1d and RG-LRU, its
state per sequence) or local multi-query attention (a sliding window of ``attention_window_size``, half the head
rotated, ``o_proj`` biased) by ``block_types`` repeated over the layers; embeddings times sqrt(hidden) rounded to a
bfloat16, logits soft-capped, the head tied.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp

from jllm.models.families.common import activation, base_args, check_attends, read_rope
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap
from jllm.models.rg_lru import RGLRUSpec

BLOCK_TYPES = ("recurrent", "attention")
RENAME = (
    ("input_layernorm", "temporal_pre_norm"),
    ("self_attn", "temporal_block"),
    ("mixer", "temporal_block"),
    ("post_attention_layernorm", "channel_pre_norm"),
    ("mlp", "mlp_block"),
    ("norm", "final_norm"),
)


def recurrent_gemma(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """RecurrentGemmaConfig's keys (its defaults where absent): ``block_types`` cycled over ``num_hidden_layers``,
    each "recurrent" an RG-LRU block ``lru_width`` wide (the hidden size by default) with a conv of
    ``conv1d_width``, each "attention" a sliding window of ``attention_window_size`` over ``num_key_value_heads``
    (the query heads by default); the MLP ``intermediate_size // 2`` wide with biases, as transformers builds it;
    heads ``hidden_size // num_attention_heads`` wide whatever ``head_dim`` says (transformers sets it so). Its
    config names no context (the attention is local, the recurrence unbounded): served up to 8192 tokens, Griffin's
    training length, unless ``max_position_embeddings`` says otherwise."""
    cfg = {
        "hidden_size": 2560,
        "num_attention_heads": 10,
        "intermediate_size": 3 * 2560,
        "num_hidden_layers": 26,
        "vocab_size": 256_000,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
        **cfg,
    }
    hidden, heads, n = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    types = list(cfg.get("block_types") or ("recurrent", "recurrent", "attention"))
    if any(t not in BLOCK_TYPES for t in types):
        raise ValueError(f"RecurrentGemma block_types={types!r} is not supported (supported: {', '.join(BLOCK_TYPES)})")
    base = base_args(dict(cfg, head_dim=hidden // heads, intermediate_size=cfg["intermediate_size"] // 2), dtype)
    fraction = {"partial_rotary_factor": cfg.get("partial_rotary_factor", 0.5)}
    rope = read_rope({**fraction, **cfg}, base["head_dim"])
    window = cfg.get("attention_window_size", 2048)
    layers = tuple(
        LayerSpec(rope, window) if kind == "attention" else LayerSpec(None, mixer="rg_lru") for kind in (types * n)[:n]
    )
    check_attends(layers, "RecurrentGemma")
    act = activation(cfg, "hidden_activation", "gelu_pytorch_tanh", "RecurrentGemma")
    spec = RGLRUSpec(cfg.get("lru_width") or hidden, heads, cfg.get("conv1d_width", 4), act)
    return ModelArgs(
        **base,
        layers=layers,
        norm="rms_unit_offset",
        mlp_act=act,
        mlp_bias=True,
        qkv_bias=bool(cfg.get("attention_bias", False)),
        o_bias=True,
        # transformers' normalizer is a bfloat16 sqrt(hidden) whatever the model's dtype
        embed_scale=float(jnp.asarray(math.sqrt(hidden), jnp.bfloat16)),
        final_softcap=cfg.get("logits_soft_cap", 30.0),
        rg_lru=spec,
        weights=WeightMap(rename=RENAME),
    )

"""fairseq's decoder as transformers keeps it for XGLM and BioGPT: embeddings times ``sqrt(d_model)``, positions two
rows on (XGLM's fixed sinusoids, BioGPT's learned table), pre-norm LayerNorms (``self_attn_layer_norm``,
``final_layer_norm``, eps 1e-5), multi-head attention and a plain gelu MLP (``fc1`` / ``fc2``) with biases, a tied
head by default. (OPT, the same layout with ReLU and unscaled embeddings, is read by ``relu_mlp``.)

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import math
from typing import Any

from jllm.models.families.common import activation, gpt_decoder
from jllm.models.model_args import ModelArgs, WeightMap

FAIRSEQ_NAMES = (
    ("input_layernorm", "self_attn_layer_norm"),
    ("post_attention_layernorm", "final_layer_norm"),
    ("norm", "layer_norm"),
    ("o_proj", "out_proj"),
    ("mlp", ""),
    ("up_proj", "fc1"),
    ("down_proj", "fc2"),
)


def xglm(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """XGLM: fixed sinusoidal positions, rows from 2 on (the row of ``pad_token_id`` is zeroed, so a pad id past 1
    is refused: positions would read it), ``scale_embedding``, config names ``d_model``, ``attention_heads``,
    ``num_layers``, ``ffn_dim``. Cross-attention (``add_cross_attention``) is refused."""
    if cfg.get("add_cross_attention"):
        raise ValueError("XGLM add_cross_attention=True is not supported (supported: False, a decoder-only model)")
    if (cfg.get("pad_token_id") or 0) > 1:
        raise ValueError(
            f"XGLM pad_token_id={cfg['pad_token_id']} is not supported (supported: 0 or 1, rows of the position "
            "table that positions never read, as XGLM's 1)"
        )
    names = dict(
        hidden_size=cfg["d_model"],
        num_attention_heads=cfg["attention_heads"],
        num_hidden_layers=cfg["num_layers"],
        intermediate_size=cfg["ffn_dim"],
    )
    return _fairseq_decoder({**cfg, **names}, dtype, "XGLM", "activation_function", sinusoidal=True, prefix="model.")


def biogpt(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """BioGPT (and BioGPT-Large): learned positions two rows on, ``scale_embedding``, the LM head named
    ``output_projection``."""
    return _fairseq_decoder(
        cfg, dtype, "BioGPT", "hidden_act", sinusoidal=False, prefix="biogpt.", head="output_projection"
    )


def _fairseq_decoder(
    cfg: dict[str, Any],
    dtype: Any,
    family: str,
    act_key: str,
    *,
    sinusoidal: bool,
    prefix: str,
    head: str = "lm_head",
) -> ModelArgs:
    """The shared description, from a config in ``base_args``' names; ``act_key``: the activation's key."""
    heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
    cfg = {
        **cfg,
        "num_key_value_heads": heads,  # always multi-head
        "head_dim": hidden // heads,
        "rms_norm_eps": 1e-5,  # torch's LayerNorm default: neither reads layer_norm_eps
        "max_position_embeddings": cfg.get("max_position_embeddings") or 2048,
        "tie_word_embeddings": cfg.get("tie_word_embeddings", True),
    }
    return gpt_decoder(
        cfg,
        dtype,
        mlp_act=activation(cfg, act_key, "gelu", family),
        embed_scale=math.sqrt(hidden) if cfg.get("scale_embedding", True) else None,
        learned_positions=not sinusoidal,
        sinusoidal_positions=sinusoidal,
        position_offset=2,
        weights=WeightMap(rename=(*FAIRSEQ_NAMES, ("lm_head", head)), prefix=prefix),
    )

"""The Gemma families: the ``1 + w`` RMSNorm, GeGLU, embeddings times sqrt(hidden), tied heads; Gemma 2 and 3's
sandwich norms, soft-caps and sliding layers; VaultGemma (Gemma 2 without the output norms).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jllm.models.families.common import (
    FULL,
    HF_ACTIVATIONS,
    SLIDING,
    base_args,
    layer_type_ropes,
    layer_windows,
    read_rope,
    typed_layers,
    whole_head_rotary,
)
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap

# Gemma's norms before and after each block: our module name -> the checkpoint's.
GEMMA_WEIGHTS = WeightMap(
    rename=(
        ("post_attention_layernorm", "pre_feedforward_layernorm"),
        ("attn_out_norm", "post_attention_layernorm"),
        ("mlp_out_norm", "post_feedforward_layernorm"),
    )
)


def _gemmabase_args(cfg: dict[str, Any], dtype: Any, act: str) -> dict[str, Any]:
    """What every Gemma shares: a tied head by default, the ``1 + w`` RMSNorm, GeGLU (``act``: the gelu, exact or
    tanh), embeddings times sqrt(hidden)."""
    base = base_args(cfg, dtype)
    base["tie_word_embeddings"] = bool(cfg.get("tie_word_embeddings", True))
    return dict(
        base,
        norm="rms_unit_offset",
        mlp_act=act,
        embed_scale=math.sqrt(base["hidden_size"]),
        qkv_bias=bool(cfg.get("attention_bias", False)),
        o_bias=bool(cfg.get("attention_bias", False)),
    )


def _gemma_activation(cfg: dict[str, Any], family: str) -> str:
    """Gemma 2's and 3's GeGLU activation: transformers runs ``ACT2FN[hidden_activation]`` (never ``hidden_act``,
    unlike Gemma 1), so the exact gelu under ``"gelu"`` and the tanh approximation under its names; another function
    is refused by name."""
    name = cfg.get("hidden_activation") or "gelu_pytorch_tanh"
    act = "gelu_tanh" if name == "gelu_tanh" else HF_ACTIVATIONS.get(name)
    if act not in ("gelu", "gelu_tanh"):
        gelus = [k for k, v in HF_ACTIVATIONS.items() if v in ("gelu", "gelu_tanh")]
        raise ValueError(f"{family} hidden_activation {name!r} is not supported (supported: {', '.join(gelus)})")
    return act


def _refuse_bidirectional(cfg: dict[str, Any], family: str) -> None:
    """``use_bidirectional_attention`` (EmbeddingGemma's encoders) lets every token attend to the ones after it in
    transformers' Gemma and Gemma 3, which a generating engine's causal attention cannot do: refused, not ignored.
    (transformers' Gemma 2 keeps the flag but still masks causally, so its reader takes it.)"""
    if cfg.get("use_bidirectional_attention"):
        raise ValueError(
            f"{family} use_bidirectional_attention={cfg['use_bidirectional_attention']!r} is not supported "
            "(supported: false or null; jllm's attention is causal)"
        )


def gemma(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Gemma 1: Llama's layout with Gemma's ``1 + w`` RMSNorm, GeGLU and scaled embeddings. transformers' Gemma
    reads ``hidden_act`` (not ``hidden_activation``), a legacy ``"gelu"`` there meaning the tanh approximation."""
    _refuse_bidirectional(cfg, "Gemma")
    act = cfg.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu"):
        raise ValueError(f"Gemma hidden_act {act!r} is not supported (supported: 'gelu_pytorch_tanh', 'gelu')")
    base = _gemmabase_args(cfg, dtype, "gelu_tanh")
    layers = (LayerSpec(read_rope(whole_head_rotary(cfg), base["head_dim"])),) * base["num_layers"]
    return ModelArgs(**base, layers=layers)


def _gemma(cfg: dict[str, Any], dtype: Any, layers: tuple[LayerSpec, ...], family: str, **extra: Any) -> ModelArgs:
    """Gemma 2 and 3's shared description."""
    base = _gemmabase_args(cfg, dtype, _gemma_activation(cfg, family))
    return ModelArgs(
        **base,
        layers=layers,
        sandwich_norms=True,
        sm_scale=cfg.get("query_pre_attn_scalar", base["head_dim"]) ** -0.5,
        attn_softcap=cfg.get("attn_logit_softcapping"),
        final_softcap=cfg.get("final_logit_softcapping"),
        weights=GEMMA_WEIGHTS,
        **extra,
    )


# transformers' Gemma2Config defaults (VaultGemmaConfig's too) for the keys the reader takes: a config that leaves out
# its soft-caps, query scalar or window runs with these there
GEMMA2_DEFAULTS = dict(
    head_dim=256,
    num_key_value_heads=4,
    query_pre_attn_scalar=256,
    sliding_window=4096,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    max_position_embeddings=8192,
)


def gemma2(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Gemma 2: sliding (even) and global (odd) layers, soft-capped attention and logits, sandwich norms, GeGLU; keys
    a config leaves out take Gemma2Config's defaults (``GEMMA2_DEFAULTS``)."""
    cfg = {**GEMMA2_DEFAULTS, **cfg}
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    rope = read_rope(whole_head_rotary(cfg), head_dim)
    default = [SLIDING if i % 2 == 0 else FULL for i in range(cfg["num_hidden_layers"])]
    return _gemma(cfg, dtype, tuple(LayerSpec(rope, w) for w in layer_windows(cfg, default)), "Gemma 2")


# transformers' Gemma3TextConfig defaults for the keys the readers take: hub image-text configs (gemma-3-4b-it's
# ``text_config``) leave most of them out
GEMMA3_TEXT_DEFAULTS = dict(
    vocab_size=262_208,
    hidden_size=2304,
    intermediate_size=9216,
    num_hidden_layers=26,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    max_position_embeddings=131_072,
    query_pre_attn_scalar=256,
    sliding_window=4096,
)


def gemma3(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Gemma 3 (text): Gemma 2 with q/k norms, five sliding layers per global one, and a local rope base; keys a
    config leaves out take Gemma3TextConfig's defaults. transformers' Gemma 3 keeps ``attn_logit_softcapping`` in its
    config but never caps its scores (Gemma 2 does), so a value set there is read as none."""
    _refuse_bidirectional(cfg, "Gemma 3")
    cfg = {**GEMMA3_TEXT_DEFAULTS, **cfg, "attn_logit_softcapping": None}
    head_dim = cfg["head_dim"]
    pattern = cfg.get("sliding_window_pattern", 6)
    default = [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(cfg["num_hidden_layers"])]
    ropes = layer_type_ropes(whole_head_rotary(cfg), head_dim, cfg.get("rope_local_base_freq", 10000.0), 1e6)
    return _gemma(cfg, dtype, typed_layers(cfg, ropes, default), "Gemma 3", qk_norm=True)


def vaultgemma(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """VaultGemma (Google's differentially private Gemma): Gemma 2 without the norms on the attention's and MLP's
    outputs, the MLP's input norm named ``pre_feedforward_layernorm``; VaultGemmaConfig's defaults are Gemma 2's."""
    args = gemma2(cfg, dtype)
    rename = (("post_attention_layernorm", "pre_feedforward_layernorm"),)
    return dataclasses.replace(args, sandwich_norms=False, weights=WeightMap(rename=rename))

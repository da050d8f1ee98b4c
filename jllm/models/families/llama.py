"""The RMSNorm families of Llama's layout: attention then a gated MLP, one after the other (Llama, Mistral, Qwen2/3,
HunYuan dense, Granite, Phi-3; OLMo 2 with its norms on the blocks' outputs).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jllm.models.families.common import (
    FULL,
    SLIDING,
    activation,
    base_args,
    layer_type_ropes,
    layer_windows,
    read_rope,
    typed_layers,
    uniform,
    whole_head_rotary,
)
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap

# transformers' LlamaConfig, MistralConfig, Qwen2Config and Qwen3Config defaults for the sizes and context a config
# leaves out: hub image-text checkpoints that transformers 4.x saved keep only the text config's keys that differ from
# these (llava-1.5-7b-hf's Vicuna names its vocabulary, context and eps alone, and runs 32 layers of 4096)
SIZE_DEFAULTS = {
    "llama": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        max_position_embeddings=2048,
    ),
    "mistral": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131_072,
    ),
    "qwen2": dict(
        vocab_size=151_936,
        hidden_size=4096,
        intermediate_size=22016,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=32768,
    ),
}
SIZE_DEFAULTS["qwen3"] = dict(SIZE_DEFAULTS["qwen2"], head_dim=128)


def llama(cfg: dict[str, Any], dtype: Any, model_type: str = "llama") -> ModelArgs:
    """Llama 2/3/3.x, Mistral, Qwen2/2.5, SmolLM2: the plain pre-norm SwiGLU decoder. Biases as transformers builds
    them: Llama's ``attention_bias`` on q, k, v and o, ``mlp_bias`` on the MLP; Qwen2's on q, k, v always; Mistral's
    none. Sizes a config leaves out are its config class's (``SIZE_DEFAULTS``)."""
    cfg = whole_head_rotary({**SIZE_DEFAULTS[model_type], **cfg})
    base, layers = uniform(cfg, dtype, SLIDING if model_type == "mistral" else FULL)
    llama_bias = model_type == "llama" and bool(cfg.get("attention_bias", False))
    act = activation(cfg, "hidden_act", "silu", model_type)
    return ModelArgs(
        **base,
        layers=layers,
        qkv_bias=model_type == "qwen2" or llama_bias,
        o_bias=llama_bias,
        mlp_bias=model_type == "llama" and bool(cfg.get("mlp_bias", False)),
        mlp_act=act,
    )


def mistral(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Mistral (and Ministral-8B): every layer slides over ``sliding_window``, 4096 where a config leaves it out
    (MistralConfig's and MinistralConfig's default; null: no window)."""
    return llama({"sliding_window": 4096, **cfg}, dtype, "mistral")


# Ministral3Config's rotary where a config names none
MINISTRAL3_ROPE = dict(
    rope_type="yarn",
    rope_theta=1e6,
    factor=16.0,
    original_max_position_embeddings=16_384,
    beta_fast=32.0,
    beta_slow=1.0,
    mscale_all_dim=1.0,
    mscale=1.0,
    llama_4_scaling_beta=0.1,
)


def ministral3(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Ministral 3 (the text model of Ministral-3-3B/8B/14B): Mistral with YaRN (Ministral3Config's by default) and
    every layer's queries, after the rotary, times ``1 + llama_4_scaling_beta * log(1 + floor(position /
    original_max_position_embeddings))``, both read from the rope parameters."""
    cfg = {"head_dim": 128, "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "max_position_embeddings": 262_144, **cfg}
    if not cfg.get("rope_parameters") and not cfg.get("rope_scaling"):
        cfg["rope_parameters"] = dict(MINISTRAL3_ROPE, max_position_embeddings=cfg["max_position_embeddings"])
    params = cfg.get("rope_scaling") or cfg["rope_parameters"]
    beta, original = params.get("llama_4_scaling_beta"), params.get("original_max_position_embeddings")
    if beta is None or not original:
        raise ValueError(
            f"Ministral 3 rope llama_4_scaling_beta={beta!r}, original_max_position_embeddings={original!r} is not "
            "supported (supported: both set, as transformers' Ministral 3 scales its queries by them)"
        )
    base, layers = uniform(whole_head_rotary(cfg), dtype, SLIDING)
    temperature = dict(attn_temperature=(float(original), float(beta)), attn_temperature_shift=0.0)
    return ModelArgs(
        **base,
        layers=tuple(dataclasses.replace(spec, **temperature) for spec in layers),
        mlp_act=activation(cfg, "hidden_act", "silu", "Ministral 3"),
    )


def qwen2(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    return llama(qwen_sliding_layers({**SIZE_DEFAULTS["qwen2"], **cfg}), dtype, "qwen2")


def qwen_sliding_layers(cfg: dict[str, Any]) -> dict[str, Any]:
    """Qwen2's and Qwen3's sliding layers as their transformers configs set them: a window only under
    ``use_sliding_window`` (else ``sliding_window`` is dropped, whatever ``layer_types`` says), and without
    ``layer_types`` the layers from ``max_window_layers`` (28 by default) on slide, not every layer."""
    if not cfg.get("use_sliding_window"):
        return {**cfg, "sliding_window": None}
    first = cfg.get("max_window_layers", 28)
    kinds = cfg.get("layer_types") or [SLIDING if i >= first else FULL for i in range(cfg["num_hidden_layers"])]
    return {**cfg, "layer_types": kinds}


def smollm3(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """SmolLM3: Llama with no rotary (NoPE) in the layers ``no_rope_layers`` marks 0 (by default every
    ``no_rope_layer_interval``-th, 4), rope base 2e6 and a tied head by default; with ``use_sliding_window`` the NoPE
    layers slide (transformers' ``layer_types`` default)."""
    cfg = whole_head_rotary(cfg)
    n = cfg["num_hidden_layers"]
    cfg = {"rope_theta": 2e6, "tie_word_embeddings": True, **cfg}
    interval = cfg.get("no_rope_layer_interval", 4)
    rotary = cfg.get("no_rope_layers")
    rotary = [int((i + 1) % interval != 0) for i in range(n)] if rotary is None else rotary
    # transformers gives a layer its window only under use_sliding_window, whatever layer_types says
    default = [FULL if r else SLIDING for r in rotary]
    windows = layer_windows(cfg, default) if cfg.get("use_sliding_window") else [None] * n
    base = base_args(cfg, dtype)
    rope = read_rope(cfg, base["head_dim"])
    bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(
        **base,
        layers=tuple(LayerSpec(rope if r else None, w) for r, w in zip(rotary, windows, strict=True)),
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        mlp_act=activation(cfg, "hidden_act", "silu", "SmolLM3"),
    )


def qwen3(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen3 (dense): Llama plus an RMSNorm on each query and key head; sliding layers as Qwen2's."""
    cfg = {**SIZE_DEFAULTS["qwen3"], **cfg}
    base, layers = uniform(whole_head_rotary(qwen_sliding_layers(cfg)), dtype, FULL)
    bias = bool(cfg.get("attention_bias", False))
    act = activation(cfg, "hidden_act", "silu", "Qwen3")
    return ModelArgs(**base, layers=layers, qk_norm=True, qkv_bias=bias, o_bias=bias, mlp_act=act)


def hunyuan_dense(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """HunYuan dense V1 (Hunyuan-0.5B ... 7B): Qwen3's layout with the q/k RMSNorms (``query_layernorm`` /
    ``key_layernorm``) after the rotary; its NTK rotary with a fixed ``alpha`` (labelled "dynamic") is the plain one
    with base ``rope_theta * alpha ** (head_dim / (head_dim - 2))``. Cross-layer KV sharing (``use_cla``) is
    refused. Eps 1e-5 by default (HunYuanDenseV1Config's and HunYuanMoEV1Config's)."""
    cfg = whole_head_rotary({"rms_norm_eps": 1e-5, **cfg})
    if cfg.get("use_cla"):
        raise ValueError("HunYuan use_cla=True is not supported (supported: False, as the released dense models)")
    params = dict(cfg.get("rope_scaling") or cfg.get("rope_parameters") or {})
    if params.get("rope_type", params.get("type")) == "dynamic" and params.get("alpha"):
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        theta = params.get("rope_theta") or cfg.get("rope_theta") or 10000.0
        cfg = {**cfg, "rope_scaling": None, "rope_parameters": None}
        cfg["rope_theta"] = theta * params["alpha"] ** (head_dim / (head_dim - 2))
    base, layers = uniform(cfg, dtype, FULL)
    bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(
        **base,
        layers=layers,
        qk_norm=True,
        qk_norm_after_rope=True,
        qkv_bias=bias,
        o_bias=bias,
        mlp_act=activation(cfg, "hidden_act", "silu", "HunYuan"),
        weights=WeightMap(rename=(("q_norm", "query_layernorm"), ("k_norm", "key_layernorm"))),
    )


def granite(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Granite (3.x): Llama with four multipliers: ``embedding_multiplier`` on the embeddings,
    ``attention_multiplier`` as the attention scale (in place of 1/sqrt(head_dim)), ``residual_multiplier`` on each
    block's output before its residual add, and logits divided by ``logits_scaling``."""
    cfg = whole_head_rotary(cfg)
    base, layers = uniform(cfg, dtype, FULL)
    bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(
        **base,
        layers=layers,
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        mlp_act=activation(cfg, "hidden_act", "silu", "Granite"),
        embed_scale=float(cfg.get("embedding_multiplier", 1.0)),
        sm_scale=float(cfg.get("attention_multiplier", 1.0)),
        residual_scale=float(cfg.get("residual_multiplier", 1.0)),
        logits_divisor=float(cfg.get("logits_scaling", 1.0)),
    )


# OLMo 2's norms on the attention's and MLP's outputs (EXAONE 4's too): our module name -> the checkpoint's
OUTPUT_NORMS = WeightMap(
    rename=(("attn_out_norm", "post_attention_layernorm"), ("mlp_out_norm", "post_feedforward_layernorm"))
)


def olmo2(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """OLMo 2: norms on the attention's and MLP's outputs only (none on their inputs), and q/k RMSNorms over the whole
    projection (all heads' channels at once) before the rotary; eps 1e-5 by default (Olmo2Config's)."""
    cfg = {"rms_norm_eps": 1e-5, **cfg}
    base, layers = uniform(whole_head_rotary(cfg), dtype, FULL)
    return _olmo2(cfg, base, layers, "OLMo 2")


def olmo3(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """OLMo 3: OLMo 2 with sliding layers (``layer_types``; by default three sliding ones, ``sliding_window`` 4096,
    to one global), each type its own rope: an older config's ``rope_theta`` and ``rope_scaling`` are the global
    layers', the sliding ones keep base 5e5 (as transformers reads them)."""
    n = cfg["num_hidden_layers"]
    cfg = whole_head_rotary({"sliding_window": 4096, "rms_norm_eps": 1e-5, "max_position_embeddings": 2048, **cfg})
    base = base_args(cfg, dtype)
    ropes = layer_type_ropes(cfg, base["head_dim"], 5e5, 5e5)
    layers = typed_layers(cfg, ropes, [SLIDING if (i + 1) % 4 else FULL for i in range(n)])
    return _olmo2(cfg, base, layers, "OLMo 3")


def _olmo2(cfg: dict[str, Any], base: dict[str, Any], layers: tuple[LayerSpec, ...], family: str) -> ModelArgs:
    bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(
        **base,
        layers=layers,
        qk_norm=True,
        qk_norm_all_heads=True,
        pre_norms=False,
        sandwich_norms=True,
        qkv_bias=bias,
        o_bias=bias,
        mlp_act=activation(cfg, "hidden_act", "silu", family),
        weights=OUTPUT_NORMS,
    )


def exaone4(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """EXAONE 4.0: OLMo 2's output-only norms with Qwen3's per-head q/k RMSNorms; sliding layers (by default three
    of every ``sliding_window_pattern``, 4) with the rotary, global ones with none, every layer global and rotated
    where ``sliding_window`` is null. A string ``sliding_window_pattern`` ("LLLG") needs ``layer_types``."""
    cfg = whole_head_rotary(cfg)
    n = cfg["num_hidden_layers"]
    cfg = {
        "sliding_window": 4096,
        "num_key_value_heads": 32,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 2048,
        **cfg,
    }
    window, pattern = cfg["sliding_window"], cfg.get("sliding_window_pattern", 4)
    if window is None:
        default = [FULL] * n
    elif isinstance(pattern, int) and pattern > 0:
        default = [SLIDING if (i + 1) % pattern else FULL for i in range(n)]
    elif cfg.get("layer_types"):
        default = cfg["layer_types"]
    else:
        raise ValueError(
            f"EXAONE 4 sliding_window_pattern={pattern!r} without layer_types is not supported (supported: a positive "
            "integer, or layer_types naming each layer's kind)"
        )
    base = base_args(cfg, dtype)
    rope = read_rope(cfg, base["head_dim"])
    layers = typed_layers(cfg, {SLIDING: rope, FULL: rope if window is None else None}, default)
    return ModelArgs(
        **base,
        layers=layers,
        qk_norm=True,
        pre_norms=False,
        sandwich_norms=True,
        mlp_act=activation(cfg, "hidden_act", "silu", "EXAONE 4"),
        weights=OUTPUT_NORMS,
    )


def phi3(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Phi-3 / Phi-3.5 / Phi-4-mini: fused qkv and gate_up tensors, longrope scaling, partial rotary (Phi-4-mini);
    eps 1e-5 by default (Phi3Config's)."""
    cfg = {"rms_norm_eps": 1e-5, **cfg}
    base, layers = uniform(cfg, dtype, SLIDING)
    return ModelArgs(
        **base,
        layers=layers,
        mlp_act=activation(cfg, "hidden_act", "silu", "Phi-3"),
        weights=WeightMap(qkv=("qkv_proj",), qkv_layout="concat", gate_up=("gate_up_proj",)),
    )


def glm(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """GLM-4 (``glm``: GLM-4-9B-chat-hf): Llama's layout with the first half of each head rotated
    (``partial_rotary_factor``, 0.5 by default) in neighbouring channel pairs, q/k/v biases where ``attention_bias``
    (on by default), one fused ``gate_up_proj``; GlmConfig's defaults for the sizes a config leaves out."""
    return _glm(cfg, dtype, "GLM", sandwich=False)


def glm4(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """GLM-4-0414 (``glm4``): GLM with a norm on the attention's output and one on the MLP's, before each residual
    add (``post_self_attn_layernorm``, ``post_mlp_layernorm``), beside the pre-norms."""
    return _glm(cfg, dtype, "GLM-4", sandwich=True)


def _glm(cfg: dict[str, Any], dtype: Any, family: str, sandwich: bool) -> ModelArgs:
    cfg = {
        "partial_rotary_factor": 0.5,
        "head_dim": 128,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1.5625e-07,
        "max_position_embeddings": 131_072,
        **cfg,
    }
    base, layers = uniform(cfg, dtype, FULL, interleaved=True)
    rename = (("attn_out_norm", "post_self_attn_layernorm"), ("mlp_out_norm", "post_mlp_layernorm"))
    return ModelArgs(
        **base,
        layers=layers,
        qkv_bias=bool(cfg.get("attention_bias", True)),
        sandwich_norms=sandwich,
        mlp_act=activation(cfg, "hidden_act", "silu", family),
        weights=WeightMap(gate_up=("gate_up_proj",), rename=rename if sandwich else ()),
    )


def helium(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Helium (Kyutai): Llama with the rotary on neighbouring channel pairs, rope base 1e5 and eps 1e-8 by default,
    q/k/v biases where ``attention_bias``; its o_proj maps ``hidden_size`` channels, so heads must fill it."""
    cfg = whole_head_rotary(cfg)
    cfg = {"rope_theta": 1e5, "head_dim": 128, "num_key_value_heads": 20, "rms_norm_eps": 1e-8, **cfg}
    base, layers = uniform(cfg, dtype, FULL, interleaved=True)
    if base["num_heads"] * base["head_dim"] != base["hidden_size"]:
        raise ValueError(
            f"Helium num_attention_heads * head_dim = {base['num_heads'] * base['head_dim']} is not supported "
            f"(supported: equal to hidden_size={base['hidden_size']}, the width transformers' o_proj takes)"
        )
    return ModelArgs(
        **base,
        layers=layers,
        qkv_bias=bool(cfg.get("attention_bias", False)),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        mlp_act=activation(cfg, "hidden_act", "silu", "Helium"),
    )


def ernie4_5(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """ERNIE 4.5 (dense: ERNIE-4.5-0.3B): Llama with the rotary on neighbouring channel pairs, rope base 5e5, a tied
    head and ``use_bias`` on every linear (q, k, v, o and the MLP's) by default."""
    cfg = whole_head_rotary(cfg)
    cfg = {
        "rope_theta": 5e5,
        "head_dim": 128,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 131_072,
        "tie_word_embeddings": True,
        **cfg,
    }
    base, layers = uniform(cfg, dtype, FULL, interleaved=True)
    bias = bool(cfg.get("use_bias", False))
    act = activation(cfg, "hidden_act", "silu", "ERNIE 4.5")
    return ModelArgs(**base, layers=layers, qkv_bias=bias, o_bias=bias, mlp_bias=bias, mlp_act=act)


def seed_oss(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Seed-OSS (ByteDance): Llama with q/k/v biases (``attention_bias``, on by default) and o_proj's own
    (``attention_out_bias``)."""
    cfg = whole_head_rotary(cfg)
    cfg = {"head_dim": 128, "num_key_value_heads": 8, "max_position_embeddings": 524_288, **cfg}
    base, layers = uniform(cfg, dtype, FULL)
    return ModelArgs(
        **base,
        layers=layers,
        qkv_bias=bool(cfg.get("attention_bias", True)),
        o_bias=bool(cfg.get("attention_out_bias", False)),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        mlp_act=activation(cfg, "hidden_act", "silu", "Seed-OSS"),
    )


def arcee(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Arcee (AFM-4.5B): Llama with a plain (not gated) MLP, ``down(relu(up(x))^2)`` by default."""
    cfg = whole_head_rotary(cfg)
    cfg = {"rms_norm_eps": 1e-5, **cfg}
    base, layers = uniform(cfg, dtype, FULL)
    bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(
        **base,
        layers=layers,
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        mlp_gated=False,
        mlp_act=activation(cfg, "hidden_act", "relu2", "Arcee"),
    )


# ApertusConfig's rotary where a config names none (its rope_theta alone is then ignored, as transformers does)
APERTUS_ROPE = dict(
    rope_type="llama3",
    rope_theta=12e6,
    factor=8.0,
    original_max_position_embeddings=8192,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
)


def apertus(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Apertus (Swiss AI): Llama's pre-norm layout (``attention_layernorm``, ``feedforward_layernorm``) with Qwen3's
    per-head q/k RMSNorms and a plain MLP whose xIELU activation learns its two slopes per layer (``act_fn``)."""
    cfg = whole_head_rotary(cfg)
    if not cfg.get("rope_parameters") and not cfg.get("rope_scaling"):
        cfg = {**cfg, "rope_parameters": APERTUS_ROPE}
    cfg = {"rope_theta": 12e6, "rms_norm_eps": 1e-5, "max_position_embeddings": 65_536, **cfg}
    base, layers = uniform(cfg, dtype, FULL)
    bias = bool(cfg.get("attention_bias", False))
    norms = (("input_layernorm", "attention_layernorm"), ("post_attention_layernorm", "feedforward_layernorm"))
    return ModelArgs(
        **base,
        layers=layers,
        qk_norm=True,
        qkv_bias=bias,
        o_bias=bias,
        mlp_gated=False,
        mlp_act=activation(cfg, "hidden_act", "xielu", "Apertus"),
        weights=WeightMap(rename=norms),
    )

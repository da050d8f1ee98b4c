"""The RMSNorm families of Llama's layout: attention then a gated MLP, one after the other (Llama, Mistral, Qwen2/3,
Granite, Phi-3; OLMo 2 with its norms on the blocks' outputs).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from jllm.models.decoder import ModelArgs, WeightMap
from jllm.models.families.common import FULL, SLIDING, activation, uniform


def llama(cfg: dict[str, Any], dtype: Any, model_type: str = "llama") -> ModelArgs:
    """Llama 2/3/3.x, Mistral, Qwen2/2.5, SmolLM2: the plain pre-norm SwiGLU decoder. Biases as transformers builds
    them: Llama's ``attention_bias`` on q, k, v and o, ``mlp_bias`` on the MLP; Qwen2's on q, k, v always; Mistral's
    none."""
    all_sliding = model_type == "mistral" or cfg.get("use_sliding_window")
    base, layers = uniform(cfg, dtype, SLIDING if all_sliding else FULL)
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
    return llama(cfg, dtype, "mistral")


def qwen2(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    return llama(cfg, dtype, "qwen2")


def qwen3(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen3 (dense): Llama plus an RMSNorm on each query and key head."""
    base, layers = uniform(cfg, dtype, FULL)
    bias = bool(cfg.get("attention_bias", False))
    act = activation(cfg, "hidden_act", "silu", "Qwen3")
    return ModelArgs(**base, layers=layers, qk_norm=True, qkv_bias=bias, o_bias=bias, mlp_act=act)


def granite(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Granite (3.x): Llama with four multipliers: ``embedding_multiplier`` on the embeddings,
    ``attention_multiplier`` as the attention scale (in place of 1/sqrt(head_dim)), ``residual_multiplier`` on each
    block's output before its residual add, and logits divided by ``logits_scaling``."""
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


def olmo2(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """OLMo 2: norms on the attention's and MLP's outputs only (none on their inputs), and q/k RMSNorms over the whole
    projection (all heads' channels at once) before the rotary."""
    base, layers = uniform(cfg, dtype, FULL)
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
        mlp_act=activation(cfg, "hidden_act", "silu", "OLMo 2"),
        weights=WeightMap(
            rename=(("attn_out_norm", "post_attention_layernorm"), ("mlp_out_norm", "post_feedforward_layernorm"))
        ),
    )


def phi3(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Phi-3 / Phi-3.5 / Phi-4-mini: fused qkv and gate_up tensors, longrope scaling, partial rotary (Phi-4-mini)."""
    base, layers = uniform(cfg, dtype, SLIDING)
    return ModelArgs(
        **base,
        layers=layers,
        mlp_act=activation(cfg, "hidden_act", "silu", "Phi-3"),
        weights=WeightMap(qkv=("qkv_proj",), qkv_layout="concat", gate_up=("gate_up_proj",)),
    )

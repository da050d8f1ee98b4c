"""Mixtures of experts whose attention output is gated per channel or per head before ``o_proj``
(``ModelArgs.attn_output_gate``): AFMoE (Arcee's Trinity: a sigmoid gate, rotary on the sliding layers only, norms
around both blocks) and Laguna (poolside: a softplus gate, each layer type its own rotary).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from jllm.models.families.common import (
    FULL,
    SLIDING,
    activation,
    base_args,
    dense_mlps,
    per_type_ropes,
    read_rope,
    typed_layers,
    whole_head_rotary,
)
from jllm.models.families.mixtures import ROUTER_EXPERT_BIAS, _check_top_k
from jllm.models.model_args import ModelArgs, WeightMap
from jllm.models.moe import GroupedRouting

# transformers' sandwich-norm names (AFMoE's, Laguna's) -> ours
SANDWICH = (
    ("attn_out_norm", "post_attention_layernorm"),
    ("post_attention_layernorm", "pre_mlp_layernorm"),
    ("mlp_out_norm", "post_mlp_layernorm"),
)


def afmoe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """AFMoE: per-head q/k RMSNorms, the rotary on the sliding layers only (by default three of every
    ``global_attn_every_n_layers``), the attention's output times a sigmoid of ``gate_proj`` per channel, norms on both
    blocks' inputs and outputs; the first ``num_dense_layers`` dense, then a mixture of ``num_experts`` SwiGLUs chosen
    by sigmoid score plus ``expert_bias``, weighted by the renormalised scores times ``route_scale``, beside
    ``num_shared_experts`` ungated shared ones; embeddings times sqrt(hidden) where ``mup_enabled``. AfmoeConfig's
    defaults for what a config leaves out."""
    cfg = {"head_dim": 128, "rms_norm_eps": 1e-5, "max_position_embeddings": 16384, "sliding_window": 1024, **cfg}
    n, every = cfg["num_hidden_layers"], cfg.get("global_attn_every_n_layers", 4)
    experts, top_k = cfg.get("num_experts", 64), cfg.get("num_experts_per_tok", 6)
    _check_top_k("AFMoE", top_k, experts, "num_experts")
    base = base_args(cfg, dtype)
    rope = read_rope(whole_head_rotary(cfg), base["head_dim"])
    layers = typed_layers(cfg, {SLIDING: rope, FULL: None}, [SLIDING if (i + 1) % every else FULL for i in range(n)])
    kinds = ["dense" if i < cfg.get("num_dense_layers", 1) else "sparse" for i in range(n)]
    moe_width = cfg.get("moe_intermediate_size", 1408)
    bias = bool(cfg.get("attention_bias", False))
    rename = (
        *SANDWICH,
        ("attn_gate", "gate_proj"),
        ("experts", "experts.{e}"),
        ("shared_expert", "shared_experts"),
        *ROUTER_EXPERT_BIAS,
    )
    return ModelArgs(
        **{**base, "intermediate_size": moe_width},
        layers=dense_mlps(layers, kinds, base["intermediate_size"], "AFMoE"),
        qk_norm=True,
        sandwich_norms=True,
        qkv_bias=bias,
        o_bias=bias,
        attn_output_gate="sigmoid",
        mlp_act=activation(cfg, "hidden_act", "silu", "AFMoE"),
        num_experts=experts,
        experts_per_token=top_k,
        shared_expert_size=moe_width * cfg.get("num_shared_experts", 2),
        shared_expert_gated=False,
        moe_routing=GroupedRouting("sigmoid", scale=float(cfg.get("route_scale", 1.0))),
        embed_scale=base["hidden_size"] ** 0.5 if cfg.get("mup_enabled") else None,
        weights=WeightMap(rename=rename),
    )


# LagunaConfig's rotary where a config names none
LAGUNA_ROPE = {
    FULL: {"rope_type": "default", "rope_theta": 500000.0, "partial_rotary_factor": 0.5},
    SLIDING: {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0},
}


def laguna(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Laguna: Qwen3's per-head q/k RMSNorms, each layer type its own rotary (``rope_parameters`` by type), the
    attention's output times a softplus of ``g_proj``, one factor per head (``gating`` true or "per-head") or per
    channel ("per-element"); dense SwiGLUs where ``mlp_layer_types`` says "dense" (the first layer by default), else a
    mixture chosen by sigmoid score plus a choice bias, weighted by the renormalised scores times
    ``moe_routed_scaling_factor``, beside an ungated shared SwiGLU. Differing ``num_attention_heads_per_layer``, a
    router soft-cap and router weights on the experts' input are refused by name."""
    cfg = {"head_dim": 128, "num_key_value_heads": 8, "sliding_window": 512, "max_position_embeddings": 131072, **cfg}
    n, heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    per_layer = cfg.get("num_attention_heads_per_layer") or [heads] * n
    gating = cfg.get("gating", True)
    for key, value, supported in (
        ("num_attention_heads_per_layer", per_layer, [heads] * n),
        ("moe_router_logit_softcapping", cfg.get("moe_router_logit_softcapping") or 0.0, 0.0),
        ("moe_apply_router_weight_on_input", bool(cfg.get("moe_apply_router_weight_on_input")), False),
    ):
        if value != supported:
            raise ValueError(f"Laguna {key}={value!r} is not supported (supported: {supported!r})")
    if gating not in (True, "per-head", "per-element"):
        raise ValueError(f"Laguna gating={gating!r} is not supported (supported: True, 'per-head', 'per-element')")
    experts, top_k = cfg.get("num_experts", 256), cfg.get("num_experts_per_tok", 8)
    _check_top_k("Laguna", top_k, experts, "num_experts")
    base = base_args(cfg, dtype)
    layers = typed_layers(cfg, per_type_ropes(cfg, base["head_dim"], LAGUNA_ROPE), [FULL] * n)
    kinds = cfg.get("mlp_layer_types") or ["dense"] + ["sparse"] * (n - 1)
    moe_width = cfg.get("moe_intermediate_size", 512)
    bias = bool(cfg.get("attention_bias", False))
    rename = (
        ("attn_gate", "g_proj"),
        ("experts", "experts.{e}"),
        ("mlp.gate.e_score_correction_bias", "mlp.experts.e_score_correction_bias"),
    )
    return ModelArgs(
        **{**base, "intermediate_size": moe_width},
        layers=dense_mlps(layers, kinds, base["intermediate_size"], "Laguna"),
        qk_norm=True,
        qkv_bias=bias,
        o_bias=bias,
        attn_output_gate="softplus",
        attn_output_gate_per_head=gating != "per-element",
        mlp_act=activation(cfg, "hidden_act", "silu", "Laguna"),
        num_experts=experts,
        experts_per_token=top_k,
        shared_expert_size=cfg.get("shared_expert_intermediate_size", 512),
        shared_expert_gated=False,
        moe_routing=GroupedRouting("sigmoid", scale=float(cfg.get("moe_routed_scaling_factor", 1.0))),
        weights=WeightMap(rename=rename),
    )

"""Mixtures of experts whose sliding and global layers differ in their rotary: Kolibri-1 (Aleph Alpha: EXAONE 4's
attention, the global layers without rotary, GLM-4's norms around both blocks, a router whose choice bias is added to
its logits), Mellum (JetBrains: Qwen3-MoE's attention and mixture, each layer type its own rotary base, dense
layers where ``mlp_layer_types`` says) and Flint (Qwen3-MoE's attention with attention sinks, rotary on the sliding
layers only, a sigmoid router).

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
)
from jllm.models.families.mixtures import _check_top_k
from jllm.models.model_args import ModelArgs, WeightMap
from jllm.models.moe import GroupedRouting


def kolibri1(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Kolibri-1: per-head q/k RMSNorms; sliding layers (by default four of every five) rotated, global ones without
    rotary (every layer rotated where ``sliding_window`` is null); norms on both blocks' inputs and outputs; in every
    layer a mixture of ``num_local_experts`` SwiGLUs chosen by router logit plus ``expert_bias``, weighted by the
    sigmoid of their logits (renormalised where ``norm_topk_prob``), beside an ungated shared SwiGLU. Kolibri1Config's
    defaults for what a config leaves out."""
    n = cfg["num_hidden_layers"]
    defaults = dict(head_dim=128, num_key_value_heads=4, rms_norm_eps=1e-6, max_position_embeddings=262144)
    cfg = {**defaults, "sliding_window": 513, **cfg}
    experts, top_k = _experts(cfg, "Kolibri-1", 384, 6)
    base = base_args(cfg, dtype)
    rope = read_rope(cfg, base["head_dim"])
    ropes = {SLIDING: rope, FULL: None if cfg["sliding_window"] else rope}
    layers = typed_layers(cfg, ropes, [FULL if (i + 1) % 5 == 0 else SLIDING for i in range(n)])
    rename = (
        ("attn_out_norm", "post_attn_norm"),
        ("mlp_out_norm", "post_ffn_norm"),
        ("experts", "experts.{e}"),
        ("shared_expert", "shared_experts"),
        ("mlp.gate.e_score_correction_bias", "moe.router.expert_bias"),
    )
    return ModelArgs(
        **{**base, "intermediate_size": cfg.get("moe_intermediate_size", 512)},
        layers=layers,
        qk_norm=True,
        sandwich_norms=True,
        mlp_act=activation(cfg, "hidden_act", "silu", "Kolibri-1"),
        num_experts=experts,
        experts_per_token=top_k,
        experts_renormalize=bool(cfg.get("norm_topk_prob", False)),
        shared_expert_size=cfg.get("shared_expert_intermediate_size", 512),
        shared_expert_gated=False,
        moe_routing=GroupedRouting("sigmoid", logit_bias=True),
        weights=WeightMap(rename=rename),
    )


# MellumConfig's rotary where a config names none
MELLUM_ROPE = {
    FULL: {"rope_type": "default", "rope_theta": 500000.0},
    SLIDING: {"rope_type": "default", "rope_theta": 10000.0},
}


def mellum(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Mellum 2: Qwen3-MoE's attention (per-head q/k RMSNorms) with sliding and global layers (``layer_types``, all
    global by default), each type its own rotary (``rope_parameters`` by type); Qwen3-MoE's softmax top-k mixture
    (renormalised where ``norm_topk_prob``, on by default) where ``mlp_layer_types`` says "sparse" (all by default),
    dense SwiGLUs of ``intermediate_size`` elsewhere. Its multi-token prediction layer is not read."""
    n = cfg["num_hidden_layers"]
    defaults = dict(head_dim=128, num_key_value_heads=4, rms_norm_eps=1e-6, max_position_embeddings=131072)
    cfg = {**defaults, "sliding_window": 1024, **cfg}
    experts, top_k = _experts(cfg, "Mellum", 64, 8)
    base = base_args(cfg, dtype)
    layers = typed_layers(cfg, per_type_ropes(cfg, base["head_dim"], MELLUM_ROPE), [FULL] * n)
    kinds = cfg.get("mlp_layer_types") or ["sparse"] * n
    bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(
        **{**base, "intermediate_size": cfg.get("moe_intermediate_size", 896)},
        layers=dense_mlps(layers, kinds, base["intermediate_size"], "Mellum"),
        qk_norm=True,
        qkv_bias=bias,
        o_bias=bias,
        mlp_act=activation(cfg, "hidden_act", "silu", "Mellum"),
        num_experts=experts,
        experts_per_token=top_k,
        experts_renormalize=bool(cfg.get("norm_topk_prob", True)),
        weights=WeightMap(rename=(("experts", "experts.{e}"),)),
    )


def _experts(cfg: dict[str, Any], family: str, experts: int, top_k: int) -> tuple[int, int]:
    """The experts' count (``num_local_experts``, or ``num_experts``) and how many a token takes, checked."""
    experts = cfg.get("num_local_experts") or cfg.get("num_experts") or experts
    top_k = cfg.get("num_experts_per_tok", top_k)
    _check_top_k(family, top_k, experts, "num_local_experts")
    return experts, top_k


def flint(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Flint: Qwen3-MoE's attention (per-head q/k RMSNorms) with a learned sink logit per head (``softmax_offset``),
    the rotary on the sliding layers only (by default all but the first two, every fourth from the second and the
    last); dense SwiGLUs in ``mlp_only_layers`` (the first two by default), elsewhere the top ``num_experts_per_tok``
    sigmoid scores of a float32 router (renormalised where ``norm_topk_prob``) beside an ungated shared SwiGLU.
    FlintConfig's defaults for what a config leaves out."""
    n = cfg["num_hidden_layers"]
    defaults = dict(head_dim=128, num_key_value_heads=4, rms_norm_eps=1e-6, max_position_embeddings=262144)
    cfg = {**defaults, "sliding_window": 513, **cfg}
    experts, top_k = _experts(cfg, "Flint", 256, 6)
    step, dense = cfg.get("decoder_sparse_step", 1), cfg.get("mlp_only_layers")
    dense = [0, 1] if dense is None else dense
    kinds = ["dense" if i in dense or (i + 1) % step else "sparse" for i in range(n)]
    base = base_args(cfg, dtype)
    rope = read_rope(cfg, base["head_dim"])
    default = [FULL if i < 2 or i % 4 == 1 or i == n - 1 else SLIDING for i in range(n)]
    layers = typed_layers(cfg, {SLIDING: rope, FULL: None}, default)
    bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(
        **{**base, "intermediate_size": cfg.get("moe_intermediate_size", 512)},
        layers=dense_mlps(layers, kinds, base["intermediate_size"], "Flint"),
        qk_norm=True,
        qkv_bias=bias,
        o_bias=bias,
        attn_sinks=True,
        mlp_act=activation(cfg, "hidden_act", "silu", "Flint"),
        num_experts=experts,
        experts_per_token=top_k,
        experts_renormalize=bool(cfg.get("norm_topk_prob", True)),
        expert_routing="sigmoid",
        router_float32=True,
        shared_expert_size=cfg.get("shared_expert_intermediate_size", 1024),
        shared_expert_gated=False,
        weights=WeightMap(rename=(("experts", "experts.{e}"), ("sinks", "softmax_offset"))),
    )

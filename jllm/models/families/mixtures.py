"""The mixture-of-experts families: a routed mixture of SwiGLU experts (``jllm.models.moe``) in place of each MLP
(Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from jllm.models.decoder import LayerSpec, ModelArgs, WeightMap
from jllm.models.families.common import FULL, SLIDING, activation, base_args, layer_windows, read_rope, uniform


def _check_top_k(family: str, top_k: int, experts: int, experts_key: str) -> None:
    """Refuses a router that would pick no expert or more experts than there are."""
    if not 0 < top_k <= experts:
        raise ValueError(f"{family} num_experts_per_tok={top_k} must be between 1 and {experts_key}={experts}")


def mixtral(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Mixtral: Mistral's attention with a routed mixture of SwiGLU experts (top ``num_experts_per_tok`` of
    ``num_local_experts``) in place of the MLP."""
    experts, top_k = cfg["num_local_experts"], cfg.get("num_experts_per_tok", 2)
    _check_top_k("Mixtral", top_k, experts, "num_local_experts")
    base, layers = uniform(cfg, dtype, SLIDING)
    return ModelArgs(
        **base,
        layers=layers,
        mlp_act=activation(cfg, "hidden_act", "silu", "Mixtral"),
        num_experts=experts,
        experts_per_token=top_k,
        weights=WeightMap(
            gate_up=("w1", "w3"), rename=(("mlp", "block_sparse_moe"), ("experts", "experts.{e}"), ("down_proj", "w2"))
        ),
    )


def _qwen_moe(cfg: dict[str, Any], dtype: Any, family: str) -> dict[str, Any]:
    """Qwen2/3-MoE's mixture: top ``num_experts_per_tok`` of ``num_experts`` SwiGLU experts of width
    ``moe_intermediate_size`` in every layer, renormalised where ``norm_topk_prob``. Layouts with dense layers
    between the sparse ones are refused."""
    experts = cfg.get("num_experts") or cfg.get("num_local_experts") or 0
    top_k = cfg.get("num_experts_per_tok", 0)
    _check_top_k(family, top_k, experts, "num_experts")
    step, dense = cfg.get("decoder_sparse_step", 1), cfg.get("mlp_only_layers") or []
    if step != 1 or dense:
        raise ValueError(
            f"{family} decoder_sparse_step={step}, mlp_only_layers={dense} is not supported (supported: a mixture of "
            "experts in every layer, decoder_sparse_step=1 and mlp_only_layers=[])"
        )
    return dict(
        intermediate_size=cfg["moe_intermediate_size"],
        mlp_act=activation(cfg, "hidden_act", "silu", family),
        num_experts=experts,
        experts_per_token=top_k,
        experts_renormalize=bool(cfg.get("norm_topk_prob", False)),
    )


def qwen3_moe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen3-MoE: Qwen3's attention (q/k norms) with a routed mixture of SwiGLU experts in every layer."""
    base, layers = uniform(cfg, dtype, SLIDING if cfg.get("use_sliding_window") else FULL)
    bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(
        **{**base, **_qwen_moe(cfg, dtype, "Qwen3-MoE")},
        layers=layers,
        qk_norm=True,
        qkv_bias=bias,
        o_bias=bias,
        weights=WeightMap(rename=(("experts", "experts.{e}"),)),
    )


def qwen2_moe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): Qwen2's attention (qkv bias) with routed SwiGLU experts and a
    shared expert every token takes, scaled by a sigmoid gate."""
    base = base_args(cfg, dtype)
    # transformers' layer kinds without ``layer_types``: sliding on even layers below max_window_layers
    below = cfg.get("max_window_layers", 28) if cfg.get("use_sliding_window") else 0
    default = [SLIDING if i % 2 == 0 and i < below else FULL for i in range(base["num_layers"])]
    layers = tuple(LayerSpec(read_rope(cfg, base["head_dim"]), w) for w in layer_windows(cfg, default))
    return ModelArgs(
        **{**base, **_qwen_moe(cfg, dtype, "Qwen2-MoE")},
        layers=layers,
        qkv_bias=bool(cfg.get("qkv_bias", True)),
        shared_expert_size=cfg["shared_expert_intermediate_size"],
        weights=WeightMap(rename=(("experts", "experts.{e}"),)),
    )


def olmoe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """OLMoE: OLMo 2's q/k RMSNorms over the whole projection, then q, k and v clipped to ``clip_qkv`` where set,
    pre-norm RMSNorms, and in every layer a routed mixture of ``num_experts`` SwiGLU experts of width
    ``intermediate_size`` (top ``num_experts_per_tok``, renormalised where ``norm_topk_prob``)."""
    experts, top_k = cfg.get("num_experts", 64), cfg.get("num_experts_per_tok", 8)
    _check_top_k("OLMoE", top_k, experts, "num_experts")
    base, layers = uniform(cfg, dtype, FULL)
    bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(
        **base,
        layers=layers,
        qk_norm=True,
        qk_norm_all_heads=True,
        qkv_clip=cfg.get("clip_qkv"),
        qkv_bias=bias,
        o_bias=bias,
        mlp_act=activation(cfg, "hidden_act", "silu", "OLMoE"),
        num_experts=experts,
        experts_per_token=top_k,
        experts_renormalize=bool(cfg.get("norm_topk_prob", False)),
        weights=WeightMap(rename=(("experts", "experts.{e}"),)),
    )

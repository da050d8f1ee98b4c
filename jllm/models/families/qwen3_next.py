"""The gated-DeltaNet hybrids: Qwen3-Next and Qwen3.5 (dense and MoE). Most layers are gated DeltaNet
(``jllm.models.gated_deltanet``, a recurrent mixer with a per-sequence state), every ``full_attention_interval``-th
(``layer_types``) is full attention: q/k RMSNorms, a partial rotary, its output gated per channel by a sigmoid of
rows stored per head after the head's query rows in ``q_proj``. Norms are zero-centred (``1 + w``). Qwen3-Next's and
Qwen3.5-MoE's MLPs are a softmax top-k mixture with a shared expert scaled by a sigmoid gate (Qwen2-MoE's); Qwen3.5's
a dense SwiGLU. Qwen3.5's M-RoPE sections rotate a text token's channels by its one position, the plain rotary.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jllm.models.families.common import FULL, activation, base_args, read_rope
from jllm.models.gated_deltanet import DeltaNetSpec
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap

LINEAR = "linear_attention"
MROPE_KEYS = ("mrope_section", "mrope_interleaved")  # M-RoPE's settings: for text, the plain rotary
# the attention's output gate stored per head after its query rows; the recurrent mixer under transformers' name
WEIGHTS = WeightMap(qkv_layout="gated", rename=(("attn_gate", "q_proj"), ("mixer", "linear_attn")))


def qwen3_next(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen3-Next (``Qwen3NextForCausalLM``): Qwen3-Next's ``in_proj_qkvz`` / ``in_proj_ba``, a mixture of experts in
    every ``decoder_sparse_step``-th layer not in ``mlp_only_layers`` (a dense SwiGLU of ``intermediate_size`` in the
    others)."""
    base, layers = _hybrid(cfg, dtype, "Qwen3-Next", fused_qkvz=True)
    experts, step, dense = cfg.get("num_experts", 512), cfg.get("decoder_sparse_step", 1), cfg.get("mlp_only_layers")
    sparse = [experts > 0 and i not in (dense or []) and (i + 1) % step == 0 for i in range(base["num_layers"])]
    layers = tuple(
        dataclasses.replace(spec, dense_mlp_size=None if moe else cfg["intermediate_size"])
        for spec, moe in zip(layers, sparse, strict=True)
    )
    if not any(sparse):
        return ModelArgs(**base, layers=layers)
    return _with_mixture(cfg, base, layers, "Qwen3-Next", bool(cfg.get("norm_topk_prob", True)))


def qwen3_5(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen3.5 (``Qwen3_5ForCausalLM``, the ``qwen3_5_text`` config): Qwen3.5's ``in_proj_qkv`` / ``in_proj_z`` /
    ``in_proj_b`` / ``in_proj_a``, a dense SwiGLU in every layer."""
    base, layers = _hybrid(cfg, dtype, "Qwen3.5", fused_qkvz=False)
    return ModelArgs(**base, layers=layers)


def qwen3_5_moe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen3.5-MoE (``Qwen3_5MoeForCausalLM``, ``qwen3_5_moe_text``): Qwen3.5's layers with a mixture of experts in
    every layer, its top-k weights always renormalised."""
    base, layers = _hybrid(cfg, dtype, "Qwen3.5-MoE", fused_qkvz=False)
    return _with_mixture(cfg, base, layers, "Qwen3.5-MoE", True)


def _hybrid(
    cfg: dict[str, Any], dtype: Any, family: str, *, fused_qkvz: bool
) -> tuple[dict[str, Any], tuple[LayerSpec, ...]]:
    """The settings the three share and each layer's mixer from ``layer_types`` (default: every
    ``full_attention_interval``-th layer, 4, full attention)."""
    cfg = {"head_dim": 256, **cfg}
    base = base_args(cfg, dtype)
    n = base["num_layers"]
    interval = cfg.get("full_attention_interval", 4)
    types = cfg.get("layer_types") or [FULL if (i + 1) % interval == 0 else LINEAR for i in range(n)]
    if len(types) != n or any(kind not in (FULL, LINEAR) for kind in types):
        raise ValueError(f"{family} layer_types={types!r} must name each of the {n} layers as {FULL!r} or {LINEAR!r}")
    if cfg.get("attention_bias"):
        raise ValueError(f"{family} attention_bias=True is not supported (supported: False, as the released models)")
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    params = {"partial_rotary_factor": 0.25, **{k: v for k, v in params.items() if k not in MROPE_KEYS}}
    if params.get("rope_type") == "mrope":
        params["rope_type"] = "default"
    rope = read_rope(cfg, base["head_dim"], params)
    layers = tuple(LayerSpec(rope) if kind == FULL else LayerSpec(None, mixer="gated_deltanet") for kind in types)
    deltanet = DeltaNetSpec(
        num_k_heads=cfg.get("linear_num_key_heads", 16),
        num_v_heads=cfg.get("linear_num_value_heads", 32),
        head_k_dim=cfg.get("linear_key_head_dim", 128),
        head_v_dim=cfg.get("linear_value_head_dim", 128),
        conv_kernel=cfg.get("linear_conv_kernel_dim", 4),
        fused_qkvz=fused_qkvz,
    )
    settings = dict(
        norm="rms_unit_offset",
        qk_norm=True,
        attn_output_gate="sigmoid",
        mlp_act=activation(cfg, "hidden_act", "silu", family),
        deltanet=deltanet,
        weights=WEIGHTS,
    )
    return {**base, **settings}, layers


def _with_mixture(
    cfg: dict[str, Any], base: dict[str, Any], layers: tuple[LayerSpec, ...], family: str, renormalize: bool
) -> ModelArgs:
    """The model with Qwen2-MoE's mixture: top ``num_experts_per_tok`` of ``num_experts`` SwiGLU experts of
    ``moe_intermediate_size``, and a sigmoid-gated shared expert of ``shared_expert_intermediate_size``."""
    experts, top_k = cfg.get("num_experts", 512), cfg.get("num_experts_per_tok", 10)
    if not 0 < top_k <= experts:
        raise ValueError(f"{family} num_experts_per_tok={top_k} must be between 1 and num_experts={experts}")
    weights = dataclasses.replace(base["weights"], rename=(*base["weights"].rename, ("experts", "experts.{e}")))
    return ModelArgs(
        **{**base, "intermediate_size": cfg.get("moe_intermediate_size", 512), "weights": weights},
        layers=layers,
        num_experts=experts,
        experts_per_token=top_k,
        experts_renormalize=renormalize,
        shared_expert_size=cfg.get("shared_expert_intermediate_size", 512),
    )

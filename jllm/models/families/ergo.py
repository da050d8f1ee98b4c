"""Ergo (Amazon's ``ErgoForCausalLM``): Gemma 2's sandwich of norms (float32-weighted RMSNorms) around each block,
each block's output and residual mixed by a learned gate per channel (``layers.ResidualGate``); grouped-query
attention from one fused ``wqkv`` (q, k, v heads in turn) with per-head q/k norms, the sliding layers rotating
neighbouring channel pairs, every ``global_attention_every_n_layers``-th layer global without positions, its scores
times ``global_attention_scale`` where set; squared-ReLU MLPs: a dense one in the first ``num_dense_blocks`` layers,
elsewhere DeepSeek-V3's biased sigmoid router (one group, weights renormalised and times
``moe_routed_scaling_factor``) over plain experts, each expert's output RMS-normed with a weight of its own, beside a
shared expert whose output is normed too. The checkpoint keeps its training framework's names and layouts (the
router's and the shared expert's kernels stored ``[in, out]``), which ``WeightMap`` reads as transformers' conversion
does.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jllm.models.families.common import FULL, SLIDING, dense_mlps, read_rope, whole_head_rotary
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap
from jllm.models.moe import GroupedRouting

# ErgoConfig's defaults for the keys a config leaves out
DEFAULTS = dict(
    vocab_size=262144,
    hidden_size=8192,
    num_hidden_layers=64,
    num_attention_heads=64,
    num_key_value_heads=8,
    rms_norm_eps=1e-12,
    max_position_embeddings=524288,
    sliding_window=512,
)
RENAME = (
    ("embed_tokens", "tok_embeddings"),
    ("lm_head", "output"),
    ("self_attn", "attention"),
    ("o_proj", "wo"),
    ("input_layernorm", "attention_norm"),
    ("attn_out_norm", "post_attention_norm"),
    ("post_attention_layernorm", "ffn_norm"),  # the MLP's input norm
    ("mlp_out_norm", "post_ffn_norm"),
    ("attention_residual_gate.weight", "post_attention_residual.scale"),
    ("feedforward_residual_gate.weight", "post_ffn_residual.scale"),
    ("mlp", "feed_forward"),
    ("up_proj", "up"),  # the dense layers' MLP (the experts' stacked kernels keep their names)
    ("down_proj", "down"),
    ("experts", ""),
    ("gate.kernel", "gate_kernel"),  # the router's kernel, stored [in, out]
    ("gate.e_score_correction_bias", "router_bias"),
    ("experts.post_expert_norm", "expert_output_norm.scale"),
    ("shared_expert.up_proj.kernel", "shared_up_proj"),  # stored [in, out]
    ("shared_expert.down_proj.kernel", "shared_down_proj"),
    ("shared_expert_norm.weight", "shared_expert_output_norm.scale"),
)


def ergo(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Ergo: ``layer_types`` and ``mlp_layer_types`` as ErgoConfig derives them; the head width ``hidden_size /
    num_attention_heads`` whatever ``head_dim`` says (transformers' attention takes it so); the sliding layers' rotary
    from ``rope_parameters`` (flat, or under "sliding_attention")."""
    cfg = {**DEFAULTS, **cfg}
    n, heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    every = cfg.get("global_attention_every_n_layers", 4)
    types = cfg.get("layer_types") or [SLIDING if (i + 1) % every else FULL for i in range(n)]
    dense = cfg.get("num_dense_blocks", 1)
    kinds = cfg.get("mlp_layer_types") or ["dense" if i < dense else "sparse" for i in range(n)]
    if len(types) != n or any(kind not in (FULL, SLIDING) for kind in types):
        raise ValueError(f"Ergo layer_types={types!r} must name each of the {n} layers as {FULL!r} or {SLIDING!r}")
    head_dim = cfg["hidden_size"] // heads
    params = cfg.get("rope_parameters") or {}
    params = params.get(SLIDING) or ({} if FULL in params else params)
    rope = dataclasses.replace(
        read_rope(whole_head_rotary(cfg), head_dim, whole_head_rotary({"rope_theta": 1e6, **params})), interleaved=True
    )
    scale = cfg.get("global_attention_scale") or 1.0
    by_kind = {SLIDING: LayerSpec(rope, cfg["sliding_window"]), FULL: LayerSpec(None, score_scale=scale)}
    layers = dense_mlps(
        tuple(by_kind[kind] for kind in types), kinds, cfg.get("first_dense_intermediate_size", 32768), "Ergo"
    )
    experts, top_k = cfg.get("num_experts", 256), cfg.get("num_experts_per_tok", 8)
    if not 0 < top_k <= experts:
        raise ValueError(f"Ergo num_experts_per_tok={top_k} must be between 1 and num_experts={experts}")
    return ModelArgs(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg.get("moe_intermediate_size", 4096),
        num_layers=n,
        num_heads=heads,
        num_kv_heads=cfg["num_key_value_heads"],
        head_dim=head_dim,
        norm_eps=cfg["rms_norm_eps"],
        max_position_embeddings=cfg["max_position_embeddings"],
        tie_word_embeddings=False,  # Ergo's LM head is its own (transformers never ties it)
        dtype=dtype,
        layers=layers,
        norm="rms_float32",
        qk_norm=True,
        sandwich_norms=True,
        residual_gates=True,
        mlp_act="relu2",
        mlp_gated=False,
        num_experts=experts,
        experts_per_token=top_k,
        moe_routing=GroupedRouting("sigmoid", scale=cfg.get("moe_routed_scaling_factor", 8**0.5)),
        shared_expert_size=cfg.get("shared_intermediate_size", 8192),
        shared_expert_gated=False,
        expert_out_norms=True,
        weights=WeightMap(qkv=("wqkv",), qkv_layout="concat", rename=RENAME, prefix="", expert_params="in_out"),
    )

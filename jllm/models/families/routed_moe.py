"""Mixtures of experts on grouped-query attention behind a sigmoid router with a choice bias (DeepSeek-V3's rule,
``jllm.models.moe.grouped_top_k``): MiniMax-M2 (Mixtral's layout and names), MiniMax-M3's text model (M2's successor:
Gemma's norms, clamped SwiGLUs, a shared expert, dense layers, block-sparse layers served within their budget),
K-EXAONE (EXAONE 4's attention with V3's mixture) and MiniCPM5-MoE (Llama's attention with an output gate, V3's
mixture).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jllm.models.families.common import FULL, base_args, dense_mlps, read_rope, whole_head_rotary
from jllm.models.families.deepseek import v3_mixture
from jllm.models.families.llama import exaone4
from jllm.models.layers import ClampedSwiGLU
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap
from jllm.models.moe import GroupedRouting

# the router's choice bias as the two families store it: on the MoE block, beside the router's weight
BIAS_ON_BLOCK = ("gate.e_score_correction_bias", "e_score_correction_bias")


def minimax_m2(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """MiniMax-M2 / M2.1: Mixtral's layout and tensor names, RMSNorms over the whole q and k projections (OLMo 2's),
    the rotary on each head's first ``rotary_dim`` channels (``partial_rotary_factor`` where given), and in every
    layer the top ``num_experts_per_tok`` of ``num_local_experts`` SwiGLU experts by sigmoid score plus the block's
    ``e_score_correction_bias``, weighted by their sigmoid scores renormalised."""
    defaults = dict(head_dim=128, rope_theta=5e6, max_position_embeddings=196608, num_local_experts=256)
    cfg = {**defaults, "num_experts_per_tok": 8, **cfg}
    experts, top_k = cfg["num_local_experts"], cfg["num_experts_per_tok"]
    if not 0 < top_k <= experts:
        raise ValueError(f"MiniMax-M2 num_experts_per_tok={top_k} must be between 1 and num_local_experts={experts}")
    base = base_args(cfg, dtype)
    # transformers reads the released checkpoints' legacy rotary_dim as the fraction, unless one is given
    rotary_dim = cfg.get("rotary_dim")
    fraction = cfg.get("partial_rotary_factor") or (rotary_dim / base["head_dim"] if rotary_dim else None)
    rope = read_rope({**cfg, "partial_rotary_factor": fraction}, base["head_dim"])
    rename = (("mlp", "block_sparse_moe"), ("experts", "experts.{e}"), ("down_proj", "w2"), BIAS_ON_BLOCK)
    return ModelArgs(
        **base,
        layers=(LayerSpec(rope),) * base["num_layers"],
        qk_norm=True,
        qk_norm_all_heads=True,
        num_experts=experts,
        experts_per_token=top_k,
        moe_routing=GroupedRouting("sigmoid"),
        weights=WeightMap(gate_up=("w1", "w3"), rename=rename),
    )


# MiniMaxM3VLTextConfig's defaults for the keys the reader takes
MINIMAX_M3_DEFAULTS = dict(
    head_dim=128,
    max_position_embeddings=524_288,
    num_local_experts=128,
    num_experts_per_tok=4,
    dense_intermediate_size=12_288,
    shared_intermediate_size=3072,
    routed_scaling_factor=2.0,
    swiglu_alpha=1.702,
    swiglu_limit=7.0,
    index_block_size=128,
    index_topk_blocks=16,
    rope_theta=5e6,
)
M3_SPARSE = "minimax_m3_sparse"
# the sparse layers' indexer (its transformers names, and the hub's in-memory ones): within its budget every key
# block is kept, so it never runs
M3_INDEXER_SKIPPED = (
    (
        r"\.self_attn\.(indexer\.|index_[qk]_(proj|norm)\.)",
        "block-sparse indexer: within index_topk_blocks * index_block_size every key block is kept, so it never runs",
    ),
)  # a layer whose attention keeps its indexer's best key blocks


def minimax_m3(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """MiniMax-M3's text model (``MiniMaxM3VLForCausalLM``): M2's attention with Gemma's ``1 + w`` RMSNorms (per-head
    q/k norms) and the rotary on ``partial_rotary_factor`` of each head (transformers reads no ``rotary_dim``); each
    layer a mixture (``mlp_layer_types`` "sparse": top ``num_experts_per_tok`` by sigmoid score plus a choice bias,
    the renormalised scores times ``routed_scaling_factor``, beside an ungated shared expert) or a dense MLP of
    ``dense_intermediate_size``, every one a gpt-oss clamped SwiGLU (``swiglu_alpha``, ``swiglu_limit``) over one
    fused ``gate_up_proj``. Its ``minimax_m3_sparse`` layers' indexer keeps each query's best ``index_topk_blocks``
    key blocks of ``index_block_size``: served up to that many tokens, where it keeps every block and is causal
    attention (``ModelArgs.indexer_budget``); their indexer is not read."""
    cfg = {**MINIMAX_M3_DEFAULTS, **cfg}
    experts, top_k, n = cfg["num_local_experts"], cfg["num_experts_per_tok"], cfg["num_hidden_layers"]
    if not 0 < top_k <= experts:
        raise ValueError(f"MiniMax-M3 num_experts_per_tok={top_k} must be between 1 and num_local_experts={experts}")
    types = cfg.get("layer_types") or [FULL] * n
    if unknown := sorted(set(types) - {FULL, M3_SPARSE}):
        raise ValueError(f"MiniMax-M3 layer_types {unknown} are not supported (supported: {FULL!r}, {M3_SPARSE!r})")
    base = base_args(cfg, dtype)
    rope = read_rope(cfg, base["head_dim"])  # its partial_rotary_factor, never the legacy rotary_dim
    glu = ClampedSwiGLU(float(cfg["swiglu_limit"]), float(cfg["swiglu_alpha"]))
    layer = LayerSpec(rope, experts_glu=glu, shared_expert_glu=glu, mlp_glu=glu)
    kinds = cfg.get("mlp_layer_types") or ["sparse"] * n
    budget = cfg["index_topk_blocks"] * cfg["index_block_size"] if M3_SPARSE in types else None
    rename = (("shared_expert", "shared_experts"),)
    return ModelArgs(
        **base,
        layers=dense_mlps((layer,) * n, kinds, cfg["dense_intermediate_size"], "MiniMax-M3"),
        norm="rms_unit_offset",
        qk_norm=True,
        num_experts=experts,
        experts_per_token=top_k,
        shared_expert_size=cfg["shared_intermediate_size"],
        shared_expert_gated=False,
        moe_routing=GroupedRouting("sigmoid", scale=float(cfg["routed_scaling_factor"])),
        indexer_budget=budget,
        sparse_attention=("MiniMax-M3 sparse", "index_topk_blocks * index_block_size"),
        weights=WeightMap(gate_up=("gate_up_proj",), rename=rename, expert_params="out_in", skipped=M3_INDEXER_SKIPPED),
    )


def exaone_moe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """K-EXAONE (``ExaoneMoeForCausalLM``): EXAONE 4's attention (per-head q/k RMSNorms; sliding layers with the
    rotary, global ones without) in Llama's pre-norm layers, and V3's mixture: ``num_experts`` SwiGLU experts of
    ``moe_intermediate_size`` beside ``num_shared_experts`` plain shared ones, a sigmoid router whose choice bias the
    MoE block keeps, each layer dense or a mixture as ``mlp_layer_types`` says (by default the first
    ``first_k_dense_replace``)."""
    defaults = dict(num_experts=64, num_experts_per_tok=8, num_shared_experts=1, moe_intermediate_size=1024)
    cfg = {**defaults, "routed_scaling_factor": 2.5, "first_k_dense_replace": 1, **cfg}
    attention = exaone4(cfg, dtype)
    mixture_cfg = {**cfg, "n_routed_experts": cfg["num_experts"], "n_shared_experts": cfg["num_shared_experts"]}
    groups = (cfg.get("n_group") or 1, cfg.get("topk_group") or 1)
    renormalize, mlp_types = bool(cfg.get("norm_topk_prob", True)), cfg.get("mlp_layer_types")
    mixture, dense = v3_mixture(
        mixture_cfg, attention.num_layers, "K-EXAONE", "sigmoid", groups, renormalize, mlp_types
    )
    weights = mixture.pop("weights")
    return dataclasses.replace(
        attention,
        intermediate_size=cfg["moe_intermediate_size"],
        layers=tuple(dataclasses.replace(s, dense_mlp_size=d) for s, d in zip(attention.layers, dense, strict=True)),
        pre_norms=True,
        sandwich_norms=False,
        weights=dataclasses.replace(weights, rename=(*weights.rename, BIAS_ON_BLOCK)),
        **mixture,
    )


def minicpm5_moe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """MiniCPM5-MoE: Llama's attention (biases on q/k/v/o where ``attention_bias``) whose output is gated per channel
    by the sigmoid of a second projection, stored per head after the head's query rows in ``q_proj``; V3's router
    (group-limited where ``n_group``), mixture and shared experts, each layer dense or a mixture as
    ``mlp_layer_types`` says (by default the first ``first_k_dense_replace``, 1)."""
    defaults = dict(head_dim=128, num_key_value_heads=2, rope_theta=5e6, routed_scaling_factor=3.66)
    cfg = {**defaults, "n_shared_experts": 1, "first_k_dense_replace": 1, "max_position_embeddings": 524288, **cfg}
    if cfg.get("use_gated_attention") is False:  # transformers refuses it too
        raise ValueError("MiniCPM5-MoE use_gated_attention=False is not supported (supported: True)")
    base = base_args(cfg, dtype)
    groups = (cfg.get("n_group") or 1, cfg.get("topk_group") or 1)
    renormalize, mlp_types = bool(cfg.get("norm_topk_prob", True)), cfg.get("mlp_layer_types")
    mixture, dense = v3_mixture(cfg, base["num_layers"], "MiniCPM5-MoE", "sigmoid", groups, renormalize, mlp_types)
    weights = mixture.pop("weights")
    rope = read_rope(whole_head_rotary(cfg), base["head_dim"])
    bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(
        **{**base, "intermediate_size": cfg["moe_intermediate_size"]},
        layers=tuple(LayerSpec(rope, dense_mlp_size=size) for size in dense),
        qkv_bias=bias,
        o_bias=bias,
        attn_output_gate="sigmoid",
        weights=dataclasses.replace(weights, qkv_layout="gated", rename=(*weights.rename, ("attn_gate", "q_proj"))),
        **mixture,
    )

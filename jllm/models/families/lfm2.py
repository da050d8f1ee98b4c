"""Liquid's LFM2, LFM2-MoE and LFM3: most layers a gated short convolution (``jllm.models.short_conv``, its conv state
the layer's per-sequence state), the others (``layer_types`` "full_attention", or an older config's
``full_attn_idxs``; LFM3's "sliding_attention" too) grouped-query attention with per-head q/k RMSNorms and the rotary;
every layer a SwiGLU (``w1``, ``w3``, ``w2``) or, in LFM2-MoE's layers after its ``num_dense_layers``, a mixture of
SwiGLU experts under a sigmoid router whose choice bias the block keeps (``expert_bias``, DeepSeek-V3's rule). LFM3
adds norms on the blocks' outputs and a sigmoid gate per head on the attention's.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jllm.models.families.common import (
    FULL,
    SLIDING,
    base_args,
    check_attends,
    per_type_ropes,
    read_rope,
    whole_head_rotary,
)
from jllm.models.families.deepseek import v3_mixture
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap
from jllm.models.short_conv import ShortConvSpec

CONV = "conv"
RENAME = (
    ("mixer", "conv"),
    ("o_proj", "out_proj"),
    ("q_norm", "q_layernorm"),
    ("k_norm", "k_layernorm"),
    ("input_layernorm", "operator_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("mlp", "feed_forward"),
    ("down_proj", "w2"),
    ("norm", "embedding_norm"),  # the final norm, after the last layer despite its name
)
# the block's choice bias, where our router keeps it
EXPERT_BIAS = ("gate.e_score_correction_bias", "expert_bias")
# LFM3's names where they are not LFM2's: Qwen3's attention (``q_norm``, ``k_norm``, ``o_proj``), its output gate,
# the norms on the blocks' outputs
LFM3_RENAME = (
    *(pair for pair in RENAME if pair[0] not in ("o_proj", "q_norm", "k_norm")),
    ("attn_gate", "gate_proj"),
    ("attn_out_norm", "post_operator_norm"),
    ("mlp_out_norm", "post_ffn_norm"),
)
# Lfm3Config's rotary where a config names none: the full layers' proportional (half of each head's channel pairs
# turn), the sliding layers' plain
LFM3_ROPES = {
    FULL: {"rope_type": "proportional", "rope_theta": 1e6, "partial_rotary_factor": 0.5},
    SLIDING: {"rope_type": "default", "rope_theta": 1e4},
}
# Lfm3Config's defaults for the keys read here
LFM3_DEFAULTS = dict(
    vocab_size=128_000,
    intermediate_size=7680,
    num_key_value_heads=4,
    head_dim=128,
    conv_L_cache=7,
    sliding_window=256,
    use_sandwich_norm=True,
    use_attention_gate=True,
)


def lfm2(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """LFM2 (``Lfm2ForCausalLM``): its SwiGLU ``intermediate_size`` (``block_ff_dim`` where given) cut to two
    thirds, times ``block_ffn_dim_multiplier`` and rounded up to ``block_multiple_of`` where
    ``block_auto_adjust_ff_dim`` (transformers' ``Lfm2MLP``)."""
    width = cfg.get("block_ff_dim", cfg.get("intermediate_size", 12288))  # the older key first, as transformers
    if cfg.get("block_auto_adjust_ff_dim", True):
        width = int(2 * width / 3)
        multiplier = cfg.get("block_ffn_dim_multiplier", 1.0)
        if multiplier is not None:
            multiple = cfg.get("block_multiple_of", 256)
            width = multiple * -(-int(multiplier * width) // multiple)
    return ModelArgs(**_settings({**cfg, "intermediate_size": width}, dtype, "LFM2"))


def lfm2_moe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """LFM2-MoE (``Lfm2MoeForCausalLM``): LFM2's layers, a dense SwiGLU of ``intermediate_size`` in the first
    ``num_dense_layers``, then the top ``num_experts_per_tok`` of ``num_experts`` experts of ``moe_intermediate_size``
    by sigmoid score plus ``expert_bias``, weighted by their scores (renormalised where ``norm_topk_prob``) times
    ``routed_scaling_factor``. Experts stored per expert (``experts.{e}.w1``, as released and as transformers saves)."""
    defaults = dict(intermediate_size=7168, moe_intermediate_size=1792, num_experts=32, num_experts_per_tok=4)
    cfg = {**defaults, "num_dense_layers": 2, **cfg}
    if not cfg.get("use_expert_bias", True):
        raise ValueError("LFM2-MoE use_expert_bias=False is not supported (supported: True, as released)")
    settings = _settings(cfg, dtype, "LFM2-MoE")
    mixture_cfg = {
        **cfg,
        "n_routed_experts": cfg["num_experts"],
        "n_shared_experts": 0,
        "first_k_dense_replace": cfg["num_dense_layers"],
    }
    renormalize = bool(cfg.get("norm_topk_prob", True))
    mixture, dense = v3_mixture(mixture_cfg, settings["num_layers"], "LFM2-MoE", "sigmoid", (1, 1), renormalize)
    rename = (*mixture.pop("weights").rename, *settings.pop("weights").rename, EXPERT_BIAS)
    layers = tuple(dataclasses.replace(s, dense_mlp_size=d) for s, d in zip(settings.pop("layers"), dense, strict=True))
    settings |= dict(intermediate_size=cfg["moe_intermediate_size"], layers=layers)
    return ModelArgs(**settings, **mixture, weights=WeightMap(gate_up=("w1", "w3"), rename=rename))


def lfm3(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """LFM3 (``Lfm3ForCausalLM``): LFM2's layers with sliding attention ones too (``layer_types``; by default layer 2
    of every four full, layer 0 of every four after the first sliding over ``sliding_window``, the rest short
    convs), each attention type its own rotary (``rope_parameters`` by type: ``LFM3_ROPES``), Qwen3's attention
    names with a sigmoid gate per head on its output (``gate_proj`` over the block's normed input, where
    ``use_attention_gate``), RMSNorms on both blocks' outputs (where ``use_sandwich_norm``), and a SwiGLU
    ``intermediate_size`` wide as given."""
    n = cfg["num_hidden_layers"]
    default_types = [FULL if i % 4 == 2 else SLIDING if i % 4 == 0 and i > 0 else CONV for i in range(n)]
    cfg = {**LFM3_DEFAULTS, **cfg}
    cfg["layer_types"] = cfg.get("layer_types") or default_types
    settings = _settings(cfg, dtype, "LFM3", LFM3_ROPES)
    gate = bool(cfg["use_attention_gate"])
    return ModelArgs(
        **settings | dict(weights=WeightMap(gate_up=("w1", "w3"), rename=LFM3_RENAME)),
        sandwich_norms=bool(cfg["use_sandwich_norm"]),
        attn_output_gate="sigmoid" if gate else None,
        attn_output_gate_per_head=gate,
    )


def _settings(
    cfg: dict[str, Any], dtype: Any, family: str, rope_types: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The ``ModelArgs`` settings the three share: each layer's kind, the norms (``norm_eps``), the tied embedding
    (``tie_embedding`` where given), the short conv's kernel and biases. ``rope_types``: each attention layer type's
    rotary where ``rope_parameters`` names none (LFM3's full and sliding layers); None: full attention alone, one
    rotary (LFM2's)."""
    n = cfg["num_hidden_layers"]
    types = cfg.get("layer_types")
    if types is None:
        attention = cfg.get("full_attn_idxs")
        types = [FULL if attention is None or i in attention else CONV for i in range(n)]
    kinds = (*(rope_types or (FULL,)), CONV)
    if len(types) != n or any(kind not in kinds for kind in types):
        raise ValueError(
            f"{family} layer_types={types!r} must name each of the {n} layers as one of {', '.join(map(repr, kinds))}"
        )
    tied = cfg.get("tie_embedding", cfg.get("tie_word_embeddings", True))  # the older key first, as transformers
    defaults = dict(num_key_value_heads=8, max_position_embeddings=128_000, rope_theta=1e6)
    cfg = {**defaults, **cfg, "rms_norm_eps": cfg.get("norm_eps", 1e-5), "tie_word_embeddings": tied}
    base = base_args(cfg, dtype)
    ropes = {FULL: read_rope(whole_head_rotary(cfg), base["head_dim"])}
    if rope_types is not None:
        ropes = per_type_ropes(cfg, base["head_dim"], rope_types, factor_in_default=False)
        if missing := sorted(set(types) - {CONV, *ropes}):
            raise ValueError(f"{family} rope_parameters={cfg['rope_parameters']!r} names no rotary for {missing}")
    window = cfg.get("sliding_window")
    layers = tuple(
        LayerSpec(None, mixer="short_conv")
        if kind == CONV
        else LayerSpec(ropes[kind], window if kind == SLIDING else None)
        for kind in types
    )
    check_attends(layers, family)
    short_conv = ShortConvSpec(kernel=cfg.get("conv_L_cache", 3), bias=bool(cfg.get("conv_bias", False)))
    weights = WeightMap(gate_up=("w1", "w3"), rename=RENAME)
    return dict(base, layers=layers, qk_norm=True, short_conv=short_conv, weights=weights)

"""JetMoE: a mixture of attention heads (``jllm.models.moa``) and a mixture of SwiGLU experts, both routed by the
top ``num_experts_per_tok`` of a softmax (renormalised), each expert kernel stored as one stacked tensor as Granite
MoE's, each mixture's output with a bias.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from jllm.models.families.common import FULL, activation, uniform, whole_head_rotary
from jllm.models.families.mixtures import _check_top_k
from jllm.models.model_args import ModelArgs, WeightMap

# transformers builds the layers' norms with JetMoeRMSNorm's default eps whatever rms_norm_eps says
LAYER_NORM_EPS = 1e-6


def jetmoe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """JetMoE: ``num_key_value_heads`` shared K/V heads of ``kv_channels``, each token's queries from its top-k of
    ``num_local_experts`` query experts; the whole head rotated (the original's, and transformers' where
    ``hidden_size / num_attention_heads`` is ``kv_channels``, the only case its rotary runs); a mixture of SwiGLU
    experts of ``intermediate_size`` in every layer; a tied head by default. An ``rms_norm_eps`` other than the
    layers' 1e-6 is refused (jllm's norms share one)."""
    experts, top_k = cfg.get("num_local_experts", 8), cfg.get("num_experts_per_tok", 2)
    _check_top_k("JetMoE", top_k, experts, "num_local_experts")
    if cfg.get("rms_norm_eps", LAYER_NORM_EPS) != LAYER_NORM_EPS:
        raise ValueError(
            f"JetMoE rms_norm_eps={cfg['rms_norm_eps']!r} is not supported (supported: {LAYER_NORM_EPS}, the eps "
            "transformers gives the layers' norms)"
        )
    kv = cfg.get("num_key_value_heads", 16)
    cfg = {
        "tie_word_embeddings": True,
        **cfg,
        "num_key_value_heads": kv,
        "num_attention_heads": kv * top_k,
        "head_dim": cfg.get("kv_channels", 128),
    }
    base, layers = uniform(whole_head_rotary(cfg), dtype, FULL)
    rename = (
        ("self_attn", "self_attention"),
        ("gate", "router.layer"),
        ("experts", ""),
        ("self_attn.experts", "self_attention.experts"),
        ("self_attn.experts.output_bias", "self_attention.experts.bias"),
        ("mlp.output_bias", "mlp.bias"),
        ("down_proj", "output_linear"),
    )
    return ModelArgs(
        **base,
        layers=layers,
        mlp_act=activation(cfg, "activation_function", "silu", "JetMoE"),
        num_experts=experts,
        experts_per_token=top_k,
        attention_experts=experts,
        moe_out_bias=True,
        weights=WeightMap(gate_up=("input_linear",), rename=rename),
    )

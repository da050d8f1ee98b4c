"""BailingHybrid (inclusionAI's Ling 3, ``BailingHybridForCausalLM``): Kimi Delta Attention layers
(``jllm.models.gated_deltanet`` with ``channel_decay``, its forget and output gates one projection each, the forget
gate bounded where ``kda_safe_gate``) beside DeepSeek's latent attention (interleaved rotary) with a sigmoid gate per
head (``g_proj``), the last layer of every ``layer_group_size`` attending; DeepSeek-V3's mixture (a biased sigmoid
router over expert groups, plain shared experts) or a dense SwiGLU by ``mlp_layer_types``. Its checkpoint keeps the
hub's names (``word_embeddings``, ``attention``, ``dense``, ``expert_bias``), q, k, v and their convs apart
(``stored_apart.read_qkv_apart``). Per layer, its routed experts' and shared expert's SwiGLUs are clipped after the
silu (``layers.ClampedSwiGLU``) at ``expert_swiglu_limit_list`` / ``share_expert_swiglu_limit_list`` (0: not clipped);
the dense layers' never are.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from jllm.models.families.common import FULL, activation, check_attends
from jllm.models.families.deepseek import latent_attention, v3_mixture
from jllm.models.families.kimi_linear import ALIASES, LINEAR
from jllm.models.families.stored_apart import read_qkv_apart
from jllm.models.gated_deltanet import DeltaNetSpec
from jllm.models.layers import ClampedSwiGLU
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap

# our module names -> the hub checkpoint's (transformers renames them on load and back on save)
RENAME = (
    ("embed_tokens", "word_embeddings"),
    ("self_attn", "attention"),
    ("mixer", "attention"),
    ("in_proj_b", "b_proj"),
    ("out_proj", "dense"),
    ("o_proj", "dense"),
    ("mixer.norm.weight", "attention.o_norm.weight"),
    ("e_score_correction_bias", "expert_bias"),
)
DELTA = "gated_deltanet"  # Kimi Delta Attention runs as the gated DeltaNet with a decay per key channel
# the per-layer SwiGLU limits of the routed experts and of the shared expert: the saved key, then transformers' alias
LIMITS = (("expert_swiglu_limit_list", "swiglu_limits"), ("share_expert_swiglu_limit_list", "swiglu_limits_shared"))


def bailing_hybrid(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """BailingHybrid: the layer kinds from ``layer_types`` (else every ``layer_group_size``-th layer, 6, attends),
    the MLP kinds from ``mlp_layer_types`` (else the first ``first_k_dense_replace``, 2, dense); the KDA's
    ``linear_num_heads`` heads of ``linear_head_dim`` (transformers derives them from ``num_attention_heads`` and
    ``head_dim``)."""
    cfg = {ALIASES.get(k, k): v for k, v in cfg.items()}
    defaults = dict(
        n_routed_experts=512,
        num_experts_per_tok=8,
        n_shared_experts=1,
        n_group=8,
        topk_group=4,
        moe_intermediate_size=768,
        routed_scaling_factor=2.5,
        rms_norm_eps=1e-6,
        max_position_embeddings=262_144,
        first_k_dense_replace=2,
        head_dim=128,
    )
    cfg = {**defaults, **cfg}
    n, group = cfg["num_hidden_layers"], cfg.get("layer_group_size", 6)
    experts_glus, shared_glus = (swiglu_limits(cfg, keys, n) for keys in LIMITS)
    types = cfg.get("layer_types") or [FULL if (i + 1) % group == 0 else LINEAR for i in range(n)]
    if len(types) != n or any(kind not in (FULL, LINEAR) for kind in types):
        raise ValueError(
            f"BailingHybrid layer_types={types!r} must name each of the {n} layers as {FULL!r} or {LINEAR!r}"
        )
    if (act := activation(cfg, "hidden_act", "silu", "BailingHybrid")) != "silu":
        raise ValueError(f"BailingHybrid hidden_act={act!r} is not supported (supported: 'silu', the KDA conv's)")
    if not cfg.get("rope_parameters") and not cfg.get("rope_scaling"):
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.get("rope_theta", 6_000_000.0)}
    mlp_types = cfg.get("mlp_layer_types")
    mlp_types = mlp_types or ["dense" if i < cfg["first_k_dense_replace"] else "sparse" for i in range(n)]
    settings, rope = latent_attention(cfg, dtype, interleaved=True)
    groups = (cfg.get("n_group") or 1, cfg.get("topk_group") or 1)
    renormalize = bool(cfg.get("norm_topk_prob", True))
    mixture, dense = v3_mixture(cfg, n, "BailingHybrid", "sigmoid", groups, renormalize, mlp_types)
    layers = tuple(
        LayerSpec(
            rope if kind == FULL else None,
            dense_mlp_size=size,
            mixer="attention" if kind == FULL else DELTA,
            experts_glu=experts_glu,
            shared_expert_glu=shared_glu,
        )
        for kind, size, experts_glu, shared_glu in zip(types, dense, experts_glus, shared_glus, strict=True)
    )
    check_attends(layers, "BailingHybrid")
    heads = cfg.get("linear_num_heads") or cfg["num_attention_heads"]
    head_dim = cfg.get("linear_head_dim") or cfg["head_dim"]
    deltanet = DeltaNetSpec(
        num_k_heads=heads,
        num_v_heads=heads,
        head_k_dim=head_dim,
        head_v_dim=head_dim,
        conv_kernel=cfg.get("linear_conv_kernel_dim") or cfg.get("short_conv_kernel_size", 4),
        fused_qkvz=False,
        channel_decay=True,
        full_rank_gates=True,
        safe_gate_bound=float(cfg.get("kda_lower_bound", -5.0)) if cfg.get("kda_safe_gate", True) else None,
    )
    rename = (*RENAME, *mixture.pop("weights").rename)
    return ModelArgs(
        **{**settings, "intermediate_size": cfg["moe_intermediate_size"]},
        layers=layers,
        deltanet=deltanet,
        attn_output_gate="sigmoid",
        attn_output_gate_per_head=True,
        **mixture,
        weights=WeightMap(rename=rename, reader=read_qkv_apart),
    )


def swiglu_limits(cfg: dict[str, Any], keys: tuple[str, str], n: int) -> list[ClampedSwiGLU | None]:
    """Each layer's clipped SwiGLU from the per-layer list under ``keys`` (either name), None where its limit is 0 or
    there is no list."""
    key = next((k for k in keys if cfg.get(k) is not None), keys[0])
    limits = cfg.get(key) or [0] * n
    if len(limits) != n:
        raise ValueError(f"BailingHybrid {key} has {len(limits)} limits; it needs one per layer ({n}), 0 for none")
    return [ClampedSwiGLU(float(limit)) if limit else None for limit in limits]

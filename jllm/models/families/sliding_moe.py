"""Mixtures of experts whose sliding and global layers differ in their rotary: Kolibri-1 (Aleph Alpha: EXAONE 4's
attention, the global layers without rotary, GLM-4's norms around both blocks, a router whose choice bias is added to
its logits) and Kolibri-1.1 (its global layers sparse: served within their budget, where they attend to every key,
rounded to NVFP4), Mellum (JetBrains: Qwen3-MoE's attention and mixture, each layer type its own rotary base, dense
layers where ``mlp_layer_types`` says), Flint (Qwen3-MoE's attention with attention sinks, rotary on the sliding
layers only, a sigmoid router) and MiMo-V2-Flash (Xiaomi: sliding layers with twice the KV heads and attention sinks,
values narrower than the heads, DeepSeek-V3's router without shared experts).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
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
from jllm.models.families.deepseek import v3_mixture
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
    rope = read_rope(whole_head_rotary(cfg), base["head_dim"])
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


INDEXED = "indexed_attention"
# Kolibri1_1Config's defaults for what a config leaves out (besides Kolibri-1's)
KOLIBRI1_1 = dict(
    vocab_size=128_000,
    hidden_size=2560,
    num_hidden_layers=50,
    num_attention_heads=48,
    mlp_only_intermediate_size=3584,
    index_topk=2048,
    index_num_local_tokens=128,
    index_num_sink_tokens=8,
)
KOLIBRI1_1_SOURCES = (0, 0, 0, 3, 4, 5, 5, 5, 5, 0)  # each indexed layer's source, by its place among them


def kolibri1_1(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Kolibri-1.1: Kolibri-1 with sparse global layers (``indexed_attention``, by default every fifth) and dense
    SwiGLUs of ``mlp_only_intermediate_size`` on ``mlp_only_layers`` (by default the first two). A query of an
    indexed layer that sees no more than ``index_topk + index_num_local_tokens + index_num_sink_tokens`` keys attends
    to all of them (transformers' ``Kolibri1_1Indexer`` selects only past that): jllm has no such indexer, so the
    model is served up to that budget (``ModelArgs.indexer_budget``), where those layers are causal attention without
    rotary over keys and values rounded to NVFP4 and back (``LayerSpec.kv_nvfp4``); a layer whose
    ``kv_source_layers`` entry names an earlier one reads that layer's K/V, with no K/V projection of its own
    (``LayerSpec.kv_source``). Kolibri1_1Config's defaults for what a config leaves out, its default K/V sources
    included (more than 10 indexed layers need them named, as transformers says)."""
    cfg = {**KOLIBRI1_1, **cfg}
    n = cfg["num_hidden_layers"]
    kinds = cfg.get("layer_types") or [INDEXED if (i + 1) % 5 == 0 else SLIDING for i in range(n)]
    if len(kinds) != n or set(kinds) - {INDEXED, SLIDING}:
        raise ValueError(
            f"Kolibri-1.1 layer_types={kinds!r} is not supported (supported: one of {INDEXED!r}, {SLIDING!r} for each "
            f"of the {n} layers)"
        )
    indexed = [i for i, kind in enumerate(kinds) if kind == INDEXED]
    sources = cfg.get("kv_source_layers")
    if sources is None:
        if len(indexed) > len(KOLIBRI1_1_SOURCES):
            raise ValueError(
                f"Kolibri-1.1 with {len(indexed)} indexed layers and no kv_source_layers is not supported (the default "
                f"covers {len(KOLIBRI1_1_SOURCES)}; name each layer's source, as transformers asks)"
            )
        sources = list(range(n))
        for i, place in zip(indexed, KOLIBRI1_1_SOURCES, strict=False):
            sources[i] = indexed[place]
    mlp_only = cfg.get("mlp_only_layers")
    mlp_only = [i for i in (0, 1) if i < n] if mlp_only is None else mlp_only
    types = [FULL if kind == INDEXED else SLIDING for kind in kinds]
    # no intermediate_size in Kolibri1_1Config: every MLP's width is named (the mixture's moe_intermediate_size)
    args = kolibri1({**cfg, "layer_types": types, "intermediate_size": cfg.get("moe_intermediate_size", 512)}, dtype)
    if indexed and args.head_dim % 16:
        raise ValueError(
            f"Kolibri-1.1 head_dim={args.head_dim} is not supported (supported: a multiple of 16, NVFP4's blocks)"
        )
    layers = tuple(
        dataclasses.replace(
            spec,
            rope=None if kinds[i] == INDEXED else spec.rope,
            kv_nvfp4=kinds[i] == INDEXED,
            kv_source=None if sources[i] == i else sources[i],
            dense_mlp_size=cfg["mlp_only_intermediate_size"] if i in mlp_only else None,
        )
        for i, spec in enumerate(args.layers)
    )
    budget = cfg["index_topk"] + cfg["index_num_local_tokens"] + cfg["index_num_sink_tokens"]
    keys = "index_topk + index_num_local_tokens + index_num_sink_tokens"
    return dataclasses.replace(
        args,
        layers=layers,
        indexer_budget=budget if indexed else None,
        sparse_attention=("Kolibri-1.1 indexed", keys),
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
    rope = read_rope(whole_head_rotary(cfg), base["head_dim"])
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


# MiMoV2FlashConfig's defaults for the keys a config leaves out (its rope per layer type below)
MIMO_DEFAULTS = dict(
    head_dim=192,
    v_head_dim=128,
    num_key_value_heads=4,
    rms_norm_eps=1e-5,
    max_position_embeddings=131072,
    sliding_window=129,
    n_routed_experts=256,
    num_experts_per_tok=8,
    moe_intermediate_size=2048,
    n_group=1,
    topk_group=1,
)
MIMO_ROPE = {FULL: 5_000_000.0, SLIDING: 10_000.0}  # each type's default theta, on 0.334 of each head


def mimo_v2_flash(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """MiMo-V2-Flash: sliding and full attention layers (``layer_types``; by default full for the first and every
    sixth), queries and keys ``head_dim`` wide, values ``v_head_dim`` (padded to the heads' width in the fused QKV and
    the pool) times ``attention_value_scale``; the sliding layers with twice ``num_key_value_heads`` KV heads and
    attention sinks (``attention_sink_bias``); each type its own rotary (``rope_parameters`` per type, half-split on
    ``partial_rotary_factor`` of each head, 0.334 by default). Dense SwiGLUs where ``mlp_layer_types`` says (the first
    by default), elsewhere DeepSeek-V3's router (float32 sigmoid scores choosing with ``e_score_correction_bias`` among
    ``topk_group`` of ``n_group`` groups, renormalised where ``norm_topk_prob``, times ``routed_scaling_factor``) over
    ``n_routed_experts`` SwiGLUs, no shared expert. The remote code's per-kind keys are checked against the structure
    transformers builds; the multi-token prediction layers (``model.mtp``) are not read."""
    cfg = {**MIMO_DEFAULTS, **cfg}
    if cfg.get("sliding_window_size") is not None:  # the reference SGLang code attends to this many plus the query
        cfg["sliding_window"] = cfg["sliding_window_size"] + 1
    kv, hd, vd = cfg["num_key_value_heads"], cfg["head_dim"], cfg["v_head_dim"]
    for key, supported in (
        ("swa_num_attention_heads", cfg["num_attention_heads"]),
        ("swa_num_key_value_heads", 2 * kv),
        ("swa_head_dim", hd),
        ("swa_v_head_dim", vd),
        ("add_swa_attention_sink_bias", True),
        ("add_full_attention_sink_bias", False),
    ):
        if cfg.get(key, supported) != supported:
            raise ValueError(f"MiMo-V2-Flash {key}={cfg[key]!r} is not supported (supported: {supported!r})")
    params = cfg.get("rope_parameters") or {
        kind: {"rope_type": "default", "rope_theta": t} for kind, t in MIMO_ROPE.items()
    }
    if set(params) != {FULL, SLIDING} or any(p.get("rope_type", "default") != "default" for p in params.values()):
        raise ValueError(
            f"MiMo-V2-Flash rope_parameters={params!r} is not supported (supported: one default rope per layer type, "
            f"keyed {FULL!r} and {SLIDING!r})"
        )
    params = {kind: {"partial_rotary_factor": 0.334, **p} for kind, p in params.items()}
    n = cfg["num_hidden_layers"]
    types = cfg.get("layer_types") or [FULL if i == 0 or (i + 1) % 6 == 0 else SLIDING for i in range(n)]
    cfg = {**cfg, "layer_types": types, "rope_parameters": params, "n_shared_experts": 0}
    scale = cfg.get("routed_scaling_factor")
    cfg["routed_scaling_factor"] = 1.0 if scale is None else scale  # the hub's config stores null
    groups = (cfg["n_group"], cfg["topk_group"])
    mlp_types = cfg.get("mlp_layer_types") or ["dense"] + ["sparse"] * (n - 1)
    renormalize = bool(cfg.get("norm_topk_prob", True))
    mixture, dense = v3_mixture(cfg, n, "MiMo-V2-Flash", "sigmoid", groups, renormalize, mlp_types)
    base = base_args(cfg, dtype)
    ropes = per_type_ropes(cfg, hd, params)
    sliding = dict(num_kv_heads=2 * kv, sinks=True)
    layers = tuple(
        dataclasses.replace(spec, dense_mlp_size=size, **(sliding if kind == SLIDING else {}))
        for spec, size, kind in zip(typed_layers(cfg, ropes, types), dense, types, strict=True)
    )
    bias = bool(cfg.get("attention_bias", False))
    value_scale = cfg.get("attention_value_scale", 0.707)
    rename = (*mixture.pop("weights").rename, ("sinks", "attention_sink_bias"))
    return ModelArgs(
        **{**base, "intermediate_size": cfg["moe_intermediate_size"]},
        layers=layers,
        qkv_bias=bias,
        v_head_dim=vd,
        value_scale=1.0 if value_scale is None else float(value_scale),
        router_float32=True,
        weights=WeightMap(rename=rename, v_head_dim=vd),
        **mixture,
    )

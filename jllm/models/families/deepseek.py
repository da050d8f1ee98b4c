"""DeepSeek-V2 (V2-Lite, V2.5) and DeepSeek-V3 (R1, Kimi-K2, Moonlight): multi-head latent attention
(``jllm.models.mla``) with interleaved rotary pairs, and a mixture of SwiGLU experts with plain shared experts behind
DeepSeek's group-limited router (``jllm.models.moe.grouped_top_k``), dense MLPs in the first layers. GLM-4.5 / 4.6
(``Glm4MoeForCausalLM``), dots.llm1 (``Dots1ForCausalLM``) and Solar Open are V3's mixture on grouped-query attention;
Youtu-LLM is V3's latent attention with dense MLPs, MiniCPM3 V2's (half-split rotary) with muP's multipliers;
GLM-4.7-Flash and Mistral Small 4 are V3 with their own layer kinds, router and query scaling, A.X-K1 with a norm on
each mixture's output.

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
    mixture_layers,
    read_rope,
    typed_layers,
    whole_head_rotary,
)
from jllm.models.mla import MLASpec
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap
from jllm.models.moe import GroupedRouting
from jllm.models.rope import Rope, yarn_mscale

# Mistral4Config's rope where config.json has none (its partial_rotary_factor is the rotary share of a query head)
MISTRAL4_ROPE = dict(
    rope_type="yarn",
    rope_theta=10000.0,
    factor=128.0,
    original_max_position_embeddings=8192,
    beta_fast=32.0,
    beta_slow=1.0,
    mscale_all_dim=1.0,
    mscale=1.0,
    llama_4_scaling_beta=0.1,
)


# DeepseekV2Config's and DeepseekV3Config's defaults for the keys their readers take (the shared experts, the low-rank
# queries, V3's expert groups and weight scale, the latent and expert sizes): a config that leaves them out runs with
# these in transformers
V2_DEFAULTS = dict(
    n_shared_experts=2,
    q_lora_rank=1536,
    kv_lora_rank=512,
    qk_nope_head_dim=128,
    qk_rope_head_dim=64,
    v_head_dim=128,
    n_routed_experts=64,
    moe_intermediate_size=1407,
)
V3_DEFAULTS = dict(
    V2_DEFAULTS,
    n_shared_experts=1,
    first_k_dense_replace=3,
    n_group=8,
    topk_group=4,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    n_routed_experts=256,
    num_experts_per_tok=8,
    moe_intermediate_size=2048,
)


def deepseek_v2(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """DeepSeek-V2: softmax router, greedy or group-limited (``group_limited_greedy``: the ``topk_group`` groups
    holding the best experts), weights times ``routed_scaling_factor``, never renormalised (transformers' V2);
    ``V2_DEFAULTS`` where a config leaves keys out."""
    cfg = {**V2_DEFAULTS, **cfg}
    method = cfg.get("topk_method") or "greedy"
    if method not in ("greedy", "group_limited_greedy"):
        raise ValueError(
            f"DeepSeek-V2 topk_method={method!r} is not supported (supported: greedy, group_limited_greedy)"
        )
    _require(cfg, "DeepSeek-V2", "scoring_func", "softmax")
    if cfg.get("norm_topk_prob"):  # DeepSeek's own code renormalises then; transformers' V2 does not
        raise ValueError("DeepSeek-V2 norm_topk_prob=True is not supported (supported: False, every V2 checkpoint's)")
    groups = (cfg.get("n_group") or 1, cfg.get("topk_group") or 1) if method == "group_limited_greedy" else (1, 1)
    return _deepseek(cfg, dtype, "DeepSeek-V2", "softmax", groups, renormalize=False, interleaved=True)


def deepseek_v3(
    cfg: dict[str, Any], dtype: Any, family: str = "DeepSeek-V3", mlp_types: list[str] | None = None
) -> ModelArgs:
    """DeepSeek-V3: sigmoid router choosing with ``e_score_correction_bias`` (``noaux_tc``) among the ``topk_group``
    groups of best top-2 sums, weights from the unbiased scores, renormalised where ``norm_topk_prob``, times
    ``routed_scaling_factor``; rotary pairs interleaved where ``rope_interleave`` (the default). ``family`` and
    ``mlp_types`` (its ``mlp_layer_types``): a family that is V3 with its own layer kinds (A.X-K1), whose reader
    gives its own config's defaults; DeepSeek-V3's own checkpoints take ``V3_DEFAULTS`` where they leave keys out."""
    if family == "DeepSeek-V3":
        cfg = {**V3_DEFAULTS, **cfg}
    _require(cfg, family, "topk_method", "noaux_tc")
    _require(cfg, family, "scoring_func", "sigmoid")
    groups = (cfg.get("n_group") or 1, cfg.get("topk_group") or 1)
    renormalize, interleaved = bool(cfg.get("norm_topk_prob", True)), bool(cfg.get("rope_interleave", True))
    return _deepseek(cfg, dtype, family, "sigmoid", groups, renormalize, interleaved, mlp_types)


def glm4_moe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """GLM-4.5 / 4.6: grouped-query attention with q/k/v biases (``attention_bias``), per-head q/k RMSNorms where
    ``use_qk_norm``, the rotary on the first half of each head (``partial_rotary_factor``, 0.5 where the config
    has none), and V3's mixture and router; eps 1e-5 by default (Glm4MoeConfig's)."""
    cfg = {"rms_norm_eps": 1e-5, **cfg}
    base = base_args(cfg, dtype)
    fraction = (cfg.get("rope_parameters") or {}).get("partial_rotary_factor") or cfg.get("partial_rotary_factor")
    rope = read_rope({**cfg, "partial_rotary_factor": fraction or 0.5}, base["head_dim"])
    renormalize = bool(cfg.get("norm_topk_prob", True))
    groups = (cfg.get("n_group") or 1, cfg.get("topk_group") or 1)
    mixture, dense = v3_mixture(cfg, base["num_layers"], "GLM-4-MoE", "sigmoid", groups, renormalize)
    return ModelArgs(
        **{**base, "intermediate_size": cfg["moe_intermediate_size"]},
        layers=tuple(LayerSpec(rope, dense_mlp_size=size) for size in dense),
        qk_norm=bool(cfg.get("use_qk_norm", False)),
        qkv_bias=bool(cfg.get("attention_bias", False)),
        **mixture,
    )


def dots1(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """dots.llm1: Qwen3's attention (per-head q/k RMSNorms, the whole head rotated) with V3's mixture and router
    (``norm_topk_prob`` off by default); without ``layer_types``, the layers from ``max_window_layers`` on slide
    (transformers' rule)."""
    cfg = {"sliding_window": 4096, "max_window_layers": 62, **cfg}  # Dots1Config's defaults
    base = base_args(cfg, dtype)
    window, first_sliding = cfg["sliding_window"], cfg["max_window_layers"]
    default = [SLIDING if window and i >= first_sliding else FULL for i in range(base["num_layers"])]
    rope = read_rope(whole_head_rotary(cfg), base["head_dim"])
    layers = typed_layers(cfg, {FULL: rope, SLIDING: rope}, default)
    groups = (cfg.get("n_group") or 1, cfg.get("topk_group") or 1)
    renormalize = bool(cfg.get("norm_topk_prob", False))
    mixture, dense = v3_mixture(cfg, base["num_layers"], "dots.llm1", "sigmoid", groups, renormalize)
    return ModelArgs(
        **{**base, "intermediate_size": cfg["moe_intermediate_size"]},
        layers=tuple(dataclasses.replace(spec, dense_mlp_size=size) for spec, size in zip(layers, dense, strict=True)),
        qk_norm=True,
        qkv_bias=bool(cfg.get("attention_bias", False)),
        o_bias=bool(cfg.get("attention_bias", False)),
        **mixture,
    )


def solar_open(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Solar Open (Upstage): Llama's attention (q/k/v biases where ``attention_bias``, none on o_proj) with V3's
    mixture and router in every layer (GLM-4.5's, without its dense first layers); SolarOpenConfig's defaults for
    the keys a config leaves out."""
    defaults = dict(
        rms_norm_eps=1e-5,
        head_dim=128,
        max_position_embeddings=131_072,
        rope_theta=1e6,
        moe_intermediate_size=1280,
        n_routed_experts=128,
        num_experts_per_tok=8,
        n_shared_experts=1,
    )
    cfg = {**defaults, **cfg}
    cfg = {**cfg, "intermediate_size": cfg["moe_intermediate_size"], "first_k_dense_replace": 0}
    base = base_args(cfg, dtype)
    groups = (cfg.get("n_group") or 1, cfg.get("topk_group") or 1)
    renormalize = bool(cfg.get("norm_topk_prob", True))
    mixture, _ = v3_mixture(cfg, base["num_layers"], "Solar Open", "sigmoid", groups, renormalize)
    return ModelArgs(
        **base,
        layers=(LayerSpec(read_rope(cfg, base["head_dim"])),) * base["num_layers"],
        qkv_bias=bool(cfg.get("attention_bias", False)),
        **mixture,
    )


def youtu(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Youtu-LLM (Tencent): V3's latent attention (rotary pairs interleaved where ``rope_interleave``, the default)
    with a dense SwiGLU in every layer, a tied head and low-rank queries of 1536 by default (YoutuConfig's)."""
    cfg = {"tie_word_embeddings": True, "max_position_embeddings": 131_072, "q_lora_rank": 1536, **cfg}
    settings, rope = latent_attention(cfg, dtype, bool(cfg.get("rope_interleave", True)))
    return ModelArgs(
        **settings,
        layers=(LayerSpec(rope),) * settings["num_layers"],
        mlp_act=activation(cfg, "hidden_act", "silu", "Youtu"),
    )


def glm4_moe_lite(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """GLM-4.7-Flash (``Glm4MoeLiteForCausalLM``): V3's latent attention, router and mixture, each layer's MLP dense
    or a mixture as ``mlp_layer_types`` says (by default the first dense: transformers reads no
    ``first_k_dense_replace`` here)."""
    defaults = dict(
        routed_scaling_factor=1.8,
        n_shared_experts=1,
        q_lora_rank=768,
        rms_norm_eps=1e-5,
        max_position_embeddings=202752,
    )
    cfg = {**defaults, **cfg}
    _require(cfg, "GLM-4.7-Flash", "topk_method", "noaux_tc")
    mlp_types = cfg.get("mlp_layer_types") or ["dense"] + ["sparse"] * (cfg["num_hidden_layers"] - 1)
    groups = (cfg.get("n_group") or 1, cfg.get("topk_group") or 1)
    renormalize, interleaved = bool(cfg.get("norm_topk_prob", True)), bool(cfg.get("rope_interleave", True))
    return _deepseek(cfg, dtype, "GLM-4.7-Flash", "sigmoid", groups, renormalize, interleaved, mlp_types)


def mistral4(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Mistral Small 4 (``Mistral4ForCausalLM``): V3's latent attention with Ministral 3's query scaling (every
    query times ``1 + llama_4_scaling_beta * log(1 + floor(position / original_max_position_embeddings))``), YaRN
    by default, and V3's mixture behind a softmax router with no choice bias, renormalised where ``norm_topk_prob``,
    times ``routed_scaling_factor``. transformers' rotary covers ``head_dim * partial_rotary_factor`` channels, which
    must be ``qk_rope_head_dim``; its router ranks groups by their top-2 sums, so only ``n_group=1`` (the released
    checkpoint's) is read. Its experts are stored as transformers 5 keeps them, stacked per projection."""
    defaults = dict(routed_scaling_factor=1.0, n_shared_experts=1, rms_norm_eps=1e-6, max_position_embeddings=1048576)
    cfg = {**defaults, **cfg}
    if not cfg.get("rope_parameters") and not cfg.get("rope_scaling"):
        rope = {**MISTRAL4_ROPE, "max_position_embeddings": cfg["max_position_embeddings"]}
        fraction = cfg["qk_rope_head_dim"] / (cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"])
        cfg["rope_parameters"] = {**rope, "partial_rotary_factor": fraction}
    params = dict(cfg.get("rope_scaling") or cfg["rope_parameters"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    rotary = int(head_dim * (params.get("partial_rotary_factor") or cfg.get("partial_rotary_factor") or 1.0))
    if rotary != cfg["qk_rope_head_dim"]:
        raise ValueError(
            f"Mistral 4 rotary width head_dim * partial_rotary_factor = {rotary} is not supported (supported: "
            f"qk_rope_head_dim={cfg['qk_rope_head_dim']}, the channels transformers rotates)"
        )
    beta, original = params.get("llama_4_scaling_beta"), params.get("original_max_position_embeddings")
    if beta is None or not original:
        raise ValueError(
            f"Mistral 4 rope llama_4_scaling_beta={beta!r}, original_max_position_embeddings={original!r} is not "
            "supported (supported: both set, as transformers' Mistral 4 scales its queries by them)"
        )
    if (cfg.get("n_group") or 1) != 1:
        raise ValueError(f"Mistral 4 n_group={cfg['n_group']} is not supported (supported: 1)")
    cfg = {**cfg, "rope_parameters": {**params, "partial_rotary_factor": 1.0}, "rope_scaling": None}
    renormalize, interleaved = bool(cfg.get("norm_topk_prob", True)), bool(cfg.get("rope_interleave", True))
    args = _deepseek(cfg, dtype, "Mistral 4", "softmax", (1, 1), renormalize, interleaved)
    temperature = dict(attn_temperature=(float(original), float(beta)), attn_temperature_shift=0.0)
    return dataclasses.replace(
        args,
        layers=tuple(dataclasses.replace(spec, **temperature) for spec in args.layers),
        weights=dataclasses.replace(
            args.weights, rename=(("shared_expert", "shared_experts"),), expert_params="out_in"
        ),
    )


def axk1(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """A.X-K1 (SK Telecom): DeepSeek-V3 (low-rank queries, V3's router: ``n_group`` 8, ``topk_group`` 4 and
    ``routed_scaling_factor`` 2.5 by default) with a norm on each mixture's output (``post_mlp_layernorm``), each
    layer dense or a mixture as ``mlp_layer_types`` says (else AXK1Config's rule: from ``first_k_dense_replace``, 1 by
    default, every ``moe_layer_freq``-th layer); one shared expert and low-rank queries of 1536 by default
    (AXK1Config's)."""
    defaults = dict(n_group=8, topk_group=4, routed_scaling_factor=2.5, first_k_dense_replace=1, n_shared_experts=1)
    cfg = {**defaults, "q_lora_rank": 1536, **cfg}
    first, freq = cfg["first_k_dense_replace"], cfg.get("moe_layer_freq") or 1
    n = cfg["num_hidden_layers"]
    kinds = cfg.get("mlp_layer_types") or ["sparse" if i >= first and i % freq == 0 else "dense" for i in range(n)]
    v3 = deepseek_v3(cfg, dtype, "A.X-K1", kinds)
    return dataclasses.replace(
        v3,
        moe_out_norm=True,
        weights=dataclasses.replace(v3.weights, rename=(*v3.weights.rename, ("mlp_out_norm", "post_mlp_layernorm"))),
    )


def minicpm3(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """MiniCPM3: DeepSeek-V2's latent attention with the rotary on half-split pairs (Llama's), dense SwiGLUs in every
    layer, and muP's multipliers: embeddings times ``scale_emb``, each block's output times ``scale_depth /
    sqrt(layers)``, logits divided by ``hidden_size / dim_model_base``; MiniCPM3Config's defaults (a ``None`` multiplier
    is the no-op one, as there)."""
    cfg = {"q_lora_rank": 768, "qk_nope_head_dim": 64, "qk_rope_head_dim": 32, "kv_lora_rank": 256, **cfg}
    cfg = {"rms_norm_eps": 1e-5, "max_position_embeddings": 32768, "tie_word_embeddings": True, **cfg}
    layers, hidden = cfg["num_hidden_layers"], cfg["hidden_size"]
    cfg["v_head_dim"] = cfg.get("v_head_dim") or hidden // cfg["num_attention_heads"]
    depth = cfg.get("scale_depth", 1.4)
    base_dim = cfg.get("dim_model_base", 256)
    settings, rope = latent_attention(cfg, dtype, interleaved=False)
    return ModelArgs(
        **settings,
        layers=(LayerSpec(rope),) * layers,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        mlp_act=activation(cfg, "hidden_act", "silu", "MiniCPM3"),
        embed_scale=float(cfg.get("scale_emb", 12)),
        residual_scale=float(layers**0.5 if depth is None else depth) / layers**0.5,
        logits_divisor=hidden / (hidden if base_dim is None else base_dim),
    )


def _require(cfg: dict[str, Any], family: str, key: str, supported: str) -> None:
    """Refuses a config value other than the one transformers implements for the family (absent is that one)."""
    value = cfg.get(key)
    if value is not None and value != supported:
        raise ValueError(f"{family} {key}={value!r} is not supported (supported: {supported!r})")


def _deepseek(
    cfg: dict[str, Any],
    dtype: Any,
    family: str,
    scoring: str,
    groups: tuple[int, int],
    renormalize: bool,
    interleaved: bool,
    mlp_types: list[str] | None = None,
) -> ModelArgs:
    """What V2 and V3 share (and the families built on them): the latent attention, its softmax scale, and the
    mixture."""
    settings, rope = latent_attention(cfg, dtype, interleaved)
    mixture, dense = v3_mixture(cfg, settings["num_layers"], family, scoring, groups, renormalize, mlp_types)
    return ModelArgs(
        **{**settings, "intermediate_size": cfg["moe_intermediate_size"]},
        layers=tuple(LayerSpec(rope, dense_mlp_size=size) for size in dense),
        **mixture,
    )


def latent_attention(cfg: dict[str, Any], dtype: Any, interleaved: bool) -> tuple[dict[str, Any], Rope]:
    """The base settings with the latent attention's (its one KV head, its softmax scale, its biases) and the rope
    of its rotary channels."""
    mla = MLASpec(
        kv_lora_rank=cfg["kv_lora_rank"],
        qk_nope_head_dim=cfg["qk_nope_head_dim"],
        qk_rope_head_dim=cfg["qk_rope_head_dim"],
        v_head_dim=cfg["v_head_dim"],
        q_lora_rank=cfg.get("q_lora_rank"),
    )
    rope = dataclasses.replace(read_rope(whole_head_rotary(cfg), mla.qk_rope_head_dim), interleaved=interleaved)
    qk_head_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    attention_bias = bool(cfg.get("attention_bias", False))
    settings = dict(
        base_args(cfg, dtype),
        num_kv_heads=1,
        head_dim=qk_head_dim,
        mla=mla,
        sm_scale=qk_head_dim**-0.5 * _mscale_squared(cfg),
        qkv_bias=attention_bias,
        o_bias=attention_bias,
    )
    return settings, rope


def v3_mixture(
    cfg: dict[str, Any],
    num_layers: int,
    family: str,
    scoring: str,
    groups: tuple[int, int],
    renormalize: bool,
    mlp_types: list[str] | None = None,
) -> tuple[dict[str, Any], list[int | None]]:
    """The mixture's ``ModelArgs`` settings (``n_routed_experts`` SwiGLU experts of ``moe_intermediate_size``, the
    router, ``n_shared_experts`` plain shared experts as one) and each layer's dense MLP width (None: the mixture)."""
    if cfg.get("mlp_bias"):
        raise ValueError(f"{family} mlp_bias=True is not supported (supported: False)")
    experts, top_k = cfg["n_routed_experts"], cfg.get("num_experts_per_tok")
    if not isinstance(top_k, int) or not 0 < top_k <= experts:
        raise ValueError(f"{family} num_experts_per_tok={top_k} must be between 1 and n_routed_experts={experts}")
    if experts % groups[0]:
        raise ValueError(f"{family} n_group={groups[0]} does not divide n_routed_experts={experts}")
    # transformers' rule: a mixture from first_k_dense_replace on. Its DeepSeek-V2/V3 (and GLM-4-MoE, dots.llm1, ...)
    # never read moe_layer_freq, so a checkpoint it saves with one other than 1 holds experts in every later layer
    # (DeepSeek's own code, vLLM's, skipped layers there; every released checkpoint's is 1). The later families name
    # each layer's kind instead (``mlp_types``: their mlp_layer_types, A.X-K1's derived with moe_layer_freq).
    first_moe = cfg.get("first_k_dense_replace") or 0
    sparse = [i >= first_moe for i in range(num_layers)]
    if mlp_types is not None:
        sparse = mixture_layers(mlp_types, num_layers, family)
    dense = [None if moe else cfg["intermediate_size"] for moe in sparse]
    settings = dict(
        mlp_act=activation(cfg, "hidden_act", "silu", family),
        num_experts=experts,
        experts_per_token=top_k,
        experts_renormalize=renormalize,
        shared_expert_size=cfg["moe_intermediate_size"] * (cfg.get("n_shared_experts") or 0),
        shared_expert_gated=False,
        moe_routing=GroupedRouting(scoring, *groups, scale=float(cfg.get("routed_scaling_factor", 1.0))),
        weights=WeightMap(rename=(("experts", "experts.{e}"), ("shared_expert", "shared_experts"))),
    )
    return settings, dense


def _mscale_squared(cfg: dict[str, Any]) -> float:
    """transformers' ``yarn_apply_mscale``: a scaled rotary with ``mscale_all_dim`` multiplies the softmax scale by
    ``yarn_mscale(factor, mscale_all_dim) ** 2`` (all channels, not only the rotary ones YaRN's cos/sin factor
    reaches)."""
    params = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    mscale_all_dim = params.get("mscale_all_dim") or 0
    return yarn_mscale(params["factor"], mscale_all_dim) ** 2 if kind != "default" and mscale_all_dim else 1.0

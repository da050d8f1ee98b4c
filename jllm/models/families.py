"""Each supported family as a description: what its ``config.json`` means for ``ModelArgs``, and its tensor names.

A family reader takes the checkpoint's config dict and returns the ``ModelArgs`` the one decoder
(``jllm.models.decoder``) runs; options the decoder does not implement are refused here, at load, by name.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import math
from typing import Any

from jllm.models.decoder import LayerSpec, ModelArgs, WeightMap
from jllm.models.rope import Rope

SLIDING, FULL = "sliding_attention", "full_attention"
# transformers' activation names -> ours (``jllm.models.layers.ACTIVATIONS``)
HF_ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def _base(cfg: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """The settings every family reads the same way."""
    heads = cfg["num_attention_heads"]
    return dict(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        norm_eps=cfg.get("rms_norm_eps", 1e-6),
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        dtype=dtype,
    )


def _rope(cfg: dict[str, Any], head_dim: int, params: dict[str, Any] | None = None) -> Rope:
    """The rotary settings from old (``rope_theta`` + ``rope_scaling``) or new (``rope_parameters``) configs."""
    params = dict(params if params is not None else cfg.get("rope_scaling") or cfg.get("rope_parameters") or {})
    theta = params.get("rope_theta") or cfg.get("rope_theta") or 10000.0
    fraction = params.get("partial_rotary_factor") or cfg.get("partial_rotary_factor") or 1.0
    if "original_max_position_embeddings" in cfg:
        params.setdefault("original_max_position_embeddings", cfg["original_max_position_embeddings"])
    return Rope.from_hf(theta, int(head_dim * fraction), params, cfg.get("max_position_embeddings", 4096))


def _windows(cfg: dict[str, Any], default: list[str]) -> list[int | None]:
    """Each layer's sliding window: ``layer_types`` where the config has them, else the family's ``default``."""
    window = cfg.get("sliding_window")
    types = cfg.get("layer_types") or default
    return [window if window and kind == SLIDING else None for kind in types]


def _uniform(cfg: dict[str, Any], dtype: Any, default: str) -> tuple[dict[str, Any], tuple[LayerSpec, ...]]:
    """The base settings and the layers of a family whose layers share one rope; ``default``: each layer's kind
    where the config has no ``layer_types``."""
    base = _base(cfg, dtype)
    rope = _rope(cfg, base["head_dim"])
    return base, tuple(LayerSpec(rope, w) for w in _windows(cfg, [default] * base["num_layers"]))


def _activation(cfg: dict[str, Any], key: str, default: str, family: str) -> str:
    """The config's activation name as one of ``layers.ACTIVATIONS``, refusing others by name."""
    name = cfg.get(key) or default
    if name not in HF_ACTIVATIONS:
        raise ValueError(f"{family} {key} {name!r} is not supported (supported: {', '.join(HF_ACTIVATIONS)})")
    return HF_ACTIVATIONS[name]


def llama(cfg: dict[str, Any], dtype: Any, model_type: str = "llama") -> ModelArgs:
    """Llama 2/3/3.x, Mistral, Qwen2/2.5, SmolLM2: the plain pre-norm SwiGLU decoder. Biases as transformers builds
    them: Llama's ``attention_bias`` on q, k, v and o, ``mlp_bias`` on the MLP; Qwen2's on q, k, v always; Mistral's
    none."""
    all_sliding = model_type == "mistral" or cfg.get("use_sliding_window")
    base, layers = _uniform(cfg, dtype, SLIDING if all_sliding else FULL)
    llama_bias = model_type == "llama" and bool(cfg.get("attention_bias", False))
    act = _activation(cfg, "hidden_act", "silu", model_type)
    return ModelArgs(
        **base,
        layers=layers,
        qkv_bias=model_type == "qwen2" or llama_bias,
        o_bias=llama_bias,
        mlp_bias=model_type == "llama" and bool(cfg.get("mlp_bias", False)),
        mlp_act=act,
    )


def mistral(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    return llama(cfg, dtype, "mistral")


def qwen2(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    return llama(cfg, dtype, "qwen2")


def qwen3(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen3 (dense): Llama plus an RMSNorm on each query and key head."""
    base, layers = _uniform(cfg, dtype, FULL)
    bias = bool(cfg.get("attention_bias", False))
    act = _activation(cfg, "hidden_act", "silu", "Qwen3")
    return ModelArgs(**base, layers=layers, qk_norm=True, qkv_bias=bias, o_bias=bias, mlp_act=act)


def granite(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Granite (3.x): Llama with four multipliers: ``embedding_multiplier`` on the embeddings,
    ``attention_multiplier`` as the attention scale (in place of 1/sqrt(head_dim)), ``residual_multiplier`` on each
    block's output before its residual add, and logits divided by ``logits_scaling``."""
    base, layers = _uniform(cfg, dtype, FULL)
    bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(
        **base,
        layers=layers,
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        mlp_act=_activation(cfg, "hidden_act", "silu", "Granite"),
        embed_scale=float(cfg.get("embedding_multiplier", 1.0)),
        sm_scale=float(cfg.get("attention_multiplier", 1.0)),
        residual_scale=float(cfg.get("residual_multiplier", 1.0)),
        logits_divisor=float(cfg.get("logits_scaling", 1.0)),
    )


def olmo2(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """OLMo 2: norms on the attention's and MLP's outputs only (none on their inputs), and q/k RMSNorms over the whole
    projection (all heads' channels at once) before the rotary."""
    base, layers = _uniform(cfg, dtype, FULL)
    bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(
        **base,
        layers=layers,
        qk_norm=True,
        qk_norm_all_heads=True,
        pre_norms=False,
        sandwich_norms=True,
        qkv_bias=bias,
        o_bias=bias,
        mlp_act=_activation(cfg, "hidden_act", "silu", "OLMo 2"),
        weights=WeightMap(
            rename=(("attn_out_norm", "post_attention_layernorm"), ("mlp_out_norm", "post_feedforward_layernorm"))
        ),
    )


# Gemma's norms before and after each block: our module name -> the checkpoint's.
GEMMA_WEIGHTS = WeightMap(
    rename=(
        ("post_attention_layernorm", "pre_feedforward_layernorm"),
        ("attn_out_norm", "post_attention_layernorm"),
        ("mlp_out_norm", "post_feedforward_layernorm"),
    )
)


def _gemma_base(cfg: dict[str, Any], dtype: Any, key: str, act: str, accepted: tuple[str, ...]) -> dict[str, Any]:
    """What every Gemma shares: a tied head by default, the ``1 + w`` RMSNorm, GeGLU (``act``, the config's ``key``,
    one of the tanh gelu's ``accepted`` names), embeddings times sqrt(hidden)."""
    if act not in accepted:
        raise ValueError(f"Gemma {key} {act!r} is not supported (supported: {', '.join(map(repr, accepted))})")
    base = _base(cfg, dtype)
    base["tie_word_embeddings"] = bool(cfg.get("tie_word_embeddings", True))
    return dict(
        base,
        norm="rms_unit_offset",
        mlp_act="gelu_tanh",
        embed_scale=math.sqrt(base["hidden_size"]),
        qkv_bias=bool(cfg.get("attention_bias", False)),
        o_bias=bool(cfg.get("attention_bias", False)),
    )


def gemma(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Gemma 1: Llama's layout with Gemma's ``1 + w`` RMSNorm, GeGLU and scaled embeddings. transformers' Gemma
    reads ``hidden_act`` (not ``hidden_activation``), a legacy ``"gelu"`` there meaning the tanh approximation."""
    act = cfg.get("hidden_act") or "gelu_pytorch_tanh"
    base = _gemma_base(cfg, dtype, "hidden_act", act, ("gelu_pytorch_tanh", "gelu"))
    layers = (LayerSpec(_rope(cfg, base["head_dim"])),) * base["num_layers"]
    return ModelArgs(**base, layers=layers)


def _gemma(cfg: dict[str, Any], dtype: Any, layers: tuple[LayerSpec, ...], **extra: Any) -> ModelArgs:
    """Gemma 2 and 3's shared description."""
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
    base = _gemma_base(cfg, dtype, "hidden_activation", act, ("gelu_pytorch_tanh", "gelu_tanh"))
    return ModelArgs(
        **base,
        layers=layers,
        sandwich_norms=True,
        sm_scale=cfg.get("query_pre_attn_scalar", base["head_dim"]) ** -0.5,
        attn_softcap=cfg.get("attn_logit_softcapping"),
        final_softcap=cfg.get("final_logit_softcapping"),
        weights=GEMMA_WEIGHTS,
        **extra,
    )


def gemma2(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Gemma 2: sliding (even) and global (odd) layers, soft-capped attention and logits, sandwich norms, GeGLU."""
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    rope = _rope(cfg, head_dim)
    default = [SLIDING if i % 2 == 0 else FULL for i in range(cfg["num_hidden_layers"])]
    return _gemma(cfg, dtype, tuple(LayerSpec(rope, w) for w in _windows(cfg, default)))


def gemma3(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Gemma 3 (text): Gemma 2 with q/k norms, five sliding layers per global one, and a local rope base."""
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    pattern = cfg.get("sliding_window_pattern", 6)
    default = [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(cfg["num_hidden_layers"])]
    params = cfg.get("rope_parameters") or {}
    if FULL in params:  # transformers >= 5: one rope per layer type
        ropes = {kind: _rope(cfg, head_dim, params[kind]) for kind in (FULL, SLIDING)}
    else:  # rope_theta (+ rope_scaling) for global layers, rope_local_base_freq unscaled for sliding ones
        ropes = {
            FULL: _rope(cfg, head_dim, {**(cfg.get("rope_scaling") or {}), "rope_theta": cfg.get("rope_theta", 1e6)}),
            SLIDING: _rope(cfg, head_dim, {"rope_theta": cfg.get("rope_local_base_freq", 10000.0)}),
        }
    types = cfg.get("layer_types") or default
    window = cfg.get("sliding_window")
    layers = tuple(LayerSpec(ropes[kind], window if kind == SLIDING else None) for kind in types)
    return _gemma(cfg, dtype, layers, qk_norm=True)


def phi3(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Phi-3 / Phi-3.5 / Phi-4-mini: fused qkv and gate_up tensors, longrope scaling, partial rotary (Phi-4-mini)."""
    base, layers = _uniform(cfg, dtype, SLIDING)
    return ModelArgs(
        **base,
        layers=layers,
        mlp_act=_activation(cfg, "hidden_act", "silu", "Phi-3"),
        weights=WeightMap(qkv=("qkv_proj",), qkv_layout="concat", gate_up=("gate_up_proj",)),
    )


# GPT-NeoX's and Falcon's plain MLP; the attention's output projection is called ``dense`` in both.
DENSE_NAMES = (("o_proj", "dense"), ("up_proj", "dense_h_to_4h"), ("down_proj", "dense_4h_to_h"))


def gpt_neox(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """GPT-NeoX / Pythia: LayerNorms with bias, a per-head fused ``query_key_value`` ``[q, k, v]``, partial rotary
    (``rotary_pct``), biased linears, a plain gelu MLP, and parallel or sequential residuals."""
    heads = cfg["num_attention_heads"]
    cfg = {
        "rope_theta": cfg.get("rotary_emb_base", 10000.0),
        "partial_rotary_factor": cfg.get("rotary_pct", 0.25),  # older configs' names and defaults
        **cfg,
        "num_key_value_heads": heads,  # always multi-head
        "head_dim": cfg["hidden_size"] // heads,
        "rms_norm_eps": cfg.get("layer_norm_eps", 1e-5),
    }
    base, layers = _uniform(cfg, dtype, FULL)
    bias = bool(cfg.get("attention_bias", True))
    rename = (("embed_tokens", "embed_in"), ("self_attn", "attention"), ("norm", "final_layer_norm"))
    return ModelArgs(
        **base,
        layers=layers,
        norm="layer",
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=True,
        mlp_gated=False,
        mlp_act=_activation(cfg, "hidden_act", "gelu", "GPT-NeoX"),
        parallel_residual=bool(cfg.get("use_parallel_residual", True)),
        weights=WeightMap(
            qkv=("query_key_value",),
            qkv_layout="grouped",
            rename=(*rename, *DENSE_NAMES, ("lm_head", "embed_out")),
            prefix="gpt_neox.",
        ),
    )


def falcon(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Falcon: multi-query (``multi_query``) or grouped (``new_decoder_architecture`` with ``num_kv_heads``) heads in
    one fused ``query_key_value``, attention and MLP in parallel (one shared norm or ``ln_attn`` / ``ln_mlp``) or
    sequential, optional biases, a plain gelu MLP. ALiBi is refused."""
    if cfg.get("alibi"):
        raise ValueError(
            "Falcon alibi=True is not supported (supported: alibi=False, rotary position embeddings, as in "
            "Falcon-7B/40B/180B and Falcon-11B)"
        )
    heads = cfg["num_attention_heads"]
    new_arch = bool(cfg.get("new_decoder_architecture", False))
    if new_arch:
        kv = cfg.get("num_kv_heads") or heads
    else:
        kv = 1 if cfg.get("multi_query", True) else heads
    hidden = cfg["hidden_size"]
    cfg = {
        **cfg,
        "num_key_value_heads": kv,
        "head_dim": hidden // heads,
        "intermediate_size": cfg.get("ffn_hidden_size") or 4 * hidden,
        "rms_norm_eps": cfg.get("layer_norm_epsilon", 1e-5),
        "max_position_embeddings": cfg.get("max_position_embeddings", 2048),
        "tie_word_embeddings": cfg.get("tie_word_embeddings", True),
    }
    base, layers = _uniform(cfg, dtype, FULL)
    parallel = new_arch or bool(cfg.get("parallel_attn", True))
    two_norms = new_arch and (cfg.get("num_ln_in_parallel_attn") or 2) == 2
    norms = (("input_layernorm", "ln_attn"), ("post_attention_layernorm", "ln_mlp")) if two_norms else ()
    rename = (("embed_tokens", "word_embeddings"), ("layers", "h"), ("self_attn", "self_attention"), ("norm", "ln_f"))
    bias = bool(cfg.get("bias", False))
    return ModelArgs(
        **base,
        layers=layers,
        norm="layer",
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bias,
        mlp_gated=False,
        mlp_act=_activation(cfg, "activation", "gelu", "Falcon"),
        parallel_residual=parallel,
        shared_input_norm=parallel and not two_norms,
        weights=WeightMap(
            qkv=("query_key_value",),
            qkv_layout="grouped",
            rename=(*rename, *norms, *DENSE_NAMES),
            prefix="transformer.",
        ),
    )


def mixtral(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Mixtral: Mistral's attention with a routed mixture of SwiGLU experts (top ``num_experts_per_tok`` of
    ``num_local_experts``) in place of the MLP."""
    experts, top_k = cfg["num_local_experts"], cfg.get("num_experts_per_tok", 2)
    if not 0 < top_k <= experts:
        raise ValueError(f"Mixtral num_experts_per_tok={top_k} must be between 1 and num_local_experts={experts}")
    base, layers = _uniform(cfg, dtype, SLIDING)
    return ModelArgs(
        **base,
        layers=layers,
        mlp_act=_activation(cfg, "hidden_act", "silu", "Mixtral"),
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
    if not 0 < top_k <= experts:
        raise ValueError(f"{family} num_experts_per_tok={top_k} must be between 1 and num_experts={experts}")
    step, dense = cfg.get("decoder_sparse_step", 1), cfg.get("mlp_only_layers") or []
    if step != 1 or dense:
        raise ValueError(
            f"{family} decoder_sparse_step={step}, mlp_only_layers={dense} is not supported (supported: a mixture of "
            "experts in every layer, decoder_sparse_step=1 and mlp_only_layers=[])"
        )
    return dict(
        intermediate_size=cfg["moe_intermediate_size"],
        mlp_act=_activation(cfg, "hidden_act", "silu", family),
        num_experts=experts,
        experts_per_token=top_k,
        experts_renormalize=bool(cfg.get("norm_topk_prob", False)),
    )


def qwen3_moe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen3-MoE: Qwen3's attention (q/k norms) with a routed mixture of SwiGLU experts in every layer."""
    base, layers = _uniform(cfg, dtype, SLIDING if cfg.get("use_sliding_window") else FULL)
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
    base = _base(cfg, dtype)
    # transformers' layer kinds without ``layer_types``: sliding on even layers below max_window_layers
    below = cfg.get("max_window_layers", 28) if cfg.get("use_sliding_window") else 0
    default = [SLIDING if i % 2 == 0 and i < below else FULL for i in range(base["num_layers"])]
    layers = tuple(LayerSpec(_rope(cfg, base["head_dim"]), w) for w in _windows(cfg, default))
    return ModelArgs(
        **{**base, **_qwen_moe(cfg, dtype, "Qwen2-MoE")},
        layers=layers,
        qkv_bias=bool(cfg.get("qkv_bias", True)),
        shared_expert_size=cfg["shared_expert_intermediate_size"],
        weights=WeightMap(rename=(("experts", "experts.{e}"),)),
    )

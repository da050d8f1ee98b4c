"""The mixture-of-experts families: a routed mixture of SwiGLU experts (``jllm.models.moe``) in place of each MLP,
or of some (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, Granite MoE and MoE Shared, Phi-3.5-MoE, ERNIE 4.5 MoE, Llama 4's
text model, HunYuan MoE, FlexOlmo, Hy3).

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
    layer_windows,
    read_rope,
    uniform,
    whole_head_rotary,
)
from jllm.models.families.llama import granite, hunyuan_dense, olmo2
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap
from jllm.models.moe import GroupedRouting


def _check_top_k(family: str, top_k: int, experts: int, experts_key: str) -> None:
    """Refuses a router that would pick no expert or more experts than there are."""
    if not 0 < top_k <= experts:
        raise ValueError(f"{family} num_experts_per_tok={top_k} must be between 1 and {experts_key}={experts}")


def mixtral(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Mixtral: Mistral's attention with a routed mixture of SwiGLU experts (top ``num_experts_per_tok`` of
    ``num_local_experts``) in place of the MLP; MixtralConfig's defaults where a config leaves them out (8 experts,
    rope base 1e6, eps 1e-5)."""
    cfg = {"num_local_experts": 8, "rope_theta": 1e6, "rms_norm_eps": 1e-5, **cfg}
    experts, top_k = cfg["num_local_experts"], cfg.get("num_experts_per_tok", 2)
    _check_top_k("Mixtral", top_k, experts, "num_local_experts")
    base, layers = uniform(whole_head_rotary(cfg), dtype, SLIDING)
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


def _qwen_moe(cfg: dict[str, Any], layers: tuple[LayerSpec, ...], family: str) -> dict[str, Any]:
    """Qwen2/3-MoE's mixture: top ``num_experts_per_tok`` of ``num_experts`` SwiGLU experts of width
    ``moe_intermediate_size``, renormalised where ``norm_topk_prob``, in the layers transformers makes sparse (every
    ``decoder_sparse_step``-th, none of ``mlp_only_layers``); the others a dense SwiGLU of ``intermediate_size``."""
    experts = cfg.get("num_experts") or cfg.get("num_local_experts") or 0
    top_k = cfg.get("num_experts_per_tok", 0)
    _check_top_k(family, top_k, experts, "num_experts")
    step, dense = cfg.get("decoder_sparse_step") or 1, cfg.get("mlp_only_layers") or []
    kinds = ["dense" if i in dense or (i + 1) % step else "sparse" for i in range(len(layers))]
    return dict(
        intermediate_size=cfg["moe_intermediate_size"],
        layers=dense_mlps(layers, kinds, cfg["intermediate_size"], family),
        mlp_act=activation(cfg, "hidden_act", "silu", family),
        num_experts=experts,
        experts_per_token=top_k,
        experts_renormalize=bool(cfg.get("norm_topk_prob", False)),
    )


def qwen3_moe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen3-MoE: Qwen3's attention (q/k norms) with a routed mixture of SwiGLU experts (``_qwen_moe``)."""
    base, layers = uniform(whole_head_rotary(cfg), dtype, SLIDING if cfg.get("use_sliding_window") else FULL)
    bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(
        **{**base, **_qwen_moe(cfg, layers, "Qwen3-MoE")},
        qk_norm=True,
        qkv_bias=bias,
        o_bias=bias,
        weights=WeightMap(rename=(("experts", "experts.{e}"),)),
    )


def aria_text(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Aria's text model (``AriaTextForCausalLM``): Llama's layers with, in every layer, a mixture of
    ``moe_num_experts`` SwiGLU experts of width ``intermediate_size`` (the top ``moe_topk`` by the router's logits,
    weighted by a softmax over those) beside an ungated shared SwiGLU ``moe_num_shared_experts`` times as wide. The
    routed experts stored as transformers saves them, ``experts.fc1`` ``[experts, in, gate and up]`` and ``fc2``."""
    experts, top_k = cfg.get("moe_num_experts", 8), cfg.get("moe_topk", 2)
    _check_top_k("Aria", top_k, experts, "moe_num_experts")
    # the routed experts are always SiLU-gated, the shared ones by hidden_act: one activation serves both here
    if (act := activation(cfg, "hidden_act", "silu", "Aria")) != "silu":
        raise ValueError(f"Aria hidden_act={act!r} is not supported (supported: 'silu', its routed experts')")
    if cfg.get("mlp_bias"):
        raise ValueError("Aria mlp_bias=True is not supported (its shared experts' biases); supported: false")
    base, layers = uniform(whole_head_rotary(cfg), dtype, FULL)
    bias = bool(cfg.get("attention_bias", False))
    rename = (
        ("gate", "router"),
        ("shared_expert", "shared_experts"),
        ("experts.gate_up_proj.kernel", "experts.fc1.weight"),
        ("experts.down_proj.kernel", "experts.fc2.weight"),
    )
    return ModelArgs(
        **base,
        layers=layers,
        qkv_bias=bias,
        o_bias=bias,
        num_experts=experts,
        experts_per_token=top_k,
        experts_renormalize=True,
        shared_expert_size=base["intermediate_size"] * cfg.get("moe_num_shared_experts", 2),
        shared_expert_gated=False,
        weights=WeightMap(rename=rename),
    )


def qwen2_moe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): Qwen2's attention (qkv bias) with routed SwiGLU experts and a
    shared expert every token takes, scaled by a sigmoid gate."""
    base = base_args(cfg, dtype)
    # transformers' layer kinds without ``layer_types``: sliding on even layers below max_window_layers
    below = cfg.get("max_window_layers", 28) if cfg.get("use_sliding_window") else 0
    default = [SLIDING if i % 2 == 0 and i < below else FULL for i in range(base["num_layers"])]
    rope = read_rope(whole_head_rotary(cfg), base["head_dim"])
    layers = tuple(LayerSpec(rope, w) for w in layer_windows(cfg, default))
    return ModelArgs(
        **{**base, **_qwen_moe(cfg, layers, "Qwen2-MoE")},
        qkv_bias=bool(cfg.get("qkv_bias", True)),
        shared_expert_size=cfg["shared_expert_intermediate_size"],
        weights=WeightMap(rename=(("experts", "experts.{e}"),)),
    )


def olmoe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """OLMoE: OLMo 2's q/k RMSNorms over the whole projection, then q, k and v clipped to ``clip_qkv`` where set,
    pre-norm RMSNorms, and in every layer a routed mixture of ``num_experts`` SwiGLU experts of width
    ``intermediate_size`` (top ``num_experts_per_tok``, renormalised where ``norm_topk_prob``); eps 1e-5 by default
    (OlmoeConfig's)."""
    cfg = whole_head_rotary({"rms_norm_eps": 1e-5, **cfg})
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


def flex_olmo(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """FlexOlmo: OLMo 2's layers (norms on the blocks' outputs only, q/k RMSNorms over all heads) with OLMoE's
    mixture in every layer: the top ``num_experts_per_tok`` of ``num_experts`` SwiGLU experts of width
    ``intermediate_size``, renormalised where ``norm_topk_prob``; rope base 5e5 and eps 1e-6 by default
    (FlexOlmoConfig's)."""
    experts, top_k = cfg.get("num_experts", 7), cfg.get("num_experts_per_tok", 5)
    _check_top_k("FlexOlmo", top_k, experts, "num_experts")
    dense = olmo2({"rope_theta": 5e5, "rms_norm_eps": 1e-6, **cfg}, dtype)
    rename = (*dense.weights.rename, ("experts", "experts.{e}"))
    return dataclasses.replace(
        dense,
        num_experts=experts,
        experts_per_token=top_k,
        experts_renormalize=bool(cfg.get("norm_topk_prob", False)),
        weights=dataclasses.replace(dense.weights, rename=rename),
    )


def granite_moe(cfg: dict[str, Any], dtype: Any, shared: int = 0) -> ModelArgs:
    """Granite MoE (Granite 3.0 1B-A400M, 3B-A800M): Granite's four multipliers with, in every layer, a routed
    mixture of ``num_local_experts`` SwiGLU experts (top ``num_experts_per_tok``, a softmax over the chosen logits:
    renormalised), each projection's experts stored as one tensor (``input_linear``: gate rows, then up rows;
    ``output_linear``). GraniteMoeShared adds a SwiGLU of width ``shared`` (its ``shared_intermediate_size``)
    every token takes, ungated, its layer's ``shared_mlp``."""
    experts, top_k = cfg.get("num_local_experts", 8), cfg.get("num_experts_per_tok", 2)
    _check_top_k("Granite MoE", top_k, experts, "num_local_experts")
    rename = (("mlp", "block_sparse_moe"), ("experts", ""), ("gate", "router.layer"), ("down_proj", "output_linear"))
    return dataclasses.replace(
        granite(cfg, dtype),
        mlp_bias=False,
        num_experts=experts,
        experts_per_token=top_k,
        shared_expert_size=shared,
        shared_expert_gated=False,
        weights=WeightMap(gate_up=("input_linear",), rename=(*rename, ("mlp.shared_expert", "shared_mlp"))),
    )


def granite_moe_shared(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    return granite_moe(cfg, dtype, cfg.get("shared_intermediate_size", 0))


def phimoe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Phi-3.5-MoE: LayerNorms (weight and bias), attention and LM-head biases where ``attention_bias`` /
    ``lm_head_bias``, longrope scaled by ``short_mscale``, by ``long_mscale`` past the original context (as transformers
    5 does, with the short factors throughout), and in every layer ``num_local_experts`` SwiGLU
    experts of which sparsemixer picks two, with ``router_jitter_noise`` as its epsilon; PhimoeConfig's defaults
    where a config leaves them out (rope base 1e6, eps 1e-5)."""
    cfg = {
        "rope_theta": 1e6,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 4096 * 32,
        "num_key_value_heads": 8,
        **cfg,
    }
    experts, top_k = cfg.get("num_local_experts", 16), cfg.get("num_experts_per_tok", 2)
    if top_k != 2:
        raise ValueError(
            f"Phi-MoE num_experts_per_tok={top_k} is not supported (its sparsemixer router picks two experts: "
            "num_experts_per_tok=2)"
        )
    base = base_args(cfg, dtype)
    params = dict(cfg.get("rope_scaling") or cfg.get("rope_parameters") or {})
    if params.get("rope_type", params.get("type", "default")) != "default":
        if "short_mscale" not in params:
            raise ValueError(f"Phi-MoE rope scaling {params} has no short_mscale (transformers requires it)")
        params["attention_factor"] = params["short_mscale"]  # transformers' cos/sin factor up to the original context
        if "short_factor" in params:  # longrope: past the original context transformers 5 scales by long_mscale,
            # keeping the short factors (its forward recomputes them without the length)
            params["long_attention_factor"] = params.get("long_mscale", params["short_mscale"])
            params["long_factor"] = params["short_factor"]
    rope = read_rope(whole_head_rotary(cfg), base["head_dim"], whole_head_rotary(params))
    bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(
        **base,
        layers=tuple(LayerSpec(rope, w) for w in layer_windows(cfg, [SLIDING] * base["num_layers"])),
        norm="layer",
        qkv_bias=bias,
        o_bias=bias,
        lm_head_bias=bool(cfg.get("lm_head_bias", False)),
        mlp_act=activation(cfg, "hidden_act", "silu", "Phi-MoE"),
        num_experts=experts,
        experts_per_token=2,
        expert_routing="sparsemixer",
        router_eps=float(cfg.get("router_jitter_noise", 0.01)),
        weights=WeightMap(
            gate_up=("w1", "w3"), rename=(("mlp", "block_sparse_moe"), ("experts", "experts.{e}"), ("down_proj", "w2"))
        ),
    )


def ernie4_5_moe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """ERNIE 4.5 MoE (ERNIE-4.5-21B-A3B, 300B-A47B): Llama's layout with interleaved rotary pairs; a mixture of
    ``moe_num_experts`` SwiGLU experts of width ``moe_intermediate_size`` in every ``moe_layer_interval``-th layer
    from ``moe_layer_start_index`` to ``moe_layer_end_index`` (a dense SwiGLU of ``intermediate_size`` in the
    others), beside ``moe_num_shared_experts`` experts' worth of one ungated shared SwiGLU. Its router picks the top
    ``moe_k`` of the softmax plus ``e_score_correction_bias`` and weights them by the softmax alone, renormalised."""
    defaults = dict(rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=131072, tie_word_embeddings=True)
    cfg = {**defaults, "num_key_value_heads": 4, **cfg}
    if cfg.get("use_bias"):
        raise ValueError("ERNIE 4.5 MoE use_bias=True is not supported (supported: use_bias=False)")
    experts = cfg.get("moe_num_experts", cfg.get("num_experts", 64))
    top_k = cfg.get("moe_k", cfg.get("num_experts_per_tok", 6))
    _check_top_k("ERNIE 4.5 MoE", top_k, experts, "moe_num_experts")
    base = base_args(cfg, dtype)
    n = base["num_layers"]
    start, end = cfg.get("moe_layer_start_index", 1), cfg.get("moe_layer_end_index", -1)
    end, interval = n - 1 if end == -1 else end, cfg.get("moe_layer_interval", 1)
    rope = dataclasses.replace(read_rope(whole_head_rotary(cfg), base["head_dim"]), interleaved=True)
    dense = [not ((i + 1) % interval == 0 and start <= i <= end) for i in range(n)]
    moe_width = cfg.get("moe_intermediate_size", 1536)
    return ModelArgs(
        **{**base, "intermediate_size": moe_width},
        layers=tuple(LayerSpec(rope, dense_mlp_size=base["intermediate_size"] if d else None) for d in dense),
        mlp_act=activation(cfg, "hidden_act", "silu", "ERNIE 4.5 MoE"),
        num_experts=experts,
        experts_per_token=top_k,
        shared_expert_size=moe_width * cfg.get("moe_num_shared_experts", 2),
        shared_expert_gated=False,
        expert_routing="softmax_corrected",
        router_eps=float(cfg.get("moe_norm_min", 1e-12)),
        weights=WeightMap(
            rename=(
                ("experts", "experts.{e}"),
                ("shared_expert", "shared_experts"),
                ("e_score_correction_bias", "moe_statics.e_score_correction_bias"),
            )
        ),
    )


def hunyuan_moe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """HunYuan MoE V1 (Hunyuan-A13B): HunYuan dense's attention with, in every layer, the top ``moe_topk`` of
    ``num_experts`` SwiGLU experts (a softmax, renormalised over the chosen; the router is ``gate.wg``) beside one
    ungated shared SwiGLU (``shared_mlp``), all ``intermediate_size`` wide, as transformers builds them. Per-layer
    lists are read where every layer agrees; other ``moe_intermediate_size`` or ``num_shared_expert`` are refused."""
    experts, top_k = _every_layer(cfg, "num_experts", 1), _every_layer(cfg, "moe_topk", 1)
    _check_top_k("HunYuan MoE", top_k, experts, "num_experts")
    for key, supported in (("moe_intermediate_size", cfg["intermediate_size"]), ("num_shared_expert", 1)):
        if _every_layer(cfg, key, supported) != supported:
            raise ValueError(
                f"HunYuan MoE {key}={cfg[key]!r} is not supported (supported: {supported}, as transformers builds it)"
            )
    dense = hunyuan_dense(cfg, dtype)
    rename = (("experts", "experts.{e}"), ("gate", "gate.wg"), ("shared_expert", "shared_mlp"))
    return dataclasses.replace(
        dense,
        num_experts=experts,
        experts_per_token=top_k,
        shared_expert_size=dense.intermediate_size,
        shared_expert_gated=False,
        weights=dataclasses.replace(dense.weights, rename=(*dense.weights.rename, *rename)),
    )


# AFMoE's and Hy3's router: its weight under ``router.gate``, its choice bias beside it in the block as ``expert_bias``
ROUTER_EXPERT_BIAS = (("gate", "router.gate"), ("mlp.gate.e_score_correction_bias", "mlp.expert_bias"))


def hy_v3(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Hy3 (Tencent HYV3): Apertus' attention (per-head q/k RMSNorms before the rotary); dense SwiGLUs where
    ``mlp_layer_types`` says "dense" (the first layer by default), else ``num_experts`` SwiGLUs chosen by a float32
    router's sigmoid score plus ``expert_bias``, weighted by the renormalised scores times ``router_scaling_factor``,
    beside ``num_shared_experts`` ungated shared ones (``shared_mlp``). HYV3Config's defaults for what a config
    leaves out; ``mlp_bias`` (on the shared experts too) is refused."""
    if cfg.get("mlp_bias"):
        raise ValueError("Hy3 mlp_bias=True is not supported (supported: False, as the released checkpoints)")
    n = cfg["num_hidden_layers"]
    cfg = {"head_dim": 128, "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 11_158_840.0, **cfg}
    experts, top_k = cfg.get("num_experts") or cfg.get("num_local_experts") or 192, cfg.get("num_experts_per_tok", 8)
    _check_top_k("Hy3", top_k, experts, "num_experts")
    base, layers = uniform(whole_head_rotary(cfg), dtype, FULL)
    kinds = cfg.get("mlp_layer_types") or ["dense"] + ["sparse"] * (n - 1)
    moe_width = cfg.get("moe_intermediate_size", 1536)
    bias = bool(cfg.get("attention_bias", False))
    rename = (
        ("experts", "experts.{e}"),
        ("shared_expert", "shared_mlp"),
        *ROUTER_EXPERT_BIAS,
    )
    return ModelArgs(
        **{**base, "intermediate_size": moe_width},
        layers=dense_mlps(layers, kinds, base["intermediate_size"], "Hy3"),
        qk_norm=True,
        qkv_bias=bias,
        o_bias=bias,
        mlp_act=activation(cfg, "hidden_act", "silu", "Hy3"),
        num_experts=experts,
        experts_per_token=top_k,
        shared_expert_size=moe_width * cfg.get("num_shared_experts", 1),
        shared_expert_gated=False,
        moe_routing=GroupedRouting("sigmoid", scale=float(cfg.get("router_scaling_factor", 2.826))),
        weights=WeightMap(rename=rename),
    )


def _every_layer(cfg: dict[str, Any], key: str, default: int) -> int:
    """A setting given once or per layer (HunYuan's lists), refused by name where the layers differ."""
    value = cfg.get(key, default)
    if isinstance(value, list):
        if len(set(value)) != 1:
            raise ValueError(f"HunYuan MoE {key}={value!r} is not supported (supported: one value for every layer)")
        value = value[0]
    return value


def llama4(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Llama 4's text model (Scout, Maverick): a mixture of ``num_local_experts`` SwiGLU experts in the layers
    ``moe_layers`` names (by default every ``interleave_moe_layer_step``-th), each token's top
    ``num_experts_per_tok`` by a sigmoid of the router's logits that scales the expert's input, beside an ungated
    shared SwiGLU; dense SwiGLUs of ``intermediate_size_mlp`` in the other layers. Rotary on neighbouring channel
    pairs in the layers ``no_rope_layers`` marks 1 (by default all but every ``no_rope_layer_interval``-th), there
    followed by a weightless RMSNorm on each query and key head where ``use_qk_norm``; the layers without rotary scale
    their queries by position where ``attn_temperature_tuning``. Those rotary layers attend within chunks of
    ``attention_chunk_size`` tokens, which jllm has no kernel for: it serves contexts up to one chunk
    (``ModelArgs.max_context``), where that is causal attention."""
    defaults = dict(rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=4096 * 32, head_dim=128)
    # Llama4TextConfig's sizes (an image-text config saved by transformers 4.x keeps only those that differ)
    sizes = dict(vocab_size=202_048, hidden_size=5120, intermediate_size=8192, num_hidden_layers=48)
    cfg = {**defaults, **sizes, "num_attention_heads": 40, "num_key_value_heads": 8, **cfg}
    experts, top_k = cfg.get("num_local_experts", 16), cfg.get("num_experts_per_tok", 1)
    _check_top_k("Llama 4", top_k, experts, "num_local_experts")
    base = base_args(cfg, dtype)
    n = base["num_layers"]
    step = cfg.get("interleave_moe_layer_step", 1)
    moe_layers = cfg.get("moe_layers")
    moe_layers = set(range(step - 1, n, step) if moe_layers is None else moe_layers)
    interval = cfg.get("no_rope_layer_interval", 4)
    uses_rope = cfg.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]
    chunk = cfg.get("attention_chunk_size", 8192)
    types = cfg.get("layer_types") or ["chunked_attention" if r and chunk else FULL for r in uses_rope]
    rope = dataclasses.replace(read_rope(whole_head_rotary(cfg), base["head_dim"]), interleaved=True)
    tuning = cfg.get("attn_temperature_tuning", True)
    temperature = (float(cfg.get("floor_scale", 8192)), float(cfg.get("attn_scale", 0.1))) if tuning else None
    layers = tuple(
        LayerSpec(
            rope if r else None,
            dense_mlp_size=None if i in moe_layers else cfg.get("intermediate_size_mlp", 16384),
            qk_l2_norm=bool(r and cfg.get("use_qk_norm", True)),
            attn_temperature=None if r else temperature,
        )
        for i, r in enumerate(uses_rope)
    )
    bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(
        **base,
        layers=layers,
        qkv_bias=bias,
        o_bias=bias,
        mlp_act=activation(cfg, "hidden_act", "silu", "Llama 4"),
        num_experts=experts,
        experts_per_token=top_k,
        expert_routing="sigmoid_input",
        shared_expert_size=base["intermediate_size"],
        shared_expert_gated=False,
        attention_chunk_size=chunk if "chunked_attention" in types else None,
        weights=WeightMap(rename=(("mlp", "feed_forward"), ("gate", "router")), expert_params="in_out"),
    )

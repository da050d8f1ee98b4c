"""What every family reader shares: the base settings, the rotary settings, each layer's sliding window, the
activation names, read from ``config.json`` the same way for all, GPT-2's kind of decoder (``gpt_decoder``) that
several families keep, and ALiBi's slopes (Bloom's, Falcon-RW's, MPT's).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from jllm.models.model_args import LayerSpec, ModelArgs
from jllm.models.rope import Rope

SLIDING, FULL = "sliding_attention", "full_attention"
# M-RoPE's settings: which channels read the temporal, height and width positions (all one position in text, so for
# text it is the plain rotary)
MROPE_KEYS = ("mrope_section", "mrope_interleaved")
# transformers' activation names -> ours (``jllm.models.layers.ACTIVATIONS``); its ACT2FN's aliases of the same
# functions too (``swish``, ``gelu_fast``: the tanh gelu written out, ``gelu_python``)
HF_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "relu2": "relu2",
    "xielu": "xielu",
}


def base_args(cfg: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """The settings every family reads the same way (a family whose config names them otherwise renames its keys to
    these first: ``layer_norm_eps`` to ``rms_norm_eps``, say)."""
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


def gpt_decoder(cfg: dict[str, Any], dtype: Any, *, bias: bool = True, **settings: Any) -> ModelArgs:
    """The decoder GPT-2 set out, which GPT-BigCode, GPT-Neo, Bloom, MPT, OPT, XGLM and BioGPT keep: no rotary
    (positions from a table, sinusoids or ALiBi's bias, as ``settings`` say), LayerNorms, a plain (not gated) MLP,
    biases on every linear where ``bias``. ``cfg`` is in ``base_args``' names; ``settings``: the family's other
    ``ModelArgs`` fields, or its changes to these."""
    base = base_args(cfg, dtype)
    plain = dict(
        layers=(LayerSpec(None),) * base["num_layers"],
        norm="layer",
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bias,
        mlp_gated=False,
    )
    return ModelArgs(**base, **{**plain, **settings})


def read_rope(
    cfg: dict[str, Any], head_dim: int, params: dict[str, Any] | None = None, interleaved: bool = False
) -> Rope:
    """The rotary settings from old (``rope_theta`` + ``rope_scaling``) or new (``rope_parameters``) configs;
    ``interleaved``: the family rotates neighbouring channel pairs (GLM's layout)."""
    params = dict(params if params is not None else cfg.get("rope_scaling") or cfg.get("rope_parameters") or {})
    theta = params.get("rope_theta") or cfg.get("rope_theta") or 10000.0
    fraction = params.get("partial_rotary_factor") or cfg.get("partial_rotary_factor") or 1.0
    if "original_max_position_embeddings" in cfg:
        params.setdefault("original_max_position_embeddings", cfg["original_max_position_embeddings"])
    if params.get("rope_type") == "proportional":  # Gemma 4: every pair of the head turns, past the fraction at zero
        params["rope_angles"], fraction = int(fraction * head_dim // 2), 1.0
    rope = Rope.from_hf(theta, int(head_dim * fraction), params, cfg.get("max_position_embeddings", 4096))
    return dataclasses.replace(rope, interleaved=True) if interleaved else rope


def whole_head_rotary(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` without ``partial_rotary_factor`` (at its top level, in its rope settings, and in each layer type's):
    for the families whose transformers rotary embedding never reads it (Llama's, Mistral's, Qwen's, Gemma's,
    Mixtral's, Granite's, OLMo's, OLMoE's, Falcon's, StarCoder2's, SmolLM3's, EXAONE 4's, HunYuan's, ERNIE's, ...), so
    their default rope turns every channel of a head whatever a config says there; their scaled ropes do read it, and
    then transformers' forward fails on the width."""

    def strip(d: dict[str, Any], depth: int) -> dict[str, Any]:
        nested = ("rope_scaling", "rope_parameters") if depth == 0 else (FULL, SLIDING)
        return {
            k: strip(v, depth + 1) if k in nested and isinstance(v, dict) else v
            for k, v in d.items()
            if k != "partial_rotary_factor"
        }

    return strip(cfg, 0)


def layer_windows(cfg: dict[str, Any], default: list[str]) -> list[int | None]:
    """Each layer's sliding window: ``layer_types`` where the config has them, else the family's ``default``."""
    window = cfg.get("sliding_window")
    types = cfg.get("layer_types") or default
    return [window if window and kind == SLIDING else None for kind in types]


def layer_type_ropes(cfg: dict[str, Any], head_dim: int, local_theta: float, global_theta: float) -> dict[str, Rope]:
    """Each layer type's rope (Gemma 3, OLMo 3): transformers 5's ``rope_parameters`` per type, or an older config's
    ``rope_theta`` (``global_theta`` by default) and ``rope_scaling`` for the global layers and an unscaled
    ``local_theta`` for the sliding ones."""
    params = cfg.get("rope_parameters") or {}
    if FULL in params:
        return {kind: read_rope(cfg, head_dim, params[kind]) for kind in (FULL, SLIDING)}
    scaled = {**(cfg.get("rope_scaling") or {}), "rope_theta": cfg.get("rope_theta", global_theta)}
    return {FULL: read_rope(cfg, head_dim, scaled), SLIDING: read_rope(cfg, head_dim, {"rope_theta": local_theta})}


def per_type_ropes(
    cfg: dict[str, Any], head_dim: int, default: dict[str, dict[str, Any]], factor_in_default: bool = True
) -> dict[str, Rope]:
    """Each layer type's rope from a ``rope_parameters`` keyed by layer type (Laguna's, Mellum's: a partial rotary
    factor each), the family's ``default`` where the config has none. A top-level ``partial_rotary_factor`` is not
    read: transformers' rotary embeddings read each type's own (a config loaded with the factor beside such
    ``rope_parameters`` turns the whole head there). ``factor_in_default`` False: the family's default rotary never
    reads the factor, its proportional one does (``proportional_rope``)."""
    params = cfg.get("rope_parameters") or default
    top = {k: v for k, v in cfg.items() if k != "partial_rotary_factor"}
    read = read_rope if factor_in_default else proportional_rope
    return {kind: read(top, head_dim, params[kind]) for kind in (FULL, SLIDING) if kind in params}


def proportional_rope(cfg: dict[str, Any], head_dim: int, params: dict[str, Any]) -> Rope:
    """A layer type's rope where, as in Gemma 4's and LFM3's transformers rotary, the proportional rope reads
    ``partial_rotary_factor`` and the default one never does (it turns the whole head)."""
    if params.get("rope_type") == "proportional":
        return read_rope(cfg, head_dim, params)
    return read_rope(whole_head_rotary(cfg), head_dim, whole_head_rotary(params))


def mixture_layers(kinds: list[str], num_layers: int, family: str) -> list[bool]:
    """Whether each layer's MLP is a mixture of experts, by its kind (transformers' ``mlp_layer_types``, or the
    family's rule): "sparse" a mixture, "dense" a dense MLP; another kind, or a list not naming each of the
    ``num_layers`` layers, refused by name."""
    if len(kinds) != num_layers:
        raise ValueError(f"{family} mlp_layer_types={kinds!r} must name each of the {num_layers} layers")
    for kind in kinds:
        if kind not in ("dense", "sparse"):
            raise ValueError(f"{family} mlp_layer_types entry {kind!r} is not supported (supported: 'dense', 'sparse')")
    return [kind == "sparse" for kind in kinds]


def dense_mlps(layers: tuple[LayerSpec, ...], kinds: list[str], width: int, family: str) -> tuple[LayerSpec, ...]:
    """A mixture of experts' ``layers`` with a dense MLP of ``width`` where ``kinds`` (``mixture_layers``') says
    "dense"."""
    return tuple(
        dataclasses.replace(spec, dense_mlp_size=None if moe else width)
        for spec, moe in zip(layers, mixture_layers(kinds, len(layers), family), strict=True)
    )


def typed_layers(cfg: dict[str, Any], ropes: dict[str, Rope | None], default: list[str]) -> tuple[LayerSpec, ...]:
    """Each layer from its type (``layer_types``, else ``default``): that type's rope (None: no rotary), and the
    ``sliding_window`` if it slides."""
    types = cfg.get("layer_types") or default
    return tuple(LayerSpec(ropes[kind], w) for kind, w in zip(types, layer_windows(cfg, default), strict=True))


def uniform(
    cfg: dict[str, Any], dtype: Any, default: str, interleaved: bool = False
) -> tuple[dict[str, Any], tuple[LayerSpec, ...]]:
    """The base settings and the layers of a family whose layers share one rope; ``default``: each layer's kind
    where the config has no ``layer_types``."""
    base = base_args(cfg, dtype)
    rope = read_rope(cfg, base["head_dim"], interleaved=interleaved)
    return base, tuple(LayerSpec(rope, w) for w in layer_windows(cfg, [default] * base["num_layers"]))


def check_attends(layers: tuple[LayerSpec, ...], family: str) -> None:
    """Refuses a hybrid model with no attention layer: its KV pool, sized in pages of attention layers, would be
    empty."""
    if all(spec.mixer != "attention" for spec in layers):
        kinds = [spec.mixer for spec in layers]
        raise ValueError(
            f"{family} with no attention layer (layers {kinds}) is not supported: the KV pool is sized in pages of "
            "attention layers (at least one is needed)"
        )


def activation(cfg: dict[str, Any], key: str, default: str, family: str) -> str:
    """The config's activation name as one of ``layers.ACTIVATIONS``, refusing others by name."""
    name = cfg.get(key) or default
    if name not in HF_ACTIVATIONS:
        raise ValueError(f"{family} {key} {name!r} is not supported (supported: {', '.join(HF_ACTIVATIONS)})")
    return HF_ACTIVATIONS[name]


def bloom_slopes(heads: int) -> tuple[float, ...]:
    """Bloom's (and Falcon-RW's) slopes: a geometric series from ``2 ** (-8 / n)`` over the largest power of two
    ``n <= heads``, the remaining heads taking every other term of the series for ``2 n`` (float32, as transformers'
    ``build_alibi_tensor``)."""
    closest = 2 ** math.floor(math.log2(heads))
    base = np.float32(2 ** (-(2 ** -(math.log2(closest) - 3))))
    slopes = np.power(base, np.arange(1, 1 + closest, dtype=np.float32))
    if closest != heads:
        extra_base = np.float32(2 ** (-(2 ** -(math.log2(2 * closest) - 3))))
        extra = np.arange(1, 1 + 2 * min(closest, heads - closest), 2, dtype=np.float32)
        slopes = np.concatenate([slopes, np.power(extra_base, extra)])
    return tuple(float(s) for s in slopes)


def mpt_slopes(heads: int, bias_max: float) -> tuple[float, ...]:
    """MPT's slopes: ``2 ** -(bias_max * i / n)`` for i in 1..n over the power of two ``n >= heads``, the odd terms
    first where ``heads`` is not one (transformers' ``build_mpt_alibi_tensor``)."""
    n = 2 ** math.ceil(math.log2(heads))
    slopes = 1.0 / np.power(np.float32(2), np.arange(1, n + 1, dtype=np.float32) * np.float32(bias_max / n))
    if n != heads:
        slopes = np.concatenate([slopes[1::2], slopes[::2]])[:heads]
    return tuple(float(s) for s in slopes)

"""Gemma 4's text model (``Gemma4ForCausalLM``; the language model of ``Gemma4ForConditionalGeneration`` is read by
``multimodal.gemma4``) and Gemma 4 unified's (``Gemma4UnifiedForCausalLM``: the same layers without per-layer inputs
or a mixture): Gemma 3's sandwich-normed layers with sliding and full attention, and what Gemma 4 changes:

- the full-attention layers' own head width and KV heads (``global_head_dim``, ``num_global_key_value_heads``, or
  a saved config's ``per_layer_config``), their "proportional" rotary (a fraction of the pairs turns);
- keys reused as values on those layers (``attention_k_eq_v``), values RMS-normed without a weight, q/k norms with
  plain weights, attention scores unscaled (1.0);
- the last ``num_kv_shared_layers`` layers reading the K/V of the last earlier layer of their kind (no K/V of their
  own, no pages), and their MLPs twice as wide (``use_double_wide_mlp``);
- per-layer inputs (``hidden_size_per_layer_input``: ``jllm.models.per_layer_inputs``) and a stored scalar on each
  layer's output;
- a mixture of experts beside every dense MLP (``enable_moe_block``: ``moe.MoEBesideMLP``);
- the final logits soft-capped; norms whose weights are the scale (not ``1 + w``).

Bidirectional attention over every token (``use_bidirectional_attention: "all"``) is refused; ``"vision"`` makes only
image tokens bidirectional, so text is causal.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import math
from typing import Any

from jllm.models.families.common import FULL, SLIDING, base_args, proportional_rope
from jllm.models.families.gemma import GEMMA_WEIGHTS
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap

# transformers' Gemma4TextConfig defaults for the keys the reader takes
GEMMA4_TEXT_DEFAULTS = dict(
    vocab_size=262_144,
    hidden_size=2304,
    intermediate_size=9216,
    num_hidden_layers=30,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    max_position_embeddings=131_072,
    sliding_window=512,
    hidden_size_per_layer_input=256,
    vocab_size_per_layer_input=262_144,
    tie_word_embeddings=True,
    rope_parameters={
        SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
        FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
    },
)
GLOBAL_HEAD_DIM = 512  # Gemma4TextConfig's ``global_head_dim`` default
PER_LAYER_KEYS = ("head_dim", "num_key_value_heads")  # what a saved config's per_layer_config may change
# our module name -> the checkpoint's: Gemma's norms, the per-layer inputs and the mixture's modules at their layer's
# level (or the model's), the router's scale kept as its norm's weight
GEMMA4_WEIGHTS = WeightMap(
    rename=(
        *GEMMA_WEIGHTS.rename,
        ("per_layer_inputs", ""),
        ("per_layer", ""),
        ("moe", ""),
        ("router.norm.weight", "router.scale"),
    ),
    expert_params="out_in",
)


def gemma4_text(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Gemma 4's text model from its config.json (keys it leaves out take Gemma4TextConfig's defaults)."""
    cfg = {**GEMMA4_TEXT_DEFAULTS, **cfg}
    if cfg.get("use_bidirectional_attention") == "all":
        raise ValueError(
            "Gemma 4 use_bidirectional_attention='all' is not supported (supported: null, 'vision'): jllm's attention "
            "is causal"
        )
    act = cfg.get("hidden_activation") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ValueError(f"Gemma 4 hidden_activation {act!r} is not supported (supported: 'gelu_pytorch_tanh')")
    n = cfg["num_hidden_layers"]
    types = list(cfg.get("layer_types") or [FULL if (i + 1) % 6 == 0 else SLIDING for i in range(n)])
    types[-1] = FULL  # transformers forces the last layer to full attention
    base = base_args(cfg, dtype)
    base["tie_word_embeddings"] = bool(cfg["tie_word_embeddings"])
    heads = _layer_heads(cfg, types)
    ropes = {
        kind: proportional_rope(cfg, heads[types.index(kind)][1], cfg["rope_parameters"][kind]) for kind in set(types)
    }
    sources = kv_sources(types, cfg.get("num_kv_shared_layers") or 0)
    double = bool(cfg.get("use_double_wide_mlp"))
    moe = _mixture(cfg)
    layers = tuple(
        LayerSpec(
            ropes[kind],
            cfg["sliding_window"] if kind == SLIDING else None,
            dense_mlp_size=cfg["intermediate_size"] * (2 if double and source is not None else 1),
            num_kv_heads=kv if kv != base["num_kv_heads"] else None,
            head_dim=hd if hd != base["head_dim"] else None,
            k_eq_v=bool(cfg.get("attention_k_eq_v")) and kind == FULL and source is None,
            kv_source=source,
        )
        for kind, (kv, hd), source in zip(types, heads, sources, strict=True)
    )
    bias = bool(cfg.get("attention_bias"))
    ple = cfg.get("hidden_size_per_layer_input") or 0
    return ModelArgs(
        **{**base, **moe.pop("base", {})},
        layers=layers,
        norm="rms_float32",
        mlp_act="gelu_tanh",
        embed_scale=math.sqrt(base["hidden_size"]),
        qkv_bias=bias,
        o_bias=bias,
        sandwich_norms=True,
        qk_norm=True,
        v_norm=True,
        sm_scale=1.0,
        final_softcap=cfg.get("final_logit_softcapping"),
        per_layer_input_size=ple,
        per_layer_vocab_size=cfg["vocab_size_per_layer_input"] if ple else 0,
        layer_scalar=True,
        weights=GEMMA4_WEIGHTS,
        **moe,
    )


# Gemma4UnifiedTextConfig's defaults where Gemma4TextConfig's differ; it has neither per-layer inputs nor a mixture
GEMMA4_UNIFIED_TEXT = dict(sliding_window=1024, max_position_embeddings=262_144)


def gemma4_unified_text(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Gemma 4 unified's text model (``Gemma4UnifiedForCausalLM``): Gemma 4's layers without per-layer inputs and
    without the mixture (transformers' ``Gemma4UnifiedTextDecoderLayer`` has neither, whatever the config says), with
    its own config's defaults."""
    cfg = {**GEMMA4_UNIFIED_TEXT, **cfg, "hidden_size_per_layer_input": 0, "enable_moe_block": False}
    return gemma4_text(cfg, dtype)


def _layer_heads(cfg: dict[str, Any], types: list[str]) -> list[tuple[int, int]]:
    """Each layer's (KV heads, head width): a saved config's ``per_layer_config`` overrides, else the full-attention
    layers' ``global_head_dim`` and, with ``attention_k_eq_v``, ``num_global_key_value_heads`` (transformers' rule)."""
    kv, hd = cfg["num_key_value_heads"], cfg["head_dim"]
    overrides = cfg.get("per_layer_config")
    if overrides is None:
        full = {"head_dim": cfg.get("global_head_dim", GLOBAL_HEAD_DIM)}
        if cfg.get("attention_k_eq_v") and cfg.get("num_global_key_value_heads") is not None:
            full["num_key_value_heads"] = cfg["num_global_key_value_heads"]
        overrides = {i: full for i, kind in enumerate(types) if kind == FULL}
    overrides = {int(i): o for i, o in overrides.items()}
    for i, layer in overrides.items():
        if unknown := sorted(set(layer) - set(PER_LAYER_KEYS)):
            raise ValueError(
                f"Gemma 4 per_layer_config layer {i} key(s) {unknown} are not supported (supported: {PER_LAYER_KEYS})"
            )
    return [
        (overrides.get(i, {}).get("num_key_value_heads", kv), overrides.get(i, {}).get("head_dim", hd))
        for i in range(len(types))
    ]


def kv_sources(types: list[str], shared: int, family: str = "Gemma 4") -> list[int | None]:
    """Each layer's K/V source: for the last ``shared`` layers, the last earlier layer of its kind (transformers'
    ``kv_sharing_modes``, Gemma 4's and Gemma 3n's); None for a layer with K/V of its own."""
    first = len(types) - shared
    if shared and (first <= 0 or set(types[:first]) != set(types)):
        raise ValueError(
            f"{family} num_kv_shared_layers={shared} leaves no earlier layer of each kind to read K/V from "
            f"(layer_types {types}); it must leave at least one layer of every kind before the shared ones"
        )
    return [None if i < first else first - 1 - types[:first][::-1].index(kind) for i, kind in enumerate(types)]


def _mixture(cfg: dict[str, Any]) -> dict[str, Any]:
    """The mixture beside each dense MLP (``enable_moe_block``): ``ModelArgs`` fields, the experts' width as
    ``intermediate_size`` (``base``; each layer's dense MLP keeps its ``dense_mlp_size``)."""
    if not cfg.get("enable_moe_block"):
        return {}
    for key in ("num_experts", "top_k_experts", "moe_intermediate_size"):
        if not cfg.get(key):
            raise ValueError(f"Gemma 4 enable_moe_block needs {key} (got {cfg.get(key)!r})")
    return dict(
        base={"intermediate_size": cfg["moe_intermediate_size"]},
        num_experts=cfg["num_experts"],
        experts_per_token=cfg["top_k_experts"],
        moe_beside_mlp=True,
    )

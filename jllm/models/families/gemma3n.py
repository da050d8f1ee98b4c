"""Gemma 3n's text model (``Gemma3nForCausalLM``; the language model of ``Gemma3nForConditionalGeneration`` is read
by ``multimodal.gemma3n``): Gemma 3's sandwich-normed layers with sliding and full attention, four sliding layers per
full one by default, and what Gemma 3n adds:

- AltUp (``altup_num_inputs`` streams of the residual, ``jllm.models.altup``): each layer's blocks run on the active
  stream's prediction and every stream is corrected from their output; the embedding is expanded to the streams
  before the first layer, and they are collapsed to one state before the final norm;
- a LAuReL block (``laurel_rank``, ``layers.Laurel``) beside each attention, the two residuals averaged;
- the first layers' MLPs sparse (``activation_sparsity_pattern``: ``layers.MLP``'s Gaussian top-k cutoff), each
  layer its own MLP width (``intermediate_size`` may be a list);
- per-layer inputs (``hidden_size_per_layer_input``: ``jllm.models.per_layer_inputs``), added to every stream but the
  active one, gated by the corrected active stream (times ``altup.correct_output_scale``);
- the last ``num_kv_shared_layers`` layers reading the K/V of the last earlier layer of their kind (no K/V of their
  own, no pages: Gemma 4's ``LayerSpec.kv_source``);
- q/k norms with plain weights, values RMS-normed without a weight, attention scores unscaled (1.0, whatever
  ``query_pre_attn_scalar`` says), the final logits soft-capped; norms whose weights are the scale (not ``1 + w``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import math
from typing import Any

from jllm.models.families.common import FULL, SLIDING, base_args, layer_type_ropes, whole_head_rotary
from jllm.models.families.gemma4 import GEMMA4_WEIGHTS, kv_sources
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap

# transformers' Gemma3nTextConfig defaults for the keys the reader takes
GEMMA3N_TEXT_DEFAULTS = dict(
    vocab_size=262_400,
    hidden_size=2048,
    intermediate_size=16_384,
    num_hidden_layers=35,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=256,
    max_position_embeddings=32_768,
    sliding_window=512,
    final_logit_softcapping=30.0,
    vocab_size_per_layer_input=262_144,
    hidden_size_per_layer_input=256,
    altup_num_inputs=4,
    altup_active_idx=0,
    altup_correct_scale=True,
    num_kv_shared_layers=15,
    laurel_rank=64,
    tie_word_embeddings=True,
)
DENSE_AFTER = 10  # transformers' default activation_sparsity_pattern: the first 10 layers 0.95 (models of > 10 layers)
DEFAULT_SPARSITY = 0.95
# Gemma 4's names (Gemma's norms, the per-layer inputs at their layer's level and the model's) and the AltUp stream
# projections, one tensor per stream past the first, at the model's level
GEMMA3N_WEIGHTS = WeightMap(
    rename=(
        *GEMMA4_WEIGHTS.rename,
        ("altup_streams", ""),
        ("altup_projections", "altup_projections.{e}"),
        ("altup_unembed_projections", "altup_unembed_projections.{e}"),
    )
)


def gemma3n_text(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Gemma 3n's text model from its config.json (keys it leaves out take Gemma3nTextConfig's defaults)."""
    cfg = {**GEMMA3N_TEXT_DEFAULTS, **cfg}
    _check_supported(cfg)
    n = cfg["num_hidden_layers"]
    types = list(cfg.get("layer_types") or [FULL if (i + 1) % 5 == 0 else SLIDING for i in range(n)])
    widths = _per_layer("intermediate_size", cfg["intermediate_size"], n)
    base = base_args({**cfg, "intermediate_size": max(widths)}, dtype)
    base["tie_word_embeddings"] = bool(cfg["tie_word_embeddings"])
    default_sparsity = [DEFAULT_SPARSITY if n > DENSE_AFTER and i < DENSE_AFTER else 0.0 for i in range(n)]
    sparsity = cfg.get("activation_sparsity_pattern")
    sparsity = default_sparsity if sparsity is None else _per_layer("activation_sparsity_pattern", sparsity, n)
    ropes = layer_type_ropes(
        whole_head_rotary(cfg), base["head_dim"], cfg.get("rope_local_base_freq", 10_000.0), 1_000_000.0
    )
    sources = kv_sources(types, cfg["num_kv_shared_layers"] or 0, "Gemma 3n")
    layers = tuple(
        LayerSpec(
            ropes[kind],
            cfg["sliding_window"] if kind == SLIDING else None,
            dense_mlp_size=width,
            kv_source=source,
            activation_sparsity=float(level),
        )
        for kind, width, source, level in zip(types, widths, sources, sparsity, strict=True)
    )
    bias = bool(cfg.get("attention_bias"))
    return ModelArgs(
        **base,
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
        final_softcap=cfg["final_logit_softcapping"],
        per_layer_input_size=cfg["hidden_size_per_layer_input"],
        per_layer_vocab_size=cfg["vocab_size_per_layer_input"],
        altup_streams=cfg["altup_num_inputs"],
        altup_correct_scale=bool(cfg["altup_correct_scale"]),
        laurel_rank=cfg["laurel_rank"],
        weights=GEMMA3N_WEIGHTS,
    )


def _check_supported(cfg: dict[str, Any]) -> None:
    """Refuses by name what the reader does not serve (no released Gemma 3n has any of it)."""
    act = cfg.get("hidden_activation") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ValueError(f"Gemma 3n hidden_activation {act!r} is not supported (supported: 'gelu_pytorch_tanh')")
    if cfg["altup_active_idx"] != 0:
        raise ValueError(f"Gemma 3n altup_active_idx={cfg['altup_active_idx']} is not supported (supported: 0)")
    if cfg["altup_num_inputs"] < 2:
        raise ValueError(f"Gemma 3n altup_num_inputs={cfg['altup_num_inputs']} is not supported (supported: >= 2)")
    for key in ("laurel_rank", "hidden_size_per_layer_input"):
        if cfg[key] < 1:
            raise ValueError(f"Gemma 3n {key}={cfg[key]} is not supported (supported: >= 1)")


def _per_layer(key: str, value: Any, layers: int) -> list[Any]:
    """A setting given once for all layers or as a list of one per layer (``intermediate_size``); a list of another
    length is refused naming ``key``."""
    if not isinstance(value, list):
        return [value] * layers
    if len(value) != layers:
        raise ValueError(
            f"Gemma 3n {key} lists {len(value)} values; it needs one per layer (num_hidden_layers={layers})"
        )
    return value

"""MiniMax-Text-01 and MiniMax-M1: lightning attention hybrids (``jllm.models.lightning_attention``, a recurrent mixer
with a per-sequence state) whose ``full_attention`` layers (``layer_types``) are Mixtral's attention, with Mixtral's
softmax top-k mixture of SwiGLU experts in every layer. Each block adds to its normed input, both scaled
(``LayerSpec.normed_residual``: ``norm(x) * alpha + block(norm(x)) * beta``, the alphas and betas per block kind).

Two config layouts: transformers' own (``MiniMaxForCausalLM``, model type ``minimax``) and the remote code's
(``MiniMaxText01ForCausalLM``), whose keys are renamed to transformers' (``REMOTE_KEYS``, ``attn_type_list``'s 0 / 1
as ``linear_attention`` / ``full_attention``) and whose ``rotary_dim`` rotates each head's first channels. The
tensor names are the same in both: Mixtral's for the attention and mixture, the lightning layers' under
``self_attn``.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import math
from typing import Any

from jllm.models.families.common import FULL, base_args, check_attends, read_rope
from jllm.models.lightning_attention import LightningSpec, layer_decay_scale
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap

LINEAR = "linear_attention"
# transformers' MiniMaxConfig defaults where a config.json leaves a key out (its default_theta among them)
DEFAULTS = dict(
    num_local_experts=8,
    num_experts_per_tok=2,
    rope_theta=1e6,
    max_position_embeddings=4096 * 32,
    rms_norm_eps=1e-5,
    hidden_act="silu",
)
FACTORS = tuple(f"{block}_{kind}_factor" for block in ("full_attn", "linear_attn", "mlp") for kind in ("alpha", "beta"))
# the remote code's config keys -> transformers' (its attn_type_list read on its own)
REMOTE_KEYS = {
    f"layernorm_{block}_{kind}": f"{ours}_{kind}_factor"
    for block, ours in (("full_attention", "full_attn"), ("linear_attention", "linear_attn"), ("mlp", "mlp"))
    for kind in ("alpha", "beta")
}
REMOTE_LAYER_TYPES = {0: LINEAR, 1: FULL}
WEIGHTS = WeightMap(
    gate_up=("w1", "w3"),
    rename=(
        ("mlp", "block_sparse_moe"),
        ("experts", "experts.{e}"),
        ("down_proj", "w2"),
        ("mixer", "self_attn"),  # the lightning layers' modules under the attention's name
        ("qkv", "qkv_proj"),  # the lightning layer's fused projection (``qkv_proj`` names the attention's, fused here)
    ),
    skipped=(
        (
            r"\.self_attn\.(slope_rate|query_decay|key_decay|diagonal_decay)$",
            "lightning attention's decay buffers: recomputed from the layer's slope (transformers' get_slope_rate)",
        ),
    ),
)


def minimax(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """transformers' MiniMax (``MiniMaxForCausalLM``): its rotary turns every channel of a head (it reads no
    ``rotary_dim`` or partial factor, so a config asking for one is refused: the remote code's name reads it)."""
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    fraction = _rope_params(cfg).get("partial_rotary_factor") or cfg.get("partial_rotary_factor")
    for key, value, whole in (("rotary_dim", cfg.get("rotary_dim"), head_dim), ("partial_rotary_factor", fraction, 1)):
        if value not in (None, whole):
            raise ValueError(
                f"MiniMax {key}={value} is not supported for MiniMaxForCausalLM: transformers' MiniMax rotates all "
                f"{head_dim} channels of a head and ignores it; name the remote code's architecture "
                "(MiniMaxText01ForCausalLM) to rotate the first rotary_dim channels, or remove the key"
            )
    return _read(cfg, dtype, head_dim)


def minimax_text01(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """The remote code's MiniMax-Text-01 / MiniMax-M1 config (``MiniMaxText01ForCausalLM``): ``attn_type_list``,
    ``layernorm_*_alpha`` / ``_beta`` and ``rotary_dim`` read as transformers' keys and a partial rotary. Its options
    transformers' port dropped are refused: ``postnorm`` False (residuals from the un-normed input), a shared expert
    (``shared_intermediate_size``), and slopes for a head count that is not a power of two (the remote code
    interpolates ALiBi's series there, transformers does not)."""
    if not cfg.get("postnorm", True):
        raise ValueError(
            "MiniMaxText01 postnorm=False is not supported (supported: True, as the released models: each block's "
            "residual is its normed input)"
        )
    shared = cfg.get("shared_intermediate_size") or 0
    if shared if isinstance(shared, int) else any(shared):
        raise ValueError(
            f"MiniMaxText01 shared_intermediate_size={shared} is not supported (supported: 0, no shared expert, as "
            "the released models)"
        )
    heads = cfg["num_attention_heads"]
    if not math.log2(heads).is_integer():
        raise ValueError(
            f"MiniMaxText01 num_attention_heads={heads} is not supported (supported: a power of two, whose lightning "
            "slopes transformers' port computes as the remote code does)"
        )
    types = cfg.get("attn_type_list")
    if types is not None and any(kind not in REMOTE_LAYER_TYPES for kind in types):
        raise ValueError(f"MiniMaxText01 attn_type_list={types!r} must be 0 (lightning) or 1 (full) for each layer")
    renamed = {REMOTE_KEYS.get(k, k): v for k, v in cfg.items() if k != "attn_type_list"}
    if types is not None:
        renamed["layer_types"] = [REMOTE_LAYER_TYPES[kind] for kind in types]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return _read(renamed, dtype, head_dim, rotary_dim=cfg.get("rotary_dim") or head_dim)


def _rope_params(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}


def _read(cfg: dict[str, Any], dtype: Any, head_dim: int, rotary_dim: int | None = None) -> ModelArgs:
    """transformers' MiniMax config (``cfg`` in its keys) with a rotary over ``rotary_dim`` channels (all: None)."""
    cfg = {**DEFAULTS, **cfg, "head_dim": head_dim}
    base = base_args(cfg, dtype)
    n = base["num_layers"]
    types = cfg.get("layer_types") or [FULL if (i + 1) % 2 else LINEAR for i in range(n)]
    if len(types) != n or any(kind not in (FULL, LINEAR) for kind in types):
        raise ValueError(f"MiniMax layer_types={types!r} must name each of the {n} layers as {FULL!r} or {LINEAR!r}")
    if cfg.get("sliding_window") is not None:
        raise ValueError(
            f"MiniMax sliding_window={cfg['sliding_window']} is not supported (supported: null, full attention, as "
            "the released models)"
        )
    experts, top_k = cfg["num_local_experts"], cfg["num_experts_per_tok"]
    if not 0 < top_k <= experts:
        raise ValueError(f"MiniMax num_experts_per_tok={top_k} must be between 1 and num_local_experts={experts}")
    params = dict(_rope_params(cfg))
    if rotary_dim is not None:
        params["partial_rotary_factor"] = rotary_dim / head_dim
    rope = read_rope(cfg, head_dim, params)
    full_a, full_b, linear_a, linear_b, mlp_a, mlp_b = (float(cfg.get(key, 1)) for key in FACTORS)
    layers = tuple(
        LayerSpec(rope, normed_residual=(full_a, full_b, mlp_a, mlp_b))
        if kind == FULL
        else LayerSpec(
            None,
            mixer="lightning",
            decay_scale=layer_decay_scale(i, n),
            normed_residual=(linear_a, linear_b, mlp_a, mlp_b),
        )
        for i, kind in enumerate(types)
    )
    check_attends(layers, "MiniMax")
    if cfg["hidden_act"] != "silu":  # the experts' and the lightning layers' q, k, v activation
        raise ValueError(f"MiniMax hidden_act={cfg['hidden_act']!r} is not supported (supported: 'silu')")
    return ModelArgs(
        **base,
        layers=layers,
        num_experts=experts,
        experts_per_token=top_k,
        lightning=LightningSpec(base["num_heads"], head_dim),
        weights=WEIGHTS,
    )

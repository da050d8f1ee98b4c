"""Doge (SmallDoge's ``DogeForCausalLM``): Llama's layers with per-head q/k RMSNorms, Doge's dynamic mask attention
(``jllm.models.dynamic_mask``: a bias per key from its values, kept beside it in the pool; served up to
``keep_window_size`` tokens, where its top-k keeps every key) and a learned weight per channel on each block's
residual (``input_residual``, ``post_attention_residual``). Its cross-domain mixture of experts (``is_moe``) is
refused: transformers routes it by ``router_logits.view(2, tokens, -1)``, which mixes different tokens' logits in
a prefill (its own comment says so), so no causal engine can reproduce it.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from jllm.models.families.common import FULL, SLIDING, activation, uniform, whole_head_rotary
from jllm.models.model_args import ModelArgs

# DogeConfig's defaults for the keys a config leaves out
DEFAULTS = dict(
    vocab_size=32768,
    hidden_size=1024,
    intermediate_size=2048,
    num_hidden_layers=32,
    num_attention_heads=8,
    rms_norm_eps=1e-6,
    max_position_embeddings=2048,
)


def doge(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Doge: every layer slides where ``sliding_window`` is set (transformers masks them all so), ``attention_bias``
    on q, k, v, o and ``dt_proj``, ``mlp_bias`` on the MLP; ``is_moe`` refused (see above)."""
    cfg = {**DEFAULTS, **cfg}
    if cfg.get("is_moe"):
        raise ValueError(
            "Doge is_moe=True is not supported (supported: False): its cross-domain mixture's router reads "
            "router_logits.view(2, tokens, -1), which pairs different tokens' logits in a prefill, so its outputs "
            "depend on how a batch is laid out"
        )
    window = cfg.get("keep_window_size", 2048)
    if window < 1:
        raise ValueError(f"Doge keep_window_size={window} must be at least 1")
    base, layers = uniform(whole_head_rotary(cfg), dtype, SLIDING if cfg.get("sliding_window") else FULL)
    bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(
        **base,
        layers=layers,
        qk_norm=True,
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        mlp_act=activation(cfg, "hidden_act", "silu", "Doge"),
        dynamic_mask_window=window,
        residual_weights=True,
    )

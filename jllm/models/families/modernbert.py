"""ModernBERT's decoder (``ModernBertDecoderForCausalLM``): bias-free LayerNorms by default, on the embeddings too and
none before the first layer's attention; sliding layers beside global ones (every ``global_attn_every_n_layers``-th,
3 by default), each type its own rope base; a GeGLU MLP stored as one ``Wi``; a prediction head (dense, activation,
norm) before its LM head, tied to the embeddings, with a bias.

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
    layer_type_ropes,
    typed_layers,
    whole_head_rotary,
)
from jllm.models.model_args import ModelArgs, WeightMap

# our module names -> ModernBERT's (its attention's ``Wo`` and its MLP's share a name, each under its own block)
MODERNBERT_NAMES = WeightMap(
    gate_up=("Wi",),  # the activated half's rows, then the multiplied half's: our gate, then up
    rename=(
        ("embed_tokens", "embeddings.tok_embeddings"),
        ("embed_norm", "embeddings.norm"),
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "mlp_norm"),
        ("self_attn", "attn"),
        ("o_proj", "Wo"),
        ("down_proj", "Wo"),
        ("head_transform", "lm_head"),
        ("head_bias", "decoder"),
        ("lm_head", "decoder"),
    ),
    aliases=(("model.final_norm.", "model.norm."),),  # an alias, not a rename: the prediction head's is "norm" too
)


def modernbert_decoder(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """ModernBERT's decoder as transformers builds it from ModernBertDecoderConfig: ``layer_types`` (by default full
    where the layer is a multiple of ``global_attn_every_n_layers``), sliding over ``local_attention // 2`` tokens,
    rope bases 160000 (global) and 10000 (local) unless ``rope_parameters`` (or an older config's
    ``global_rope_theta`` / ``local_rope_theta``) say otherwise."""
    n = cfg["num_hidden_layers"]
    every = cfg.get("global_attn_every_n_layers", 3)
    local = cfg.get("local_attention", 128)
    window = cfg.get("sliding_window", local // 2 if local else None)
    rope_theta = cfg.get("global_rope_theta", 160_000.0)
    cfg = {
        "rms_norm_eps": cfg.get("norm_eps", 1e-5),
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
        **cfg,
        "rope_theta": rope_theta,
        "sliding_window": window if window and window > 0 else None,
    }
    base = base_args(cfg, dtype)
    ropes = layer_type_ropes(
        whole_head_rotary(cfg), base["head_dim"], cfg.get("local_rope_theta", 10_000.0), rope_theta
    )
    layers = typed_layers(cfg, ropes, [FULL if i % every == 0 else SLIDING for i in range(n)])
    layers = (dataclasses.replace(layers[0], input_norm=False), *layers[1:])
    attention_bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(
        **base,
        layers=layers,
        norm="layer" if cfg.get("norm_bias", False) else "layer_no_bias",
        embed_norm=True,
        qkv_bias=attention_bias,
        o_bias=attention_bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        mlp_act=activation(cfg, "hidden_activation", "gelu", "ModernBERT decoder"),
        lm_head_bias=bool(cfg.get("decoder_bias", True)),
        head_transform=activation(cfg, "classifier_activation", "gelu", "ModernBERT decoder"),
        head_transform_bias=bool(cfg.get("classifier_bias", False)),
        weights=MODERNBERT_NAMES,
    )

"""The families whose positions are ALiBi's linear score bias (no rotary, no position table): Bloom and MPT
(Falcon-RW, ALiBi with Bloom's slopes, is read by ``layer_norm.falcon``). Only the reference attention adds the
bias (``jllm.attention.resolve_backend`` picks it for these models).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from jllm.models.families.common import bloom_slopes, gpt_decoder, mpt_slopes
from jllm.models.families.layer_norm import DENSE_NAMES
from jllm.models.model_args import ModelArgs, WeightMap

# MPT's attn_config defaults (transformers' MptAttentionConfig)
MPT_ATTENTION = dict(
    attn_type="multihead_attention", clip_qkv=None, softmax_scale=None, prefix_lm=False, qk_ln=False, alibi=True
)


def bloom(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Bloom: ALiBi (``bloom_slopes``), a LayerNorm on the embeddings, LayerNorms with bias, a per-head fused
    ``query_key_value`` ``[q, k, v]``, biases on every linear, a plain tanh-gelu MLP, a tied head by default.
    ``apply_residual_connection_post_layernorm`` (residuals from the normed states) is refused."""
    if cfg.get("apply_residual_connection_post_layernorm"):
        raise ValueError(
            "Bloom apply_residual_connection_post_layernorm=True is not supported (supported: False, as every "
            "released Bloom and BLOOMZ)"
        )
    heads, hidden = cfg["n_head"], cfg.get("n_embed") or cfg["hidden_size"]
    cfg = {
        **cfg,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "num_hidden_layers": cfg["n_layer"],
        "intermediate_size": 4 * hidden,
        "head_dim": hidden // heads,
        "rms_norm_eps": cfg.get("layer_norm_epsilon", 1e-5),
        "max_position_embeddings": cfg.get("seq_length") or 2048,  # ALiBi has no table; Bloom trained on 2048
        "tie_word_embeddings": cfg.get("tie_word_embeddings", True),
    }
    rename = (("embed_tokens", "word_embeddings"), ("embed_norm", "word_embeddings_layernorm"), ("layers", "h"))
    return gpt_decoder(
        cfg,
        dtype,
        mlp_act="gelu_tanh",  # transformers' bloom_gelu_forward
        alibi_slopes=bloom_slopes(heads),
        embed_norm=True,
        weights=WeightMap(
            qkv=("query_key_value",),
            qkv_layout="grouped",
            rename=(*rename, ("self_attn", "self_attention"), *DENSE_NAMES, ("norm", "ln_f")),
            prefix="transformer.",
        ),
    )


def mpt(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """MPT (MosaicML MPT-7B/30B and their fine-tunes): ALiBi (``mpt_slopes`` with ``alibi_bias_max``), bias-free
    LayerNorms and linears, one fused ``Wqkv`` (all queries, then keys, then values) clipped to ``clip_qkv`` where
    set, ``softmax_scale``, a plain exact-gelu MLP ``expansion_ratio`` wide, a tied head by default. Learned positions
    instead of ALiBi, the q/k LayerNorms (``qk_ln``), prefix-LM and multi-query attention are refused by name, as are
    linear biases (``no_bias: false``) and a ``logit_scale``."""
    attn = {**MPT_ATTENTION, **(cfg.get("attn_config") or {})}
    refused = {
        "attn_config.alibi": (attn["alibi"], True),
        "attn_config.qk_ln": (attn["qk_ln"], False),
        "attn_config.prefix_lm": (attn["prefix_lm"], False),
        "attn_config.attn_type": (attn["attn_type"], "multihead_attention"),
        "no_bias": (cfg.get("no_bias", True), True),
        "logit_scale": (cfg.get("logit_scale"), None),
    }
    for key, (value, supported) in refused.items():
        if value != supported:
            raise ValueError(f"MPT {key}={value!r} is not supported (supported: {supported!r}, as MPT-7B and MPT-30B)")
    heads, hidden = cfg["n_heads"], cfg["d_model"]
    cfg = {
        **cfg,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "num_hidden_layers": cfg["n_layers"],
        "intermediate_size": cfg.get("expansion_ratio", 4) * hidden,
        "head_dim": hidden // heads,
        "rms_norm_eps": cfg.get("layer_norm_epsilon", 1e-5),
        "max_position_embeddings": cfg.get("max_seq_len", 2048),
        "tie_word_embeddings": cfg.get("tie_word_embeddings", True),
    }
    rename = (("embed_tokens", "wte"), ("layers", "blocks"), ("self_attn", "attn"), ("o_proj", "out_proj"))
    norms = (("input_layernorm", "norm_1"), ("post_attention_layernorm", "norm_2"), ("norm", "norm_f"))
    return gpt_decoder(
        cfg,
        dtype,
        bias=False,
        norm="layer_no_bias",
        qkv_clip=attn["clip_qkv"],
        mlp_act="gelu",  # nn.GELU(approximate="none")
        sm_scale=attn["softmax_scale"],
        alibi_slopes=mpt_slopes(heads, attn.get("alibi_bias_max", 8)),
        weights=WeightMap(
            qkv=("Wqkv",), qkv_layout="concat", rename=(*rename, *norms, ("mlp", "ffn")), prefix="transformer."
        ),
    )

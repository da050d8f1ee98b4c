"""The early GPTs, each with a twist on GPT-2's decoder: GPT-1 (its LayerNorms after each residual add, no final
norm), CTRL (fixed sinusoidal positions, scaled embeddings, a tied LM head with a bias) and GPT-NeoX-Japanese
(GPT-NeoX's fused attention with a bias on its last layer's output alone, sequential pre-norm layers).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jllm.models.families.common import FULL, activation, gpt_decoder, uniform
from jllm.models.families.layer_norm import gpt2_names
from jllm.models.model_args import ModelArgs, WeightMap
from jllm.safetensors_index import Reader, hf_names

# GPT-1's activation names (its own ACT_FNS: "gelu" is the tanh approximation) -> ours
GPT1_ACTIVATIONS = {"gelu": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu"}


def openai_gpt(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """GPT-1 (``OpenAIGPTLMHeadModel``, openai-gpt): learned positions, GPT-2's ``Conv1D`` attention and MLP with
    biases, but each layer ``ln_1(x + attn(x))`` then ``ln_2(x + mlp(x))`` (post-LN) and no final norm; its head tied
    to the token embeddings."""
    afn = cfg.get("afn", "gelu")
    if afn not in GPT1_ACTIVATIONS:
        raise ValueError(f"GPT-1 afn {afn!r} is not supported (supported: {', '.join(GPT1_ACTIVATIONS)})")
    cfg = gpt2_names({"n_positions": 512, "tie_word_embeddings": True, **cfg}, cfg["n_head"])
    rename = (("embed_tokens", "tokens_embed"), ("embed_positions", "positions_embed"), ("layers", "h"))
    names = (("self_attn", "attn"), ("o_proj", "c_proj"), ("up_proj", "c_fc"), ("down_proj", "c_proj"))
    norms = (("attn_residual_norm", "ln_1"), ("mlp_residual_norm", "ln_2"))
    return gpt_decoder(
        cfg,
        dtype,
        mlp_act=GPT1_ACTIVATIONS[afn],
        learned_positions=True,
        pre_norms=False,
        residual_norms=True,
        weights=WeightMap(
            qkv=("c_attn",),
            qkv_layout="concat",
            rename=(*rename, *names, *norms),
            prefix="transformer.",
            conv1d=True,
        ),
    )


def ctrl(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """CTRL (Salesforce): token embeddings times ``sqrt(n_embd)`` plus fixed sinusoids (frequencies
    ``10000^(-i / (n_embd / 2))``), pre-norm LayerNorms (eps 1e-6), biased ``Wq`` / ``Wk`` / ``Wv`` / ``dense``, a
    ReLU MLP ``ffn.0`` / ``ffn.2`` ``dff`` wide, a final LayerNorm and a head tied to the embeddings with its own
    bias. Its layers' norms keep eps 1e-6 whatever ``layer_norm_epsilon`` says, so another value (read by the final
    norm alone) is refused."""
    eps = cfg.get("layer_norm_epsilon", 1e-6)
    if eps != 1e-6:
        raise ValueError(
            f"CTRL layer_norm_epsilon={eps} is not supported (supported: 1e-6, the eps of its layers' norms, which "
            "transformers fixes)"
        )
    cfg = gpt2_names(
        {
            "n_positions": 256,
            "tie_word_embeddings": True,
            "n_inner": cfg.get("dff", 8192),
            **cfg,
            "layer_norm_epsilon": eps,
        },
        cfg["n_head"],
    )
    rename = (("embed_tokens", "w"), ("layers", "h"), ("norm", "layernorm"))
    attention = (("self_attn", "multi_head_attention"), ("o_proj", "dense"))
    names = (("input_layernorm", "layernorm1"), ("post_attention_layernorm", "layernorm2"), ("mlp", "ffn"))
    return gpt_decoder(
        cfg,
        dtype,
        mlp_act="relu",
        embed_scale=float(np.sqrt(cfg["hidden_size"])),
        sinusoidal_positions=True,
        sinusoid_shift=0,
        lm_head_bias=True,
        weights=WeightMap(
            qkv=("Wq", "Wk", "Wv"),
            rename=(*rename, *attention, *names, ("up_proj", "0"), ("down_proj", "2")),
            prefix="transformer.",
        ),
    )


def gpt_neox_japanese(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """GPT-NeoX-Japanese (ABEJA): GPT-NeoX's per-head fused ``query_key_value`` ``[q, k, v]`` without biases, the
    rotary on ``rotary_pct`` of each head (all by default, base ``rotary_emb_base``), sequential pre-norm layers, a
    plain bias-free MLP ``intermediate_multiple_size`` times the hidden size wide, a head tied to ``embed_in``. Only
    its last layer's output projection has a bias (``dense_bias``): the others read as zeros."""
    heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    params.setdefault("rope_theta", cfg.get("rotary_emb_base", 10000.0))
    params.setdefault("partial_rotary_factor", cfg.get("rotary_pct", 1.0))
    cfg = {
        "tie_word_embeddings": True,
        "max_position_embeddings": 2048,
        **cfg,
        "rope_parameters": params,
        "num_key_value_heads": heads,  # always multi-head
        "head_dim": hidden // heads,
        "intermediate_size": int(hidden * cfg.get("intermediate_multiple_size", 4)),
        "rms_norm_eps": cfg.get("layer_norm_eps", 1e-5),
    }
    base, layers = uniform(cfg, dtype, FULL)
    rename = (("embed_tokens", "embed_in"), ("self_attn", "attention"), ("o_proj", "dense"), ("lm_head", "embed_out"))
    mlp = (("up_proj", "dense_h_to_4h"), ("down_proj", "dense_4h_to_h"), ("norm", "final_layer_norm"))
    return ModelArgs(
        **base,
        layers=layers,
        norm="layer",
        o_bias=True,
        mlp_gated=False,
        mlp_act=activation(cfg, "hidden_act", "gelu", "GPT-NeoX-Japanese"),
        weights=WeightMap(
            qkv=("query_key_value",),
            qkv_layout="grouped",
            rename=(*rename, *mlp, ("o_proj.bias", "dense_bias")),
            prefix="gpt_neox_japanese.",
            reader=_last_layer_dense_bias,
        ),
    )


def _last_layer_dense_bias(index: Any, path: tuple[Any, ...], shape: tuple[int, ...], dtype: Any) -> Reader | None:
    """An attention output bias the checkpoint lacks (every layer's but the last) as zeros, as transformers adds
    none there; every other parameter read by its names."""
    if tuple(map(str, path[-2:])) != ("o_proj", "bias") or hf_names(path, index.weights)[0][0] in index.tensors:
        return None
    zeros = np.zeros(shape, dtype)
    return lambda part: zeros[part]

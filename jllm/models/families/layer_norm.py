"""The families whose norms are LayerNorms (with or without weight and bias): GPT-NeoX, Falcon, Phi, GPT-J, GPT-2,
GPT-BigCode, StableLM, StarCoder2, Cohere (Command-R, Command R7B, Cohere Compass's text model) and OLMo 1; most of
them run attention and MLP side by side off one norm.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from jllm.models.families.common import (
    FULL,
    MROPE_KEYS,
    SLIDING,
    activation,
    base_args,
    bloom_slopes,
    gpt_decoder,
    layer_windows,
    read_rope,
    typed_layers,
    uniform,
    whole_head_rotary,
)
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap
from jllm.models.rope import Rope

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
    base, layers = uniform(cfg, dtype, FULL)
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
        mlp_act=activation(cfg, "hidden_act", "gelu", "GPT-NeoX"),
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
    sequential, optional biases, a plain gelu MLP. Rotary positions, or with ``alibi`` (Falcon-RW) Bloom's ALiBi
    slopes scaled by ``head_dim ** -0.5`` as transformers scales the bias (which rounds it to bfloat16 first: exact
    for slopes that are powers of two and positions below 256, ours is float32 as vLLM's)."""
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
    base, layers = uniform(whole_head_rotary(cfg), dtype, FULL)
    alibi = bool(cfg.get("alibi"))
    if alibi:
        layers = (LayerSpec(None),) * base["num_layers"]
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
        mlp_act=activation(cfg, "activation", "gelu", "Falcon"),
        parallel_residual=parallel,
        shared_input_norm=parallel and not two_norms,
        alibi_slopes=tuple(s * base["head_dim"] ** -0.5 for s in bloom_slopes(heads)) if alibi else None,
        weights=WeightMap(
            qkv=("query_key_value",),
            qkv_layout="grouped",
            rename=(*rename, *norms, *DENSE_NAMES),
            prefix="transformer.",
        ),
    )


def phi(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Phi-1 / 1.5 / 2: attention and a plain gelu MLP (``fc1`` / ``fc2``) side by side off one LayerNorm, partial
    rotary (``partial_rotary_factor``, 0.5 by default), biases on every linear and on the LM head (a tied head keeps
    its bias); optional LayerNorms on each query and key head, one weight for all heads (``qk_layernorm``)."""
    cfg = {"partial_rotary_factor": 0.5, **cfg, "rms_norm_eps": cfg.get("layer_norm_eps", 1e-5)}
    base, layers = uniform(cfg, dtype, FULL)
    return ModelArgs(
        **base,
        layers=layers,
        norm="layer",
        qk_norm=bool(cfg.get("qk_layernorm", False)),
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        mlp_gated=False,
        mlp_act=activation(cfg, "hidden_act", "gelu_new", "Phi"),
        parallel_residual=True,
        shared_input_norm=True,
        lm_head_bias=True,
        weights=WeightMap(
            rename=(
                ("o_proj", "dense"),
                ("up_proj", "fc1"),
                ("down_proj", "fc2"),
                ("norm", "final_layernorm"),
                ("q_norm", "q_layernorm"),
                ("k_norm", "k_layernorm"),
            )
        ),
    )


def gpt2_names(cfg: dict[str, Any], kv_heads: int) -> dict[str, Any]:
    """GPT-2's config names (``n_embd``, ``n_head``, ``n_layer``, ``n_inner``, ``n_positions``,
    ``layer_norm_epsilon``; GPT-J, GPT-BigCode) as ``base_args`` reads them."""
    heads, hidden = cfg["n_head"], cfg["n_embd"]
    return {
        **cfg,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "num_hidden_layers": cfg["n_layer"],
        "intermediate_size": cfg.get("n_inner") or 4 * hidden,
        "max_position_embeddings": cfg.get("n_positions", 2048),
        "head_dim": hidden // heads,
        "rms_norm_eps": cfg.get("layer_norm_epsilon", 1e-5),
    }


def gptj(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """GPT-J: attention (no biases) and a plain gelu MLP (``fc_in`` / ``fc_out``, biased) side by side off one
    LayerNorm, the rotary on the first ``rotary_dim`` channels of each head in neighbouring pairs (theta 10000), an LM
    head with a bias. GPT-2's config names (``n_embd``, ``n_head``, ``n_layer``, ``n_inner``, ``n_positions``)."""
    return gptj_layout(cfg, dtype, "GPT-J", WeightMap(rename=(("o_proj", "out_proj"),)))


def gptj_layout(cfg: dict[str, Any], dtype: Any, family: str, attention: WeightMap) -> ModelArgs:
    """GPT-J's decoder, which CodeGen keeps; ``attention``: where the checkpoint keeps q/k/v and the output
    projection (``qkv``, ``qkv_layout`` and its renames), the rest named as GPT-J's. ``rotary_dim`` 64 where a config
    leaves it out (GPTJConfig's and CodeGenConfig's default); null, which transformers turns into a rotary as wide as
    ``n_embd`` that no head has, is refused."""
    heads, hidden, rotary = cfg["n_head"], cfg["n_embd"], cfg.get("rotary_dim", 64)
    if not rotary or rotary % 2 or rotary > hidden // heads:
        raise ValueError(
            f"{family} rotary_dim={rotary!r} is not supported (supported: the rotated channels of each "
            "head, an even number up to n_embd / n_head, as GPT-J-6B's 64)"
        )
    cfg = gpt2_names(cfg, heads)  # always multi-head
    base = base_args(cfg, dtype)
    rope = Rope(10000.0, rotary, interleaved=True)
    rename = (("embed_tokens", "wte"), ("layers", "h"), ("self_attn", "attn"))
    return ModelArgs(
        **base,
        layers=(LayerSpec(rope),) * base["num_layers"],
        norm="layer",
        mlp_bias=True,
        mlp_gated=False,
        mlp_act=activation(cfg, "activation_function", "gelu_new", family),
        parallel_residual=True,
        shared_input_norm=True,
        lm_head_bias=True,
        weights=dataclasses.replace(
            attention,
            rename=(
                *rename,
                *attention.rename,
                ("input_layernorm", "ln_1"),
                ("up_proj", "fc_in"),
                ("down_proj", "fc_out"),
                ("norm", "ln_f"),
            ),
            prefix="transformer.",
        ),
    )


def gpt_bigcode(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """GPT-BigCode (StarCoder 1, SantaCoder): GPT-2's layout (``learned_positions_decoder``) with ``nn.Linear``
    weights, multi-query (``multi_query``: one KV head, ``c_attn`` all queries then K then V) or multi-head (``c_attn``
    per head ``[q, k, v]``) attention, gelu_pytorch_tanh by default."""
    multi_query = bool(cfg.get("multi_query", True))
    return learned_positions_decoder(
        cfg,
        dtype,
        "GPT-BigCode",
        kv_heads=1 if multi_query else cfg["n_head"],
        qkv_layout="concat" if multi_query else "grouped",
        act="gelu_pytorch_tanh",
        conv1d=False,
    )


def gpt2(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """GPT-2 (and DistilGPT-2, DialoGPT, ...): ``learned_positions_decoder`` with ``Conv1D`` weights (stored ``[in,
    out]``), multi-head ``c_attn`` all queries then K then V, gelu_new by default. Its per-layer score scaling
    (``scale_attn_by_inverse_layer_idx``) is refused. ``reorder_and_upcast_attn`` is read as the plain attention: it
    only scales the queries inside the product and takes the scores' softmax in float32, which every attention path
    here does anyway (transformers' own SDPA path ignores the flag)."""
    if cfg.get("scale_attn_by_inverse_layer_idx"):
        raise ValueError(
            "GPT-2 scale_attn_by_inverse_layer_idx=True is not supported (supported: False, as GPT-2's own checkpoints)"
        )
    return learned_positions_decoder(
        cfg, dtype, "GPT-2", kv_heads=cfg["n_head"], qkv_layout="concat", act="gelu_new", conv1d=True
    )


def learned_positions_decoder(
    cfg: dict[str, Any], dtype: Any, family: str, *, kv_heads: int, qkv_layout: str, act: str, conv1d: bool
) -> ModelArgs:
    """GPT-2's decoder, which GPT-BigCode keeps: learned absolute positions (``wpe``) and no rotary, a fused ``c_attn``,
    LayerNorms, a plain gelu MLP (``c_fc`` / ``c_proj``), biases on every linear, a tied head by default; scores
    unscaled where ``scale_attn_weights`` is off. Cross-attention (``add_cross_attention``) is refused."""
    if cfg.get("add_cross_attention"):
        raise ValueError(f"{family} add_cross_attention=True is not supported (supported: False, a decoder-only model)")
    cfg = gpt2_names({"n_positions": 1024, "tie_word_embeddings": True, **cfg}, kv_heads)
    rename = (("embed_tokens", "wte"), ("embed_positions", "wpe"), ("layers", "h"), ("self_attn", "attn"))
    norms = (("input_layernorm", "ln_1"), ("post_attention_layernorm", "ln_2"), ("norm", "ln_f"))
    return gpt_decoder(
        cfg,
        dtype,
        mlp_act=activation(cfg, "activation_function", act, family),
        sm_scale=None if cfg.get("scale_attn_weights", True) else 1.0,
        learned_positions=True,
        weights=WeightMap(
            qkv=("c_attn",),
            qkv_layout=qkv_layout,
            rename=(*rename, *norms, ("o_proj", "c_proj"), ("up_proj", "c_fc"), ("down_proj", "c_proj")),
            prefix="transformer.",
            conv1d=conv1d,
        ),
    )


def stablelm(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """StableLM 2 / StableLM-3B-4E1T: LayerNorms, partial rotary (``partial_rotary_factor``, 0.25 by default),
    SwiGLU, q/k/v biases where ``use_qkv_bias``, attention and MLP side by side off one norm where
    ``use_parallel_residual`` (StableLM 2 12B), and where ``qk_layernorm`` a bias-free LayerNorm on each query and key
    head with a weight of its own (stored per head: ``q_layernorm.norms.{h}``)."""
    heads = cfg["num_attention_heads"]
    cfg = {
        "partial_rotary_factor": 0.25,
        **cfg,
        "head_dim": cfg["hidden_size"] // heads,  # transformers ignores a head_dim key here
        "rms_norm_eps": cfg.get("layer_norm_eps", 1e-5),
    }
    base, layers = uniform(cfg, dtype, FULL)
    parallel, qk_norm = bool(cfg.get("use_parallel_residual", False)), bool(cfg.get("qk_layernorm", False))
    return ModelArgs(
        **base,
        layers=layers,
        norm="layer",
        qk_norm=qk_norm,
        qk_norm_per_head=qk_norm,
        qk_norm_kind="layer_no_bias",
        qkv_bias=bool(cfg.get("use_qkv_bias", False)),
        mlp_act=activation(cfg, "hidden_act", "silu", "StableLM"),
        parallel_residual=parallel,
        shared_input_norm=parallel,
        weights=WeightMap(rename=(("q_norm", "q_layernorm.norms.{e}"), ("k_norm", "k_layernorm.norms.{e}"))),
    )


def starcoder2(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """StarCoder2: LayerNorms with bias (``norm_epsilon``), grouped KV heads, a plain gelu MLP (``c_fc`` /
    ``c_proj``), biases on every linear where ``use_bias`` (the default), every layer sliding where
    ``sliding_window`` is set, a tied head by default."""
    cfg = {
        **cfg,
        "rms_norm_eps": cfg.get("norm_epsilon", 1e-5),
        "tie_word_embeddings": cfg.get("tie_word_embeddings", True),
    }
    base, layers = uniform(whole_head_rotary(cfg), dtype, SLIDING)
    bias = bool(cfg.get("use_bias", True))
    return ModelArgs(
        **base,
        layers=layers,
        norm="layer",
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bias,
        mlp_gated=False,
        mlp_act=activation(cfg, "hidden_act", "gelu_pytorch_tanh", "StarCoder2"),
        weights=WeightMap(rename=(("up_proj", "c_fc"), ("down_proj", "c_proj"))),
    )


def cohere_decoder(
    cfg: dict[str, Any], dtype: Any, family: str, layers: Callable[[Rope], tuple[LayerSpec, ...]], **extra: Any
) -> ModelArgs:
    """Cohere's and Cohere2's shared description: bias-free LayerNorms, attention and SwiGLU side by side off one
    norm, the rotary on neighbouring channel pairs of the whole head (transformers' Cohere interleaves its
    frequencies and never reads ``partial_rotary_factor``), logits times
    ``logit_scale`` (divided by its inverse here: exact for the 1/16 of the released checkpoints), a tied head by
    default. ``layers``: each layer's spec from the rotary."""
    scale = cfg.get("logit_scale", 0.0625)
    if not scale:
        raise ValueError(f"{family} logit_scale={scale!r} is not supported (supported: a non-zero number)")
    cfg = {
        **cfg,
        "rms_norm_eps": cfg.get("layer_norm_eps", 1e-5),
        "tie_word_embeddings": cfg.get("tie_word_embeddings", True),
    }
    base = base_args(cfg, dtype)
    rope = read_rope(whole_head_rotary(cfg), base["head_dim"])
    bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(
        **base,
        layers=layers(dataclasses.replace(rope, interleaved=True)),
        norm="layer_no_bias",
        qkv_bias=bias,
        o_bias=bias,
        mlp_act=activation(cfg, "hidden_act", "silu", family),
        parallel_residual=True,
        shared_input_norm=True,
        logits_divisor=1.0 / scale,
        **extra,
    )


def cohere(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Command-R (Cohere): every layer global with the rotary; where ``use_qk_norm`` (Command R+) a bias-free
    LayerNorm on each query and key head with a weight of its own. Rope base 5e5 where a config names none
    (CohereConfig's; Cohere2's is 1e4)."""
    qk_norm = bool(cfg.get("use_qk_norm", False))
    n = cfg["num_hidden_layers"]
    return cohere_decoder(
        {"rope_theta": 5e5, **cfg},
        dtype,
        "Cohere",
        lambda rope: (LayerSpec(rope),) * n,
        qk_norm=qk_norm,
        qk_norm_per_head=qk_norm,
    )


# Cohere2Config's sizes and context
COHERE2_SIZES = dict(
    vocab_size=256_000,
    hidden_size=8192,
    intermediate_size=22528,
    num_hidden_layers=40,
    num_attention_heads=64,
    max_position_embeddings=8192,
)


def cohere2(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Command R7B / Command A (Cohere2): Cohere's layers, sliding ones (``sliding_window``, 4096 by default) with
    the rotary and global ones with no position encoding at all, per ``layer_types`` (or every
    ``sliding_window_pattern``-th layer global, 4 by default); heads always ``hidden_size / num_attention_heads``
    wide; Cohere2Config's sizes where a config leaves them out (Aya Vision's text configs, saved as their differences
    from these)."""
    cfg = {**COHERE2_SIZES, **cfg}
    n = cfg["num_hidden_layers"]
    cfg = {
        **cfg,
        "head_dim": cfg["hidden_size"] // cfg["num_attention_heads"],
        "sliding_window": cfg.get("sliding_window", 4096),
    }
    pattern = cfg.get("sliding_window_pattern", 4)
    windows = layer_windows(cfg, [SLIDING if (i + 1) % pattern else FULL for i in range(n)])
    # transformers rotates exactly in the layers that have a window
    return cohere_decoder(cfg, dtype, "Cohere2", lambda rope: tuple(LayerSpec(rope if w else None, w) for w in windows))


def cohere_compass(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Cohere Compass's text model (``CohereCompassForCausalLM``; North's language model): Cohere2's layers with
    Qwen3-VL's rotary, half-split pairs, each layer type's own ``rope_parameters`` (None: that type has no rotary),
    every layer full attention unless ``layer_types`` say otherwise; the logits scaled by ``logit_scale`` where it is
    set (1.0 where null); heads ``hidden_size / num_attention_heads`` wide and a 4096-token window by default, as
    Cohere2's. Its M-RoPE sections read as the plain rotary, which they are for text."""
    n = cfg["num_hidden_layers"]
    types = cfg.get("layer_types") or [FULL] * n
    params = cfg.get("rope_parameters") or {}
    if missing := sorted(set(types) - set(params)):
        raise ValueError(
            f"Cohere Compass rope_parameters={params!r} name no rotary for layer type(s) {missing} (supported: an "
            "entry per layer type, null for no rotary, as transformers' CohereCompassRotaryEmbedding reads it)"
        )
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    ropes = {  # its rotary turns the whole head, whatever partial_rotary_factor says (Cohere's)
        kind: None if params[kind] is None else read_rope(whole_head_rotary(cfg), head_dim, _rope_type(params[kind]))
        for kind in set(types)
    }
    cfg = {**cfg, "head_dim": head_dim, "sliding_window": cfg.get("sliding_window", 4096), "layer_types": types}
    layers = typed_layers(cfg, ropes, types)
    scale = 1.0 if cfg.get("logit_scale") is None else cfg["logit_scale"]
    plain = {**cfg, "rope_parameters": None, "rope_scaling": None, "logit_scale": scale}
    return cohere_decoder(plain, dtype, "Cohere Compass", lambda _: layers)


def _rope_type(params: dict[str, Any]) -> dict[str, Any]:
    """A Cohere Compass layer type's rope settings without its M-RoPE sections and rotary fraction."""
    return {k: v for k, v in params.items() if k not in (*MROPE_KEYS, "partial_rotary_factor")}


def olmo(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """OLMo 1 (OLMo-1B/7B-hf, -0424, -0724): Llama's layout with LayerNorms that have neither weight nor bias (eps
    1e-5, fixed in transformers), q, k and v clipped to ``clip_qkv`` where set."""
    cfg = whole_head_rotary(cfg)
    base, layers = uniform(cfg, dtype, FULL)
    bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(
        **{**base, "norm_eps": 1e-5},
        layers=layers,
        norm="layer_no_affine",
        qkv_bias=bias,
        o_bias=bias,
        qkv_clip=cfg.get("clip_qkv"),
        mlp_act=activation(cfg, "hidden_act", "silu", "OLMo"),
    )

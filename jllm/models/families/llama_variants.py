"""Llama's layout under newer names, each with a twist the decoder runs: CWM (sliding layers, three of four), Jais 2
(LayerNorms, a plain squared-ReLU MLP), NanoChat (weightless RMSNorms, the rotary turned the other way, q/k norms after
it, a soft-capped head), HyperCLOVA X (Granite's multipliers with norms on the blocks' outputs, logits multiplied),
Granite SWA (Granite with attention sinks, sliding layers and a rope base per layer, 0 for none) and Granite MoE SWA
(its layers around Granite MoE Shared's mixture),
Apertus 1.5's text model (Apertus), BitNet (norms inside both blocks, a gated squared-ReLU MLP), Emu3's text model
(Llama with rope base 1e6), DiffLlama (differential attention), Mllama's text model (Llama 3.2 Vision's: its
self-attention layers alone, as transformers runs text without an image).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jllm.models.families.common import (
    FULL,
    SLIDING,
    activation,
    base_args,
    read_rope,
    typed_layers,
    uniform,
    whole_head_rotary,
)
from jllm.models.families.llama import apertus, granite, llama
from jllm.models.families.mixtures import granite_moe_shared
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap
from jllm.safetensors_index import hf_names

# CwmConfig's rotary where a config names none
CWM_ROPE = dict(
    rope_type="llama3",
    rope_theta=1e6,
    factor=16.0,
    high_freq_factor=4.0,
    low_freq_factor=1.0,
    original_max_position_embeddings=8192,
)


# Granite MoE SWA's tensor names: transformers 5's stacked experts ``[experts, out, in]`` (gate rows, then up rows)
# and router, where Granite MoE's checkpoints keep ``input_linear`` / ``output_linear`` / ``router.layer``; the shared
# MLP's as Granite MoE Shared's
GRANITE_MOE_SWA_NAMES = WeightMap(
    gate_up=("input_linear",),
    rename=(
        ("mlp", "block_sparse_moe"),
        ("gate", "router"),
        ("mlp.shared_expert", "shared_mlp"),
        ("down_proj", "output_linear"),
    ),
    expert_params="out_in",
)


def cwm(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """CWM (Meta's Code World Model): Llama without attention biases, ``layer_types`` sliding (by default all but
    every fourth layer from the first) over ``sliding_window`` (8192 by default), Llama 3's scaled rotary by
    default."""
    n = cfg["num_hidden_layers"]
    defaults = dict(sliding_window=8192, rms_norm_eps=1e-5, max_position_embeddings=131_072, head_dim=128)
    cfg = {**defaults, **cfg}
    if not cfg.get("rope_parameters") and not cfg.get("rope_scaling"):
        cfg["rope_parameters"] = CWM_ROPE
    base = base_args(cfg, dtype)
    rope = read_rope(whole_head_rotary(cfg), base["head_dim"])
    layers = typed_layers(cfg, {FULL: rope, SLIDING: rope}, [SLIDING if i % 4 else FULL for i in range(n)])
    return ModelArgs(
        **base,
        layers=layers,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        mlp_act=activation(cfg, "hidden_act", "silu", "CWM"),
    )


def jais2(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Jais 2 (Inception): Llama's attention with biases on q, k, v and o (``attention_bias``, on by default),
    LayerNorms with weight and bias (``layer_norm_eps``), and a plain MLP, ``down(relu(up(x))^2)``, biased where
    ``mlp_bias`` (on by default)."""
    cfg = {"max_position_embeddings": 8192, **cfg, "rms_norm_eps": cfg.get("layer_norm_eps", 1e-5)}
    base, layers = uniform(whole_head_rotary(cfg), dtype, FULL)
    bias = bool(cfg.get("attention_bias", True))
    return ModelArgs(
        **base,
        layers=layers,
        norm="layer",
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bool(cfg.get("mlp_bias", True)),
        mlp_gated=False,
        mlp_act=activation(cfg, "hidden_act", "relu2", "Jais 2"),
    )


def nanochat(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """NanoChat (Karpathy's): RMSNorms without weights, on the embeddings too; the rotary turned by minus the angle
    (its ``rotate_half`` flips the halves' signs), then a weightless RMSNorm on each query and key head; a plain
    squared-ReLU MLP (``fc1``, ``fc2``); logits soft-capped at ``final_logit_softcapping`` (15 by default)."""
    cfg = {"max_position_embeddings": 2048, **cfg}
    base = base_args(cfg, dtype)
    rope = dataclasses.replace(read_rope(whole_head_rotary(cfg), base["head_dim"]), negated=True)
    bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(
        **base,
        layers=(LayerSpec(rope, qk_l2_norm=True),) * base["num_layers"],
        norm="rms_no_affine",
        embed_norm=True,
        qkv_bias=bias,
        o_bias=bias,
        mlp_gated=False,
        mlp_act=activation(cfg, "hidden_act", "relu2", "NanoChat"),
        final_softcap=cfg.get("final_logit_softcapping", 15.0),
        weights=WeightMap(rename=(("up_proj", "fc1"), ("down_proj", "fc2"))),
    )


def hyperclovax(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """HyperCLOVA X (Naver's SEED models): Granite's multipliers, the attention's 1/sqrt(head_dim) where
    ``attention_multiplier`` is null, logits multiplied (not divided) by ``logits_scaling``, and where
    ``use_post_norm`` (the default) an RMSNorm on each block's output before its residual scale (``post_norm1``,
    ``post_norm2``)."""
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    cfg = {**cfg, "attention_multiplier": cfg.get("attention_multiplier") or head_dim**-0.5}
    args = granite({**cfg, "logits_scaling": 1.0}, dtype)
    post = bool(cfg.get("use_post_norm", True))
    rename = (("attn_out_norm", "post_norm1"), ("mlp_out_norm", "post_norm2")) if post else ()
    return dataclasses.replace(
        args,
        sandwich_norms=post,
        logits_divisor=1.0 / float(cfg.get("logits_scaling", 1.0)),
        weights=WeightMap(rename=rename),
    )


def granite_swa(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Granite SWA (granite-swash): Granite with a learned sink logit per query head (``sinks``), ``layer_types``
    sliding (by default all but every fourth layer from the first) over ``sliding_window`` (128 by default), and
    each layer its own rope base (``layer_rope_theta``; 0: no rotary), the global one's where there is no list; a
    tied head by default (GraniteSWAConfig's)."""
    cfg = {
        "sliding_window": 128,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
        **cfg,
    }
    return _sliding_with_sinks(granite(cfg, dtype), cfg, "Granite SWA")


def granite_moe_swa(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Granite MoE SWA: Granite MoE Shared's layers (the shared MLP where ``shared_intermediate_size`` is above 0,
    none by default) with Granite SWA's sinks, sliding layers and rope base per layer; its experts stored as
    transformers 5 holds them (``GRANITE_MOE_SWA_NAMES``: no older names to convert from)."""
    cfg = {"sliding_window": 128, "rms_norm_eps": 1e-6, "max_position_embeddings": 2048, **cfg}
    args = _sliding_with_sinks(granite_moe_shared(cfg, dtype), cfg, "Granite MoE SWA")
    return dataclasses.replace(args, weights=GRANITE_MOE_SWA_NAMES)


def _sliding_with_sinks(args: ModelArgs, cfg: dict[str, Any], family: str) -> ModelArgs:
    """``args`` with a sink per query head and Granite SWA's layers: sliding where ``layer_types`` says (all but
    every fourth from the first without it), each with its ``layer_rope_theta`` (0: no rotary; the global base
    without a list)."""
    n = cfg["num_hidden_layers"]
    params = dict(cfg.get("rope_scaling") or cfg.get("rope_parameters") or {})
    default_theta = params.get("rope_theta") or cfg.get("rope_theta") or 10000.0
    thetas = cfg.get("layer_rope_theta") or [default_theta] * n
    kinds = cfg.get("layer_types") or [FULL if i % 4 == 0 else SLIDING for i in range(n)]
    for key, values in (("layer_rope_theta", thetas), ("layer_types", kinds)):
        if len(values) != n:
            raise ValueError(f"{family} {key}={values!r} is not supported (supported: num_hidden_layers={n} entries)")
    window = cfg["sliding_window"]
    layers = tuple(
        LayerSpec(
            read_rope(whole_head_rotary(cfg), args.head_dim, whole_head_rotary({**params, "rope_theta": theta}))
            if theta
            else None,
            window if window and kind == SLIDING else None,
        )
        for theta, kind in zip(thetas, kinds, strict=True)
    )
    return dataclasses.replace(args, layers=layers, attn_sinks=True)


def apertus1p5_text(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Apertus 1.5's text model: Apertus over a vocabulary extended by visual and audio codes, its untied LM head
    pruned to the first ``output_vocab_size`` ids where set (the released checkpoints'): the others' logits are -inf,
    as transformers never produces them."""
    cfg = {"vocab_size": 266_752, **cfg}
    rows = cfg.get("output_vocab_size")
    if rows is not None and (cfg.get("tie_word_embeddings") or not 0 < rows <= cfg["vocab_size"]):
        raise ValueError(
            f"Apertus 1.5 output_vocab_size={rows} is not supported with tie_word_embeddings="
            f"{cfg.get('tie_word_embeddings')} (supported: null, or 1 to vocab_size={cfg['vocab_size']} rows of an "
            "untied head)"
        )
    return dataclasses.replace(apertus(cfg, dtype), head_vocab_size=rows if rows != cfg["vocab_size"] else None)


def bitnet(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """BitNet b1.58 in the float layout transformers builds from a config: Llama's attention with an RMSNorm over its
    heads before ``o_proj`` (``attn_sub_norm``), a gated MLP, ``relu(gate)^2 * up`` by default, with an RMSNorm before
    ``down_proj`` (``ffn_sub_norm``); rope base 5e5 by default. The hub's packed ternary checkpoints
    (``quantization_config`` quant_method "bitnet") are refused at load (``jllm.quantization``)."""
    cfg = {"rope_theta": 5e5, "rms_norm_eps": 1e-5, "max_position_embeddings": 2048, **cfg}
    base, layers = uniform(whole_head_rotary(cfg), dtype, FULL)
    bias = bool(cfg.get("attention_bias", False))
    act = activation(cfg, "hidden_act", "relu2", "BitNet")
    return ModelArgs(**base, layers=layers, qkv_bias=bias, o_bias=bias, mlp_act=act, sub_norms=True)


def emu3_text(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Emu3's text model (``Emu3ForCausalLM``): Llama, its biases where ``attention_bias`` / ``mlp_bias``, with
    Emu3TextConfig's rope base 1e6, eps 1e-5 and sizes where a config leaves them out."""
    sizes = dict(vocab_size=184_622, intermediate_size=14336, num_key_value_heads=8)  # where Llama's differ
    cfg = {"rope_theta": 1e6, "rms_norm_eps": 1e-5, "max_position_embeddings": 9216, **sizes, **cfg}
    return llama(cfg, dtype)


# MllamaTextConfig's sizes and settings where a config leaves them out
MLLAMA_TEXT_DEFAULTS = dict(
    vocab_size=128_256,
    hidden_size=4096,
    intermediate_size=14_336,
    num_hidden_layers=40,
    num_attention_heads=32,
    num_key_value_heads=8,
    rms_norm_eps=1e-5,
    max_position_embeddings=131_072,
    rope_theta=5e5,
    cross_attention_layers=[3, 8, 13, 18, 23, 28, 33, 38],
)
MLLAMA_EXTRA_ROWS = 8  # MllamaTextModel's embed_tokens has vocab_size + 8 rows; its LM head vocab_size


def mllama_text(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Mllama's text model (``MllamaForCausalLM``, Llama 3.2 Vision's): Llama's self-attention layers with cross-
    attention layers to the image between them (``cross_attention_layers``). transformers' text model skips a
    cross-attention layer entirely when there are no image states and none cached, which is every text-only input
    (``MllamaTextModel.forward``), so jllm runs the self-attention layers alone, each read from its stored place
    (``WeightMap.rename``: our ``layers.i`` the stored ``layers.j``), the cross-attention layers' tensors skipped. Heads
    are ``hidden_size / num_attention_heads`` wide (no ``head_dim`` key), no biases; the embeddings' 8 rows past the
    vocabulary (``vocab_size + 8``) are never looked up by a token the head can produce and are left unread."""
    cfg = whole_head_rotary({**MLLAMA_TEXT_DEFAULTS, **cfg})
    cfg.pop("head_dim", None)
    cross = cfg["cross_attention_layers"]  # null: MllamaTextConfig's default list
    cross = sorted(set(MLLAMA_TEXT_DEFAULTS["cross_attention_layers"] if cross is None else cross))
    kept = [j for j in range(cfg["num_hidden_layers"]) if j not in cross]
    if not kept or cfg.get("tie_word_embeddings"):
        raise ValueError(
            f"Mllama cross_attention_layers={cross} of num_hidden_layers={cfg['num_hidden_layers']} with "
            f"tie_word_embeddings={cfg.get('tie_word_embeddings')} is not supported (supported: at least one "
            "self-attention layer, an untied head: tied, transformers' head would have the embeddings' vocab_size + 8 "
            "rows)"
        )
    act = activation(cfg, "hidden_act", "silu", "Mllama")
    base, layers = uniform({**cfg, "num_hidden_layers": len(kept)}, dtype, FULL)
    weights = WeightMap(
        rename=tuple((f"layers.{i}", f"layers.{j}") for i, j in enumerate(kept) if i != j),
        reader=_mllama_embeddings,
        skipped=tuple(
            (rf"(^|\.)layers\.{j}\.", "a cross-attention layer: transformers skips it for text without an image")
            for j in cross
        ),
    )
    return ModelArgs(**base, layers=layers, mlp_act=act, weights=weights)


def _mllama_embeddings(index: Any, path: tuple[Any, ...], shape: tuple[int, ...], dtype: Any) -> Any:
    """Mllama's embeddings: the first ``vocab_size`` of the stored ``vocab_size + 8`` rows; None for any other
    parameter."""
    if str(path[0]) != "embed_tokens":
        return None
    name = hf_names(path, index.weights)[0][0]
    rows, width = shape
    read = index.slice_reader(name, (rows + MLLAMA_EXTRA_ROWS, width), False, dtype)
    return lambda where: read((slice(*where[0].indices(rows)), *where[1:]))


def diffllama(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """DiffLlama: Llama's layers around differential attention (``jllm.models.diff_attention``), each layer's
    ``lambda_init`` transformers' ``0.8 - 0.6 exp(-0.3 layer)``; biases on q, k, v and o where ``attention_bias``. Its
    values split in two halves along the KV heads, so an odd ``num_key_value_heads`` is refused, as transformers
    refuses it. Eps 1e-5 by default (DiffLlamaConfig's)."""
    base, layers = uniform(whole_head_rotary({"rms_norm_eps": 1e-5, **cfg}), dtype, FULL)
    kv_heads = base["num_kv_heads"]
    if kv_heads % 2:
        raise ValueError(
            f"DiffLlama num_key_value_heads={kv_heads} is not supported (supported: an even count: its values split "
            "in two halves along the KV heads)"
        )
    layers = tuple(
        dataclasses.replace(spec, diff_lambda_init=0.8 - 0.6 * math.exp(-0.3 * i)) for i, spec in enumerate(layers)
    )
    bias = bool(cfg.get("attention_bias", False))
    act = activation(cfg, "hidden_act", "silu", "DiffLlama")
    return ModelArgs(**base, layers=layers, qkv_bias=bias, o_bias=bias, mlp_act=act)

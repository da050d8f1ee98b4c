"""Text-only loads of more image-text checkpoints, their language models read by jllm's existing families (or, for
DeepSeek-OCR-2, put together from their pieces): Kimi K2.5, LFM2-VL, Command A Vision, Aria, Idefics2, Fuyu,
LightOnOCR, Ovis2.5, GLM-OCR, PaddleOCR-VL, HunyuanOCR, DeepSeek-OCR-2, EXAONE 4.5, HyperCLOVA X SEED Vision,
LFM3-VL, GOT-OCR 2.0, Ovis2, LLaVA-OneVision-1.5, VideoLLaMA3, Qianfan-OCR, DeepSeek-VL (and its hybrid), Janus,
MiniCPM-V 4.6 / 4.7 and MiniCPM-OCR, Granite Docling, MOSS Transcribe-Diarize (a speech model's), and Qwen3-Omni's
and Qwen2.5-Omni's thinkers (their audio towers never read either). As in ``multimodal`` (which also serves
LLaVA-OneVision, LLaVA-NeXT-Video, VipLLaVA and Video-LLaVA through its LLaVA reader and GLM-4.6V through
GLM-4.1V's): the ``text_config`` read by its family's reader, the tensors under the checkpoint's language-model
prefix, the vision tower and projector never read, and the head tied as the outer config says (transformers 5 ties by
the outer ``tie_word_embeddings``, each config class its own default).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from jllm.models.families import deepseek, layer_norm, lfm2, llama, llama_variants, mixtures, qwen3_next, relu_mlp
from jllm.models.families.common import base_args, read_rope, whole_head_rotary
from jllm.models.families.multimodal import (
    GLM4V_TEXT,
    LANGUAGE_MODEL,
    _mrope_language_model,
    _text_only,
    text_model_only,
)
from jllm.models.model_args import LayerSpec, ModelArgs

# transformers 5's own names, as it saves the image-text models it added without a conversion mapping
IN_MEMORY = dict(prefix="model.language_model.", head_prefix="", aliases=())


def _language_model(
    cfg: dict[str, Any],
    dtype: Any,
    family: str,
    readers: dict[str, Callable[[dict[str, Any], Any], ModelArgs]],
    tied: bool,
    layout: dict[str, Any],
) -> ModelArgs:
    """The ``text_config``'s model by its ``model_type``'s reader, its head tied where ``tied`` says (the outer
    config's), its tensors where ``layout`` (``WeightMap`` fields) puts them."""
    text = {**(cfg.get("text_config") or {}), "tie_word_embeddings": tied}
    args = _text_only({**cfg, "text_config": text}, dtype, family, readers)
    return dataclasses.replace(args, weights=dataclasses.replace(args.weights, **layout))


@text_model_only
def kimi_k25(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Kimi K2.5 (``Kimi_K25ForConditionalGeneration``; the hub's ``KimiK25ForConditionalGeneration``): its Kimi K2
    language model, DeepSeek-V3's (Kimi_K25Config reads a ``kimi_k2`` text config as ``deepseek_v3``), under
    ``language_model.``. The head is tied as the outer ``tie_word_embeddings`` says where a config has one (as
    transformers' saves do); the hub's config, written by Moonshot's own code, is read as vLLM reads it, by the text
    config's (untied: its checkpoint stores the head, which transformers then keeps apart too, its values differing
    from the embeddings'). transformers saves the layers as ``blocks`` (the vision tower's ``blocks`` -> ``layers``
    rename, which it applies to every name and so reverses on save) and reads either."""
    readers = {"deepseek_v3": deepseek.deepseek_v3, "kimi_k2": deepseek.deepseek_v3}
    blocks = ("language_model.model.blocks.", "language_model.model.layers.")
    layout = dict(LANGUAGE_MODEL, aliases=(blocks, *LANGUAGE_MODEL["aliases"]))
    text_tie = (cfg.get("text_config") or {}).get("tie_word_embeddings", False)
    return _language_model(cfg, dtype, "Kimi K2.5", readers, cfg.get("tie_word_embeddings", text_tie), layout)


@text_model_only
def lfm2_vl(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """LFM2-VL (``Lfm2VlForConditionalGeneration``): its LFM2 language model under ``model.language_model.``, the
    head tied by default (``tie_embedding``, the older key, first, as Lfm2VlConfig reads it)."""
    tied = cfg.get("tie_embedding", cfg.get("tie_word_embeddings", True))
    text = {k: v for k, v in (cfg.get("text_config") or {}).items() if k != "tie_embedding"}
    return _language_model({**cfg, "text_config": text}, dtype, "LFM2-VL", {"lfm2": lfm2.lfm2}, tied, IN_MEMORY)


@text_model_only
def cohere2_vision(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Command A Vision (``Cohere2VisionForConditionalGeneration``): its Cohere2 language model under
    ``model.language_model.``, the head tied by default. transformers' Cohere2Vision applies its LM head alone, not the
    text config's ``logit_scale`` (Aya Vision's and Cohere2's own heads do), so neither does jllm; vLLM's Cohere2
    language model scales by it, so its logits differ by that factor (its greedy tokens do not)."""
    tied = cfg.get("tie_word_embeddings", True)
    text = {**(cfg.get("text_config") or {}), "logit_scale": 1.0}
    readers = {"cohere2": layer_norm.cohere2}
    return _language_model({**cfg, "text_config": text}, dtype, "Command A Vision", readers, tied, IN_MEMORY)


def _reader(
    family: str, readers: dict[str, Callable[[dict[str, Any], Any], ModelArgs]], tied: bool, layout: dict[str, Any]
) -> Callable[[dict[str, Any], Any], ModelArgs]:
    """An image-text family's reader that needs nothing of its own: the ``text_config`` by its ``model_type``'s reader
    (``readers``), the head tied as the outer ``tie_word_embeddings`` says (``tied``, the config class's default, where
    it is left out), the tensors where ``layout`` puts them; every other tensor skipped (``text_model_only``)."""

    def read(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
        return _language_model(cfg, dtype, family, readers, cfg.get("tie_word_embeddings", tied), layout)

    read.__doc__ = f"{family}: its {', '.join(readers)} language model, text only."
    return text_model_only(read)


# the language model under model.text_model., the head lm_head (Idefics2)
TEXT_MODEL = dict(prefix="model.text_model.", head_prefix="", aliases=())
aria = _reader("Aria", {"aria_text": mixtures.aria_text}, False, LANGUAGE_MODEL)
idefics2 = _reader("Idefics2", {"mistral": llama.mistral}, False, TEXT_MODEL)
# Fuyu's image patches enter through vision_embed_tokens, a linear map into the embeddings
fuyu = _reader("Fuyu", {"persimmon": relu_mlp.persimmon}, False, LANGUAGE_MODEL)
lighton_ocr = _reader("LightOnOCR", {"qwen3": llama.qwen3}, True, IN_MEMORY)
# Ovis2.5's language model under llm. (as the hub and transformers' save keep it); its visual embedding table vte
ovis2_5 = _reader("Ovis2.5", {"qwen3": llama.qwen3}, False, dict(prefix="llm.model.", head_prefix="llm.", aliases=()))
exaone4_5 = _reader("EXAONE 4.5", {"exaone4": llama.exaone4}, False, IN_MEMORY)
hyperclovax_vision_v2 = _reader(
    "HyperCLOVA X SEED Vision", {"hyperclovax": llama_variants.hyperclovax}, True, IN_MEMORY
)
lfm3_vl = _reader("LFM3-VL", {"lfm3": lfm2.lfm3}, True, IN_MEMORY)
got_ocr2 = _reader("GOT-OCR 2.0", {"qwen2": llama.qwen2}, True, LANGUAGE_MODEL)
# Ovis2's visual embedding table (model.visual_embeddings_table) is the vision side's
ovis2 = _reader("Ovis2", {"qwen2": llama.qwen2}, True, IN_MEMORY)
# LLaVA-OneVision-1.5's language model under model.model., as transformers saves and reads it
llava_onevision1_5 = _reader(
    "LLaVA-OneVision-1.5", {"qwen3": llama.qwen3}, False, dict(prefix="model.model.", head_prefix="", aliases=())
)
video_llama3 = _reader("VideoLLaMA3", {"qwen2": llama.qwen2}, False, IN_MEMORY)
# Qianfan-OCR's language model under language_model. as the hub keeps it; transformers saves its layers under
# encoder.layers (its vision tower's encoder.layers -> layers rename, applied to every name, reversed on save)
qianfan_ocr = _reader(
    "Qianfan-OCR",
    {"qwen3": llama.qwen3},
    False,
    dict(
        LANGUAGE_MODEL,
        aliases=(("language_model.model.encoder.layers.", "language_model.model.layers."), *LANGUAGE_MODEL["aliases"]),
    ),
)
deepseek_vl = _reader("DeepSeek-VL", {"llama": llama.llama}, True, IN_MEMORY)
# Janus' image generation side (its VQ-VAE, generation embeddings, aligner and head) beside its understanding side;
# text comes from the language model's own head
janus = _reader("Janus", {"llama": llama.llama}, True, IN_MEMORY)
# MOSS Transcribe-Diarize's audio tower and projector beside its Qwen3 (a speech model, served on text prompts alone)
moss_transcribe_diarize = _reader("MOSS Transcribe-Diarize", {"qwen3": llama.qwen3}, True, IN_MEMORY)
# DeepSeek-VL hybrid's SigLIP and SAM towers, their necks and aligner under model. beside the language model
deepseek_vl_hybrid = _reader("DeepSeek-VL hybrid", {"llama": llama.llama}, True, IN_MEMORY)
# GraniteDoclingTextConfig's multipliers and norm eps where GraniteConfig's differ
GRANITE_DOCLING_TEXT = dict(
    embedding_multiplier=12.0,
    logits_scaling=4.0,
    residual_multiplier=0.263,
    attention_multiplier=0.015625,
    rms_norm_eps=1e-5,
)


def _granite_docling_text(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    return llama.granite({**GRANITE_DOCLING_TEXT, **cfg}, dtype)


# Granite Docling's Granite language model under model.text_model. (its DeepStack adds only to image tokens)
granite_docling = _reader("Granite Docling", {"granite_docling_text": _granite_docling_text}, True, TEXT_MODEL)
# the MiniCPM-V models' Qwen3.5 hybrid language model (its reader reads M-RoPE as the plain rotary)
minicpmv4_6 = _reader("MiniCPM-V 4.6", {"qwen3_5_text": qwen3_next.qwen3_5}, False, IN_MEMORY)
minicpmv4_7 = _reader("MiniCPM-V 4.7", {"qwen3_5_text": qwen3_next.qwen3_5}, False, IN_MEMORY)
minicpm_ocr = _reader("MiniCPM-OCR", {"qwen3_5_text": qwen3_next.qwen3_5}, True, IN_MEMORY)


# GlmOcrTextConfig's sizes where Glm4vTextConfig's differ
GLM_OCR_TEXT = dict(
    vocab_size=59392,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=8,
    max_position_embeddings=131_072,
)


@text_model_only
def glm_ocr(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """GLM-OCR (``GlmOcrForConditionalGeneration``): GLM-4.1V's language model (``multimodal.glm4v``'s reading) with
    q/k/v unbiased (GlmOcrTextAttention builds them so, whatever ``attention_bias`` says) and GlmOcrTextConfig's
    sizes. transformers ignores the layer stored past ``num_hidden_layers`` (its next-token prediction layer), and so
    does jllm."""
    text = {**GLM4V_TEXT, **GLM_OCR_TEXT, **(cfg.get("text_config") or {}), "attention_bias": False}
    text.setdefault("head_dim", text["hidden_size"] // text["num_attention_heads"])
    args = _mrope_language_model({**cfg, "text_config": text}, dtype, llama.glm4, "model.language_model.")
    layer = text["num_hidden_layers"]
    why = "the next-token prediction layer past num_hidden_layers, which transformers' GLM-OCR ignores on load"
    skipped = (*args.weights.skipped, (rf"^model\.language_model\.layers\.{layer}\.", why))
    return dataclasses.replace(args, weights=dataclasses.replace(args.weights, skipped=skipped))


# PaddleOCRTextConfig's sizes (its other defaults are ERNIE 4.5's)
PADDLEOCR_TEXT = dict(
    vocab_size=103_424,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=18,
    num_attention_heads=16,
)


@text_model_only
def paddleocr_vl(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """PaddleOCR-VL (``PaddleOCRVLForConditionalGeneration``): ERNIE 4.5's layers (``llama.ernie4_5``: ``use_bias`` on
    every linear) under ``model.`` as the hub keeps them, attending with Qwen2-VL's M-RoPE, which turns half-split
    pairs (ERNIE 4.5's own turns neighbouring ones) and is the plain rotary for text; the head tied by default."""
    text = {**(cfg.get("text_config") or {}), "tie_word_embeddings": cfg.get("tie_word_embeddings", True)}
    return _mrope_language_model({**cfg, "text_config": text}, dtype, _half_split_ernie4_5, "model.", PADDLEOCR_TEXT)


def _half_split_ernie4_5(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    args = llama.ernie4_5(cfg, dtype)
    layers = tuple(
        dataclasses.replace(spec, rope=dataclasses.replace(spec.rope, interleaved=False)) for spec in args.layers
    )
    return dataclasses.replace(args, layers=layers)


@text_model_only
def hunyuan_vl(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """HunyuanOCR (``HunYuanVLForConditionalGeneration``): its HunYuan dense language model (``llama.hunyuan_dense``:
    q/k norms after the rotary, its NTK ``alpha`` rotary) under ``model.``, its M-RoPE read as the plain rotary, the
    head tied by default."""
    text = {**(cfg.get("text_config") or {}), "tie_word_embeddings": cfg.get("tie_word_embeddings", True)}
    return _mrope_language_model({**cfg, "text_config": text}, dtype, llama.hunyuan_dense, "model.")


# DeepseekOcr2TextConfig's defaults where a config leaves them out
DEEPSEEK_OCR2_TEXT = dict(
    vocab_size=102_400,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
    n_routed_experts=64,
    n_shared_experts=2,
    routed_scaling_factor=1.0,
    topk_method="greedy",
    moe_intermediate_size=1407,
)


@text_model_only
def deepseek_ocr2(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """DeepSeek-OCR-2 (``DeepseekOcr2ForConditionalGeneration``): its language model is Llama's multi-head attention
    (heads ``hidden_size / num_attention_heads`` wide, the whole head rotated in half-split pairs) over DeepSeek-V2's
    mixture (a softmax router, greedy or group-limited, weights times ``routed_scaling_factor``, never renormalised;
    shared experts), each layer dense or a mixture as ``mlp_layer_types`` says, under ``model.`` beside its SAM and
    Qwen2 vision encoders and projector (``model.sam_model`` and the rest, never read)."""
    text = {**DEEPSEEK_OCR2_TEXT, **(cfg.get("text_config") or {})}
    text["tie_word_embeddings"] = cfg.get("tie_word_embeddings", False)
    text["head_dim"] = text["hidden_size"] // text["num_attention_heads"]
    text["num_key_value_heads"] = text.get("num_key_value_heads") or text["num_attention_heads"]
    if text.get("mlp_layer_types") is None:
        raise ValueError(
            "DeepSeek-OCR-2 text_config mlp_layer_types=None is not supported (transformers' decoder reads "
            "each layer's kind, dense or sparse, from it)"
        )
    method = text["topk_method"]
    if method not in ("greedy", "group_limited_greedy"):
        raise ValueError(
            f"DeepSeek-OCR-2 topk_method={method!r} is not supported (supported: greedy, group_limited_greedy)"
        )
    groups = (text.get("n_group") or 1, text.get("topk_group") or 1) if method == "group_limited_greedy" else (1, 1)
    base = base_args(text, dtype)
    mixture, dense = deepseek.v3_mixture(
        text, base["num_layers"], "DeepSeek-OCR-2", "softmax", groups, False, text["mlp_layer_types"]
    )
    rope = read_rope(whole_head_rotary(text), base["head_dim"])
    bias = bool(text.get("attention_bias", False))
    args = ModelArgs(
        **{**base, "intermediate_size": text["moe_intermediate_size"]},
        layers=tuple(LayerSpec(rope, dense_mlp_size=size) for size in dense),
        qkv_bias=bias,
        o_bias=bias,
        **mixture,
    )
    why = "the SAM and Qwen2 vision encoders and the projector beside the text model: only the text model is loaded"
    skipped = ((r"^model\.(?!layers\.|embed_tokens\.|norm\.)", why),)
    return dataclasses.replace(args, weights=dataclasses.replace(args.weights, skipped=skipped))


@text_model_only
def qwen3_omni_thinker(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen3-Omni's thinker (``Qwen3OmniMoeThinkerForConditionalGeneration``): its Qwen3-MoE language model under
    ``model.`` (M-RoPE read as the plain rotary, as Qwen3-VL's), the head tied as the thinker config says; the vision
    and audio towers never read."""
    return _qwen3_omni_text(cfg, dtype)


@text_model_only
def qwen3_omni(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen3-Omni as the hub keeps it (``Qwen3OmniMoeForConditionalGeneration``: the thinker, the talker that speaks
    and its code-to-waveform decoder): the thinker's text, as vLLM serves it; the talker and decoder (audio output)
    never read."""
    return _thinker(_qwen3_omni_text, cfg, dtype)


def _qwen3_omni_text(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    return _mrope_language_model(_outer_tie(cfg), dtype, mixtures.qwen3_moe, "model.")


# Qwen2_5OmniTextConfig's defaults where Qwen2's differ, and its sizes
QWEN2_5_OMNI_TEXT = dict(
    rope_theta=1e6,
    rms_norm_eps=1e-6,
    vocab_size=152_064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=32768,
)


@text_model_only
def qwen2_5_omni_thinker(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen2.5-Omni's thinker (``Qwen2_5OmniThinkerForConditionalGeneration``): its Qwen2.5-VL language model (Qwen2,
    M-RoPE read as the plain rotary) under ``model.``, the head tied as the thinker config says; the vision and audio
    towers never read."""
    return _qwen2_5_omni_text(cfg, dtype)


@text_model_only
def qwen2_5_omni(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen2.5-Omni as the hub keeps it (``Qwen2_5OmniForConditionalGeneration``, which the hub's configs name
    ``Qwen2_5OmniModel``): the thinker's text, as vLLM serves it; the talker and token-to-waveform decoder never
    read."""
    return _thinker(_qwen2_5_omni_text, cfg, dtype)


def _qwen2_5_omni_text(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    return _mrope_language_model(_outer_tie(cfg), dtype, llama.qwen2, "model.", QWEN2_5_OMNI_TEXT)


def _outer_tie(cfg: dict[str, Any]) -> dict[str, Any]:
    """An omni thinker's config with its text config's head tie the thinker config's (transformers ties by that one,
    False by default, where the text configs default to True)."""
    text = {**(cfg.get("text_config") or {}), "tie_word_embeddings": cfg.get("tie_word_embeddings", False)}
    return {**cfg, "text_config": text}


def _thinker(text_model: Callable[[dict[str, Any], Any], ModelArgs], cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """An omni model's thinker (``thinker_config``) read by ``text_model``, its tensors under ``thinker.`` (the
    caller's ``text_model_only`` skips the rest: the thinker's towers, the talker, the waveform decoder)."""
    args = text_model(cfg.get("thinker_config") or {}, dtype)
    weights = args.weights
    layout = dict(prefix=f"thinker.{weights.prefix}", head_prefix=f"thinker.{weights.head_prefix}", aliases=())
    return dataclasses.replace(args, weights=dataclasses.replace(weights, **layout))

"""Text-only loads of image-text checkpoints (Gemma 3, Gemma 3n, Gemma 4, Gemma 4 unified, Mistral 3 and Ministral 3,
Llama 4, LLaVA and LLaVA-NeXT, Aya Vision, InternVL, Idefics3 and SmolVLM, Emu3, Qwen2-VL, Qwen2.5-VL, Qwen3-VL,
Qwen3-VL-MoE, GLM-4.1V, GLM-4.5V, Cohere Compass, MiniMax-M3, Mllama, Phi-4-multimodal): the language model's
``text_config`` read by its own family's reader, its tensors under ``language_model.`` (Idefics3's under
``model.text_model.``, Emu3's under ``text_model.``, Qwen's, GLM's and Cohere Compass's under ``model.``); the vision
tower and projector (and Gemma 3n's and Gemma 4's audio tower, Emu3's VQ-VAE) are never read, and prompts are text
(the server refuses image and audio parts by name). Phi-4-multimodal keeps its text settings at the config's top
level and its image and audio encoders beside the text model's tensors (``model.embed_tokens_extend.``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
from collections.abc import Callable
from typing import Any

from jllm.models.families import deepseek, gemma, layer_norm, llama, llama_variants, mixtures, qwen3_next, routed_moe
from jllm.models.families.common import MROPE_KEYS
from jllm.models.families.gemma3n import gemma3n_text
from jllm.models.families.gemma4 import gemma4_text, gemma4_unified_text
from jllm.models.model_args import ModelArgs
from jllm.safetensors_index import hf_names

# transformers saves the language model as ``language_model.model.*`` and ``language_model.lm_head.weight`` (as the
# hub's gemma-3-4b-it and Mistral-Small-3.1 keep them); its in-memory names, which other tools may save, are read too
LANGUAGE_MODEL = dict(
    prefix="language_model.model.",
    head_prefix="language_model.",
    aliases=(("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head.")),
)


def text_model_only(reader: Callable[[dict[str, Any], Any], ModelArgs]) -> Callable[[dict[str, Any], Any], ModelArgs]:
    """An image-text family's reader whose checkpoint tensors outside its text model (``WeightMap.prefix`` and the
    LM head: as our names spell them, after ``aliases``) are skipped on purpose: only the text model is loaded, so the
    other modalities' towers, projectors and tokenizers are never read (``jllm.unread_tensors``). An unread tensor
    inside the text model is still an error."""

    @functools.wraps(reader)
    def read(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
        args = reader(cfg, dtype)
        weights = args.weights
        text = "|".join(map(re.escape, (weights.prefix, f"{weights.head_prefix}lm_head.")))
        why = "another modality's tower, projector or tokenizer: only the text model is loaded"
        return dataclasses.replace(
            args, weights=dataclasses.replace(weights, skipped=(*weights.skipped, (f"^(?!{text})", why)))
        )

    return read


def _text_only(
    cfg: dict[str, Any], dtype: Any, family: str, readers: dict[str, Callable[[dict[str, Any], Any], ModelArgs]]
) -> ModelArgs:
    """The ``text_config``'s model read by the reader of its ``model_type`` (the first of ``readers`` by default), its
    tensor names moved under ``language_model.``. The LM head is tied as the text config says (transformers 5 reads
    the outer ``tie_word_embeddings``, but unties a head the checkpoint stores)."""
    text = cfg.get("text_config") or {}
    kind = text.get("model_type", next(iter(readers)))
    if kind not in readers:
        raise ValueError(
            f"{family} text_config model_type {kind!r} is not supported (supported: {', '.join(map(repr, readers))})"
        )
    args = readers[kind](text, dtype)
    return dataclasses.replace(args, weights=dataclasses.replace(args.weights, **LANGUAGE_MODEL))


@text_model_only
def gemma3(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Gemma 3 image-text (gemma-3-4b/12b/27b): its Gemma 3 language model. transformers'
    Gemma3ForConditionalGeneration never soft-caps its logits, so a ``final_logit_softcapping`` is refused (every
    released Gemma 3 leaves it null)."""
    cap = (cfg.get("text_config") or {}).get("final_logit_softcapping")
    if cap is not None:
        raise ValueError(
            f"Gemma3ForConditionalGeneration text_config final_logit_softcapping={cap} is not supported (supported: "
            "null; transformers' image-text Gemma 3 does not apply it)"
        )
    return _text_only(cfg, dtype, "Gemma 3", {"gemma3_text": gemma.gemma3})


@text_model_only
def gemma4(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Gemma 4 image-text(-audio) (gemma-4-e2b/e4b/26B-A4B/31B): its Gemma 4 language model, tensors under
    ``model.language_model.``, the head tied to its embeddings as the text config says (transformers' image-text Gemma
    4 soft-caps its logits as the text model does)."""
    text = {"tie_word_embeddings": cfg.get("tie_word_embeddings", True), **(cfg.get("text_config") or {})}
    return _text_only({**cfg, "text_config": text}, dtype, "Gemma 4", {"gemma4_text": gemma4_text})


@text_model_only
def gemma4_unified(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Gemma 4 unified image-text(-audio) (``Gemma4UnifiedForConditionalGeneration``, encoder-free: its patches and
    audio frames are embedded straight into the language model): its text model under ``model.language_model.``,
    the head tied as the outer ``tie_word_embeddings`` says (transformers reads that one, True by default, not the
    text config's)."""
    text = {**(cfg.get("text_config") or {}), "tie_word_embeddings": cfg.get("tie_word_embeddings", True)}
    return _text_only(
        {**cfg, "text_config": text}, dtype, "Gemma 4 unified", {"gemma4_unified_text": gemma4_unified_text}
    )


@text_model_only
def gemma3n(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Gemma 3n image-text-audio (gemma-3n-E2B/E4B(-it)): its Gemma 3n language model, tensors under
    ``model.language_model.``, the head tied as the text config says (transformers' image-text Gemma 3n soft-caps
    its logits as the text model does). Its ``embed_vision`` / ``embed_audio`` tables are not read: transformers embeds
    ids from ``vision_config.vocab_offset`` on (image and audio tokens, none in a text prompt) through them, jllm
    through ``embed_tokens``."""
    text = {"tie_word_embeddings": cfg.get("tie_word_embeddings", True), **(cfg.get("text_config") or {})}
    return _text_only({**cfg, "text_config": text}, dtype, "Gemma 3n", {"gemma3n_text": gemma3n_text})


@text_model_only
def mistral3(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Mistral 3 image-text: its Mistral (Mistral-Small-3.1/3.2) or Ministral 3 (Ministral-3) language model."""
    return _text_only(cfg, dtype, "Mistral 3", {"mistral": llama.mistral, "ministral3": llama.ministral3})


# LLaVA's language models by their text_config model_type (Vicuna / Llama, Mistral, Qwen2)
LLAVA_TEXT = {"llama": llama.llama, "mistral": llama.mistral, "qwen2": llama.qwen2}


@text_model_only
def llava(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """LLaVA-1.5 and LLaVA-NeXT (llava-hf's ``LlavaForConditionalGeneration``, ``LlavaNextForConditionalGeneration``):
    its Llama, Mistral or Qwen2 language model (LlavaConfig's default text model is Llama's)."""
    return _text_only(cfg, dtype, "LLaVA", LLAVA_TEXT)


@text_model_only
def aya_vision(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Aya Vision 8B / 32B: its Cohere2 (Command R7B / A) language model."""
    return _text_only(cfg, dtype, "Aya Vision", {"cohere2": layer_norm.cohere2})


@text_model_only
def internvl(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """InternVL3 / 3.5 as transformers keeps them (the ``-hf`` checkpoints): its Qwen2 or Qwen3 language model."""
    return _text_only(cfg, dtype, "InternVL", {"qwen2": llama.qwen2, "qwen3": llama.qwen3})


@text_model_only
def idefics3(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Idefics3 and SmolVLM: its Llama language model, tensors under ``model.text_model.``, the LM head
    ``lm_head``."""
    args = _text_only(cfg, dtype, "Idefics3", {"llama": llama.llama})
    weights = dataclasses.replace(args.weights, prefix="model.text_model.", head_prefix="", aliases=())
    return dataclasses.replace(args, weights=weights)


# Emu3's text model as transformers saves it (``text_model.model.*``, ``text_model.lm_head``), or in-memory names
EMU3_TEXT_MODEL = dict(
    prefix="text_model.model.",
    head_prefix="text_model.",
    aliases=(("model.text_model.", "text_model.model."), ("lm_head.", "text_model.lm_head.")),
)


@text_model_only
def emu3(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Emu3 (Emu3-Chat / Emu3-Gen): its Llama-like text model, tensors under ``text_model.``; the VQ-VAE image
    tokenizer is never read (image tokens are ids of the text vocabulary, which a text prompt does not hold)."""
    args = _text_only(cfg, dtype, "Emu3", {"emu3_text_model": llama_variants.emu3_text})
    return dataclasses.replace(args, weights=dataclasses.replace(args.weights, **EMU3_TEXT_MODEL))


@text_model_only
def mllama(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Llama 3.2 Vision (``MllamaForConditionalGeneration``, as the hub keeps it) on text: its text model
    (``llama_variants.mllama_text``: the self-attention layers alone, as transformers runs text without an image),
    tensors under ``language_model.``; the vision model and projector are never read."""
    return _text_only(cfg, dtype, "Mllama", {"mllama_text_model": llama_variants.mllama_text})


# Phi4MultimodalConfig's text settings where a config leaves them out (Phi-4-multimodal-instruct's)
PHI4_MULTIMODAL = dict(
    vocab_size=200_064,
    hidden_size=3072,
    intermediate_size=8192,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=131_072,
    original_max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    sliding_window=None,
)


def phi4_multimodal(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Phi-4-multimodal (``Phi4MultimodalForCausalLM``) on text: Phi-3's layers (fused qkv and gate_up, longrope,
    a partial rotary from ``rope_parameters``), Phi4MultimodalConfig's defaults (``PHI4_MULTIMODAL``: no sliding
    window). Without image or audio inputs transformers' feature embedding returns the token embeddings as they are, so
    its image and audio encoders (``model.embed_tokens_extend.``) are never read; the vision and speech LoRA adapters
    the hub ships beside the model are not part of this checkpoint."""
    cfg = {**PHI4_MULTIMODAL, **{k: v for k, v in cfg.items() if k not in ("vision_config", "audio_config")}}
    args = llama.phi3(cfg, dtype)
    why = "the image and audio encoders: jllm serves Phi-4-multimodal's text alone"
    return dataclasses.replace(
        args, weights=dataclasses.replace(args.weights, skipped=((r"^model\.embed_tokens_extend\.", why),))
    )


# Qwen2VLTextConfig's and Qwen2_5_VLTextConfig's defaults where Qwen2's differ; Qwen3VLTextConfig's (and
# Qwen3VLMoeTextConfig's) where Qwen3's do
QWEN2_VL_TEXT = dict(
    rope_theta=1e6,
    rms_norm_eps=1e-5,
    max_window_layers=80,
    vocab_size=152_064,
    hidden_size=8192,
    intermediate_size=29568,
    num_hidden_layers=80,
    num_attention_heads=64,
    num_key_value_heads=8,
)
QWEN3_VL_TEXT = dict(rope_theta=5e5, max_position_embeddings=128_000)


@text_model_only
def qwen2_5_vl(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen2-VL and Qwen2.5-VL: their Qwen2 language model, tensors under ``model.`` as the hub keeps them (and
    transformers saves them), with their text configs' defaults (``QWEN2_VL_TEXT``)."""
    return _mrope_language_model(cfg, dtype, llama.qwen2, "model.", QWEN2_VL_TEXT)


@text_model_only
def qwen3_vl(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen3-VL (dense): its Qwen3 language model, tensors under ``model.language_model.``, with its text config's
    defaults (``QWEN3_VL_TEXT``)."""
    return _mrope_language_model(cfg, dtype, llama.qwen3, "model.language_model.", QWEN3_VL_TEXT)


@text_model_only
def qwen3_vl_moe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen3-VL-MoE (Qwen3-VL-30B-A3B, 235B-A22B): its Qwen3-MoE language model under ``model.language_model.``, with
    transformers' ``Qwen3VLMoeTextTopKRouter``: the top-k of the softmax always renormalised (its config has no
    ``norm_topk_prob``). The head is tied as the outer ``tie_word_embeddings`` says (transformers 5 reads that one;
    the text config's defaults to True). Each projection's experts are one stacked tensor, read in either layout
    (``_hub_experts``)."""
    text = dict(cfg.get("text_config") or {}, norm_topk_prob=True)
    text["tie_word_embeddings"] = cfg.get("tie_word_embeddings", False)
    args = _mrope_language_model(
        {**cfg, "text_config": text}, dtype, mixtures.qwen3_moe, "model.language_model.", QWEN3_VL_TEXT
    )
    weights = dataclasses.replace(args.weights, rename=(), expert_params="out_in", reader=_hub_experts)
    return dataclasses.replace(args, weights=weights)


def _hub_experts(index: Any, path: tuple[Any, ...], shape: tuple[int, ...], dtype: Any) -> Any:
    """A Qwen3-VL-MoE expert kernel stored as the hub keeps it, ``[experts, in, out]`` (``gate_up_proj [experts,
    hidden, 2 * moe]``, ``down_proj [experts, moe, hidden]``); None where it is stored as transformers 5 holds and
    saves it, ``[experts, out, in]`` (the ``WeightMap``'s ``expert_params``). transformers reads both so
    (``Transpose(check_dims=True)``): a tensor of its own layout's shape as it is, any other transposed."""
    if len(path) < 3 or str(path[-3]) != "experts" or str(path[-1]) != "kernel":
        return None
    stored = index.tensors.get(hf_names(path, index.weights)[0][0])
    experts, d_in, d_out = shape[0], shape[1], math.prod(shape[2:])  # gate and up side by side
    found = None if stored is None else tuple(stored.slice().get_shape())
    if found != (experts, d_in, d_out) or found == (experts, d_out, d_in):  # where both fit, transformers' own
        return None
    hub = copy.copy(index)
    hub.weights = dataclasses.replace(index.weights, expert_params="in_out", reader=None)
    return hub.param_reader(path, shape, dtype, 1)


@text_model_only
def qwen3_5(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen3.5 image-text (``Qwen3_5ForConditionalGeneration``, as the hub's Qwen3.5 models are): its gated-DeltaNet
    hybrid language model under ``model.language_model.``."""
    return _mrope_language_model(cfg, dtype, qwen3_next.qwen3_5, "model.language_model.")


@text_model_only
def qwen3_5_moe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen3.5-MoE image-text (``Qwen3_5MoeForConditionalGeneration``): its hybrid mixture-of-experts language
    model under ``model.language_model.``."""
    return _mrope_language_model(cfg, dtype, qwen3_next.qwen3_5_moe, "model.language_model.")


# Glm4vTextConfig's defaults where GLM-4's (``llama.glm4``) differ, and its sizes
GLM4V_TEXT = dict(
    partial_rotary_factor=1.0,
    rms_norm_eps=1e-5,
    max_position_embeddings=32768,
    vocab_size=151_552,
    hidden_size=4096,
    intermediate_size=13696,
    num_hidden_layers=40,
    num_attention_heads=32,
)


@text_model_only
def glm4v(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """GLM-4.1V (``Glm4vForConditionalGeneration``): its GLM-4 language model (sandwich norms, interleaved partial
    rotary, q/k/v biases) under ``model.language_model.``, with Glm4vTextConfig's defaults."""
    text = cfg.get("text_config") or {}
    head_dim = text.get("head_dim") or text.get("hidden_size", 4096) // text.get("num_attention_heads", 32)
    return _mrope_language_model(
        {**cfg, "text_config": {**GLM4V_TEXT, "head_dim": head_dim, **text}}, dtype, llama.glm4, "model.language_model."
    )


@text_model_only
def glm4v_moe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """GLM-4.5V (``Glm4vMoeForConditionalGeneration``): its GLM-4.5 language model (``deepseek.glm4_moe``: V3's
    mixture on grouped-query attention, half-split partial rotary) under ``model.language_model.``; q/k/v biases
    unless ``attention_bias`` says otherwise (Glm4vMoeTextConfig's default, where GLM-4.5's is none)."""
    return _mrope_language_model(cfg, dtype, deepseek.glm4_moe, "model.language_model.", {"attention_bias": True})


@text_model_only
def qwen4_exp(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen4-Exp image-text (``Qwen4ExpForConditionalGeneration``, the hub's "Qwen/Qwen4-Exp"): its hybrid
    language model in hyper-connection streams under ``model.language_model.``."""
    return _mrope_language_model(cfg, dtype, qwen3_next.qwen4_exp, "model.language_model.")


def _mrope_language_model(
    cfg: dict[str, Any],
    dtype: Any,
    reader: Callable[[dict[str, Any], Any], ModelArgs],
    prefix: str,
    defaults: dict[str, Any] | None = None,
) -> ModelArgs:
    """A Qwen-VL or GLM-V language model: the ``text_config`` (or, in the hub's older configs, the top level), the head
    tied as the top level says where the text config does not, and its M-RoPE read as the plain rotary: a text token's
    temporal, height and width positions are one position, so every channel rotates by it, whichever section it is
    in. ``defaults``: the text config class's where they differ from the language model family's."""
    text = cfg.get("text_config") or {k: v for k, v in cfg.items() if k != "vision_config"}
    text = {"tie_word_embeddings": cfg.get("tie_word_embeddings", False), **(defaults or {}), **text}
    rope = {
        k: v for k, v in (text.get("rope_parameters") or text.get("rope_scaling") or {}).items() if k not in MROPE_KEYS
    }
    if rope.get("type") == "mrope":
        rope.pop("type")
    if rope.get("rope_type") == "mrope":
        rope["rope_type"] = "default"
    args = reader({**text, "rope_scaling": None, "rope_parameters": rope}, dtype)
    return dataclasses.replace(args, weights=dataclasses.replace(args.weights, prefix=prefix))


@text_model_only
def cohere_compass(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Cohere Compass image-text (``CohereCompassForConditionalGeneration``, North's vision models): its Cohere Compass
    language model under ``model.language_model.`` (Qwen3-VL's layout; deepstack adds only to image tokens), the head
    tied as the outer ``tie_word_embeddings`` says (transformers reads that one, False by default, not the text
    config's)."""
    text = {**(cfg.get("text_config") or {}), "tie_word_embeddings": cfg.get("tie_word_embeddings", False)}
    return _mrope_language_model(
        {**cfg, "text_config": text}, dtype, layer_norm.cohere_compass, "model.language_model."
    )


@text_model_only
def minimax_m3(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """MiniMax-M3 image-text (``MiniMaxM3SparseForConditionalGeneration``, LLaVA's layout): its MiniMax-M3 language
    model, tensors under ``language_model.``, the head tied where either config ties it (transformers' config takes
    the text config's tie when the outer one's is off)."""
    text = cfg.get("text_config") or {}
    tie = bool(cfg.get("tie_word_embeddings") or text.get("tie_word_embeddings"))
    readers = {"minimax_m3_vl_text": routed_moe.minimax_m3}
    args = _text_only({**cfg, "text_config": {**text, "tie_word_embeddings": tie}}, dtype, "MiniMax-M3", readers)
    return dataclasses.replace(args, weights=dataclasses.replace(args.weights, reader=_minimax_m3_hub))


# MiniMax-M3's hub names for a mixture layer's modules (transformers' conversion mapping for minimax_m3_vl, which a
# save writes back): under ``block_sparse_moe``, its choice bias on the block, the experts one tensor per expert
M3_HUB_MIXTURE = (
    ("mlp", "block_sparse_moe"),
    ("gate.e_score_correction_bias", "e_score_correction_bias"),
    ("shared_expert", "shared_experts"),
    ("experts", "experts.{e}"),
)


def _minimax_m3_hub(index: Any, path: tuple[Any, ...], shape: tuple[int, ...], dtype: Any) -> Any:
    """A MiniMax-M3 image-text parameter stored as the hub keeps it: a mixture's modules under ``block_sparse_moe``,
    the experts' ``w1`` / ``w3`` / ``w2`` per expert, every other gated MLP's ``gate_proj`` / ``up_proj`` apart; None
    where it is stored under transformers 5's in-memory names (the text model's: read as named)."""
    keys = set(map(str, path))
    experts, mixture = "experts" in keys, bool(keys & {"gate", "experts", "shared_expert"})
    hub = copy.copy(index)
    hub.weights = dataclasses.replace(
        index.weights,
        rename=(*(M3_HUB_MIXTURE if mixture else ()), *((("down_proj", "w2"),) if experts else ())),
        gate_up=("w1", "w3") if experts else ("gate_proj", "up_proj"),
        expert_params=None,
        reader=None,
    )
    stored = hf_names(path, hub.weights)[0][0].replace("{e}", "0")
    return hub.param_reader(path, shape, dtype, 1) if stored in index.tensors else None


@text_model_only
def llama4(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Llama 4 Scout / Maverick as the hub keeps them (``Llama4ForConditionalGeneration``): its text model."""
    return _text_only(cfg, dtype, "Llama 4", {"llama4_text": mixtures.llama4})

"""Which family description serves a checkpoint, keyed by ``config.json``'s ``architectures``.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from flax import nnx

from jllm.models.decoder import CausalLM
from jllm.models.families import (
    alibi,
    bailing_hybrid,
    cohere_moe,
    dbrx,
    deepseek,
    deepseek_sparse,
    deepseek_v4,
    doge,
    early_gpt,
    ergo,
    fairseq,
    gated_attention,
    gemma,
    gemma3n,
    gemma4,
    gpt_oss,
    gpt_variants,
    image_text,
    jetmoe,
    kimi_linear,
    lara_mini,
    layer_norm,
    lfm2,
    llama,
    llama_variants,
    longcat,
    looped,
    mamba,
    mamba_hybrids,
    minimax,
    mixtures,
    modernbert,
    multimodal,
    olmo_hybrid,
    qwen3_next,
    recurrent_gemma,
    relu_mlp,
    routed_moe,
    rwkv,
    sliding_moe,
    xlstm,
    zamba2,
)
from jllm.models.model_args import ModelArgs

# architecture name -> the family reader that turns its config.json into ModelArgs
ARCHITECTURES: dict[str, Callable[[dict[str, Any], Any], ModelArgs]] = {
    "LlamaForCausalLM": llama.llama,
    "MistralForCausalLM": llama.mistral,
    "Ministral3ForCausalLM": llama.ministral3,
    "Qwen2ForCausalLM": llama.qwen2,
    "Qwen3ForCausalLM": llama.qwen3,
    "HunYuanDenseV1ForCausalLM": llama.hunyuan_dense,
    "SmolLM3ForCausalLM": llama.smollm3,
    "GlmForCausalLM": llama.glm,
    "Glm4ForCausalLM": llama.glm4,
    "HeliumForCausalLM": llama.helium,
    "Ernie4_5ForCausalLM": llama.ernie4_5,
    "SeedOssForCausalLM": llama.seed_oss,
    "ArceeForCausalLM": llama.arcee,
    "ApertusForCausalLM": llama.apertus,
    "GraniteForCausalLM": llama.granite,
    "Olmo2ForCausalLM": llama.olmo2,
    "Olmo3ForCausalLM": llama.olmo3,
    "Exaone4ForCausalLM": llama.exaone4,
    "Phi3ForCausalLM": llama.phi3,
    "Phi4MultimodalForCausalLM": multimodal.phi4_multimodal,
    "GemmaForCausalLM": gemma.gemma,
    "Gemma2ForCausalLM": gemma.gemma2,
    "Gemma3ForCausalLM": gemma.gemma3,
    "Gemma3ForConditionalGeneration": multimodal.gemma3,
    "Gemma3nForCausalLM": gemma3n.gemma3n_text,
    "Gemma3nForConditionalGeneration": multimodal.gemma3n,
    "Gemma4ForCausalLM": gemma4.gemma4_text,
    "Gemma4ForConditionalGeneration": multimodal.gemma4,
    "Gemma4UnifiedForCausalLM": gemma4.gemma4_unified_text,
    "Gemma4UnifiedForConditionalGeneration": multimodal.gemma4_unified,
    "Mistral3ForConditionalGeneration": multimodal.mistral3,
    "Llama4ForConditionalGeneration": multimodal.llama4,
    "LlavaForConditionalGeneration": multimodal.llava,
    "LlavaNextForConditionalGeneration": multimodal.llava,
    "AyaVisionForConditionalGeneration": multimodal.aya_vision,
    "InternVLForConditionalGeneration": multimodal.internvl,
    "Idefics3ForConditionalGeneration": multimodal.idefics3,
    "SmolVLMForConditionalGeneration": multimodal.idefics3,
    "Qwen2VLForConditionalGeneration": multimodal.qwen2_5_vl,
    "Qwen2_5_VLForConditionalGeneration": multimodal.qwen2_5_vl,
    "Qwen3VLForConditionalGeneration": multimodal.qwen3_vl,
    "Qwen3VLMoeForConditionalGeneration": multimodal.qwen3_vl_moe,
    "Glm4vForConditionalGeneration": multimodal.glm4v,
    "Glm4vMoeForConditionalGeneration": multimodal.glm4v_moe,
    "Glm46VForConditionalGeneration": multimodal.glm4v,  # GLM-4.6V: GLM-4.1V's text config (glm4v_text) and layout
    "LlavaOnevisionForConditionalGeneration": multimodal.llava,
    "LlavaNextVideoForConditionalGeneration": multimodal.llava,
    "Kimi_K25ForConditionalGeneration": image_text.kimi_k25,
    "KimiK25ForConditionalGeneration": image_text.kimi_k25,  # the hub's config (moonshotai/Kimi-K2.5) spells it so
    "Lfm2VlForConditionalGeneration": image_text.lfm2_vl,
    "Cohere2VisionForConditionalGeneration": image_text.cohere2_vision,
    "AriaForConditionalGeneration": image_text.aria,
    "Idefics2ForConditionalGeneration": image_text.idefics2,
    "FuyuForCausalLM": image_text.fuyu,
    "LightOnOcrForConditionalGeneration": image_text.lighton_ocr,
    "Ovis2_5ForConditionalGeneration": image_text.ovis2_5,
    "GlmOcrForConditionalGeneration": image_text.glm_ocr,
    "PaddleOCRVLForConditionalGeneration": image_text.paddleocr_vl,
    "HunYuanVLForConditionalGeneration": image_text.hunyuan_vl,
    "DeepseekOcr2ForConditionalGeneration": image_text.deepseek_ocr2,
    "Exaone4_5_ForConditionalGeneration": image_text.exaone4_5,
    "HyperCLOVAXVisionV2ForConditionalGeneration": image_text.hyperclovax_vision_v2,
    "Lfm3VlForConditionalGeneration": image_text.lfm3_vl,
    "MiniCPMV4_6ForConditionalGeneration": image_text.minicpmv4_6,
    "MiniCPMV4_7ForConditionalGeneration": image_text.minicpmv4_7,
    "MiniCPMOcrForConditionalGeneration": image_text.minicpm_ocr,
    "DeepseekVLHybridForConditionalGeneration": image_text.deepseek_vl_hybrid,
    "GraniteDoclingForConditionalGeneration": image_text.granite_docling,
    "JanusForConditionalGeneration": image_text.janus,
    "MossTranscribeDiarizeForConditionalGeneration": image_text.moss_transcribe_diarize,
    "VipLlavaForConditionalGeneration": multimodal.llava,
    "VideoLlavaForConditionalGeneration": multimodal.llava,
    "GotOcr2ForConditionalGeneration": image_text.got_ocr2,
    "Ovis2ForConditionalGeneration": image_text.ovis2,
    "LlavaOnevision15ForConditionalGeneration": image_text.llava_onevision1_5,
    "VideoLlama3ForConditionalGeneration": image_text.video_llama3,
    "QianfanOCRForConditionalGeneration": image_text.qianfan_ocr,
    "DeepseekVLForConditionalGeneration": image_text.deepseek_vl,
    "Qwen3OmniMoeThinkerForConditionalGeneration": image_text.qwen3_omni_thinker,
    "Qwen3OmniMoeForConditionalGeneration": image_text.qwen3_omni,
    "Qwen2_5OmniThinkerForConditionalGeneration": image_text.qwen2_5_omni_thinker,
    "Qwen2_5OmniForConditionalGeneration": image_text.qwen2_5_omni,
    "Qwen2_5OmniModel": image_text.qwen2_5_omni,  # the hub's Qwen2.5-Omni configs name it so
    "GPTNeoXForCausalLM": layer_norm.gpt_neox,
    "FalconForCausalLM": layer_norm.falcon,
    "PhiForCausalLM": layer_norm.phi,
    "GPTJForCausalLM": layer_norm.gptj,
    "GPTBigCodeForCausalLM": layer_norm.gpt_bigcode,
    "GPT2LMHeadModel": layer_norm.gpt2,
    "GPTNeoForCausalLM": gpt_variants.gpt_neo,
    "CodeGenForCausalLM": gpt_variants.codegen,
    "StableLmForCausalLM": layer_norm.stablelm,
    "Starcoder2ForCausalLM": layer_norm.starcoder2,
    "CohereForCausalLM": layer_norm.cohere,
    "Cohere2ForCausalLM": layer_norm.cohere2,
    "CohereCompassForCausalLM": layer_norm.cohere_compass,
    "CohereCompassForConditionalGeneration": multimodal.cohere_compass,
    "OlmoForCausalLM": layer_norm.olmo,
    "NemotronForCausalLM": relu_mlp.nemotron,
    "PersimmonForCausalLM": relu_mlp.persimmon,
    "OPTForCausalLM": relu_mlp.opt,
    "MixtralForCausalLM": mixtures.mixtral,
    "Qwen2MoeForCausalLM": mixtures.qwen2_moe,
    "Qwen3MoeForCausalLM": mixtures.qwen3_moe,
    "AriaTextForCausalLM": mixtures.aria_text,
    "OlmoeForCausalLM": mixtures.olmoe,
    "FlexOlmoForCausalLM": mixtures.flex_olmo,
    "GraniteMoeForCausalLM": mixtures.granite_moe,
    "GraniteMoeSharedForCausalLM": mixtures.granite_moe_shared,
    "PhimoeForCausalLM": mixtures.phimoe,
    "Ernie4_5_MoeForCausalLM": mixtures.ernie4_5_moe,
    "Llama4ForCausalLM": mixtures.llama4,
    "HunYuanMoEV1ForCausalLM": mixtures.hunyuan_moe,
    "DeepseekV2ForCausalLM": deepseek.deepseek_v2,
    "DeepseekV3ForCausalLM": deepseek.deepseek_v3,
    "DeepseekV32ForCausalLM": deepseek_sparse.deepseek_v32,
    "DeepseekV4ForCausalLM": deepseek_v4.deepseek_v4,
    "GlmMoeDsaForCausalLM": deepseek_sparse.glm_moe_dsa,
    "HYV4ForCausalLM": deepseek_sparse.hy_v4,
    "Glm4MoeForCausalLM": deepseek.glm4_moe,
    "Dots1ForCausalLM": deepseek.dots1,
    "GptOssForCausalLM": gpt_oss.gpt_oss,
    "DbrxForCausalLM": dbrx.dbrx,
    "BloomForCausalLM": alibi.bloom,
    "MptForCausalLM": alibi.mpt,
    "MPTForCausalLM": alibi.mpt,  # the hub's MPT configs spell it so (MosaicML's own code)
    "XGLMForCausalLM": fairseq.xglm,
    "BioGptForCausalLM": fairseq.biogpt,
    "VaultGemmaForCausalLM": gemma.vaultgemma,
    "MinistralForCausalLM": llama.mistral,  # Mistral with per-layer sliding (layer_types), which the reader takes
    "CwmForCausalLM": llama_variants.cwm,
    "NanoChatForCausalLM": llama_variants.nanochat,
    "Jais2ForCausalLM": llama_variants.jais2,
    "HyperCLOVAXForCausalLM": llama_variants.hyperclovax,
    "SolarOpenForCausalLM": deepseek.solar_open,
    "GraniteSWAForCausalLM": llama_variants.granite_swa,
    "GraniteMoeSWAForCausalLM": llama_variants.granite_moe_swa,
    "Apertus1p5TextForCausalLM": llama_variants.apertus1p5_text,
    "BitNetForCausalLM": llama_variants.bitnet,
    "Emu3ForCausalLM": llama_variants.emu3_text,
    "Emu3ForConditionalGeneration": multimodal.emu3,
    "DiffLlamaForCausalLM": llama_variants.diffllama,
    "MllamaForCausalLM": llama_variants.mllama_text,
    "MllamaForConditionalGeneration": multimodal.mllama,
    "ModernBertDecoderForCausalLM": modernbert.modernbert_decoder,
    "OpenAIGPTLMHeadModel": early_gpt.openai_gpt,
    "CTRLLMHeadModel": early_gpt.ctrl,
    "GPTNeoXJapaneseForCausalLM": early_gpt.gpt_neox_japanese,
    "YoutuForCausalLM": deepseek.youtu,
    "MiniMaxM2ForCausalLM": routed_moe.minimax_m2,
    "MiniMaxM3VLForCausalLM": routed_moe.minimax_m3,
    "MiniMaxM3SparseForConditionalGeneration": multimodal.minimax_m3,
    "LongcatFlashForCausalLM": longcat.longcat_flash,
    "MiniMaxForCausalLM": minimax.minimax,
    "MiniMaxText01ForCausalLM": minimax.minimax_text01,  # the remote code's config keys
    "Glm4MoeLiteForCausalLM": deepseek.glm4_moe_lite,
    "Mistral4ForCausalLM": deepseek.mistral4,
    "ExaoneMoeForCausalLM": routed_moe.exaone_moe,
    "Cohere2MoeForCausalLM": cohere_moe.cohere2_moe,
    "MiniCPM5MoeForCausalLM": routed_moe.minicpm5_moe,
    "MiniCPM3ForCausalLM": deepseek.minicpm3,
    "AfmoeForCausalLM": gated_attention.afmoe,
    "LagunaForCausalLM": gated_attention.laguna,
    "Kolibri1ForCausalLM": sliding_moe.kolibri1,
    "Kolibri1_1ForCausalLM": sliding_moe.kolibri1_1,
    "MellumForCausalLM": sliding_moe.mellum,
    "FlintForCausalLM": sliding_moe.flint,
    "MiMoV2FlashForCausalLM": sliding_moe.mimo_v2_flash,
    "HYV3ForCausalLM": mixtures.hy_v3,
    "AXK1ForCausalLM": deepseek.axk1,
    "AXK2ForCausalLM": deepseek_sparse.axk2,
    "JetMoeForCausalLM": jetmoe.jetmoe,
    "BambaForCausalLM": mamba_hybrids.bamba,
    "GraniteMoeHybridForCausalLM": mamba_hybrids.granite_moe_hybrid,
    "NemotronHForCausalLM": mamba_hybrids.nemotron_h,
    "FalconH1ForCausalLM": mamba_hybrids.falcon_h1,
    "MambaForCausalLM": mamba.mamba,
    "FalconMambaForCausalLM": mamba.falcon_mamba,
    "Mamba2ForCausalLM": mamba.mamba2,
    "Zamba2ForCausalLM": zamba2.zamba2,
    "ZambaForCausalLM": zamba2.zamba,
    "JambaForCausalLM": mamba.jamba,
    "RwkvForCausalLM": rwkv.rwkv,
    "RecurrentGemmaForCausalLM": recurrent_gemma.recurrent_gemma,
    "xLSTMForCausalLM": xlstm.xlstm,
    "Lfm2ForCausalLM": lfm2.lfm2,
    "Lfm2MoeForCausalLM": lfm2.lfm2_moe,
    "Lfm3ForCausalLM": lfm2.lfm3,
    "OlmoHybridForCausalLM": olmo_hybrid.olmo_hybrid,
    "KimiLinearForCausalLM": kimi_linear.kimi_linear,
    "BailingHybridForCausalLM": bailing_hybrid.bailing_hybrid,
    "LaraMiniForCausalLM": lara_mini.lara_mini,
    "HrmTextForCausalLM": looped.hrm_text,
    "DoryForCausalLM": looped.dory,
    "DogeForCausalLM": doge.doge,
    "ErgoForCausalLM": ergo.ergo,
    "Qwen3NextForCausalLM": qwen3_next.qwen3_next,
    "Qwen3_5ForCausalLM": qwen3_next.qwen3_5,
    "Qwen3_5MoeForCausalLM": qwen3_next.qwen3_5_moe,
    "Qwen4ExpForCausalLM": qwen3_next.qwen4_exp,
    "Qwen3_5ForConditionalGeneration": multimodal.qwen3_5,
    "Qwen3_5MoeForConditionalGeneration": multimodal.qwen3_5_moe,
    "Qwen4ExpForConditionalGeneration": multimodal.qwen4_exp,
}

_GEMMA4_ASSISTANT = (
    "Gemma 4's assistant (and Gemma 4 unified's) is a drafter for speculative decoding, not a standalone language "
    "model: each step it takes the target model's last hidden state beside the token's embedding (pre_projection of "
    "2 * backbone_hidden_size channels), attends over the target's shared K/V states (shared_kv_states) instead of a "
    "cache of its own, and hands a projected state back to the target; jllm's speculative decoding has no draft "
    "model to run it as, only n-gram lookup (serve the target checkpoint instead)"
)
_DOTS3_NOTE = (
    "dots3-note's text model runs multi-head latent attention whose widths differ by layer type (per_layer_config: "
    "the sliding_attention layers' own heads, q/kv LoRA ranks and head widths), its normed q and kv latents scaled "
    "by sqrt(hidden_size / rank), an RMSNorm on the shared rope key (k_rope_only_layernorm), a per-head sigmoid "
    "output gate (g_proj), and GLM-5's sparse-attention indexer on its indexed_attention layers; jllm's latent "
    "attention has one shape for every layer and none of these yet"
)
_INKLING = (
    "Inkling's attention has no rotary: it adds a relative position bias made per token and head from the hidden "
    "state (r_proj's d_rel states times a learned bias-vs-distance bank over rel_extent tokens), scales scores by "
    "1/head_dim, runs causal short convolutions (conv_kernel_size) on its keys and values before they are cached and "
    "on the attention's and the MLP's outputs (four conv states per layer), routes its shared experts in the router's "
    "softmax beside the routed ones (shared_expert_sink) and norms its embeddings; jllm's attention takes no bias per "
    "query and distance and its decoder has none of these convolutions yet"
)
_INKLING2 = (
    "Inkling 2 keeps Inkling's relative position bias made from the hidden state (no rotary) and short convolutions "
    "on keys and values (dynamic ones, with per-token taps, in its full-attention layers), and adds L2-clipped "
    "queries and keys (qk_l2_clip_threshold), a logarithmic query scale by position (log_scaling_n_floor), a sigmoid "
    "gate on the attention output, softcapped SwiGLU experts (mlp_gate_softcap, mlp_up_softcap) and block attention "
    "residuals (each layer's input an attention over the sums of earlier blocks of n_layers_per_attn_res_block "
    "layers); jllm's decoder has none of these yet"
)
_INKLING2_LOOP = (
    "Inkling 2 Loop runs Inkling 2's layers (relative position bias from the hidden state, short convolutions on keys "
    "and values, block attention residuals; none in jllm's decoder yet) and loops layers loop_layer_index_start.."
    "loop_layer_index_end loop_num_passes times, mixing the previous pass's blocks in through message gates; each "
    "pass of a looped layer would need its own K/V pages and conv states, which jllm's KV pool (one entry per layer) "
    "does not keep"
)

_BLIP2 = (
    "BLIP-2 (and InstructBLIP) always conditions its language model on an image: the Q-Former's query outputs are "
    "put before every prompt, and transformers' forward takes pixel_values as a required input; jllm loads no vision "
    "tower, and its language model alone (OPT, or the encoder-decoder Flan-T5) is not that model (serve the language "
    "model's own checkpoint instead)"
)

# architectures transformers has that jllm refuses at load, and why (what the one decoder lacks for them)
REFUSED = {
    "PaliGemmaForConditionalGeneration": (
        "PaliGemma attends both ways over its prefix (the image and the prompt: token_type_ids 0) and causally over "
        "the suffix alone; PaliGemmaConfig turns its Gemma's use_bidirectional_attention on, so even on text alone "
        "transformers attends both ways over the whole input; jllm's attention is causal"
    ),
    "Blip2ForConditionalGeneration": _BLIP2,
    "InstructBlipForConditionalGeneration": _BLIP2,
    "InstructBlipVideoForConditionalGeneration": _BLIP2,
    "BeamForCausalLM": (
        "Beam (Reflection) scales each block's output and the residual by their depth (1/sqrt(i) and "
        "sqrt((i - 1)/i) at the i-th residual add), adds a learned bias per head to its attention's sigmoid output "
        "gate, and scales its full (NoPE) layers' queries by (1 + (position + 1)/2048) ** 0.1; jllm's decoder has "
        "none of these yet"
    ),
    "Gemma4AssistantForCausalLM": _GEMMA4_ASSISTANT,
    "Gemma4UnifiedAssistantForCausalLM": _GEMMA4_ASSISTANT,
    "Dots3NoteForCausalLM": _DOTS3_NOTE,
    "Dots3NoteForConditionalGeneration": _DOTS3_NOTE,
    "InklingForCausalLM": _INKLING,
    "InklingForConditionalGeneration": _INKLING,
    "Inkling2ForCausalLM": _INKLING2,
    "Inkling2ForConditionalGeneration": _INKLING2,
    "Inkling2LoopForCausalLM": _INKLING2_LOOP,
    "Inkling2LoopForConditionalGeneration": _INKLING2_LOOP,
    "BltForCausalLM": (
        "BLT (Byte Latent Transformer) is not one decoder over tokens: a local encoder over bytes (with hash n-gram "
        "embeddings) pools them by cross-attention into patches whose bounds an entropy model (BltPatcher) picks "
        "from the bytes seen so far, a global transformer runs over the patches, and a local decoder cross-attends "
        "back to bytes; jllm's one decoder and its KV pool (one entry per layer over the sequence's tokens) have none "
        "of these"
    ),
    "ZayaForCausalLM": (
        "ZAYA (Zyphra) projects q and k through Compressed Convolutional Attention (causal convolutions over q and k "
        "kept as a state across steps, half of each value head from the previous token), routes by an MLP over a "
        "state carried from the previous layer's router with a skip expert, and scales both sides of every residual "
        "add by learned per-channel weights and biases; jllm's decoder has none of these yet"
    ),
    **dict.fromkeys(
        (
            "BertLMHeadModel",
            "BertGenerationDecoder",
            "BigBirdForCausalLM",
            "CamembertForCausalLM",
            "Data2VecTextForCausalLM",
            "ElectraForCausalLM",
            "ErnieForCausalLM",
            "MegatronBertForCausalLM",
            "RemBertForCausalLM",
            "RoCBertForCausalLM",
            "RoFormerForCausalLM",
            "RobertaForCausalLM",
            "RobertaPreLayerNormForCausalLM",
            "XLMRobertaForCausalLM",
            "XLMRobertaXLForCausalLM",
            "XmodForCausalLM",
        ),
        "a BERT-family encoder run causally (is_decoder), as transformers builds the decoder half of an "
        "EncoderDecoderModel that cross-attends to its encoder; its checkpoints are masked-language-model encoders "
        "trained to attend both ways, and jllm serves decoder-only language models (serve the encoder-decoder's own "
        "checkpoint with an engine that runs its encoder)",
    ),
    **dict.fromkeys(
        (
            "BartForCausalLM",
            "BigBirdPegasusForCausalLM",
            "BlenderbotForCausalLM",
            "BlenderbotSmallForCausalLM",
            "MarianForCausalLM",
            "MBartForCausalLM",
            "MvpForCausalLM",
            "PegasusForCausalLM",
            "PLBartForCausalLM",
            "ProphetNetForCausalLM",
            "TrOCRForCausalLM",
            "WhisperForCausalLM",
        ),
        "the decoder half of an encoder-decoder model: its layers cross-attend to an encoder's output (text, an image "
        "or audio), which jllm neither computes nor attends to (it has no encoder and no cross-attention)",
    ),
    **dict.fromkeys(
        (
            "Florence2ForConditionalGeneration",
            "Pix2StructForConditionalGeneration",
            "PPFormulaNetForConditionalGeneration",
            "T5Gemma2ForConditionalGeneration",
            "UdopForConditionalGeneration",
            "VisionEncoderDecoderModel",
        ),
        "an encoder-decoder model: its text comes from a decoder cross-attending to an encoder's output (of the image "
        "and the prompt); jllm has no encoder and no cross-attention",
    ),
    "BlipForConditionalGeneration": (
        "BLIP's text decoder cross-attends to the image encoder's output in every layer, and transformers' forward "
        "takes pixel_values as a required input; jllm has no cross-attention and loads no vision tower"
    ),
    "DiffusionGemmaForBlockDiffusion": (
        "DiffusionGemma generates by block diffusion: it denoises a canvas of canvas_length tokens over several steps, "
        "attending both ways within the canvas and conditioned on the prompt's cache; jllm's engine decodes causally, "
        "one token a step"
    ),
    **dict.fromkeys(
        ("PI0ForConditionalGeneration", "PI05ForConditionalGeneration"),
        "a vision-language-action model: its action expert predicts continuous robot actions by flow matching "
        "(attending both ways over the action tokens), not text",
    ),
    **dict.fromkeys(
        ("MusicgenForCausalLM", "MusicgenMelodyForCausalLM"),
        "MusicGen's decoder predicts num_codebooks streams of audio codes a step (one head each, the codebooks' "
        "embeddings summed, a delay between them), conditioned on a text encoder's output; its tokens are audio "
        "codes, not text, and jllm has one head and no text encoder",
    ),
    "ReformerModelWithLMHead": (
        "Reformer attends through locality-sensitive hashing and local chunks, adds axial position embeddings and runs "
        "reversible layers (two residual streams); jllm's attention is dense over the paged KV"
    ),
    "XLNetLMHeadModel": (
        "XLNet is a permutation language model: two-stream attention (content and query streams) with relative "
        "position and segment encodings; jllm's decoder has neither"
    ),
    "XLMWithLMHeadModel": (
        "XLM is a masked language model attending both ways unless its config says causal, with a language embedding "
        "per token and post-norm layers; jllm serves decoder-only language models"
    ),
    "CpmAntForCausalLM": (
        "CPM-Ant adds a learned relative position bias by segment and distance bucket to every attention score "
        "(SegmentPositionEmbedding) and prompt embeddings per task; jllm's attention takes no such bias"
    ),
}

# transformers' ``GenericForSequenceClassification`` of these families: the causal LM's decoder (same config, same
# tensor names) with a bias-free ``score`` head read at the last token in place of the LM head (``jllm.classify``)
CLASSIFIERS: dict[str, str] = {
    f"{family}ForSequenceClassification": f"{family}ForCausalLM"
    for family in ("Llama", "Mistral", "Qwen2", "Qwen3", "Gemma2", "Phi3")
}


def resolve_architecture(hf_config: dict[str, Any]) -> Callable[[dict[str, Any], Any], ModelArgs]:
    names = hf_config.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
        if name in CLASSIFIERS:
            return functools.partial(_classifier, ARCHITECTURES[CLASSIFIERS[name]])
        if name in REFUSED:
            raise ValueError(f"architecture {name!r} is not supported: {REFUSED[name]}")
    supported = sorted([*ARCHITECTURES, *CLASSIFIERS])
    raise ValueError(f"unsupported architecture {names!r} in config.json; supported: {', '.join(supported)}")


def num_labels(hf_config: dict[str, Any]) -> int:
    """transformers' ``PretrainedConfig.num_labels``: as many as ``id2label`` names, else 2 (its default)."""
    return len(hf_config["id2label"]) if hf_config.get("id2label") else 2


def _classifier(reader: Callable[[dict[str, Any], Any], ModelArgs], cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    return dataclasses.replace(reader(cfg, dtype), num_labels=num_labels(cfg))


def build_args(hf_config: dict[str, Any], dtype: Any) -> tuple[type[nnx.Module], ModelArgs]:
    return CausalLM, resolve_architecture(hf_config)(hf_config, dtype)

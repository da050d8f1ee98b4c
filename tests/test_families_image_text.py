"""More image-text checkpoints' text models against transformers (``jllm.models.families.image_text``, and the
LLaVA and GLM-4.1V readers' other architectures), and the architectures transformers generates text with that jllm
refuses by name: image-conditioned or prefix-LM ones, encoder-decoders and their decoder halves, BERT-family encoders
run causally, audio-code and other non-LM decoders.

Each served checkpoint: a 70-token prompt's float32 logits within ``LOGITS_RTOL`` of transformers' image-text model
on text, and, where its language model's decoder runs nothing another greedy row runs, greedy ``LLM.generate``
equal to transformers' ``generate``. Rows live here, not in ``tests/test_families.py``'s ``FAMILIES`` (whose rows are
seeded by their position).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from flax import nnx
from model_utils import TINY_CONFIG, assert_greedy_equal
from test_families import (
    BATCH_NEW_TOKENS,
    CLIP,
    DEEPSEEK,
    DELTANET_KEYS,
    ENGINE_ARGS,
    GREEDY_BATCH,
    HYBRID_LOGITS_RTOL,
    LFM2_KEYS,
    LOGITS_RTOL,
    PROMPTS,
    QWEN_VISION,
    SIGLIP,
    WINDOW,
    FamilyDirs,
    assert_logits_match_transformers,
    hf_greedy,
    little_machine_code_optimization,  # noqa: F401 (the logits rows' fixture)
)

from jllm import LLM
from jllm.loader import load_model
from jllm.parallel import make_mesh
from jllm.unread_tensors import UnreadTensorsError

GLM4V_ROPE = {"rope_type": "default", "mrope_section": [1, 1, 2], "partial_rotary_factor": 0.5, "rope_theta": 1e4}
# Qwen2.5-VL's vision tower in small (EXAONE 4.5's and HyperCLOVA X Vision's)
QWEN2_5_VISION = dict(QWEN_VISION, num_key_value_heads=2, patch_size=14, window_size=28, fullatt_block_indexes=[0])
# the MiniCPM-V models' SigLIP with its merger after the first layer
MINICPM_VISION = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=28,
    patch_size=14,
    insert_layer_id=1,
)
# a tiny audio tower for the omni thinkers (never read by jllm)
OMNI_AUDIO = dict(
    d_model=32,
    encoder_layers=1,
    encoder_attention_heads=2,
    encoder_ffn_dim=48,
    output_dim=64,
    num_mel_bins=16,
    downsample_hidden_size=8,
)
# name -> (architecture, config class, the text config's overrides on test_families.BASE, TP sizes)
FAMILIES: dict[str, tuple[str, str | None, dict[str, Any], list[int]]] = {
    # Kimi K2.5's Kimi K2 (DeepSeek-V3: low-rank queries, the sigmoid router with its choice bias), the head tied as
    # Kimi_K25Config ties it by default; saved with its layers as transformers names them (``blocks``)
    "kimi_k25": (
        "Kimi_K25ForConditionalGeneration",
        "Kimi_K25Config",
        dict(DEEPSEEK, model_type="deepseek_v3", q_lora_rank=24, norm_topk_prob=True, routed_scaling_factor=2.5),
        [],
    ),
    "llava_onevision": ("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionConfig", dict(model_type="qwen2"), []),
    "llava_next_video": (
        "LlavaNextVideoForConditionalGeneration",
        "LlavaNextVideoConfig",
        dict(model_type="llama"),
        [],
    ),
    # LFM2's short convs and attention, under model.language_model., untied here
    "lfm2_vl": (
        "Lfm2VlForConditionalGeneration",
        "Lfm2VlConfig",
        dict(LFM2_KEYS, model_type="lfm2", conv_bias=True),
        [],
    ),
    # Command A's Cohere2 (a sliding layer with the rotary, a global one without), tied as by default
    "cohere2_vision": (
        "Cohere2VisionForConditionalGeneration",
        "Cohere2VisionConfig",
        dict(model_type="cohere2", sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"]),
        [],
    ),
    "aria": (
        "AriaForConditionalGeneration",
        "AriaConfig",
        dict(model_type="aria_text", moe_num_experts=4, moe_topk=2, moe_num_shared_experts=2),
        [],
    ),
    "idefics2": (
        "Idefics2ForConditionalGeneration",
        "Idefics2Config",
        dict(model_type="mistral", sliding_window=None),
        [],
    ),
    # Persimmon: per-head fused query_key_value, q/k LayerNorms, half of each head rotated
    "fuyu": (
        "FuyuForCausalLM",
        "FuyuConfig",
        dict(model_type="persimmon", num_key_value_heads=None, head_dim=None),
        [],
    ),
    # GLM-4.6V: GLM-4.1V's GLM-4 (M-RoPE on the rotated half of each head, read as the plain rotary)
    "glm46v": (
        "Glm46VForConditionalGeneration",
        "Glm46VConfig",
        dict(
            model_type="glm4v_text",
            head_dim=None,
            rope_parameters=GLM4V_ROPE,
        ),
        [],
    ),
    "lighton_ocr": ("LightOnOcrForConditionalGeneration", "LightOnOcrConfig", dict(model_type="qwen3"), []),
    "ovis2_5": ("Ovis2_5ForConditionalGeneration", "Ovis2_5Config", dict(model_type="qwen3"), []),
    # GLM-OCR: GLM-4.1V's GLM-4 with q/k/v unbiased
    "glm_ocr": (
        "GlmOcrForConditionalGeneration",
        "GlmOcrConfig",
        dict(model_type="glm_ocr_text", head_dim=None, rope_parameters=GLM4V_ROPE),
        [],
    ),
    # PaddleOCR-VL: ERNIE 4.5 with biases, its M-RoPE on half-split pairs (ERNIE's own rotary is interleaved)
    "paddleocr_vl": (
        "PaddleOCRVLForConditionalGeneration",
        "PaddleOCRVLConfig",
        dict(
            model_type="paddleocr_vl_text",
            use_bias=True,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 5e5},
        ),
        [],
    ),
    # HunyuanOCR: HunYuan dense (q/k norms after the rotary) with the NTK alpha rotary and M-RoPE sections
    "hunyuan_vl": (
        "HunYuanVLForConditionalGeneration",
        "HunYuanVLConfig",
        dict(
            model_type="hunyuan_vl_text",
            rope_parameters={
                "rope_type": "dynamic",
                "alpha": 1000.0,
                "factor": 1.0,
                "rope_theta": 1e4,
                "mrope_section": [2, 3, 3],
            },
        ),
        [],
    ),
    # DeepSeek-OCR-2: Llama's multi-head attention over DeepSeek-V2's softmax mixture (group-limited: the top 2 of 4
    # groups), a dense first layer, shared experts
    "deepseek_ocr2": (
        "DeepseekOcr2ForConditionalGeneration",
        "DeepseekOcr2Config",
        dict(
            model_type="deepseek_ocr2_text",
            head_dim=None,
            num_key_value_heads=None,
            n_routed_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            n_shared_experts=2,
            routed_scaling_factor=1.5,
            topk_method="group_limited_greedy",
            n_group=4,
            topk_group=2,
            mlp_layer_types=["dense", "sparse"],
        ),
        [],
    ),
    "exaone4_5": (
        "Exaone4_5_ForConditionalGeneration",
        "Exaone4_5_Config",
        dict(model_type="exaone4", sliding_window=WINDOW, sliding_window_pattern=2),
        [],
    ),
    # HyperCLOVA X: Granite's multipliers, norms on the blocks' outputs; tied as by default
    "hyperclovax_vision_v2": (
        "HyperCLOVAXVisionV2ForConditionalGeneration",
        "HyperCLOVAXVisionV2Config",
        dict(
            model_type="hyperclovax",
            embedding_multiplier=12.0,
            residual_multiplier=0.22,
            logits_scaling=0.5,
            attention_bias=True,
        ),
        [],
    ),
    # LFM3: short convs, a sliding and a full attention layer with their own rotaries and output gates
    "lfm3_vl": (
        "Lfm3VlForConditionalGeneration",
        "Lfm3VlConfig",
        dict(
            model_type="lfm3",
            num_hidden_layers=4,
            layer_types=["conv", "sliding_attention", "conv", "full_attention"],
            sliding_window=WINDOW,
            conv_L_cache=3,
            conv_bias=True,
        ),
        [],
    ),
    # MiniCPM-V 4.6: Qwen3.5's gated DeltaNet and gated attention layers
    "minicpmv4_6": (
        "MiniCPMV4_6ForConditionalGeneration",
        "MiniCPMV4_6Config",
        dict(DELTANET_KEYS, model_type="qwen3_5_text"),
        [],
    ),
    "vipllava": ("VipLlavaForConditionalGeneration", "VipLlavaConfig", dict(model_type="llama"), []),
    "video_llava": ("VideoLlavaForConditionalGeneration", "VideoLlavaConfig", dict(model_type="llama"), []),
    "got_ocr2": ("GotOcr2ForConditionalGeneration", "GotOcr2Config", dict(model_type="qwen2"), []),
    "ovis2": ("Ovis2ForConditionalGeneration", "Ovis2Config", dict(model_type="qwen2"), []),
    "llava_onevision1_5": (
        "LlavaOnevision15ForConditionalGeneration",
        "LlavaOnevision15Config",
        dict(model_type="qwen3"),
        [],
    ),
    "video_llama3": ("VideoLlama3ForConditionalGeneration", "VideoLlama3Config", dict(model_type="qwen2"), []),
    # saved with its layers under encoder.layers, as transformers saves them
    "qianfan_ocr": ("QianfanOCRForConditionalGeneration", "QianfanOCRConfig", dict(model_type="qwen3"), []),
    "deepseek_vl": ("DeepseekVLForConditionalGeneration", "DeepseekVLConfig", dict(model_type="llama"), []),
    "minicpmv4_7": (
        "MiniCPMV4_7ForConditionalGeneration",
        "MiniCPMV4_7Config",
        dict(DELTANET_KEYS, model_type="qwen3_5_text"),
        [],
    ),
    # MiniCPM-OCR: tied as its config class ties by default (where the Qwen3.5 text config's default is untied)
    "minicpm_ocr": (
        "MiniCPMOcrForConditionalGeneration",
        "MiniCPMOcrConfig",
        dict(DELTANET_KEYS, model_type="qwen3_5_text"),
        [],
    ),
    "deepseek_vl_hybrid": (
        "DeepseekVLHybridForConditionalGeneration",
        "DeepseekVLHybridConfig",
        dict(model_type="llama"),
        [],
    ),
    # Granite Docling: Granite's multipliers (GraniteDoclingTextConfig's), tied as by default
    "granite_docling": (
        "GraniteDoclingForConditionalGeneration",
        "GraniteDoclingConfig",
        dict(model_type="granite_docling_text"),
        [],
    ),
    "janus": ("JanusForConditionalGeneration", "JanusConfig", dict(model_type="llama"), []),
    "moss_transcribe_diarize": (
        "MossTranscribeDiarizeForConditionalGeneration",
        "MossTranscribeDiarizeConfig",
        dict(model_type="qwen3"),
        [],
    ),
    # Qwen3-Omni's thinker: Qwen3-MoE (q/k norms, top 2 of 4 experts, renormalised) with M-RoPE sections
    "qwen3_omni_thinker": (
        "Qwen3OmniMoeThinkerForConditionalGeneration",
        "Qwen3OmniMoeThinkerConfig",
        dict(
            model_type="qwen3_omni_moe_text",
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6},
        ),
        [],
    ),
    # Qwen2.5-Omni's thinker: Qwen2 (q/k/v biases) with M-RoPE sections
    "qwen2_5_omni_thinker": (
        "Qwen2_5OmniThinkerForConditionalGeneration",
        "Qwen2_5OmniThinkerConfig",
        dict(
            model_type="qwen2_5_omni_text",
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6},
        ),
        [],
    ),
}
SIGLIP_MODEL = dict(SIGLIP, model_type="siglip_vision_model")
# each row's outer config: a tiny vision tower (never read by jllm) and the head's tie
IMAGE_TEXT: dict[str, dict[str, Any]] = {
    "kimi_k25": dict(
        vision_config=dict(
            num_hidden_layers=1,
            hidden_size=32,
            intermediate_size=48,
            num_attention_heads=2,
            mm_hidden_size=32,
            text_hidden_size=64,
            merge_kernel_size=[2, 2],
        )
    ),
    "llava_onevision": dict(vision_config=SIGLIP_MODEL),
    "llava_next_video": dict(vision_config=CLIP),
    "lfm2_vl": dict(
        vision_config=dict(SIGLIP, model_type="siglip2_vision_model"),
        projector_hidden_size=32,
        tie_word_embeddings=False,
    ),
    "cohere2_vision": dict(vision_config=SIGLIP_MODEL, alignment_intermediate_size=32, downsample_factor=2),
    "aria": dict(vision_config=dict(SIGLIP, model_type="idefics3_vision"), projector_patch_to_query_dict={4: 4}),
    "idefics2": dict(
        vision_config=SIGLIP,
        perceiver_config=dict(
            hidden_size=64,
            resampler_n_latents=4,
            resampler_depth=1,
            resampler_n_heads=2,
            resampler_head_dim=16,
            num_key_value_heads=2,
        ),
    ),
    "fuyu": dict(patch_size=4, num_channels=3),
    "glm46v": dict(vision_config=dict(QWEN_VISION, patch_size=14, image_size=28)),
    "lighton_ocr": dict(vision_config=dict(SIGLIP, model_type="pixtral", head_dim=16)),
    "ovis2_5": dict(vision_config=dict(SIGLIP, window_size=28, vocab_size=64, max_position_embeddings=16)),
    "glm_ocr": dict(vision_config=dict(QWEN_VISION, patch_size=14, image_size=28)),
    "paddleocr_vl": dict(vision_config=SIGLIP),
    "hunyuan_vl": dict(
        vision_config=dict(
            hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, out_hidden_size=64
        )
    ),
    "deepseek_ocr2": dict(
        vision_config=dict(
            sam_config=dict(
                hidden_size=32,
                output_channels=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=64,
                patch_size=16,
                window_size=2,
                global_attn_indexes=[0],
                downsample_channels=[16, 32],
            ),
            encoder_config=dict(
                hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2
            ),
        )
    ),
    "exaone4_5": dict(vision_config=QWEN2_5_VISION),
    "hyperclovax_vision_v2": dict(vision_config=QWEN2_5_VISION),
    "lfm3_vl": dict(
        vision_config=dict(
            hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2
        ),
        projector_hidden_size=32,
        tie_word_embeddings=False,
    ),
    "minicpmv4_6": dict(vision_config=MINICPM_VISION, insert_layer_id=1, image_size=28),
    "vipllava": dict(vision_config=dict(CLIP, num_hidden_layers=2), vision_feature_layers=[-1, -2]),
    "video_llava": dict(vision_config=CLIP),
    "got_ocr2": dict(
        vision_config=dict(
            hidden_size=32,
            output_channels=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=64,
            patch_size=16,
            window_size=2,
            global_attn_indexes=[0],
        )
    ),
    "ovis2": dict(vision_config=dict(SIGLIP, vocab_size=64)),
    "llava_onevision1_5": dict(
        vision_config=dict(
            depth=1, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64, patch_size=14
        )
    ),
    "video_llama3": dict(
        vision_config=dict(
            hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, patch_size=14
        )
    ),
    "qianfan_ocr": dict(vision_config=dict(SIGLIP, image_size=[28, 28], patch_size=[14, 14])),
    "deepseek_vl": dict(vision_config=SIGLIP_MODEL),
    "minicpmv4_7": dict(vision_config=MINICPM_VISION, insert_layer_id=1, image_size=28),
    "minicpm_ocr": dict(vision_config=MINICPM_VISION, insert_layer_id=1),
    "deepseek_vl_hybrid": dict(
        vision_config=SIGLIP_MODEL,
        high_res_vision_config=dict(
            hidden_size=32,
            output_channels=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=64,
            patch_size=16,
            window_size=2,
            global_attn_indexes=[0],
            mlp_dim=48,
        ),
    ),
    "granite_docling": dict(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=64,
            patch_size=16,
            out_hidden_size=64,
            scale_factor=2,
            deepstack_visual_indexes=[0],
        )
    ),
    # an untied head (JanusConfig ties by default)
    "janus": dict(
        vision_config=dict(SIGLIP, projection_dim=64),
        vq_config=dict(
            embed_dim=8,
            num_embeddings=16,
            base_channels=32,
            channel_multiplier=[1, 1],
            num_res_blocks=1,
            latent_channels=32,
            projection_dim=64,
            image_token_embed_dim=64,
            num_patches=4,
        ),
        tie_word_embeddings=False,
    ),
    # an untied head (its config class ties by default)
    "moss_transcribe_diarize": dict(
        audio_config=dict(
            num_mel_bins=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=48,
            hidden_size=32,
            max_source_positions=16,
        ),
        tie_word_embeddings=False,
    ),
    "qwen3_omni_thinker": dict(
        vision_config=dict(QWEN_VISION, patch_size=16, deepstack_visual_indexes=[0], num_position_embeddings=16),
        audio_config=OMNI_AUDIO,
    ),
    "qwen2_5_omni_thinker": dict(vision_config=dict(QWEN_VISION, patch_size=14), audio_config=OMNI_AUDIO),
}
# gated-DeltaNet hybrids: test_families' bound for them (its chunked float32 recurrence against transformers')
HYBRIDS = {"minicpmv4_6", "minicpmv4_7", "minicpm_ocr"}
# Rows whose language model runs only what a row of test_families runs (Qwen2, Llama, LFM2, Cohere2, Mistral,
# Persimmon, GLM-4.1V's, Qwen3, Qwen3-MoE, HunYuan dense's, EXAONE 4's, HyperCLOVA X's, LFM3's, Qwen3.5's,
# Granite's; greedy there or, for its logits-only rows, by the same decoder's greedy rows): their logits row checks
# the reading
LOGITS_ONLY = {
    "llava_onevision",
    "llava_next_video",
    "lfm2_vl",
    "cohere2_vision",
    "idefics2",
    "fuyu",
    "glm46v",
    "lighton_ocr",
    "ovis2_5",
    "glm_ocr",
    "qwen2_5_omni_thinker",
    "hunyuan_vl",
    "exaone4_5",
    "hyperclovax_vision_v2",
    "lfm3_vl",
    "minicpmv4_6",
    "minicpmv4_7",
    "minicpm_ocr",
    "deepseek_vl_hybrid",
    "granite_docling",
    "janus",
    "moss_transcribe_diarize",
    "vipllava",
    "video_llava",
    "got_ocr2",
    "ovis2",
    "llava_onevision1_5",
    "video_llama3",
    "qianfan_ocr",
    "deepseek_vl",
    "qwen3_omni_thinker",  # and transformers' generate stops on text alone (5.25: no vision_start_token_id)
}


@pytest.fixture(scope="module")
def family_dirs(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FamilyDirs:
    return FamilyDirs(tmp_path_factory.mktemp("families_image_text"), default_model_dir, FAMILIES, IMAGE_TEXT)


@pytest.mark.slow
@pytest.mark.usefixtures("little_machine_code_optimization")
@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_match_transformers(family_dirs, name):
    assert_logits_match_transformers(family_dirs[name], HYBRID_LOGITS_RTOL if name in HYBRIDS else LOGITS_RTOL)


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in FAMILIES if name not in LOGITS_ONLY])
def test_greedy_batch_equals_transformers_generate(family_dirs, name):
    llm = LLM(str(family_dirs[name]), **ENGINE_ARGS)
    got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY_BATCH, use_tqdm=False)]
    assert_greedy_equal(family_dirs[name], PROMPTS, got, hf_greedy(family_dirs[name], PROMPTS, BATCH_NEW_TOKENS))
    assert len({t for tokens in got for t in tokens}) > 3, "degenerate greedy output proves little"


@pytest.mark.parametrize(
    "arch, change, message",
    [
        ("PaliGemmaForConditionalGeneration", {}, "'PaliGemmaForConditionalGeneration' is not supported: .* both ways"),
        ("Blip2ForConditionalGeneration", {}, "'Blip2ForConditionalGeneration' is not supported: BLIP-2 .* image"),
        ("InstructBlipForConditionalGeneration", {}, "'InstructBlipForConditionalGeneration' is not supported: BLIP"),
        ("InstructBlipVideoForConditionalGeneration", {}, "'InstructBlipVideoForConditionalGeneration' is not sup"),
        (
            "DeepseekOcr2ForConditionalGeneration",
            {"text_config": TINY_CONFIG},
            "DeepSeek-OCR-2 text_config mlp_layer_types=None is not supported",
        ),
        (
            "Kimi_K25ForConditionalGeneration",
            {"text_config": {**TINY_CONFIG, "model_type": "qwen2"}},
            r"Kimi K2.5 text_config model_type 'qwen2' is not supported \(supported: 'deepseek_v3', 'kimi_k2'\)",
        ),
    ],
)
def test_image_text_architecture_or_option_jllm_cannot_serve_is_refused_at_load_naming_it(
    tmp_path, arch, change, message
):
    (tmp_path / "config.json").write_text(json.dumps({**TINY_CONFIG, "architectures": [arch], **change}))
    with pytest.raises(ValueError, match=message):
        load_model(tmp_path, mesh=make_mesh(1), load_format="dummy")


@pytest.mark.slow
@pytest.mark.parametrize(
    "thinker, arch",
    [
        ("qwen3_omni_thinker", "Qwen3OmniMoeForConditionalGeneration"),
        ("qwen2_5_omni_thinker", "Qwen2_5OmniForConditionalGeneration"),
        ("qwen2_5_omni_thinker", "Qwen2_5OmniModel"),
    ],
)
def test_omni_checkpoint_reads_its_thinker_under_thinker(family_dirs, tmp_path, thinker, arch):
    """The hub's Qwen3-Omni and Qwen2.5-Omni checkpoints hold the thinker (config ``thinker_config``, tensors under
    ``thinker.``) beside the talker and the waveform decoder: the thinker's checkpoint so laid out, with a talker
    tensor beside it, reads to the same parameters (the thinker's logits row checks those against transformers); the
    talker's tensors are skipped as another modality's, a stray tensor in the thinker's text model is not."""
    from safetensors.numpy import load_file, save_file

    saved = family_dirs[thinker]
    config = json.loads((saved / "config.json").read_text())
    omni = {"architectures": [arch], "thinker_config": config, "enable_audio_output": True}
    (tmp_path / "config.json").write_text(json.dumps(omni))
    tensors = {
        f"thinker.{name}": value for file in saved.glob("*.safetensors") for name, value in load_file(file).items()
    }
    save_file({**tensors, "talker.model.norm.weight": np.ones(8, np.float32)}, str(tmp_path / "model.safetensors"))
    thinker_state, omni_state = (
        nnx.state(load_model(d, mesh=make_mesh(1), dtype="float32").model) for d in (saved, tmp_path)
    )
    for (path, want), (_, got) in zip(
        jax.tree.leaves_with_path(thinker_state), jax.tree.leaves_with_path(omni_state), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=jax.tree_util.keystr(path))
    stray = "thinker.model.layers.0.self_attn.o_proj.bias"  # inside the text model: still an error
    save_file({**tensors, stray: np.ones(64, np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(UnreadTensorsError, match=re.escape(stray)):
        load_model(tmp_path, mesh=make_mesh(1), dtype="float32")


def test_glm_ocr_skips_the_layer_past_num_hidden_layers_as_transformers_ignores_it():
    """GLM-OCR's checkpoint keeps a next-token prediction layer past ``num_hidden_layers``, which transformers ignores
    on load (``_keys_to_ignore_on_load_unexpected``): skipped, with no next-n key in the config; a stray tensor in a
    served layer is still an error."""
    from jllm.models.registry import build_args
    from jllm.unread_tensors import unexpected

    cfg = {"architectures": ["GlmOcrForConditionalGeneration"], "text_config": {**TINY_CONFIG, "head_dim": 16}}
    args = build_args(cfg, np.float32)[1]
    stored = [
        "model.language_model.layers.2.self_attn.q_proj.weight",  # the layer past the decoder's two
        "model.language_model.layers.1.self_attn.q_proj.bias",  # GLM-OCR's q/k/v are unbiased
        "model.visual.blocks.0.attn.qkv.weight",
    ]
    assert unexpected({name: name for name in stored}, args.weights.skipped, cfg, args.num_layers) == [stored[1]]


@pytest.mark.parametrize("outer, text, tied", [(True, False, True), (False, True, False), (None, False, False)])
def test_kimi_k25_head_is_tied_by_the_outer_config_else_as_the_hubs_config_reads(outer, text, tied):
    """transformers' saves hold Kimi_K25Config's outer tie (True by default); the hub's config, from Moonshot's code,
    is read as vLLM reads it, by the text config's."""
    from jllm.models.registry import build_args

    config = {
        "architectures": ["KimiK25ForConditionalGeneration"],
        "text_config": {**TINY_CONFIG, **DEEPSEEK, "model_type": "kimi_k2", "tie_word_embeddings": text},
        **({} if outer is None else {"tie_word_embeddings": outer}),
    }
    assert build_args(config, np.float32)[1].tie_word_embeddings == tied


@pytest.mark.parametrize(
    "arch, why",
    [
        ("BertLMHeadModel", "a BERT-family encoder run causally"),
        ("RobertaForCausalLM", "masked-language-model encoders"),
        ("XLMRobertaForCausalLM", "a BERT-family encoder"),
        ("BartForCausalLM", "the decoder half of an encoder-decoder model"),
        ("WhisperForCausalLM", "cross-attend to an encoder's output"),
        ("MarianForCausalLM", "the decoder half"),
        ("Florence2ForConditionalGeneration", "an encoder-decoder model"),
        ("VisionEncoderDecoderModel", "an encoder-decoder model"),
        ("BlipForConditionalGeneration", "BLIP's text decoder cross-attends"),
        ("DiffusionGemmaForBlockDiffusion", "block diffusion"),
        ("PI0ForConditionalGeneration", "vision-language-action"),
        ("MusicgenForCausalLM", "audio codes"),
        ("ReformerModelWithLMHead", "locality-sensitive hashing"),
        ("XLNetLMHeadModel", "permutation language model"),
        ("XLMWithLMHeadModel", "masked language model"),
        ("CpmAntForCausalLM", "relative position bias"),
    ],
)
def test_architecture_that_is_not_a_decoder_only_text_model_is_refused_naming_why(tmp_path, arch, why):
    (tmp_path / "config.json").write_text(json.dumps({**TINY_CONFIG, "architectures": [arch]}))
    with pytest.raises(ValueError, match=f"architecture '{arch}' is not supported: .*{why}"):
        load_model(tmp_path, mesh=make_mesh(1), load_format="dummy")

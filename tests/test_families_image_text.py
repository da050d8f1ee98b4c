"""More image-text checkpoints' text models against transformers (``jllm.models.families.image_text``, and the
LLaVA and GLM-4.1V readers' other architectures), and the image-text architectures refused by name.

Each served checkpoint: a 70-token prompt's float32 logits within ``LOGITS_RTOL`` of transformers' image-text model
on text, and, where its language model's decoder runs nothing another greedy row runs, greedy ``LLM.generate``
equal to transformers' ``generate``. Rows live here, not in ``tests/test_families.py``'s ``FAMILIES`` (whose rows are
seeded by their position).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from model_utils import TINY_CONFIG, assert_greedy_equal
from test_families import (
    BATCH_NEW_TOKENS,
    CLIP,
    DEEPSEEK,
    ENGINE_ARGS,
    GREEDY_BATCH,
    LFM2_KEYS,
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
            rope_parameters={
                "rope_type": "default",
                "mrope_section": [1, 1, 2],
                "partial_rotary_factor": 0.5,
                "rope_theta": 10000.0,
            },
        ),
        [],
    ),
    "lighton_ocr": ("LightOnOcrForConditionalGeneration", "LightOnOcrConfig", dict(model_type="qwen3"), []),
    "ovis2_5": ("Ovis2_5ForConditionalGeneration", "Ovis2_5Config", dict(model_type="qwen3"), []),
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
}
# Rows whose language model runs only what a greedy row of test_families runs (Qwen2, Llama, LFM2, Cohere2, Mistral,
# Persimmon, GLM-4.1V's, Qwen3): their logits row checks the reading
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
}


@pytest.fixture(scope="module")
def family_dirs(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FamilyDirs:
    return FamilyDirs(tmp_path_factory.mktemp("families_image_text"), default_model_dir, FAMILIES, IMAGE_TEXT)


@pytest.mark.slow
@pytest.mark.usefixtures("little_machine_code_optimization")
@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_match_transformers(family_dirs, name):
    assert_logits_match_transformers(family_dirs[name])


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

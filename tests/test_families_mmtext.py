"""The text models of the newer multimodal checkpoints against transformers, and the ones refused by name.

Each served family: full-sequence float32 logits within ``LOGITS_RTOL`` of transformers' PyTorch forward (an
image-text checkpoint against transformers' image-text model on text) and, where its decoder runs something no other
greedy row does, greedy ``LLM.generate`` equal to transformers' ``generate``. Rows live here, not in
``tests/test_families.py``'s ``FAMILIES`` (whose rows are seeded by their position).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from flax import nnx
from model_utils import TINY_CONFIG, assert_greedy_equal, hf_model
from test_families import (
    BASE,
    BATCH_NEW_TOKENS,
    ENGINE_ARGS,
    GEMMA4,
    GREEDY_BATCH,
    PROMPTS,
    WINDOW,
    FamilyDirs,
    assert_logits_match_transformers,
    hf_experts_used,
    hf_greedy,
    little_machine_code_optimization,  # noqa: F401 (the logits and greedy rows' fixture)
)

from jllm import LLM
from jllm.loader import load_model
from jllm.parallel import make_mesh

MINIMAX_M3 = dict(
    layer_types=["full_attention", "minimax_m3_sparse"],
    mlp_layer_types=["dense", "sparse"],
    num_local_experts=4,
    num_experts_per_tok=2,
    intermediate_size=32,
    dense_intermediate_size=96,
    shared_intermediate_size=48,
    swiglu_limit=2.0,
    rope_parameters={"rope_type": "default", "rope_theta": 5e6, "partial_rotary_factor": 0.5},
    index_n_heads=2,
    index_head_dim=16,
    index_block_size=16,
    index_topk_blocks=8,
    tie_word_embeddings=False,
)
# name -> (architecture, config class (None: the architecture's), overrides on test_families.BASE, TP sizes)
FAMILIES: dict[str, tuple[str, str | None, dict[str, Any], list[int]]] = {
    # Gemma 4 unified's text model: gemma-4-31B's full layers (their own head width, keys reused as values) and
    # e2b's last layers reading the first two's K/V with double-wide MLPs; no per-layer inputs, no mixture
    "gemma4_unified": (
        "Gemma4UnifiedForCausalLM",
        "Gemma4UnifiedTextConfig",
        dict(
            {k: v for k, v in GEMMA4.items() if k != "hidden_size_per_layer_input"},
            num_hidden_layers=4,
            layer_types=["sliding_attention", "full_attention"] * 2,
            global_head_dim=32,
            num_global_key_value_heads=1,
            attention_k_eq_v=True,
            num_kv_shared_layers=2,
            use_double_wide_mlp=True,
        ),
        [],
    ),
    "gemma4_unified_image_text": (
        "Gemma4UnifiedForConditionalGeneration",
        "Gemma4UnifiedConfig",
        dict({k: v for k, v in GEMMA4.items() if k != "hidden_size_per_layer_input"}, global_head_dim=32),
        [],
    ),
    # Cohere2's layers with the half-split rotary, the sliding layer's own theta and the full one's none (null
    # rope_parameters entry); no logit_scale (1.0)
    "cohere_compass": (
        "CohereCompassForCausalLM",
        "CohereCompassTextConfig",
        dict(
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 5000.0},
                "full_attention": None,
            },
            tie_word_embeddings=False,
        ),
        [],
    ),
    # North's vision checkpoints' language model: both layer types roped, M-RoPE sections, a logit_scale
    "cohere_compass_image_text": (
        "CohereCompassForConditionalGeneration",
        "CohereCompassConfig",
        dict(
            model_type="cohere_compass_text",
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={
                kind: {"rope_type": "default", "rope_theta": theta, "mrope_section": [2, 3, 3]}
                for kind, theta in (("sliding_attention", 5000.0), ("full_attention", 1e6))
            },
            logit_scale=0.25,
        ),
        [],
    ),
    # a dense layer, then a sparse-attention mixture layer (served within its blocks' budget: 8 x 16 tokens), half of
    # each head rotated, Gemma's norms, every SwiGLU clamped (a small limit, so the clamps bite)
    "minimax_m3": ("MiniMaxM3VLForCausalLM", "MiniMaxM3VLTextConfig", MINIMAX_M3, []),
    "minimax_m3_image_text": (
        "MiniMaxM3SparseForConditionalGeneration",
        "MiniMaxM3VLConfig",
        dict(MINIMAX_M3, model_type="minimax_m3_vl_text"),
        [],
    ),
    # Llama 3.2 Vision's text model: five layers, the fourth a cross-attention layer (MllamaTextConfig's default
    # list), which transformers skips on text; heads hidden_size / heads wide
    "mllama": ("MllamaForCausalLM", "MllamaTextConfig", dict(num_hidden_layers=5, head_dim=None), []),
    # Phi-4-multimodal on text: Phi-3's fused layers, three quarters of each head rotated; tiny image and audio
    # encoders beside them, never read
    "phi4_multimodal": (
        "Phi4MultimodalForCausalLM",
        None,
        dict(
            rope_parameters=dict(rope_type="default", rope_theta=1e4, partial_rotary_factor=0.75),
            vision_config=dict(
                hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=28
            ),
            audio_config=dict(
                hidden_size=32,
                intermediate_size=48,
                num_blocks=1,
                num_attention_heads=2,
                ext_pw_out_channel=32,
                depthwise_separable_out_channel=32,
                nemo_conv_channels=32,
            ),
        ),
        [],
    ),
    "mllama_image_text": (
        "MllamaForConditionalGeneration",
        "MllamaConfig",
        dict(num_hidden_layers=5, head_dim=None, model_type="mllama_text_model"),
        [],
    ),
}
# image-text checkpoints (loaded text-only): name -> the outer config, a tiny vision embedder's included
IMAGE_TEXT: dict[str, dict[str, Any]] = {
    "gemma4_unified_image_text": dict(
        vision_config=dict(patch_size=2, pooling_kernel_size=2, mm_embed_dim=32, mm_posemb_size=8, output_proj_dims=32),
        tie_word_embeddings=False,
    ),
    "cohere_compass_image_text": dict(
        vision_config=dict(
            depth=1,
            hidden_size=32,
            intermediate_size=48,
            num_heads=2,
            out_hidden_size=64,
            patch_size=16,
            deepstack_visual_indexes=[0],
            num_position_embeddings=16,
        ),
        tie_word_embeddings=False,
    ),
    "minimax_m3_image_text": dict(
        vision_config=dict(
            hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=56
        ),
        projector_hidden_size=32,
        tie_word_embeddings=False,
    ),
    "mllama_image_text": dict(
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_global_layers=1,
            attention_heads=2,
            intermediate_size=48,
            vision_output_dim=64,
            image_size=28,
            max_num_tiles=2,
            intermediate_layers_indices=[0],
            supported_aspect_ratios=[[1, 1], [1, 2]],
        ),
    ),
}
MIXTURES = {"minimax_m3"}
# Rows whose decoder runs only what another greedy row runs (test_families' or this file's): their logits row checks
# the reading. Mllama's and Phi-4-multimodal's engines run Llama's and Phi-3's layers: their greedy batches (the
# 40-token prompt prefilled in chunks) equal transformers' generate, and again from the prefix cache, by hand
# (2026-12-07)
LOGITS_ONLY = {
    "gemma4_unified_image_text",
    "cohere_compass_image_text",
    "minimax_m3_image_text",
    "mllama",
    "mllama_image_text",
    "phi4_multimodal",
}


@pytest.fixture(scope="module")
def family_dirs(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FamilyDirs:
    return FamilyDirs(tmp_path_factory.mktemp("families_mmtext"), default_model_dir, FAMILIES, IMAGE_TEXT)


@pytest.mark.slow
@pytest.mark.usefixtures("little_machine_code_optimization")
@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_match_transformers(family_dirs, name):
    assert_logits_match_transformers(family_dirs[name])


@pytest.mark.slow
@pytest.mark.usefixtures("little_machine_code_optimization")
@pytest.mark.parametrize("name", [name for name in FAMILIES if name not in LOGITS_ONLY])
def test_greedy_batch_equals_transformers_generate(family_dirs, name):
    llm = LLM(str(family_dirs[name]), **ENGINE_ARGS)
    got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY_BATCH, use_tqdm=False)]
    assert_greedy_equal(family_dirs[name], PROMPTS, got, hf_greedy(family_dirs[name], PROMPTS, BATCH_NEW_TOKENS))
    assert len({t for tokens in got for t in tokens}) > 3, "degenerate greedy output proves little"
    if name in MIXTURES:  # the batch's tokens go to different experts in every layer
        assert all(len(used) >= 3 for used in hf_experts_used(family_dirs[name], PROMPTS))


@pytest.mark.parametrize(
    "arch, change, message",
    [
        ("Gemma4UnifiedAssistantForCausalLM", {}, "'Gemma4UnifiedAssistantForCausalLM' is not supported: .* drafter"),
        ("Gemma4AssistantForCausalLM", {}, "'Gemma4AssistantForCausalLM' is not supported: .* drafter for speculative"),
        ("Dots3NoteForCausalLM", {}, "'Dots3NoteForCausalLM' is not supported: dots3-note's .*per_layer_config"),
        ("Dots3NoteForConditionalGeneration", {}, "'Dots3NoteForConditionalGeneration' is not supported: dots3-note"),
        ("InklingForCausalLM", {}, "'InklingForCausalLM' is not supported: Inkling's attention has no rotary"),
        ("InklingForConditionalGeneration", {}, "'InklingForConditionalGeneration' is not supported: Inkling's"),
        ("Inkling2ForCausalLM", {}, "'Inkling2ForCausalLM' is not supported: Inkling 2 keeps .* block attention"),
        ("Inkling2ForConditionalGeneration", {}, "'Inkling2ForConditionalGeneration' is not supported: Inkling 2 "),
        ("Inkling2LoopForCausalLM", {}, "'Inkling2LoopForCausalLM' is not supported: .* loop_num_passes times"),
        ("MllamaForCausalLM", {"tie_word_embeddings": True}, "Mllama .* tie_word_embeddings=True is not supported"),
        (
            "MllamaForCausalLM",
            {"cross_attention_layers": [0, 1]},
            r"Mllama cross_attention_layers=\[0, 1\] of num_hidden_layers=2 .* not supported",
        ),
        (
            "CohereCompassForCausalLM",
            {"layer_types": ["sliding_attention", "full_attention"], "rope_parameters": {"rope_theta": 1e4}},
            r"Cohere Compass rope_parameters=.* name no rotary for layer type\(s\) \['full_attention', 'sliding",
        ),
        (
            "MiniMaxM3VLForCausalLM",
            {"layer_types": ["full_attention", "sliding_attention"]},
            r"MiniMax-M3 layer_types \['sliding_attention'\] are not supported",
        ),
        (
            "Inkling2LoopForConditionalGeneration",
            {},
            "'Inkling2LoopForConditionalGeneration' is not supported: Inkling",
        ),
    ],
)
def test_architecture_or_option_jllm_cannot_serve_is_refused_at_load_naming_it(tmp_path, arch, change, message):
    (tmp_path / "config.json").write_text(json.dumps({**TINY_CONFIG, "architectures": [arch], **change}))
    with pytest.raises(ValueError, match=message):
        load_model(tmp_path, mesh=make_mesh(1), load_format="dummy")


def test_minimax_m3_context_is_its_sparse_layers_block_budget_and_longer_is_refused_naming_it():
    """jllm has no block-sparse attention: a MiniMax-M3 with sparse layers is served with at most
    ``index_topk_blocks * index_block_size`` tokens of context (there each query keeps every key block, so its sparse
    attention is causal attention), and ``build``'s error for a longer ``max_model_len`` names the keys; without
    sparse layers, its positions."""
    from jllm.models.registry import build_args

    config = {**BASE, **MINIMAX_M3, "architectures": ["MiniMaxM3VLForCausalLM"]}
    args = build_args(config, np.float32)[1]
    assert args.max_context == 8 * 16
    assert args.context_limit.startswith("the model's index_topk_blocks * index_block_size=128: jllm has no MiniMax")
    dense = build_args({**config, "layer_types": ["full_attention"] * 2}, np.float32)[1]
    assert dense.max_context == BASE["max_position_embeddings"]


@pytest.mark.slow
def test_minimax_m3_image_text_saved_with_in_memory_names_loads_the_same(family_dirs, tmp_path):
    """transformers saves MiniMax-M3's image-text model in the hub's names (its mixture under ``block_sparse_moe``,
    experts per expert, gate and up apart); its in-memory names (``model.language_model.*``, stacked experts, fused
    gate/up), which other tools save, read to the same parameters."""
    from safetensors.torch import save_file

    saved = family_dirs["minimax_m3_image_text"]
    in_memory = tmp_path / "in_memory"
    in_memory.mkdir()
    shutil.copy(saved / "config.json", in_memory / "config.json")
    state = {k: v.contiguous() for k, v in hf_model(saved).state_dict().items()}
    assert "model.language_model.layers.1.mlp.experts.gate_up_proj" in state
    save_file(state, str(in_memory / "model.safetensors"))
    hub, renamed = (nnx.state(load_model(d, mesh=make_mesh(1), dtype="float32").model) for d in (saved, in_memory))
    for (path, want), (_, got) in zip(jax.tree.leaves_with_path(hub), jax.tree.leaves_with_path(renamed), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize(
    "arch, text, outer, tied",
    [  # transformers ties by the outer config's tie_word_embeddings (its default where unset) (5.25, by hand)
        ("Gemma4UnifiedForConditionalGeneration", {"model_type": "gemma4_unified_text"}, None, True),
        ("Gemma4UnifiedForConditionalGeneration", {"model_type": "gemma4_unified_text"}, False, False),
        ("CohereCompassForConditionalGeneration", {"rope_parameters": {"full_attention": None}}, None, False),
        ("CohereCompassForConditionalGeneration", {"rope_parameters": {"full_attention": None}}, True, True),
        # MiniMaxM3VLConfig takes the text config's tie where its own is off
        ("MiniMaxM3SparseForConditionalGeneration", {"model_type": "minimax_m3_vl_text"}, None, False),
        ("MiniMaxM3SparseForConditionalGeneration", {"model_type": "minimax_m3_vl_text"}, True, True),
    ],
)
@pytest.mark.parametrize("text_tie", [False, True])
def test_image_text_head_is_tied_as_transformers_ties_it(arch, text, outer, tied, text_tie):
    from jllm.models.registry import build_args

    text = {**TINY_CONFIG, **text, "tie_word_embeddings": text_tie}
    config = {"architectures": [arch], "text_config": text, **({} if outer is None else {"tie_word_embeddings": outer})}
    expected = tied or (text_tie and arch.startswith("MiniMaxM3"))
    assert build_args(config, np.float32)[1].tie_word_embeddings == expected

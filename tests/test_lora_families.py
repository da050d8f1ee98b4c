"""Multi-LoRA beyond Llama: each supported family's logits with a random PEFT adapter against PEFT's forward, its
fused checkpoint modules (Phi-3's ``qkv_proj`` / ``gate_up_proj``, GLM's ``gate_up_proj``) split into jllm's fused
slots, and what a family cannot take (a mixture of experts' experts) refused by name."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lora_utils import ALL_TARGETS, ENGINE_KEYS, LLAMA_CONFIG, lora_logits, lora_manager, peft_logits, save_adapter
from model_utils import relative_error, run_tp_worker, save_char_tokenizer, save_tiny_checkpoint
from safetensors.numpy import save_file
from test_families import little_machine_code_optimization  # noqa: F401 (the PEFT rows' fixture)

from jllm import LLM, LoRARequest, SamplingParams
from jllm.loader import load_model
from jllm.lora.peft_files import (
    SUPPORTED_ARCHITECTURES,
    AdapterError,
    check_architecture,
    read_adapter,
    zero_slot_shapes,
)
from jllm.models.registry import build_args
from jllm.parallel import make_mesh

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
FUSED = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]  # Phi-3's linears
WINDOW = 8  # shorter than the prompts: sliding layers slide
LAYER_TYPES = ["sliding_attention", "full_attention"]
GRANITE = dict(embedding_multiplier=12.0, attention_multiplier=0.1, residual_multiplier=0.22, logits_scaling=8.0)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
# name -> (architecture, config class or None for the architecture's, config overrides, PEFT targets)
FAMILIES: dict[str, tuple[str, str | None, dict[str, Any], list[str]]] = {
    "qwen2": ("Qwen2ForCausalLM", None, {}, ALL_TARGETS),  # q/k/v biases
    "gemma": ("GemmaForCausalLM", None, {}, ALL_TARGETS),
    "gemma2": (
        "Gemma2ForCausalLM",
        None,
        dict(
            sliding_window=WINDOW, query_pre_attn_scalar=24, attn_logit_softcapping=50.0, final_logit_softcapping=30.0
        ),
        ALL_TARGETS,
    ),
    "gemma3": (
        "Gemma3ForCausalLM",
        "Gemma3TextConfig",
        dict(sliding_window=WINDOW, query_pre_attn_scalar=24, layer_types=["sliding_attention", "full_attention"]),
        ALL_TARGETS,
    ),
    "granite": ("GraniteForCausalLM", None, dict(**GRANITE, attention_bias=True, mlp_bias=True), ALL_TARGETS),
    "qwen2_moe": ("Qwen2MoeForCausalLM", None, dict(**MOE, shared_expert_intermediate_size=48), ATTENTION),
    "qwen3_moe": ("Qwen3MoeForCausalLM", None, dict(**MOE, norm_topk_prob=True), ATTENTION),
    "mixtral": ("MixtralForCausalLM", None, dict(num_local_experts=4, sliding_window=WINDOW), ATTENTION),
    "phi3": ("Phi3ForCausalLM", None, dict(sliding_window=WINDOW), FUSED),
    "smollm3": ("SmolLM3ForCausalLM", None, {}, ALL_TARGETS),  # its last layer without rotary
    "olmo2": ("Olmo2ForCausalLM", None, {}, ALL_TARGETS),  # norms on the blocks' outputs only
    "cohere": ("CohereForCausalLM", None, dict(use_qk_norm=True), ALL_TARGETS),  # parallel residual
    # StableLM 2 12B's layout: attention and MLP side by side off one norm, per-head q/k norms, q/k/v biases
    "stablelm": (
        "StableLmForCausalLM",
        None,
        dict(use_qkv_bias=True, qk_layernorm=True, use_parallel_residual=True),
        ALL_TARGETS,
    ),
    "glm": ("GlmForCausalLM", None, {}, [*ATTENTION, "gate_up_proj", "down_proj"]),
    "glm4": ("Glm4ForCausalLM", None, {}, [*ATTENTION, "gate_up_proj", "down_proj"]),
    # Command R7B's layout: a sliding layer with the rotary, a global one without
    "cohere2": ("Cohere2ForCausalLM", None, dict(sliding_window=WINDOW, layer_types=LAYER_TYPES), ALL_TARGETS),
    "olmo3": ("Olmo3ForCausalLM", None, dict(sliding_window=WINDOW, layer_types=LAYER_TYPES), ALL_TARGETS),
    "exaone4": ("Exaone4ForCausalLM", None, dict(sliding_window=WINDOW, sliding_window_pattern=2), ALL_TARGETS),
    "ernie4_5": ("Ernie4_5ForCausalLM", None, dict(use_bias=True), ALL_TARGETS),
    "seed_oss": ("SeedOssForCausalLM", None, dict(attention_out_bias=True), ALL_TARGETS),
    "arcee": ("ArceeForCausalLM", None, {}, [*ATTENTION, "up_proj", "down_proj"]),  # a plain MLP
    "helium": ("HeliumForCausalLM", None, {}, ALL_TARGETS),
    "ministral3": ("Ministral3ForCausalLM", None, {}, ALL_TARGETS),
    "apertus": ("ApertusForCausalLM", None, {}, [*ATTENTION, "up_proj", "down_proj"]),  # xIELU plain MLP
    "olmoe": ("OlmoeForCausalLM", None, dict(num_experts=4, num_experts_per_tok=2, clip_qkv=3.0), ATTENTION),
    "granite_moe": ("GraniteMoeForCausalLM", None, dict(num_local_experts=4, **GRANITE), ATTENTION),
    "phimoe": ("PhimoeForCausalLM", None, dict(num_local_experts=4, router_jitter_noise=0.3), ATTENTION),
    # image-text checkpoints loaded text-only: the adapter's vision-tower tensors (PEFT's q_proj, ... match the
    # tower's too) change nothing a text prompt computes
    "gemma3_image_text": (
        "Gemma3ForConditionalGeneration",
        "Gemma3Config",
        dict(
            model_type="gemma3_text",
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention"],
            tie_word_embeddings=False,  # the text config's, which jllm reads (Gemma 3 ties by default)
        ),
        ALL_TARGETS,
    ),
    "mistral3_image_text": (
        "Mistral3ForConditionalGeneration",
        "Mistral3Config",
        dict(model_type="mistral"),
        ALL_TARGETS,
    ),
    # a plain MLP (c_fc, c_proj) with biases everywhere, LayerNorms
    "starcoder2": ("Starcoder2ForCausalLM", None, dict(sliding_window=WINDOW), [*ATTENTION, "c_fc", "c_proj"]),
}

TOWER = dict(
    hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
)
# an image-text checkpoint's outer config, its text model's nested as ``text_config``: a one-layer vision tower
IMAGE_TEXT = {
    "gemma3_image_text": dict(
        vision_config=dict(TOWER, model_type="siglip_vision_model"), mm_tokens_per_image=4, tie_word_embeddings=False
    ),
    "mistral3_image_text": dict(
        vision_config=dict(TOWER, model_type="pixtral", head_dim=16), tie_word_embeddings=False
    ),
}


def _save_family(family: str, root: Path) -> Path:
    arch, config_cls, overrides, _ = FAMILIES[family]
    config = {**LLAMA_CONFIG, "pad_token_id": 0, **overrides}
    if family in IMAGE_TEXT:
        config = dict(IMAGE_TEXT[family], text_config=config)
    return save_tiny_checkpoint(arch, config, root / family, config_cls_name=config_cls)


@pytest.mark.slow
@pytest.mark.usefixtures("little_machine_code_optimization")
@pytest.mark.parametrize("family", FAMILIES)
def test_each_familys_logits_with_an_adapter_match_peft(family, tmp_path):
    """Every target the family's adapters may have, at r=4 with B non-zero: float32 logits within 1e-5 (relative)
    of PEFT's forward, and far from the base model's. Measured 3e-7 .. 2e-6, as the base model's own error (2026-12,
    transformers 5.x; ``lora_alpha`` 2: a four times larger delta made both PEFT's and jllm's float32 error against a
    float64 PEFT grow to 5e-6 for GLM-4)."""
    pytest.importorskip("peft")
    model_dir = _save_family(family, tmp_path)
    targets = FAMILIES[family][3]
    adapter = save_adapter(model_dir, tmp_path / "adapter", r=4, targets=targets, seed=5, lora_alpha=2)
    loaded = load_model(model_dir, mesh=make_mesh(1), dtype="float32")
    manager = lora_manager(loaded, [adapter])
    seq = np.random.default_rng(3).integers(3, 160, 19).tolist()
    got = lora_logits(loaded, manager, [seq], [manager.slots.acquire(1)])[0]
    assert relative_error(got, peft_logits(model_dir, adapter, seq)) < 1e-5
    assert relative_error(got, peft_logits(model_dir, None, seq)) > 1e-2


@pytest.mark.slow
@pytest.mark.usefixtures("little_machine_code_optimization")
def test_an_engine_serves_a_mixture_of_experts_attention_adapter_as_peft_generates(tmp_path):
    """Qwen3-MoE, whose slots have no MLP arrays: the engine's greedy tokens with the adapter are PEFT's
    ``generate``'s, and differ from the base model's."""
    peft = pytest.importorskip("peft")
    import torch
    import transformers

    model_dir, targets = _save_family("qwen3_moe", tmp_path), FAMILIES["qwen3_moe"][3]
    save_char_tokenizer(model_dir, LLAMA_CONFIG["vocab_size"])
    adapter = save_adapter(model_dir, tmp_path / "a", r=4, targets=targets, seed=6, lora_alpha=2)
    ids = np.random.default_rng(4).integers(3, 160, 11).tolist()
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model = peft.PeftModel.from_pretrained(model, adapter).eval()
    with torch.no_grad():
        want = model.generate(torch.tensor([ids]), max_new_tokens=8, min_new_tokens=8, do_sample=False)[0, 11:]
    llm = LLM(str(model_dir), **ENGINE_KEYS)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    prompt = {"prompt_token_ids": ids}
    lora = LoRARequest("attn", 1, str(adapter))
    got, base = (llm.generate([prompt], params, use_tqdm=False, lora_request=r)[0] for r in (lora, None))
    assert list(got.outputs[0].token_ids) == want.tolist() != list(base.outputs[0].token_ids)


@pytest.mark.slow
def test_phi3_adapters_split_over_four_devices_with_replicated_kv_heads_give_pefts_logits(tmp_path):
    """TP 4 over Phi-3's 2 KV heads (each on two devices): the fused ``qkv_proj``'s B rows split into q, k and v,
    K's and V's repeated per copy, every row of a batch mixing no adapter and the adapter within 1e-5 of PEFT's."""
    pytest.importorskip("peft")
    model_dir, targets = _save_family("phi3", tmp_path), FAMILIES["phi3"][3]
    adapter = save_adapter(model_dir, tmp_path / "a", r=4, targets=targets, seed=7, lora_alpha=2)
    sequences = [np.random.default_rng(5).integers(3, 160, n).tolist() for n in (13, 18)]
    spec = {"model": str(model_dir), "adapters": [str(adapter)], "sequences": sequences, "tp_sizes": [4]}
    found = run_tp_worker(spec, tmp_path, timeout=600, worker="lora_tp_worker.py")
    assert found["4"]["kv_replicas"] == 2 and found["4"]["split"]["qkv_b"]
    logits = np.load(tmp_path / "logits_tp4.npz")
    for i, (seq, lora) in enumerate(zip(sequences, [None, adapter], strict=True)):
        assert relative_error(logits[f"arr_{i}"], peft_logits(model_dir, lora, seq)) < 1e-5


def _args(arch: str, **overrides: object) -> Any:
    """A tiny model's ``ModelArgs`` from its config alone (no weights)."""
    return build_args({**LLAMA_CONFIG, "architectures": [arch], **overrides}, np.float32)[1]


def _adapter(folder: Path, targets: list[str], tensors: dict[str, np.ndarray]) -> Path:
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "target_modules": targets}))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def test_a_mixture_of_experts_adapter_targeting_the_mlp_is_refused_naming_the_attention_targets(tmp_path):
    args = _args("Qwen3MoeForCausalLM", **MOE)
    bad = _adapter(tmp_path / "a", ["q_proj", "gate_proj"], {})
    message = "target_modules ['gate_proj'] are not supported for this model; supported: q_proj, k_proj, v_proj, o_proj"
    with pytest.raises(AdapterError, match=re.escape(message)):
        read_adapter(bad, args, max_rank=8)


def test_an_experts_lora_tensor_is_refused_naming_it(tmp_path):
    """An adapter saved from an older transformers, whose Mixtral experts were linears (``w1``): PEFT's
    ``all-linear`` reached them; jllm names the tensor and the targets it supports."""
    key = "base_model.model.model.layers.0.block_sparse_moe.experts.0.w1.lora_A.weight"
    bad = _adapter(tmp_path / "a", "all-linear", {key: np.zeros((4, 64), np.float32)})
    with pytest.raises(AdapterError, match=re.escape(f"tensor {key!r} is not supported; LoRA targets supported")):
        read_adapter(bad, _args("MixtralForCausalLM", num_local_experts=4), max_rank=8)


def test_phi3_adapters_name_its_fused_modules_not_llamas(tmp_path):
    bad = _adapter(tmp_path / "a", ["q_proj"], {})
    with pytest.raises(AdapterError, match=re.escape("supported: qkv_proj, o_proj, gate_up_proj, down_proj")):
        read_adapter(bad, _args("Phi3ForCausalLM"), max_rank=8)


def test_slots_hold_a_rank_block_per_module_the_family_has():
    """A fused module takes one rank block (Phi-3's qkv_proj: r columns, not Llama's 3r), a projection the family
    lacks takes none (a mixture of experts' MLP; a plain MLP's gate), so memory plans count only what is used."""
    llama, phi3 = zero_slot_shapes(_args("LlamaForCausalLM"), 8), zero_slot_shapes(_args("Phi3ForCausalLM"), 8)
    assert (llama["qkv_a"], llama["gate_up_b"]) == ((2, 64, 24), (2, 16, 2, 96))
    assert (phi3["qkv_a"], phi3["gate_up_b"]) == ((2, 64, 8), (2, 8, 2, 96))
    moe, plain = (
        zero_slot_shapes(_args("Qwen3MoeForCausalLM", **MOE), 8),
        zero_slot_shapes(_args("ArceeForCausalLM"), 8),
    )
    assert set(moe) == {"qkv_a", "qkv_b", "o_a", "o_b"}
    assert set(plain) == {"qkv_a", "qkv_b", "o_a", "o_b", "up_a", "up_b", "down_a", "down_b"}


def test_an_image_text_adapters_vision_tower_is_skipped_and_its_language_model_read(tmp_path):
    """jllm loads an image-text checkpoint text-only, so the tower's LoRA (PEFT's ``q_proj`` matches the tower's too)
    changes nothing it computes; in a text model's adapter the same tensor is refused."""
    tower = "base_model.model.model.vision_tower.encoder.layers.0.self_attn.q_proj.lora_A.weight"
    text = "base_model.model.model.language_model.layers.1.self_attn.q_proj.lora_A.weight"
    a = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    tower_a = np.ones((4, 32), np.float32)
    adapter = _adapter(tmp_path / "a", ["q_proj"], {tower: tower_a, text: a})
    config = {"text_config": {**LLAMA_CONFIG, "model_type": "gemma3_text", "tie_word_embeddings": False}}
    weights = read_adapter(adapter, _args("Gemma3ForConditionalGeneration", **config), max_rank=8)
    np.testing.assert_array_equal(weights.qkv_a[1, :, :4], a.T)
    assert not weights.qkv_a[0].any()
    with pytest.raises(AdapterError, match=re.escape(f"tensor {tower!r} is not supported")):
        read_adapter(_adapter(tmp_path / "b", ["q_proj"], {tower: tower_a}), _args("Gemma3ForCausalLM"), max_rank=8)


def test_the_supported_families_are_those_checked_against_peft():
    checked = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen3ForCausalLM"}  # tests/test_lora.py, Llama's reader
    assert set(SUPPORTED_ARCHITECTURES) == checked | {arch for arch, *_ in FAMILIES.values()}
    with pytest.raises(AdapterError, match=r"architectures \['FalconForCausalLM'\].*supported: .*Glm4ForCausalLM"):
        check_architecture({"architectures": ["FalconForCausalLM"]})

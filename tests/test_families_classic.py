"""The Llama-like and classic families added beside tests/test_families.py's (their rows here, so rows added there
move none of these seeds): BitNet, Emu3, DiffLlama, ModernBERT's decoder, GPT-1, CTRL, GPT-NeoX-Japanese, Zamba v1,
against transformers on tiny random-weight checkpoints: float32 logits within ``LOGITS_RTOL`` of transformers'
forward, greedy ``LLM.generate`` of a batch equal to transformers' ``generate`` (up to a near-tie:
``assert_greedy_equal``), DiffLlama's at tensor parallel 2 too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
import test_families
from model_utils import (
    TINY_CONFIG,
    assert_greedy_equal,
    hf_logits,
    jllm_logits,
    relative_error,
    run_tp_worker,
    save_tiny_checkpoint,
)
from test_families import (
    BASE,
    ENGINE_ARGS,
    GREEDY_BATCH,
    LOGITS_RTOL,
    PROMPTS,
    TP_NEW_TOKENS,
    WINDOW,
    FamilyDirs,
    assert_logits_match_transformers,
    little_machine_code_optimization,  # noqa: F401 (the logits and greedy rows' fixture)
)

from jllm import LLM
from jllm.kv_cache import KVCacheSpec
from jllm.loader import load_model
from jllm.models.layers import sinusoidal_positions
from jllm.models.registry import build_args
from jllm.parallel import make_mesh
from jllm.quantization import resolve_scheme

# name -> (architecture, config class or None, config.json keys over test_families' BASE, TP sizes)
CLASSIC: dict[str, tuple[str, str | None, dict[str, Any], list[int]]] = {
    "bitnet": ("BitNetForCausalLM", None, {}, []),
    "emu3": ("Emu3ForCausalLM", "Emu3TextConfig", dict(attention_bias=True, mlp_bias=True), []),
    # 8 query heads over 4 KV heads: each KV head's value pair crosses the halves, maps i and i + 4 subtracted
    # TP 2 splits the heads: each value pair and each subtracted map reads the other device's
    "diffllama": ("DiffLlamaForCausalLM", None, dict(num_attention_heads=8, num_key_value_heads=4), [2]),
    # a global layer, then two sliding ones over 16 tokens; biases everywhere (norms, attention, MLP, the prediction
    # head, the tied LM head)
    "modernbert_decoder": (
        "ModernBertDecoderForCausalLM",
        None,
        dict(
            num_hidden_layers=3,
            num_key_value_heads=None,
            head_dim=None,
            local_attention=2 * WINDOW,
            norm_bias=True,
            attention_bias=True,
            mlp_bias=True,
            classifier_bias=True,
        ),
        [],  # TP 2 = transformers' tokens and logits by hand (2026-12-06): its head's bias splits as the embedding
    ),
    "openai_gpt": ("OpenAIGPTLMHeadModel", "OpenAIGPTConfig", dict(num_key_value_heads=None, afn="gelu"), []),
    "ctrl": ("CTRLLMHeadModel", "CTRLConfig", dict(num_key_value_heads=None, dff=96), []),
    # a Mamba layer, then two hybrid ones invoking the shared block; 2 Mamba heads of 64 channels. A narrower
    # initializer than BASE's: at 0.3, transformers' float32 forward was itself 3.3e-5 from its float64 one (jllm's
    # 2.9e-5)
    "zamba": (
        "ZambaForCausalLM",
        None,
        dict(
            head_dim=None,
            num_hidden_layers=3,
            layers_block_type=["mamba", "hybrid", "hybrid"],
            mamba_dt_rank=8,
            initializer_range=0.15,
        ),
        [],
    ),
    # half of each head rotated
    "gpt_neox_japanese": (
        "GPTNeoXJapaneseForCausalLM",
        None,
        dict(num_key_value_heads=None, rope_parameters={"rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
        [],
    ),
}
# Families whose decoder runs nothing another family's greedy row does not (the suite's time budget): their logits
# rows check them; each one's greedy batch equals transformers' by hand (2026-12-06)
LOGITS_ONLY = {"emu3"}  # Llama's layers with biases (Llama's greedy rows), its defaults read as Emu3's
# GPT-1's post-LN layers (position-free: its logits row checks them) over GPT-2's learned positions; CTRL's sinusoids
# (XGLM's greedy row) and tied head's bias (ModernBERT's); GPT-NeoX-Japanese's GPT-NeoX layers (GPT-NeoX's rows)
LOGITS_ONLY |= {"openai_gpt", "ctrl", "gpt_neox_japanese"}


# test_families' fixture (transformers' greedy tokens of each family, computed once), over this file's family_dirs
hf_tokens = test_families.hf_tokens


@pytest.fixture(scope="module")
def family_dirs(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FamilyDirs:
    return FamilyDirs(tmp_path_factory.mktemp("classic"), default_model_dir, CLASSIC)


@pytest.mark.slow
@pytest.mark.usefixtures("little_machine_code_optimization")
@pytest.mark.parametrize("name", list(CLASSIC))
def test_logits_match_transformers(family_dirs, name):
    assert_logits_match_transformers(family_dirs[name])


@pytest.mark.slow
@pytest.mark.usefixtures("little_machine_code_optimization")
@pytest.mark.parametrize("name", [name for name in CLASSIC if name not in LOGITS_ONLY])
def test_greedy_batch_equals_transformers_generate(family_dirs, hf_tokens, name):
    llm = LLM(str(family_dirs[name]), **ENGINE_ARGS)
    got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY_BATCH, use_tqdm=False)]
    assert_greedy_equal(family_dirs[name], PROMPTS, got, hf_tokens(name))
    assert len({t for tokens in got for t in tokens}) > 3, "degenerate greedy output proves little"


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name, (*_, sizes) in CLASSIC.items() if sizes])
def test_tensor_parallel_matches_transformers(family_dirs, hf_tokens, tmp_path, name):
    """Greedy tokens and prefill logits at each TP size on fake CPU devices (tests/tp_worker.py) against
    transformers'."""
    sizes = CLASSIC[name][3]
    spec = {"families": {name: [str(family_dirs[name]), sizes]}, "cache_dir": str(tmp_path / "jllm_cache")}
    runs = run_tp_worker(spec, tmp_path, timeout=900)["generate"][name]
    expected_tokens = [tokens[:n] for tokens, n in zip(hf_tokens(name), TP_NEW_TOKENS, strict=True)]
    expected_logits = hf_logits(family_dirs[name], PROMPTS[2])
    for tp in map(str, sizes):
        assert runs[tp]["tokens"] == expected_tokens, f"{name} at TP={tp}"
        assert relative_error(np.load(runs[tp]["logits_file"]), expected_logits) < LOGITS_RTOL, f"{name} TP={tp}"


def test_bitnet_packed_ternary_checkpoint_is_refused_naming_its_quantization_config():
    config = {"architectures": ["BitNetForCausalLM"], "quantization_config": {"quant_method": "bitnet"}}
    with pytest.raises(ValueError, match="quantization_config.*quant_method 'bitnet'.*float layout"):
        resolve_scheme(None, config)


# Emu3's image tokenizer, as small as its convolutions allow (it is never read: the test builds the checkpoint whole)
EMU3_VQ = dict(
    codebook_size=32,
    embed_dim=8,
    latent_channels=32,
    base_channels=32,
    channel_multiplier=[1, 1],
    num_res_blocks=1,
    attn_resolutions=[],
    temporal_downsample_factor=1,
    hidden_size=32,
)


@pytest.mark.slow
def test_emu3_image_text_checkpoint_reads_its_text_model(tmp_path):
    """Emu3ForConditionalGeneration as transformers saves it (``text_model.model.*``, ``text_model.lm_head``): its
    text model's logits are transformers' image-text model's on text."""
    text = {**BASE, **CLASSIC["emu3"][2], "vocab_size": 512}  # logits alone: no tokenizer to match
    config = dict(text_config=text, vq_config=EMU3_VQ, vocabulary_map={"<image>": 5})
    model_dir = save_tiny_checkpoint(
        "Emu3ForConditionalGeneration", config, tmp_path / "emu3", config_cls_name="Emu3Config", perturb_constants=True
    )
    ids = np.random.default_rng(7).integers(0, 512, 40).tolist()
    got = jllm_logits(load_model(model_dir, mesh=make_mesh(1), dtype="float32"), ids, page_size=16)
    assert relative_error(got, hf_logits(model_dir, ids)) < LOGITS_RTOL


@pytest.mark.parametrize(
    "arch, change, message",
    [
        ("DiffLlamaForCausalLM", {"num_key_value_heads": 3}, "DiffLlama num_key_value_heads=3 is not supported"),
        ("CTRLLMHeadModel", {"n_head": 4, "layer_norm_epsilon": 1e-5}, "CTRL layer_norm_epsilon=1e-05 is not supp"),
        ("OpenAIGPTLMHeadModel", {"n_head": 4, "afn": "gelu_new"}, "GPT-1 afn 'gelu_new' is not supported"),
    ],
)
def test_unsupported_family_or_option_is_refused_naming_it(arch, change, message):
    config = {**TINY_CONFIG, "n_embd": 64, "n_layer": 2, "num_attention_heads": 6, "architectures": [arch], **change}
    with pytest.raises(ValueError, match=message):
        build_args(config, np.float32)


def test_diffllama_pool_heads_hold_value_pairs_twice_the_head_width():
    config = {**TINY_CONFIG, "architectures": ["DiffLlamaForCausalLM"], "head_dim": 16}
    args = build_args(config, np.float32)[1]
    spec = KVCacheSpec.for_model(args, 16, np.float32)
    assert (spec.num_kv_heads, spec.head_dim, spec.layer_dims) == (2, 32, ())


def test_ctrl_sinusoids_are_its_positional_encoding():
    """CTRL's table (transformers' ``positional_encoding``: angle rates ``10000^(-2 (i // 2) / d)``, the even columns'
    sines then the odd columns' cosines) from ``sinusoidal_positions`` with shift 0."""
    positions, d = np.arange(300), 64
    angles = positions[:, None] / np.power(10000.0, 2 * (np.arange(d) // 2) / d)[None, :]
    expected = np.concatenate([np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])], axis=-1)
    got = np.asarray(sinusoidal_positions(jnp.asarray(positions), d, shift=0))
    np.testing.assert_allclose(got, expected, atol=3e-5)  # float32 angles up to 300 radians (measured 1e-5)

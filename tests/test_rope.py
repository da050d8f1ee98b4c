"""Each rotary scaling kind's inverse frequencies and attention factor against transformers' own
(``ROPE_INIT_FUNCTIONS``), from the same config: the rotation every family applies rests on these two numbers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from jllm.models.families.common import read_rope

HEAD_DIM = 64
MAX_POSITIONS = 4096
# name -> rope_parameters (rope_theta included), as a checkpoint's config.json carries them
CASES: dict[str, dict[str, Any]] = {
    "default": dict(rope_type="default", rope_theta=10000.0),
    "linear": dict(rope_type="linear", rope_theta=10000.0, factor=2.0),
    "llama3": dict(
        rope_type="llama3",
        rope_theta=500000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=512,
    ),
    # Qwen2.5's long-context setting
    "yarn": dict(rope_type="yarn", rope_theta=1e6, factor=4.0, original_max_position_embeddings=1024),
    # gpt-oss: the ramp's bounds not rounded
    "yarn_untruncated": dict(
        rope_type="yarn",
        rope_theta=150000.0,
        factor=32.0,
        beta_fast=32.0,
        beta_slow=1.0,
        original_max_position_embeddings=128,
        truncate=False,
    ),
    # DeepSeek-V3: the attention factor from the mscale ratio
    "yarn_mscale": dict(
        rope_type="yarn",
        rope_theta=10000.0,
        factor=40.0,
        mscale=1.0,
        mscale_all_dim=0.707,
        original_max_position_embeddings=256,
    ),
    "yarn_attention_factor": dict(
        rope_type="yarn", rope_theta=10000.0, factor=8.0, attention_factor=1.5, original_max_position_embeddings=512
    ),
    # dynamic NTK: its base stretches only past max_position_embeddings (a context jllm never runs)
    "dynamic": dict(rope_type="dynamic", rope_theta=10000.0, factor=4.0),
    # Gemma 4's full-attention layers: a quarter of the pairs turn, the whole head's frequencies; and with a factor
    "proportional": dict(rope_type="proportional", rope_theta=1e6, partial_rotary_factor=0.25),
    "proportional_factor": dict(rope_type="proportional", rope_theta=1e4, partial_rotary_factor=0.5, factor=2.0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_inverse_frequencies_and_attention_factor_equal_transformers(name):
    # imported here: with torch, transformers' Llama took 5 CPU s of every xdist worker's collection
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    params = CASES[name]
    hf = LlamaConfig(
        hidden_size=HEAD_DIM * 4,
        num_attention_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        rope_parameters=dict(params),
    )
    kind = params["rope_type"]
    compute = LlamaRotaryEmbedding.compute_default_rope_parameters if kind == "default" else ROPE_INIT_FUNCTIONS[kind]
    expected_inv_freq, expected_factor = compute(hf)
    cfg = {"max_position_embeddings": MAX_POSITIONS, "rope_parameters": dict(params)}
    rope = read_rope(cfg, HEAD_DIM)
    np.testing.assert_allclose(rope.inv_freq(), expected_inv_freq.numpy(), rtol=1e-6)
    assert rope.attention_scaling() == pytest.approx(expected_factor, rel=1e-9)


def test_unknown_scaling_kind_is_refused_naming_the_supported_ones():
    supported = r"'ntk' is not supported \(supported: default, linear, dynamic, .*yarn, proportional\)"
    with pytest.raises(ValueError, match=supported):
        read_rope({"rope_parameters": {"rope_type": "ntk", "factor": 2.0}}, HEAD_DIM)

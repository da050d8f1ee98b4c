"""Orbax save/restore of converted parameters."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from model_utils import TINY_CONFIG, save_tiny_checkpoint

from jllm.loader import load_model, save_model
from jllm.parallel import make_mesh


@pytest.mark.slow  # orbax save and restore (its thread pools and checks, ~10 s)
def test_orbax_round_trip_is_bit_identical(tmp_path):
    src = save_tiny_checkpoint(
        "Qwen2ForCausalLM",
        TINY_CONFIG,
        tmp_path / "hf",
    )
    original = load_model(src, mesh=make_mesh(1), dtype="bfloat16")
    saved = save_model(original, tmp_path / "converted")
    assert (saved / "config.json").is_file() and (saved / "params").is_dir()
    restored = load_model(saved, mesh=make_mesh(1), dtype="bfloat16")  # load_format auto detects params/

    before = dict(nnx.to_flat_state(nnx.state(original.model, nnx.Param)))
    after = dict(nnx.to_flat_state(nnx.state(restored.model, nnx.Param)))
    assert before.keys() == after.keys()
    for path, var in before.items():
        a, b = var.get_value(), after[path].get_value()
        assert a.dtype == b.dtype == jax.numpy.bfloat16, path
        assert b.sharding == a.sharding, path
        np.testing.assert_array_equal(
            np.asarray(a.astype(np.float32)), np.asarray(b.astype(np.float32)), err_msg=str(path)
        )


@pytest.mark.slow  # an orbax save (~10 s)
def test_saved_directory_keeps_the_chat_template_file(tmp_path):
    src = save_tiny_checkpoint("LlamaForCausalLM", TINY_CONFIG, tmp_path / "hf")
    (src / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    saved = save_model(load_model(src, mesh=make_mesh(1)), tmp_path / "converted")
    assert (saved / "chat_template.jinja").read_text() == (src / "chat_template.jinja").read_text()

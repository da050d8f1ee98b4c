"""MiniMax-Text-01 / MiniMax-M1 under the remote code's config (``MiniMaxText01ForCausalLM``): its keys read as the
transformers config they stand for, and its ``rotary_dim`` (each head's first channels rotated, which transformers'
port does not read) against transformers' model with that rotary put in. transformers' own layout (logits, chunked
prefill, greedy batch) is test_families' ``minimax`` row; tensor parallelism tests/test_hybrid_tp.py's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_utils import TINY_CONFIG, hf_logits, jllm_logits, relative_error, save_tiny_checkpoint
from test_families import (
    HYBRID_LOGITS_RTOL,
    MINIMAX_KEYS,
    little_machine_code_optimization,  # noqa: F401 (the slow test's fixture)
)

from jllm.loader import load_model
from jllm.models.families.minimax import REMOTE_KEYS
from jllm.models.registry import build_args
from jllm.parallel import make_mesh

CONFIG = dict(TINY_CONFIG, head_dim=16, initializer_range=0.3, **MINIMAX_KEYS)


def remote_config(config: dict[str, Any], rotary_dim: int) -> dict[str, Any]:
    """transformers' saved MiniMax ``config`` as the remote code's config.json names it."""
    remote = {k: v for k, v in config.items() if k not in ("layer_types", "rope_parameters", *REMOTE_KEYS.values())}
    remote |= {key: config[ours] for key, ours in REMOTE_KEYS.items()}
    remote |= dict(
        architectures=["MiniMaxText01ForCausalLM"],
        model_type="MiniMaxText01",
        attn_type_list=[int(kind == "full_attention") for kind in config["layer_types"]],
        postnorm=True,
        rope_theta=config["rope_parameters"]["rope_theta"],
        rotary_dim=rotary_dim,
        shared_intermediate_size=0,
    )
    return remote


def test_remote_code_config_reads_as_the_transformers_config_it_stands_for():
    config = dict(CONFIG, architectures=["MiniMaxForCausalLM"], rope_parameters={"rope_theta": 1e6})
    want = build_args(config, np.float32)[1]
    got = build_args(remote_config(config, rotary_dim=16), np.float32)[1]
    assert got == want
    assert [spec.mixer for spec in got.layers] == ["lightning", "attention"] * 2
    assert got.layers[1].normed_residual == (1.3, 0.7, 1.1, 1.2)  # full attention's alpha and beta, the MLP's


def hf_partial_rotary_logits(model_dir: Path, token_ids: list[int], rotary_dim: int) -> np.ndarray:
    """transformers' float32 MiniMax logits with its rotary on each head's first ``rotary_dim`` channels (as the
    remote code turns them): the rotary's frequencies over ``rotary_dim``, applied as Qwen3-Next applies its partial
    rotary."""
    import torch
    from transformers.models.minimax import modeling_minimax
    from transformers.models.qwen3_next.modeling_qwen3_next import apply_rotary_pos_emb

    model = modeling_minimax.MiniMaxForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    theta = model.config.rope_parameters["rope_theta"]
    model.model.rotary_emb.inv_freq = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float) / rotary_dim)
    with pytest.MonkeyPatch.context() as mp, torch.no_grad():
        mp.setattr(modeling_minimax, "apply_rotary_pos_emb", apply_rotary_pos_emb)
        return model(torch.tensor([token_ids])).logits[0].numpy()


@pytest.mark.slow
@pytest.mark.usefixtures("little_machine_code_optimization")
def test_remote_code_rotary_dim_turns_each_heads_first_channels(tmp_path):
    """A checkpoint under the remote code's config with ``rotary_dim`` 8 of 16 channels: its logits are transformers'
    with that partial rotary, and differ from the whole rotary's."""
    hf_dir = save_tiny_checkpoint("MiniMaxForCausalLM", CONFIG, tmp_path / "hf", perturb_constants=True)
    remote_dir = tmp_path / "remote"
    shutil.copytree(hf_dir, remote_dir)
    config = json.loads((hf_dir / "config.json").read_text())
    (remote_dir / "config.json").write_text(json.dumps(remote_config(config, rotary_dim=8)))
    ids = np.random.default_rng(5).integers(0, CONFIG["vocab_size"], 40).tolist()
    expected = hf_partial_rotary_logits(hf_dir, ids, rotary_dim=8)
    got = jllm_logits(load_model(remote_dir, mesh=make_mesh(1), dtype="float32"), ids)
    assert relative_error(got, expected) < HYBRID_LOGITS_RTOL
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    assert relative_error(hf_logits(hf_dir, ids), expected) > 100 * HYBRID_LOGITS_RTOL  # the rotary's fraction tells

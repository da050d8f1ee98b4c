"""The Mamba2 mixer against transformers' ``BambaMixer`` (float32, random weights and inputs): a sequence whole, the
same sequence as a prefill chunk then decode steps through its state slot, and two rows packed in one step."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_utils import mixer_step, relative_error
from test_families import little_machine_code_optimization  # noqa: F401 (every test's fixture)

from jllm.models.families.mamba_hybrids import mamba2_spec
from jllm.models.mamba2 import Mamba2Mixer
from jllm.models.model_args import LayerSpec, ModelArgs

# transformers' modeling imported: ~5 s of CPU before the first test; the mixers' programs compile once for a few
# steps: LLVM level 0 on their machine code (test_families' fixture)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("little_machine_code_optimization")]

HIDDEN = 32
# 8 heads of 8 channels (expand 2), 2 groups of B and C, a state of 16, kernel 4; a chunk of 8 makes transformers'
# reference scan cross chunks
BAMBA = dict(
    hidden_size=HIDDEN,
    mamba_n_heads=8,
    mamba_d_head=8,
    mamba_n_groups=2,
    mamba_d_state=16,
    mamba_d_conv=4,
    mamba_expand=2,
    mamba_chunk_size=8,
    mamba_conv_bias=True,
    mamba_proj_bias=True,
    rms_norm_eps=1e-5,
)
MIXER_RTOL = 1e-5  # measured: at most 2.5e-7 (float32, CPU)


@pytest.fixture(scope="module")
def mixers() -> tuple[object, Mamba2Mixer]:
    """transformers' mixer with every parameter random, and ours holding the same values."""
    import torch
    from transformers import BambaConfig
    from transformers.models.bamba.modeling_bamba import BambaMixer

    torch.manual_seed(0)
    ref = BambaMixer(BambaConfig(**BAMBA), layer_idx=0).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    spec = mamba2_spec(BAMBA, "Bamba")  # the family reader's, from the config's keys
    args = ModelArgs(
        vocab_size=16,
        hidden_size=HIDDEN,
        intermediate_size=16,
        num_layers=1,
        num_heads=1,
        num_kv_heads=1,
        head_dim=8,
        norm_eps=1e-5,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        layers=(LayerSpec(None),),
        mamba2=spec,
    )
    ours = Mamba2Mixer(args, args.layers[0])
    tensors = {k: jnp.asarray(v.numpy()) for k, v in ref.state_dict().items()}
    # in_proj's z, x, dt grouped per head, and bc_proj's B, C per group: columns of transformers' in_proj
    for linear in (ours.in_proj, ours.bc_proj):
        columns = linear.kernel.get_metadata()["stored"].indices()
        linear.kernel[...] = tensors["in_proj.weight"].T[:, columns]
        linear.bias[...] = tensors["in_proj.bias"][columns]
    ours.out_proj.kernel[...] = tensors["out_proj.weight"].T
    ours.out_proj.bias[...] = tensors["out_proj.bias"]
    ours.conv1d.weight[...] = tensors["conv1d.weight"]
    ours.conv1d.bias[...] = tensors["conv1d.bias"]
    ours.gated_norm.weight[...] = tensors["norm.weight"]
    for name in ("A_log", "D", "dt_bias"):
        getattr(ours, name)[...] = tensors[name]
    return ref, ours


def reference(ref: object, x: np.ndarray) -> np.ndarray:
    """transformers' output ``[T, hidden]`` for one whole sequence."""
    import torch

    with torch.no_grad():
        return ref(torch.from_numpy(x)[None]).numpy()[0]


def empty_pool(mixer: Mamba2Mixer, slots: int = 4) -> tuple:
    spec = mixer.mamba.state_spec(jnp.float32)
    return spec.zeros(slots)


def test_mixer_over_a_whole_sequence_matches_transformers(mixers):
    ref, ours = mixers
    x = np.random.default_rng(1).standard_normal((21, HIDDEN)).astype(np.float32)
    (got,), _ = mixer_step(ours, empty_pool(ours), [(x, 0, 2)], num_tokens=24, num_rows=2)
    assert relative_error(got, reference(ref, x)) < MIXER_RTOL


def test_mixer_continues_a_prefill_chunk_through_decode_steps_from_its_slot(mixers):
    """13 tokens, then 8 decodes, each step reading the row's conv and SSM state from slot 3: the outputs are the
    whole sequence's."""
    ref, ours = mixers
    x = np.random.default_rng(2).standard_normal((21, HIDDEN)).astype(np.float32)
    (first,), pool = mixer_step(ours, empty_pool(ours), [(x[:13], 0, 3)], num_tokens=16, num_rows=1)
    outs = [first]
    for i in range(13, 21):
        (y,), pool = mixer_step(ours, pool, [(x[i : i + 1], i, 3)], num_tokens=2, num_rows=2)
        outs.append(y)
    assert relative_error(np.concatenate(outs), reference(ref, x)) < MIXER_RTOL


def test_mixer_steps_packed_rows_each_from_its_own_state(mixers):
    """A step packing a row's second chunk (its state from slot 1) beside a new row (slot 2, the state an earlier
    row left there ignored) and a padding row: each row's outputs are its own sequence's."""
    ref, ours = mixers
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal((n, HIDDEN)).astype(np.float32) for n in (11, 6))
    pool = empty_pool(ours)
    (a_first, _), pool = mixer_step(ours, pool, [(a[:7], 0, 1), (b[:2], 0, 2)], num_tokens=9, num_rows=2)
    (a_rest, b_all), _ = mixer_step(ours, pool, [(a[7:], 7, 1), (b, 0, 2)], num_tokens=12, num_rows=3)
    assert relative_error(np.concatenate([a_first, a_rest]), reference(ref, a)) < MIXER_RTOL
    assert relative_error(b_all, reference(ref, b)) < MIXER_RTOL


def test_time_step_limit_clamps_the_softplus_time_step_as_transformers_scan(mixers):
    """A finite ``time_step_limit`` (transformers' chunked scan clamps ``softplus(dt + dt_bias)`` to it)."""
    ref, ours = mixers
    limit = (0.05, 0.3)
    x = np.random.default_rng(4).standard_normal((9, HIDDEN)).astype(np.float32)
    ref.time_step_limit = limit
    try:
        expected = reference(ref, x)
    finally:
        ref.time_step_limit = (0.0, math.inf)
    graphdef, state = nnx.split(ours)
    clamped = nnx.merge(graphdef, state)
    clamped.mamba = dataclasses.replace(clamped.mamba, time_step_limit=limit)
    (got,), _ = mixer_step(clamped, empty_pool(ours), [(x, 0, 1)], num_tokens=9, num_rows=1)
    assert relative_error(got, expected) < MIXER_RTOL
    assert relative_error(got, reference(ref, x)) > 1e-3, "the limit must bind on these inputs"

"""The recurrent mixers' chunked prefill algorithms (gated DeltaNet's chunked delta rule, Mamba2's chunked SSD,
MiniMax's chunked lightning attention) in
float32 on random inputs: against the token-by-token recurrence on rows of 1, 63, 64, 65 and 200 tokens packed in one
step (some fresh, some continuing from a random state, beside a padding row), on mixed steps (prefills beside many
decode rows, in any order, with padding rows: past its first chunk a row is stepped among the few that can still have
chunks), and against transformers' chunked torch functions on one row. The delta rule's log decay is one per head
(gated DeltaNet) or one per key channel (Kimi Delta Attention)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_utils import relative_error

from jllm.attention import AttentionMetadata
from jllm.models.gated_deltanet import _delta_step, chunked_delta_rule
from jllm.models.layers import l2_normed
from jllm.models.lightning_attention import chunked_lightning, lightning_step
from jllm.models.mamba2 import ssd_chunked, ssd_step
from jllm.models.recurrent_state import scan_segments

# (rows' tokens, whether each continues a state, the step's tokens): rows around a 64-token chunk's edges and past
# three chunks, then a padding row; a prefill beside 40 decodes and padding rows; prefills of different lengths
# between decodes and padding rows, the longest neither first nor last; a bucket of fewer tokens than a chunk (one
# chunk of 30 a row: no quarters for a decay per key channel)
STEPS = {
    "chunk-edges": ([1, 63, 64, 65, 200, 0], [False, True, False, True, False, False], 400),
    "prefill-beside-decodes": ([300] + [1] * 40 + [0] * 3, [False] + [True] * 40 + [False] * 3, 400),
    "prefills-and-decodes-any-order": (
        [1, 130, 0, 1, 65, 1, 200, 1, 64, 1, 0],
        [True, True, False, True, False, True, False, True, True, True, False],
        480,
    ),
    "short-bucket": ([1, 20, 3, 0], [True, False, True, False], 30),
}
# The fast tier runs the chunk edges alone (each case compiles both forms, ~2 s cold on 2 CPU cores); the full suite
# runs every step
STEP_CASES = [pytest.param(name, marks=() if name == "chunk-edges" else pytest.mark.slow) for name in STEPS]
# measured, float32 on the CPU: at most 9.9e-7 (delta rule), 1.0e-6 (its decay per key channel; as far from
# transformers' chunk_kimi_delta_attention), 4.1e-7 (SSD), 3.9e-7 (lightning attention), per row and output
CHUNKED_RTOL = 1e-5
HEADS, DK, DV = 4, 16, 8  # the delta rule's; Mamba2's heads of DV channels, 2 groups of B and C with a state of DK


def packed_meta(lens: list[int], continues: list[bool], num_tokens: int) -> AttentionMetadata:
    """A step of ``lens`` tokens per row, a continuing row with 7 tokens computed before."""
    return AttentionMetadata(
        slot_mapping=jnp.zeros(num_tokens, jnp.int32),
        query_start_loc=jnp.asarray(np.cumsum([0, *lens]), jnp.int32),
        kv_lens=jnp.asarray([n + 7 * c for n, c in zip(lens, continues, strict=True)], jnp.int32),
        block_tables=jnp.zeros((len(lens), 1), jnp.int32),
        state_slots=jnp.arange(len(lens), dtype=jnp.int32),
    )


def initial_states(rng: np.random.Generator, shape: tuple[int, ...], continues: list[bool]) -> jax.Array:
    """Random states for continuing rows, zeros for fresh ones (as ``gather_states`` gives them)."""
    states = rng.standard_normal((len(continues), *shape)) * np.reshape(continues, (-1, *[1] * len(shape)))
    return jnp.asarray(states, jnp.float32)


def assert_rows_match(got: tuple[jax.Array, jax.Array], want: tuple[jax.Array, jax.Array], lens: list[int]) -> None:
    """Each row's outputs and final state within ``CHUNKED_RTOL``; padding tokens' outputs zero, as the scan's."""
    qsl = np.cumsum([0, *lens])
    (out, state), (want_out, want_state) = (tuple(map(np.asarray, pair)) for pair in (got, want))
    for s, n in enumerate(lens):
        if n:
            assert relative_error(out[qsl[s] : qsl[s + 1]], want_out[qsl[s] : qsl[s + 1]]) < CHUNKED_RTOL, n
            assert relative_error(state[s], want_state[s]) < CHUNKED_RTOL, n
        else:  # the padding row keeps its state
            np.testing.assert_array_equal(state[s], want_state[s])
    assert not out[qsl[-1] :].any()


def token_scan(step: Callable, state: jax.Array, xs: tuple, out_like: Any, meta: AttentionMetadata) -> tuple:
    """The recurrence token by token, every row at every iteration (``scan_segments`` without a bound on the rows
    still going: the reference, independent of the bounds ``scan_chunks`` sets)."""
    qsl = meta.query_start_loc
    return scan_segments(step, state, xs, out_like, qsl[:-1], qsl[1:] - qsl[:-1])


def delta_inputs(rng: np.random.Generator, num_tokens: int, per_channel: bool = False) -> tuple[jax.Array, ...]:
    """q (L2-normed, scaled), k (L2-normed), v, the log decay (``[T, heads]``, or ``[T, heads, DK]`` with
    ``per_channel``: Kimi Delta Attention's) and beta ``[T, heads, ...]``, as the layer feeds them."""
    q, k = (l2_normed(jnp.asarray(rng.standard_normal((num_tokens, HEADS, DK)), jnp.float32)) for _ in range(2))
    v = rng.standard_normal((num_tokens, HEADS, DV))
    scale = np.exp(rng.standard_normal((HEADS, *[1] * per_channel)))
    log_decay = -scale * np.logaddexp(0, rng.standard_normal((num_tokens, HEADS, *[DK] * per_channel)))
    beta = 1 / (1 + np.exp(-rng.standard_normal((num_tokens, HEADS))))
    return q * DK**-0.5, k, *(jnp.asarray(x, jnp.float32) for x in (v, log_decay, beta))


def ssd_inputs(rng: np.random.Generator, num_tokens: int) -> tuple[jax.Array, ...]:
    """x ``[T, heads, DV]``, dt (softplus) ``[T, heads]``, A ``[heads]``, B and C ``[T, 2, DK]``, D ``[heads]``."""
    x = rng.standard_normal((num_tokens, HEADS, DV))
    dt = 0.3 * np.logaddexp(0, rng.standard_normal((num_tokens, HEADS)))
    a = -np.exp(rng.standard_normal(HEADS))
    b, c = (rng.standard_normal((num_tokens, 2, DK)) for _ in range(2))
    return tuple(jnp.asarray(y, jnp.float32) for y in (x, dt, a, b, c, rng.standard_normal(HEADS)))


@pytest.mark.parametrize("per_channel", [False, True], ids=["decay-per-head", "decay-per-key-channel"])
@pytest.mark.parametrize("step_name", STEP_CASES)
def test_chunked_delta_rule_matches_the_token_scan_on_packed_rows(step_name: str, per_channel: bool) -> None:
    """Per key channel (Kimi Delta Attention) a chunk's log decay reaches some -400 here: a chunked form through
    ``exp(-cum)`` would overflow."""
    lens, continues, num_tokens = STEPS[step_name]
    rng = np.random.default_rng(0)
    meta = packed_meta(lens, continues, num_tokens)
    q, k, v, log_decay, beta = delta_inputs(rng, num_tokens, per_channel)
    state = initial_states(rng, (HEADS, DK, DV), continues)
    got = jax.jit(chunked_delta_rule)(q, k, v, log_decay, beta, state, meta)
    out_like = jax.ShapeDtypeStruct((HEADS, DV), jnp.float32)
    scan = jax.jit(lambda state, *xs: token_scan(_delta_step, state, xs, out_like, meta))
    assert_rows_match(got, scan(state, q, k, v, jnp.exp(log_decay), beta), lens)


@pytest.mark.parametrize("step_name", STEP_CASES)
def test_chunked_ssd_matches_the_token_scan_on_packed_rows(step_name: str) -> None:
    lens, continues, num_tokens = STEPS[step_name]
    rng = np.random.default_rng(1)
    meta = packed_meta(lens, continues, num_tokens)
    x, dt, a, b, c, d = ssd_inputs(rng, num_tokens)
    state = initial_states(rng, (HEADS, DV, DK), continues)
    got = jax.jit(functools.partial(ssd_chunked, meta=meta, size=64))(state, x, dt, a, b, c, d)

    def step(state: jax.Array, token: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
        x, dt, b, c = token
        y, state = ssd_step(state, x, dt, a, b, c, d)
        return state, y

    out_like = jax.ShapeDtypeStruct((HEADS, DV), jnp.float32)
    want = jax.jit(lambda state, *xs: token_scan(step, state, xs, out_like, meta))(state, x, dt, b, c)
    assert_rows_match(got, want, lens)


@pytest.mark.slow  # transformers' modeling imported
@pytest.mark.parametrize("per_channel", [False, True], ids=["decay-per-head", "decay-per-key-channel"])
def test_chunked_delta_rule_matches_transformers_chunked_torch_function(per_channel: bool) -> None:
    """One row of 150 tokens (three chunks, the last partial) from a random state: transformers'
    ``torch_chunk_gated_delta_rule`` (its own L2 norm and scaling; ``chunk_kimi_delta_attention``, Kimi Linear's, for
    a decay per key channel) gives the same outputs and final state."""
    import torch
    from transformers.models.kimi_linear.modeling_kimi_linear import chunk_kimi_delta_attention
    from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule

    rng = np.random.default_rng(2)
    n = 150
    q, k = (rng.standard_normal((n, HEADS, DK)).astype(np.float32) for _ in range(2))
    _, _, v, log_decay, beta = delta_inputs(rng, n, per_channel)
    state = initial_states(rng, (HEADS, DK, DV), [True])
    meta = packed_meta([n], [True], n)
    normed_q, normed_k = l2_normed(jnp.asarray(q)) * DK**-0.5, l2_normed(jnp.asarray(k))
    got = jax.jit(chunked_delta_rule)(normed_q, normed_k, v, log_decay, beta, state, meta)
    torch_in = [torch.from_numpy(np.array(y))[None] for y in (q, k, v, log_decay, beta)]
    chunk_rule = chunk_kimi_delta_attention if per_channel else torch_chunk_gated_delta_rule
    want_out, want_state = chunk_rule(
        *torch_in,
        chunk_size=64,
        initial_state=torch.from_numpy(np.array(state)),
        output_final_state=True,
        use_qk_l2norm_in_kernel=True,
    )
    assert relative_error(np.asarray(got[0]), want_out[0].numpy()) < CHUNKED_RTOL
    assert relative_error(np.asarray(got[1])[0], want_state[0].numpy()) < CHUNKED_RTOL


@pytest.mark.slow  # transformers' modeling imported
def test_chunked_ssd_matches_transformers_chunk_scan() -> None:
    """One row of 100 tokens in chunks of 32 (the last partial) from a random state: transformers'
    ``mamba2_chunk_scan`` gives the same outputs and final state."""
    import torch
    from transformers.models.bamba.modeling_bamba import mamba2_chunk_scan

    rng = np.random.default_rng(3)
    n = 100
    x, dt, a, b, c, d = ssd_inputs(rng, n)
    state = initial_states(rng, (HEADS, DV, DK), [True])
    got = jax.jit(functools.partial(ssd_chunked, meta=packed_meta([n], [True], n), size=32))(state, x, dt, a, b, c, d)
    want_out, want_state = mamba2_chunk_scan(
        *(torch.from_numpy(np.array(y))[None] for y in (x, dt)),
        torch.from_numpy(np.array(a)),
        *(torch.from_numpy(np.array(y))[None] for y in (b, c)),
        chunk_size=32,
        D=torch.from_numpy(np.array(d)),
        initial_states=torch.from_numpy(np.array(state)),
        return_final_states=True,
    )
    assert relative_error(np.asarray(got[0]), want_out[0].numpy()) < CHUNKED_RTOL
    assert relative_error(np.asarray(got[1])[0], want_state[0].numpy()) < CHUNKED_RTOL


@pytest.mark.slow  # the fast tier's budget: its cases compile both forms, ~10 s on 2 CPU cores
@pytest.mark.parametrize("step_name", STEPS)
def test_chunked_lightning_matches_the_token_scan_on_packed_rows(step_name: str) -> None:
    """Slopes from 0.01 to 2.5 a token (MiniMax's first head decays by 0.92 where heads are 64): inside a chunk the
    decay underflows to zero (exp(-160)), which must leave no NaN (every exponent is <= 0)."""
    lens, continues, num_tokens = STEPS[step_name]
    rng = np.random.default_rng(2)
    meta = packed_meta(lens, continues, num_tokens)
    q, k, v = (jnp.asarray(rng.standard_normal((num_tokens, HEADS, DK)), jnp.float32) for _ in range(3))
    slopes = jnp.asarray([0.01, 0.1, 0.9, 2.5], jnp.float32)
    state = initial_states(rng, (HEADS, DK, DK), continues)
    got = jax.jit(chunked_lightning)(q, k, v, slopes, state, meta)
    out_like = jax.ShapeDtypeStruct((HEADS, DK), jnp.float32)
    step = functools.partial(lightning_step, jnp.exp(-slopes))
    want = jax.jit(lambda state, *xs: token_scan(step, state, xs, out_like, meta))(state, q, k, v)
    assert_rows_match(got, want, lens)

"""The recurrent state helpers on packed ragged rows against per-row NumPy loops: the causal conv1d continued from
each row's conv state, the row-wise recurrence driver, and the state pool's gather (fresh rows zeroed) and scatter;
a hybrid model's pool: pages for its attention layers, state pools for its recurrent ones."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jllm.attention import AttentionMetadata
from jllm.kv_cache import KVCacheSpec, allocate_kv_pool, num_state_slots
from jllm.models.recurrent_state import (
    StateSpec,
    causal_conv1d,
    from_chunks,
    gather_states,
    row_chunks,
    scan_chunks,
    scan_rows,
    scatter_states,
    to_chunks,
    token_rows,
    use_chunks,
)
from jllm.models.registry import build_args
from jllm.parallel import RECURRENT_HEADS

# three rows of a step padded to 12 tokens and 4 rows: a 5-token prefill chunk continuing its state, a decode, a
# fresh 3-token prompt, and a padding row
LENS, COMPUTED, SLOTS, NUM_TOKENS = [5, 1, 3, 0], [4, 9, 0, 0], [2, 1, 3, 0], 12


def step_meta() -> AttentionMetadata:
    qsl = np.cumsum([0, *LENS])
    kv_lens = np.add(LENS, COMPUTED)
    return AttentionMetadata(
        slot_mapping=jnp.zeros(NUM_TOKENS, jnp.int32),
        query_start_loc=jnp.asarray(qsl, jnp.int32),
        kv_lens=jnp.asarray(kv_lens, jnp.int32),
        block_tables=jnp.zeros((4, 1), jnp.int32),
        state_slots=jnp.asarray(SLOTS, jnp.int32),
    )


def test_token_rows_give_each_token_its_row_and_offset() -> None:
    row, offset, valid = (np.asarray(a) for a in token_rows(step_meta(), NUM_TOKENS))
    assert row[:9].tolist() == [0] * 5 + [1] + [2] * 3 and offset[:9].tolist() == [0, 1, 2, 3, 4, 0, 0, 1, 2]
    assert valid.tolist() == [True] * 9 + [False] * 3


def test_causal_conv1d_continues_each_row_from_its_conv_state() -> None:
    rng = np.random.default_rng(0)
    channels, kernel = 6, 4
    x = rng.standard_normal((NUM_TOKENS, channels)).astype(np.float32)
    weight = rng.standard_normal((channels, kernel)).astype(np.float32)
    state = rng.standard_normal((4, channels, kernel - 1)).astype(np.float32)
    y, new_state = causal_conv1d(jnp.asarray(x), jnp.asarray(weight), jnp.asarray(state), step_meta())
    start = 0
    for s, n in enumerate(LENS):
        ext = np.concatenate([state[s], x[start : start + n].T], axis=1)  # [C, K - 1 + n]
        for o in range(n):
            np.testing.assert_allclose(np.asarray(y)[start + o], (ext[:, o : o + kernel] * weight).sum(1), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(new_state)[s], ext[:, n:], rtol=1e-6)  # the last K - 1 inputs
        start += n


def test_scan_rows_steps_every_row_over_its_own_tokens() -> None:
    """A decaying running sum per row, from each row's carry: the packed outputs and final carries equal a loop."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((NUM_TOKENS, 3)).astype(np.float32)
    carry = rng.standard_normal((4, 3)).astype(np.float32)

    def step(c, xs):
        (xt,) = xs
        c = 0.5 * c + xt
        return c, 2.0 * c

    out_like = jnp.zeros(3, jnp.float32)
    outs, final = scan_rows(step, jnp.asarray(carry), (jnp.asarray(x),), out_like, step_meta())
    start = 0
    for s, n in enumerate(LENS):
        c = carry[s]
        for o in range(n):
            c = 0.5 * c + x[start + o]
            np.testing.assert_allclose(np.asarray(outs)[start + o], 2.0 * c, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(final)[s], c, rtol=1e-6)  # a row without tokens keeps its carry
        start += n
    assert not np.asarray(outs)[start:].any()  # padding tokens' outputs stay zero


def test_row_chunks_pad_each_row_to_whole_chunks_and_read_back_in_packed_order() -> None:
    """Chunks of 2: the 5-token row takes three (its last half padding), the decode one, the 3-token row two; the
    8 chunks any step of 12 tokens in 4 rows may need, the unused ones all padding. Padding gathers zeros. Chunks
    longer than the step shrink to it."""
    meta = step_meta()
    chunks = row_chunks(meta, NUM_TOKENS, 2)
    assert chunks.first.tolist() == [0, 3, 4, 6] and chunks.count.tolist() == [3, 1, 2, 0]
    x = jnp.arange(1, NUM_TOKENS + 1, dtype=jnp.float32)
    assert np.asarray(to_chunks(x, chunks)).tolist() == [[1, 2], [3, 4], [5, 0], [6, 0], [7, 8], [9, 0], [0, 0], [0, 0]]
    assert np.asarray(from_chunks(to_chunks(x, chunks), chunks, meta, NUM_TOKENS)).tolist() == [*range(1, 10), 0, 0, 0]
    assert row_chunks(meta, NUM_TOKENS, 64).size == NUM_TOKENS  # a step shorter than a chunk: one chunk a row
    assert use_chunks(NUM_TOKENS, 4) and not use_chunks(4, 4)  # a decode-only bucket keeps the token scan


def test_scan_chunks_steps_each_row_past_its_first_chunk_among_only_the_rows_that_can_go_on() -> None:
    """A mixed step of 2048 tokens in 64 rows (decodes, a 1985-token prefill third, padding rows), chunks of 64: a
    decaying running sum over each row's chunks equals a loop, and past the first chunk an iteration steps only as
    many rows as can have that many chunks (64 rows, then 31, 15, 7, 3, 1: one program each)."""
    lens = [1, 1, 1985] + [1] * 58 + [0] * 3
    meta = AttentionMetadata(
        slot_mapping=jnp.zeros(2048, jnp.int32),
        query_start_loc=jnp.asarray(np.cumsum([0, *lens]), jnp.int32),
        kv_lens=jnp.asarray(lens, jnp.int32),
        block_tables=jnp.zeros((64, 1), jnp.int32),
        state_slots=jnp.arange(64, dtype=jnp.int32),
    )
    chunks = row_chunks(meta, 2048, 64)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((chunks.token.shape[0], 3)).astype(np.float32)
    carry = rng.standard_normal((64, 3)).astype(np.float32)
    widths = []

    def step(c, xs):
        widths.append(c.shape[0])
        c = 0.5 * c + xs[0]
        return c, 2.0 * c

    scan = jax.jit(lambda c, x: scan_chunks(step, c, (x,), jnp.zeros(3, jnp.float32), chunks, 2048))
    outs, final = (np.asarray(a) for a in scan(carry, x))
    assert widths == [64, 31, 15, 7, 3, 1]
    first, count = np.asarray(chunks.first), np.asarray(chunks.count)
    assert count.tolist() == [1, 1, 32] + [1] * 58 + [0] * 3
    for s in range(64):
        c = carry[s]
        for n in range(first[s], first[s] + count[s]):
            c = 0.5 * c + x[n]
            np.testing.assert_allclose(outs[n], 2.0 * c, rtol=1e-6)
        np.testing.assert_allclose(final[s], c, rtol=1e-6)  # a padding row keeps its carry


def test_gather_zeroes_fresh_rows_and_scatter_writes_each_row_to_its_slot() -> None:
    spec = StateSpec(((2,),), (jnp.float32,))
    pool = (jnp.arange(8, dtype=jnp.float32).reshape(4, 2) + 1,)
    (rows,) = gather_states(pool, step_meta())
    assert np.asarray(rows).tolist() == [[5, 6], [3, 4], [0, 0], [0, 0]]  # rows 2 (fresh) and 3 (padding) zeroed
    (new_pool,) = scatter_states(pool, (jnp.full((4, 2), 9.0),), step_meta())
    assert np.asarray(new_pool)[1:].tolist() == [[9, 9]] * 3 and spec.bytes_per_slot == 8


def test_state_split_by_heads_costs_each_device_its_share_and_a_replicated_one_whole() -> None:
    spec = StateSpec(((8, 3), (2, 3)), (jnp.float32, jnp.bfloat16), ((RECURRENT_HEADS, None), (None, None)))
    assert spec.bytes_per_slot == 8 * 3 * 4 + 2 * 3 * 2
    assert spec.device_bytes_per_slot(4) == 8 * 3 * 4 // 4 + 2 * 3 * 2
    with pytest.raises(ValueError, match="axes .* do not match its shapes"):
        StateSpec(((8, 3),), (jnp.float32,), ((RECURRENT_HEADS,),))


def test_hybrid_pool_holds_pages_for_attention_layers_and_a_state_pool_for_recurrent_ones() -> None:
    """Qwen3-Next's layers 0 and 2 gated DeltaNet, 1 and 3 attention: pages cost the two attention layers alone, and
    the state pools (conv state in the model's dtype, the recurrent state in float32) are counted per slot."""
    config = dict(
        architectures=["Qwen3NextForCausalLM"],
        vocab_size=160,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        layer_types=["linear_attention", "full_attention"] * 2,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        num_experts=0,
    )
    args = build_args(config, jnp.bfloat16)[1]
    spec = KVCacheSpec.for_model(args, page_size=16, dtype=jnp.bfloat16)
    conv_dim = 2 * 2 * 8 + 4 * 8
    assert spec.num_layers == 2 and spec.bytes_per_page == 2 * 2 * 2 * 16 * 16 * 2
    assert [s is None for s in spec.layer_states] == [False, True, False, True]
    assert spec.state_bytes(num_state_slots(args, max_num_seqs=3)) == 2 * 4 * (conv_dim * 3 * 2 + 4 * 8 * 8 * 4)
    # under tensor parallelism both states split by heads: each of 2 devices holds half of every slot
    assert spec.state_bytes(4, shards=2) == spec.state_bytes(4) // 2
    pool = allocate_kv_pool(spec, num_pages=3, num_state_slots=4)
    assert [tuple(x.shape for x in layer) if isinstance(layer, tuple) else layer.shape for layer in pool] == [
        ((4, conv_dim, 3), (4, 4, 8, 8)),
        (2, 2, 3, 16, 16),
        ((4, conv_dim, 3), (4, 4, 8, 8)),
        (2, 2, 3, 16, 16),
    ]
    assert pool[0][1].dtype == jnp.float32 and pool[0][0].dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="num_state_slots=0 is too small"):
        allocate_kv_pool(spec, num_pages=3)

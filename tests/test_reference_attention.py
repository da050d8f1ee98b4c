"""The pure-jnp paged attention and KV write against a float64 NumPy oracle over contiguous per-sequence K/V.

Every case builds its paged pool from contiguous K/V with randomly permuted page assignments (sequences' pages
interleave), over a pool first filled with large garbage: page 0, the tail of each sequence's last page and unused
pages all hold junk that the masks must hide.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import zlib
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels.reference as reference
from pallas_kernels import PADDING_SLOT, ref_ragged_paged_attention, write_kv

GARBAGE = 1e6  # scale of the junk in unwritten slots


@dataclass
class Case:
    """One step's inputs, plus the contiguous K/V the oracle reads."""

    q: jax.Array  # [T, Hq, D]
    kv_pages: jax.Array  # [2, Hkv, num_pages, page_size, D]
    kv_lens: jax.Array  # i32[S]
    block_tables: jax.Array  # i32[S, pages_per_seq]
    query_start_loc: jax.Array  # i32[S + 1]
    keys: list[np.ndarray]  # per sequence f64[kv_len, Hkv, D], as stored (dtype-rounded)
    values: list[np.ndarray]  # per sequence f64[kv_len, Hkv, Dv]; Dv < D: a latent pool's (its keys' first channels)
    num_real_rows: int  # rows past this are padding


def make_case(
    seed: int,
    q_lens: list[int],
    kv_lens: list[int],
    *,
    page_size: int,
    num_kv_heads: int = 2,
    group: int = 1,
    head_dim: int = 64,
    pad_rows: int = 0,
    dtype: jnp.dtype = jnp.float32,
    q_scale: float = 1.0,
    garbage: float = GARBAGE,
) -> Case:
    rng = np.random.default_rng(seed)
    pages_needed = [-(-n // page_size) for n in kv_lens]
    pages_per_seq = max(pages_needed) + 1  # one spare column so every table has padded (0) entries
    num_pages = 1 + sum(pages_needed) + 3  # page 0, the sequences' pages, a few never-used pages
    pool = garbage * rng.standard_normal((2, num_kv_heads, num_pages, page_size, head_dim))  # f64
    free_pages = 1 + rng.permutation(num_pages - 1)  # interleave the sequences' pages
    block_tables = np.zeros((len(kv_lens), pages_per_seq), np.int32)
    keys, values = [], []
    for s, (kv_len, n_pages) in enumerate(zip(kv_lens, pages_needed, strict=True)):
        block_tables[s, :n_pages], free_pages = free_pages[:n_pages], free_pages[n_pages:]
        kv = np.asarray(jnp.asarray(rng.standard_normal((2, kv_len, num_kv_heads, head_dim)), dtype), np.float64)
        keys.append(kv[0])
        values.append(kv[1])
        for t in range(kv_len):
            pool[:, :, block_tables[s, t // page_size], t % page_size] = kv[:, t]
    num_real_rows = sum(q_lens)
    q = q_scale * rng.standard_normal((num_real_rows + pad_rows, num_kv_heads * group, head_dim))
    return Case(
        q=jnp.asarray(q, dtype),
        kv_pages=jnp.asarray(pool, dtype),
        kv_lens=jnp.asarray(kv_lens, jnp.int32),
        block_tables=jnp.asarray(block_tables),
        query_start_loc=jnp.asarray(np.concatenate([[0], np.cumsum(q_lens)]), jnp.int32),
        keys=keys,
        values=values,
        num_real_rows=num_real_rows,
    )


def numpy_attention(
    case: Case,
    *,
    sm_scale: float,
    soft_cap: float | None = None,
    sliding_window: int | None = None,
    sinks: jax.Array | None = None,
    alibi_slopes: jax.Array | None = None,
) -> np.ndarray:
    """Straightforward float64 attention per sequence over contiguous K/V (GQA by repeating KV heads); ``sinks``
    [Hq] as transformers' gpt-oss has them: one more logit column per head, dropped after the softmax;
    ``alibi_slopes`` [Hq] as transformers' Bloom has them: each head's slope times the key's absolute position."""
    q = np.asarray(case.q, np.float64)  # [T, Hq, D]
    group = q.shape[1] // case.keys[0].shape[1] if case.keys else 1
    qsl = np.asarray(case.query_start_loc)
    out = np.zeros((*q.shape[:2], case.values[0].shape[-1]))  # [T, Hq, Dv]
    for s, kv_len in enumerate(np.asarray(case.kv_lens)):
        start, end = qsl[s], qsl[s + 1]
        q_len = end - start
        if q_len == 0:
            continue
        k = np.repeat(case.keys[s], group, axis=1)  # [kv_len, Hq, D]
        v = np.repeat(case.values[s], group, axis=1)  # [kv_len, Hq, D]
        logits = np.einsum("qhd,khd->hqk", q[start:end], k) * sm_scale  # [Hq, q_len, kv_len]
        if soft_cap is not None:
            logits = soft_cap * np.tanh(logits / soft_cap)
        i = np.arange(q_len)[:, None]
        col = np.arange(kv_len)[None, :]
        if alibi_slopes is not None:
            logits = logits + np.asarray(alibi_slopes, np.float64)[:, None, None] * col
        visible = col <= kv_len - q_len + i
        if sliding_window is not None:
            visible &= col > kv_len - q_len + i - sliding_window
        logits = np.where(visible, logits, -np.inf)
        if sinks is not None:
            sink = np.broadcast_to(np.asarray(sinks, np.float64)[:, None, None], (*logits.shape[:2], 1))
            logits = np.concatenate([logits, sink], axis=-1)
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        out[start:end] = np.einsum("hqk,khd->qhd", probs[..., :kv_len], v)
    return out


def run_attention(case: Case, **kwargs) -> np.ndarray:
    """The reference under jit (a fresh trace each call, so monkeypatched tuning constants take effect)."""
    fn = jax.jit(functools.partial(ref_ragged_paged_attention, **kwargs))
    out = fn(case.q, case.kv_pages, case.kv_lens, case.block_tables, case.query_start_loc)
    assert out.shape == (*case.q.shape[:2], case.values[0].shape[-1]) and out.dtype == case.q.dtype
    return np.asarray(out.astype(jnp.float32), np.float64)


def assert_matches_oracle(case: Case, **kwargs) -> None:
    got = run_attention(case, **kwargs)
    kwargs.pop("q_block", None)
    kwargs.pop("value_dim", None)
    want = numpy_attention(case, **kwargs)
    tol = 1e-5 if case.q.dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    assert np.all(got[case.num_real_rows :] == 0), "padding rows must be exactly zero"


def batch(kind: str, ps: int) -> tuple[list[int], list[int]]:
    """(q_lens, kv_lens) for one kind of step; kv lengths sit on and one past page boundaries."""
    return {
        "decode": ([1] * 6, [ps, ps + 1, 1, 3 * ps, 2 * ps + 1, ps - 1]),
        "prefill": ([ps, ps + 1, 2 * ps - 3], [ps, ps + 1, 2 * ps - 3]),
        "mixed": ([ps + 1, 1, 7, 1, 2 * ps], [3 * ps + 1, 2 * ps, ps, 1, 2 * ps]),
        "padded": ([3, 0, 1, ps, 0, 0], [2 * ps, 0, ps + 1, 2 * ps, 0, 0]),
    }[kind]


LAYOUTS = [  # (page_size, head_dim, num_kv_heads, group): every page size, head_dim and GQA ratio appears
    (16, 64, 2, 1),
    (32, 128, 2, 4),
    (64, 64, 1, 8),
    (16, 128, 1, 8),
]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["decode", "prefill", "mixed", "padded"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lo: "ps{}-d{}-kv{}-g{}".format(*lo))
def test_matches_numpy_oracle_over_batch_kinds_and_layouts(kind: str, layout: tuple[int, int, int, int]) -> None:
    page_size, head_dim, num_kv_heads, group = layout
    q_lens, kv_lens = batch(kind, page_size)
    case = make_case(
        zlib.crc32(f"{kind}{layout}".encode()),
        q_lens,
        kv_lens,
        page_size=page_size,
        head_dim=head_dim,
        num_kv_heads=num_kv_heads,
        group=group,
        pad_rows=5 if kind == "padded" else 0,
    )
    assert_matches_oracle(case, sm_scale=head_dim**-0.5)


@pytest.mark.slow
@pytest.mark.parametrize("q_block", [1, 3, 8, 64])
def test_any_query_block_gives_the_same_answer(q_block: int) -> None:
    q_lens, kv_lens = batch("mixed", 16)
    case = make_case(1, q_lens, kv_lens, page_size=16, group=4, pad_rows=3)
    assert_matches_oracle(case, sm_scale=0.125, q_block=q_block)


@pytest.mark.slow
@pytest.mark.parametrize("q_block", [4, None])
@pytest.mark.parametrize("batch_elems", [1, 300_000])
def test_items_looped_in_batches_with_a_ragged_tail_match(
    monkeypatch: pytest.MonkeyPatch, batch_elems: int, q_block: int | None
) -> None:
    # One item per loop iteration, and several items per iteration with spare (invalid) items padding the last one.
    monkeypatch.setattr(reference, "_BATCH_ELEMS", batch_elems)
    q_lens, kv_lens = batch("mixed", 16)
    case = make_case(2, q_lens, kv_lens, page_size=16, group=4, pad_rows=2)
    assert_matches_oracle(case, sm_scale=0.125, q_block=q_block)


def test_latent_pool_reads_values_as_the_first_channels_of_its_one_row() -> None:
    """A latent pool ``[1, ...]`` (DeepSeek's latent attention: 4 query heads over one KV head here): each token's
    one row is its key, and its first ``value_dim`` channels its value; a mixed step, padded rows zero."""
    q_lens, kv_lens = batch("mixed", 16)
    case = make_case(11, q_lens, kv_lens, page_size=16, num_kv_heads=1, group=4, head_dim=40, pad_rows=2)
    latent = dataclasses.replace(case, kv_pages=case.kv_pages[:1], values=[k[..., :32] for k in case.keys])
    assert_matches_oracle(latent, sm_scale=40**-0.5, value_dim=32)


@pytest.mark.slow
def test_bf16_inputs_match_within_one_percent() -> None:
    q_lens, kv_lens = batch("mixed", 32)
    case = make_case(3, q_lens, kv_lens, page_size=32, head_dim=128, group=4, pad_rows=3, dtype=jnp.bfloat16)
    assert_matches_oracle(case, sm_scale=128**-0.5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("soft_cap", "sliding_window"), [(5.0, None), (None, 1), (None, 7), (None, 20), (5.0, 20)], ids=str
)
def test_soft_cap_and_sliding_window(soft_cap: float | None, sliding_window: int | None) -> None:
    q_lens, kv_lens = batch("mixed", 16)
    # Large logits (std ~8) so that the soft cap changes the answer.
    case = make_case(4, q_lens, kv_lens, page_size=16, group=4, pad_rows=2, q_scale=8.0)
    assert_matches_oracle(case, sm_scale=64**-0.5, soft_cap=soft_cap, sliding_window=sliding_window)
    if soft_cap is not None:
        uncapped = run_attention(case, sm_scale=64**-0.5, sliding_window=sliding_window)
        assert not np.allclose(uncapped, run_attention(case, sm_scale=64**-0.5, soft_cap=soft_cap)), "cap had no effect"


@pytest.mark.slow
@pytest.mark.parametrize("sliding_window", [None, 7])
def test_attention_sinks_join_each_rows_softmax(sliding_window: int | None) -> None:
    """gpt-oss's sinks: each query head's logit beside its row's keys in the softmax, with no value; rows of prefill
    chunks, decodes and padding (which stay 0)."""
    q_lens, kv_lens = batch("padded", 16)
    case = make_case(5, q_lens, kv_lens, page_size=16, group=4, pad_rows=2, q_scale=2.0)
    sinks = jnp.asarray(np.random.default_rng(6).normal(size=8) * 3.0, jnp.float32)
    assert_matches_oracle(case, sm_scale=0.125, sliding_window=sliding_window, sinks=sinks)
    plain = run_attention(case, sm_scale=0.125, sliding_window=sliding_window)
    assert not np.allclose(plain, run_attention(case, sm_scale=0.125, sliding_window=sliding_window, sinks=sinks))


@pytest.mark.slow
@pytest.mark.parametrize("sliding_window", [None, 7])
def test_alibi_bias_grows_linearly_with_the_key_position(sliding_window: int | None) -> None:
    """ALiBi (Bloom, MPT): each query head's slope times the key's position joins its scores; rows of prefill
    chunks, decodes and padding (which stay 0)."""
    q_lens, kv_lens = batch("mixed", 16)
    case = make_case(7, q_lens, kv_lens, page_size=16, group=4, pad_rows=2)
    slopes = jnp.asarray(2.0 ** -np.arange(1, 9), jnp.float32)
    assert_matches_oracle(case, sm_scale=0.125, sliding_window=sliding_window, alibi_slopes=slopes)
    plain = run_attention(case, sm_scale=0.125, sliding_window=sliding_window)
    assert not np.allclose(
        plain, run_attention(case, sm_scale=0.125, sliding_window=sliding_window, alibi_slopes=slopes)
    )


@pytest.mark.slow
def test_stale_page_contents_never_leak() -> None:
    # Two pools agree on every written slot and differ everywhere else: outputs must be bit-identical.
    q_lens, kv_lens = batch("padded", 16)
    a = make_case(5, q_lens, kv_lens, page_size=16, group=4, pad_rows=4, garbage=1e30)
    b = make_case(5, q_lens, kv_lens, page_size=16, group=4, pad_rows=4, garbage=0.0)
    written = np.asarray(b.kv_pages) != 0
    assert not np.array_equal(np.asarray(a.kv_pages)[~written], np.asarray(b.kv_pages)[~written])
    out_a, out_b = run_attention(a, sm_scale=0.125), run_attention(b, sm_scale=0.125)
    assert np.all(np.isfinite(out_a))
    np.testing.assert_array_equal(out_a, out_b)


@pytest.mark.slow
def test_chunked_prefill_then_decode_through_write_kv() -> None:
    # Two steps the way the runner drives them: write this step's K/V with write_kv, then attend.
    rng = np.random.default_rng(6)
    page_size, num_kv_heads, group, head_dim = 16, 2, 4, 64
    num_pages = 12
    step = jax.jit(
        lambda pool, q, k, v, slots, kv_lens, tables, qsl: ref_ragged_paged_attention(
            q, write_kv(pool, k, v, slots), kv_lens, tables, qsl, sm_scale=0.125
        )
    )
    pool = jnp.asarray(GARBAGE * rng.standard_normal((2, num_kv_heads, num_pages, page_size, head_dim)), jnp.float32)
    tables = np.array([[5, 2, 9, 0], [7, 3, 0, 0]], np.int32)  # sequences of 40 and 20 tokens
    total = [40, 20]
    k_all = [rng.standard_normal((n, num_kv_heads, head_dim)).astype(np.float32) for n in total]
    v_all = [rng.standard_normal((n, num_kv_heads, head_dim)).astype(np.float32) for n in total]
    q_all = [rng.standard_normal((n, num_kv_heads * group, head_dim)).astype(np.float32) for n in total]

    # Step 1: prefill chunks [0, 30) of seq 0 and [0, 19) of seq 1. Step 2: seq 0 [30, 40), seq 1 decodes token 19.
    for chunks in ([(0, 30), (0, 19)], [(30, 40), (19, 20)]):
        pad = 3
        rows = [(s, t) for s, (lo, hi) in enumerate(chunks) for t in range(lo, hi)]
        slots = [tables[s, t // page_size] * page_size + t % page_size for s, t in rows] + list(range(pad))
        q = np.concatenate([q_all[s][t][None] for s, t in rows] + [np.ones((pad, num_kv_heads * group, head_dim))])
        k = np.concatenate([k_all[s][t][None] for s, t in rows] + [np.ones((pad, num_kv_heads, head_dim))])
        v = np.concatenate([v_all[s][t][None] for s, t in rows] + [np.ones((pad, num_kv_heads, head_dim))])
        kv_lens = np.array([hi for _, hi in chunks], np.int32)
        qsl = np.concatenate([[0], np.cumsum([hi - lo for lo, hi in chunks])]).astype(np.int32)
        args = [jnp.asarray(x, jnp.float32) for x in (q, k, v)]
        out = step(pool, *args, jnp.asarray(slots, jnp.int32), *map(jnp.asarray, (kv_lens, tables, qsl)))
        pool = write_kv(pool, args[1], args[2], jnp.asarray(slots, jnp.int32))
        case = Case(
            q=args[0],
            kv_pages=pool,
            kv_lens=jnp.asarray(kv_lens),
            block_tables=jnp.asarray(tables),
            query_start_loc=jnp.asarray(qsl),
            keys=[k_all[s][:hi].astype(np.float64) for s, (_, hi) in enumerate(chunks)],
            values=[v_all[s][:hi].astype(np.float64) for s, (_, hi) in enumerate(chunks)],
            num_real_rows=len(rows),
        )
        np.testing.assert_allclose(np.asarray(out), numpy_attention(case, sm_scale=0.125), rtol=1e-5, atol=1e-5)
        assert np.all(np.asarray(out)[len(rows) :] == 0)


def test_write_kv_puts_each_token_at_its_slot_and_padding_nowhere() -> None:
    rng = np.random.default_rng(7)
    num_kv_heads, num_pages, page_size, head_dim = 2, 9, 16, 64
    pool = rng.standard_normal((2, num_kv_heads, num_pages, page_size, head_dim)).astype(np.float32)
    real_slots = page_size + rng.permutation((num_pages - 1) * page_size)[:37]  # distinct slots outside page 0
    pad_slots = np.full(5, PADDING_SLOT)  # repeated: every padded token's
    slots = np.concatenate([real_slots[:20], pad_slots[:2], real_slots[20:], pad_slots[2:]]).astype(np.int32)
    k = rng.standard_normal((len(slots), num_kv_heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((len(slots), num_kv_heads, head_dim)).astype(np.float32)

    before = jnp.asarray(pool)
    after = np.asarray(jax.jit(write_kv, donate_argnums=0)(before, k, v, jnp.asarray(slots)))
    assert before.is_deleted(), "the donated pool should be updated in place"

    expected = pool.copy()
    for t, slot in enumerate(slots):
        if slot != PADDING_SLOT:
            expected[0, :, slot // page_size, slot % page_size] = k[t]
            expected[1, :, slot // page_size, slot % page_size] = v[t]
    np.testing.assert_array_equal(after, expected)  # every other slot, page 0's included, as it was


@pytest.mark.parametrize("slot", [5 * 16 + 3, PADDING_SLOT, -1], ids=["real", "padding", "negative"])
def test_one_token_write_lands_at_its_slot_or_in_reserved_page_0(slot: int) -> None:
    """A one-token step writes with a dynamic-update-slice: its slot past the pool goes to page 0's first slot."""
    rng = np.random.default_rng(8)
    pool = rng.standard_normal((2, 2, 9, 16, 64)).astype(np.float32)
    k, v = (rng.standard_normal((1, 2, 64)).astype(np.float32) for _ in range(2))
    before = jnp.asarray(pool)
    after = np.asarray(jax.jit(write_kv, donate_argnums=0)(before, k, v, jnp.asarray([slot], jnp.int32)))
    assert before.is_deleted(), "the donated pool should be updated in place"
    target = slot if 0 <= slot < 9 * 16 else 0
    expected = pool.copy()
    expected[0, :, target // 16, target % 16], expected[1, :, target // 16, target % 16] = k[0], v[0]
    np.testing.assert_array_equal(after, expected)


def test_the_write_is_declared_a_scatter_of_distinct_slots() -> None:
    """What lets a GPU store each row instead of looping compare-and-swap per element (docs/benchmarks.md)."""
    pool = jax.ShapeDtypeStruct((2, 2, 4, 16, 64), jnp.bfloat16)
    rows = jax.ShapeDtypeStruct((8, 2, 64), jnp.bfloat16)
    hlo = jax.jit(write_kv).lower(pool, rows, rows, jax.ShapeDtypeStruct((8,), jnp.int32)).as_text(dialect="hlo")
    scatters = [line for line in hlo.splitlines() if " scatter(" in line]
    assert scatters and all("unique_indices=true" in line for line in scatters)


@pytest.mark.parametrize("latent", [False, True], ids=["kv", "latent"])
@pytest.mark.parametrize("num_seqs", [1, 4])
def test_decode_step_with_a_donated_pool_never_copies_the_pool(num_seqs: int, latent: bool) -> None:
    # One-token steps once copied the whole pool four times (XLA duplicated the scatter into each of its readers).
    # Copies only show in the optimized HLO: none may be as large as the pool, which dwarfs every gathered chunk.
    # Block tables of 32 pages (more than one chunk of the page loop) are where the copies appeared. A latent pool's
    # values are a slice of each gathered chunk, never of the pool.
    planes, value_dim = (1, 48) if latent else (2, None)
    pool = jax.ShapeDtypeStruct((planes, 2, 1024, 16, 64), jnp.float32)  # [planes, Hkv, num_pages, page_size, D]
    q = jax.ShapeDtypeStruct((num_seqs, 8, 64), jnp.float32)  # [T, Hq, D], one token per sequence
    kv = jax.ShapeDtypeStruct((num_seqs, 2, 64), jnp.float32)  # [T, Hkv, D]
    i32 = functools.partial(jax.ShapeDtypeStruct, dtype=jnp.int32)
    meta = (i32((num_seqs,)), i32((num_seqs,)), i32((num_seqs, 32)), i32((num_seqs + 1,)))

    def step(pool, q, k, v, slots, kv_lens, tables, qsl):
        pool = write_kv(pool, k, None if latent else v, slots)
        out = ref_ragged_paged_attention(q, pool, kv_lens, tables, qsl, sm_scale=0.125, value_dim=value_dim)
        return out, pool

    hlo = jax.jit(step, donate_argnums=0).lower(pool, q, kv, kv, *meta).compile().as_text()
    copies = [math.prod(map(int, dims.split(","))) for dims in re.findall(r"= \w+\[([\d,]+)\]\S* copy\(", hlo)]
    assert max(copies, default=0) < math.prod(pool.shape), f"the step copies the pool: copy sizes {sorted(copies)}"


def test_write_kv_casts_to_the_pool_dtype() -> None:
    rng = np.random.default_rng(8)
    pool = jnp.zeros((2, 1, 3, 4, 8), jnp.bfloat16)
    k, v = (jnp.asarray(rng.standard_normal((2, 1, 8)), jnp.float32) for _ in range(2))
    out = write_kv(pool, k, v, jnp.asarray([4, 9], jnp.int32))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out[0, :, 1, 0]), np.asarray(k[0].astype(jnp.bfloat16)))
    np.testing.assert_array_equal(np.asarray(out[1, :, 2, 1]), np.asarray(v[1].astype(jnp.bfloat16)))


def test_write_kv_stores_a_latent_row_once_and_refuses_a_layout_mismatch() -> None:
    rng = np.random.default_rng(9)
    pool = jnp.zeros((1, 2, 3, 4, 8), jnp.float32)  # [1, Hkv, num_pages, page_size, D]: a latent pool
    k = jnp.asarray(rng.standard_normal((2, 2, 8)), jnp.float32)
    out = write_kv(pool, k, None, jnp.asarray([4, 9], jnp.int32))
    assert out.shape == pool.shape
    np.testing.assert_array_equal(np.asarray(out[0, :, 1, 0]), np.asarray(k[0]))
    np.testing.assert_array_equal(np.asarray(out[0, :, 2, 1]), np.asarray(k[1]))
    assert np.count_nonzero(np.asarray(out)) == np.count_nonzero(np.asarray(k))  # nothing else written
    slots = jnp.asarray([4, 9], jnp.int32)
    with pytest.raises(ValueError, match=r"kv_pages must be \[2, num_kv_heads"):
        write_kv(pool, k, k, slots)
    with pytest.raises(ValueError, match=r"kv_pages must be a latent pool \[1, ...\] \(v None\)"):
        write_kv(jnp.zeros((2, 2, 3, 4, 8)), k, None, slots)
    with pytest.raises(ValueError, match="scaled by k_scale; v_scale must be left 1.0"):
        write_kv(pool, k, None, slots, v_scale=2.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {**a, "q": a["q"][0]}, "q must be"),
        (lambda a: {**a, "kv_pages": a["kv_pages"][0]}, "kv_pages must be"),
        (lambda a: {**a, "kv_pages": a["kv_pages"][:1]}, r"kv_pages must be \[2, .*latent pool .* value_dim"),
        (lambda a: {**a, "value_dim": 32}, r"kv_pages must be a latent pool \[1, ...\]"),
        (lambda a: {**a, "kv_pages": a["kv_pages"][:1], "value_dim": 65}, "value_dim=65 must be in"),
        (lambda a: {**a, "q": a["q"][:, :3]}, "not a multiple of num_kv_heads"),
        (lambda a: {**a, "q": a["q"][..., :32]}, "head_dim"),
        (lambda a: {**a, "kv_lens": a["kv_lens"].astype(jnp.float32)}, "kv_lens must be i32"),
        (lambda a: {**a, "query_start_loc": a["query_start_loc"][:-1]}, "query_start_loc must be i32"),
        (lambda a: {**a, "block_tables": a["block_tables"][:1]}, "kv_lens must be i32"),
        (lambda a: {**a, "q": a["q"].astype(jnp.int32)}, "floating point"),
    ],
)
def test_bad_inputs_fail_at_trace_time_with_a_clear_message(change, message: str) -> None:
    case = make_case(9, [2, 1], [5, 3], page_size=16, num_kv_heads=2, group=2)
    args = dict(
        q=case.q,
        kv_pages=case.kv_pages,
        kv_lens=case.kv_lens,
        block_tables=case.block_tables,
        query_start_loc=case.query_start_loc,
    )
    args = change(args)
    static = {"value_dim": args.pop("value_dim")} if "value_dim" in args else {}
    with pytest.raises(ValueError, match=message):
        jax.jit(functools.partial(ref_ragged_paged_attention, sm_scale=0.1, **static))(**args)


def test_bad_options_are_rejected() -> None:
    case = make_case(10, [1], [3], page_size=16)
    args = (case.q, case.kv_pages, case.kv_lens, case.block_tables, case.query_start_loc)
    with pytest.raises(ValueError, match="soft_cap"):
        ref_ragged_paged_attention(*args, sm_scale=0.1, soft_cap=0.0)
    with pytest.raises(ValueError, match="sliding_window"):
        ref_ragged_paged_attention(*args, sm_scale=0.1, sliding_window=0)
    with pytest.raises(ValueError, match="slot_mapping"):
        write_kv(case.kv_pages, case.q, case.q, jnp.zeros((2,), jnp.int32))


def test_sequence_of_matches_searchsorted():
    """The loop-free search the kernels' wrappers use, against NumPy on random cumulative ends with empty sequences."""
    rng = np.random.default_rng(5)
    for _ in range(8):  # each shape compiles anew
        ends = np.cumsum(rng.integers(0, 4, size=rng.integers(1, 9))).astype(np.int32)
        index = np.arange(ends[-1] + 3, dtype=np.int32)
        expected = np.searchsorted(ends, index, side="right")
        np.testing.assert_array_equal(
            np.asarray(reference.sequence_of(jnp.asarray(ends), jnp.asarray(index))), expected
        )

"""DeepSeek Sparse Attention (DSA) in pure jnp: the lightning indexer's top-k selection over a paged key pool, and
latent attention over the selected tokens alone (DeepSeek-V3.2, GLM-5).

The indexer keeps one key of ``index_head_dim`` channels per token in its own pool, laid out as a latent pool
(``[1, num_kv_heads, num_pages, page_size, index_head_dim]``, the copies tensor parallelism keeps) on the same pages
as the layer's latent rows, so one block table addresses both. Query row i of a sequence scores every key column c
it may see (``c <= kv_len - q_len + i``) as transformers' ``DeepseekV32Indexer`` does,
``sum_h w[i, h] * relu(sm_scale * q[i, h] . k[c])``, and keeps the ``topk`` best columns (all of them where it sees
no more). The attention then gathers each row's selected latent rows and attends over them: ``topk`` keys a row,
whatever the context's length. With no more keys than ``topk`` that is the whole causal context, and the result is
dense latent attention's.

The selection runs over the reference's work items (``reference.run_items``: a prefill's rows in blocks that gather
their sequence's keys once), a chunk of pages at a time, merging each chunk's scores into a running top-k, so its
intermediates stay chunk-sized and a step pays for its live lengths.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.kv_quant import dequantize
from pallas_kernels.reference import over_query_blocks, page_chunk, run_items, sequence_of, validate_metadata

# Elements of f32 intermediates per loop iteration (the selection's scores, the attention's gathered rows): small,
# as the reference attention's, so that a batch's buffers stay cache-sized on the CPU.
_BATCH_ELEMS = 1 << 19
_HIGHEST = jax.lax.Precision.HIGHEST  # an oracle must not drop to TF32 on a GPU
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite, as the reference's: no NaN where nothing is selected


def ref_index_topk(
    index_q: jax.Array,  # [T, index_heads, index_head_dim]
    weights: jax.Array,  # f32[T, index_heads], each head's weight in a row's score
    index_pages: jax.Array,  # [1, num_kv_heads, num_pages, page_size, index_head_dim]; head 0 read (copies agree)
    kv_lens: jax.Array,  # i32[S], each sequence's KV length including this step's tokens
    block_tables: jax.Array,  # i32[S, pages_per_seq]
    query_start_loc: jax.Array,  # i32[S + 1]
    *,
    topk: int,
    sm_scale: float,
    q_block: int | None = None,
) -> jax.Array:  # i32[T, min(topk, pages_per_seq * page_size)]: key columns, best first; -1 past a row's keys
    """Each query row's ``topk`` key columns by the indexer's score (all it sees where it sees fewer; padding rows
    select none). ``q_block`` only tunes speed, as the reference attention's does."""
    _validate_index(index_q, weights, index_pages, topk)
    validate_metadata(kv_lens, block_tables, query_start_loc)
    page_size = index_pages.shape[3]
    k = min(topk, block_tables.shape[1] * page_size)
    out = jnp.full((index_q.shape[0], k), -1, jnp.int32)
    q_lens = query_start_loc[1:] - query_start_loc[:-1]  # i32[S]
    select = functools.partial(
        _select_blocks, index_q, weights, index_pages, kv_lens, block_tables, query_start_loc, sm_scale=sm_scale
    )
    return over_query_blocks(out, q_lens, block_tables.shape[0], q_block, select)


def _select_blocks(
    index_q: jax.Array,  # [T, Hi, Di]
    weights: jax.Array,  # f32[T, Hi]
    index_pages: jax.Array,  # [1, Hkv, num_pages, page_size, Di]
    kv_lens: jax.Array,  # i32[S]
    block_tables: jax.Array,  # i32[S, pages_per_seq]
    query_start_loc: jax.Array,  # i32[S + 1]
    out: jax.Array,  # i32[T, K], the rows selected so far
    q_lens: jax.Array,  # i32[S], 0 for the sequences another call handles
    bq: int,
    max_items: int,
    *,
    sm_scale: float,
) -> jax.Array:  # i32[T, K]
    """The selection of the rows of sequences with ``q_lens > 0``, in work items of ``bq`` rows."""
    num_heads, head_dim = index_q.shape[1:]
    num_pages, page_size = index_pages.shape[2:4]
    topk = out.shape[1]
    chunk_pages = page_chunk(block_tables.shape[1], page_size, bq)
    chunk_len = chunk_pages * page_size
    item_elems = bq * num_heads * chunk_len + chunk_len * head_dim + 2 * bq * (topk + chunk_len)
    per_batch = max(1, min(max_items, _BATCH_ELEMS // item_elems))
    keys = index_pages[0, 0].reshape(num_pages, page_size * head_dim)  # whole pages as rows: a fast 2-D gather

    def items(rows: jax.Array, seq: jax.Array, last_col: jax.Array) -> jax.Array:  # i32[B, bq, K]
        q = index_q[rows].astype(jnp.float32)  # f32[B, bq, Hi, Di]
        w = weights[rows].astype(jnp.float32)  # f32[B, bq, Hi]
        pages = block_tables[seq]
        pages = jnp.pad(pages, ((0, 0), (0, -pages.shape[1] % chunk_pages)))  # i32[B, C * chunk_pages], pad: page 0
        num_chunks = jnp.clip(jnp.max(last_col) // chunk_len + 1, 0, pages.shape[1] // chunk_pages)  # i32[], dynamic

        def select_chunk(c: jax.Array, best: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
            scores, cols = best  # f32[B, bq, K], i32[B, bq, K]
            chunk = jax.lax.dynamic_slice_in_dim(pages, c * chunk_pages, chunk_pages, axis=1)  # i32[B, chunk_pages]
            loaded = jnp.take(keys, jnp.clip(chunk, 0, num_pages - 1).reshape(-1), axis=0)
            k = dequantize(loaded, jnp.float32).reshape(len(chunk), chunk_len, head_dim)  # f32[B, L, Di]
            per_head = jax.nn.relu(jnp.einsum("bqhd,bld->bqhl", q, k, precision=_HIGHEST) * sm_scale)
            chunk_scores = jnp.einsum("bqh,bqhl->bql", w, per_head, precision=_HIGHEST)  # f32[B, bq, L]
            col = c * chunk_len + jnp.arange(chunk_len, dtype=jnp.int32)  # i32[L]
            chunk_scores = jnp.where(col <= last_col[:, :, None], chunk_scores, -jnp.inf)
            merged = jnp.concatenate([scores, chunk_scores], axis=-1)  # f32[B, bq, K + L]
            merged_cols = jnp.concatenate([cols, jnp.broadcast_to(col, chunk_scores.shape)], axis=-1)
            scores, best_at = jax.lax.top_k(merged, topk)
            return scores, jnp.take_along_axis(merged_cols, best_at, axis=-1)

        init = (jnp.full((*last_col.shape, topk), -jnp.inf), jnp.full((*last_col.shape, topk), -1, jnp.int32))
        scores, cols = jax.lax.fori_loop(0, num_chunks, select_chunk, init)
        return jnp.where(scores > -jnp.inf, cols, -1)  # a row's picks past its keys: none

    return run_items(out, q_lens, query_start_loc, kv_lens, bq, per_batch, items)


def ref_sparse_latent_attention(
    q: jax.Array,  # [T, num_q_heads, latent_dim]
    kv_pages: jax.Array,  # [1, num_kv_heads, num_pages, page_size, latent_dim], a latent pool
    selected: jax.Array,  # i32[T, K]: each row's key columns (``ref_index_topk``), -1 for none
    block_tables: jax.Array,  # i32[S, pages_per_seq]
    query_start_loc: jax.Array,  # i32[S + 1]
    *,
    sm_scale: float,
    value_dim: int,
) -> jax.Array:  # [T, num_q_heads, value_dim] in q's dtype; padding rows and rows selecting nothing are 0
    """Attention of each query row over its ``selected`` latent rows alone, their first ``value_dim`` channels the
    values (a latent pool's); fp32 softmax. GQA as the reference's: query head h reads KV head ``h // group``."""
    _validate_sparse(q, kv_pages, selected, block_tables, query_start_loc, value_dim)
    num_tokens, num_q_heads, head_dim = q.shape
    _, num_kv_heads, num_pages, page_size, _ = kv_pages.shape
    num_seqs, topk = block_tables.shape[0], selected.shape[1]
    group = num_q_heads // num_kv_heads
    per_batch = max(1, min(num_tokens, _BATCH_ELEMS // (num_kv_heads * topk * head_dim + 2 * num_q_heads * topk)))
    rows_of = kv_pages[0].reshape(num_kv_heads * num_pages * page_size, head_dim)  # a token's row per head
    head_base = jnp.arange(num_kv_heads, dtype=jnp.int32)[:, None, None] * (num_pages * page_size)  # i32[Hkv, 1, 1]
    num_real = query_start_loc[num_seqs]  # the step's real rows lead; padding follows
    out = jnp.zeros((num_tokens, num_q_heads, value_dim), q.dtype)

    def attend_batch(b: jax.Array, out: jax.Array) -> jax.Array:
        row = b * per_batch + jnp.arange(per_batch, dtype=jnp.int32)  # i32[R]
        real = row < num_real
        safe_row = jnp.minimum(row, num_tokens - 1)
        seq = jnp.minimum(sequence_of(query_start_loc[1:], row), num_seqs - 1)  # i32[R]
        cols = selected[safe_row]  # i32[R, K]
        valid = (cols >= 0) & real[:, None]  # bool[R, K]
        cols = jnp.maximum(cols, 0)
        page = jnp.take_along_axis(block_tables[seq], cols // page_size, axis=1)  # i32[R, K]
        slot = jnp.clip(page, 0, num_pages - 1) * page_size + cols % page_size
        loaded = jnp.take(rows_of, (head_base + slot[None]).reshape(-1), axis=0)
        k = dequantize(loaded, jnp.float32).reshape(num_kv_heads, per_batch, topk, head_dim)  # f32[Hkv, R, K, D]
        q_rows = q[safe_row].astype(jnp.float32).reshape(per_batch, num_kv_heads, group, head_dim)
        logits = jnp.einsum("rhgd,hrkd->hrgk", q_rows, k, precision=_HIGHEST) * sm_scale  # f32[Hkv, R, G, K]
        visible = valid[None, :, None]  # bool[1, R, 1, K]
        logits = jnp.where(visible, logits, _MASK_VALUE)
        probs = jnp.where(visible, jnp.exp(logits - logits.max(axis=-1, keepdims=True)), 0.0)
        denom = probs.sum(axis=-1, keepdims=True)
        attn = jnp.einsum("hrgk,hrkv->rhgv", probs / jnp.where(denom > 0, denom, 1.0), k[..., :value_dim])
        attn = attn.reshape(per_batch, num_q_heads, value_dim).astype(out.dtype)  # [R, Hq, Dv]
        return out.at[jnp.where(real, row, num_tokens)].set(attn, mode="drop")

    return jax.lax.fori_loop(0, (num_real + per_batch - 1) // per_batch, attend_batch, out)


def _validate_index(index_q: jax.Array, weights: jax.Array, index_pages: jax.Array, topk: int) -> None:
    """The indexer's inputs at trace time: a wrong caller fails with a message instead of a bad gather."""
    if index_q.ndim != 3 or index_q.shape[0] == 0:
        raise ValueError(f"index_q must be [T >= 1, index_heads, index_head_dim], got shape {index_q.shape}")
    if weights.shape != index_q.shape[:2] or not jnp.issubdtype(weights.dtype, jnp.floating):
        raise ValueError(
            f"weights must be floating point {list(index_q.shape[:2])}, got {weights.dtype}{weights.shape}"
        )
    if index_pages.ndim != 5 or index_pages.shape[0] != 1 or index_pages.shape[4] != index_q.shape[2]:
        raise ValueError(
            f"index_pages must be a latent-layout pool [1, num_kv_heads, num_pages, page_size, "
            f"index_head_dim={index_q.shape[2]}], got shape {index_pages.shape}"
        )
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")


def _validate_sparse(
    q: jax.Array,
    kv_pages: jax.Array,
    selected: jax.Array,
    block_tables: jax.Array,
    query_start_loc: jax.Array,
    value_dim: int,
) -> None:
    if q.ndim != 3 or kv_pages.ndim != 5 or kv_pages.shape[0] != 1 or kv_pages.shape[4] != q.shape[2]:
        raise ValueError(
            f"q [T, num_q_heads, D] and a latent pool [1, num_kv_heads, num_pages, page_size, D] are needed, got "
            f"shapes {q.shape} and {kv_pages.shape}"
        )
    if q.shape[1] % kv_pages.shape[1]:
        raise ValueError(f"num_q_heads={q.shape[1]} is not a multiple of num_kv_heads={kv_pages.shape[1]}")
    if selected.ndim != 2 or selected.shape[0] != q.shape[0] or selected.dtype != jnp.int32:
        raise ValueError(f"selected must be i32[T={q.shape[0]}, K], got {selected.dtype}{list(selected.shape)}")
    if not 0 < value_dim <= q.shape[2]:
        raise ValueError(f"value_dim={value_dim} must be in [1, the pool's width={q.shape[2]}]")
    num_seqs = block_tables.shape[0]
    if block_tables.ndim != 2 or num_seqs == 0 or query_start_loc.shape != (num_seqs + 1,):
        raise ValueError(
            f"block_tables must be i32[S >= 1, pages_per_seq] and query_start_loc i32[S + 1], got shapes "
            f"{block_tables.shape} and {query_start_loc.shape}"
        )

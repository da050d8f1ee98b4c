"""Pure-jnp paged attention and KV write: the oracle every GPU kernel is tested against, and CI's CPU path.

Layout (see docs/architecture.md, "The KV pool"): one pool per layer
``[2, num_kv_heads, num_pages, page_size, head_dim]``, K at 0 and V at 1; or a latent pool ``[1, ...]`` (DeepSeek's
latent attention), one row a token whose first ``value_dim`` channels are its value (only this path reads it). Token
t of a sequence lives in slot ``block_table[t // page_size] * page_size + t % page_size``. Page 0 is reserved:
padded block-table entries point there, so it holds garbage that the length mask must hide. Padded tokens write
nowhere (``PADDING_SLOT``), or into page 0 where a step writes one token (``write_kv``).

A step's queries are ragged: sequence s owns rows ``[query_start_loc[s], query_start_loc[s + 1])`` of ``q``, and any
mix of prefill chunks and single-token decodes shares one call. To stay efficient under jit without a static bound on
any sequence's query length, the attention cuts every sequence's rows into *query blocks*; each block is one work item
that walks its sequence's pages a chunk at a time (online softmax), only as far as its length reaches. A decode's
row is an item of its own; a sequence with many new tokens is cut into blocks of up to _MAX_Q_BLOCK rows, so its
K/V are gathered once per block rather than once per row. Items run a few at a time in a loop that stops after the
last real item, so that the intermediates stay cache-sized (on the CPU, fresh multi-GB buffers cost more in page
faults than the maths) and a step's cost follows its real tokens, not the padded bucket it runs in.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from pallas_kernels.kv_quant import Scale, check_latent_scales, dequantize, quantize

# The slot of a padded token: past any pool, so ``write_kv`` drops its row (a one-token step's goes into reserved page
# 0). Every slot inside the pool a step writes is then distinct, which lets the write be a plain store (``write_kv``).
PADDING_SLOT = int(jnp.iinfo(jnp.int32).max)
# Scores outside the mask. Finite so that a fully masked row computes exp(0) rather than NaN (-inf - -inf).
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
# Largest query block the heuristic picks (CPU-measured: 64 beat 32, 128 and 256 for a 512-token prefill).
_MAX_Q_BLOCK = 64
# New tokens from which a sequence's rows go in blocks rather than one row per item (a decode has 1).
_LONG_QUERY = 16
# Elements of f32 intermediates (scores, probabilities, gathered K/V) per loop iteration over work items. Small, so
# that the spare items padding a step's last batch cost little: on the CPU a lone 64-token prefill in a 64-sequence
# bucket ran ~3x faster at 2**19 than at 2**21, 32 decodes alike (scripts/bench_reference_attention.py).
_BATCH_ELEMS = 1 << 19
# Keys per iteration of the loop over a sequence's pages.
_CHUNK_TOKENS = 256
_MIN_CHUNK_TOKENS = 64
_CHUNK_ELEMS = 4096  # query rows x keys per head and iteration, for blocks of rows


def write_kv(
    kv_pages: jax.Array,  # [planes, num_kv_heads, num_pages, page_size, head_dim], planes 2 (K, V) or 1 (latent)
    k: jax.Array,  # [T, num_kv_heads, head_dim]
    v: jax.Array | None,  # [T, num_kv_heads, head_dim]; None for a latent pool
    slot_mapping: jax.Array,  # i32[T], slot = page * page_size + offset
    *,
    k_scale: Scale = 1.0,
    v_scale: Scale = 1.0,
) -> jax.Array:  # kv_pages' shape
    """Scatter this step's new K/V (a latent pool's one row: ``k``) into their slots with one XLA scatter
    (quantized first for an FP8 pool: ``kv_quant.quantize`` with the layer's K and V scales).

    Under jit with the pool donated the scatter updates the pool in place. A slot past the pool (``PADDING_SLOT``,
    a padded token's) is dropped. The slots inside the pool must be distinct (each token its own position of its own
    sequence's page), or which of the repeated rows lands is unspecified: the scatter is declared to have unique
    indices, so a GPU stores each row; a scatter that may repeat an index compiles to an atomic compare-and-swap loop
    per element (a 256-token step's write, 1 MB a layer, took 7.3 us a layer on an H200, 2026-12-06).

    One token is written with a dynamic-update-slice whose slot past the pool goes to reserved page 0 instead: XLA
    made the one-row scatter such an update anyway, but one that kept the old entry for a dropped slot, and reading
    the pool where it then writes in place kept the new row's rotary in a kernel of its own. Compiled for an H200
    (``scripts/compile_for_gpu.py``), a batch-1 decode layer runs 13 kernels instead of 14; an H100's batch-1
    Llama-3-8B step took 5.521 ms against 5.56 (2026-12-06).
    """
    planes = 1 if v is None else 2
    if v is None:
        check_latent_scales(v_scale)
    if kv_pages.ndim != 5 or kv_pages.shape[0] != planes:
        layout = "a latent pool [1, ...] (v None)" if v is None else "[2, num_kv_heads, num_pages, page_size, head_dim]"
        raise ValueError(f"kv_pages must be {layout}, got shape {kv_pages.shape}")
    _, num_kv_heads, num_pages, page_size, head_dim = kv_pages.shape
    rows = [k] if v is None else [k, v]
    if any(x.ndim != 3 or x.shape != (k.shape[0], num_kv_heads, head_dim) for x in rows):
        raise ValueError(
            f"k and v must both be [T, num_kv_heads={num_kv_heads}, head_dim={head_dim}], "
            f"got {' and '.join(str(x.shape) for x in rows)}"
        )
    if slot_mapping.shape != (k.shape[0],) or slot_mapping.dtype != jnp.int32:
        raise ValueError(f"slot_mapping must be i32[{k.shape[0]}], got {slot_mapping.dtype}{list(slot_mapping.shape)}")

    stored = [quantize(x, kv_pages.dtype, s) for x, s in zip(rows, (k_scale, v_scale), strict=False)]
    new_kv = jnp.stack(stored).transpose(0, 2, 1, 3)  # [planes, num_kv_heads, T, head_dim]
    # Index (page, offset) in the 5-D pool rather than reshaping it to slots: with one KV head per device, XLA
    # copied the whole pool shard around that reshape twice a step. A slot past the pool is dropped (one token's: sent
    # to page 0), never clamped onto a live slot.
    if k.shape[0] == 1:
        slot = slot_mapping[0]
        slot = jnp.where((slot >= 0) & (slot < num_pages * page_size), slot, 0)  # padding: page 0's first slot
        start = (0, 0, slot // page_size, slot % page_size, 0)
        kv_pages = jax.lax.dynamic_update_slice(kv_pages, new_kv[:, :, :, None], start)  # stored in the pool dtype
    else:
        page, offset = slot_mapping // page_size, slot_mapping % page_size
        kv_pages = kv_pages.at[:, :, page, offset].set(new_kv, mode="drop", unique_indices=True)
    # With one token XLA turns the scatter into a dynamic-update-slice and fuses a duplicate of it into each reader
    # (the returned pool, the attention's reshape to rows); each duplicate must own its buffer, so a step copied the
    # whole pool four times (~70 ms for 96 MB on the CPU). The barrier leaves the update one reader: in place.
    return jax.lax.optimization_barrier(kv_pages)


def ref_ragged_paged_attention(
    q: jax.Array,  # [T, num_q_heads, head_dim]
    kv_pages: jax.Array,  # [planes, num_kv_heads, num_pages, page_size, head_dim], planes 2 (K, V) or 1 (latent)
    kv_lens: jax.Array,  # i32[S], each sequence's KV length including this step's tokens
    block_tables: jax.Array,  # i32[S, pages_per_seq], padded entries = 0
    query_start_loc: jax.Array,  # i32[S + 1], cumulative query offsets
    *,
    sm_scale: float,
    soft_cap: float | None = None,
    sliding_window: int | None = None,
    q_block: int | None = None,
    k_scale: Scale = 1.0,
    v_scale: Scale = 1.0,
    sinks: jax.Array | None = None,  # [num_q_heads]
    value_dim: int | None = None,  # a latent pool's: its values are each row's first value_dim channels
    alibi_slopes: jax.Array | None = None,  # [num_q_heads]
) -> jax.Array:  # [T, num_q_heads, value_dim or head_dim] in q's dtype; padding rows are 0
    """Causal attention of a ragged batch of new tokens over their sequences' paged K/V.

    Query i of sequence s (``q_len = qsl[s+1] - qsl[s]``) sees key column c iff ``c <= kv_len - q_len + i`` (and, with
    ``sliding_window=w``, ``c > kv_len - q_len + i - w``). GQA groups query heads per KV head (query head h reads KV
    head ``h // (num_q_heads // num_kv_heads)``) without repeating K/V. Softmax runs in float32; ``soft_cap`` applies
    Gemma-2's ``soft_cap * tanh(logits / soft_cap)``. ``q_block`` only tunes speed: None gives sequences of fewer
    than _LONG_QUERY new tokens one-row items and longer ones blocks of up to _MAX_Q_BLOCK rows; a number cuts every
    sequence into blocks of that many rows. An FP8 pool's pages are dequantized (``kv_quant.dequantize`` with
    ``k_scale`` / ``v_scale``) to float32 as each chunk is gathered. ``sinks`` (gpt-oss's attention sinks): a
    logit per query head that joins each of its rows' softmax denominators and adds no value, so a row's weights
    sum to less than one (a row that sees no key comes out 0, as without sinks). A latent pool (``value_dim``) is
    gathered once per chunk: its values are a slice of the keys just loaded (dequantized with ``k_scale``).
    ``alibi_slopes`` (ALiBi: Bloom, MPT, Falcon-RW): each query head's score of key column c from row i gains
    ``slope * (c - i)``, after the scale and any soft-cap; the linear bias in the key's absolute position that
    transformers adds differs from it by a constant per row, which the softmax ignores.
    """
    _validate(
        q, kv_pages, kv_lens, block_tables, query_start_loc, soft_cap, sliding_window, q_block, sinks,
        value_dim=value_dim,
    )  # fmt: skip
    _validate_per_head("alibi_slopes", alibi_slopes, q)
    if value_dim is not None:
        check_latent_scales(v_scale)
    q_lens = query_start_loc[1:] - query_start_loc[:-1]  # i32[S]
    attend = functools.partial(
        _attend_blocks, q, kv_pages, kv_lens, block_tables, query_start_loc,
        sm_scale=sm_scale, soft_cap=soft_cap, sliding_window=sliding_window, kv_scales=(k_scale, v_scale),
        sinks=sinks, alibi_slopes=alibi_slopes,
    )  # fmt: skip
    # [T, Hq, Dv]; rows no item owns (padding) stay exactly zero
    out = jnp.zeros((*q.shape[:2], value_dim or q.shape[2]), q.dtype)
    return over_query_blocks(out, q_lens, block_tables.shape[0], q_block, attend)


ItemsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # (rows, seq, last_col) -> one result per row


def over_query_blocks(
    out: jax.Array,  # [T, ...], a result row per query row
    q_lens: jax.Array,  # i32[S]
    num_seqs: int,
    q_block: int | None,
    attend: Callable[[jax.Array, jax.Array, int, int], jax.Array],  # (out, q_lens, bq, max_items) -> out
) -> jax.Array:  # ``out`` with every sequence's rows written
    """Runs ``attend`` over a ragged step's rows cut into work items: with ``q_block`` None, sequences of fewer than
    _LONG_QUERY new tokens as one-row items and longer ones in blocks of up to _MAX_Q_BLOCK rows (two calls); else
    every sequence in blocks of ``q_block`` rows (one call). Shared by the attention and DSA's indexer
    (``pallas_kernels.sparse_reference``)."""
    num_tokens = out.shape[0]
    if q_block is not None:
        return attend(out, q_lens, q_block, max_items(num_tokens, num_seqs, q_block))
    # The bucket's shape says little about the step: a lone prefill and a batch of decodes share a (T, S) bucket, so
    # each sequence's own length picks its block size, and each loop below runs only over the items that exist.
    is_long = q_lens >= _LONG_QUERY  # bool[S]
    out = attend(out, jnp.where(is_long, 0, q_lens), 1, min(num_tokens, num_seqs * (_LONG_QUERY - 1)))
    num_long = min(num_seqs, num_tokens // _LONG_QUERY)  # static bound on long sequences
    if num_long:
        bq = min(_MAX_Q_BLOCK, 1 << (num_tokens - 1).bit_length())
        out = attend(out, jnp.where(is_long, q_lens, 0), bq, max_items(num_tokens, num_long, bq))
    return out


def run_items(
    out: jax.Array,  # [T, ...], the rows written so far
    q_lens: jax.Array,  # i32[S], the sequences' new tokens, 0 for those another call handles
    query_start_loc: jax.Array,  # i32[S + 1]
    kv_lens: jax.Array,  # i32[S]
    bq: int,
    per_batch: int,
    items: ItemsFn,  # (rows i32[B, bq], seq i32[B], last_col i32[B, bq]) -> [B, bq, ...]
) -> jax.Array:  # ``out`` with these sequences' rows written
    """The rows of sequences with ``q_lens > 0``, cut into work items of ``bq`` rows, ``per_batch`` items a call of
    ``items``: given each item's rows (in range; a spare row repeats the last), sequence, and the last key column
    each row sees (-1 for a spare row), it returns their results.

    Items run ``per_batch`` at a time in a loop, so no batch's intermediates outgrow the budget, and the loop stops
    after the last real item: a step pays for the items it has, not for the static bound that sized a batch.
    """
    num_tokens = out.shape[0]
    # Work items: sequence s's rows split into ceil(q_len / bq) blocks (query_blocks).
    num_batches = (jnp.sum((q_lens + bq - 1) // bq) + per_batch - 1) // per_batch  # i32[], dynamic

    def run_batch(b: jax.Array, out: jax.Array) -> jax.Array:
        item = b * per_batch + jnp.arange(per_batch, dtype=jnp.int32)  # i32[B]
        seq, first, item_valid = query_blocks(q_lens, item, bq)  # i32[B] x 2, bool[B]
        row_in_seq = first[:, None] + jnp.arange(bq, dtype=jnp.int32)  # i32[B, bq], query index i within seq
        item_q_len = q_lens[seq][:, None]  # i32[B, 1]
        row_valid = item_valid[:, None] & (row_in_seq < item_q_len)  # bool[B, bq]
        row = jnp.where(row_valid, query_start_loc[seq][:, None] + row_in_seq, num_tokens)  # i32[B, bq], T = dropped
        # Last key column each row sees; -1 (none) for spare rows, so they add no trips to the page loop.
        last_col = jnp.where(row_valid, kv_lens[seq][:, None] - item_q_len + row_in_seq, -1)  # i32[B, bq]
        res = items(jnp.minimum(row, num_tokens - 1), seq, last_col)  # [B, bq, ...]
        return out.at[row.reshape(-1)].set(res.reshape(-1, *out.shape[1:]), mode="drop")

    # A dynamic trip count, like the page loop's: on a GPU each trip waits for the device (the reference is the
    # oracle and CI's path there, not the engine's GPU path).
    return jax.lax.fori_loop(0, num_batches, run_batch, out)


def _attend_blocks(
    q: jax.Array,  # [T, Hq, D]
    kv_pages: jax.Array,  # [planes, Hkv, num_pages, page_size, D]
    kv_lens: jax.Array,  # i32[S]
    block_tables: jax.Array,  # i32[S, pages_per_seq]
    query_start_loc: jax.Array,  # i32[S + 1]
    out: jax.Array,  # [T, Hq, Dv], the rows written so far (Dv < D: a latent pool's values)
    q_lens: jax.Array,  # i32[S], the sequences' new tokens, 0 for those another call handles
    bq: int,
    max_items: int,
    *,
    sm_scale: float,
    soft_cap: float | None,
    sliding_window: int | None,
    kv_scales: tuple[Scale, Scale],
    sinks: jax.Array | None,  # [Hq]
    alibi_slopes: jax.Array | None,  # [Hq]
) -> jax.Array:  # [T, Hq, Dv], ``out`` with these sequences' rows written
    """Attention of the rows of sequences with ``q_lens > 0``, cut into work items of ``bq`` rows (``run_items``),
    as many a batch as the budget holds (``max_items``: the static bound on items, which only sizes a batch)."""
    num_q_heads, head_dim = q.shape[1:]
    planes, num_kv_heads, _, page_size, _ = kv_pages.shape
    chunk_pages = page_chunk(block_tables.shape[1], page_size, bq)
    chunk_len = chunk_pages * page_size  # keys per iteration of the page loop
    item_elems = 2 * num_q_heads * bq * chunk_len + planes * num_kv_heads * chunk_len * head_dim
    per_batch = max(1, min(max_items, _BATCH_ELEMS // item_elems))

    def items(rows: jax.Array, seq: jax.Array, last_col: jax.Array) -> jax.Array:  # [B, bq, Hq, Dv]
        return _attend_items(
            q[rows], block_tables[seq], last_col, kv_pages, chunk_pages,
            sm_scale=sm_scale, soft_cap=soft_cap, sliding_window=sliding_window, kv_scales=kv_scales, sinks=sinks,
            value_dim=out.shape[2], alibi_slopes=alibi_slopes,
        )  # fmt: skip

    return run_items(out, q_lens, query_start_loc, kv_lens, bq, per_batch, items)


def _attend_items(
    q: jax.Array,  # [B, bq, Hq, D], B items of bq query rows
    pages: jax.Array,  # i32[B, pages_per_seq], each item's sequence's block table
    last_col: jax.Array,  # i32[B, bq], last key column each row may see
    kv_pages: jax.Array,  # [planes, Hkv, num_pages, page_size, D]
    chunk_pages: int,  # pages per iteration of the page loop
    *,
    sm_scale: float,
    soft_cap: float | None,
    sliding_window: int | None,
    kv_scales: tuple[Scale, Scale],  # K's and V's, for an FP8 pool
    sinks: jax.Array | None,  # [Hq]
    value_dim: int,  # Dv: D, or a latent pool's first channels
    alibi_slopes: jax.Array | None,  # [Hq]
) -> jax.Array:  # [B, bq, Hq, Dv] in q's dtype
    """Attention of a few work items over their sequences' pages, one chunk of pages at a time; fp32 softmax.

    The chunk loop runs only as far as the furthest visible column of these items, so a step costs what its live
    lengths need, not what ``max_model_len`` allows; and each chunk's gathered K/V stay cache-sized (on the CPU,
    gathering whole contexts first moved 3x the bytes). Chunks merge with the usual online-softmax rescaling; a sink
    is where each row's running max and sum start (its logit and exp(0) = 1), a key of value 0 seen before the first.
    """
    num_items, bq, num_q_heads, head_dim = q.shape
    out_dtype = q.dtype
    planes, num_kv_heads, num_pages, page_size, _ = kv_pages.shape
    group = num_q_heads // num_kv_heads
    if alibi_slopes is not None:
        slopes = alibi_slopes.astype(jnp.float32).reshape(num_kv_heads, 1, group)  # query head h = KV head * G + g
    pages = jnp.pad(pages, ((0, 0), (0, -pages.shape[1] % chunk_pages)))  # i32[B, C * chunk_pages], pad -> page 0
    chunk_len = chunk_pages * page_size
    num_chunks = jnp.clip(jnp.max(last_col) // chunk_len + 1, 0, pages.shape[1] // chunk_pages)  # i32[], dynamic

    q = q.astype(jnp.float32).reshape(num_items, bq, num_kv_heads, group, head_dim)  # f32[B, bq, Hkv, G, D]
    q = q.transpose(2, 0, 3, 1, 4)  # f32[Hkv, B, G, bq, D]: batch axes lead, as in k, for fast CPU dots
    # Whole pages as rows of a 2-D gather: XLA's CPU gather copies such rows 5x faster than [ps, D] tiles of the pool.
    # K and V gathered apart, each straight from the flat pool: slicing them out of one gathered array copied both
    # halves again (1.4 of 4.2 ms for 32 decodes), and slicing the pool first copied the pool. A latent pool's values
    # are a slice of the keys gathered (planes 1).
    rows = kv_pages.reshape(planes * num_kv_heads * num_pages, page_size * head_dim)  # [planes * Hkv * P, ps * D]
    head_base = jnp.arange(num_kv_heads, dtype=jnp.int32)[:, None] * num_pages  # i32[Hkv, 1], K's row of page 0
    hi = jax.lax.Precision.HIGHEST  # the oracle must not drop to TF32 on GPU

    def attend_chunk(c: jax.Array, carry: tuple[jax.Array, jax.Array, jax.Array]):
        row_max, denom, acc = carry  # f32[Hkv, B, G, bq], f32[Hkv, B, G, bq], f32[Hkv, B, G, bq, Dv]
        chunk = jax.lax.dynamic_slice_in_dim(pages, c * chunk_pages, chunk_pages, axis=1)  # i32[B, chunk_pages]
        k_index = head_base + jnp.clip(chunk.reshape(1, -1), 0, num_pages - 1)  # i32[Hkv, B * chunk_pages]

        def gather(index: jax.Array, scale: Scale) -> jax.Array:  # f32[Hkv, B, L, D]
            loaded = jnp.take(rows, index.reshape(-1), axis=0, mode="clip")  # [Hkv * B * chunk_pages, ps * D]
            return dequantize(loaded, jnp.float32, scale).reshape(num_kv_heads, num_items, chunk_len, head_dim)

        k = gather(k_index, kv_scales[0])
        v = k[..., :value_dim] if planes == 1 else gather(k_index + num_kv_heads * num_pages, kv_scales[1])
        logits = jnp.einsum("hngqd,hncd->hngqc", q, k, precision=hi) * sm_scale  # f32[Hkv, B, G, bq, L]
        if soft_cap is not None:
            logits = soft_cap * jnp.tanh(logits / soft_cap)
        col = c * chunk_len + jnp.arange(chunk_len, dtype=jnp.int32)  # i32[L]
        if alibi_slopes is not None:  # slope times the key's distance back from the row, [Hkv, 1, G, 1, 1] x [B, bq, L]
            distance = (col - last_col[:, :, None]).astype(jnp.float32)  # f32[B, bq, L], <= 0 where visible
            logits = logits + slopes[:, :, :, None, None] * distance[None, :, None]
        visible = col <= last_col[:, :, None]  # bool[B, bq, L]
        if sliding_window is not None:
            visible &= col > (last_col - sliding_window)[:, :, None]
        visible = visible[None, :, None]  # bool[1, B, 1, bq, L]
        logits = jnp.where(visible, logits, _MASK_VALUE)
        new_max = jnp.maximum(row_max, logits.max(axis=-1))  # f32[Hkv, B, G, bq]
        probs = jnp.where(visible, jnp.exp(logits - new_max[..., None]), 0.0)  # f32[Hkv, B, G, bq, L]
        rescale = jnp.exp(row_max - new_max)  # 0 once a real score replaces the mask value, else 1
        denom = denom * rescale + probs.sum(axis=-1)
        acc = acc * rescale[..., None] + jnp.einsum("hngqc,hncd->hngqd", probs, v, precision=hi)
        return new_max, denom, acc

    stats_shape = (num_kv_heads, num_items, group, bq)
    if sinks is None:
        init_max, init_sum = jnp.full(stats_shape, _MASK_VALUE, jnp.float32), jnp.zeros(stats_shape, jnp.float32)
    else:
        sink = sinks.astype(jnp.float32).reshape(num_kv_heads, 1, group, 1)  # query head h = KV head * G + g
        init_max, init_sum = jnp.broadcast_to(sink, stats_shape), jnp.ones(stats_shape, jnp.float32)
    init = (init_max, init_sum, jnp.zeros((*stats_shape, value_dim), jnp.float32))
    _, denom, acc = jax.lax.fori_loop(0, num_chunks, attend_chunk, init)
    out = jnp.where(denom[..., None] > 0, acc / jnp.where(denom > 0, denom, 1.0)[..., None], 0.0)  # rows seeing none: 0
    out = out.transpose(1, 3, 0, 2, 4).reshape(num_items, bq, num_q_heads, value_dim)  # f32[B, bq, Hq, Dv]
    return out.astype(out_dtype)


def sequence_of(ends: jax.Array, index: jax.Array) -> jax.Array:
    """i32[N]: for each ``index`` [N], the first sequence whose cumulative end ``ends`` [S] exceeds it (S past the
    last). Compares all pairs: ``jnp.searchsorted``'s binary search is an XLA while loop, and each trip of one makes
    the host wait for the GPU before it can launch anything after it."""
    return jnp.sum(ends[None, :] <= index[:, None], axis=1, dtype=jnp.int32)


def max_items(num_tokens: int, num_seqs: int, bq: int) -> int:
    """Static bound on work items when ``num_seqs`` sequences share ``num_tokens`` rows in blocks of ``bq``:
    sum_s ceil(q_len_s / bq) <= (T + S * (bq - 1)) / bq."""
    return min(num_tokens, (num_tokens + num_seqs * (bq - 1)) // bq)


def query_blocks(q_lens: jax.Array, item: jax.Array, bq: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Work items of a ragged step: each sequence's ``q_lens`` [S] query rows cut into blocks of ``bq``, in order.

    For each item index [N]: (i32 sequence, i32 first query index within it, bool valid). Items past the last real
    block are invalid and carry the last sequence, so that gathers through them stay in bounds.
    """
    num_seqs = q_lens.shape[0]
    blocks_per_seq = (q_lens + bq - 1) // bq  # i32[S]
    block_ends = jnp.cumsum(blocks_per_seq)  # i32[S]
    seq = sequence_of(block_ends, item)  # i32[N], == S past the last item
    valid = seq < num_seqs  # bool[N]
    seq = jnp.minimum(seq, num_seqs - 1)
    first = (item - (block_ends[seq] - blocks_per_seq[seq])) * bq  # i32[N]
    return seq, first, valid


def page_chunk(pages_per_seq: int, page_size: int, bq: int) -> int:
    """Pages per loop iteration: about _CHUNK_TOKENS keys for one-row items, fewer for blocks of rows (whose
    sequences are often as short as the block), never more than a sequence's block table holds."""
    keys = max(_MIN_CHUNK_TOKENS, min(_CHUNK_TOKENS, _CHUNK_ELEMS // bq))
    return max(1, min(pages_per_seq, keys // page_size))


def _validate(
    q: jax.Array,
    kv_pages: jax.Array,
    kv_lens: jax.Array,
    block_tables: jax.Array,
    query_start_loc: jax.Array,
    soft_cap: float | None,
    sliding_window: int | None,
    q_block: int | None,
    sinks: jax.Array | None = None,
    *,
    value_dim: int | None = None,
) -> None:
    """Shape and dtype checks at trace time, so a wrong runner input fails with a message instead of a bad gather.
    The kernels share them without ``value_dim``, so they refuse a latent pool."""
    _validate_q_and_kv(q, kv_pages, value_dim)
    validate_metadata(kv_lens, block_tables, query_start_loc)
    _validate_options(soft_cap, sliding_window, q_block)
    _validate_per_head("sinks", sinks, q)


def _validate_per_head(name: str, values: jax.Array | None, q: jax.Array) -> None:
    """A per-query-head input (the sinks, ALiBi's slopes): floating point, one value per query head."""
    if values is not None and (values.shape != q.shape[1:2] or not jnp.issubdtype(values.dtype, jnp.floating)):
        raise ValueError(
            f"{name} must be floating point [num_q_heads={q.shape[1]}], got {values.dtype}{list(values.shape)}"
        )


def _validate_q_and_kv(q: jax.Array, kv_pages: jax.Array, value_dim: int | None = None) -> None:
    if q.ndim != 3:
        raise ValueError(f"q must be [T, num_q_heads, head_dim], got shape {q.shape}")
    planes = 2 if value_dim is None else 1
    if kv_pages.ndim != 5 or kv_pages.shape[0] != planes:
        layout = "[2, num_kv_heads, num_pages, page_size, head_dim]" if value_dim is None else "a latent pool [1, ...]"
        raise ValueError(
            f"kv_pages must be {layout}, got shape {kv_pages.shape} (a latent pool [1, ...] is the reference's alone, "
            "read with value_dim)"
        )
    if value_dim is not None and not 0 < value_dim <= kv_pages.shape[4]:
        raise ValueError(f"value_dim={value_dim} must be in [1, the pool's head_dim={kv_pages.shape[4]}]")
    if q.shape[0] == 0:
        raise ValueError("q has no rows; pad the step to at least one token")
    num_q_heads, head_dim = q.shape[1:]
    num_kv_heads, kv_head_dim = kv_pages.shape[1], kv_pages.shape[4]
    if kv_head_dim != head_dim:
        raise ValueError(f"q's head_dim={head_dim} differs from kv_pages' head_dim={kv_head_dim}")
    if num_q_heads % num_kv_heads:
        raise ValueError(f"num_q_heads={num_q_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    for name, x in (("q", q), ("kv_pages", kv_pages)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{name} must be floating point, got {x.dtype}")


def validate_metadata(kv_lens: jax.Array, block_tables: jax.Array, query_start_loc: jax.Array) -> None:
    """The per-sequence int32 arrays, all sized by block_tables' S."""
    if block_tables.ndim != 2 or block_tables.shape[0] == 0:
        raise ValueError(f"block_tables must be i32[S, pages_per_seq] with S >= 1, got shape {block_tables.shape}")
    num_seqs = block_tables.shape[0]
    for name, x, shape in (
        ("kv_lens", kv_lens, (num_seqs,)),
        ("block_tables", block_tables, block_tables.shape),
        ("query_start_loc", query_start_loc, (num_seqs + 1,)),
    ):
        if x.dtype != jnp.int32 or x.shape != shape:
            raise ValueError(f"{name} must be i32{list(shape)} (S={num_seqs}), got {x.dtype}{list(x.shape)}")


def _validate_options(soft_cap: float | None, sliding_window: int | None, q_block: int | None) -> None:
    if soft_cap is not None and not soft_cap > 0:
        raise ValueError(f"soft_cap must be positive or None, got {soft_cap}")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1 or None, got {sliding_window}")
    if q_block is not None and q_block < 1:
        raise ValueError(f"q_block must be >= 1 or None, got {q_block}")

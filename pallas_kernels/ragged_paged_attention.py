"""Ragged paged attention as one Pallas kernel (Triton backend): a step's prefill chunks and decodes in one call.

Work items are those of the reference: each sequence's query rows are cut into blocks of ``q_block`` rows. A program
owns one item, one KV head and one KV split, and holds the item's rows for all of that KV head's query heads as one
``[q_block * group, head_dim]`` tile, so each K/V page is read once per item however many query heads share it (GQA).
It walks the item's visible pages ``kv_block`` tokens at a time with an online (flash) softmax in base 2. Split-K
shares each item's visible blocks evenly, at run time, among ``num_splits`` programs, so that a few long decodes still
fill the GPU; a second small kernel merges the splits by their running max and sum.

Decode steps (``q_block == 1``) skip the item bookkeeping: item r is query row r, and q and the output stay
``[T * Hq, D]`` (a free reshape): program (token t, KV head h) loads its ``group`` rows from t's first query head of h
into its tile with a masked load (the tile's other rows 0) and stores them back with a masked store, so no padded copy
of q or slice of the output runs around the kernel (an H200 profile of a batch-32 Llama-3-8B step had them at ~4 %);
split-K keeps its f32 partials as tiles and its merge stores into ``[T * Hq, D]`` the same way. Prefill tiles are
gathered and padded by XLA. Everything else in the wrapper is a few small XLA gathers over the step's rows and block
tables; the kernel reads the pool in place.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.kv_quant import Scale, check_scales, is_fp8, rescale
from pallas_kernels.reference import _validate as _validate_reference_inputs
from pallas_kernels.reference import max_items, query_blocks, sequence_of

_LOG2E = math.log2(math.e)
# Scores outside the mask; finite so a row that sees nothing yet computes exp2(0), never NaN (as in the reference).
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
# Most tile rows (q_block * group) per program: the f32 accumulator [rows, head_dim] must stay in registers.
_MAX_TILE_ROWS = 128
# Most float32 accumulator elements (rows x head_dim) per program: a split's partial output is stored through shared
# memory at its full size, and 128 rows at D=512 asked 256 KiB of the H100's 227 (check_kernels' mixed D=512 case,
# 2026-12-06); 128 x 128 keeps D <= 128 at 128 rows, 64 at D=256 (which passed) and 32 at 512.
_MAX_TILE_ELEMENTS = 128 * 128
# Fewest tile rows: Triton's tensor-core dot needs M >= 16, so small groups are padded up to it (with zeros).
_MIN_TILE_ROWS = 16
# Bytes of one K tile in a decode-shaped program (x2 for V, x num_stages when pipelined: must fit shared memory).
_DECODE_TILE_BYTES = 32 * 1024
# Programs to aim for before adding KV splits: about 2 per SM on an H100 (132 SMs). H100, 32 query / 8 KV heads,
# 2026-11-26 (scripts/bench_kernels.py --tune): batch 32 x 2k-token decode 106.5 us with one split against 113.2 us
# with the two that 512 picked; the long single decodes still split (32 x 8 KV heads at batch 1).
_TARGET_PROGRAMS = 256
# Software-pipelining depth of a decode tile's K/V loads: 3 stages beat 2 on every decode shape tuned (same run).
_DECODE_STAGES = 3
# What a bf16 step computes an FP8 pool's tiles in. Over an FP8 pool this kernel took longer than over a bf16 one
# (H200, 2026-12-05, a Llama-3-8B 64 x 8k decode step: 13.6 against 10.3 ms of attention) though it reads half the
# bytes. Triton widens e4m3 to float16 with one convert per pair (cvt.rn.f16x2.e4m3x2) and to bfloat16 through
# float16, a second convert per element: a toy of this loop compiled for sm_90 holds 910 instructions against 1,390
# (scripts/inspect_kv_fp8_widening.py; not yet timed on a GPU). So q is taken to float16 (saturated at its largest
# finite value) and the tiles widened to it; the dots still accumulate in float32. float32 queries read the tiles in
# float32.
FP8_COMPUTE_DTYPE = jnp.float16


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Static tiling of one call; hashable so it can be a jit static argument."""

    q_block: int  # query rows of one sequence per work item (1 = decode layout)
    kv_block: int  # keys per inner-loop step, a multiple of page_size
    num_splits: int  # programs sharing one item's keys (split-K)
    num_warps: int
    num_stages: int  # Triton software-pipelining depth of the K/V loads

    def __post_init__(self) -> None:
        for name in ("q_block", "kv_block", "num_splits", "num_warps", "num_stages"):
            if getattr(self, name) < 1:
                raise ValueError(f"KernelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not _is_pow2(self.kv_block):
            raise ValueError(f"KernelConfig.kv_block={self.kv_block} must be a power of two (Triton tile sizes are)")


def default_config(
    num_tokens: int,
    num_seqs: int,
    num_q_heads: int,
    num_kv_heads: int,
    page_size: int,
    pages_per_seq: int,
    head_dim: int,
    itemsize: int,
) -> KernelConfig:
    """Tiling from the step's static shape: q_block near the mean query length, split-K when programs are few."""
    group = num_q_heads // num_kv_heads
    mean_q_len = -(-num_tokens // num_seqs)
    max_rows = min(_MAX_TILE_ROWS, _MAX_TILE_ELEMENTS // head_dim)
    q_block = min(_pow2_ceil(mean_q_len), max(1, _pow2_floor(max_rows // group)))
    rows = _tile_rows(q_block, group)
    # One K tile of 32 KiB for decode tiles (memory-bound: long loads), 16 KiB next to a big query tile.
    tile_bytes = _DECODE_TILE_BYTES if rows < 64 else _DECODE_TILE_BYTES // 2
    kv_block = max(page_size, _pow2_floor(tile_bytes // (head_dim * itemsize)))
    num_items = max_items(num_tokens, num_seqs, q_block)
    max_blocks = -(-pages_per_seq * page_size // kv_block)
    num_splits = max(1, min(_pow2_floor(max(1, _TARGET_PROGRAMS // (num_items * num_kv_heads))), max_blocks))
    return KernelConfig(
        q_block=q_block,
        kv_block=kv_block,
        num_splits=num_splits,
        num_warps=8 if rows >= 64 else 4,
        num_stages=_DECODE_STAGES if q_block == 1 else 2,
    )


def ragged_paged_attention(
    q: jax.Array,  # [T, num_q_heads, head_dim]
    kv_pages: jax.Array,  # [2, num_kv_heads, num_pages, page_size, head_dim]
    kv_lens: jax.Array,  # i32[S], each sequence's KV length including this step's tokens
    block_tables: jax.Array,  # i32[S, pages_per_seq], padded entries = 0
    query_start_loc: jax.Array,  # i32[S + 1], cumulative query offsets
    *,
    sm_scale: float,
    soft_cap: float | None = None,
    sliding_window: int | None = None,
    config: KernelConfig | None = None,
    interpret: bool = False,
    k_scale: Scale = 1.0,
    v_scale: Scale = 1.0,
    sinks: jax.Array | None = None,  # [num_q_heads]
) -> jax.Array:  # [T, num_q_heads, head_dim] in q's dtype; padding rows are 0
    """Same contract as ``ref_ragged_paged_attention``; ``interpret=True`` runs the kernel on any backend (CI).

    Block-table entries a sequence's length reaches, and the padded ones after them, must be valid page ids: the
    kernel reads them unchecked (the reference's gather would clamp them instead). An FP8 pool's K/V tiles are cast
    to q's dtype as they are loaded; their scales stay outside the kernel, since ``q . (k_scale * k) = (k_scale * q)
    . k`` and ``p . (v_scale * v) = v_scale * (p . v)``: q is scaled before the call and the output after it.
    Each tile row's sink (its query head's, in base 2) starts the first KV split's running max and sum, so the
    split-K merge counts it once.
    """
    _validate_reference_inputs(
        q, kv_pages, kv_lens, block_tables, query_start_loc, soft_cap, sliding_window, None, sinks
    )
    num_tokens, num_q_heads, head_dim = q.shape
    _, num_kv_heads, _, page_size, _ = kv_pages.shape
    num_seqs, pages_per_seq = block_tables.shape
    if q.dtype != kv_pages.dtype and not is_fp8(kv_pages.dtype):
        raise ValueError(f"kv_pages' dtype {kv_pages.dtype} must be q's ({q.dtype}) or float8_e4m3fn (an FP8 pool)")
    check_scales(kv_pages.dtype, k_scale, v_scale)
    if not _is_pow2(head_dim) or head_dim < 16:
        raise ValueError(f"head_dim={head_dim} must be a power of two >= 16 for the Pallas kernel; use 'reference'")
    if not _is_pow2(page_size):
        raise ValueError(f"page_size={page_size} must be a power of two for the Pallas kernel; use 'reference'")
    cfg = config or default_config(
        num_tokens, num_seqs, num_q_heads, num_kv_heads, page_size, pages_per_seq, head_dim, q.dtype.itemsize
    )
    if cfg.kv_block % page_size:
        raise ValueError(f"kv_block={cfg.kv_block} must be a multiple of page_size={page_size}")

    group = num_q_heads // num_kv_heads
    rows = _tile_rows(cfg.q_block, group)
    pages_per_block = cfg.kv_block // page_size
    table_width = -(-pages_per_seq // pages_per_block) * pages_per_block
    q_lens = query_start_loc[1:] - query_start_loc[:-1]  # i32[S]

    if cfg.q_block == 1:
        row = jnp.arange(num_tokens, dtype=jnp.int32)  # i32[N]: item r is query row r
        seq = sequence_of(query_start_loc[1:], row)  # i32[N], S past the last
        valid = seq < num_seqs  # bool[N]
        seq = jnp.minimum(seq, num_seqs - 1)
        valid &= row >= query_start_loc[seq]
        base = kv_lens[seq] - query_start_loc[seq + 1] + row  # i32[N], = kv_len - q_len + i
        q_in = q.reshape(num_tokens * num_q_heads, head_dim)  # [T * Hq, D], a free view: programs find their rows
    else:
        bq = cfg.q_block
        num_items = max_items(num_tokens, num_seqs, bq)
        seq, first, valid = query_blocks(q_lens, jnp.arange(num_items, dtype=jnp.int32), bq)  # i32[N] x 2, bool[N]
        row_in_seq = first[:, None] + jnp.arange(bq, dtype=jnp.int32)  # i32[N, bq]
        row_valid = valid[:, None] & (row_in_seq < q_lens[seq][:, None])  # bool[N, bq]
        row = jnp.where(row_valid, query_start_loc[seq][:, None] + row_in_seq, num_tokens)  # i32[N, bq], T = none
        base = kv_lens[seq] - q_lens[seq] + first  # i32[N]
        q_in = q.at[row].get(mode="fill", fill_value=0)  # [N, bq, Hq, D]
        q_in = q_in.reshape(num_items, bq, num_kv_heads, group, head_dim).transpose(0, 2, 1, 3, 4)
        q_in = q_in.reshape(num_items, num_kv_heads, bq * group, head_dim)  # [N, Hkv, bq * G, D]
        q_in = jnp.pad(q_in, ((0, 0), (0, 0), (0, rows - bq * group), (0, 0)))  # [N, Hkv, rows, D]

    item_kv_len = jnp.where(valid, kv_lens[seq], 0)  # i32[N]; 0 makes a padding item attend to nothing
    tables = jnp.pad(block_tables, ((0, 0), (0, table_width - pages_per_seq)))[seq]  # i32[N, table_width]

    sink_rows = None
    if sinks is not None:  # tile row r holds query head r % group of its KV head (decode tiles too: r < group)
        head = jnp.arange(rows) % group
        sink_rows = sinks.astype(jnp.float32).reshape(num_kv_heads, group)[:, head] * _LOG2E  # f32[Hkv, rows]
    q_in = rescale(q_in, k_scale)  # K's scale, folded into q
    # decode: [T * Hq, D]; else [N, Hkv, >= bq * G, D]
    out = _call_kernel(
        q_in, kv_pages, sink_rows, group, rows, base, item_kv_len, tables, cfg, sm_scale, soft_cap, sliding_window,
        interpret,
    )  # fmt: skip
    out = rescale(out, v_scale)  # V's scale, on the output
    if cfg.q_block == 1:
        return out.reshape(num_tokens, num_q_heads, head_dim)
    bq = cfg.q_block
    out = out[:, :, : bq * group].reshape(num_items, num_kv_heads, bq, group, head_dim).transpose(0, 2, 1, 3, 4)
    out = out.reshape(num_items * bq, num_q_heads, head_dim)  # [N * bq, Hq, D]
    return jnp.zeros_like(q).at[row.reshape(-1)].set(out, mode="drop")


def _call_kernel(
    q_in: jax.Array,  # decode: [T * Hq, D]; else [N, Hkv, rows, D]
    kv_pages: jax.Array,  # [2, Hkv, num_pages, page_size, D]
    sink_rows: jax.Array | None,  # f32[Hkv, rows], base 2
    group: int,
    rows: int,
    base: jax.Array,  # i32[N]
    item_kv_len: jax.Array,  # i32[N]
    tables: jax.Array,  # i32[N, table_width]
    cfg: KernelConfig,
    sm_scale: float,
    soft_cap: float | None,
    sliding_window: int | None,
    interpret: bool,
) -> jax.Array:  # q_in's layout and dtype (a merged tile may keep fewer rows: the leading power of two >= bq * G)
    """One pallas_call over (item, KV head, split), then the split-K merge when there is more than one split."""
    num_items = base.shape[0]
    _, num_kv_heads, num_pages, page_size, head_dim = kv_pages.shape
    splits = cfg.num_splits
    num_q_heads = num_kv_heads * group if cfg.q_block == 1 else None  # decode: rows found in [T * Hq, D]
    kernel = functools.partial(
        _kernel,
        sm_scale=sm_scale,
        soft_cap=soft_cap,
        sliding_window=sliding_window,
        group=group,
        rows=rows,
        num_q_heads=num_q_heads,
        q_block=cfg.q_block,
        kv_block=cfg.kv_block,
        num_splits=splits,
        has_sinks=sink_rows is not None,
    )
    if num_q_heads is None:
        rows_spec = pl.BlockSpec((None, None, rows, head_dim), lambda i, h, s: (i, h, 0, 0))  # [rows, D] tiles
    else:
        rows_spec = pl.BlockSpec(q_in.shape, lambda i, h, s: (0, 0))  # all of [T * Hq, D]
    in_specs = [
        pl.BlockSpec((None,), lambda i, h, s: (i,)),  # base
        pl.BlockSpec((None,), lambda i, h, s: (i,)),  # item_kv_len
        pl.BlockSpec((None, tables.shape[1]), lambda i, h, s: (i, 0)),  # tables
        rows_spec,  # q_in
        pl.BlockSpec((None, None, num_pages, page_size, head_dim), lambda i, h, s: (0, h, 0, 0, 0)),  # K
        pl.BlockSpec((None, None, num_pages, page_size, head_dim), lambda i, h, s: (1, h, 0, 0, 0)),  # V
    ]
    inputs = [base, item_kv_len, tables, q_in, kv_pages, kv_pages]
    if sink_rows is not None:
        in_specs.append(pl.BlockSpec((None, rows), lambda i, h, s: (h, 0)))  # this KV head's tile rows' sinks
        inputs.append(sink_rows)
    if splits == 1:
        out_shape = [jax.ShapeDtypeStruct(q_in.shape, q_in.dtype)]
        out_specs = [rows_spec]
    else:  # partials as [rows, D] tiles in any layout: scratch between two of our kernels, no XLA copy to save
        tile_shape = (num_items, num_kv_heads, rows)
        out_shape = [
            jax.ShapeDtypeStruct((splits, *tile_shape, head_dim), jnp.float32),  # acc
            jax.ShapeDtypeStruct((splits, *tile_shape), jnp.float32),  # m
            jax.ShapeDtypeStruct((splits, *tile_shape), jnp.float32),  # l
        ]
        out_specs = [
            pl.BlockSpec((None, None, None, rows, head_dim), lambda i, h, s: (s, i, h, 0, 0)),
            pl.BlockSpec((None, None, None, rows), lambda i, h, s: (s, i, h, 0)),
            pl.BlockSpec((None, None, None, rows), lambda i, h, s: (s, i, h, 0)),
        ]
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(num_items, num_kv_heads, splits),
        in_specs=in_specs,
        out_specs=out_specs,
        compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=interpret,
        name=f"ragged_paged_attention_q{cfg.q_block}_kv{cfg.kv_block}_s{splits}",
    )(*inputs)
    if splits == 1:
        return outs[0]
    used = group * cfg.q_block  # the rows that hold queries; the rest are the tile's padding
    out_rows = used if _is_pow2(used) else rows
    return _merge_splits(*outs, out_rows, q_in.dtype, group, num_q_heads, interpret)


def _merge_splits(
    acc: jax.Array,  # f32[splits, N, Hkv, rows, D], each split's unnormalized output
    row_max: jax.Array,  # f32[splits, N, Hkv, rows], base-2
    row_sum: jax.Array,  # f32[splits, N, Hkv, rows]
    out_rows: int,  # the leading rows to merge (a power of two)
    dtype: jnp.dtype,
    group: int,
    num_q_heads: int | None,  # decode: written straight into [T * Hq, D]
    interpret: bool,
) -> jax.Array:  # decode: [T * Hq, D]; else [N, Hkv, out_rows, D]
    """The split-K merge by each split's running max and sum, as one kernel over (item, KV head). As XLA ops it was
    three fusions (weights, the sum, the weighted outputs): six of a batch-1 Llama-3-8B step's ~19 kernels a layer
    on an H200 were such ~1.4 us fusions (docs/benchmarks.md)."""
    splits, num_items, num_kv_heads, _, head_dim = acc.shape
    stats = pl.BlockSpec((splits, None, None, out_rows), lambda i, h: (0, i, h, 0))
    if num_q_heads is None:
        out_shape = (num_items, num_kv_heads, out_rows, head_dim)
        out_spec = pl.BlockSpec((None, None, out_rows, head_dim), lambda i, h: (i, h, 0, 0))
    else:
        out_shape = (num_items * num_q_heads, head_dim)
        out_spec = pl.BlockSpec(out_shape, lambda i, h: (0, 0))
    return pl.pallas_call(
        functools.partial(_merge_kernel, num_splits=splits, group=group, num_q_heads=num_q_heads),
        out_shape=jax.ShapeDtypeStruct(out_shape, dtype),
        grid=(num_items, num_kv_heads),
        in_specs=[pl.BlockSpec((splits, None, None, out_rows, head_dim), lambda i, h: (0, i, h, 0, 0)), stats, stats],
        out_specs=out_spec,
        interpret=interpret,
        name=f"ragged_paged_attention_merge_s{splits}",
    )(acc, row_max, row_sum)


def _merge_kernel(
    acc_ref: Any, max_ref: Any, sum_ref: Any, o_ref: Any, *, num_splits: int, group: int, num_q_heads: int | None
) -> None:
    """One (item, KV head): splits are read one at a time, so no tensor has a split axis (any split count)."""
    top = max_ref[0]  # f32[rows]
    for split in range(1, num_splits):
        top = jnp.maximum(top, max_ref[split])
    total = jnp.zeros_like(top)  # stays 0 for a row that saw nothing
    out = jnp.zeros(acc_ref.shape[1:], jnp.float32)  # [rows, D]
    for split in range(num_splits):
        weight = jnp.exp2(max_ref[split] - top)
        total += weight * sum_ref[split]
        out += weight[:, None] * acc_ref[split]
    _store_rows(o_ref, out / jnp.where(total > 0, total, 1.0)[:, None], group, num_q_heads)


def _own_rows(rows: int, group: int, num_q_heads: int) -> tuple[pl.Slice, jax.Array]:
    """Decode program (token t, KV head h)'s window of the [T * Hq, D] query and output rows: ``rows`` rows from t's
    first query head of h, of which the first ``group`` are its own. The rest are masked: never read (0 instead, as
    in a padded tile) nor written, so a window may run past the array's end; a masked row's address is never used."""
    first = pl.program_id(0) * num_q_heads + pl.program_id(1) * group
    return pl.ds(first, rows), lax.broadcasted_iota(jnp.int32, (rows, 1), 0) < group


def _load_rows(q_ref: Any, rows: int, group: int, num_q_heads: int | None) -> jax.Array:  # [rows, D]
    if num_q_heads is None:
        return q_ref[...]
    window, own = _own_rows(rows, group, num_q_heads)
    return plgpu.load(q_ref.at[window, :], mask=own, other=0.0)


def _store_rows(o_ref: Any, out: jax.Array, group: int, num_q_heads: int | None) -> None:
    if num_q_heads is None:
        o_ref[...] = out.astype(o_ref.dtype)
        return
    window, own = _own_rows(out.shape[0], group, num_q_heads)
    plgpu.store(o_ref.at[window, :], out.astype(o_ref.dtype), mask=own)


def _kernel(
    base_ref,  # i32[], last key column the item's first query row sees (kv_len - q_len + its index i)
    kv_len_ref,  # i32[], the item's KV length; 0 for a padding item
    pages_ref,  # i32[table_width], the item's block table, padded with page 0
    q_ref,  # tiles: [rows, D], row r = query row r // group of the item, query head r % group of this KV head;
    # decode: all of q as [T * Hq, D], the program's rows found by _own_rows
    k_ref,  # [num_pages, page_size, D], this KV head's keys
    v_ref,  # [num_pages, page_size, D], this KV head's values
    *refs,  # with has_sinks the tile rows' sinks f32[rows] (base 2); then the outputs: one split: o in q_ref's
    # layout; several: acc f32[rows, D], row max f32[rows], row sum f32[rows]
    sm_scale: float,
    soft_cap: float | None,
    sliding_window: int | None,
    group: int,
    rows: int,
    num_q_heads: int | None,  # decode layout (q_block == 1): q and o are [T * num_q_heads, D]
    q_block: int,
    kv_block: int,
    num_splits: int,
    has_sinks: bool,
) -> None:
    sinks_ref, out_refs = (refs[0], refs[1:]) if has_sinks else (None, refs)
    head_dim = q_ref.shape[-1]
    page_size = k_ref.shape[1]
    pages_per_block = kv_block // page_size
    base = base_ref[()]
    kv_len = kv_len_ref[()]
    # Last key column each tile row sees; clipped so that padded rows never reach past the sequence either.
    row_index = lax.div(lax.broadcasted_iota(jnp.int32, (rows,), 0), jnp.int32(group))  # i32[rows]
    row_last = jnp.minimum(base + row_index, kv_len - 1)  # i32[rows]

    # Key blocks [first, end) hold every column some row sees; this split takes its even share of them.
    hi = jnp.maximum(jnp.minimum(base + q_block, kv_len), 0)  # i32[], one past the item's last visible column
    lo = jnp.int32(0) if sliding_window is None else jnp.clip(base - sliding_window + 1, 0, hi)
    first = lax.div(lo, jnp.int32(kv_block))
    num_blocks = lax.div(hi + kv_block - 1, jnp.int32(kv_block)) - first
    per_split = lax.div(num_blocks + num_splits - 1, jnp.int32(num_splits))
    start = first + pl.program_id(2) * per_split
    end = jnp.minimum(start + per_split, first + num_blocks)

    q = _load_rows(q_ref, rows, group, num_q_heads)  # [rows, D]
    if is_fp8(k_ref.dtype) and q.dtype == jnp.bfloat16:
        limit = float(jnp.finfo(FP8_COMPUTE_DTYPE).max)
        q = jnp.clip(q.astype(jnp.float32), -limit, limit).astype(FP8_COMPUTE_DTYPE)
    scale = sm_scale if soft_cap is not None else sm_scale * _LOG2E
    hi_prec = lax.Precision.HIGHEST  # f32 inputs: IEEE dots, not TF32; no effect on bf16

    # K/V rows are gathered as one [kv_block, D] load with a page id per row. Loading [pages, page_size, D] and
    # reshaping measured 1.3-1.7x slower on an H200 (2026-11-26): the reshape gets in the way of Triton's pipelining.
    token = lax.broadcasted_iota(jnp.int32, (kv_block,), 0)  # i32[kv_block], key row within a block
    token_page, token_slot = lax.div(token, jnp.int32(page_size)), lax.rem(token, jnp.int32(page_size))

    def body(block: jax.Array, carry: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, ...]:
        acc, row_max, row_sum = carry  # f32[rows, D], f32[rows], f32[rows]
        page = pages_ref[block * pages_per_block + token_page]  # i32[kv_block], page of each key row
        k = k_ref[page, token_slot].astype(q.dtype)  # [kv_block, D]; an FP8 pool's tile widened (scale outside)
        v = v_ref[page, token_slot].astype(q.dtype)  # [kv_block, D]
        s = plgpu.dot(q, k, trans_b=True, precision=hi_prec) * scale  # f32[rows, kv_block], base-2 logits
        if soft_cap is not None:
            s = (soft_cap * _LOG2E) * jnp.tanh(s / soft_cap)
        col = block * kv_block + lax.broadcasted_iota(jnp.int32, (1, kv_block), 1)  # i32[1, kv_block]
        visible = col <= row_last[:, None]  # bool[rows, kv_block]; hides stale slots past kv_len too
        if sliding_window is not None:
            visible &= col > row_last[:, None] - sliding_window
        s = jnp.where(visible, s, _MASK_VALUE)
        new_max = jnp.maximum(row_max, s.max(axis=1))  # f32[rows]
        p = jnp.where(visible, jnp.exp2(s - new_max[:, None]), 0.0)  # f32[rows, kv_block]
        alpha = jnp.exp2(row_max - new_max)  # f32[rows]
        acc = acc * alpha[:, None] + plgpu.dot(p.astype(v.dtype), v, precision=hi_prec)
        return acc, new_max, row_sum * alpha + p.sum(axis=1)

    init_max, init_sum = jnp.full((rows,), _MASK_VALUE, jnp.float32), jnp.zeros((rows,), jnp.float32)
    if sinks_ref is not None:  # the sink: a key of value 0 that the first split sees before its blocks
        first_split = pl.program_id(2) == 0
        init_max = jnp.where(first_split, sinks_ref[...], init_max)
        init_sum = jnp.where(first_split, 1.0, init_sum)
    init = (jnp.zeros((rows, head_dim), jnp.float32), init_max, init_sum)
    acc, row_max, row_sum = lax.fori_loop(start, end, body, init)
    if num_splits == 1:
        (o_ref,) = out_refs
        _store_rows(o_ref, acc / jnp.where(row_sum > 0, row_sum, 1.0)[:, None], group, num_q_heads)
    else:
        acc_ref, max_ref, sum_ref = out_refs
        acc_ref[...] = acc
        max_ref[...] = row_max
        sum_ref[...] = row_sum


def _tile_rows(q_block: int, group: int) -> int:
    return max(_MIN_TILE_ROWS, _pow2_ceil(q_block * group))


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _pow2_ceil(n: int) -> int:
    return 1 << (max(n, 1) - 1).bit_length()


def _pow2_floor(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)

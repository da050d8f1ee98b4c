"""Ragged paged attention for steps with prefill rows: a hand-written Triton kernel, called from JAX by jax-triton.

The Pallas kernel (``ragged_paged_attention``) packs a KV head's query heads into one tile so that decodes read each
page once; that layout leaves prefill far below the tensor cores' rate. Here a program owns ``block_m`` query rows
of one sequence and one query head (or, with ``pack_gqa``, ``block_m / group`` rows of a KV head's ``group`` query
heads), the tiling of FlashAttention: a ``[block_m, head_dim]`` query tile against ``[block_n, head_dim]`` key tiles
gathered row by row from the pool through the block table, online softmax in base 2. Key blocks that every row of
the tile sees wholly run without a mask; only the blocks on the causal diagonal (and, with a sliding window, every
block) are masked, and blocks past the tile's last row are never visited. Unpacked, GQA's shared K/V are re-read
per query head (from L2 when the heads' programs run side by side: ``heads_first``). Work items are the
reference's (``query_blocks``); rows no item owns (padding) come out zero. A head's attention sink (gpt-oss) starts
its rows' running max and sum. An FP8 pool's K/V tiles are widened to q's dtype in registers as they are loaded, so
both dots run in q's dtype; their per-layer scales stay outside the kernel, as in the Pallas kernel: K's folded
into q, V's applied to the output.

``prefill_attention`` is the jitted JAX entry (GPU only: jax-triton launches compiled Triton); ``work_items`` and
``kernel_params`` are the host logic it shares with the CPU tests, which run ``_prefill_kernel`` itself in Triton's
interpreter on torch CPU tensors (and, for an FP8 pool, this entry whole, a fake jax-triton launching the interpreter).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from pallas_kernels.kv_quant import Scale, check_scales, is_fp8, rescale
from pallas_kernels.reference import _validate as _validate_reference_inputs
from pallas_kernels.reference import max_items, query_blocks
from pallas_kernels.triton_call import triton_call

_LOG2E = tl.constexpr(math.log2(math.e))
# Scores outside the mask; finite so that a row that sees nothing yet computes exp2(0), never NaN.
_MASK_VALUE = tl.constexpr(-0.7 * float(jnp.finfo(jnp.float32).max))


@dataclasses.dataclass(frozen=True)
class PrefillConfig:
    """Static tiling of one call (hashable: a jit static argument)."""

    block_m: int = 128  # query rows of one sequence per program
    block_n: int = 64  # keys per inner-loop step
    num_warps: int = 8
    num_stages: int = 3
    # The grid (query heads, items), not (items, query heads): the programs of one KV head's query heads over the
    # same rows launch side by side and find its pages in L2 instead of each reading them from HBM (GQA shares a KV
    # head among 4 query heads in Llama-3-8B). H100, 2048-token chunk, 2026-12-05 (bench_kernels --tune): 128 x 128 /
    # 8 / 2 tiles 143.4 -> 124.7 us, 64 x 64 / 4 / 3 141.6 -> 121.8 us.
    heads_first: bool = True
    # A tile holds a KV head's query heads (GQA's group) over block_m / group query rows, not one query head over
    # block_m rows: each K/V tile is loaded once for the group, and a decode row (one query) fills group rows of its
    # tile instead of one (vLLM's Triton attention packs the same way). block_m must be a multiple of the group.
    pack_gqa: bool = False

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"PrefillConfig.{name}={value} must be a power of two >= 16 (Triton's dot needs it)")


def default_prefill_config(num_tokens: int, num_seqs: int, head_dim: int = 128, group: int = 1) -> PrefillConfig:
    """Tiling by the step's token count, not its mean query length: the runner's buckets pad sequences (a lone
    2000-token prefill runs in the (2048 tokens, 256 sequences) bucket). Unused items exit at once. H200, 32 q / 8 KV
    heads, d 128, bf16, 2026-12-03 (bench_kernels --tune): 128 x 128 tiles, 8 warps, 2 stages were fastest for a 2048
    chunk fresh and over a 4k prefix (234 and 341 TFLOP/s against 208 and 297 for 128 x 64 / 8 / 3); 64 x 64 / 4 / 3
    was within 1-4 % and gives short chunks twice the programs.

    A KV head's ``group`` query heads share a tile (``pack_gqa``) wherever the group divides its rows: a serving
    step's decode rows (one query each) then fill ``group`` rows of a tile, not one. H100, 2026-12-06: 32 decodes at
    1k context beside a 480-token chunk 136.7 -> 68.5 us a layer (64 x 64) and 227.0 -> 86.2 (128 x 128); a lone
    2048-token chunk within 1-3 % either way (H100, 2026-12-06)."""
    del num_seqs  # see above: the bucket's sequence count says little about the rows a tile will hold
    if num_tokens > 512:
        config = PrefillConfig(block_m=128, block_n=128, num_warps=8, num_stages=2)
    elif num_tokens >= 64:
        config = PrefillConfig(block_m=64, block_n=64, num_warps=4, num_stages=3)
    else:
        config = PrefillConfig(block_m=16, block_n=64, num_warps=4, num_stages=3)
    config = for_head_dim(config, head_dim)
    return dataclasses.replace(config, pack_gqa=group > 1 and config.block_m % group == 0)


def for_head_dim(config: PrefillConfig, head_dim: int) -> PrefillConfig:
    """``config``'s tiles for heads ``head_dim`` wide: unchanged up to 128; for wider heads (Gemma 2 / 3's 256,
    Gemma 4's full layers' 512) rows and keys shrink as the heads widen, since a program holds a ``[block_m,
    head_dim]`` float32 accumulator in registers and ``num_stages`` pairs of ``[block_n, head_dim]`` K/V tiles in
    shared memory. Compiled for sm_90 by Triton (2026-12-05, bf16, 2048-token step): the 128 x 128 / 8-warp tiles
    spill 1,080 bytes a thread at D=256 and 6,408 at D=512, and ask 320 / 640 KiB of shared memory (an H100 / H200
    block has 227: the launch fails, as check_kernels' fixed 128 x 128 tiles did on an H100, 2026-12-06); these
    (64 x 64 and 32 x 32 on 8 warps) spill none and ask 100-160 KiB. check_kernels' D=256 / 512 cases passed on an
    H100 with them (2026-12-06)."""
    if head_dim <= 128:
        return config
    shrink = head_dim // 128
    return dataclasses.replace(
        config, block_m=max(16, config.block_m // shrink), block_n=max(16, config.block_n // shrink)
    )


def kernel_params(
    q_shape: tuple[int, ...],
    kv_shape: tuple[int, ...],
    table_width: int,
    num_seqs: int,
    *,
    sm_scale: float,
    soft_cap: float | None,
    sliding_window: int | None,
    dot_precision: str,
    config: PrefillConfig,
    has_sinks: bool = False,
) -> dict[str, Any]:
    """The kernel's compile-time parameters (Triton constexprs) for one call's static shapes and options."""
    _, num_q_heads, head_dim = q_shape
    _, num_kv_heads, num_pages, page_size, _ = kv_shape
    group = num_q_heads // num_kv_heads
    return dict(
        NUM_SEQS=num_seqs,
        TABLE_WIDTH=table_width,
        NUM_Q_HEADS=num_q_heads,
        GROUP=group,
        TILE_HEADS=tile_heads(config, group),
        HEAD_DIM=head_dim,
        PAGE_SIZE=page_size,
        HEAD_STRIDE=num_pages * page_size * head_dim,
        V_OFFSET=num_kv_heads * num_pages * page_size * head_dim,
        SM_SCALE=float(sm_scale),
        SOFT_CAP=float(soft_cap or 0.0),
        WINDOW=int(sliding_window or 0),
        HAS_SINKS=has_sinks,
        DOT_PRECISION=dot_precision,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        HEADS_FIRST=config.heads_first,
    )


def tile_heads(config: PrefillConfig, group: int) -> int:
    """Query heads one tile holds: the GQA group when packed (``pack_gqa``), else one."""
    if not config.pack_gqa:
        return 1
    if config.block_m % group:
        raise ValueError(
            f"PrefillConfig.block_m={config.block_m} must be a multiple of the GQA group ({group}) to pack it"
        )
    return group


def item_rows(config: PrefillConfig, group: int) -> int:
    """Query rows of one sequence a work item covers: the tile's rows over the heads it holds."""
    return config.block_m // tile_heads(config, group)


def grid(num_items: int, num_q_heads: int, group: int, config: PrefillConfig) -> tuple[int, int]:
    """The launch grid: one program per work item and tile of query heads, in ``config``'s order."""
    heads = num_q_heads // tile_heads(config, group)
    return (heads, num_items) if config.heads_first else (num_items, heads)


def work_items(query_start_loc: jax.Array, num_tokens: int, rows: int) -> tuple[jax.Array, jax.Array]:
    """(i32[N] sequence, i32[N] first query index) of each program row of the grid, items of ``rows`` query rows
    (``item_rows``); S marks an item past the last."""
    num_seqs = query_start_loc.shape[0] - 1
    n = max_items(num_tokens, num_seqs, rows)
    q_lens = query_start_loc[1:] - query_start_loc[:-1]
    seq, first, valid = query_blocks(q_lens, jnp.arange(n, dtype=jnp.int32), rows)
    return jnp.where(valid, seq, num_seqs).astype(jnp.int32), first.astype(jnp.int32)


def prefill_attention(
    q: jax.Array,  # [T, num_q_heads, head_dim]
    kv_pages: jax.Array,  # [2, num_kv_heads, num_pages, page_size, head_dim]
    kv_lens: jax.Array,  # i32[S]
    block_tables: jax.Array,  # i32[S, pages_per_seq]
    query_start_loc: jax.Array,  # i32[S + 1]
    *,
    sm_scale: float,
    soft_cap: float | None = None,
    sliding_window: int | None = None,
    config: PrefillConfig | None = None,
    sinks: jax.Array | None = None,  # [num_q_heads]
    k_scale: Scale = 1.0,
    v_scale: Scale = 1.0,
) -> jax.Array:  # [T, num_q_heads, head_dim] in q's dtype; padding rows are 0
    """Same contract as ``ref_ragged_paged_attention``; compiles only for a CUDA device (jax-triton). An FP8 pool's
    scales: ``q . (k_scale * k) = (k_scale * q) . k`` and ``p . (v_scale * v) = v_scale * (p . v)``, so q is scaled
    before the launch and the output after it (``kv_quant.rescale``: free for the engine's scales of 1.0)."""
    _validate_reference_inputs(
        q, kv_pages, kv_lens, block_tables, query_start_loc, soft_cap, sliding_window, None, sinks
    )
    check_shapes(q, kv_pages)
    check_scales(kv_pages.dtype, k_scale, v_scale)
    num_tokens, num_q_heads, _ = q.shape
    num_seqs, table_width = block_tables.shape
    group = num_q_heads // kv_pages.shape[1]
    cfg = config or default_prefill_config(num_tokens, num_seqs, q.shape[-1], group)
    item_seq, item_first = work_items(query_start_loc, num_tokens, item_rows(cfg, group))
    params = kernel_params(
        q.shape, kv_pages.shape, table_width, num_seqs, sm_scale=sm_scale, soft_cap=soft_cap,
        sliding_window=sliding_window, dot_precision="ieee" if q.dtype == jnp.float32 else "tf32", config=cfg,
        has_sinks=sinks is not None,
    )  # fmt: skip
    sinks = jnp.zeros((num_q_heads,), jnp.float32) if sinks is None else sinks.astype(jnp.float32)  # read if any
    out = triton_call(
        rescale(q, k_scale), kv_pages, block_tables.astype(jnp.int32), item_seq, item_first,
        query_start_loc.astype(jnp.int32), kv_lens.astype(jnp.int32), sinks,
        kernel=_prefill_kernel,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        grid=grid(item_seq.shape[0], num_q_heads, group, cfg),
        zeroed_outputs=(0,),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        name=f"triton_prefill_m{cfg.block_m}_n{cfg.block_n}",
        **params,
    )  # fmt: skip
    return rescale(out, v_scale)


def check_shapes(q: jax.Array, kv_pages: jax.Array) -> None:
    """What the kernel needs beyond the reference's contract: a pool in q's dtype or FP8, power-of-two head_dim and
    page_size."""
    head_dim, page_size = q.shape[-1], kv_pages.shape[3]
    if q.dtype != kv_pages.dtype and not is_fp8(kv_pages.dtype):
        raise ValueError(f"kv_pages' dtype {kv_pages.dtype} must be q's ({q.dtype}) or float8_e4m3fn (an FP8 pool)")
    for name, value in (("head_dim", head_dim), ("page_size", page_size)):
        if value < 1 or value & (value - 1) or (name == "head_dim" and value < 16):
            raise ValueError(f"{name}={value} must be a power of two (head_dim >= 16) for the Triton prefill kernel")


@triton.jit
def _prefill_kernel(
    q_ptr,  # [T, Hq, D]
    kv_ptr,  # [2, Hkv, P, page_size, D] in q's dtype or float8_e4m3fn
    tables_ptr,  # i32[S, TABLE_WIDTH]
    item_seq_ptr,  # i32[N], NUM_SEQS for an invalid item
    item_first_ptr,  # i32[N]
    qsl_ptr,  # i32[S + 1]
    kv_lens_ptr,  # i32[S]
    sinks_ptr,  # f32[Hq], read only with HAS_SINKS
    out_ptr,  # [T, Hq, D], zeroed before the launch
    NUM_SEQS: tl.constexpr,
    TABLE_WIDTH: tl.constexpr,
    NUM_Q_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    TILE_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    HEAD_STRIDE: tl.constexpr,
    V_OFFSET: tl.constexpr,
    SM_SCALE: tl.constexpr,
    SOFT_CAP: tl.constexpr,
    WINDOW: tl.constexpr,
    HAS_SINKS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEADS_FIRST: tl.constexpr,
):
    # Last items first: a sequence's later query blocks see the most keys, so the longest programs start first and
    # the short ones fill the tail of the grid.
    if HEADS_FIRST:
        item = tl.num_programs(1) - 1 - tl.program_id(1)
        head_tile = tl.program_id(0)
    else:
        item = tl.num_programs(0) - 1 - tl.program_id(0)
        head_tile = tl.program_id(1)
    seq_or_none = tl.load(item_seq_ptr + item)
    valid = seq_or_none < NUM_SEQS
    seq = tl.minimum(seq_or_none, NUM_SEQS - 1)
    first = tl.load(item_first_ptr + item)
    q_start = tl.load(qsl_ptr + seq)
    q_len = tl.load(qsl_ptr + seq + 1) - q_start
    kv_len = tl.load(kv_lens_ptr + seq)
    context = kv_len - q_len  # keys before this step's rows

    # Tile row t is query first + t // TILE_HEADS of query head head_tile * TILE_HEADS + t % TILE_HEADS (one head
    # when unpacked: the tile's rows are consecutive queries).
    offs_t = tl.arange(0, BLOCK_M)
    offs_m = first + offs_t // TILE_HEADS  # query index within the sequence
    head = head_tile * TILE_HEADS + offs_t % TILE_HEADS
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = (offs_m < q_len) & valid
    q_rows = (q_start + offs_m).to(tl.int64) * (NUM_Q_HEADS * HEAD_DIM) + head * HEAD_DIM
    q = tl.load(q_ptr + q_rows[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    # Last key each row sees, clipped so that rows past the chunk never reach beyond the sequence.
    row_last = tl.minimum(context + offs_m, kv_len - 1)

    # Keys [lo, hi) hold every column a row of the tile sees; [lo, full_end) is seen by every row, unmasked.
    hi = tl.where(valid, tl.minimum(context + first + BLOCK_M // TILE_HEADS, kv_len), 0)
    if WINDOW > 0:
        lo = tl.maximum(context + first - WINDOW + 1, 0) // BLOCK_N * BLOCK_N
        full_end = lo
    else:
        lo = 0
        full_end = tl.minimum((context + first + 1) // BLOCK_N * BLOCK_N, hi)
    k_base = kv_ptr + (head_tile * TILE_HEADS // GROUP).to(tl.int64) * HEAD_STRIDE
    table = tables_ptr + seq.to(tl.int64) * TABLE_WIDTH
    if SOFT_CAP > 0:
        qk_scale = SM_SCALE
    else:
        qk_scale = SM_SCALE * _LOG2E  # log2(e): the softmax runs in base 2

    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if HAS_SINKS:  # the head's sink: a key of value 0 every row sees first (its logit, in base 2, and exp2(0))
        row_max = tl.full([BLOCK_M], 0.0, dtype=tl.float32) + tl.load(sinks_ptr + head) * _LOG2E
        row_sum = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    else:
        row_max = tl.full([BLOCK_M], _MASK_VALUE, dtype=tl.float32)
        row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start in range(lo, full_end, BLOCK_N):
        acc, row_max, row_sum = _attend_block(
            acc, row_max, row_sum, q, k_base, table, start, offs_n, offs_d, row_last, kv_len, qk_scale,
            V_OFFSET, PAGE_SIZE, HEAD_DIM, SOFT_CAP, WINDOW, DOT_PRECISION, False,
        )  # fmt: skip
    for start in range(full_end, hi, BLOCK_N):
        acc, row_max, row_sum = _attend_block(
            acc, row_max, row_sum, q, k_base, table, start, offs_n, offs_d, row_last, kv_len, qk_scale,
            V_OFFSET, PAGE_SIZE, HEAD_DIM, SOFT_CAP, WINDOW, DOT_PRECISION, True,
        )  # fmt: skip
    out = acc / tl.where(row_sum > 0, row_sum, 1.0)[:, None]
    tl.store(out_ptr + q_rows[:, None] + offs_d[None, :], out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _attend_block(
    acc,
    row_max,
    row_sum,
    q,
    k_base,
    table,
    start,
    offs_n,
    offs_d,
    row_last,
    kv_len,
    qk_scale,
    V_OFFSET: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    SOFT_CAP: tl.constexpr,
    WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    MASKED: tl.constexpr,
):
    """One key block of the online softmax: gather its K/V rows by page (an FP8 pool's widened to q's dtype, a no-op
    cast otherwise), score, rescale, accumulate."""
    cols = start + offs_n
    page = tl.load(table + cols // PAGE_SIZE, mask=cols < kv_len, other=0)  # page 0 is reserved: always readable
    kv_rows = page.to(tl.int64) * (PAGE_SIZE * HEAD_DIM) + (cols % PAGE_SIZE) * HEAD_DIM
    k = tl.load(k_base + kv_rows[None, :] + offs_d[:, None]).to(q.dtype)  # [D, BLOCK_N]
    s = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale  # f32[BLOCK_M, BLOCK_N]
    if SOFT_CAP > 0:
        s = (SOFT_CAP * _LOG2E) * (2.0 * tl.sigmoid(2.0 * s / SOFT_CAP) - 1.0)  # cap * tanh(s / cap)
    if MASKED:
        visible = cols[None, :] <= row_last[:, None]
        if WINDOW > 0:
            visible = visible & (cols[None, :] > row_last[:, None] - WINDOW)
        s = tl.where(visible, s, _MASK_VALUE)
    new_max = tl.maximum(row_max, tl.max(s, axis=1))
    p = tl.math.exp2(s - new_max[:, None])
    if MASKED:
        p = tl.where(visible, p, 0.0)
    alpha = tl.math.exp2(row_max - new_max)
    v = tl.load(k_base + V_OFFSET + kv_rows[:, None] + offs_d[None, :]).to(q.dtype)  # [BLOCK_N, D]
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, new_max, row_sum * alpha + tl.sum(p, axis=1)

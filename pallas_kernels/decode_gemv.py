"""A decode step's bf16 matmuls of a few rows as one Pallas kernel (Triton backend) each, with the work XLA launches
around them folded in: the RMSNorm of the input before, the SwiGLU or the residual add after.

Why: a batch-1 Llama-3-8B step on an H200 spends 3.69 of its 4.17 ms in XLA's GEMMs, which stream the weights at
~4.1 TB/s, and ~0.41 ms in ~260 small fusions at ~1.6 us each, 8 a layer (docs/benchmarks.md, 2026-12-06): the
norm's reduction before QKV and before gate-up, the split-K sums with the residual adds after o_proj and down, the
SwiGLU between gate-up and down. A matmul that owns its epilogue and prologue removes those launches, if it streams
the weights as fast as XLA's.

One program owns ``block_n`` output columns and walks the input dimension (all of it, or with ``split_k`` its share,
writing float32 partial sums that XLA adds where it reads them), ``block_k`` inputs a step: it loads the rows of ``x``
(masked to ``M``, the tile padded to 16 rows for Triton's tensor-core dot), multiplies them by the norm's weight, and
accumulates ``x_w @ w`` in float32 (``swap_ab``: as ``w^T x^T``, the weight tile the MMA's A side) beside each row's
sum of squares (a split reads all of its rows' inputs once more for those); the norm's factor
``rsqrt(mean(x^2) + eps)`` scales the sums at the end, as ``jllm.models.layers.normed_linear`` does (``(x * w) @ W *
factor``: the GEMM reads ``x * w`` rounded to the weights' dtype). With ``swiglu`` the weight is gate-up's ``[K, 2,
F]`` and a program accumulates both halves of its columns, returning ``silu(gate) * up`` ``[M, F]`` (whole sums only:
no split-K); with ``residual`` ``[M, N]`` it returns ``residual + x @ w`` (added in split 0's partial sums). Each
product is rounded to the output dtype once, where XLA's path rounds between steps: results agree to bf16 rounding.

Weights stay ``[K, N]`` (``Linear``'s layout), read in place; the output is ``[M, N]``, written with masked rows.
``interpret=True`` runs the kernel on any backend (the CPU tests); ``ref_decode_matmul`` is the float32 oracle.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Rows of a program's tile: Triton's tensor-core dot needs M >= 16; a step's rows past M are masked (never read).
TILE_ROWS = 16
# Programs to aim for with split-K (~1 per SM of an H100 / H200, 132 SMs), and the fewest column blocks that need none
# (H100 2026-12-07: o_proj and down fastest with 4 splits of 32 blocks, QKV with 96 blocks, gate-up with 112).
_TARGET_PROGRAMS = 128
_WIDE_PROGRAMS = 96


@dataclasses.dataclass(frozen=True)
class DecodeGemvConfig:
    """Static tiling of one call (hashable: a jit static argument)."""

    block_n: int = 32  # output columns per program (with swiglu: of each half)
    block_k: int = 128  # input rows per loop step
    num_warps: int = 4
    num_stages: int = 4  # Triton software-pipelining depth of the weight loads
    # programs sharing one column block's inputs, each writing float32 partial sums that XLA adds where it reads the
    # output (as its own split-K GEMMs do); no SwiGLU then (it needs whole sums), the residual in split 0's
    split_k: int = 1
    # the weight tile as the MMA's A side (``out^T = w^T x^T``), as XLA's autotuned one-row GEMMs lay it (64-128
    # columns of M, the rows as N = 16): a column block of 64 or more runs Hopper's wgmma, not mma.sync's 16 rows
    swap_ab: bool = False

    def __post_init__(self) -> None:
        for name in ("block_n", "block_k"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"DecodeGemvConfig.{name}={value} must be a power of two >= 16 (Triton's dot)")
        for name in ("num_warps", "num_stages", "split_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"DecodeGemvConfig.{name} must be >= 1, got {getattr(self, name)}")


def default_config(k: int, n: int, *, swiglu: bool = False) -> DecodeGemvConfig:
    """The tiling the H100 sweep found fastest for each of Llama-3-8B's one-row matmuls (``bench_decode_gemv.py
    --tune``, 2026-12-07; each within 1.08x of XLA's GEMM or faster, the QKV one 0.91x), as a rule of the output
    width: the weight tile as the MMA's A side, 3 stages, 4 warps; 128-column blocks where they give
    ``_WIDE_PROGRAMS`` programs (gate-up), else 64-column blocks stepping 256 inputs where those do (QKV), else
    128-column blocks with split-K up to ``_TARGET_PROGRAMS`` programs (o_proj, down: 4 splits; never with
    ``swiglu``, which needs whole sums)."""
    if n // 128 >= _WIDE_PROGRAMS:
        block_n, block_k, split = 128, 64, 1
    elif n // 64 >= _WIDE_PROGRAMS:
        block_n, block_k, split = 64, 256, 1
    else:
        block_n, block_k, split = 128, 64, 0  # split-K from the column blocks, below
    while block_n > 16 and n % block_n:
        block_n //= 2
    if not split:
        split = 1 if swiglu else 1 << (max(1, _TARGET_PROGRAMS // max(1, n // block_n)).bit_length() - 1)
    while block_k > 16 and k % block_k:
        block_k //= 2
    while split > 1 and k % (block_k * split):
        split //= 2
    return DecodeGemvConfig(block_n, block_k, num_warps=4, num_stages=3, split_k=split, swap_ab=block_n >= 64)


def supports(m: int, k: int, n: int, config: DecodeGemvConfig | None = None, *, swiglu: bool = False) -> bool:
    """Whether ``decode_matmul`` takes these shapes (the caller keeps XLA's matmul otherwise)."""
    cfg = config or default_config(k, n, swiglu=swiglu)
    return 1 <= m <= TILE_ROWS and k % (cfg.block_k * cfg.split_k) == 0 and n % cfg.block_n == 0


def decode_matmul(
    x: jax.Array,  # [M, K], M <= 16
    w: jax.Array,  # [K, N], or [K, 2, F] with swiglu (gate, up)
    *,
    norm_weight: jax.Array | None = None,  # [K]: RMSNorm of x first, with this weight
    eps: float = 1e-6,
    residual: jax.Array | None = None,  # [M, N]: added to the product
    swiglu: bool = False,
    config: DecodeGemvConfig | None = None,
    interpret: bool = False,
) -> jax.Array:  # [M, N] (swiglu: [M, F]) in w's dtype
    """``x @ w`` with the optional norm before and SwiGLU or residual after (module docstring); ``ref_decode_matmul``
    computes the same in float32."""
    m, k = x.shape
    out_width = _check(x, w, norm_weight, residual, swiglu)
    cfg = config or default_config(k, out_width, swiglu=swiglu)
    if not supports(m, k, out_width, cfg):
        raise ValueError(
            f"decode_matmul takes 1..{TILE_ROWS} rows and widths that are multiples of the tiling: got M={m}, K={k}, "
            f"N={out_width} with block_k={cfg.block_k}, block_n={cfg.block_n}, split_k={cfg.split_k}"
        )
    split = cfg.split_k
    if swiglu and split > 1:
        raise ValueError(f"swiglu needs whole sums: split_k={split} must be 1")
    bn = cfg.block_n
    in_specs = [pl.BlockSpec((m, k), lambda j, s: (0, 0))]  # x: every row, all of K
    inputs = [x]
    if swiglu:  # the program's columns of gate, then of up
        in_specs += [
            pl.BlockSpec((k, None, bn), lambda j, s: (0, 0, j)),
            pl.BlockSpec((k, None, bn), lambda j, s: (0, 1, j)),
        ]
        inputs += [w, w]
    else:
        in_specs.append(pl.BlockSpec((k, bn), lambda j, s: (0, j)))
        inputs.append(w)
    if norm_weight is not None:
        in_specs.append(pl.BlockSpec((k,), lambda j, s: (0,)))
        inputs.append(norm_weight)
    if residual is not None:
        in_specs.append(pl.BlockSpec((m, bn), lambda j, s: (0, j)))
        inputs.append(residual)
    kernel = functools.partial(
        _kernel,
        block_k=cfg.block_k,
        k_per_split=k // split,
        swap_ab=cfg.swap_ab,
        eps=eps,
        swiglu=swiglu,
        has_norm=norm_weight is not None,
        has_residual=residual is not None,
    )
    folded = (("_norm", norm_weight is not None), ("_swiglu", swiglu), ("_res", residual is not None))
    parts = "".join(part for part, on in folded if on)
    if split == 1:
        out_shape = jax.ShapeDtypeStruct((m, out_width), w.dtype)
        out_spec = pl.BlockSpec((m, bn), lambda j, s: (0, j))
    else:  # float32 partial sums [split, M, N]
        out_shape = jax.ShapeDtypeStruct((split, m, out_width), jnp.float32)
        out_spec = pl.BlockSpec((None, m, bn), lambda j, s: (s, 0, j))
    y = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(out_width // bn, split),
        in_specs=in_specs,
        out_specs=out_spec,
        compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=interpret,
        name=f"decode_gemv{parts}_n{bn}_k{cfg.block_k}_s{split}{'_swap' if cfg.swap_ab else ''}",
    )(*inputs)
    return y if split == 1 else y.sum(axis=0).astype(w.dtype)


def ref_decode_matmul(
    x: jax.Array,
    w: jax.Array,
    *,
    norm_weight: jax.Array | None = None,
    eps: float = 1e-6,
    residual: jax.Array | None = None,
    swiglu: bool = False,
) -> jax.Array:  # float32
    """``decode_matmul`` in float32 throughout: the oracle of its tests."""
    _check(x, w, norm_weight, residual, swiglu)
    x32, w32 = x.astype(jnp.float32), w.astype(jnp.float32)
    if norm_weight is not None:
        x32 = x32 * lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps) * norm_weight.astype(jnp.float32)
    if swiglu:
        gate, up = (jnp.dot(x32, w32[:, i], precision=lax.Precision.HIGHEST) for i in (0, 1))
        return jax.nn.silu(gate) * up
    y = jnp.dot(x32, w32, precision=lax.Precision.HIGHEST)
    return y if residual is None else y + residual.astype(jnp.float32)


def _check(x: jax.Array, w: jax.Array, norm_weight: jax.Array | None, residual: jax.Array | None, swiglu: bool) -> int:
    """The output width, after the shapes are checked against each other."""
    if x.ndim != 2:
        raise ValueError(f"x must be [M, K], got shape {x.shape}")
    m, k = x.shape
    if swiglu:
        if w.ndim != 3 or w.shape[:2] != (k, 2):
            raise ValueError(f"with swiglu, w must be gate-up's [K={k}, 2, F], got shape {w.shape}")
        if residual is not None:
            raise ValueError("swiglu and residual do not combine: the residual is added after the down projection")
    elif w.ndim != 2 or w.shape[0] != k:
        raise ValueError(f"w must be [K={k}, N], got shape {w.shape}")
    out_width = w.shape[-1]
    if norm_weight is not None and norm_weight.shape != (k,):
        raise ValueError(f"norm_weight must be [K={k}], got shape {norm_weight.shape}")
    if residual is not None and residual.shape != (m, out_width):
        raise ValueError(f"residual must be [M={m}, N={out_width}], got shape {residual.shape}")
    return out_width


def _kernel(
    x_ref: Any,  # [M, K]
    *refs: Any,  # w [K, block_n] (swiglu: gate's, up's), norm weight [K]?, residual [M, block_n]?, out [M, block_n]
    block_k: int,
    k_per_split: int,
    swap_ab: bool,
    eps: float,
    swiglu: bool,
    has_norm: bool,
    has_residual: bool,
) -> None:
    refs = list(refs)
    w_refs = [refs.pop(0) for _ in range(2 if swiglu else 1)]
    norm_ref = refs.pop(0) if has_norm else None
    res_ref = refs.pop(0) if has_residual else None
    (o_ref,) = refs
    m, k = x_ref.shape
    block_n = o_ref.shape[1]
    rows = pl.ds(0, TILE_ROWS)
    row_ok = lax.broadcasted_iota(jnp.int32, (TILE_ROWS, 1), 0) < m  # bool[16, 1]
    dtype = w_refs[0].dtype
    precision = lax.Precision.HIGHEST  # float32 weights: IEEE dots, not TF32; no effect on bf16
    split = pl.program_id(1)
    whole = k_per_split == k  # one split: the norm's sum of squares gathers in the matmul's loop

    def x_block(start: jax.Array) -> jax.Array:  # f32[16, block_k]
        return plgpu.load(x_ref.at[rows, pl.ds(start, block_k)], mask=row_ok, other=0.0).astype(jnp.float32)

    def body(step: jax.Array, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        *accs, sum_sq = carry  # f32[16, block_n] each, f32[16]
        start = pl.multiple_of(split * k_per_split + step * block_k, block_k)
        x = x_block(start)
        if norm_ref is not None:
            sum_sq = sum_sq + jnp.sum(x * x, axis=1) if whole else sum_sq
            x = x * norm_ref[pl.ds(start, block_k)].astype(jnp.float32)[None, :]
        x = x.astype(dtype)  # [16, block_k], the GEMM's input rounded as XLA's path rounds it
        tiles = (w_ref[pl.ds(start, block_k), :] for w_ref in w_refs)  # [block_k, block_n] each
        if swap_ab:  # acc^T [block_n, 16] += w^T [block_n, block_k] @ x^T [block_k, 16]
            products = (plgpu.dot(w, x, trans_a=True, trans_b=True, precision=precision) for w in tiles)
        else:
            products = (plgpu.dot(x, w, precision=precision) for w in tiles)
        accs = [acc + p for acc, p in zip(accs, products, strict=True)]
        return (*accs, sum_sq)

    zeros = jnp.zeros((block_n, TILE_ROWS) if swap_ab else (TILE_ROWS, block_n), jnp.float32)
    init = (*[zeros] * len(w_refs), jnp.zeros((TILE_ROWS,), jnp.float32))
    *accs, sum_sq = lax.fori_loop(0, k_per_split // block_k, body, init)
    if norm_ref is not None and not whole:  # a split's rows are normed by all of their inputs: read x once more

        def squares(step: jax.Array, total: jax.Array) -> jax.Array:
            x = x_block(pl.multiple_of(step * block_k, block_k))
            return total + jnp.sum(x * x, axis=1)

        sum_sq = lax.fori_loop(0, k // block_k, squares, sum_sq)
    if swap_ab:
        accs = [acc.T for acc in accs]  # [16, block_n]
    factor = None if norm_ref is None else lax.rsqrt(sum_sq / k + eps)[:, None]  # f32[16, 1]
    out = _epilogue(accs, factor, res_ref, rows, row_ok, split)
    plgpu.store(o_ref.at[rows, :], out.astype(o_ref.dtype), mask=row_ok)


def _epilogue(
    accs: list[jax.Array],  # f32[16, block_n]: the product (with SwiGLU: gate's, up's)
    factor: jax.Array | None,  # f32[16, 1]: the norm's per-row factor
    res_ref: Any,  # [M, block_n] or None
    rows: pl.Slice,
    row_ok: jax.Array,  # bool[16, 1]
    split: jax.Array,
) -> jax.Array:  # f32[16, block_n]
    """The finished sums through the norm's factor, then SwiGLU or the residual (in split 0's partial sums alone)."""
    if factor is not None:
        accs = [acc * factor for acc in accs]
    if len(accs) == 2:
        gate, up = accs
        return gate * jax.nn.sigmoid(gate) * up
    (out,) = accs
    if res_ref is not None:
        residual = plgpu.load(res_ref.at[rows, :], mask=row_ok, other=0.0).astype(jnp.float32)
        out = out + jnp.where(split == 0, residual, 0.0)
    return out

"""The one-row ("fma") FP8-weight matmul of ``pallas_kernels.fp8_gemv`` as a Pallas kernel on the Triton backend.

Why a second copy: it needs no jax-triton (XLA lowers a Pallas kernel itself, like the decode attention kernel),
and it was built to test whether the jax-triton custom call was what made an FP8 step's launch cost the host ~1.5 ms
against bf16's ~1.0. It was not: on an H200 (2026-12-04) a batch-1 FP8 Llama-3-8B step took 3.39 ms with this kernel
against 3.11 with jax-triton's, the launch cost unchanged (docs/benchmarks.md), so ``triton`` stays the default.

The arithmetic is the jax-triton kernel's "fma" mode: a program owns ``block_n`` output columns of one activation row
and a ``1 / split_k`` share of the input dimension; it loads ``[block_n, block_k]`` e4m3 tiles of the ``[N, K]``
weights (inputs contiguous, as the engine stores quantized kernels), widens them to float32 in registers (through
float16: one instruction per pair on Hopper) and multiply-adds the activation chunk into a ``[block_n, block_k]``
float32 accumulator, summed over the inputs once after the loop. With ``split_k == 1`` the program applies the
per-column scales and writes the result in x's dtype; otherwise it writes float32 partial sums ``[split_k, M, N]``
that XLA adds and scales in one fusion (deterministic, unlike atomics). Several rows run as a grid axis, each row's
programs streaming the weights again: meant for one row (a batch-1 decode), correct for any.

Tiling, shape checks and the reference are ``pallas_kernels.fp8_gemv_spec``'s, shared with the jax-triton kernel.
``interpret=True`` runs the kernel on any backend (the CPU tests).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.fp8_gemv_spec import GemvConfig, check_shapes, default_gemv_config, sum_splits


def fp8_matmul_pallas(
    x: jax.Array,  # [..., K] bf16 / f16 / f32
    w: jax.Array,  # float8_e4m3fn [*out, K]: input dimension last
    scale: jax.Array,  # f32[*out]
    config: GemvConfig | None = None,
    *,
    interpret: bool = False,
) -> jax.Array:  # [..., *out] in x's dtype
    """``x @ (w * scale).T`` over the input dimension, accumulated in float32: ``fp8_gemv.fp8_matmul(x, w, scale,
    config, w_kmajor=True)`` in compute mode "fma" (the only one this kernel has)."""
    k, out_dims = w.shape[-1], w.shape[:-1]
    if w.dtype != jnp.float8_e4m3fn:
        raise ValueError(f"w's dtype {w.dtype} must be float8_e4m3fn (quantize it with QuantScheme('fp8'))")
    if x.shape[-1] != k:
        raise ValueError(f"x's last dimension {x.shape[-1]} must be w's input dimension (its last), {k}")
    if scale.shape != out_dims:
        raise ValueError(f"scale's shape {scale.shape} must be w's output dimensions {out_dims} (one per column)")
    n = scale.size
    rows = x.reshape(-1, k)  # [M, K]
    m = rows.shape[0]
    cfg = config or default_gemv_config(m, k, n, "fma")
    if cfg.compute != "fma":
        raise ValueError(
            f"GemvConfig.compute={cfg.compute!r}: the Pallas kernel multiplies in 'fma' only; "
            "'dot_f16' and 'dot_fp8' run in pallas_kernels.fp8_gemv (jax-triton)"
        )
    check_shapes(m, k, n, cfg)
    split = cfg.split_k
    kernel = functools.partial(_kernel, block_k=cfg.block_k, k_per_split=k // split, split_k=split)
    in_specs = [
        pl.BlockSpec((None, k), lambda j, s, r: (r, 0)),  # x: row r, all of K
        pl.BlockSpec((cfg.block_n, k), lambda j, s, r: (j, 0)),  # w: columns of block j, all of K
        pl.BlockSpec((cfg.block_n,), lambda j, s, r: (j,)),  # scale
    ]
    if split == 1:
        out_shape = jax.ShapeDtypeStruct((m, n), x.dtype)
        out_spec = pl.BlockSpec((None, cfg.block_n), lambda j, s, r: (r, j))
    else:
        out_shape = jax.ShapeDtypeStruct((split, m, n), jnp.float32)
        out_spec = pl.BlockSpec((None, None, cfg.block_n), lambda j, s, r: (s, r, j))
    y = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(n // cfg.block_n, split, m),
        in_specs=in_specs,
        out_specs=out_spec,
        compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=interpret,
        name=f"fp8_gemv_pallas_fma_n{cfg.block_n}_k{cfg.block_k}_s{split}",
    )(rows, w.reshape(n, k), scale.reshape(n).astype(jnp.float32))
    if split > 1:
        y = sum_splits(y, scale, x.dtype)
    return y.reshape(*x.shape[:-1], *out_dims)


def _kernel(
    x_ref: Any,  # [K], one activation row
    w_ref: Any,  # e4m3 [block_n, K], this program's columns
    scale_ref: Any,  # f32[block_n]
    o_ref: Any,  # [block_n] in x's dtype (split_k == 1), else f32[block_n]: this split's partial sums
    *,
    block_k: int,
    k_per_split: int,
    split_k: int,
) -> None:
    block_n = w_ref.shape[0]
    first = pl.program_id(1) * k_per_split

    def body(step: jax.Array, acc: jax.Array) -> jax.Array:  # acc: f32[block_n, block_k]
        start = pl.multiple_of(first + step * block_k, block_k)
        x = x_ref[pl.ds(start, block_k)].astype(jnp.float32)  # f32[block_k]
        w = w_ref[:, pl.ds(start, block_k)].astype(jnp.float16).astype(jnp.float32)  # f32[block_n, block_k]
        return acc + w * x[None, :]

    acc = lax.fori_loop(0, k_per_split // block_k, body, jnp.zeros((block_n, block_k), jnp.float32))
    y = acc.sum(axis=1)  # f32[block_n]
    if split_k == 1:
        o_ref[...] = (y * scale_ref[...]).astype(o_ref.dtype)
    else:
        o_ref[...] = y

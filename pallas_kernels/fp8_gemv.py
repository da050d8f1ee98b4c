"""FP8-weight matmul for few rows (decode steps): a hand-written Triton kernel, called from JAX by jax-triton.

A decode step multiplies a handful of activation rows by every weight of the model, so its time is the weights'
bytes over the memory bandwidth; FP8 weights halve those bytes only if nothing widens them on the way. XLA's
``x @ w.astype(bf16)`` fuses the convert into a Triton GEMM tuned for big tiles, which streams e4m3 weights slower
than cuBLAS streams bf16 ones (H200, 2026-12-03: 4.77 ms a Llama-3-8B step against 4.28). Here a program owns
``block_n`` output columns of one ``block_m``-row tile and a ``1 / split_k`` share of the input dimension, loads
``[block_k, block_n]`` e4m3 weight tiles and multiplies them in one of ``COMPUTE``'s ways: widened in registers (one
row: float32 multiply-adds; more: float16 ``tl.dot``; the widening, not the bytes, bounds both on an H200: 2.9 TB/s
of e4m3 at best, docs/benchmarks.md), or never widened ("dot_fp8", W8A8): the activation rows are quantized to e4m3
per row in the kernel (``absmax / 448`` over the whole row, as ``jllm.quantization.quantize_rows`` and vLLM's FP8 path
do) and multiplied e4m3 x e4m3 on the FP8 tensor cores into float32. Rows past ``M`` load as zeros (a zero row's
scale is 1). The weights are ``[K, N]`` (columns contiguous, as stored) or, with ``w_kmajor``, ``[N, K]``: the layout
Hopper's FP8 MMAs want for both operands. With ``split_k == 1`` the program applies the scales and writes the
result; otherwise it writes float32 partial sums ``[split_k, M, N]`` (the activation scale applied) that
``fp8_matmul`` adds and scales per column in one XLA fusion (deterministic, unlike atomics).

``fp8_matmul`` is the JAX entry (GPU only: jax-triton launches compiled Triton); its tiling (``GemvConfig``,
``default_gemv_config``, ``check_shapes``) and reference (``ref_fp8_matmul``) live in ``pallas_kernels.fp8_gemv_spec``,
shared with the Pallas "fma" kernel (``pallas_kernels.fp8_gemv_pallas``). The CPU tests run ``_gemv_kernel`` itself
in Triton's interpreter.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from pallas_kernels.fp8_gemv_spec import (
    E4M3_MAX,
    F16_MAX,
    GemvConfig,
    check_shapes,
    default_gemv_config,
    sum_splits,
)
from pallas_kernels.triton_call import triton_call

_F16_MAX = tl.constexpr(F16_MAX)
_E4M3_MAX = tl.constexpr(E4M3_MAX)  # 448
_AMAX_ELEMENTS = 8192  # activation elements a program loads per step of its row-absmax pass ("dot_fp8")


def amax_block(k: int, config: GemvConfig) -> int:
    """Input columns per step of "dot_fp8"'s row-absmax pass: a power of two dividing ``k``, at least ``block_k``,
    growing while the ``[block_m, amax_block]`` load stays within ``_AMAX_ELEMENTS`` (fewer, larger L2 reads)."""
    block = config.block_k
    while block * 2 * config.block_m <= _AMAX_ELEMENTS and k % (block * 2) == 0:
        block *= 2
    return block


def fp8_matmul(
    x: jax.Array,  # [..., K] bf16 / f16 / f32
    w: jax.Array,  # float8_e4m3fn [K, *out], or [*out, K] with w_kmajor
    scale: jax.Array,  # f32[*out]
    config: GemvConfig | None = None,
    *,
    w_kmajor: bool = False,
) -> jax.Array:  # [..., *out] in x's dtype
    """``x @ (w * scale)``, accumulated in float32 (with ``config.compute == "dot_fp8"``: ``x`` quantized to e4m3 per
    row first); ``w_kmajor``: ``w`` is the transposed weight, input dimension last. Compiles only for a CUDA device
    (jax-triton)."""
    k, out_dims = (w.shape[-1], w.shape[:-1]) if w_kmajor else (w.shape[0], w.shape[1:])
    n = scale.size
    rows = x.reshape(-1, k)
    m = rows.shape[0]
    cfg = config or default_gemv_config(m, k, n)
    check_shapes(m, k, n, cfg)
    grid = (n // cfg.block_n, cfg.split_k, -(-m // cfg.block_m))
    out_dtype = x.dtype if cfg.split_k == 1 else jnp.float32
    out_shape = (m, n) if cfg.split_k == 1 else (cfg.split_k, m, n)
    y = triton_call(
        rows, w.reshape((n, k) if w_kmajor else (k, n)), scale.reshape(n).astype(jnp.float32),
        kernel=_gemv_kernel,
        out_shape=jax.ShapeDtypeStruct(out_shape, out_dtype),
        grid=grid,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        name=f"fp8_gemv_{cfg.compute}{'_swap' * cfg.swap_ab}{'_kmajor' * w_kmajor}_m{cfg.block_m}_n{cfg.block_n}"
        f"_k{cfg.block_k}_s{cfg.split_k}",
        **kernel_params(m, k, n, cfg, w_kmajor),
    )  # fmt: skip
    if cfg.split_k > 1:
        y = sum_splits(y, scale, x.dtype)
    return y.reshape(*x.shape[:-1], *out_dims)


def kernel_params(m: int, k: int, n: int, config: GemvConfig, w_kmajor: bool = False) -> dict[str, int | str | bool]:
    """The kernel's compile-time parameters for ``[m, k] @ [k, n]`` in ``config``."""
    return dict(
        M=m, K=k, N=n, K_PER_SPLIT=k // config.split_k, SPLIT_K=config.split_k, BLOCK_M=config.block_m,
        BLOCK_N=config.block_n, BLOCK_K=config.block_k, COMPUTE=config.compute, W_KMAJOR=w_kmajor,
        SWAP_AB=config.swap_ab, AMAX_BLOCK=amax_block(k, config),
    )  # fmt: skip


def compile_for_cuda(m: int, k: int, n: int, config: GemvConfig, w_kmajor: bool = False, capability: int = 90) -> Any:
    """The kernel compiled ahead of time for a CUDA ``capability`` (no GPU needed: Triton ships ptxas) with bf16
    activations, as jax-triton compiles it (every array 16-byte aligned): a ``triton.compile`` result whose ``asm``
    holds the TTGIR, PTX and cubin, for ``scripts/inspect_fp8_gemv.py`` (which MMA instructions a tiling gets)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    out = "*bf16" if config.split_k == 1 else "*fp32"
    signature = {"x_ptr": "*bf16", "w_ptr": "*fp8e4nv", "scale_ptr": "*fp32", "out_ptr": out}
    params = kernel_params(m, k, n, config, w_kmajor)
    signature.update(dict.fromkeys(params, "constexpr"))
    aligned = {(i,): [["tt.divisibility", 16]] for i in range(4)}
    source = ASTSource(fn=_gemv_kernel, signature=signature, constexprs=params, attrs=aligned)
    options = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)


@triton.jit
def _gemv_kernel(
    x_ptr,  # [M, K]
    w_ptr,  # e4m3 [K, N], or [N, K] with W_KMAJOR
    scale_ptr,  # f32[N]
    out_ptr,  # [M, N] in x's dtype (SPLIT_K == 1) or f32[SPLIT_K, M, N]
    M: tl.constexpr,
    K: tl.constexpr,
    N: tl.constexpr,
    K_PER_SPLIT: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    COMPUTE: tl.constexpr,
    W_KMAJOR: tl.constexpr,
    SWAP_AB: tl.constexpr,
    AMAX_BLOCK: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = pid_k * K_PER_SPLIT + tl.arange(0, BLOCK_K)
    row_ok = offs_m < M
    x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * K + offs_k[None, :]
    if W_KMAJOR:  # a [BLOCK_K, BLOCK_N] view of the [N, K] array: inputs contiguous
        w_ptrs = w_ptr + offs_n[None, :].to(tl.int64) * K + offs_k[:, None]
        w_step = BLOCK_K
    else:
        w_ptrs = w_ptr + offs_k[:, None].to(tl.int64) * N + offs_n[None, :]
        w_step = BLOCK_K * N
    if COMPUTE == "dot_fp8":
        x_scale = _row_scales(x_ptr, offs_m, row_ok, K, AMAX_BLOCK)
        acc = _fp8_partial(
            x_ptrs, w_ptrs, w_step, row_ok, tl.math.div_rn(1.0, x_scale), K_PER_SPLIT, BLOCK_M, BLOCK_N, BLOCK_K,
            SWAP_AB,
        )  # fmt: skip
        acc *= x_scale[:, None]
    else:
        acc = _widened_partial(x_ptrs, w_ptrs, w_step, row_ok, K_PER_SPLIT, BLOCK_M, BLOCK_N, BLOCK_K, COMPUTE)
    out_rows = offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    if SPLIT_K == 1:
        y = acc * tl.load(scale_ptr + offs_n)[None, :]
        tl.store(out_ptr + out_rows, y.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
    else:
        tl.store(out_ptr + pid_k * M * N + out_rows, acc, mask=row_ok[:, None])


@triton.jit
def _widened_partial(
    x_ptrs, w_ptrs, w_step, row_ok, K_PER_SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, COMPUTE: tl.constexpr,
):  # fmt: skip
    """f32[BLOCK_M, BLOCK_N]: this split's ``x @ w`` with the e4m3 weights widened in registers ("fma", "dot_f16")."""
    if COMPUTE == "fma":
        acc = tl.zeros([BLOCK_K, BLOCK_N], dtype=tl.float32)  # summed over k once, after the loop
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for _ in range(0, K_PER_SPLIT, BLOCK_K):
        x = tl.load(x_ptrs, mask=row_ok[:, None], other=0.0)
        w = tl.load(w_ptrs)
        if COMPUTE == "fma":
            acc += tl.reshape(x.to(tl.float32), [BLOCK_K, 1]) * w.to(tl.float16).to(tl.float32)
        else:
            x16 = tl.clamp(x.to(tl.float32), -_F16_MAX, _F16_MAX).to(tl.float16)
            acc += tl.dot(x16, w.to(tl.float16))
        x_ptrs += BLOCK_K
        w_ptrs += w_step
    if COMPUTE == "fma":
        acc = tl.reshape(tl.sum(acc, axis=0), [1, BLOCK_N])
    return acc


@triton.jit
def _row_scales(x_ptr, offs_m, row_ok, K: tl.constexpr, AMAX_BLOCK: tl.constexpr):
    """f32[BLOCK_M]: each row's e4m3 scale over its whole input dimension, ``absmax / 448`` (1 for a zero row or a
    row past M), so every split of a row quantizes alike; the rows are a few KB, read from L2 by every program."""
    ptrs = x_ptr + offs_m[:, None].to(tl.int64) * K + tl.arange(0, AMAX_BLOCK)[None, :]
    absmax = tl.zeros(offs_m.shape, dtype=tl.float32)
    for _ in tl.range(0, K, AMAX_BLOCK, num_stages=3):  # the loads pipelined: they do not feed a dot
        x = tl.load(ptrs, mask=row_ok[:, None], other=0.0)
        absmax = tl.maximum(absmax, tl.max(tl.abs(x.to(tl.float32)), axis=1))
        ptrs += AMAX_BLOCK
    return tl.where(absmax > 0, tl.math.div_rn(absmax, _E4M3_MAX), 1.0)


@triton.jit
def _fp8_partial(
    x_ptrs, w_ptrs, w_step, row_ok, inv_scale, K_PER_SPLIT: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SWAP_AB: tl.constexpr,
):  # fmt: skip
    """f32[BLOCK_M, BLOCK_N]: this split's ``quantize(x) @ w`` in e4m3 x e4m3 MMAs (before the activation scale).
    Each ``[BLOCK_M, BLOCK_K]`` chunk is multiplied by its rows' ``1 / scale``, clamped to +-448 and rounded to e4m3
    (round to nearest even, as XLA's convert); ``SWAP_AB`` multiplies ``w^T @ x^T`` instead. On Hopper Triton lets
    the e4m3 wgmma accumulate at its own reduced precision over the whole loop (``max_num_imprecise_acc`` defaults
    to 2^30 on sm_90); ``bench_fp8_gemv.py --check`` measures what that costs against float32."""
    if SWAP_AB:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for _ in range(0, K_PER_SPLIT, BLOCK_K):
        x = tl.load(x_ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)
        xq = tl.clamp(x * inv_scale[:, None], -_E4M3_MAX, _E4M3_MAX).to(tl.float8e4nv)
        w = tl.load(w_ptrs)
        if SWAP_AB:
            acc = tl.dot(tl.trans(w), tl.trans(xq), acc, out_dtype=tl.float32)
        else:
            acc = tl.dot(xq, w, acc, out_dtype=tl.float32)
        x_ptrs += BLOCK_K
        w_ptrs += w_step
    if SWAP_AB:
        acc = tl.trans(acc)
    return acc

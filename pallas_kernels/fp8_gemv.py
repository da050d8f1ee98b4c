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

``fp8_matmul`` is the JAX entry (GPU only: jax-triton launches compiled Triton); ``GemvConfig``,
``default_gemv_config`` and ``check_shapes`` are the host logic the CPU tests share, which run ``_gemv_kernel``
itself in Triton's interpreter on torch CPU tensors.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from pallas_kernels.triton_call import triton_call

_TARGET_PROGRAMS = 512  # about four programs per SM of an H200 (132 SMs)
# How a tile is multiplied. "fma": one activation row, e4m3 -> f16 -> f32 multiply-adds into a [block_k, block_n]
# accumulator summed once at the end, no tensor cores. "dot_f16": tl.dot with both operands widened to float16
# (e4m3 -> f16 is one instruction per pair on Hopper, -> bf16 goes on through f32; activations saturate at f16's
# 65504). Widening e4m3 to bf16 for tl.dot streamed 10-30 % slower than "dot_f16" on an H200 (2026-12-03).
# "dot_fp8": activations quantized to e4m3 per row, tl.dot of e4m3 x e4m3 into float32, the weights never widened.
COMPUTE = ("fma", "dot_f16", "dot_fp8")
# Weights smaller than this many elements multiply in XLA. Widened weights: o_proj-sized ones (4096 x 4096) took
# 19.7 us in the kernel against 14.9 in XLA's fused-convert dot (H200, one row), QKV-sized ones (4096 x 6144) 18.5
# against 20.8. "dot_fp8" is not measured yet: every weight takes it, so an end-to-end run shows all of it.
MIN_WEIGHT_ELEMENTS = {"fma": 20_000_000, "dot_f16": 20_000_000, "dot_fp8": 0}
_F16_MAX = tl.constexpr(65504.0)
_E4M3_MAX = tl.constexpr(float(jnp.finfo(jnp.float8_e4m3fn).max))  # 448
_AMAX_ELEMENTS = 8192  # activation elements a program loads per step of its row-absmax pass ("dot_fp8")


@dataclasses.dataclass(frozen=True)
class GemvConfig:
    """Static tiling of one call (hashable: a jit static argument)."""

    block_m: int = 1  # activation rows per program ("fma" takes 1; tl.dot needs >= 16, rows past M masked)
    block_n: int = 64  # output columns per program
    block_k: int = 128  # input rows per inner-loop step ("dot_fp8": >= 32, an FP8 MMA's depth)
    split_k: int = 1  # programs sharing one column block's input dimension
    num_warps: int = 4
    num_stages: int = 4
    compute: str = "fma"  # one of COMPUTE
    swap_ab: bool = False  # "dot_fp8": out^T = w^T x^T, so the weight tile is the MMA's big M side, the rows its N

    def __post_init__(self) -> None:
        if self.compute not in COMPUTE:
            raise ValueError(f"GemvConfig.compute={self.compute!r} is not one of {COMPUTE}")
        if self.compute == "fma" and self.block_m != 1:
            raise ValueError(f"GemvConfig.block_m={self.block_m} must be 1 with compute='fma'")
        for name in ("block_m", "block_n", "block_k")[self.compute == "fma" :]:
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"GemvConfig.{name}={value} must be a power of two >= 16 (Triton's dot needs it)")
        if self.compute == "dot_fp8" and self.block_k < 32:
            raise ValueError(f"GemvConfig.block_k={self.block_k} must be >= 32 with compute='dot_fp8'")
        if self.swap_ab and self.compute != "dot_fp8":
            raise ValueError(f"GemvConfig.swap_ab=True needs compute='dot_fp8', not {self.compute!r}")
        if self.split_k < 1:
            raise ValueError(f"GemvConfig.split_k={self.split_k} must be >= 1")


def default_gemv_config(m: int, k: int, n: int, compute: str | None = None) -> GemvConfig:
    """The tiling for ``[m, k] @ [k, n]`` in ``compute`` (None: "fma" for one row, else "dot_f16"): "fma" in tiles
    of 64 columns x 128 inputs, "dot_f16" in 256 x 64, "dot_fp8" in 64 x 128 with A and B swapped, both with 16-64
    rows; the input dimension splits until there are ``_TARGET_PROGRAMS`` programs (while each split keeps >= 4
    steps). The fastest one-row tilings of an H200 sweep (2026-12-03, bench_fp8_gemv --tune) were these: Llama-3-8B's
    gate-up (28672 columns) at split 2, down (4096) at 8, QKV (6144) at 8. "dot_fp8"'s is a first guess, not yet
    timed; swapped because Triton compiles a 16-row e4m3 ``tl.dot`` for sm_90 to ``mma.sync`` on operands widened to
    float16, the swapped one to an e4m3 ``wgmma`` (m64n16k32; scripts/inspect_fp8_gemv.py, Triton 3.6 and 3.8)."""
    compute = compute or ("fma" if m == 1 else "dot_f16")
    if compute == "fma":
        cfg = GemvConfig()
    else:
        block_m = max(16, min(64, 1 << (m - 1).bit_length()))
        block_n, block_k = (256, 64) if compute == "dot_f16" else (64, 128)
        swap_ab = compute == "dot_fp8"
        cfg = GemvConfig(block_m=block_m, block_n=block_n, block_k=block_k, compute=compute, swap_ab=swap_ab)
    split_k = 1
    while (n // cfg.block_n) * split_k < _TARGET_PROGRAMS and k % (cfg.block_k * split_k * 2) == 0:
        if k // (cfg.block_k * split_k * 2) < 4:
            break
        split_k *= 2
    return dataclasses.replace(cfg, split_k=split_k)


def check_shapes(m: int, k: int, n: int, config: GemvConfig) -> None:
    """What the kernel needs: whole column blocks and whole input blocks in every split."""
    if n % config.block_n:
        raise ValueError(f"output width {n} is not a multiple of block_n={config.block_n}")
    if k % (config.block_k * config.split_k):
        raise ValueError(f"input width {k} is not a multiple of block_k * split_k = {config.block_k * config.split_k}")


def supports(m: int, k: int, n: int, config: GemvConfig | None = None) -> bool:
    """Whether ``fp8_matmul`` takes these shapes (the caller falls back to XLA otherwise)."""
    try:
        check_shapes(m, k, n, config or default_gemv_config(m, k, n))
    except ValueError:
        return False
    return True


def pays_off(m: int, k: int, n: int, compute: str | None = None) -> bool:
    """Whether a step should multiply these shapes here (in ``compute``, None: the default's) rather than in XLA:
    supported, and a weight big enough for that compute mode."""
    cfg = default_gemv_config(m, k, n, compute)
    return k * n >= MIN_WEIGHT_ELEMENTS[cfg.compute] and supports(m, k, n, cfg)


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
        y = (y.sum(axis=0) * scale.reshape(n)).astype(x.dtype)
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


def ref_quantize_rows(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """ "dot_fp8"'s activation quantization in its own float32 arithmetic: ``x [M, K]`` -> (e4m3 ``[M, K]``, f32
    ``[M, 1]`` scales ``absmax / 448``, 1 for a zero row), each row times ``1 / scale``, clamped, rounded to nearest
    even (``jllm.quantization.quantize_rows`` divides by the scale instead: equal but for a last-bit tie)."""
    x32 = x.astype(jnp.float32)
    absmax = jnp.max(jnp.abs(x32), axis=-1, keepdims=True)
    scale = jnp.where(absmax > 0, absmax / _E4M3_MAX.value, 1.0)
    top = _E4M3_MAX.value
    return jnp.clip(x32 * (1.0 / scale), -top, top).astype(jnp.float8_e4m3fn), scale


def ref_fp8_matmul(
    x: jax.Array,  # [..., K]
    w: jax.Array,  # float8_e4m3fn [K, *out], or [*out, K] with w_kmajor
    scale: jax.Array,  # f32[*out]
    compute: str = "fma",
    *,
    w_kmajor: bool = False,
) -> jax.Array:  # f32[..., *out]
    """What ``fp8_matmul`` computes in ``compute``, in pure jnp at float32's full precision (the oracle of the tests
    and of ``bench_fp8_gemv --check``): the activations as the kernel rounds them (float16 for "dot_f16", e4m3 rows
    for "dot_fp8"), times the e4m3 weights, then the scales."""
    if compute not in COMPUTE:
        raise ValueError(f"compute={compute!r} is not one of {COMPUTE}")
    if w_kmajor:
        w = jnp.moveaxis(w, -1, 0)
    k = w.shape[0]
    rows = x.reshape(-1, k).astype(jnp.float32)
    row_scale = jnp.ones((rows.shape[0], 1), jnp.float32)
    if compute == "dot_f16":
        rows = jnp.clip(rows, -_F16_MAX.value, _F16_MAX.value).astype(jnp.float16).astype(jnp.float32)
    elif compute == "dot_fp8":
        xq, row_scale = ref_quantize_rows(rows)
        rows = xq.astype(jnp.float32)
    y = jnp.matmul(rows, w.reshape(k, -1).astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    y = y * row_scale * scale.reshape(-1)
    return y.reshape(*x.shape[:-1], *w.shape[1:])


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

"""What an FP8-weight GEMV kernel computes and how it is tiled: the host side shared by the jax-triton kernel
(``pallas_kernels.fp8_gemv``) and the Pallas one (``pallas_kernels.fp8_gemv_pallas``), and their pure-jnp references.

Nothing here imports Triton or jax-triton, so the Pallas kernel and ``jllm.quantization``'s choice of a kernel run
where neither is installed (jax's CUDA wheels carry Pallas' Triton backend themselves).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

_TARGET_PROGRAMS = 512  # about four programs per SM of an H200 (132 SMs)
# How a tile is multiplied. "fma": one activation row, e4m3 -> f16 -> f32 multiply-adds into a [block_k, block_n]
# accumulator summed once at the end, no tensor cores. "dot_f16": tl.dot with both operands widened to float16
# (e4m3 -> f16 is one instruction per pair on Hopper, -> bf16 goes on through f32; activations saturate at f16's
# 65504). Widening e4m3 to bf16 for tl.dot streamed 10-30 % slower than "dot_f16" on an H200 (2026-12-03).
# "dot_fp8": activations quantized to e4m3 per row, tl.dot of e4m3 x e4m3 into float32, the weights never widened.
COMPUTE = ("fma", "dot_f16", "dot_fp8")
# Weights smaller than this many elements multiply in XLA. One row, "fma": o_proj-sized weights (4096 x 4096, 16.8 M)
# took 10.52 us in the kernel against 12.21 in XLA's fused-convert dot (H100, 2026-12-07, the kernel reading [N, K]
# weights), and putting them there took Llama-3-8B's FP8 batch-1 TPOT from 3.83 to 3.74 ms (H100, one call); before
# the [N, K] layout they had taken 19.7 us against 14.9 (H200, 2026-12-03). QKV-sized ones (4096 x 6144) 18.5 against
# 20.8 (H200). "dot_fp8" is not measured yet: every weight takes it, so an end-to-end run shows all of it. (The Pallas
# "fma" kernel takes the same sizes: on an H200 it timed within 10 % of the jax-triton one at each, 2026-12-04.)
MIN_WEIGHT_ELEMENTS = {"fma": 16_000_000, "dot_f16": 20_000_000, "dot_fp8": 0}
F16_MAX = 65504.0
E4M3_MAX = float(jnp.finfo(jnp.float8_e4m3fn).max)  # 448


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


def sum_splits(partials: jax.Array, scale: jax.Array, dtype: Any) -> jax.Array:
    """Both kernels' split-K epilogue, in one XLA fusion: float32 partial sums ``[split_k, M, N]`` added (in a fixed
    order, unlike atomics), scaled per column (``scale`` f32 with N elements) and cast to ``dtype``."""
    return (partials.sum(axis=0) * scale.reshape(-1)).astype(dtype)


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


def ref_quantize_rows(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """ "dot_fp8"'s activation quantization in its own float32 arithmetic: ``x [M, K]`` -> (e4m3 ``[M, K]``, f32
    ``[M, 1]`` scales ``absmax / 448``, 1 for a zero row), each row times ``1 / scale``, clamped, rounded to nearest
    even (``jllm.quantization.quantize_rows`` divides by the scale instead: equal but for a last-bit tie)."""
    x32 = x.astype(jnp.float32)
    absmax = jnp.max(jnp.abs(x32), axis=-1, keepdims=True)
    scale = jnp.where(absmax > 0, absmax / E4M3_MAX, 1.0)
    top = E4M3_MAX
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
        rows = jnp.clip(rows, -F16_MAX, F16_MAX).astype(jnp.float16).astype(jnp.float32)
    elif compute == "dot_fp8":
        xq, row_scale = ref_quantize_rows(rows)
        rows = xq.astype(jnp.float32)
    y = jnp.matmul(rows, w.reshape(k, -1).astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    y = y * row_scale * scale.reshape(-1)
    return y.reshape(*x.shape[:-1], *w.shape[1:])

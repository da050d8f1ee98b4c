"""The FP8 KV storage format: K/V quantized to float8_e4m3fn on the write, dequantized after each page load.

A pool in ``FP8_DTYPE`` stores ``x / scale`` saturated to +-``FP8_MAX`` (so an outlier becomes the largest finite
value, never NaN: e4m3fn has no infinity and casts an overflow to NaN); a read gives ``stored * scale`` in the compute
dtype. ``scale`` is one float32 scalar per layer for K and one for V: the checkpoint's (``jllm.kv_scales``), or 1.0
where it gives none, as in vLLM; a latent pool's one row takes K's. A pool of any other dtype stores K/V
as they are (a cast) and its scales must be 1.0.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

FP8_DTYPE = jnp.dtype(jnp.float8_e4m3fn)
FP8_MAX = float(jnp.finfo(FP8_DTYPE).max)  # 448: the largest finite e4m3fn value

Scale = float | jax.Array  # a Python float, or a float32 scalar array (traced under jit)


def is_fp8(dtype: DTypeLike) -> bool:
    return jnp.dtype(dtype) == FP8_DTYPE


def quantize(x: jax.Array, pool_dtype: DTypeLike, scale: Scale = 1.0) -> jax.Array:
    """``x`` as the pool stores it: ``x / scale`` saturated and cast to e4m3fn for an FP8 pool, else a cast."""
    if not is_fp8(pool_dtype):
        check_scales(pool_dtype, scale)
        return x.astype(pool_dtype)
    return jnp.clip(x.astype(jnp.float32) / scale, -FP8_MAX, FP8_MAX).astype(FP8_DTYPE)


def dequantize(stored: jax.Array, dtype: DTypeLike, scale: Scale = 1.0) -> jax.Array:
    """Loaded pool values in the compute ``dtype``: ``stored * scale`` (a cast when the pool is not FP8)."""
    if not is_fp8(stored.dtype):
        check_scales(stored.dtype, scale)
        return stored.astype(dtype)
    return rescale(stored.astype(dtype), scale)


def rescale(x: jax.Array, scale: Scale) -> jax.Array:
    """``x * scale`` in ``x``'s dtype, free when the scale is the Python float 1.0 (the usual case)."""
    if _is_one(scale):
        return x
    return (x.astype(jnp.float32) * scale).astype(x.dtype)


def check_scales(pool_dtype: DTypeLike, *scales: Scale) -> None:
    """Scales other than 1.0 only mean something for an FP8 pool; elsewhere they are a caller's mistake."""
    if not is_fp8(pool_dtype) and not all(_is_one(s) for s in scales):
        raise ValueError(
            f"KV scales apply to an FP8 ({FP8_DTYPE.name}) pool only; this pool is {jnp.dtype(pool_dtype)}"
        )


def check_latent_scales(v_scale: Scale) -> None:
    """A latent pool stores one row a token, written and read with K's scale (its values are the row's channels), so
    a V scale for it is a caller's mistake."""
    if not _is_one(v_scale):
        raise ValueError("a latent KV pool has one row a token, scaled by k_scale; v_scale must be left 1.0")


def _is_one(scale: Scale) -> bool:
    """The Python number 1 (a traced scale is never known to be)."""
    return isinstance(scale, float | int) and scale == 1.0

"""Layers every Llama-family model shares: linear, embedding, RMSNorm, SwiGLU MLP and rotary embeddings.

Parameters are created as zeros with their logical axis names (``axes``); the loader builds models under
``nnx.eval_shape`` and fills in real, sharded values, so construction never allocates device memory.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def param(shape: tuple[int, ...], dtype: jnp.dtype, axes: tuple[str | None, ...]) -> nnx.Param:
    """A parameter tagged with logical axis names; ``jllm.parallel`` maps them to mesh axes."""
    assert len(shape) == len(axes), (shape, axes)
    return nnx.Param(jnp.zeros(shape, dtype), axes=axes)


class Linear(nnx.Module):
    """``y = x @ kernel (+ bias)`` with the kernel stored ``[in, *out]``: a fused projection keeps its parts as
    separate output axes (``[in, 2, mlp]`` for gate/up), so each device's shard holds whole parts."""

    def __init__(
        self,
        d_in: int,
        d_out: int | tuple[int, ...],
        axes: tuple[str | None, ...],
        dtype: jnp.dtype,
        bias: bool = False,
    ):
        out = (d_out,) if isinstance(d_out, int) else d_out
        self.kernel = param((d_in, *out), dtype, axes)
        self.bias = param(out, dtype, axes[1:]) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.lax.dot_general(x, self.kernel[...], (((x.ndim - 1,), (0,)), ((), ())))
        return y + self.bias[...] if self.bias is not None else y


class Embedding(nnx.Module):
    def __init__(self, vocab_size: int, dim: int, dtype: jnp.dtype):
        self.embedding = param((vocab_size, dim), dtype, ("vocab", "embed"))

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0)

    def attend(self, x: jax.Array) -> jax.Array:
        """Tied LM head: logits against the embedding table."""
        return x @ self.embedding[...].T


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, dtype: jnp.dtype):
        self.weight = param((dim,), dtype, ("embed",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        # Normalise in float32 and cast back before the weight, exactly as transformers' LlamaRMSNorm does.
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * x32.astype(x.dtype)


class GatedMLP(nnx.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``, gate and up as one matmul (one weight read, one kernel launch);
    the MLP axis of gate/up and the rows of down split across devices."""

    def __init__(self, dim: int, hidden: int, dtype: jnp.dtype):
        self.gate_up_proj = Linear(dim, (2, hidden), ("embed", None, "mlp"), dtype)
        self.down_proj = Linear(hidden, dim, ("mlp", "embed"), dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        gate_up = self.gate_up_proj(x)  # [T, 2, hidden]
        return self.down_proj(jax.nn.silu(gate_up[:, 0]) * gate_up[:, 1])


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> np.ndarray:
    """Inverse frequencies ``[head_dim // 2]``, with Llama 3's piecewise rescaling when the config asks for it."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
    if kind in (None, "default"):
        return inv_freq.astype(np.float32)
    if kind != "llama3":
        raise ValueError(f"rope_scaling type {kind!r} is not supported (supported: 'default', 'llama3')")
    factor = scaling["factor"]
    low_freq_factor = scaling.get("low_freq_factor", 1.0)
    high_freq_factor = scaling.get("high_freq_factor", 4.0)
    old_len = scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_len / low_freq_factor
    high_freq_wavelen = old_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def apply_rotary(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotates ``x [T, heads, head_dim]`` by ``positions [T]`` in the half-split layout transformers uses."""
    freqs = positions.astype(jnp.float32)[:, None] * jnp.asarray(inv_freq)[None, :]  # [T, head_dim/2]
    cos = jnp.cos(freqs)[:, None, :]  # [T, 1, head_dim/2]
    sin = jnp.sin(freqs)[:, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)

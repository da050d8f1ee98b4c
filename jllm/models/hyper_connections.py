"""Qwen4-Exp's hyper-connections: the residual stream kept as ``streams`` copies of the hidden state (the embedding
repeated), and each block (mixer, MLP) reading one learned mix of them and writing its output back into every stream
with a learned weight, in place of the block's input norm and plain residual add. As transformers'
``Qwen4ExpTextGatedResidual``:

``n = norm(x)`` (a ``1 + w`` RMSNorm over each stream's channels, its weight ``[streams * hidden]``); the block's
input ``mean_s(sigmoid(up(silu(down(n) / streams)))_s * n_s)``, ``down`` a rank-``rank`` map of all streams at once;
after the block ``x_s += 2 sigmoid(inject(n) / streams)_s * out``. The model's last mix (no ``inject``) is its final
state: there is no final norm.

Every tensor here is small beside the layer's (``streams * hidden x rank``), so all are replicated under tensor
parallelism.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.models.layers import Linear, param


class HyperConnection(nnx.Module):
    """One block's hyper-connection (tensors named as the checkpoint's); ``inject`` False: the model's final mixer,
    which only reads the streams."""

    def __init__(self, args: Any, inject: bool = True):
        n, d, dt = args.hyper_streams, args.hidden_size, args.dtype
        self.hc_norm = HyperNorm(n, d, args.norm_eps, dt)
        self.input_mix_weight_down = Linear(n * d, args.hyper_rank, (None, None), dt)
        self.input_mix_weight_up = Linear(args.hyper_rank, n * d, (None, None), dt)
        self.block_inject_weight = Linear(n * d, n, (None, None), dt) if inject else None
        self.streams = n

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """``x [T, streams, hidden]`` -> (the block's input ``[T, hidden]``, each stream's weight for the block's
        output ``[T, streams]``, or None for the final mixer)."""
        t, n, d = x.shape
        normed = self.hc_norm(x).reshape(t, n * d)
        down = self.input_mix_weight_down(normed)
        weights = jax.nn.sigmoid(self.input_mix_weight_up(jax.nn.silu(down / n))).reshape(t, n, d)
        mixed = jnp.mean(weights * normed.reshape(t, n, d), axis=1)
        if self.block_inject_weight is None:
            return mixed, None
        return mixed, 2 * jax.nn.sigmoid(self.block_inject_weight(normed) / n)

    @staticmethod
    def add(x: jax.Array, out: jax.Array, weights: jax.Array) -> jax.Array:
        """The block's output ``[T, hidden]`` added to every stream of ``x [T, streams, hidden]`` by its weight."""
        return x + weights[..., None] * out[:, None, :]


class HyperNorm(nnx.Module):
    """transformers' ``Qwen4ExpTextRMSNorm`` with ``group_size``: a ``1 + w`` RMSNorm over each stream's channels,
    in float32, its weight one per channel of every stream (stored flat, ``[streams * hidden]``)."""

    def __init__(self, streams: int, dim: int, eps: float, dtype: Any):
        self.weight = param((streams * dim,), dtype, (None,))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [T, streams, hidden]`` normed per stream."""
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        scale = 1.0 + self.weight[...].astype(jnp.float32).reshape(x.shape[1:])
        return (x32 * scale).astype(x.dtype)

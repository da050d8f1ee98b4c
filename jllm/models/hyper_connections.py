"""Qwen4-Exp's hyper-connections: the residual stream kept as ``streams`` copies of the hidden state (the embedding
repeated), and each block (mixer, MLP) reading one learned mix of them and writing its output back into every stream
with a learned weight, in place of the block's input norm and plain residual add. As transformers'
``Qwen4ExpTextGatedResidual``:

``n = norm(x)`` (a ``1 + w`` RMSNorm over each stream's channels, its weight ``[streams * hidden]``); the block's
input ``mean_s(sigmoid(up(silu(down(n) / streams)))_s * n_s)``, ``down`` a rank-``rank`` map of all streams at once;
after the block ``x_s += 2 sigmoid(inject(n) / streams)_s * out``. The model's last mix (no ``inject``) is its final
state: there is no final norm.

DeepSeek-V4's manifold-constrained form (``SinkhornHyperConnection``, transformers' ``DeepseekV4HyperConnection``):
from all streams at once, normed without a weight, one projection gives each stream's input weight ``pre``, output
weight ``post`` and a ``streams x streams`` matrix ``comb`` made doubly stochastic by Sinkhorn-Knopp iterations; the
block reads ``sum_s pre_s x_s`` (through its usual norm) and the streams become ``post_s * out + sum_j comb_js x_j``.
Its final mix (``HyperHead``) is a ``pre`` alone, before the model's final norm.

Every tensor here is small beside the layer's (``streams * hidden x rank``), so all are replicated under tensor
parallelism.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
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
    def add(x: jax.Array, out: jax.Array, weights: Any) -> jax.Array:
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


@dataclasses.dataclass(frozen=True)
class SinkhornSpec:
    """DeepSeek-V4's hyper-connection settings: ``hc_sinkhorn_iters`` and ``hc_eps`` (the floor of every sum)."""

    iters: int
    eps: float
    # Hy4's form: no mixing matrix (each stream keeps itself, plus the block's output times its post weight), ``fn``
    # and ``base`` of pre and post alone, two scales; post weights ``post_scale * sigmoid(.) + eps`` (DeepSeek-V4's:
    # ``2 * sigmoid(.)``)
    comb: bool = True
    post_scale: float = 2.0


def make_hyper_connection(args: Any, final: bool = False) -> nnx.Module:
    """A block's hyper-connection (``final``: the model's last mix) of the model's kind: Qwen4-Exp's, or DeepSeek-V4's
    where ``args.hyper_sinkhorn`` is set."""
    if args.hyper_sinkhorn is None:
        return HyperConnection(args, inject=not final)
    return HyperHead(args) if final else SinkhornHyperConnection(args)


def _unit_rms(x32: jax.Array, eps: float) -> jax.Array:
    """transformers' ``DeepseekV4UnweightedRMSNorm`` over the last axis of a float32 ``x32``."""
    return x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)


class SinkhornHyperConnection(nnx.Module):
    """One block's DeepSeek-V4 hyper-connection: ``fn [(2 + streams) * streams, streams * hidden]``, ``base`` and
    three scales (pre, post, comb; ``mix_scale``, the checkpoint's ``scale``), all float32 as transformers keeps
    them."""

    def __init__(self, args: Any):
        n, d, spec = args.hyper_streams, args.hidden_size, args.hyper_sinkhorn
        rows = (2 + n) * n if spec.comb else 2 * n
        self.fn = param((rows, n * d), jnp.float32, (None, None))
        self.base = param((rows,), jnp.float32, (None,))
        self.mix_scale = param((3 if spec.comb else 2,), jnp.float32, (None,))
        self.streams, self.eps, self.norm_eps = n, spec.eps, args.norm_eps
        self.iters, self.comb, self.post_scale = spec.iters, spec.comb, spec.post_scale

    def __call__(self, x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """``x [T, streams, hidden]`` -> (the block's input ``[T, hidden]``, (``post [T, streams]``, ``comb [T,
        streams, streams]``) float32)."""
        t, n, d = x.shape
        mixes = _unit_rms(x.reshape(t, n * d).astype(jnp.float32), self.norm_eps) @ self.fn[...].T
        base, scale = self.base[...], self.mix_scale[...]
        pre = jax.nn.sigmoid(mixes[:, :n] * scale[0] + base[:n]) + self.eps  # [T, streams]
        post = self.post_scale * jax.nn.sigmoid(mixes[:, n : 2 * n] * scale[1] + base[n : 2 * n])
        collapsed = jnp.sum(pre[..., None] * x, axis=1).astype(x.dtype)
        if not self.comb:  # Hy4's: the streams kept as they are
            return collapsed, (post + self.eps, None)
        comb = mixes[:, 2 * n :].reshape(t, n, n) * scale[2] + base[2 * n :].reshape(n, n)
        comb = jax.nn.softmax(comb, axis=-1) + self.eps
        comb = comb / (jnp.sum(comb, axis=-2, keepdims=True) + self.eps)
        for _ in range(self.iters - 1):  # Sinkhorn-Knopp: rows, then columns, each summing to one
            comb = comb / (jnp.sum(comb, axis=-1, keepdims=True) + self.eps)
            comb = comb / (jnp.sum(comb, axis=-2, keepdims=True) + self.eps)
        return collapsed, (post, comb)

    @staticmethod
    def add(x: jax.Array, out: jax.Array, weights: tuple[jax.Array, jax.Array]) -> jax.Array:
        """The streams after the block: ``post_k * out + sum_j comb_jk x_j`` for each stream ``k`` (Hy4's, no
        ``comb``: ``post_k * out + x_k``)."""
        post, comb = weights
        post = post.astype(x.dtype)[..., None] * out[:, None, :]
        return post + (x if comb is None else jnp.einsum("tjk,tjd->tkd", comb.astype(x.dtype), x))


class HyperHead(nnx.Module):
    """DeepSeek-V4's final mix of the streams (transformers' ``DeepseekV4HyperHead``), before the final norm."""

    def __init__(self, args: Any):
        n, d = args.hyper_streams, args.hidden_size
        self.hc_fn = param((n, n * d), jnp.float32, (None, None))
        self.hc_base = param((n,), jnp.float32, (None,))
        self.hc_scale = param((1,), jnp.float32, (None,))
        self.eps, self.norm_eps = args.hyper_sinkhorn.eps, args.norm_eps

    def __call__(self, x: jax.Array) -> tuple[jax.Array, None]:
        """``x [T, streams, hidden]`` -> (``[T, hidden]``, None: HyperConnection's final mixer's call shape)."""
        t, n, d = x.shape
        mixes = _unit_rms(x.reshape(t, n * d).astype(jnp.float32), self.norm_eps) @ self.hc_fn[...].T
        pre = jax.nn.sigmoid(mixes * self.hc_scale[...] + self.hc_base[...]) + self.eps  # [T, streams]
        return jnp.sum(pre[..., None] * x, axis=1).astype(x.dtype), None

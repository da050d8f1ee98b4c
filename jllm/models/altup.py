"""Gemma 3n's alternating updates (AltUp): the residual stream kept as ``streams`` copies of the hidden state, of
which each layer's blocks compute on one (the active stream, 0); a learned map predicts every stream before the
layer and corrects each from the active one's change after it, so the others are updated without running the
layer on them. As transformers' ``Gemma3nTextAltUp`` and the stream expansion / collapse in ``Gemma3nTextModel``.

Every AltUp tensor is small beside the layer's (``streams x streams`` coefficients, ``hidden x streams`` routers;
the model's stream projections ``hidden x hidden``), so all are replicated under tensor parallelism.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.models.layers import Linear, param

ACTIVE = 0  # the stream the layer's blocks run on (transformers' altup_active_idx; released models all use 0)
MIN_MEAN_SQUARE = 1e-5  # a projected stream's mean square is clamped from below before it is rescaled (transformers')


class StackedLinear(nnx.Module):
    """One bias-free ``[in, out]`` linear per stream past the first, stacked ``[streams - 1, in, out]``, read from the
    checkpoint's ``altup_projections.{e}`` (``WeightMap.rename`` with ``{e}``)."""

    def __init__(self, count: int, dim: int, dtype: Any):
        self.kernel = param((count, dim, dim), dtype, (None, "embed", None))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [count, T, dim]`` (or ``[T, dim]``, fed to every one) -> ``[count, T, dim]``."""
        return jnp.einsum("td,nde->nte" if x.ndim == 2 else "ntd,nde->nte", x, self.kernel[...])


def _rms(x: jax.Array) -> jax.Array:
    """Each row's root mean square, ``[..., 1]`` float32."""
    x32 = x.astype(jnp.float32)
    return jnp.sqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True))


def _rescaled(x: jax.Array, target: jax.Array) -> jax.Array:
    """``x`` with each row's RMS set to ``target`` (``[..., 1]`` float32)."""
    x32 = x.astype(jnp.float32)
    magnitude = jnp.sqrt(jnp.maximum(jnp.mean(x32 * x32, axis=-1, keepdims=True), MIN_MEAN_SQUARE))
    return (x32 * target / magnitude).astype(x.dtype)


class AltUpStreams(nnx.Module):
    """The model's ends of AltUp: the embedding becomes ``streams`` streams (itself, then each projection of it at its
    RMS) before the first layer, and the last layer's streams one state again (the active stream and the others
    projected back at its RMS, averaged) before the final norm. Tensors named as the checkpoint's, under the model."""

    def __init__(self, args: Any):
        n, d, dt = args.altup_streams, args.hidden_size, args.dtype
        self.altup_projections = StackedLinear(n - 1, d, dt)
        self.altup_unembed_projections = StackedLinear(n - 1, d, dt)

    def expand(self, x: jax.Array) -> jax.Array:
        """``[T, hidden]`` -> ``[streams, T, hidden]``."""
        projected = _rescaled(self.altup_projections(x), _rms(x))
        return jnp.concatenate([x[None], projected])

    def collapse(self, streams: jax.Array) -> jax.Array:
        """``[streams, T, hidden]`` -> ``[T, hidden]``."""
        active = streams[ACTIVE]
        others = _rescaled(self.altup_unembed_projections(streams[1:]), _rms(active))
        return jnp.mean(jnp.concatenate([active[None], others]).astype(jnp.float32), axis=0).astype(active.dtype)


class AltUp(nnx.Module):
    """One layer's AltUp: ``predict`` before its blocks, ``correct`` after them. Both weigh the streams by
    coefficients computed from the active stream (``modality_router`` over its RMS-normed state / hidden, a tanh)."""

    def __init__(self, args: Any):
        n, d, dt = args.altup_streams, args.hidden_size, args.dtype
        self.correct_output_scale = param((d,), dt, ("embed",))
        self.correction_coefs = Linear(n, n, (None, None), dt)
        self.prediction_coefs = Linear(n, n * n, (None, None), dt)  # [streams, j * streams + i]
        self.modality_router = Linear(d, n, ("embed", None), dt)
        self.router_norm = args.make_norm()
        self.streams, self.router_scale = n, d**-1.0
        self.correct_scale = args.altup_correct_scale

    def _modalities(self, x: jax.Array) -> jax.Array:
        """``[T, hidden]`` -> ``[T, streams]``: the router's tanh, taken in float32."""
        routed = self.modality_router(self.router_norm(x) * jnp.asarray(self.router_scale, x.dtype))
        return jnp.tanh(routed.astype(jnp.float32)).astype(x.dtype)

    def predict(self, streams: jax.Array) -> jax.Array:
        """``[streams, T, hidden]``: stream j plus ``sum_i c[t, j, i] * stream i``, ``c`` from the active stream."""
        n, t = self.streams, streams.shape[1]
        coefs = self.prediction_coefs(self._modalities(streams[ACTIVE])).reshape(t, n, n)  # [T, j, i]
        return streams + jnp.einsum("tji,itd->jtd", coefs, streams).astype(streams.dtype)

    def correct(self, predictions: jax.Array, activated: jax.Array) -> jax.Array:
        """Every stream's prediction plus the active stream's change (``activated``, the blocks' output, minus its
        prediction) times ``1 + c[t, stream]``, ``c`` from ``activated``."""
        coefs = self.correction_coefs(self._modalities(activated)) + jnp.asarray(1.0, activated.dtype)  # [T, streams]
        innovation = activated - predictions[ACTIVE]  # [T, hidden]
        return predictions + (coefs.T[:, :, None] * innovation[None]).astype(predictions.dtype)

    def active_output(self, corrected: jax.Array) -> jax.Array:
        """The corrected active stream, times ``correct_output_scale`` where the model says so
        (``altup_correct_scale``): what the layer's per-layer input is gated by."""
        active = corrected[ACTIVE]
        return active * self.correct_output_scale[...] if self.correct_scale else active

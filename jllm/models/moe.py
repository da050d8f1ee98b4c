"""Mixture of experts (Mixtral): a softmax router picks each token's top-k SwiGLU experts, and every expert's tokens
go through one grouped matmul (``jax.lax.ragged_dot_general``) instead of a loop over experts.

Each token is copied once per chosen expert; the copies are sorted by expert, so each expert's rows are contiguous
and ``group_sizes`` (tokens per expert) tells the grouped matmul where each expert's rows start. Expert kernels are
stacked ``[experts, in, ...]`` and split across devices along their inner (MLP) axis, as a dense MLP is.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.models.layers import ACTIVATIONS, Linear, param

# x [rows, in] @ kernel [experts, in, *out] with rows grouped by expert -> [rows, *out]
GROUPED = jax.lax.RaggedDotDimensionNumbers(
    dot_dimension_numbers=(([1], [1]), ([], [])), lhs_ragged_dimensions=[0], rhs_group_dimensions=[0]
)


class ExpertLinear(nnx.Module):
    """One linear map per expert, stacked: ``kernel [experts, in, *out]``; rows of ``x`` sorted by expert."""

    def __init__(self, experts: int, d_in: int, d_out: tuple[int, ...], axes: tuple[str | None, ...], dtype):
        self.kernel = param((experts, d_in, *d_out), dtype, ("experts", *axes))

    def __call__(self, x: jax.Array, group_sizes: jax.Array) -> jax.Array:
        return jax.lax.ragged_dot_general(x, self.kernel[...], group_sizes, GROUPED)


class SparseMoE(nnx.Module):
    """transformers' ``MixtralSparseMoeBlock``: router softmax in float32, top-k, the k weights renormalised to sum
    to one, each token's output the weighted sum of its experts' SwiGLU outputs."""

    def __init__(self, dim: int, hidden: int, experts: int, top_k: int, dtype, act: str = "silu"):
        self.gate = Linear(dim, experts, ("embed", None), dtype)  # the router
        self.gate_up_proj = ExpertLinear(experts, dim, (2, hidden), ("embed", None, "mlp"), dtype)
        self.down_proj = ExpertLinear(experts, hidden, (dim,), ("mlp", "embed"), dtype)
        self.experts, self.top_k, self.act = experts, top_k, act

    def route(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Each token's ``top_k`` experts ``[T, k]`` int32 and their renormalised float32 weights ``[T, k]``."""
        probs = jax.nn.softmax(self.gate(x).astype(jnp.float32), axis=-1)  # [T, experts]
        weights, chosen = jax.lax.top_k(probs, self.top_k)
        return chosen, weights / jnp.sum(weights, axis=-1, keepdims=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        t, k = x.shape[0], self.top_k
        chosen, weights = self.route(x)
        flat = chosen.reshape(t * k)  # [T * k] expert of each (token, choice)
        order = jnp.argsort(flat, stable=True)  # rows sorted by expert
        token = order // k  # [T * k] the token each sorted row copies
        group_sizes = jnp.bincount(flat, length=self.experts).astype(jnp.int32)  # [experts]
        gate_up = self.gate_up_proj(x[token], group_sizes)  # [T * k, 2, hidden]
        h = ACTIVATIONS[self.act](gate_up[:, 0]) * gate_up[:, 1]
        out = self.down_proj(h, group_sizes)  # [T * k, dim]
        out = out * weights.reshape(t * k)[order][:, None].astype(out.dtype)
        return jnp.zeros_like(x).at[token].add(out)

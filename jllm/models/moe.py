"""Mixture of experts (Mixtral, Qwen2/3-MoE, gpt-oss): a softmax router picks each token's top-k SwiGLU experts, and
every expert's tokens go through one grouped matmul (``jax.lax.ragged_dot_general``) instead of a loop over experts.
gpt-oss adds biases (the router's and each expert's projections) and its clamped SwiGLU (``ClampedSwiGLU``).

Each token is copied once per chosen expert; the copies are sorted by expert, so each expert's rows are contiguous
and ``group_sizes`` (tokens per expert) tells the grouped matmul where each expert's rows start. Expert kernels are
stacked ``[experts, in, ...]`` and split across devices along their inner (MLP) axis, as a dense MLP is.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.models.layers import ACTIVATIONS, MLP, Linear, param

# x [rows, in] @ kernel [experts, in, *out] with rows grouped by expert -> [rows, *out]
GROUPED = jax.lax.RaggedDotDimensionNumbers(
    dot_dimension_numbers=(([1], [1]), ([], [])), lhs_ragged_dimensions=[0], rhs_group_dimensions=[0]
)


@dataclasses.dataclass(frozen=True)
class ClampedSwiGLU:
    """gpt-oss's expert activation in place of ``silu(gate) * up``: the gate clipped above and the up projection on
    both sides at ``limit``, then ``(up + 1) * gate * sigmoid(alpha * gate)``."""

    alpha: float
    limit: float

    def __call__(self, gate: jax.Array, up: jax.Array) -> jax.Array:
        gate = jnp.minimum(gate, self.limit)
        up = jnp.clip(up, -self.limit, self.limit)
        return (up + 1) * (gate * jax.nn.sigmoid(gate * self.alpha))


class ExpertLinear(nnx.Module):
    """One linear map per expert, stacked: ``kernel [experts, in, *out]`` (and ``bias [experts, *out]``); rows of
    ``x`` sorted by expert."""

    def __init__(
        self, experts: int, d_in: int, d_out: tuple[int, ...], axes: tuple[str | None, ...], dtype, bias: bool = False
    ):
        self.kernel = param((experts, d_in, *d_out), dtype, ("experts", *axes))
        self.bias = param((experts, *d_out), dtype, ("experts", *axes[1:])) if bias else None

    def __call__(self, x: jax.Array, group_sizes: jax.Array) -> jax.Array:
        y = jax.lax.ragged_dot_general(x, self.kernel[...], group_sizes, GROUPED)
        if self.bias is None:
            return y
        experts = jnp.arange(group_sizes.shape[0], dtype=jnp.int32)
        expert = jnp.repeat(experts, group_sizes, total_repeat_length=x.shape[0])  # [rows] each row's expert
        return y + jnp.take(self.bias[...], expert, axis=0)


class Experts(nnx.Module):
    """Every expert's SwiGLU (or ``glu``), stacked (a module of its own, as checkpoints keep ``experts.{e}``)."""

    def __init__(
        self, experts: int, dim: int, hidden: int, dtype, act: str, bias: bool = False, glu: ClampedSwiGLU | None = None
    ):
        self.gate_up_proj = ExpertLinear(experts, dim, (2, hidden), ("embed", None, "mlp"), dtype, bias)
        self.down_proj = ExpertLinear(experts, hidden, (dim,), ("mlp", "embed"), dtype, bias)
        self.act, self.glu = act, glu

    def __call__(self, x: jax.Array, group_sizes: jax.Array) -> jax.Array:
        """``x [rows, dim]`` sorted by expert, ``group_sizes [experts]`` -> ``[rows, dim]``."""
        gate_up = self.gate_up_proj(x, group_sizes)  # [rows, 2, hidden]
        gate, up = gate_up[:, 0], gate_up[:, 1]
        return self.down_proj(ACTIVATIONS[self.act](gate) * up if self.glu is None else self.glu(gate, up), group_sizes)


class SparseMoE(nnx.Module):
    """transformers' ``MixtralSparseMoeBlock`` / ``Qwen2MoeSparseMoeBlock``: router softmax in float32, top-k, the k
    weights renormalised to sum to one where ``renormalize`` (Mixtral; Qwen's ``norm_topk_prob``), each token's output
    the weighted sum of its experts' SwiGLU outputs; with ``shared_hidden`` (Qwen2-MoE) plus a dense SwiGLU every
    token takes, scaled by a sigmoid gate. gpt-oss's: ``bias`` on the router and each expert's projections, its
    ``glu``, and softmax over its k chosen logits (what renormalising the k of a softmax over all of them is)."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        experts: int,
        top_k: int,
        dtype,
        act: str = "silu",
        renormalize: bool = True,
        shared_hidden: int = 0,
        bias: bool = False,
        glu: ClampedSwiGLU | None = None,
    ):
        self.gate = Linear(dim, experts, ("embed", None), dtype, bias=bias)  # the router
        self.experts = Experts(experts, dim, hidden, dtype, act, bias, glu)
        self.shared_expert = MLP(dim, shared_hidden, dtype, act) if shared_hidden else None
        self.shared_expert_gate = Linear(dim, 1, ("embed", None), dtype) if shared_hidden else None
        self.num_experts, self.top_k, self.renormalize = experts, top_k, renormalize

    def route(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Each token's ``top_k`` experts ``[T, k]`` int32 and their float32 weights ``[T, k]``."""
        probs = jax.nn.softmax(self.gate(x).astype(jnp.float32), axis=-1)  # [T, experts]
        weights, chosen = jax.lax.top_k(probs, self.top_k)
        return chosen, weights / jnp.sum(weights, axis=-1, keepdims=True) if self.renormalize else weights

    def __call__(self, x: jax.Array) -> jax.Array:
        t, k = x.shape[0], self.top_k
        chosen, weights = self.route(x)
        flat = chosen.reshape(t * k)  # [T * k] expert of each (token, choice)
        order = jnp.argsort(flat, stable=True)  # rows sorted by expert
        token = order // k  # [T * k] the token each sorted row copies
        group_sizes = jnp.bincount(flat, length=self.num_experts).astype(jnp.int32)  # [experts]
        out = self.experts(x[token], group_sizes)  # [T * k, dim]
        out = out * weights.reshape(t * k)[order][:, None].astype(out.dtype)
        y = jnp.zeros_like(x).at[token].add(out)
        if self.shared_expert is None:
            return y
        return y + jax.nn.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)

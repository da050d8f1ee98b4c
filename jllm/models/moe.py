"""Mixture of experts (Mixtral, Qwen2/3-MoE, OLMoE, Granite MoE, Phi-3.5-MoE, ERNIE 4.5 MoE, Llama 4): a router picks
each token's experts, and every expert's tokens go through one grouped matmul (``jax.lax.ragged_dot_general``)
instead of a loop over experts.

Each token is copied once per chosen expert; the copies are sorted by expert, so each expert's rows are contiguous
and ``group_sizes`` (tokens per expert) tells the grouped matmul where each expert's rows start. Expert kernels are
stacked ``[experts, in, ...]`` and split across devices along their inner (MLP) axis, as a dense MLP is.

The routing rules are small functions of the router's float32 logits, one per family kind (``ROUTINGS``), each
returning the chosen experts and their weights as transformers computes them at inference.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.models.layers import ACTIVATIONS, MLP, Linear, param

# x [rows, in] @ kernel [experts, in, *out] with rows grouped by expert -> [rows, *out]
GROUPED = jax.lax.RaggedDotDimensionNumbers(
    dot_dimension_numbers=(([1], [1]), ([], [])), lhs_ragged_dimensions=[0], rhs_group_dimensions=[0]
)


def route_softmax(logits: jax.Array, top_k: int, renormalize: bool) -> tuple[jax.Array, jax.Array]:
    """Mixtral, Qwen, OLMoE, Granite: the top ``top_k`` of the softmax, renormalised to sum to one where
    ``renormalize`` (Granite's softmax over the top-k logits is the same)."""
    weights, chosen = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), top_k)
    return chosen, weights / jnp.sum(weights, axis=-1, keepdims=True) if renormalize else weights


def route_sparsemixer(logits: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
    """Phi-3.5-MoE's sparsemixer at inference: always two experts. The first is the top logit, weighted by its share
    of a softmax over the logits within ``2 * eps`` (relative) of it; the second the top of the rest, weighted by its
    share of a softmax over the others within ``2 * eps`` of it."""

    def pick(masked: jax.Array) -> tuple[jax.Array, jax.Array]:
        top = jnp.max(masked, axis=-1, keepdims=True)  # [T, 1]
        chosen = jnp.argmax(masked, axis=-1)[:, None]  # [T, 1]
        far = (top - logits) / jnp.maximum(jnp.abs(logits), top) > 2 * eps
        probs = jax.nn.softmax(jnp.where(far, -jnp.inf, masked), axis=-1)
        return chosen, jnp.take_along_axis(probs, chosen, axis=-1)

    first, w1 = pick(logits)
    rest = jnp.where(jnp.arange(logits.shape[-1]) == first, -jnp.inf, logits)
    second, w2 = pick(rest)
    return jnp.concatenate([first, second], axis=-1), jnp.concatenate([w1, w2], axis=-1)


def route_softmax_corrected(
    logits: jax.Array, bias: jax.Array, top_k: int, norm_min: float
) -> tuple[jax.Array, jax.Array]:
    """ERNIE 4.5's router: experts chosen by softmax probability plus a per-expert correction ``bias``, weighted by
    their uncorrected probabilities, renormalised (the sum floored at ``norm_min``)."""
    probs = jax.nn.softmax(logits, axis=-1)
    _, chosen = jax.lax.top_k(probs + bias, top_k)
    weights = jnp.take_along_axis(probs, chosen, axis=-1)
    return chosen, weights / jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), norm_min)


def route_sigmoid(logits: jax.Array, top_k: int) -> tuple[jax.Array, jax.Array]:
    """Llama 4's router: the top ``top_k`` logits, each through a sigmoid (not normalised)."""
    values, chosen = jax.lax.top_k(logits, top_k)
    return chosen, jax.nn.sigmoid(values)


# the routing rules by name; "sigmoid_input" (Llama 4) scales each expert's input by its weight, the others its output
ROUTINGS = ("softmax", "sparsemixer", "softmax_corrected", "sigmoid_input")


class ExpertLinear(nnx.Module):
    """One linear map per expert, stacked: ``kernel [experts, in, *out]``; rows of ``x`` sorted by expert."""

    def __init__(self, experts: int, d_in: int, d_out: tuple[int, ...], axes: tuple[str | None, ...], dtype):
        self.kernel = param((experts, d_in, *d_out), dtype, ("experts", *axes))

    def __call__(self, x: jax.Array, group_sizes: jax.Array) -> jax.Array:
        return jax.lax.ragged_dot_general(x, self.kernel[...], group_sizes, GROUPED)


class Experts(nnx.Module):
    """Every expert's SwiGLU, stacked (a module of its own, as checkpoints keep ``experts.{e}``)."""

    def __init__(self, experts: int, dim: int, hidden: int, dtype, act: str):
        self.gate_up_proj = ExpertLinear(experts, dim, (2, hidden), ("embed", None, "mlp"), dtype)
        self.down_proj = ExpertLinear(experts, hidden, (dim,), ("mlp", "embed"), dtype)
        self.act = act

    def __call__(self, x: jax.Array, group_sizes: jax.Array) -> jax.Array:
        """``x [rows, dim]`` sorted by expert, ``group_sizes [experts]`` -> ``[rows, dim]``."""
        gate_up = self.gate_up_proj(x, group_sizes)  # [rows, 2, hidden]
        return self.down_proj(ACTIVATIONS[self.act](gate_up[:, 0]) * gate_up[:, 1], group_sizes)


class SparseMoE(nnx.Module):
    """transformers' sparse MoE blocks: the router's logits in float32, each token's experts and weights by the
    ``routing`` rule (``ROUTINGS``), each token's output the weighted sum of its experts' SwiGLU outputs (Llama 4:
    the sum of its experts' outputs on its weighted input); with ``shared_hidden`` plus a dense SwiGLU every token
    takes, scaled by a sigmoid gate where ``shared_gated`` (Qwen2-MoE) or not (Granite MoE Shared, ERNIE, Llama 4).

    ``top_k`` and ``renormalize`` serve the softmax rules; ``router_eps`` is sparsemixer's jitter epsilon or the
    corrected softmax's floor on the weights' sum."""

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
        routing: str = "softmax",
        shared_gated: bool = True,
        router_eps: float = 0.0,
    ):
        if routing not in ROUTINGS:
            raise ValueError(f"expert routing {routing!r} is not one of {', '.join(ROUTINGS)}")
        # ERNIE keeps its router and correction bias in float32 (transformers' _keep_in_fp32_modules)
        router_dtype = jnp.float32 if routing == "softmax_corrected" else dtype
        self.gate = Linear(dim, experts, ("embed", None), router_dtype)  # the router
        self.e_score_correction_bias = (
            param((1, experts), jnp.float32, (None, None)) if routing == "softmax_corrected" else None
        )
        self.experts = Experts(experts, dim, hidden, dtype, act)
        self.shared_expert = MLP(dim, shared_hidden, dtype, act) if shared_hidden else None
        gated = shared_hidden and shared_gated
        self.shared_expert_gate = Linear(dim, 1, ("embed", None), dtype) if gated else None
        self.num_experts, self.top_k, self.renormalize = experts, top_k, renormalize
        self.routing, self.router_eps = routing, router_eps

    def route(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Each token's ``top_k`` experts ``[T, k]`` int32 and their float32 weights ``[T, k]``."""
        if self.routing == "softmax_corrected":
            logits = self.gate(x.astype(jnp.float32))  # [T, experts]
            return route_softmax_corrected(logits, self.e_score_correction_bias[0], self.top_k, self.router_eps)
        logits = self.gate(x).astype(jnp.float32)  # [T, experts]
        if self.routing == "sparsemixer":
            return route_sparsemixer(logits, self.router_eps)
        if self.routing == "sigmoid_input":
            return route_sigmoid(logits, self.top_k)
        return route_softmax(logits, self.top_k, self.renormalize)

    def __call__(self, x: jax.Array) -> jax.Array:
        t = x.shape[0]
        chosen, weights = self.route(x)
        k = chosen.shape[1]  # sparsemixer's two whatever top_k says
        flat = chosen.reshape(t * k)  # [T * k] expert of each (token, choice)
        order = jnp.argsort(flat, stable=True)  # rows sorted by expert
        token = order // k  # [T * k] the token each sorted row copies
        group_sizes = jnp.bincount(flat, length=self.num_experts).astype(jnp.int32)  # [experts]
        row_weights = weights.reshape(t * k)[order][:, None].astype(x.dtype)  # [T * k, 1]
        if self.routing == "sigmoid_input":
            out = self.experts(x[token] * row_weights, group_sizes)  # [T * k, dim]
        else:
            out = self.experts(x[token], group_sizes) * row_weights
        y = jnp.zeros_like(x).at[token].add(out)
        if self.shared_expert is None:
            return y
        if self.shared_expert_gate is None:
            return y + self.shared_expert(x)
        return y + jax.nn.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)

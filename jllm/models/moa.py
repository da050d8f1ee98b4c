"""JetMoE's mixture of attention heads: each token's query heads come from its top-k query experts, every expert
projecting ``kv_heads`` query heads that attend to the layer's one set of shared K/V heads; each expert's output
projection maps its heads back, weighted by the router (transformers' ``JetMoeMoA`` / ``JetMoeAttention``).

A token's ``k`` experts give it ``k * kv_heads`` query heads; ordered KV head first (head ``h * k + s`` is slot
``s``'s query for KV head ``h``) they are plain grouped-query attention over the paged pool, group ``k``. The
experts' projections are grouped matmuls over the (token, slot) rows sorted by expert, as ``jllm.models.moe``'s.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.attention import AttentionMetadata, paged_attention
from jllm.models.layers import Linear, param
from jllm.models.moe import ExpertLinear, route_softmax

if TYPE_CHECKING:
    from jllm.models.model_args import LayerSpec, ModelArgs


class QueryExperts(nnx.Module):
    """The router, each expert's query (``input_linear``) and output (``output_linear``) projections, stacked, and
    the bias added to the combined output (module names as the checkpoint's, our ``gate`` its ``router.layer``)."""

    def __init__(self, args: ModelArgs):
        d, width, experts, dt = args.hidden_size, args.num_kv_heads * args.head_dim, args.attention_experts, args.dtype
        self.gate = Linear(d, experts, ("embed", None), dt)
        self.input_linear = ExpertLinear(experts, d, (width,), ("embed", None), dt)
        self.output_linear = ExpertLinear(experts, width, (d,), (None, "embed"), dt)
        self.output_bias = param((d,), dt, ("embed",))


class MixtureOfAttention(nnx.Module):
    """transformers' ``JetMoeAttention``: shared K/V heads (``kv_proj``: K's rows, then V's), routed queries."""

    def __init__(self, args: ModelArgs, spec: LayerSpec):
        self.experts = QueryExperts(args)
        width = args.num_kv_heads * args.head_dim
        self.kv_proj = Linear(args.hidden_size, 2 * width, ("embed", None), args.dtype)
        self.args, self.spec = args, spec

    def __call__(
        self, x: jax.Array, norm: nnx.Module, positions: jax.Array, kv_pages: jax.Array, meta: AttentionMetadata
    ) -> tuple[jax.Array, jax.Array]:
        """Attention over ``norm(x)``; ``kv_pages [2, num_kv_heads, num_pages, page_size, head_dim]``."""
        a, e = self.args, self.experts
        t, k, kv, hd = x.shape[0], a.experts_per_token, a.num_kv_heads, a.head_dim
        x = x if norm is None else norm(x)
        chosen, weights = route_softmax(e.gate(x).astype(jnp.float32), k, renormalize=True)  # [T, k] each
        flat = chosen.reshape(t * k)  # [T * k] expert of each (token, slot)
        order = jnp.argsort(flat, stable=True)  # rows sorted by expert
        group_sizes = jnp.bincount(flat, length=a.attention_experts).astype(jnp.int32)
        q = jnp.zeros((t * k, kv * hd), x.dtype).at[order].set(e.input_linear(x[order // k], group_sizes))
        q = q.reshape(t, k, kv, hd).transpose(0, 2, 1, 3).reshape(t, kv * k, hd)  # KV head first
        keys, values = (y.reshape(t, kv, hd) for y in jnp.split(self.kv_proj(x), 2, axis=-1))
        rope = self.spec.rope
        q, keys = rope.apply(q, positions), rope.apply(keys, positions)
        out, kv_pages = paged_attention(q, keys, values, kv_pages, meta, sm_scale=hd**-0.5)  # [T, kv * k, hd]
        out = out.reshape(t, kv, k, hd).transpose(0, 2, 1, 3).reshape(t * k, kv * hd)  # (token, slot) rows
        row_weights = weights.reshape(t * k)[order][:, None].astype(x.dtype)  # [T * k, 1]
        y = e.output_linear(out[order], group_sizes) * row_weights  # [T * k, hidden] sorted by expert
        return jnp.zeros_like(x).at[order // k].add(y) + e.output_bias[...], kv_pages

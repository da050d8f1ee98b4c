"""Doge's dynamic mask attention (``DogeAttention``): each key's score gets an additive bias of its KV head,
``exp(A * softplus(dt_proj(v)))`` of the token's values (all KV heads' values through one projection), beside the
causal mask. The bias is the key's own, computed once when the token is written, so the paged pool keeps it as one
more channel of the key's head: K is stored ``[k | bias]`` and V ``[v | 0]``, each query reads ``[q | 1 / scale]``,
so ``scale * (q . k + bias / scale)`` is the biased score on every attention backend, and the output's extra
channel (zero) is cut before ``o_proj``. A pool head costs one channel more (a kernel pads it to the next power of
two, ``attention.resolve_pool``).

Doge also keeps only the ``keep_window_size`` keys of largest bias for a query that sees more; jllm serves contexts
up to that window (``ModelArgs.dynamic_mask_window``), where every key is kept and the mask is the bias alone.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.attention import AttentionMetadata, paged_attention
from jllm.kv_scales import pool_scales
from jllm.models.attention_layer import Attention
from jllm.models.layers import Linear, normed_linear, param
from jllm.models.model_args import LayerSpec, ModelArgs


class DynamicMaskAttention(Attention):
    """The decoder's attention (fused QKV by KV head, q/k norms, the rotary) with Doge's per-key bias, ``A`` and
    ``dt_proj`` under transformers' names. ``dt_proj`` reads every KV head's values: replicated under tensor
    parallelism (its input gathered), its output split with the heads."""

    def __init__(self, args: ModelArgs, spec: LayerSpec):
        super().__init__(args, spec)
        kv_heads, dt = args.layer_heads(spec)[0], args.dtype
        self.A = param((kv_heads,), dt, (None,))
        self.dt_proj = Linear(kv_heads * self.head_dim, kv_heads, (None, None), dt, bias=args.qkv_bias)

    def __call__(
        self, x: jax.Array, norm: nnx.Module, positions: jax.Array, kv_pages: jax.Array, meta: AttentionMetadata
    ) -> tuple[jax.Array, jax.Array]:
        """Attention over ``norm(x)``, each key's bias written beside it in the pool."""
        a, g, hd = self.args, self.group, self.head_dim
        t = x.shape[0]
        qkv = normed_linear(norm, self.qkv_proj, x)  # [T, kv_heads, group + 2, head_dim]
        q, k, v = qkv[:, :, :g].reshape(t, a.num_heads, hd), qkv[:, :, g], qkv[:, :, g + 1]
        q, k = self._qk_normed(q, k)
        q, k = self.spec.rope.apply(q, positions), self.spec.rope.apply(k, positions)
        bias = jnp.exp(self.A[...] * jax.nn.softplus(self.dt_proj(v.reshape(t, -1))))  # [T, kv_heads]
        scale = a.sm_scale or hd**-0.5
        out, kv_pages = paged_attention(
            jnp.concatenate([q, jnp.full((t, a.num_heads, 1), 1 / scale, q.dtype)], axis=-1),
            jnp.concatenate([k, bias[..., None].astype(k.dtype)], axis=-1),
            jnp.pad(v, ((0, 0), (0, 0), (0, 1))),
            kv_pages,
            meta,
            sm_scale=scale,
            sliding_window=self.spec.sliding_window,
            **pool_scales(kv_pages.dtype, self.k_scale, self.v_scale),
        )
        return self.o_proj(out[..., :hd].reshape(t, a.num_heads * hd)), kv_pages

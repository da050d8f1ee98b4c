"""nGPT's normalized layers (Dory, https://huggingface.co/papers/2410.01131): every hidden state kept on the unit
sphere (``layers.l2_normed``), each block's residual an interpolation towards its normed output at a learned rate
per channel, in place of an addition. nGPT's scaled parameters are stored as ``s`` and used as ``s * s_init /
initializer_range`` (``model_args.NGPTSpec``), as transformers' ``modeling_dory`` reads them.

- attention (``NGPTAttention``): q and k unit-normed per head before the rotary, q then times ``(sqk * scale)^2``
  per channel, the output gated by ``sigmoid(gate * (s_gate * scale)^2)`` and unit-normed over all heads before
  ``o_proj`` (AFMoE's attention with nGPT's details);
- MLP (``NGPTMLP``): gate and up times ``suv_gate``, ``suv_up`` (scaled), ``act(gate) * up`` unit-normed before
  ``down_proj``;
- layer (``NGPTLayer``): ``h = l2(x)``, ``h += |lambda_1| (l2(attn(h)) - h)``, ``h = l2(h)``, ``h += |lambda_2|
  (l2(mlp(h)) - h)``;
- LM head (``ScaledLMHead``): the logits times ``logit_scale`` per token id (scaled), in float32.

Tensor parallelism splits them as the decoder's attention and MLP (the per-channel scales with their heads and MLP
columns); the norms over all heads or MLP columns reduce across devices.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.attention import AttentionMetadata, paged_attention
from jllm.kv_scales import pool_scales
from jllm.models.attention_layer import Attention
from jllm.models.layers import ACTIVATIONS, Linear, l2_normed, param
from jllm.models.model_args import LayerSpec, ModelArgs, NGPTSpec


class NGPTAttention(Attention):
    """The decoder's attention (fused QKV by KV head, the output gate's own projection, ``o_proj``) with nGPT's unit
    norms and scales."""

    def __init__(self, args: ModelArgs, spec: LayerSpec):
        super().__init__(args, spec)
        width, init = args.num_heads * self.head_dim, args.ngpt.initializer_range
        self.sqk = param((width,), args.dtype, ("q_heads",))
        self.s_gate = param((width,), args.dtype, ("q_heads",))
        self.sqk_scale = self.head_dim**0.5 / init
        self.s_gate_scale = args.hidden_size**0.25 / init

    def __call__(
        self, h: jax.Array, positions: jax.Array, kv_pages: jax.Array, meta: AttentionMetadata
    ) -> tuple[jax.Array, jax.Array]:
        """Attention over the unit-normed ``h [T, hidden]``; its output ``[T, hidden]`` and the layer's pages."""
        a, g, hd = self.args, self.group, self.head_dim
        t = h.shape[0]
        qkv = self.qkv_proj(h)  # [T, kv_heads, group + 2, head_dim]
        q, k, v = qkv[:, :, :g].reshape(t, a.num_heads, hd), qkv[:, :, g], qkv[:, :, g + 1]
        q, k = self.spec.rope.apply(l2_normed(q), positions), self.spec.rope.apply(l2_normed(k), positions)
        q = q * jnp.square(self.sqk[...] * self.sqk_scale).reshape(a.num_heads, hd)
        out, kv_pages = paged_attention(
            q,
            k,
            v,
            kv_pages,
            meta,
            sm_scale=hd**-0.5,
            sliding_window=self.spec.sliding_window,
            **pool_scales(kv_pages.dtype, self.k_scale, self.v_scale),
        )
        gate = self.attn_gate(h) * jnp.square(self.s_gate[...] * self.s_gate_scale).reshape(a.num_heads, hd)
        out = (out * jax.nn.sigmoid(gate)).reshape(t, a.num_heads * hd)
        return self.o_proj(l2_normed(out)), kv_pages


class NGPTMLP(nnx.Module):
    """A gated MLP (gate and up fused, as the decoder's) with nGPT's per-channel scales and its unit norm."""

    def __init__(self, args: ModelArgs):
        d, hidden, dt = args.hidden_size, args.intermediate_size, args.dtype
        self.gate_up_proj = Linear(d, (2, hidden), ("embed", None, "mlp"), dt, bias=args.mlp_bias)
        self.down_proj = Linear(hidden, d, ("mlp", "embed"), dt, bias=args.mlp_bias)
        self.suv_gate = param((hidden,), dt, ("mlp",))
        self.suv_up = param((hidden,), dt, ("mlp",))
        self.suv_scale = d**0.5
        self.act = args.mlp_act

    def __call__(self, h: jax.Array) -> jax.Array:
        gate_up = self.gate_up_proj(h)  # [T, 2, hidden]
        gate = gate_up[:, 0] * (self.suv_gate[...] * self.suv_scale)
        up = gate_up[:, 1] * (self.suv_up[...] * self.suv_scale)
        return self.down_proj(l2_normed(ACTIVATIONS[self.act](gate) * up))


class NGPTLayer(nnx.Module):
    """A Dory layer: Gemma 2's sandwich on the unit sphere, its residuals interpolations at learned rates. The
    decoder layer's call shape, so the decoder runs it as any layer."""

    def __init__(self, args: ModelArgs, spec: LayerSpec):
        self.self_attn = NGPTAttention(args, spec)
        self.mlp = NGPTMLP(args)
        self.lambda_1 = param((args.hidden_size,), args.dtype, ("embed",))
        self.lambda_2 = param((args.hidden_size,), args.dtype, ("embed",))
        self.lambda_scale = args.ngpt.alpha_init / args.ngpt.initializer_range

    def __call__(
        self, x: jax.Array, positions: jax.Array, kv_pages: jax.Array, meta: AttentionMetadata, *unused: Any
    ) -> tuple[jax.Array, jax.Array, None]:
        """The layer's output ``[T, hidden]`` and pages; it hands nothing on (``unused``: the decoder layer's LoRA,
        per-layer input, embeddings and carry, which Dory has none of)."""
        h = l2_normed(x)
        attended, kv_pages = self.self_attn(h, positions, kv_pages, meta)
        h = h + jnp.abs(self.lambda_1[...] * self.lambda_scale) * (l2_normed(attended) - h)
        h = l2_normed(h)
        return h + jnp.abs(self.lambda_2[...] * self.lambda_scale) * (l2_normed(self.mlp(h)) - h), kv_pages, None


class ScaledLMHead(Linear):
    """Dory's ``lm_head``: the logits (float32) times a learned scale per token id."""

    def __init__(self, dim: int, vocab_size: int, dtype: jnp.dtype, spec: NGPTSpec):
        super().__init__(dim, vocab_size, ("embed", "vocab"), dtype)
        self.logit_scale = param((vocab_size,), dtype, ("vocab",))
        self.factor = 1.0 / spec.initializer_range

    def __call__(self, x: jax.Array) -> jax.Array:
        return super().__call__(x).astype(jnp.float32) * (self.logit_scale[...].astype(jnp.float32) * self.factor)


class L2Norm(nnx.Module):
    """The model's final norm: the unit sphere (Dory's ``norm``), no weight."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return l2_normed(x)

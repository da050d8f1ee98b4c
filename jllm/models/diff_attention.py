"""DiffLlama's differential attention (https://arxiv.org/abs/2410.05258) over the paged pool: each query head's softmax
map read against two value heads, the maps of query heads ``i`` and ``i + heads / 2`` subtracted with a learned
``lambda``, the difference RMS-normed per head (``(1 - lambda_init) * norm(A_i V - lambda A_{i + H/2} V)``, over
``2 head_dim`` channels).

transformers splits the values into two halves along the KV heads: KV head ``j`` reads value heads ``j mod (kv / 2)``
and ``kv / 2 + j mod (kv / 2)``, concatenated. Here the pool stores exactly that pair as one value head ``2 head_dim``
wide (``ModelArgs.kv_pool_head_dim``), the keys zero-padded to the same width, so one ordinary paged-attention call (on
any backend: the kernels read it as a wider head) returns both products of every map at once. The padding costs the
K plane half its width; a second pool of values would cost the same and a second read.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.attention import AttentionMetadata, pad_heads, paged_attention
from jllm.models.attention_layer import Attention
from jllm.models.layers import RMSNorm, normed_linear, param, scaled
from jllm.models.model_args import LayerSpec, ModelArgs


class DiffAttention(Attention):
    """Llama's fused QKV and ``o_proj`` (``Attention``'s), the differential maps between them; its layer's
    ``LayerSpec.diff_lambda_init`` is transformers' ``0.8 - 0.6 exp(-0.3 layer)``."""

    def __init__(self, args: ModelArgs, spec: LayerSpec):
        super().__init__(args, spec)
        hd, dt = self.head_dim, args.dtype
        self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2 = (param((hd,), dt, (None,)) for _ in range(4))
        self.groupnorm = RMSNorm(2 * hd, args.norm_eps, dt, weight=False)
        self.lambda_init = spec.diff_lambda_init

    def __call__(
        self, x: jax.Array, norm: nnx.Module, positions: jax.Array, kv_pages: jax.Array, meta: AttentionMetadata
    ) -> tuple[jax.Array, jax.Array]:
        a, g, hd = self.args, self.group, self.head_dim
        t, heads = x.shape[0], a.num_heads
        qkv = normed_linear(norm, self.qkv_proj, x)  # [T, kv_heads, group + 2, head_dim]
        q = self.spec.rope.apply(qkv[:, :, :g].reshape(t, heads, hd), positions)
        k, v = self.spec.rope.apply(qkv[:, :, g], positions), qkv[:, :, g + 1]
        kv = k.shape[1]  # the model's KV heads, or their copies under tensor parallelism (each copy in place)
        first = jnp.arange(kv) % (kv // 2)
        pairs = jnp.concatenate([v[:, first], v[:, first + kv // 2]], axis=-1)  # [T, kv_heads, 2 head_dim]
        out, kv_pages = paged_attention(
            pad_heads(q, 2 * hd),
            pad_heads(k, 2 * hd),
            pairs,
            kv_pages,
            meta,
            sm_scale=hd**-0.5,
            sliding_window=self.spec.sliding_window,
        )  # [T, heads, 2 head_dim]: each map against both value heads
        lambda_full = self._exp_dot(self.lambda_q1, self.lambda_k1) - self._exp_dot(self.lambda_q2, self.lambda_k2)
        lambda_full = (lambda_full + self.lambda_init).astype(out.dtype)
        diff = out[:, : heads // 2] - lambda_full * out[:, heads // 2 :]  # [T, heads / 2, 2 head_dim]
        out = scaled(self.groupnorm(diff), 1 - self.lambda_init)
        return self.o_proj(out.reshape(t, heads * hd)), kv_pages

    @staticmethod
    def _exp_dot(a: nnx.Param, b: nnx.Param) -> jax.Array:
        """``exp(a . b)``, the sum in float32 (transformers')."""
        return jnp.exp(jnp.sum(a[...].astype(jnp.float32) * b[...].astype(jnp.float32)))

"""The attention layer of the one decoder (``jllm.models.decoder``): Q, K and V from one fused matmul laid out by KV
head, the family's q/k norms, rotary and output gate around ``jllm.attention.paged_attention``, and the per-layer
variants (Gemma 4's own head widths and KV-shared layers, MiMo-V2-Flash's narrower values, Zamba2's wider input).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.attention import AttentionMetadata, paged_attention
from jllm.kv_scales import pool_scales, scale_params
from jllm.models.layers import Linear, normed_linear, param, scaled
from jllm.models.lora import LayerLoRA
from jllm.models.model_args import LayerSpec, ModelArgs
from jllm.parallel import KV_HEADS


class Attention(nnx.Module):
    """Q, K and V come from one matmul whose kernel is laid out ``[hidden, kv_heads, group + 2, head_dim]``: for
    each KV head, its ``group`` query heads, then its K and its V. One weight read and one kernel instead of three
    (XLA turns the small K and V matmuls of a one-token step into slow reductions), and splitting the KV-head axis
    gives every device whole query groups with their K/V head."""

    def __init__(self, args: ModelArgs, spec: LayerSpec, in_dim: int | None = None):
        """``in_dim``: the input's width where it is not ``hidden_size`` (Zamba2's shared blocks read the residual
        stream beside the embeddings)."""
        d, dt = args.hidden_size, args.dtype
        kv_heads, hd = args.layer_heads(spec)  # the model's, or this layer's own (Gemma 4's full-attention layers)
        self.group = args.num_heads // kv_heads
        if spec.kv_source is None:  # K, and V unless it is K's projection (k_eq_v), beside each group's queries
            heads = (kv_heads, self.group + (1 if spec.k_eq_v else 2), hd)
            axes = ("embed", KV_HEADS, None, None)
            qkv = Linear(
                in_dim or d, heads, axes, dt, bias=args.qkv_bias, quant=args.quant,
                decode_kernel_rows=args.decode_gemv_max_tokens,
            )  # fmt: skip
            self.qkv_proj, self.q_proj = qkv, None
        else:  # the queries alone: K/V are another layer's, read from its pages
            q = Linear(in_dim or d, args.num_heads * hd, ("embed", "q_heads"), dt, bias=args.qkv_bias, quant=args.quant)
            self.qkv_proj, self.q_proj = None, q
        self.value_dim = args.v_head_dim or hd  # the values' channels: the rest of a padded value head is zeros
        o_in = args.num_heads * self.value_dim
        self.o_proj = Linear(o_in, d, ("q_heads", "embed"), dt, bias=args.o_bias, quant=args.quant)
        self.attn_sub_norm = args.make_norm(o_in) if args.sub_norms else None  # BitNet's, over all heads
        self.q_norm, self.k_norm = args.make_qk_norms(spec)
        self.sinks = param((args.num_heads,), dt, ("q_heads",)) if args.attn_sinks or spec.sinks else None
        self.k_scale, self.v_scale = scale_params() if args.kv_scales else (None, None)  # FP8 pools' scales
        # [hidden, heads, head_dim or 1]: the output gate by head, so tensor parallelism splits it with the heads and
        # the "gated" layout's rows (each query head's, then its gate's, in q_proj) read per head; stored in q_proj,
        # it shares q_proj's bias
        gated_q = args.weights.qkv_layout == "gated"
        gates = (args.num_heads, 1 if args.attn_output_gate_per_head else hd)
        self.attn_gate = (
            Linear(d, gates, ("embed", "q_heads", None), dt, bias=args.qkv_bias and gated_q, quant=args.quant)
            if args.attn_output_gate
            else None
        )
        self.head_dim = hd
        self.args, self.spec = args, spec

    def __call__(
        self,
        x: jax.Array,
        norm: nnx.Module,
        positions: jax.Array,
        kv_pages: jax.Array,
        meta: AttentionMetadata,
        lora: LayerLoRA | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Attention over ``norm(x)`` (``x`` itself without a norm), each token's LoRA delta added (``lora``). A layer
        reading another's K/V (``kv_source``) is given that layer's pages, and returns them as they were."""
        a, g, hd = self.args, self.group, self.head_dim
        t = x.shape[0]
        if self.qkv_proj is None:  # K/V from another layer's pages: none computed, none written
            q, k, v = normed_linear(norm, self.q_proj, x).reshape(t, a.num_heads, hd), None, None
        else:
            qkv = normed_linear(norm, self.qkv_proj, x)  # [T, kv_heads, group + 2 (or + 1: k_eq_v), head_dim]
            if lora is not None:
                qkv = qkv + lora.delta("qkv", x if norm is None else norm(x))
            q = qkv[:, :, :g].reshape(t, a.num_heads, hd)
            k, v = qkv[:, :, g], qkv[:, :, g if self.spec.k_eq_v else g + 1]
        if not a.qk_norm_after_rope:
            q, k = self._qk_normed(q, k)
        if a.qkv_clip is not None:
            q, k, v = (jnp.clip(y, -a.qkv_clip, a.qkv_clip) for y in (q, k, v))
        if self.spec.rope is not None:
            q = self.spec.rope.apply(q, positions)
            k = None if k is None else self.spec.rope.apply(k, positions)
        if a.qk_norm_after_rope:
            q, k = self._qk_normed(q, k)
        if self.spec.qk_l2_norm:
            q, k = _unit_rms(q, a.norm_eps), _unit_rms(k, a.norm_eps)
        k, v = self._as_written(k, v)
        q = self.spec.scale_queries(q, positions)
        out, kv_pages = paged_attention(
            q,
            k,
            v,
            kv_pages,
            meta,
            sm_scale=(a.sm_scale or hd**-0.5) * self.spec.score_scale,
            soft_cap=a.attn_softcap,
            sliding_window=self.spec.sliding_window,
            sinks=None if self.sinks is None else self.sinks[...],
            alibi_slopes=None if a.alibi_slopes is None else jnp.asarray(a.alibi_slopes, jnp.float32),
            **pool_scales(kv_pages.dtype, self.k_scale, self.v_scale),
        )
        if self.attn_gate is not None:  # [T, heads, head_dim or 1], its activation taken in float32 (Laguna's is)
            act = jax.nn.sigmoid if a.attn_output_gate == "sigmoid" else jax.nn.softplus
            out = out * act(normed_linear(norm, self.attn_gate, x).astype(jnp.float32)).astype(out.dtype)
        out = out[..., : self.value_dim].reshape(t, a.num_heads * self.value_dim)
        out = out if self.attn_sub_norm is None else self.attn_sub_norm(out)
        y = self.o_proj(out)
        return (y if lora is None else y + lora.delta("o", out)), kv_pages

    def _as_written(self, k: jax.Array | None, v: jax.Array | None) -> tuple[jax.Array | None, jax.Array | None]:
        """K and V as the pages keep them (None: another layer's): Gemma 4's values normed, MiMo's scaled; Kolibri-1.1's
        indexed layers' both rounded to NVFP4, once as written, so later steps read them rounded."""
        if v is None:
            return k, v
        a = self.args
        v = scaled(_unit_rms(v, a.norm_eps) if a.v_norm else v, a.value_scale)
        return (nvfp4_round(k), nvfp4_round(v)) if self.spec.kv_nvfp4 else (k, v)

    def _qk_normed(self, q: jax.Array, k: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
        """q ``[T, heads, head_dim]`` and k (None: another layer's) through their norms, if the family has them."""
        if self.q_norm is None:
            return q, k
        if self.args.qk_norm_all_heads:  # [T, heads * head_dim] normed, then heads again
            t = q.shape[0]
            return self.q_norm(q.reshape(t, -1)).reshape(q.shape), self.k_norm(k.reshape(t, -1)).reshape(k.shape)
        return self.q_norm(q), None if k is None else self.k_norm(k)


def nvfp4_round(x: jax.Array) -> jax.Array:
    """``x`` rounded to NVFP4 and back, as transformers' ``nvfp4_fake_quantize`` (Kolibri-1.1): E2M1 values with one
    E4M3 scale per 16 consecutive channels of the last axis (its amax / 6, clamped to [2^-9, 448]), magnitudes rounded
    to nearest-even on E2M1's grid (steps of 0.5 below 2, 1 below 4, 2 up to 6), in float32."""
    blocks = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 16)
    scale = jnp.clip(jnp.max(jnp.abs(blocks), axis=-1, keepdims=True) / 6, 2.0**-9, 448.0)
    scale = scale.astype(jnp.float8_e4m3fn).astype(jnp.float32)
    scaled = blocks / scale
    magnitude = jnp.minimum(jnp.abs(scaled), 6.0)
    step = jnp.where(magnitude < 2, 0.5, jnp.where(magnitude < 4, 1.0, 2.0))
    rounded = jnp.round(magnitude / step) * step  # jnp.round ties to even, as torch.round
    return (jnp.copysign(rounded, scaled) * scale).reshape(x.shape).astype(x.dtype)


def _unit_rms(x: jax.Array | None, eps: float) -> jax.Array | None:
    """Llama 4's (and Gemma 4's value) weightless RMSNorm over ``x``'s last axis, in float32; None stays None."""
    if x is None:
        return None
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)

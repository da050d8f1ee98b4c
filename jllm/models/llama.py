"""The Llama family (Llama 2/3/3.x, Mistral, Qwen2/2.5, SmolLM2) as one Flax NNX model.

The members differ only in settings read from ``config.json``: grouped-query heads, rotary base and scaling, qkv
bias (Qwen2), sliding window (Mistral), tied embeddings. Layers are a Python list, so ``jit`` unrolls them: on the
H100 an unrolled decode step ran 2.7x faster than a ``lax.scan`` over stacked layers. Each layer runs through one
nested ``jit`` (``_decoder_layer``), so a step program traces and lowers a layer once, not once per layer; XLA inlines
the calls, so the compiled program is the unrolled one.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.attention import AttentionMetadata, paged_attention
from jllm.models.layers import Embedding, GatedMLP, Linear, RMSNorm, apply_rotary, rope_inv_freq
from jllm.parallel import KV_HEADS


@dataclasses.dataclass(frozen=True)
class LlamaArgs:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: tuple[tuple[str, Any], ...] | None  # hashable: NNX keeps args as static data
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    sliding_window: int | None
    dtype: Any = jnp.float32

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], dtype: Any, model_type: str) -> LlamaArgs:
        heads = cfg["num_attention_heads"]
        rope = cfg.get("rope_scaling") or cfg.get("rope_parameters")
        rope_theta = cfg.get("rope_theta") or (rope or {}).get("rope_theta", 10000.0)
        sliding = cfg.get("sliding_window") if model_type == "mistral" or cfg.get("use_sliding_window") else None
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling=tuple(sorted(rope.items())) if rope else None,
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or bool(cfg.get("attention_bias", False)),
            sliding_window=sliding,
            dtype=dtype,
        )


class Attention(nnx.Module):
    """Q, K and V come from one matmul whose kernel is laid out ``[hidden, kv_heads, group + 2, head_dim]``: for
    each KV head, its ``group`` query heads, then its K and its V. One weight read and one kernel instead of three
    (XLA turns the small K and V matmuls of a one-token step into slow reductions), and splitting the KV-head axis
    gives every device whole query groups with their K/V head."""

    def __init__(self, args: LlamaArgs):
        d, hd, dt = args.hidden_size, args.head_dim, args.dtype
        self.group = args.num_heads // args.num_kv_heads
        self.qkv_proj = Linear(
            d, (args.num_kv_heads, self.group + 2, hd), ("embed", KV_HEADS, None, None), dt, bias=args.qkv_bias
        )
        self.o_proj = Linear(args.num_heads * hd, d, ("q_heads", "embed"), dt)
        self.args = args

    def __call__(
        self, x: jax.Array, positions: jax.Array, kv_pages: jax.Array, meta: AttentionMetadata
    ) -> tuple[jax.Array, jax.Array]:
        a, g = self.args, self.group
        t = x.shape[0]
        inv_freq = rope_inv_freq(a.head_dim, a.rope_theta, dict(a.rope_scaling or ()))
        qkv = self.qkv_proj(x)  # [T, kv_heads, group + 2, head_dim]
        q = apply_rotary(qkv[:, :, :g].reshape(t, a.num_heads, a.head_dim), positions, inv_freq)
        k = apply_rotary(qkv[:, :, g], positions, inv_freq)
        v = qkv[:, :, g + 1]
        out, kv_pages = paged_attention(
            q, k, v, kv_pages, meta, sm_scale=a.head_dim**-0.5, sliding_window=a.sliding_window
        )
        return self.o_proj(out.reshape(t, a.num_heads * a.head_dim)), kv_pages


class DecoderLayer(nnx.Module):
    def __init__(self, args: LlamaArgs):
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps, args.dtype)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps, args.dtype)
        self.mlp = GatedMLP(args.hidden_size, args.intermediate_size, args.dtype)

    def __call__(
        self, x: jax.Array, positions: jax.Array, kv_pages: jax.Array, meta: AttentionMetadata
    ) -> tuple[jax.Array, jax.Array]:
        h, kv_pages = self.self_attn(self.input_layernorm(x), positions, kv_pages, meta)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), kv_pages


@functools.partial(jax.jit, static_argnums=0)
def _decoder_layer(
    graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, positions: jax.Array, kv_pages: jax.Array, meta: Any
) -> tuple[jax.Array, jax.Array]:
    """One layer as a pure function: every layer of a model shares its graphdef and shapes, so JAX traces it once per
    step program. Tracing each of 30 layers (and its attention) anew took most of a warm start (CPU, 2026-11-26)."""
    return nnx.merge(graphdef, state)(x, positions, kv_pages, meta)


class LlamaForCausalLM(nnx.Module):
    def __init__(self, args: LlamaArgs):
        self.embed_tokens = Embedding(args.vocab_size, args.hidden_size, args.dtype)
        self.layers = nnx.List([DecoderLayer(args) for _ in range(args.num_layers)])
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps, args.dtype)
        self.lm_head = (
            None
            if args.tie_word_embeddings
            else Linear(args.hidden_size, args.vocab_size, ("embed", "vocab"), args.dtype)
        )
        self.args = args

    def __call__(
        self,
        input_ids: jax.Array,  # [T] int32
        positions: jax.Array,  # [T] int32
        kv_caches: list[jax.Array],  # per layer [2, num_kv_heads, num_pages, page_size, head_dim]
        meta: AttentionMetadata,
    ) -> tuple[jax.Array, list[jax.Array]]:
        """Final hidden states ``[T, hidden]`` (normed) and the updated pool."""
        x = self.embed_tokens(input_ids)
        new_caches = []
        for layer, kv_pages in zip(self.layers, kv_caches, strict=True):
            x, kv_pages = _decoder_layer(*nnx.split(layer), x, positions, kv_pages, meta)
            new_caches.append(kv_pages)
        return self.norm(x), new_caches

    def compute_logits(self, hidden: jax.Array) -> jax.Array:
        """``[N, hidden] -> [N, vocab]`` float32 logits."""
        logits = self.embed_tokens.attend(hidden) if self.lm_head is None else self.lm_head(hidden)
        return logits.astype(jnp.float32)

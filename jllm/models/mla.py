"""Multi-head latent attention (DeepSeek-V2/V3, Kimi-K2, Moonlight; Kimi Linear's without rotary) run as multi-query
attention over the latent.

Every head's key and value are expanded from one shared per-token latent: ``c_kv`` (``kv_lora_rank`` channels,
normed) through ``kv_b_proj``, and a roped ``k_pe`` (``qk_rope_head_dim``) shared by all heads. Expanded, the pool
would hold ``heads x (qk_head_dim + v_head_dim)`` channels a token; instead (vLLM's "weight absorption") each
query head's non-rotary part is taken into latent space through its slice of ``kv_b_proj``'s K half, so the scores
are ``q_latent . c_kv + q_pe . k_pe`` against one KV head ``[c_kv, k_pe]`` of ``kv_lora_rank + qk_rope_head_dim``
channels, and the attention output's first ``kv_lora_rank`` channels (a weighted sum of ``c_kv``) go through each
head's slice of the V half. The pool stores that row once (a latent pool, ``jllm.kv_cache``): the attention reads
its first ``kv_lora_rank`` channels as the values.

DeepSeek Sparse Attention (DeepSeek-V3.2, GLM-5) adds a lightning indexer (``jllm.models.dsa``): the layer's cache
entry is then the pair (latent pool, indexer key pool), and each query attends over the latent rows of the tokens
its indexer selects alone. GLM-5's "shared" layers (``LayerSpec.reuses_selection``) have no indexer, as in
transformers: they attend over the selection the last layer with one made in the same step, handed on by the decoder,
and their entry is the latent pool alone.

BailingHybrid's (Ling 3's) latent attention gates each head's output by a sigmoid of its own projection of the
layer's input (``g_proj``, ``ModelArgs.attn_output_gate`` per head) before ``o_proj``; A.X-K2's gates each output
channel by a sigmoid of a part of its query projection, ``q_gate_proj``, which reads the normed low-rank query beside
the unnormed one (``MLASpec.q_gate``).

Tensor parallelism splits the query heads; the one latent head is replicated on every device (``jllm.parallel``'s
KV-head replication: the model holds ``num_kv_heads`` copies of it), and so is the indexer.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.attention import AttentionMetadata, paged_attention, sparse_latent_attention
from jllm.models.dsa import Indexer, IndexerSpec
from jllm.models.layers import Linear, RMSNorm, param, scaled

if TYPE_CHECKING:
    from jllm.models.model_args import LayerSpec, ModelArgs

# transformers builds q_a_layernorm and kv_a_layernorm with RMSNorm's default eps, not the config's rms_norm_eps
LATENT_NORM_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class MLASpec:
    """The latent attention's widths (DeepSeek's config names)."""

    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None  # None: queries from one projection (V2-Lite); else through a normed low rank
    indexer: IndexerSpec | None = None  # DeepSeek Sparse Attention's lightning indexer (needs q_lora_rank)
    # the queries and the normed latent c_kv (so keys and values) times these (LongCat-Flash's LoRA scales:
    # sqrt(hidden / q_lora_rank) and sqrt(hidden / kv_lora_rank)); the pool keeps the scaled latent
    q_scale: float = 1.0
    latent_scale: float = 1.0
    # the queries and a sigmoid gate on each head's output channels from one projection, ``q_gate_proj``, of the normed
    # low-rank query beside the unnormed one (A.X-K2's, in place of ``q_b_proj``)
    q_gate: bool = False
    # a sigmoid gate on each head's output channels from a projection of its own of the layer's normed input
    # (``out_gate``: Hy4's ``gate_proj``)
    out_gate: bool = False

    def __post_init__(self) -> None:
        for name, needs in (("DeepSeek Sparse Attention's indexer", self.indexer), ("q_gate", self.q_gate)):
            if needs and self.q_lora_rank is None:
                raise ValueError(f"{name} reads the low-rank query: q_lora_rank must be set")

    @property
    def latent_dim(self) -> int:
        """The pool's width: the normed ``c_kv``, then the roped ``k_pe``."""
        return self.kv_lora_rank + self.qk_rope_head_dim


class MLAttention(nnx.Module):
    """transformers' ``DeepseekV2Attention`` / ``DeepseekV3Attention`` with the K and V expansions absorbed into the
    query and the output (module names as the checkpoint's)."""

    def __init__(self, args: ModelArgs, spec: LayerSpec):
        m, d, h, dt, quant = args.mla, args.hidden_size, args.num_heads, args.dtype, args.quant
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        if m.q_lora_rank is None:
            self.q_proj = Linear(d, h * qk, ("embed", "q_heads"), dt, quant=quant)
            self.q_a_proj = self.q_a_layernorm = self.q_b_proj = None
        else:
            self.q_proj = None
            self.q_a_proj = Linear(d, m.q_lora_rank, ("embed", None), dt, bias=args.qkv_bias, quant=quant)
            self.q_a_layernorm = RMSNorm(m.q_lora_rank, LATENT_NORM_EPS, dt)
            self.q_b_proj = None if m.q_gate else Linear(m.q_lora_rank, h * qk, (None, "q_heads"), dt, quant=quant)
        # per head its query's qk channels, then its output gate's v_head_dim (A.X-K2's), so heads split whole
        gate_width = h * (qk + m.v_head_dim)
        self.q_gate_proj = Linear(2 * m.q_lora_rank, gate_width, (None, "q_heads"), dt) if m.q_gate else None
        self.kv_a_proj_with_mqa = Linear(d, m.latent_dim, ("embed", None), dt, bias=args.qkv_bias, quant=quant)
        self.kv_a_layernorm = RMSNorm(m.kv_lora_rank, LATENT_NORM_EPS, dt)
        # read as a matrix, not called: each head's K and V halves absorbed into the query and the output
        self.kv_b_proj = Linear(m.kv_lora_rank, h * (m.qk_nope_head_dim + m.v_head_dim), (None, "q_heads"), dt)
        self.o_proj = Linear(h * m.v_head_dim, d, ("q_heads", "embed"), dt, bias=args.o_bias, quant=quant)
        self.indexer = None if m.indexer is None or spec.reuses_selection else Indexer(args, m.indexer)
        gated = args.attn_output_gate is not None  # BailingHybrid's sigmoid gate per head
        self.g_proj = Linear(d, h, ("embed", "q_heads"), dt, quant=quant) if gated else None
        self.out_gate = Linear(d, h * m.v_head_dim, ("embed", "q_heads"), dt, quant=quant) if m.out_gate else None
        self.sinks = param((h,), dt, ("q_heads",)) if args.attn_sinks else None  # Hy4's, on every latent layer
        self.args, self.spec = args, spec

    def __call__(
        self,
        x: jax.Array,
        norm: nnx.Module,
        positions: jax.Array,
        kv_pages: Any,
        meta: AttentionMetadata,
        selected: jax.Array | None = None,  # i32[T, index_topk]: an earlier layer's selection, for one reusing it
    ) -> tuple[jax.Array, Any, jax.Array | None]:
        """Attention over ``norm(x)``, the updated cache entry and the selection attended over (None without
        DeepSeek Sparse Attention). ``kv_pages [1, num_kv_heads, num_pages, page_size, latent_dim]``, or with an
        indexer the pair (those, its key pool ``[1, num_kv_heads, num_pages, page_size, index_head_dim]``)."""
        a, m = self.args, self.args.mla
        t, h, r, nope = x.shape[0], a.num_heads, m.kv_lora_rank, m.qk_nope_head_dim
        x = x if norm is None else norm(x)
        qk, gate = nope + m.qk_rope_head_dim, None
        if self.q_proj is not None:
            q = self.q_proj(x)
        else:
            q_a = self.q_a_proj(x)
            q_resid = self.q_a_layernorm(q_a)  # [T, q_lora_rank], the indexer's query input too
            if self.q_gate_proj is None:
                q = self.q_b_proj(q_resid)
            else:  # A.X-K2's: [T, H, qk + v_head_dim], each head's query then its gate
                q_gate = self.q_gate_proj(jnp.concatenate([q_resid, q_a], axis=-1)).reshape(t, h, qk + m.v_head_dim)
                q, gate = q_gate[..., :qk], q_gate[..., qk:]
        q = self.spec.scale_queries(q.reshape(t, h, qk), positions)  # Mistral 4's scaling
        latent = self.kv_a_proj_with_mqa(x)  # [T, kv_lora_rank + rope]
        c_kv = self.kv_a_layernorm(latent[:, :r])
        q, c_kv = scaled(q, m.q_scale), scaled(c_kv, m.latent_scale)
        q_pe, k_pe = q[..., nope:], latent[:, None, r:]
        if self.spec.rope is not None:  # None: the "rope" channels unrotated (Kimi Linear's NoPE attention)
            q_pe, k_pe = self.spec.rope.apply(q_pe, positions), self.spec.rope.apply(k_pe, positions)
        w_kv = self.kv_b_proj.kernel[...].reshape(r, h, nope + m.v_head_dim)
        q_latent = jnp.einsum("thn,rhn->thr", q[..., :nope], w_kv[..., :nope])  # [T, H, kv_lora_rank]
        q = jnp.concatenate([q_latent, q_pe], axis=-1)  # [T, H, latent_dim]
        kv = jnp.concatenate([c_kv[:, None], k_pe], axis=-1)  # [T, 1, latent_dim]
        kv = jnp.broadcast_to(kv, (t, a.num_kv_heads, m.latent_dim))  # the copies tensor parallelism keeps
        if m.indexer is None:
            sinks = None if self.sinks is None else self.sinks[...]
            out, kv_pages = paged_attention(
                q, kv, None, kv_pages, meta, sm_scale=a.sm_scale, value_dim=r, sinks=sinks
            )  # [T, H, r]
        elif self.indexer is None:  # the last indexer's selection (GLM-5's shared layers; never the first layer)
            out, kv_pages = sparse_latent_attention(q, kv, kv_pages, selected, meta, sm_scale=a.sm_scale, value_dim=r)
        else:
            latent_pages, index_pages = kv_pages
            selected, index_pages = self.indexer(x, q_resid, positions, index_pages, meta)  # i32[T, index_topk]
            out, latent_pages = sparse_latent_attention(
                q, kv, latent_pages, selected, meta, sm_scale=a.sm_scale, value_dim=r
            )  # [T, H, r]
            kv_pages = (latent_pages, index_pages)
        out = jnp.einsum("thr,rhv->thv", out, w_kv[..., nope:])  # [T, H, v_head_dim]
        if gate is not None:  # [T, H, v_head_dim], the product in float32 (A.X-K2's)
            out = (out.astype(jnp.float32) * jax.nn.sigmoid(gate.astype(jnp.float32))).astype(out.dtype)
        if self.out_gate is not None:  # [T, H, v_head_dim] (Hy4's)
            out = out * jax.nn.sigmoid(self.out_gate(x).reshape(t, h, m.v_head_dim))
        if self.g_proj is not None:  # [T, H, 1], its sigmoid taken in float32 (BailingHybrid's)
            out = out * jax.nn.sigmoid(self.g_proj(x).astype(jnp.float32)).astype(out.dtype)[..., None]
        return self.o_proj(out.reshape(t, h * m.v_head_dim)), kv_pages, selected

"""DeepSeek-V4's attention, as transformers' ``DeepseekV4Attention`` computes it over the paged pool: low-rank
queries (``q_a_proj``, its norm, ``q_b_proj``) with every head RMS-normed without a weight, one head that is both key
and value (``kv_proj`` and its norm), the rotary on each head's last ``rotary_dim`` channels (pairs interleaved),
per-head sinks, the output's rotated channels turned back by the query's angle (the values carried the keys'
rotation), and a grouped low-rank output projection (``o_a_proj``: each group of heads to ``o_lora_rank`` channels,
``o_b_proj``: all groups to the hidden size).

A sliding layer attends through ``jllm.attention.paged_attention``; a compressed layer (``LayerSpec.compress``) also
to its compressed entries (``jllm.models.compressed_kv``), its window and entries read from its pool rows here.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.attention import AttentionMetadata, pad_heads, paged_attention
from jllm.models.compressed_kv import Compressor, Indexer, attend
from jllm.models.layers import Linear, param
from pallas_kernels import write_kv
from pallas_kernels.reference import sequence_of


@dataclasses.dataclass(frozen=True)
class V4AttentionSpec:
    """The widths DeepSeek-V4's attention adds to the model's (its head width is ``head_dim``, the rotated channels
    the layer's ``Rope.rotary_dim``)."""

    q_lora_rank: int
    o_groups: int  # the output projection's groups of heads
    o_lora_rank: int  # each group's channels after ``o_a_proj``


class GroupedLinear(nnx.Module):
    """transformers' ``DeepseekV4GroupedLinear``: ``groups`` block-diagonal maps, group ``g``'s input ``[in]`` to its
    ``[out]``; the kernel ``[in, groups * out]`` is the checkpoint's ``[groups * out, in]`` weight transposed."""

    def __init__(self, d_in: int, d_out: int, groups: int, dtype: Any):
        self.kernel = param((d_in, groups * d_out), dtype, (None, None))
        self.groups = groups

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [T, groups, in]`` -> ``[T, groups * out]``."""
        kernel = self.kernel[...].reshape(x.shape[-1], self.groups, -1)  # [in, groups, out]
        return jnp.einsum("tgi,igo->tgo", x, kernel).reshape(x.shape[0], -1)


class V4Attention(nnx.Module):
    """One DeepSeek-V4 layer's attention (tensors named as the checkpoint's); its pool entry a latent pool (one row a
    token, read as key and value, by the reference attention): the head alone, or in a compressed layer the head and
    its token's compressor features (``CompressSpec.feature_width``)."""

    def __init__(self, args: Any, spec: Any):
        d, hd, dt, v4 = args.hidden_size, args.head_dim, args.dtype, args.v4_attention
        heads, compress = args.num_heads, spec.compress
        self.q_a_proj = Linear(d, v4.q_lora_rank, ("embed", None), dt)
        self.q_a_norm = args.make_norm(v4.q_lora_rank)
        self.q_b_proj = Linear(v4.q_lora_rank, heads * hd, (None, "q_heads"), dt)
        self.q_b_norm = args.make_norm(hd, "rms_no_affine")
        self.kv_proj = Linear(d, hd, ("embed", None), dt)
        self.kv_norm = args.make_norm(hd)
        self.o_a_proj = GroupedLinear(heads * hd // v4.o_groups, v4.o_lora_rank, v4.o_groups, dt)
        self.o_b_proj = Linear(v4.o_groups * v4.o_lora_rank, d, (None, "embed"), dt)
        self.sinks = param((heads,), jnp.float32, ("q_heads",))  # float32, as transformers keeps them
        self.compressor = None if compress is None else Compressor(args, hd, compress)
        self.indexer = None if compress is None or not compress.index_heads else Indexer(args, compress, v4.q_lora_rank)
        self.heads, self.head_dim, self.groups = heads, hd, v4.o_groups
        self.spec = spec

    def __call__(
        self, x: jax.Array, norm: nnx.Module | None, positions: jax.Array, kv_pages: jax.Array, meta: AttentionMetadata
    ) -> tuple[jax.Array, jax.Array]:
        """Attention over ``norm(x) [T, hidden]`` -> (``[T, hidden]``, the updated pool)."""
        h = x if norm is None else norm(x)
        t, rope = h.shape[0], self.spec.rope
        q_resid = self.q_a_norm(self.q_a_proj(h))
        q = self.q_b_norm(self.q_b_proj(q_resid).reshape(t, self.heads, self.head_dim))
        q = rope.apply_last(q, positions)
        kv = rope.apply_last(self.kv_norm(self.kv_proj(h))[:, None, :], positions)  # [T, 1, head_dim]
        if self.compressor is None:
            scale, window, sinks = self.head_dim**-0.5, self.spec.sliding_window, self.sinks[...]
            kv = jnp.broadcast_to(kv, (t, kv_pages.shape[1], self.head_dim))  # the copies tensor parallelism keeps
            out, kv_pages = paged_attention(
                q, kv, None, kv_pages, meta, sm_scale=scale, sliding_window=window, sinks=sinks, value_dim=self.head_dim
            )
        else:
            out, kv_pages = self._compressed(h, q_resid, q, kv, positions, kv_pages, meta)
        out = rope.apply_last(out.astype(x.dtype), positions, back=True)  # [T, heads, head_dim]
        return self.o_b_proj(self.o_a_proj(out.reshape(t, self.groups, -1))), kv_pages

    def _compressed(
        self,
        h: jax.Array,  # [T, hidden]
        q_resid: jax.Array,  # [T, q_lora_rank]
        q: jax.Array,  # [T, heads, head_dim], rotated
        kv: jax.Array,  # [T, 1, head_dim], rotated
        positions: jax.Array,  # [T]
        kv_pages: jax.Array,  # [1, kv copies, num_pages, page_size, pool width]: a latent pool's layout
        meta: AttentionMetadata,
    ) -> tuple[jax.Array, jax.Array]:
        """A compressed layer: each token's row (its K=V head, then its compressor's and indexer's features) written,
        then every sequence's rows read back (``block_tables``) for its window and its entries."""
        hd, t, spec = self.head_dim, h.shape[0], self.spec
        parts = [kv[:, 0], self.compressor.features(h)]
        if self.indexer is not None:
            parts.append(self.indexer.compressor.features(h))
        row = pad_heads(jnp.concatenate(parts, axis=-1).astype(kv_pages.dtype), kv_pages.shape[-1])[:, None]
        row = jnp.broadcast_to(row, (t, kv_pages.shape[1], row.shape[-1]))  # the copies tensor parallelism keeps
        kv_pages = write_kv(kv_pages, row, None, meta.slot_mapping)
        tables = meta.block_tables  # [S, pages_per_seq]
        rows = kv_pages[0, 0][tables].reshape(tables.shape[0], -1, kv_pages.shape[-1])  # [S, L, pool width]
        seq = jnp.minimum(sequence_of(meta.query_start_loc[1:], jnp.arange(t)), tables.shape[0] - 1)  # i32[T]
        own = self.compressor.feature_width
        entries = self.compressor.entries(rows[..., hd : hd + own], spec.rope)  # [S, n, head_dim]
        n = entries.shape[1]
        seen = jnp.arange(n)[None, :] < ((positions + 1) // spec.compress.rate)[:, None]  # bool[T, n]: complete
        if self.indexer is not None:
            features = rows[..., hd + own : hd + own + self.indexer.compressor.feature_width]
            seen = self.indexer.chosen(h, q_resid, positions, features, seq, seen, spec.rope)
        ahead = positions[:, None] - jnp.arange(rows.shape[1])[None, :]  # [T, L] how far back each row is
        near = (ahead >= 0) & (ahead < (spec.sliding_window or rows.shape[1]))
        out = attend(q, rows[..., :hd][seq], entries[seq], near, seen, self.sinks[...], hd**-0.5)
        return out, kv_pages

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
from pallas_kernels import PADDING_SLOT, write_kv
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
    its token's compressor projections and window entry (``CompressSpec.feature_width``)."""

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
        """A compressed layer (``jllm.models.compressed_kv``): each token's row written (its K=V head, its
        compressor's and indexer's projections, no entry), then the entries of the windows this step completes, then
        each query's window and entries read back through its sequence's pages."""
        hd, t, spec, rate = self.head_dim, h.shape[0], self.spec, self.spec.compress.rate
        compressors = [self.compressor] + ([] if self.indexer is None else [self.indexer.compressor])
        entry_start = hd + sum(c.feature_width for c in compressors)  # a row: head, projections, entries
        entry_width = sum(c.width for c in compressors)
        row = jnp.concatenate([kv[:, 0], *(c.features(h) for c in compressors)], axis=-1)
        row = jnp.pad(row, ((0, 0), (0, entry_width))).astype(kv_pages.dtype)  # [T, row]: no entry yet
        kv_pages = _write(kv_pages, row, meta.slot_mapping)
        tables, page_size = meta.block_tables, kv_pages.shape[3]  # [S, pages_per_seq]
        seq = jnp.minimum(sequence_of(meta.query_start_loc[1:], jnp.arange(t)), tables.shape[0] - 1)  # i32[T]

        def slots(seqs: jax.Array, pos: jax.Array) -> jax.Array:  # i32[...] pool slots of the sequences' positions
            pos = jnp.maximum(pos, 0)
            return tables[seqs, pos // page_size] * page_size + pos % page_size

        # the windows this step's tokens complete: at most one per `rate` tokens and one more per sequence
        done = ((positions + 1) % rate == 0) & (jnp.arange(t) < meta.query_start_loc[-1])
        (closing,) = jnp.nonzero(done, size=min(t, t // rate + tables.shape[0]), fill_value=0)  # i32[M]
        last = positions[closing]  # [M] each window's last position
        span = self.compressor.spec.series * rate  # the rows an entry reads: its window's (and the one before)
        flat = kv_pages[0, 0].reshape(-1, kv_pages.shape[-1])  # [num_pages * page_size, pool width]
        windows = flat[slots(seq[closing][:, None], last[:, None] - span + 1 + jnp.arange(span))]  # [M, span, width]
        starts, first, made, at = last + 1 - rate, last + 1 == rate, [], hd
        for c in compressors:
            made.append(c.window_entries(windows[..., at : at + c.feature_width], starts, first, spec.rope))
            at += c.feature_width
        closed = row[closing].at[:, entry_start:].set(jnp.concatenate(made, axis=-1).astype(row.dtype))
        real = jnp.arange(closing.shape[0]) < jnp.sum(done)
        kv_pages = _write(kv_pages, closed, jnp.where(real, meta.slot_mapping[closing], PADDING_SLOT))

        flat = kv_pages[0, 0].reshape(-1, kv_pages.shape[-1])
        n = tables.shape[1] * page_size // rate  # entries a sequence may hold
        ends = jnp.arange(n) * rate + rate - 1  # each entry's row: its window's last token's
        seen = jnp.arange(n)[None, :] < ((positions + 1) // rate)[:, None]  # bool[T, n]: windows complete
        chosen = jnp.broadcast_to(jnp.arange(n), (t, n))  # [T, n] the entries each query reads: all, or the best
        if self.indexer is not None:
            index_keys = flat[slots(seq[:, None], ends[None, :]), entry_start + hd : entry_start + entry_width]
            chosen, seen = self.indexer.best(h, q_resid, positions, index_keys, seen, spec.rope)  # [T, k]
        entries = flat[slots(seq[:, None], ends[chosen]), entry_start : entry_start + hd]  # [T, k or n, head_dim]
        window = spec.sliding_window or tables.shape[1] * page_size
        back = positions[:, None] - window + 1 + jnp.arange(window)[None, :]  # [T, window] the window's positions
        keys = flat[slots(seq[:, None], back), :hd]  # [T, window, head_dim]
        return attend(q, keys, entries, back >= 0, seen, self.sinks[...], hd**-0.5), kv_pages


def _write(kv_pages: jax.Array, rows: jax.Array, slots: jax.Array) -> jax.Array:
    """``rows [N, row]`` written at ``slots`` into every KV copy (tensor parallelism keeps one per device), zero-padded
    to the pool's width."""
    rows = pad_heads(rows, kv_pages.shape[-1])[:, None]
    return write_kv(kv_pages, jnp.broadcast_to(rows, (rows.shape[0], kv_pages.shape[1], rows.shape[-1])), None, slots)

"""DeepSeek-V4's compressed KV: a compressed layer also attends to one entry per ``rate`` tokens of its sequence, a
softmax-gated sum of the window's projected tokens (transformers' ``DeepseekV4HCACompressor``; the compressed sparse
layers' ``DeepseekV4CSACompressor`` sums two overlapping series, the window's and the previous one's, and its
lightning indexer, ``DeepseekV4Indexer``, keeps each query's ``index_topk`` best entries).

jllm keeps no entry: each token's compressor projections (kv and gate, and the indexer's) are kept in its own pool
row beside its K=V head (``CompressSpec.feature_width``: the layer's pool is that much wider,
``ModelArgs.pool_dims``), and every step recomputes its sequences' entries from their rows. An entry depends on its
window's tokens alone (and the previous window's), so this is what transformers' cache computes as each window
completes, for prefill chunks and decodes alike; no state outside the pages, so prefix caching, preemption and
chunked prefill need nothing more. The cost is the width (a compressed sparse layer's row is ``5 head_dim + 4
index_head_dim`` channels, in a latent pool's one plane) and a pass over every sequence's rows each step: an exact
reference, not a fast path.

A query at position ``p`` sees entry ``w`` once ``w < (p + 1) // rate`` (its window complete), and the sliding
window's tokens beside them, in one softmax with the head's sink.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.models.layers import Linear, param
from jllm.models.rope import Rope


@dataclasses.dataclass(frozen=True)
class CompressSpec:
    """A compressed layer's settings: one entry per ``rate`` tokens; with ``index_heads`` (a compressed sparse layer)
    two overlapping series and a lightning indexer of that many heads ``index_head_dim`` wide keeping each query's
    ``index_topk`` best entries."""

    rate: int
    index_heads: int = 0
    index_head_dim: int = 0
    index_topk: int = 0

    def __post_init__(self) -> None:
        if self.rate < 1 or (self.index_heads and (self.index_head_dim < 1 or self.index_topk < 1)):
            raise ValueError(
                f"{self} needs compress_rates >= 1 and, with index_n_heads, index_head_dim and index_topk >= 1"
            )

    @property
    def series(self) -> int:
        """Projected series per token: the window's own, and (compressed sparse layers) the next window's."""
        return 2 if self.index_heads else 1

    def feature_width(self, head_dim: int) -> int:
        """Channels a token's pool row keeps beside its K=V head: kv and gate per series, the indexer's likewise."""
        return 2 * self.series * (head_dim + self.index_head_dim)


class Compressor(nnx.Module):
    """One compressor's weights (the checkpoint's names through ``WeightMap.rename``): each token's kv and gate
    projections, ``series`` of ``width`` channels each, a position bias per place in the window, the entries'
    norm."""

    def __init__(self, args: Any, width: int, spec: CompressSpec):
        d, dt, c = args.hidden_size, args.dtype, spec.series * width
        self.kv_proj = Linear(d, c, ("embed", None), dt)
        self.gate_proj = Linear(d, c, ("embed", None), dt)
        self.position_bias = param((spec.rate, c), jnp.float32, (None, None))
        self.kv_norm = args.make_norm(width)
        self.width, self.spec = width, spec
        self.feature_width = 2 * c  # a token's channels in its pool row: kv, then gate

    def features(self, h: jax.Array) -> jax.Array:
        """``h [T, hidden]`` (the attention's normed input) -> ``[T, 2 * series * width]``: kv, then gate."""
        return jnp.concatenate([self.kv_proj(h), self.gate_proj(h)], axis=-1)

    def entries(self, features: jax.Array, rope: Rope) -> jax.Array:
        """``features [S, L, 2 * series * width]`` (each sequence's rows) -> ``[S, L // rate, width]``: every window's
        entry, normed, its last channels rotated to the window's first position (incomplete windows too: the
        caller masks them)."""
        s, r, w = features.shape[0], self.spec.rate, self.width
        n, c = features.shape[1] // r, self.spec.series * w
        kv = features[:, : n * r, :c].reshape(s, n, r, c)
        gate = features[:, : n * r, c:].reshape(s, n, r, c).astype(jnp.float32) + self.position_bias[...]
        if self.spec.series == 2:  # the previous window's first series beside this one's second (none before 0)
            before = ((0, 0), (1, 0), (0, 0), (0, 0))
            kv = jnp.concatenate([jnp.pad(kv[:, :-1, :, :w], before), kv[..., w:]], axis=2)  # [S, n, 2r, width]
            prev_gate = jnp.pad(gate[:, :-1, :, :w], before, constant_values=-jnp.inf)
            gate = jnp.concatenate([prev_gate, gate[..., w:]], axis=2)
        pooled = jnp.sum(kv * jax.nn.softmax(gate, axis=2).astype(kv.dtype), axis=2)  # [S, n, width]
        starts = jnp.tile(jnp.arange(n, dtype=jnp.int32) * r, s)  # each entry's rotary position: its window's first
        return rope.apply_last(self.kv_norm(pooled).reshape(s * n, 1, w), starts).reshape(s, n, w)


class Indexer(nnx.Module):
    """The lightning indexer of a compressed sparse layer: its own compressor's entries as keys, ``index_heads``
    queries from the attention's low-rank query, each query's score of an entry ``sum_h w_h relu(q_h . k) /
    sqrt(index_head_dim)``, its weights ``w`` from the normed input."""

    def __init__(self, args: Any, spec: CompressSpec, q_lora_rank: int):
        d, dt = args.hidden_size, args.dtype
        self.compressor = Compressor(args, spec.index_head_dim, spec)
        self.q_b_proj = Linear(q_lora_rank, spec.index_heads * spec.index_head_dim, (None, None), dt)
        self.weights_proj = Linear(d, spec.index_heads, ("embed", None), dt)
        self.spec = spec

    def chosen(
        self,
        h: jax.Array,  # [T, hidden], the attention's normed input
        q_resid: jax.Array,  # [T, q_lora_rank]
        positions: jax.Array,  # [T]
        features: jax.Array,  # [S, L, indexer features], each sequence's rows
        seq: jax.Array,  # i32[T] each query's sequence
        visible: jax.Array,  # bool[T, n] the entries each query may see
        rope: Rope,
    ) -> jax.Array:
        """bool ``[T, n]``: the visible entries among each query's ``index_topk`` best."""
        s, t = self.spec, h.shape[0]
        keys = self.compressor.entries(features, rope)[seq].astype(jnp.float32)  # [T, n, Di]
        q = rope.apply_last(self.q_b_proj(q_resid).reshape(t, s.index_heads, s.index_head_dim), positions)
        scores = jax.nn.relu(jnp.einsum("thd,tnd->thn", q.astype(jnp.float32), keys)) * s.index_head_dim**-0.5
        weights = self.weights_proj(h).astype(jnp.float32) * s.index_heads**-0.5  # [T, Hi]
        scores = jnp.where(visible, jnp.einsum("thn,th->tn", scores, weights), -jnp.inf)
        _, best = jax.lax.top_k(scores, min(s.index_topk, scores.shape[-1]))  # [T, k]
        picked = jnp.zeros(scores.shape, bool).at[jnp.arange(t)[:, None], best].set(True)
        return picked & visible


def attend(
    q: jax.Array,  # [T, heads, head_dim]
    keys: jax.Array,  # [T, L, head_dim]: each query's sequence's K=V rows
    entries: jax.Array,  # [T, n, head_dim]: each query's sequence's compressed entries
    near: jax.Array,  # bool[T, L]: the rows in the query's sliding window (and not past it)
    seen: jax.Array,  # bool[T, n]: the entries the query attends to
    sinks: jax.Array,  # [heads]
    sm_scale: float,
) -> jax.Array:
    """One softmax over the window's rows, the seen entries and the head's sink (transformers' eager attention with
    ``s_aux``); values are the keys. float32 ``[T, heads, head_dim]``."""
    q32, keys, entries = (x.astype(jnp.float32) for x in (q, keys, entries))
    entries = jnp.where(seen[..., None], entries, 0.0)  # an unseen entry's values, whatever they hold, add nothing
    near_logits = jnp.where(near[:, None], jnp.einsum("thd,tld->thl", q32, keys) * sm_scale, -jnp.inf)
    far_logits = jnp.where(seen[:, None], jnp.einsum("thd,tnd->thn", q32, entries) * sm_scale, -jnp.inf)
    sink = sinks.astype(jnp.float32)[None, :]  # [1, heads]
    top = jnp.maximum(jnp.maximum(near_logits.max(-1), far_logits.max(-1)), sink)  # [T, heads]
    near_p, far_p = jnp.exp(near_logits - top[..., None]), jnp.exp(far_logits - top[..., None])
    denom = near_p.sum(-1) + far_p.sum(-1) + jnp.exp(sink - top)
    out = jnp.einsum("thl,tld->thd", near_p, keys) + jnp.einsum("thn,tnd->thd", far_p, entries)
    return out / denom[..., None]

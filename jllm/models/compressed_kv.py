"""DeepSeek-V4's compressed KV: a compressed layer also attends to one entry per ``rate`` tokens of its sequence, a
softmax-gated sum of the window's projected tokens (transformers' ``DeepseekV4HCACompressor``; the compressed sparse
layers' ``DeepseekV4CSACompressor`` sums two overlapping series, the window's and the previous one's, and its
lightning indexer, ``DeepseekV4Indexer``, keeps each query's ``index_topk`` best entries).

Everything lives in the layer's pool rows (a latent pool: one plane), so nothing is kept beside the pages: each
token's row holds its K=V head, its compressor's (and indexer's) kv and gate projections, and, where the token
completes a window, that window's entry (and the indexer's; ``CompressSpec.feature_width``,
``ModelArgs.pool_dims``). A step writes its tokens' rows, then computes the entry of every window one of them
completes from the window's rows (earlier chunks' and cached pages' among them) and writes it into that token's row;
the queries then read their sliding window's rows and their sequence's entries. An entry depends on its window's
tokens alone (and the previous window's), so this is what transformers' cache computes as each window completes,
whatever the chunking, and prefix caching and preemption need nothing more. The width is the cost: a compressed
sparse layer's row is ``6 head_dim + 5 index_head_dim`` channels.

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
        """Channels a token's row keeps beside its K=V head: kv and gate per series (the indexer's likewise), then
        the entry of the window it completes (and the indexer's)."""
        return (2 * self.series + 1) * (head_dim + self.index_head_dim)


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

    def window_entries(self, rows: jax.Array, starts: jax.Array, first: jax.Array, rope: Rope) -> jax.Array:
        """Completed windows' entries ``[M, width]`` from their tokens' features ``rows [M, series * rate, 2 * series
        * width]`` (with two series, the previous window's rows, then its own); ``starts [M]``: each window's first
        position, the entry's rotary position; ``first bool[M]``: the sequence's first window, whose previous rows
        (read at position 0) count for nothing."""
        r, w, c = self.spec.rate, self.width, self.spec.series * self.width
        kv, gate = rows[..., :c], rows[..., c:].astype(jnp.float32)
        if self.spec.series == 2:  # the previous window's first series beside this one's second
            bias = self.position_bias[...]
            gone = first[:, None, None]  # no window before the sequence's first
            prev_kv = jnp.where(gone, 0, kv[:, :r, :w])
            prev_gate = jnp.where(gone, -jnp.inf, gate[:, :r, :w] + bias[:, :w])
            kv = jnp.concatenate([prev_kv, kv[:, r:, w:]], axis=1)  # [M, 2 rate, width]
            gate = jnp.concatenate([prev_gate, gate[:, r:, w:] + bias[:, w:]], axis=1)
        else:
            gate = gate + self.position_bias[...]
        pooled = jnp.sum(kv * jax.nn.softmax(gate, axis=1).astype(kv.dtype), axis=1)  # [M, width]
        return rope.apply_last(self.kv_norm(pooled)[:, None], starts)[:, 0]


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

    def best(
        self,
        h: jax.Array,  # [T, hidden], the attention's normed input
        q_resid: jax.Array,  # [T, q_lora_rank]
        positions: jax.Array,  # [T]
        keys: jax.Array,  # [T, n, index_head_dim]: each query's sequence's indexer entries
        visible: jax.Array,  # bool[T, n] the entries each query may see
        rope: Rope,
    ) -> tuple[jax.Array, jax.Array]:
        """Each query's ``index_topk`` best entries ``i32[T, k]`` and which of them it may see ``bool[T, k]``."""
        s, t = self.spec, h.shape[0]
        q = rope.apply_last(self.q_b_proj(q_resid).reshape(t, s.index_heads, s.index_head_dim), positions)
        dots = jnp.einsum("thd,tnd->thn", q.astype(jnp.float32), keys.astype(jnp.float32))
        weights = self.weights_proj(h).astype(jnp.float32) * s.index_heads**-0.5  # [T, Hi]
        scores = jnp.einsum("thn,th->tn", jax.nn.relu(dots) * s.index_head_dim**-0.5, weights)
        _, best = jax.lax.top_k(jnp.where(visible, scores, -jnp.inf), min(s.index_topk, scores.shape[-1]))
        return best, jnp.take_along_axis(visible, best, axis=-1)


def attend(
    q: jax.Array,  # [T, heads, head_dim]
    keys: jax.Array,  # [T, window, head_dim]: the K=V rows of each query's sliding window
    entries: jax.Array,  # [T, n, head_dim]: the compressed entries each query may attend to
    near: jax.Array,  # bool[T, window]: the window's rows that exist (none before position 0)
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

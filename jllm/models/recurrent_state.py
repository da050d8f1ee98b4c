"""Per-sequence recurrent state for hybrid models' recurrent layers (gated DeltaNet, Mamba2): what every recurrent
mixer shares.

A recurrent layer's entry in the per-layer cache list is its *state pool*, a tuple of arrays whose leading axis is
the state slot (``StateSpec``: one fixed-size state per running sequence, slot 0 reserved for padding rows, as page 0
is). ``AttentionMetadata.state_slots`` gives each scheduled row its slot. A row starts from zeros when nothing of it
was computed before this step (``kv_lens[s]`` equals its query length: a new prompt, or one preempted and computed
again), else it continues from its slot (a chunked prefill's later chunks, then its decodes).

The helpers work on the step's packed tokens (``[T, ...]``, row ``s`` owning ``[qsl[s], qsl[s+1])``): each token's row
and offset within it (``token_rows``), the rows' states gathered and scattered back (``gather_states``,
``scatter_states``), a causal depthwise conv1d that reads and returns each row's last ``K - 1`` inputs
(``causal_conv1d``), a diagonal linear recurrence over every row at once in blocks of tokens (``linear_scan``:
RecurrentGemma's RG-LRU), and a recurrence driver (``scan_rows``) that steps every row at once over the offset within
its row: token by token, what decode steps want. A long prefill instead takes a mixer's chunked algorithm
(``use_chunks`` decides, per bucket): each row's tokens padded to whole chunks of ``C`` (``RowChunks``: the rows'
chunks side by side, ``to_chunks`` gathers the packed tokens into them, ``from_chunks`` reads the outputs back in
packed order), the work inside a chunk done as matmuls for every chunk at once, and only the state's passage from one
chunk of a row to the next stepped (``scan_chunks``: ``scan_segments`` over chunks, as ``scan_rows`` over tokens):
every row's first chunk at once, then only the rows that can still have chunks, a static bound from the step's
tokens, so a mixed step's decode rows are stepped once, not at every chunk of its prefill.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jllm.attention import AttentionMetadata
from jllm.models.layers import param
from jllm.parallel import device_zeros, param_sharding, partition_spec

StatePool = tuple[jax.Array, ...]  # one recurrent layer's states, each [num_state_slots, ...]


@dataclasses.dataclass(frozen=True)
class StateSpec:
    """One recurrent layer's state per sequence: the shape, dtype and logical axes of each of its arrays, without the
    slot axis (gated DeltaNet: the conv state ``[conv_channels, kernel - 1]`` and the recurrent state ``[heads, dk,
    dv]``, each split over tensor parallelism on its first axis, ``parallel.RECURRENT_HEADS``, as the layer's heads
    are). ``axes`` () replicates every array."""

    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[Any, ...]
    axes: tuple[tuple[str | None, ...], ...] = ()

    def __post_init__(self) -> None:
        if len(self.shapes) != len(self.dtypes):
            raise ValueError(f"StateSpec has {len(self.shapes)} shapes but {len(self.dtypes)} dtypes")
        if self.axes and [len(a) for a in self.axes] != [len(s) for s in self.shapes]:
            raise ValueError(f"StateSpec axes {self.axes} do not match its shapes {self.shapes}")
        object.__setattr__(self, "dtypes", tuple(jnp.dtype(d) for d in self.dtypes))

    @property
    def array_axes(self) -> tuple[tuple[str | None, ...], ...]:
        """Each array's logical axes (all None where ``axes`` is ())."""
        return self.axes or tuple((None,) * len(s) for s in self.shapes)

    def shardings(self, mesh: Mesh) -> tuple[NamedSharding, ...]:
        """Each array's placement on ``mesh``, its slot axis whole."""
        return tuple(param_sharding(mesh, (None, *a)) for a in self.array_axes)

    @property
    def bytes_per_slot(self) -> int:
        return self.device_bytes_per_slot(1)

    def device_bytes_per_slot(self, shards: int) -> int:
        """A slot's bytes on each of ``shards`` tensor-parallel devices: the split arrays' share, the others whole."""
        return sum(
            math.prod(s) * d.itemsize // (shards if any(partition_spec(a)) else 1)
            for s, d, a in zip(self.shapes, self.dtypes, self.array_axes, strict=True)
        )

    def zeros(self, num_slots: int, mesh: Mesh | None = None) -> StatePool:
        """The layer's pool, zero-filled on ``mesh`` (None: the default device), no host copy."""
        shardings = self.shardings(mesh) if mesh is not None else (None,) * len(self.shapes)
        return tuple(
            device_zeros((num_slots, *s), d, p) for s, d, p in zip(self.shapes, self.dtypes, shardings, strict=True)
        )


def fresh_rows(meta: AttentionMetadata) -> jax.Array:
    """``[S]`` bool: rows with nothing computed before this step (padding rows too), whose state starts at zero."""
    qsl = meta.query_start_loc
    return meta.kv_lens - (qsl[1:] - qsl[:-1]) == 0


def gather_states(pool: StatePool, meta: AttentionMetadata) -> StatePool:
    """Each row's states ``[S, ...]`` from its slot, zeros for fresh rows."""
    fresh = fresh_rows(meta)
    out = []
    for x in pool:
        rows = x[meta.state_slots]
        out.append(jnp.where(fresh.reshape(-1, *[1] * (rows.ndim - 1)), jnp.zeros((), x.dtype), rows))
    return tuple(out)


def scatter_states(pool: StatePool, states: StatePool, meta: AttentionMetadata) -> StatePool:
    """The rows' new states written to their slots (padding rows all write reserved slot 0)."""
    return tuple(x.at[meta.state_slots].set(s.astype(x.dtype)) for x, s in zip(pool, states, strict=True))


def token_rows(meta: AttentionMetadata, num_tokens: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per packed token: its row ``[T]`` int32, its offset within the row ``[T]`` int32, and whether it is a real
    token ``[T]`` bool (padding tokens past the last row's end are not; their row is clipped to a valid index)."""
    qsl = meta.query_start_loc
    t = jnp.arange(num_tokens, dtype=jnp.int32)
    row = jnp.searchsorted(qsl, t, side="right").astype(jnp.int32) - 1
    valid = t < qsl[-1]
    row = jnp.clip(row, 0, qsl.shape[0] - 2)
    return row, t - qsl[row], valid


def causal_conv1d(
    x: jax.Array,  # [T, C] the packed inputs
    weight: jax.Array,  # [C, K] a depthwise kernel per channel
    conv_state: jax.Array,  # [S, C, K - 1] each row's last K - 1 inputs before this step
    meta: AttentionMetadata,
) -> tuple[jax.Array, jax.Array]:
    """A causal depthwise conv1d over each row's inputs continued from its conv state (no bias, no activation):
    ``y[t] = sum_k weight[:, k] * ext[o + k]`` over the row's inputs ``ext`` after its ``K - 1`` stored ones, and
    the new conv state, the last ``K - 1`` of ``ext`` (unchanged for a row with no tokens). Returns (``y [T, C]``
    float32, the new conv state ``[S, C, K - 1]``)."""
    num_tokens, kernel = x.shape[0], weight.shape[1]
    row, offset, _ = token_rows(meta, num_tokens)
    x32, w32, state32 = x.astype(jnp.float32), weight.astype(jnp.float32), conv_state.astype(jnp.float32)
    t = jnp.arange(num_tokens)
    y = jnp.zeros_like(x32)
    for k in range(kernel):  # window position k reads the input (K - 1 - k) back
        back = kernel - 1 - k
        from_x = x32[jnp.clip(t - back, 0, num_tokens - 1)]
        from_state = state32[row, :, jnp.clip(offset + k, 0, kernel - 2)] if kernel > 1 else from_x
        y = y + w32[:, k] * jnp.where((offset >= back)[:, None], from_x, from_state)
    qsl = meta.query_start_loc
    lens = qsl[1:] - qsl[:-1]  # [S]
    cols = []
    for j in range(kernel - 1):  # the new state's column j: ext[len + j]
        back = kernel - 1 - j  # how far before the row's end
        from_x = x32[jnp.clip(qsl[1:] - back, 0, num_tokens - 1)]  # [S, C]
        from_state = state32[jnp.arange(lens.shape[0]), :, jnp.clip(lens + j, 0, kernel - 2)]  # [S, C]
        cols.append(jnp.where((lens >= back)[:, None], from_x, from_state))
    new_state = jnp.stack(cols, axis=-1) if cols else state32
    return y, new_state.astype(conv_state.dtype)


class DepthwiseConv1d(nnx.Module):
    """A recurrent layer's causal depthwise conv1d (transformers' ``nn.Conv1d`` with ``groups=channels``: its
    ``weight [channels, 1, kernel]``, an optional ``bias``) over the step's packed tokens, continued from each row's
    conv state."""

    def __init__(self, channels: int, kernel: int, dtype: Any, bias: bool = False):
        self.weight = param((channels, 1, kernel), dtype, (None, None, None))
        self.bias = param((channels,), dtype, (None,)) if bias else None

    def __call__(self, x: jax.Array, conv_state: jax.Array, meta: AttentionMetadata) -> tuple[jax.Array, jax.Array]:
        """(``y [T, C]`` float32 with the bias, the new conv state ``[S, C, K - 1]``)."""
        y, conv_state = causal_conv1d(x, self.weight[:, 0, :], conv_state, meta)
        return (y if self.bias is None else y + self.bias[...].astype(jnp.float32)), conv_state


def scan_rows(
    step: Callable[[Any, Any], tuple[Any, Any]],
    carry: Any,  # each leaf [S, ...]: every row's state before its first token
    xs: Any,  # each leaf [T, ...]: the packed per-token inputs
    out_like: Any,  # each leaf [...]: the shape and dtype of one token's output
    meta: AttentionMetadata,
) -> tuple[Any, Any]:
    """Runs ``step(carry_rows, x_rows) -> (carry_rows, out_rows)`` over the offset within each row, all rows at
    once (each leaf ``[S, ...]``): iteration j feeds every row its j-th token; rows without one keep their carry.
    The trip count is the step's longest row (at most T; one for a decode-only step: a bucket with more tokens than
    rows takes the mixers' chunked forms, ``use_chunks``). Returns (outputs packed ``[T, ...]``, the final carry)."""
    qsl = meta.query_start_loc
    return scan_segments(step, carry, xs, out_like, qsl[:-1], qsl[1:] - qsl[:-1])


def scan_segments(
    step: Callable[[Any, Any], tuple[Any, Any]],
    carry: Any,  # each leaf [S, ...]: every row's state before its first item
    xs: Any,  # each leaf [N, ...]: the items (tokens, or chunks), row s owning [starts[s], starts[s] + lens[s])
    out_like: Any,  # each leaf [...]: the shape and dtype of one item's output
    starts: jax.Array,  # [S] int32
    lens: jax.Array,  # [S] int32
    max_rows: Callable[[int], int] | None = None,
) -> tuple[Any, Any]:
    """``scan_rows`` over any contiguous segments of items, one a row: iteration j steps every row over its j-th
    item (rows without one keep their carry), for as many iterations as the longest segment. ``max_rows(j)``, if
    given, is a static bound on how many rows can have more than j items: iterations past the first then step only
    the longest rows, as many as the bound allows, gathered and their carries scattered back (``scan_stages``), so
    a step's few long rows beside many short ones pay for their own iterations, not every row's. Returns (outputs
    ``[N, ...]``, zeros where no segment lies, and the final carry)."""
    num_rows, num_items = lens.shape[0], jax.tree.leaves(xs)[0].shape[0]
    outs = jax.tree.map(lambda o: jnp.zeros((num_items + 1, *o.shape), o.dtype), out_like)  # row N: a dump slot
    longest = jnp.max(lens)
    for first, end, width in scan_stages(num_rows, num_items, max_rows):
        if width == num_rows:
            carry, outs = _scan_stage(step, carry, xs, outs, starts, lens, first, end, longest)
            continue
        rows = jnp.argsort(-lens)[:width]  # the longest: every row still going (at most max_rows(first) of them)
        stage_carry = jax.tree.map(lambda c, rows=rows: c[rows], carry)
        stage_carry, outs = _scan_stage(step, stage_carry, xs, outs, starts[rows], lens[rows], first, end, longest)
        carry = jax.tree.map(lambda c, new, rows=rows: c.at[rows].set(new), carry, stage_carry)
    return jax.tree.map(lambda buf: buf[:num_items], outs), carry


def _scan_stage(
    step: Callable[[Any, Any], tuple[Any, Any]],
    carry: Any,  # each leaf [R, ...]: the stage's rows' states
    xs: Any,  # each leaf [N, ...]
    outs: Any,  # each leaf [N + 1, ...]: the outputs so far, item N a dump slot
    starts: jax.Array,  # [R] int32: the stage's rows' segments
    lens: jax.Array,  # [R] int32
    first: int,
    end: int | None,
    longest: jax.Array,  # [] int32: the longest segment of the step
) -> tuple[Any, Any]:
    """Iterations ``[first, min(end, longest))`` of ``scan_segments`` over R rows: (their carry, the outputs). A
    stage of iteration 0 alone runs unlooped: every row of a step has a first item, or is padding."""
    num_items = jax.tree.leaves(xs)[0].shape[0]

    def body(state: tuple[jax.Array, Any, Any]) -> tuple[jax.Array, Any, Any]:
        j, carry, outs = state
        active = j < lens  # [R]
        idx = jnp.where(active, starts + j, num_items)
        x_rows = jax.tree.map(lambda x: x[jnp.minimum(idx, num_items - 1)], xs)
        new_carry, out_rows = step(carry, x_rows)

        def keep(new: jax.Array, old: jax.Array) -> jax.Array:
            return jnp.where(active.reshape(-1, *[1] * (new.ndim - 1)), new, old)

        carry = jax.tree.map(keep, new_carry, carry)
        outs = jax.tree.map(lambda buf, o: buf.at[idx].set(o.astype(buf.dtype)), outs, out_rows)
        return j + 1, carry, outs

    state = (jnp.int32(first), carry, outs)
    if (first, end) == (0, 1):
        return body(state)[1:]
    stop = longest if end is None else jnp.minimum(longest, end)
    return jax.lax.while_loop(lambda s: s[0] < stop, body, state)[1:]


def scan_stages(
    num_rows: int, num_items: int, max_rows: Callable[[int], int] | None
) -> list[tuple[int, int | None, int]]:
    """``scan_segments``' iterations in stages ``(first, end, width)``: iterations ``[first, end)`` (``end`` None:
    up to the longest row's end) step the ``width`` longest rows, one program a stage. Without ``max_rows``, one
    stage of every row. With it, iteration 0 alone over every row, then iterations [1, 2), [2, 4), [4, 8), ... each
    stage over as many rows as ``max_rows`` and ``num_items`` (a row of more than j items holds j + 1 of them) allow
    at its first iteration, until no row can go on; neighbours of equal width merge. The width of a stage is at most
    about twice the bound at its last iteration, in some ``log2(N)`` stages."""
    if max_rows is None:
        return [(0, None, num_rows)]
    stages: list[tuple[int, int | None, int]] = []
    first = 0
    while (width := min(num_rows, max_rows(first), num_items // (first + 1))) > 0:
        end = max(1, 2 * first)
        if stages and stages[-1][0] > 0 and stages[-1][2] == width:  # iteration 0 stays alone, unlooped
            stages[-1] = (stages[-1][0], end, width)
        else:
            stages.append((first, end, width))
        first = end
    return stages


def linear_scan(
    decay: jax.Array,  # [T, C] float32: each token's factor on the state before it
    inputs: jax.Array,  # [T, C] float32: each token's addition
    state: jax.Array,  # [S, C] float32: each row's state before this step
    meta: AttentionMetadata,
) -> tuple[jax.Array, jax.Array]:
    """The diagonal linear recurrence ``h_t = decay_t * h_(t-1) + inputs_t`` over each row's packed tokens from its
    state. A row's first token folds the row's state into its input and decays nothing from the token before (another
    row's), so the step's tokens are one recurrence: run in blocks of ``ceil(sqrt(T))`` tokens, every block at once
    from zero (with its running product of decays), then the state entering each block carried from block to block,
    ``2 sqrt(T)`` dependent iterations in all (an associative scan's ``log2(T)`` levels took 2.2 s to compile at 80
    tokens on the CPU). Returns (every token's ``h [T, C]``, each row's last ``[S, C]``, its state unchanged where it
    has no tokens)."""
    num_tokens, channels = decay.shape
    row, offset, _ = token_rows(meta, num_tokens)
    first = (offset == 0)[:, None]
    inputs = jnp.where(first, decay * state[row] + inputs, inputs)
    decay = jnp.where(first, jnp.zeros((), decay.dtype), decay)
    size = math.isqrt(num_tokens - 1) + 1
    blocks = -(-num_tokens // size)
    pad = ((0, blocks * size - num_tokens), (0, 0))  # past the end: decay 1, input 0, which change nothing

    def by_offset(x: jax.Array, fill: float) -> jax.Array:  # [T, C] -> [size, blocks, C]
        return jnp.pad(x, pad, constant_values=fill).reshape(blocks, size, channels).swapaxes(0, 1)

    def within(carry: tuple[jax.Array, jax.Array], token: tuple[jax.Array, jax.Array]) -> tuple[Any, Any]:
        product, h = carry[0] * token[0], token[0] * carry[1] + token[1]
        return (product, h), (product, h)

    zeros = jnp.zeros((blocks, channels), decay.dtype)
    _, (products, local) = jax.lax.scan(within, (zeros + 1, zeros), (by_offset(decay, 1.0), by_offset(inputs, 0.0)))

    def across(h: jax.Array, block: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        return block[0] * h + block[1], h  # the state entering the block

    _, entering = jax.lax.scan(across, zeros[0], (products[-1], local[-1]))  # [blocks, C]
    h = (local + products * entering).swapaxes(0, 1).reshape(blocks * size, channels)[:num_tokens]
    qsl = meta.query_start_loc
    last = h[jnp.clip(qsl[1:] - 1, 0, num_tokens - 1)]  # [S, C]
    return h, jnp.where((qsl[1:] > qsl[:-1])[:, None], last, state)


def use_chunks(num_tokens: int, num_rows: int) -> bool:
    """Whether a bucket of ``num_tokens`` tokens and ``num_rows`` rows runs a mixer's chunked algorithm: when it can
    hold a prefill (more tokens than rows). Static, so each bucket compiles one path and a decode bucket (T = S) the
    token scan alone; a ``lax.cond`` on the longest row would put a branch on a device value in every step of a
    bucket (XLA's GPU conditional reads its predicate back to the host) and compile both paths. A mixed bucket (a
    prefill beside decodes) pays its short rows' chunk padding (``RowChunks``) in the work inside chunks, not in the
    passage from chunk to chunk (``scan_chunks``)."""
    return num_tokens > num_rows


class RowChunks(NamedTuple):
    """Each row's tokens of this step padded to whole chunks of ``size``, the rows' chunks side by side: row s owns
    chunks ``[first[s], first[s] + count[s])``. ``N = R + (T - R) // size`` chunks (``R = min(S, T)``) hold any
    step of T tokens in S rows, every row starting a chunk of its own: up to ``S * (size - 1)`` padded positions."""

    token: jax.Array  # [N, size] int32: the packed token at each chunk position (clipped where padding)
    valid: jax.Array  # [N, size] bool: a real token of the chunk's row
    first: jax.Array  # [S] int32: each row's first chunk
    count: jax.Array  # [S] int32: each row's chunks, ceil(its tokens / size)

    @property
    def size(self) -> int:
        return self.token.shape[1]


def row_chunks(meta: AttentionMetadata, num_tokens: int, size: int) -> RowChunks:
    """The step's rows (``meta.query_start_loc``) over its ``num_tokens`` packed tokens, in chunks of ``size``, or
    of ``num_tokens`` if fewer: a row of such a step fits one chunk either way, without the padding."""
    size = min(size, num_tokens)
    qsl = meta.query_start_loc
    num_rows = qsl.shape[0] - 1
    lens = qsl[1:] - qsl[:-1]  # [S]
    busy = min(num_rows, num_tokens)
    num_chunks = busy + (num_tokens - busy) // size
    count = (lens + size - 1) // size
    ends = jnp.cumsum(count)  # [S]
    first = ends - count
    n = jnp.arange(num_chunks, dtype=jnp.int32)
    row = jnp.clip(jnp.searchsorted(ends, n, side="right"), 0, num_rows - 1)  # [N]
    offset = (n - first[row])[:, None] * size + jnp.arange(size, dtype=jnp.int32)  # [N, size]
    valid = (n < ends[-1])[:, None] & (offset < lens[row][:, None])
    token = jnp.clip(qsl[row][:, None] + offset, 0, num_tokens - 1)
    return RowChunks(token.astype(jnp.int32), valid, first.astype(jnp.int32), count.astype(jnp.int32))


def to_chunks(x: jax.Array, chunks: RowChunks) -> jax.Array:
    """The packed ``x [T, ...]`` as chunks ``[N, size, ...]``, zero at padded positions (so a padded position neither
    decays nor updates a state, whatever the mixer)."""
    y = x[chunks.token]
    return jnp.where(chunks.valid.reshape(*chunks.valid.shape, *[1] * (x.ndim - 1)), y, jnp.zeros((), x.dtype))


def from_chunks(y: jax.Array, chunks: RowChunks, meta: AttentionMetadata, num_tokens: int) -> jax.Array:
    """Chunked outputs ``[N, size, ...]`` back in packed order ``[T, ...]`` (zeros for padding tokens)."""
    row, offset, valid = token_rows(meta, num_tokens)
    n = jnp.clip(chunks.first[row] + offset // chunks.size, 0, y.shape[0] - 1)
    out = y[n, offset % chunks.size]
    return jnp.where(valid.reshape(-1, *[1] * (out.ndim - 1)), out, jnp.zeros((), y.dtype))


def scan_chunks(
    step: Callable[[Any, Any], tuple[Any, Any]],
    carry: Any,  # each leaf [S, ...]: every row's state before this step
    xs: Any,  # each leaf [N, ...]: per chunk (``chunks``' layout)
    out_like: Any,  # each leaf [...]: one chunk's output
    chunks: RowChunks,
    num_tokens: int,
) -> tuple[Any, Any]:
    """A chunked algorithm's passage of the state from chunk to chunk: ``scan_segments`` over each row's chunks.
    Chunk j of a row exists only for a row of more than ``j * size`` tokens, of which the step's ``num_tokens`` hold
    at most ``num_tokens // (j * size + 1)``: past its first chunk, a mixed step's prefill is stepped with a few
    rows, not beside every decode row (2048 tokens in 64 rows, chunks of 64: 64 + 129 row-chunks stepped in 6
    programs, against 64 x 32). Returns (outputs ``[N, ...]``, the final carry)."""
    return scan_segments(
        step, carry, xs, out_like, chunks.first, chunks.count, lambda j: num_tokens // (j * chunks.size + 1)
    )


def state_bytes(specs: tuple[StateSpec | None, ...], num_slots: int, shards: int = 1) -> int:
    """Bytes the state pools of every recurrent layer take for ``num_slots`` slots (on each device, split over
    ``shards``)."""
    per_slot = [s.device_bytes_per_slot(shards) for s in specs if s is not None]
    return int(np.sum(per_slot, dtype=np.int64)) * num_slots

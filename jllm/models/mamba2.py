"""The Mamba2 mixer (pure Mamba2, Bamba, Granite-4.0-H, Nemotron-H, Zamba2): a selective state-space layer in place
of attention, its per-sequence state in a state pool (``jllm.models.recurrent_state``) instead of KV pages.

One projection gives the gate ``z``, the conv input ``xBC`` and the time step ``dt`` per head; ``xBC`` runs through a
causal depthwise conv1d (kernel K: each row keeps its last K - 1 inputs as its conv state) and SiLU, then splits into
the heads' inputs ``x [heads, head_dim]`` and the groups' ``B`` and ``C`` (``[n_groups, state]``, each shared by
``heads / n_groups`` heads). Per head the SSD recurrence, with ``A = -exp(A_log)`` and ``dt = softplus(dt +
dt_bias)`` clamped to ``time_step_limit``:

    state = exp(dt A) state + dt x B^T    # [head_dim, state]
    y = state C + D x

then a gated RMSNorm (times SiLU(z), then RMS-normed over each group's channels: transformers' ``RMSNormGated``
with ``norm_before_gate`` off, as Bamba, Granite-4.0-H and Nemotron-H have it; Falcon-H1's may norm first, or gate
alone: ``Mamba2Spec.gate_norm``) and ``out_proj``. Falcon-H1 scales the projection's z, x, B, C and dt by its muP
multipliers (``Mamba2Spec.in_multipliers``).

A bucket that can hold a prefill (``recurrent_state.use_chunks``) runs the chunked SSD algorithm (``ssd_chunked``:
transformers' ``mamba2_chunk_scan``, in chunks of the config's ``mamba_chunk_size`` or ``MAX_CHUNK`` if smaller),
decode buckets the recurrence
token by token, the rows of a step side by side (``ssd_step`` under ``scan_rows``).

Tensor parallelism splits the mixer by heads (``parallel.RECURRENT_HEADS``), as vLLM does: ``in_proj``'s z, x and
dt kept grouped per head (``Mamba2Spec.head_parts``: the checkpoint keeps z, xBC and dt apart), so x's conv
channels, its conv state and the SSM state follow the heads, and ``out_proj`` row-parallel; B and C (``bc_proj``,
read from the same ``in_proj`` tensor) and their conv state are replicated, as vLLM replicates the groups where
``n_groups`` is below the TP size (here at any size: they are ``2 n_groups state`` columns). The gated norm's groups
may span devices; XLA sums their squares across them.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.models.layers import ACTIVATIONS, Linear, StoredParts, normed_linear, param, scaled
from jllm.models.recurrent_state import (
    DepthwiseConv1d,
    StatePool,
    StateSpec,
    causal_conv1d,
    from_chunks,
    gather_states,
    row_chunks,
    scan_chunks,
    scan_rows,
    scatter_states,
    to_chunks,
    use_chunks,
)
from jllm.parallel import RECURRENT_HEADS, constrain

if TYPE_CHECKING:
    from jllm.attention import AttentionMetadata
    from jllm.models.model_args import LayerSpec, ModelArgs


# The SSD is exact for any chunk size, but in a bucket that mixes one prefill with many decodes every short row fills
# a whole chunk: [chunks, heads, C, C] intermediates grow as (T / C + S) x C^2. Granite-4.0-H's 256 in the 2048 x 64
# bucket meant ~18k padded positions and ~2.4 GB float32 tensors per layer; 64 (the delta rule's chunk) is 12x less.
# Unmeasured on a GPU (scripts/bench_recurrent.py times the layer).
MAX_CHUNK = 64
# how SiLU(z) gates the output: before the group RMSNorm (transformers' ``RMSNormGated``), after it (Falcon-H1's
# ``mamba_norm_before_gate``), or alone with no norm (Falcon-H1's ``mamba_rms_norm`` false)
GATE_NORMS = ("gate_then_norm", "norm_then_gate", "gate_only")


@dataclasses.dataclass(frozen=True)
class Mamba2Spec:
    """The mixer's sizes and settings (transformers' ``mamba_*`` config keys)."""

    num_heads: int
    head_dim: int
    n_groups: int
    state_size: int
    conv_kernel: int
    conv_bias: bool = True
    proj_bias: bool = False
    time_step_limit: tuple[float, float] = (0.0, math.inf)
    norm_eps: float = 1e-5  # the gated norm's
    act: str = "silu"  # after the conv (one of layers.ACTIVATIONS)
    chunk_size: int = 256  # the chunked scan's (prefill buckets)
    gate_norm: str = "gate_then_norm"  # one of GATE_NORMS
    # the projection's z, x, B, C and dt times these (Falcon-H1's muP ``ssm_multipliers``); None: not scaled
    in_multipliers: tuple[float, float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.num_heads % self.n_groups:
            raise ValueError(f"Mamba2 n_groups={self.n_groups} must divide its {self.num_heads} heads")
        if self.conv_kernel < 2:
            raise ValueError(f"Mamba2 conv kernel {self.conv_kernel} is not supported (supported: 2 or more)")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"Mamba2 activation {self.act!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.chunk_size < 1:
            raise ValueError(f"Mamba2 chunk size {self.chunk_size} is not supported (supported: 1 or more)")
        if self.gate_norm not in GATE_NORMS:
            raise ValueError(f"Mamba2 gate_norm {self.gate_norm!r} is not one of {', '.join(GATE_NORMS)}")
        if self.in_multipliers is not None and len(self.in_multipliers) != 5:
            raise ValueError(f"Mamba2 in_multipliers={self.in_multipliers} must be 5 numbers: z, x, B, C, dt")

    @property
    def inner(self) -> int:
        """The heads' channels: ``x``'s, ``z``'s and the output's width."""
        return self.num_heads * self.head_dim

    @property
    def conv_dim(self) -> int:
        """The conv's channels: ``x``, then B, then C."""
        return self.inner + 2 * self.n_groups * self.state_size

    @property
    def proj_length(self) -> int:
        """The checkpoint's ``in_proj`` columns: z, xBC, dt."""
        return self.inner + self.conv_dim + self.num_heads

    def head_parts(self) -> StoredParts:
        """``in_proj``'s z, x and dt grouped per head (``[heads, 2 head_dim + 1]``)."""
        hd, inner = self.head_dim, self.inner
        return StoredParts(self.num_heads, ((0, hd), (inner, hd), (inner + self.conv_dim, 1)), self.proj_length)

    def group_parts(self, offset: int, length: int, source: str | None = None) -> StoredParts:
        """B and C grouped per group (``[n_groups, 2 state]``), B's first at ``offset`` of an axis of ``length``
        (``in_proj``'s columns, or the conv's channels)."""
        n, bc = self.state_size, self.n_groups * self.state_size
        return StoredParts(self.n_groups, ((offset, n), (offset + bc, n)), length, source)

    def state_spec(self, dtype: jnp.dtype) -> StateSpec:
        """A sequence's state in this layer: its last K - 1 conv inputs, x's ``[inner, K - 1]`` (split by heads) and
        B's and C's ``[2 n_groups state, K - 1]`` grouped per group (replicated), in ``dtype`` (the model's), and the
        SSM state ``[heads, head_dim, state]`` (float32 whatever the model's dtype: the recurrence's carry, decayed
        and added to at every token; Nemotron-H's configs ask the same of vLLM, ``mamba_ssm_cache_dtype:
        float32``)."""
        window = self.conv_kernel - 1
        shapes = (
            (self.inner, window),
            (self.conv_dim - self.inner, window),
            (self.num_heads, self.head_dim, self.state_size),
        )
        axes = ((RECURRENT_HEADS, None), (None, None), (RECURRENT_HEADS, None, None))
        return StateSpec(shapes, (dtype, dtype, jnp.float32), axes)


class GatedRMSNorm(nnx.Module):
    """transformers' ``RMSNormGated`` (Bamba's): ``x`` times SiLU(gate), then RMS-normed over each of ``groups``
    equal slices of the channels, in float32; the weight multiplies in the input dtype. With ``norm_first``
    (Falcon-H1's ``mamba_norm_before_gate``) normed, weighted, then gated, all in float32 as its torch norm does."""

    def __init__(self, dim: int, groups: int, eps: float, dtype: jnp.dtype, norm_first: bool = False):
        self.weight = param((dim,), dtype, (RECURRENT_HEADS,))
        self.groups, self.eps, self.norm_first = groups, eps, norm_first

    def __call__(self, x: jax.Array, gate: jax.Array) -> jax.Array:
        """``x``, ``gate`` ``[T, dim]``."""
        gate = jax.nn.silu(gate.astype(jnp.float32))
        y = x.astype(jnp.float32) if self.norm_first else x.astype(jnp.float32) * gate
        grouped = y.reshape(*y.shape[:-1], self.groups, -1)
        grouped = grouped * jax.lax.rsqrt(jnp.mean(grouped * grouped, axis=-1, keepdims=True) + self.eps)
        if self.norm_first:
            return (self.weight[...] * grouped.reshape(y.shape) * gate).astype(x.dtype)
        return self.weight[...] * grouped.reshape(y.shape).astype(x.dtype)


def ssd_step(
    state: jax.Array,  # [R, heads, head_dim, state] float32
    x: jax.Array,  # [R, heads, head_dim]
    dt: jax.Array,  # [R, heads] after softplus and clamp, float32
    a: jax.Array,  # [heads] float32, -exp(A_log)
    b: jax.Array,  # [R, groups, state]
    c: jax.Array,  # [R, groups, state]
    d: jax.Array,  # [heads]
) -> tuple[jax.Array, jax.Array]:
    """One token of each of R rows through the recurrence: (``y [R, heads, head_dim]`` float32, the new state)."""
    heads, groups = state.shape[1], b.shape[1]
    b = jnp.repeat(b.astype(jnp.float32), heads // groups, axis=1)  # [R, heads, state]
    c = jnp.repeat(c.astype(jnp.float32), heads // groups, axis=1)
    x32 = x.astype(jnp.float32)
    decay = jnp.exp(dt * a)[:, :, None, None]
    state = state * decay + (dt[:, :, None] * x32)[..., None] * b[:, :, None, :]
    y = jnp.einsum("rhpn,rhn->rhp", state, c) + d.astype(jnp.float32)[:, None] * x32
    return y, state


HIGHEST = jax.lax.Precision.HIGHEST  # the chunks' matmuls in full float32, as the token scan's sums (no TF32)


def ssd_chunked(
    state: jax.Array,  # [S, heads, head_dim, state] float32: each row's state before this step
    x: jax.Array,  # [T, heads, head_dim]
    dt: jax.Array,  # [T, heads] after softplus and clamp, float32
    a: jax.Array,  # [heads] float32, -exp(A_log)
    b: jax.Array,  # [T, groups, state]
    c: jax.Array,  # [T, groups, state]
    d: jax.Array,  # [heads]
    meta: AttentionMetadata,
    size: int,
) -> tuple[jax.Array, jax.Array]:
    """The SSD recurrence over each row's tokens in chunks of ``size`` (transformers' ``mamba2_chunk_scan``): each
    chunk's own outputs as a masked, decay-weighted attention (the diagonal blocks) and its contribution to the state,
    for every chunk of every row at once; the state stepped from chunk to chunk (``scan_chunks``: every row's first
    chunk at once, later ones among the few rows that can have them), each chunk reading the state it starts from.
    Padded positions (zero ``dt``) neither decay nor add to the state. Returns (``y [T, heads, head_dim]`` float32,
    the rows' new states)."""
    num_tokens, heads, groups = x.shape[0], x.shape[1], b.shape[1]
    chunks = row_chunks(meta, num_tokens, size)
    x, dt, b, c = (to_chunks(y.astype(jnp.float32), chunks) for y in (x, dt, b, c))  # [N, C, heads or groups, ...]
    xdt, adt = x * dt[..., None], dt * a
    cum = jnp.cumsum(adt, axis=1)  # [N, C, heads]: the log decay from the chunk's start
    decay = jnp.exp(segment_sum(adt.transpose(0, 2, 1)))  # [N, heads, C, C]
    scores = jnp.einsum("nlgk,nsgk->ngls", c, b, precision=HIGHEST)  # [N, groups, C, C]: a group's heads share it
    scores = jnp.repeat(scores, heads // groups, axis=1) * decay
    b, c = (jnp.repeat(y, heads // groups, axis=2) for y in (b, c))  # [N, C, heads, state]
    y_diag = jnp.einsum("nhls,nshp->nlhp", scores, xdt, precision=HIGHEST)  # [N, C, heads, head_dim]
    to_end = jnp.exp(cum[:, -1:] - cum)  # each position's decay to the chunk's end
    added = jnp.einsum("nlhk,nlhp->nhpk", b * to_end[..., None], xdt, precision=HIGHEST)  # [N, heads, head_dim, state]

    def step(state: jax.Array, chunk: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
        c, cum, added = chunk  # each row's chunk [S, ...]
        y_off = jnp.einsum("slhk,shpk->slhp", c, state, precision=HIGHEST) * jnp.exp(cum)[..., None]
        return state * jnp.exp(cum[:, -1])[..., None, None] + added, y_off

    out_like = jax.ShapeDtypeStruct(y_diag.shape[1:], jnp.float32)
    y_off, state = scan_chunks(step, state, (c, cum, added), out_like, chunks, num_tokens)
    y = y_diag + y_off + d.astype(jnp.float32)[:, None] * x
    return from_chunks(y, chunks, meta, num_tokens), state


def segment_sum(x: jax.Array) -> jax.Array:
    """``[..., C] -> [..., C, C]``: entry ``[i, j]`` the sum of ``x[j + 1 : i + 1]`` where ``i >= j``, else -inf
    (transformers' ``segment_sum``: a masked cumulative sum, no differences of large sums)."""
    size = x.shape[-1]
    i, j = jnp.arange(size)[:, None], jnp.arange(size)[None, :]
    sums = jnp.cumsum(jnp.where(i > j, x[..., :, None], 0.0), axis=-2)
    return jnp.where(i >= j, sums, -jnp.inf)


class Mamba2Mixer(nnx.Module):
    """transformers' ``BambaMixer`` / ``GraniteMoeHybridMambaLayer`` / ``NemotronHMamba2Mixer`` (module names as the
    checkpoint's but the gated norm's, ``gated_norm`` here: a family renames its final ``norm``; and ``bc_proj``,
    B's and C's columns of the checkpoint's ``in_proj``), with the attention module's call shape: ``(x, norm,
    positions, state pool, meta) -> (y, state pool)``."""

    def __init__(self, args: ModelArgs, spec: LayerSpec):
        m, d, dt = args.mamba2, args.hidden_size, args.dtype
        heads, groups = m.head_parts(), m.group_parts(2 * m.inner, m.proj_length, source="in_proj")
        # [hidden, heads, 2 head_dim + 1]: z, x, dt per head; [hidden, n_groups, 2 state]: B, C per group
        self.in_proj = Linear(
            d, (m.num_heads, heads.width), ("embed", RECURRENT_HEADS, None), dt, bias=m.proj_bias, stored=heads
        )
        self.bc_proj = Linear(d, (m.n_groups, groups.width), ("embed", None, None), dt, bias=m.proj_bias, stored=groups)
        self.conv1d = DepthwiseConv1d(m.conv_dim, m.conv_kernel, dt, m.conv_bias)  # x, B, C; tiny, replicated
        # per head, kept in float32 whatever the model's dtype (as vLLM keeps A): the recurrence runs in float32
        self.dt_bias = param((m.num_heads,), jnp.float32, (RECURRENT_HEADS,))
        self.A_log = param((m.num_heads,), jnp.float32, (RECURRENT_HEADS,))
        self.D = param((m.num_heads,), jnp.float32, (RECURRENT_HEADS,))
        norm_first = m.gate_norm == "norm_then_gate"
        gated = m.gate_norm != "gate_only"
        self.gated_norm = GatedRMSNorm(m.inner, m.n_groups, m.norm_eps, dt, norm_first) if gated else None
        self.out_proj = Linear(m.inner, d, (RECURRENT_HEADS, "embed"), dt, bias=m.proj_bias)
        self.mamba = m

    def __call__(
        self, x: jax.Array, norm: nnx.Module | None, positions: jax.Array, states: StatePool, meta: AttentionMetadata
    ) -> tuple[jax.Array, StatePool]:
        """The mixer over ``norm(x)`` (``x [T, hidden]``); ``states``: the layer's pool (conv, SSM), each row's
        read from and written back to its slot (``meta.state_slots``). ``positions`` are unused: order is the
        recurrence's."""
        m, t, hd, n = self.mamba, x.shape[0], self.mamba.head_dim, self.mamba.state_size
        inner = m.inner
        proj = normed_linear(norm, self.in_proj, x)  # [T, heads, 2 head_dim + 1]
        z, xs, dt = proj[..., :hd].reshape(t, inner), proj[..., hd : 2 * hd].reshape(t, inner), proj[..., 2 * hd]
        bc = normed_linear(norm, self.bc_proj, x).reshape(t, -1)  # [T, n_groups * 2 state]
        if m.in_multipliers is not None:  # Falcon-H1's muP: z, x, B, C, dt each times its own
            mz, mx, mb, mc, mdt = m.in_multipliers
            z, xs, dt = scaled(z, mz), scaled(xs, mx), scaled(dt, mdt)
            bc = bc.reshape(t, m.n_groups, 2, n)
            bc = jnp.concatenate([scaled(bc[:, :, :1], mb), scaled(bc[:, :, 1:], mc)], axis=2).reshape(t, -1)
        conv_x, conv_bc, ssm_state = gather_states(states, meta)
        # the conv's channels: x's (the checkpoint's first), then B's and C's taken grouped per group
        channels = jnp.asarray(m.group_parts(inner, m.conv_dim).indices().reshape(-1))
        # The conv's weight and bias, and B's and C's conv, held replicated as their parameters and pool are: XLA
        # would split the weight by rows and B and C by group, and move or gather them back every step.
        weight, bias = self.conv1d.weight[:, 0, :], self.conv1d.bias
        x_weight, bc_weight = replicate(weight[:inner], meta), replicate(weight[channels], meta)
        xs, conv_x = causal_conv1d(xs, x_weight, conv_x, meta)  # float32
        bc, conv_bc = (replicate(y, meta) for y in causal_conv1d(bc, bc_weight, conv_bc, meta))
        if bias is not None:
            x_bias, bc_bias = replicate(bias[:inner], meta), replicate(bias[channels], meta)
            xs, bc = xs + x_bias.astype(jnp.float32), bc + bc_bias.astype(jnp.float32)
        xs = ACTIVATIONS[m.act](xs).astype(x.dtype)
        bc = ACTIVATIONS[m.act](bc).astype(x.dtype).reshape(t, m.n_groups, 2 * n)
        b, c = bc[..., :n], bc[..., n:]
        dt = jax.nn.softplus(dt.astype(jnp.float32) + self.dt_bias[...])
        dt = jnp.clip(dt, *m.time_step_limit)  # [T, heads]
        a = -jnp.exp(self.A_log[...])
        d = self.D[...]

        xs = xs.reshape(t, m.num_heads, m.head_dim)
        if use_chunks(t, meta.query_start_loc.shape[0] - 1):
            y, ssm_state = ssd_chunked(ssm_state, xs, dt, a, b, c, d, meta, min(m.chunk_size, MAX_CHUNK))
        else:

            def step(state: jax.Array, token: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
                y, state = ssd_step(state, *token[:2], a, *token[2:], d)
                return state, y

            out_like = jax.ShapeDtypeStruct((m.num_heads, m.head_dim), jnp.float32)
            y, ssm_state = scan_rows(step, ssm_state, (xs, dt, b, c), out_like, meta)  # [T, heads, head_dim] float32
        y = y.reshape(t, inner)
        y = y * jax.nn.silu(z.astype(jnp.float32)) if self.gated_norm is None else self.gated_norm(y, z)
        return self.out_proj(y.astype(x.dtype)), scatter_states(states, (conv_x, conv_bc, ssm_state), meta)


def replicate(x: jax.Array, meta: AttentionMetadata) -> jax.Array:
    """``x`` held whole on every device of the step's mesh."""
    return constrain(x, meta.mesh, (None,) * x.ndim)

"""Gated DeltaNet (Qwen3-Next's and Qwen3.5's ``linear_attention`` layers): a recurrent mixer with a per-sequence
state, run as transformers' float32 torch path computes it.

Per token: q, k, v from a causal depthwise conv1d (SiLU) over one projection of the normed input; q and k
L2-normed (and q scaled by ``head_k_dim ** -0.5``), each key head serving ``num_v_heads / num_k_heads`` value heads;
``beta = sigmoid(b)``, the decay ``g = -exp(A_log) * softplus(a + dt_bias)``. The state ``S [v_heads, dk, dv]``
(float32) is decayed by ``exp(g)``, corrected by the delta rule ``S += k (beta (v - S^T k))^T``, then read,
``o = S^T q``; ``o`` goes through a gated RMSNorm (``norm(o) * silu(z)``) and ``out_proj``.

The layer's cache entry is its state pool ``(conv_state [slots, conv_dim, kernel - 1], recurrent_state [slots,
v_heads, dk, dv])`` (``jllm.models.recurrent_state``). A bucket that can hold a prefill (``use_chunks``) runs the
chunked delta rule (``chunked_delta_rule``: transformers' ``torch_chunk_gated_delta_rule``, FLA's WY / UT form, in
chunks of 64; Kimi's decay per key channel as ``chunk_kimi_delta_attention``), decode buckets the recurrence token by
token, all rows at once (``scan_rows``). Pure JAX on every attention backend.

Tensor parallelism splits the layer by key head (``parallel.RECURRENT_HEADS``), each with its value heads, as vLLM
does: the input projections column-parallel, kept grouped per key head (q, k, its value heads' v, and z in
Qwen3-Next's ``in_proj_qkvz``; Qwen3.5's ``in_proj_qkv`` is read so, ``DeltaNetSpec.conv_parts``), so the conv's
channels, its conv state and the recurrent state follow the heads; ``out_proj`` row-parallel. The conv's tiny weight
is replicated and taken into the grouped order in the step. With ``quantization`` the layer's projections stay in the
model's dtype (they feed the recurrence: quantized too, a tiny random Qwen3.5's int8 logits moved 5.0e-2 from float's
instead of 2.3e-2, 2026-12-05); the attention and MLPs are quantized as in any model.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx
from jax.scipy.linalg import solve_triangular

from jllm.attention import AttentionMetadata
from jllm.models.layers import Linear, RMSNorm, StoredParts, l2_normed, param
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
from jllm.parallel import RECURRENT_HEADS

if TYPE_CHECKING:
    from jllm.models.model_args import LayerSpec, ModelArgs

CHUNK = 64  # the chunked delta rule's chunk (transformers' and FLA's)
QUARTERS = 4  # a decay per key channel: a chunk's decayed scores by quarters (FLA's chunk_kda: 16 of 64)
HIGHEST = jax.lax.Precision.HIGHEST  # the chunks' matmuls in full float32, as the token scan's sums (no TF32)


@dataclasses.dataclass(frozen=True)
class DeltaNetSpec:
    """The gated DeltaNet layers' widths (transformers' ``linear_*`` config keys) and projection layout:
    ``fused_qkvz`` Qwen3-Next's ``in_proj_qkvz`` / ``in_proj_ba``, grouped per key head; else Qwen3.5's
    ``in_proj_qkv`` / ``in_proj_z`` / ``in_proj_b`` / ``in_proj_a``. ``beta_scale``: beta times this (OLMo-Hybrid's
    ``linear_allow_neg_eigval``: 2, so beta spans [0, 2]); ``norm_eps``: the gated norm's eps where it is not the
    model's (OLMo-Hybrid's 1e-5). ``channel_decay``: Kimi Delta Attention (Kimi Linear), Qwen3.5's layout with a
    decay per key channel from a low-rank forget gate (``f_a_proj``, ``f_b_proj``, ``dt_bias [v_heads * dk]``) in
    place of ``in_proj_a``, and its output gate a sigmoid of a low-rank projection (``g_a_proj``, ``g_b_proj``) in
    place of SiLU of ``in_proj_z``. ``sigmoid_gate``: the output gate a sigmoid of ``in_proj_z`` (Qwen4-Exp's
    ``output_gate_type``). ``full_rank_gates``: Kimi Delta Attention's forget and output gates each one projection
    (``f_proj``, ``g_proj``: BailingHybrid's); ``safe_gate_bound``: its log decay ``bound * sigmoid(exp(A_log) * (f +
    dt_bias))`` (BailingHybrid's ``kda_safe_gate`` with ``kda_lower_bound``), in place of ``-exp(A_log) * softplus(f
    + dt_bias)``."""

    num_k_heads: int
    num_v_heads: int
    head_k_dim: int
    head_v_dim: int
    conv_kernel: int
    fused_qkvz: bool
    beta_scale: float = 1.0
    norm_eps: float | None = None
    channel_decay: bool = False
    sigmoid_gate: bool = False
    full_rank_gates: bool = False
    safe_gate_bound: float | None = None

    def __post_init__(self) -> None:
        if self.num_v_heads % self.num_k_heads:
            raise ValueError(
                f"linear_num_value_heads={self.num_v_heads} must be a multiple of linear_num_key_heads="
                f"{self.num_k_heads}"
            )
        if self.conv_kernel < 2:
            raise ValueError(f"linear_conv_kernel_dim={self.conv_kernel} must be >= 2")
        if self.channel_decay and self.fused_qkvz:
            raise ValueError("channel_decay (Kimi Delta Attention) has Qwen3.5's separate projections, not fused_qkvz")
        if (self.full_rank_gates or self.safe_gate_bound is not None) and not self.channel_decay:
            raise ValueError("full_rank_gates and safe_gate_bound are Kimi Delta Attention's: they need channel_decay")

    @property
    def conv_dim(self) -> int:
        return 2 * self.num_k_heads * self.head_k_dim + self.num_v_heads * self.head_v_dim

    @property
    def group_width(self) -> int:
        """One key head's conv channels: its q, its k, then its value heads' v."""
        return 2 * self.head_k_dim + self.num_v_heads // self.num_k_heads * self.head_v_dim

    def conv_parts(self) -> StoredParts:
        """The conv's channels grouped per key head, where checkpoints keep every q head, then every k, then every v
        (``in_proj_qkv``'s columns, ``conv1d``'s rows)."""
        nk, dk = self.num_k_heads, self.head_k_dim
        v_width = self.num_v_heads // nk * self.head_v_dim
        return StoredParts(nk, ((0, dk), (nk * dk, dk), (2 * nk * dk, v_width)), self.conv_dim)

    def state_spec(self, dtype: jnp.dtype) -> StateSpec:
        """The conv state in the model's dtype (transformers keeps it so; its channels grouped per key head), the
        recurrent state in float32 (as transformers' cache holds it); both split by heads."""
        recurrent = (self.num_v_heads, self.head_k_dim, self.head_v_dim)
        axes = ((RECURRENT_HEADS, None), (RECURRENT_HEADS, None, None))
        return StateSpec(((self.conv_dim, self.conv_kernel - 1), recurrent), (dtype, jnp.float32), axes)


class GatedDeltaNet(nnx.Module):
    def __init__(self, args: ModelArgs, spec: LayerSpec):
        s, d, dt = args.deltanet, args.hidden_size, args.dtype
        nk, nv, dk, dv = s.num_k_heads, s.num_v_heads, s.head_k_dim, s.head_v_dim
        heads, grouped = ("embed", RECURRENT_HEADS), ("embed", RECURRENT_HEADS, None)
        if s.fused_qkvz:  # per key head: q, k, then its value heads' v and z; b and a likewise
            width = s.group_width + nv // nk * dv
            self.in_proj_qkvz = Linear(d, (nk, width), grouped, dt, stored=StoredParts(nk, ((0, width),), nk * width))
            self.in_proj_ba = Linear(
                d, (nk, 2 * nv // nk), grouped, dt, stored=StoredParts(nk, ((0, 2 * nv // nk),), 2 * nv)
            )
        else:  # every q head, every k head, every v head: read grouped per key head
            self.in_proj_qkv = Linear(d, (nk, s.group_width), grouped, dt, stored=s.conv_parts())
            self.in_proj_b = Linear(d, nv, heads, dt)
            if s.full_rank_gates:  # BailingHybrid's forget gate and output gate, one projection each
                self.f_proj = Linear(d, nv * dk, ("embed", RECURRENT_HEADS), dt)
                self.g_proj = Linear(d, nv * dv, ("embed", RECURRENT_HEADS), dt)
            elif s.channel_decay:  # Kimi Delta Attention's low-rank forget gate and output gate
                self.f_a_proj = Linear(d, dk, ("embed", None), dt)
                self.f_b_proj = Linear(dk, nv * dk, (None, RECURRENT_HEADS), dt)
                self.g_a_proj = Linear(d, dv, ("embed", None), dt)
                self.g_b_proj = Linear(dv, nv * dv, (None, RECURRENT_HEADS), dt)
            else:
                self.in_proj_z = Linear(d, nv * dv, heads, dt)
                self.in_proj_a = Linear(d, nv, heads, dt)
        self.conv1d = DepthwiseConv1d(s.conv_dim, s.conv_kernel, dt)  # the checkpoint's order; tiny, replicated
        self.A_log = param((nv,), jnp.float32, (RECURRENT_HEADS,))
        self.dt_bias = param((nv * dk if s.channel_decay else nv,), jnp.float32, (RECURRENT_HEADS,))
        self.norm = RMSNorm(dv, s.norm_eps or args.norm_eps, dt)
        self.out_proj = Linear(nv * dv, d, (RECURRENT_HEADS, "embed"), dt)
        self.spec = s

    def __call__(
        self,
        x: jax.Array,  # [T, hidden]
        norm: nnx.Module | None,
        positions: jax.Array,
        cache: StatePool,  # (conv_state [slots, conv_dim, K - 1], recurrent_state [slots, v_heads, dk, dv])
        meta: AttentionMetadata,
    ) -> tuple[jax.Array, StatePool]:
        """The layer's output ``[T, hidden]`` over ``norm(x)``, and its state pool with each row's new state."""
        s = self.spec
        t, nk, nv, dk, dv = x.shape[0], s.num_k_heads, s.num_v_heads, s.head_k_dim, s.head_v_dim
        h = x if norm is None else norm(x)
        mixed, z, b, a = self._projections(h)
        conv_state, recurrent = gather_states(cache, meta)
        weight = jnp.take(self.conv1d.weight[:, 0, :], s.conv_parts().indices().reshape(-1), axis=0)  # grouped
        mixed, conv_state = causal_conv1d(mixed.reshape(t, -1), weight, conv_state, meta)
        mixed = jax.nn.silu(mixed).astype(x.dtype).astype(jnp.float32)  # the conv's output in the model's dtype
        mixed = mixed.reshape(t, nk, s.group_width)  # per key head: q, k, its value heads' v
        q, k = mixed[..., :dk], mixed[..., dk : 2 * dk]
        v = mixed[..., 2 * dk :].reshape(t, nv, dv)
        q, k = (jnp.repeat(l2_normed(y), nv // nk, axis=1) for y in (q, k))  # [T, v_heads, dk]
        q = q * dk**-0.5
        beta = jax.nn.sigmoid(b.astype(jnp.float32)) * s.beta_scale  # [T, v_heads]
        gate_in = a.astype(jnp.float32) + self.dt_bias[...]  # [T, v_heads] or [T, v_heads * dk]
        if s.safe_gate_bound is not None:  # [T, v_heads, dk]: bounded in [bound, 0]
            decay = s.safe_gate_bound * jax.nn.sigmoid(jnp.exp(self.A_log[...])[:, None] * gate_in.reshape(t, nv, dk))
        elif s.channel_decay:  # [T, v_heads, dk]: each key channel decays at its own rate
            decay = -jnp.exp(self.A_log[...])[:, None] * jax.nn.softplus(gate_in).reshape(t, nv, dk)
        else:
            decay = -jnp.exp(self.A_log[...]) * jax.nn.softplus(gate_in)
        if use_chunks(t, meta.query_start_loc.shape[0] - 1):
            core, recurrent = chunked_delta_rule(q, k, v, decay, beta, recurrent, meta)
        else:
            out_like = jax.ShapeDtypeStruct((nv, dv), jnp.float32)
            core, recurrent = scan_rows(_delta_step, recurrent, (q, k, v, jnp.exp(decay), beta), out_like, meta)
        core = core.astype(x.dtype)  # [T, v_heads, dv]
        gate = jax.nn.sigmoid if s.channel_decay or s.sigmoid_gate else jax.nn.silu
        gated = self.norm(core) * gate(z.astype(jnp.float32))
        y = self.out_proj(gated.astype(x.dtype).reshape(t, nv * dv))
        return y, scatter_states(cache, (conv_state, recurrent), meta)

    def _projections(self, h: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """(the conv's input ``[T, k_heads, group_width]``: per key head its q, k and value heads' v; z ``[T,
        v_heads, dv]``; b and a ``[T, v_heads]``) from either checkpoint layout."""
        s = self.spec
        t, nk, nv, dv = h.shape[0], s.num_k_heads, s.num_v_heads, s.head_v_dim
        if s.full_rank_gates:  # a: the forget gate per key channel, [T, v_heads * dk]
            return self.in_proj_qkv(h), self.g_proj(h).reshape(t, nv, dv), self.in_proj_b(h), self.f_proj(h)
        if s.channel_decay:
            z = self.g_b_proj(self.g_a_proj(h)).reshape(t, nv, dv)
            return self.in_proj_qkv(h), z, self.in_proj_b(h), self.f_b_proj(self.f_a_proj(h))
        if not s.fused_qkvz:
            z = self.in_proj_z(h).reshape(t, nv, dv)
            return self.in_proj_qkv(h), z, self.in_proj_b(h), self.in_proj_a(h)
        r = nv // nk  # value heads per key head
        qkvz = self.in_proj_qkvz(h)  # [T, k_heads, 2 dk + 2 r dv]
        ba = self.in_proj_ba(h)  # [T, k_heads, 2 r]
        mixed, z = qkvz[..., : s.group_width], qkvz[..., s.group_width :]
        return mixed, z.reshape(t, nv, dv), ba[..., :r].reshape(t, nv), ba[..., r:].reshape(t, nv)


def _delta_step(state: jax.Array, inputs: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
    """One token of every row: ``state [S, v_heads, dk, dv]``; q, k ``[S, v_heads, dk]``, v ``[S, v_heads, dv]``,
    the decay factor ``[S, v_heads]`` (or per key channel ``[S, v_heads, dk]``: Kimi Delta Attention) and beta
    ``[S, v_heads]``. transformers' ``torch_recurrent_gated_delta_rule``, one step."""
    q, k, v, decay, beta = inputs
    state = state * decay.reshape(*decay.shape, *[1] * (state.ndim - decay.ndim))
    kv_mem = jnp.sum(state * k[..., None], axis=-2)  # [S, v_heads, dv]
    delta = (v - kv_mem) * beta[..., None]
    state = state + k[..., None] * delta[..., None, :]
    return state, jnp.sum(state * q[..., None], axis=-2)


def chunked_delta_rule(
    q: jax.Array,  # [T, heads, dk] float32, L2-normed and scaled
    k: jax.Array,  # [T, heads, dk] float32, L2-normed
    v: jax.Array,  # [T, heads, dv] float32
    g: jax.Array,  # [T, heads] the log decay (<= 0), or [T, heads, dk] one per key channel (Kimi Delta Attention)
    beta: jax.Array,  # [T, heads]
    state: jax.Array,  # [S, heads, dk, dv] float32: each row's state before this step
    meta: AttentionMetadata,
) -> tuple[jax.Array, jax.Array]:
    """The gated delta rule over each row's tokens in chunks of ``CHUNK`` (transformers'
    ``torch_chunk_gated_delta_rule``, and ``chunk_kimi_delta_attention`` for a decay per key channel; a step of
    fewer tokens in one chunk of them all): inside a chunk, the UT transform turns its delta updates into two
    triangular solves and the outputs into a causal, decay-weighted attention, for every chunk of every row at once;
    only the state's passage from chunk to chunk is stepped, every row's first chunk at once, its later ones beside
    those of the few rows that can have them (``scan_chunks``). Padded positions (zero k, v, beta and log decay)
    leave the state as it is. Returns (``out [T, heads, dv]`` float32, the rows' new states)."""
    num_tokens = q.shape[0]
    chunks = row_chunks(meta, num_tokens, CHUNK)
    g = g if g.ndim == 3 else g[..., None]  # [T, heads, dk or 1]: a head's one decay broadcast over its channels
    q, k, v, g = (to_chunks(x, chunks).transpose(0, 2, 1, 3) for x in (q, k, v, g))  # [N, heads, C, d]
    beta = to_chunks(beta, chunks).transpose(0, 2, 1)  # [N, heads, C]
    cum = jnp.cumsum(g, axis=-2)  # the log decay from the chunk's start to each position
    k_beta = k * beta[..., None]
    system = decayed_scores(k, k, cum) * beta[..., None]  # [N, heads, C, C], its strictly lower part used
    attn = decayed_scores(q, k, cum)  # [N, heads, C, C]
    solve = functools.partial(solve_triangular, system, lower=True, unit_diagonal=True)
    new_values = solve(v * beta[..., None])  # [N, heads, C, dv]
    k_cumdecay = solve(k_beta * jnp.exp(cum))  # [N, heads, C, dk]
    q_decayed = q * jnp.exp(cum)
    k_decayed = k * jnp.exp(cum[..., -1:, :] - cum)  # each key's decay to the chunk's end
    chunk_decay = jnp.exp(cum[..., -1, :])  # [N, heads, dk or 1]

    def step(state: jax.Array, chunk: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
        new_values, k_cumdecay, q_decayed, k_decayed, attn, chunk_decay = chunk  # each row's chunk [S, heads, ...]
        v_new = new_values - jnp.einsum("shcd,shde->shce", k_cumdecay, state, precision=HIGHEST)
        out = jnp.einsum("shcd,shde->shce", q_decayed, state, precision=HIGHEST)
        out = out + jnp.einsum("shce,shef->shcf", attn, v_new, precision=HIGHEST)
        update = jnp.einsum("shcd,shce->shde", k_decayed, v_new, precision=HIGHEST)
        return state * chunk_decay[..., None] + update, out

    per_chunk = (new_values, k_cumdecay, q_decayed, k_decayed, attn, chunk_decay)
    out_like = jax.ShapeDtypeStruct(new_values.shape[1:], jnp.float32)  # [heads, C, dv]
    out, state = scan_chunks(step, state, per_chunk, out_like, chunks, num_tokens)
    return from_chunks(out.transpose(0, 2, 1, 3), chunks, meta, num_tokens), state


def decayed_scores(
    a: jax.Array,  # [..., C, dk]
    b: jax.Array,  # [..., C, dk]
    cum: jax.Array,  # [..., C, 1] or [..., C, dk]: the log decay from the chunk's start, non-increasing
) -> jax.Array:
    """``sum_d a[c, d] b[e, d] exp(cum[c, d] - cum[e, d])`` for ``e <= c``, zero above the diagonal ``[..., C, C]``:
    position e's key decayed to position c. One decay per head factors out of the sum as a ``[C, C]`` mask. A decay
    per channel does not, and ``a exp(cum) . b exp(-cum)`` would overflow (a chunk's log decay reaches hundreds), so,
    as FLA's ``chunk_kda`` does in sub-chunks of 16: each quarter's rows against the earlier quarters' columns as a
    matmul through the quarter's first position (both factors ``exp(<= 0)``), each quarter against itself the same
    way, recursively (64, 16, 4), down to 4 positions (or a chunk that does not split in quarters) elementwise over
    ``[C, C, dk]`` (so no tensor is more than 4 times ``a``'s, where sub-chunks of 16 compared elementwise took 16
    times: 1.5 GiB at Kimi's widths for a 2048-token prefill beside 63 decodes)."""
    size = a.shape[-2]
    if cum.shape[-1] == 1:
        causal = jnp.tril(jnp.ones((size, size), bool))
        decay = jnp.exp(jnp.where(causal, cum[..., :, None, 0] - cum[..., None, :, 0], -jnp.inf))  # [..., C, C]
        return jnp.einsum("...cd,...ed->...ce", a, b, precision=HIGHEST) * decay
    if size <= QUARTERS or size % QUARTERS:
        causal = jnp.tril(jnp.ones((size, size), bool))[..., None]
        decay = jnp.exp(jnp.where(causal, cum[..., :, None, :] - cum[..., None, :, :], -jnp.inf))  # [..., C, C, dk]
        return jnp.sum(a[..., :, None, :] * b[..., None, :, :] * decay, axis=-1)
    lead, sub = a.shape[:-2], size // QUARTERS
    a_sub, b_sub, cum_sub = (x.reshape(*lead, QUARTERS, sub, -1) for x in (a, b, cum))  # [..., 4, sub, dk]
    ref = cum_sub[..., 0, :]  # [..., 4, dk]: each quarter's first position
    earlier = jnp.arange(size) // sub < jnp.arange(QUARTERS)[:, None]  # [4, C]: column e before row quarter i
    a_ref = a_sub * jnp.exp(cum_sub - ref[..., None, :])  # [..., 4, sub, dk]
    b_ref = b[..., None, :, :] * jnp.exp(
        jnp.where(earlier[..., None], ref[..., None, :] - cum[..., None, :, :], -jnp.inf)
    )  # [..., 4, C, dk]: the columns decayed to each row quarter's start, zero from it on
    scores = jnp.einsum("...icd,...ied->...ice", a_ref, b_ref, precision=HIGHEST)  # [..., 4, sub, C]
    diagonal = decayed_scores(a_sub, b_sub, cum_sub)  # [..., 4, sub, sub]
    on_diagonal = diagonal[..., None, :] * jnp.eye(QUARTERS, dtype=a.dtype)[:, None, :, None]  # [..., 4, sub, 4, sub]
    return (scores + on_diagonal.reshape(scores.shape)).reshape(*lead, size, size)

"""xLSTM's mLSTM layer (transformers' ``xLSTMLayer``): a matrix memory per head in place of attention, its
per-sequence state (the memory, its normalizer and the running maximum of the log gates) in a state pool
(``jllm.models.recurrent_state``).

From the normed input, q and k (``qk_dim`` wide), v and the output gate's pre-activation (``v_dim``), and one input and
one forget gate pre-activation per head, both soft-capped (``gate_soft_cap * tanh(x / gate_soft_cap)``). Per head,
with ``log f = logsigmoid(f)`` and the stabilizer ``m``:

    m' = max(log f + m, i)                          C' = e^(log f + m - m') C + e^(i - m') k v^T
    n' = e^(log f + m - m') n + e^(i - m') k        h = (q C') / (max(|q n'|, e^(-m')) + eps),  q scaled by dk^-0.5

as transformers' ``mlstm_recurrent_step_native`` steps it, the state in float32; then a LayerNorm per head
(``multihead_norm``), times ``sigmoid`` of the output gate, and ``out_proj``. A decode bucket steps it token by token
(``scan_rows``); a bucket that can hold a prefill (``use_chunks``) runs transformers' chunkwise form in chunks of 64
(``chunked_mlstm``: the same sums regrouped, each chunk's scores as matmuls, only the state's passage from chunk to
chunk stepped).

Tensor parallelism splits the heads (``parallel.RECURRENT_HEADS``): q, k, v, the gates column-parallel (each head's
columns contiguous), the per-head norm's weight and the state with them, ``out_proj`` row-parallel.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.models.gated_deltanet import CHUNK, HIGHEST
from jllm.models.layers import LayerNorm, Linear, param
from jllm.models.mamba2 import segment_sum
from jllm.models.recurrent_state import (
    StatePool,
    StateSpec,
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
    from jllm.attention import AttentionMetadata
    from jllm.models.model_args import LayerSpec, ModelArgs

# a padded chunk position's input gate: it adds nothing to the state, and no -inf meets another in a difference
NO_INPUT = -1e30


@dataclasses.dataclass(frozen=True)
class MLSTMSpec:
    """The mLSTM layers' sizes and settings (xLSTMConfig's ``num_heads``; its layer's ``qk_dim`` and ``v_dim``, the
    hidden size times ``qk_dim_factor`` and ``v_dim_factor``; ``gate_soft_cap``, ``eps``, ``norm_eps``)."""

    heads: int
    qk_dim: int
    v_dim: int
    gate_soft_cap: float = 15.0
    eps: float = 1e-6
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("qk_dim", "v_dim"):
            if getattr(self, name) % self.heads:
                raise ValueError(f"xLSTM {name}={getattr(self, name)} must divide into num_heads={self.heads} heads")

    def state_spec(self) -> StateSpec:
        """A sequence's state in one layer, float32 (transformers' ``inference_state_dtype``): the memory ``[heads,
        dk, dv]``, its normalizer ``[heads, dk]`` and the stabilizer ``[heads]``, all split by head."""
        dk, dv = self.qk_dim // self.heads, self.v_dim // self.heads
        shapes = ((self.heads, dk, dv), (self.heads, dk), (self.heads,))
        axes = ((RECURRENT_HEADS, None, None), (RECURRENT_HEADS, None), (RECURRENT_HEADS,))
        return StateSpec(shapes, (jnp.float32,) * 3, axes)


def mlstm_step(
    state: tuple[jax.Array, jax.Array, jax.Array],  # C [R, H, dk, dv], n [R, H, dk], m [R, H]: float32
    token: tuple[jax.Array, ...],  # q (scaled by dk^-0.5), k [R, H, dk], v [R, H, dv], i, f [R, H]: float32
    eps: float,
) -> tuple[tuple[jax.Array, jax.Array, jax.Array], jax.Array]:
    """One token of R rows through the recurrence (decode buckets' path): (the new state, ``h [R, H, dv]``
    float32)."""
    memory, normalizer, top = state
    q, k, v, i, f = token
    log_f = jax.nn.log_sigmoid(f)
    new_top = jnp.maximum(log_f + top, i)
    decay, gain = jnp.exp(log_f + top - new_top), jnp.exp(i - new_top)
    memory = decay[..., None, None] * memory + gain[..., None, None] * (k[..., :, None] * v[..., None, :])
    normalizer = decay[..., None] * normalizer + gain[..., None] * k
    numerator = jnp.sum(q[..., :, None] * memory, axis=-2)  # [R, H, dv]: exact float32 products and sums
    denominator = jnp.maximum(jnp.abs(jnp.sum(q * normalizer, axis=-1)), jnp.exp(-new_top)) + eps
    return (memory, normalizer, new_top), numerator / denominator[..., None]


class MultiHeadNorm(nnx.Module):
    """transformers' ``xLSTMMultiHeadLayerNorm``: a LayerNorm over each head's channels, then one weight per channel
    of all heads (stored ``[v_dim]``)."""

    def __init__(self, spec: MLSTMSpec, dtype: jnp.dtype):
        self.norm = LayerNorm(spec.v_dim // spec.heads, spec.norm_eps, dtype, weight=False, bias=False)
        self.weight = param((spec.v_dim,), dtype, (RECURRENT_HEADS,))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[T, heads, dv] -> [T, heads * dv]``."""
        return self.norm(x).reshape(x.shape[0], -1) * self.weight[...]


class MLSTMLayer(nnx.Module):
    """transformers' ``xLSTMLayer`` of ``weight_mode`` "single" (module names the checkpoint's), with the attention
    module's call shape: ``(x, norm, positions, state pool, meta) -> (y, state pool)``."""

    def __init__(self, args: ModelArgs, spec: LayerSpec):
        s, d, dt = args.mlstm, args.hidden_size, args.dtype
        self.q = Linear(d, s.qk_dim, ("embed", RECURRENT_HEADS), dt)
        self.k = Linear(d, s.qk_dim, ("embed", RECURRENT_HEADS), dt)
        self.v = Linear(d, s.v_dim, ("embed", RECURRENT_HEADS), dt)
        self.ogate_preact = Linear(d, s.v_dim, ("embed", RECURRENT_HEADS), dt)
        self.igate_preact = Linear(d, s.heads, ("embed", RECURRENT_HEADS), dt, bias=True)
        self.fgate_preact = Linear(d, s.heads, ("embed", RECURRENT_HEADS), dt, bias=True)
        self.multihead_norm = MultiHeadNorm(s, dt)
        self.out_proj = Linear(s.v_dim, d, (RECURRENT_HEADS, "embed"), dt)
        self.mlstm = s

    def __call__(
        self, x: jax.Array, norm: nnx.Module | None, positions: jax.Array, states: StatePool, meta: AttentionMetadata
    ) -> tuple[jax.Array, StatePool]:
        """The layer over ``norm(x)`` (``x [T, hidden]``), each row's state read from and written back to its slot;
        ``positions`` are unused: order is the recurrence's."""
        s, t = self.mlstm, x.shape[0]
        h = x if norm is None else norm(x)
        cap = s.gate_soft_cap

        def heads(y: jax.Array) -> jax.Array:  # [T, heads * width] -> [T, heads, width] float32
            return y.reshape(t, s.heads, -1).astype(jnp.float32)

        def gate(linear: Linear) -> jax.Array:
            return (cap * jnp.tanh(linear(h) / cap)).astype(jnp.float32)

        q = heads(self.q(h)) * (s.qk_dim // s.heads) ** -0.5
        inputs = (q, heads(self.k(h)), heads(self.v(h)), gate(self.igate_preact), gate(self.fgate_preact))
        state = gather_states(states, meta)
        if use_chunks(t, meta.query_start_loc.shape[0] - 1):
            out, new_states = chunked_mlstm(*inputs, state, meta, s.eps)
        else:

            def step(state: tuple[jax.Array, ...], token: tuple[jax.Array, ...]) -> tuple[tuple, jax.Array]:
                return mlstm_step(state, token, s.eps)

            out_like = jax.ShapeDtypeStruct((s.heads, s.v_dim // s.heads), jnp.float32)
            out, new_states = scan_rows(step, state, inputs, out_like, meta)
        normed = self.multihead_norm(out.astype(x.dtype))
        y = jax.nn.sigmoid(self.ogate_preact(h)) * normed
        return self.out_proj(y), scatter_states(states, new_states, meta)


def chunked_mlstm(
    q: jax.Array,  # [T, H, dk] float32, scaled by dk^-0.5
    k: jax.Array,  # [T, H, dk] float32
    v: jax.Array,  # [T, H, dv] float32
    i: jax.Array,  # [T, H] float32: the input gates' pre-activations
    f: jax.Array,  # [T, H] float32: the forget gates'
    state: tuple[jax.Array, jax.Array, jax.Array],  # each row's memory, normalizer, stabilizer before this step
    meta: AttentionMetadata,
    eps: float,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
    """The recurrence over each row's tokens in chunks of ``CHUNK`` (transformers' chunkwise form; rows padded to
    whole chunks, a padded position forgetting nothing, log f = 0, and adding nothing, i = ``NO_INPUT``). Inside a
    chunk, with ``b`` the running sum of log f, key j reaches query t with log weight ``b_t - b_j + i_j`` (its log f
    summed over ``(j, t]``, ``mamba2.segment_sum``: transformers' difference of two running sums loses digits): the
    scores, their sums against v and alone, each stabilized by its query's largest log weight, for every chunk at
    once. Only the state's passage is stepped (``scan_chunks``): there query t's stabilizer ``max(b_t + m, that
    largest)`` is the recurrence's own, the state's part and the chunk's part are rescaled to it, and the state leaves
    the chunk as the recurrence leaves it (each key weighted by its log weight at the chunk's last position). Returns
    (``h [T, H, dv]``, the rows' new states)."""
    num_tokens = q.shape[0]
    chunks = row_chunks(meta, num_tokens, CHUNK)
    valid = chunks.valid[:, None, :]  # [N, 1, C]
    q, k, v = (to_chunks(x, chunks).transpose(0, 2, 1, 3) for x in (q, k, v))  # [N, H, C, d]
    log_f = jnp.where(valid, jax.nn.log_sigmoid(to_chunks(f, chunks).transpose(0, 2, 1)), 0.0)  # [N, H, C]
    i = jnp.where(valid, to_chunks(i, chunks).transpose(0, 2, 1), NO_INPUT)
    b = jnp.cumsum(log_f, axis=-1)
    # key j's log weight at query t, its forget gates summed over (j, t] (no difference of two long sums: a chunk's
    # sum of log f reaches hundreds, where float32 keeps a few digits), -inf for j > t
    log_d = segment_sum(log_f) + i[..., None, :]  # [N, H, C, C]
    intra_top = jnp.max(log_d, axis=-1)  # [N, H, C]: finite (the diagonal's at least)
    scores = jnp.einsum("nhcd,nhed->nhce", q, k, precision=HIGHEST) * jnp.exp(log_d - intra_top[..., None])
    intra_num = jnp.einsum("nhce,nhed->nhcd", scores, v, precision=HIGHEST)  # [N, H, C, dv]
    intra_den = jnp.sum(scores, axis=-1)  # [N, H, C]
    to_end = log_d[..., -1, :]  # [N, H, C]: each key's log weight at the chunk's end
    end_top = jnp.max(to_end, axis=-1)  # [N, H]
    weights = jnp.exp(to_end - end_top[..., None])
    kv = jnp.einsum("nhc,nhcd,nhce->nhde", weights, k, v, precision=HIGHEST)  # [N, H, dk, dv]
    k_sum = jnp.einsum("nhc,nhcd->nhd", weights, k, precision=HIGHEST)

    def step(state: tuple[jax.Array, ...], chunk: tuple[jax.Array, ...]) -> tuple[tuple, jax.Array]:
        memory, normalizer, top = state  # each row's [S, H, dk, dv], [S, H, dk], [S, H]
        q, b, intra_top, intra_num, intra_den, end_top, kv, k_sum = chunk  # each row's chunk
        top_at = jnp.maximum(b + top[..., None], intra_top)  # [S, H, C]: the recurrence's stabilizer at each query
        inter, intra = jnp.exp(b + top[..., None] - top_at), jnp.exp(intra_top - top_at)
        num = inter[..., None] * jnp.einsum("shcd,shde->shce", q, memory, precision=HIGHEST)
        num = num + intra[..., None] * intra_num
        den = inter * jnp.einsum("shcd,shd->shc", q, normalizer, precision=HIGHEST) + intra * intra_den
        h = num / (jnp.maximum(jnp.abs(den), jnp.exp(-top_at)) + eps)[..., None]
        new_top = jnp.maximum(b[..., -1] + top, end_top)
        decay, gain = jnp.exp(b[..., -1] + top - new_top), jnp.exp(end_top - new_top)
        memory = decay[..., None, None] * memory + gain[..., None, None] * kv
        normalizer = decay[..., None] * normalizer + gain[..., None] * k_sum
        return (memory, normalizer, new_top), h

    out_like = jax.ShapeDtypeStruct(v.shape[1:], jnp.float32)  # [H, C, dv]
    xs = (q, b, intra_top, intra_num, intra_den, end_top, kv, k_sum)
    out, state = scan_chunks(step, state, xs, out_like, chunks, num_tokens)
    return from_chunks(out.transpose(0, 2, 1, 3), chunks, meta, num_tokens), state

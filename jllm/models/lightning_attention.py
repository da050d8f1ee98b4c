"""MiniMax's lightning attention (MiniMax-Text-01's and MiniMax-M1's ``linear_attention`` layers): linear attention
with a fixed exponential decay per head and a per-sequence state, run as transformers' ``MiniMaxLightningAttention``
computes it.

Per token: q, k and v from SiLU of one projection of the normed input, kept per head ``[q, k, v]`` (no q/k norm, no
scale). Head h's state ``S [head_dim, head_dim]`` (float32) decays by ``exp(-slope_h)`` and takes ``k^T v``; the
output is ``q S``. The heads' outputs are RMS-normed together (over every head's channels, eps 1e-6: transformers'
fixed default), times ``sigmoid(output_gate(x))``, then ``out_proj``. The slopes are ALiBi's geometric series
``2 ** (-8 (h + 1) / heads)``, scaled per layer by ``1 - layer / (layers - 1) + 1e-5`` (``layer_decay_scale``): the
deeper the layer, the longer its memory. A layer's slopes are static (``LayerSpec.decay_scale``), so each lightning
layer is traced on its own.

The layer's cache entry is its state pool ``(state [slots, heads, head_dim, head_dim],)``
(``jllm.models.recurrent_state``). A bucket that can hold a prefill (``use_chunks``) runs the chunked form
(``chunked_lightning``): inside each chunk of 64 a causal attention weighted by the decay between positions, plus the
state carried in, decayed to each position; the state passed from chunk to chunk (``scan_chunks``). transformers
prefills in blocks of ``block_size`` (256): the same sums grouped otherwise, so ``block_size`` is not read. Decode
buckets step the recurrence token by token, all rows at once (``scan_rows``). Pure JAX on every attention backend.

Tensor parallelism splits the layer by head (``parallel.RECURRENT_HEADS``), as vLLM does: ``qkv_proj`` keeps each
head's q, k and v side by side, so its columns split by head as stored; ``output_gate`` column-parallel; the state
pool by head; the norm over all heads' channels reduces its sum of squares across devices; ``out_proj`` row-parallel.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jllm.attention import AttentionMetadata
from jllm.models.gated_deltanet import HIGHEST, decayed_scores
from jllm.models.layers import Linear, RMSNorm
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
    from jllm.models.model_args import LayerSpec, ModelArgs

NORM_EPS = 1e-6  # transformers' MiniMaxRMSNorm default: the lightning layer's norm is built without the config's eps
CHUNK = 64  # the chunked form's chunk, as the other mixers' (a mixed bucket's decode rows pad to one each)


@dataclasses.dataclass(frozen=True)
class LightningSpec:
    """The lightning layers' widths: ``num_heads`` heads of ``head_dim`` (the attention's own counts in MiniMax)."""

    num_heads: int
    head_dim: int

    def state_spec(self) -> StateSpec:
        """A sequence's state in one layer: ``[heads, head_dim, head_dim]`` float32 (transformers keeps it in the
        model's dtype; float32 keeps a long context's sums), split by heads."""
        shape = (self.num_heads, self.head_dim, self.head_dim)
        return StateSpec((shape,), (jnp.float32,), ((RECURRENT_HEADS, None, None),))

    def slopes(self, decay_scale: float) -> np.ndarray:
        """``[heads]`` float32: each head's decay rate per token in a layer of ``decay_scale``
        (``layer_decay_scale``), as transformers' ``get_slope_rate`` computes it in float32."""
        base = np.float32(1 / (2 ** (8 / self.num_heads)))
        return base ** np.arange(1, self.num_heads + 1, dtype=np.float32) * np.float32(decay_scale)


def layer_decay_scale(layer: int, num_layers: int) -> float:
    """transformers' per-layer factor on the slopes: 1 at the first layer, ~1e-5 at the last."""
    return 1 - layer / (num_layers - 1 + 1e-5) + 1e-5


class LightningAttention(nnx.Module):
    """transformers' ``MiniMaxLightningAttention`` (its module names: ``qkv`` is read from ``qkv_proj``, which would
    name the fused attention's), with the attention module's call shape: ``(x, norm, positions, state pool, meta) ->
    (y, state pool)``."""

    def __init__(self, args: ModelArgs, spec: LayerSpec):
        s, d, dt = args.lightning, args.hidden_size, args.dtype
        width = s.num_heads * s.head_dim
        self.qkv = Linear(d, 3 * width, ("embed", RECURRENT_HEADS), dt)  # per head [q, k, v]: split by head as stored
        self.output_gate = Linear(d, width, ("embed", RECURRENT_HEADS), dt)
        self.norm = RMSNorm(width, NORM_EPS, dt)
        self.out_proj = Linear(width, d, (RECURRENT_HEADS, "embed"), dt)
        self.slopes = tuple(float(x) for x in s.slopes(spec.decay_scale))  # static: this layer's
        self.spec = s

    def __call__(
        self,
        x: jax.Array,  # [T, hidden]
        norm: nnx.Module | None,
        positions: jax.Array,
        cache: StatePool,  # (state [slots, heads, head_dim, head_dim],)
        meta: AttentionMetadata,
    ) -> tuple[jax.Array, StatePool]:
        """The layer's output ``[T, hidden]`` over ``norm(x)``, and its state pool with each row's new state.
        ``positions`` are unused: the decay counts the tokens in order."""
        t, heads, hd = x.shape[0], self.spec.num_heads, self.spec.head_dim
        h = x if norm is None else norm(x)
        qkv = jax.nn.silu(self.qkv(h)).reshape(t, heads, 3, hd).astype(jnp.float32)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [T, heads, head_dim]
        slopes = jnp.asarray(self.slopes, jnp.float32)
        (state,) = gather_states(cache, meta)
        if use_chunks(t, meta.query_start_loc.shape[0] - 1):
            out, state = chunked_lightning(q, k, v, slopes, state, meta)
        else:
            out_like = jax.ShapeDtypeStruct((heads, hd), jnp.float32)
            step = functools.partial(lightning_step, jnp.exp(-slopes))
            out, state = scan_rows(step, state, (q, k, v), out_like, meta)
        out = self.norm(out.astype(x.dtype).reshape(t, heads * hd))
        gated = jax.nn.sigmoid(self.output_gate(h)) * out
        return self.out_proj(gated), scatter_states(cache, (state,), meta)


def lightning_step(
    decay: jax.Array,  # [heads]: exp(-slopes)
    state: jax.Array,  # [S, heads, d, d]
    inputs: tuple[jax.Array, ...],  # q, k, v: each row's token [S, heads, d]
) -> tuple[jax.Array, jax.Array]:
    """One token of every row: the state decayed, plus ``k^T v``; the output ``q S`` ``[S, heads, d]``.
    transformers' decode loop, one step."""
    q, k, v = inputs
    state = decay[:, None, None] * state + k[..., :, None] * v[..., None, :]
    return state, jnp.einsum("shd,shde->she", q, state, precision=HIGHEST)


def chunked_lightning(
    q: jax.Array,  # [T, heads, d] float32
    k: jax.Array,  # [T, heads, d] float32
    v: jax.Array,  # [T, heads, d] float32
    slopes: jax.Array,  # [heads] float32
    state: jax.Array,  # [S, heads, d, d] float32: each row's state before this step
    meta: AttentionMetadata,
) -> tuple[jax.Array, jax.Array]:
    """The decayed linear attention over each row's tokens in chunks of ``CHUNK`` (a step of fewer tokens in one
    chunk of them all): inside a chunk, ``(q k^T * decay) v`` for every chunk of every row at once, the decay
    ``exp(-slope (c - e))`` from key e to query c; the state at the chunk's start reaches query c decayed by ``c + 1``
    tokens and leaves it decayed by the chunk's length, plus its keys' ``k^T v`` each decayed to the chunk's end.
    Only that passage is stepped (``scan_chunks``). A row's padded positions (zero q, k, v) count no tokens, so they
    neither decay nor update a state. Returns (``out [T, heads, d]`` float32, the rows' new states)."""
    num_tokens = q.shape[0]
    chunks = row_chunks(meta, num_tokens, CHUNK)
    q, k, v = (to_chunks(x, chunks).transpose(0, 2, 1, 3) for x in (q, k, v))  # [N, heads, C, d]
    counted = jnp.cumsum(chunks.valid, axis=1).astype(jnp.float32)  # [N, C]: the chunk's tokens up to each position
    cum = -slopes[:, None] * counted[:, None, :]  # [N, heads, C]: the log decay from the chunk's start
    intra = jnp.einsum("nhce,nhed->nhcd", decayed_scores(q, k, cum[..., None]), v, precision=HIGHEST)
    q_decayed = q * jnp.exp(cum)[..., None]
    k_decayed = k * jnp.exp(cum[..., -1:] - cum)[..., None]  # each key's decay to the chunk's end
    chunk_decay = jnp.exp(cum[..., -1])[..., None, None]  # [N, heads, 1, 1]

    def step(state: jax.Array, chunk: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
        q_decayed, k_decayed, v, chunk_decay = chunk  # each row's chunk [S, heads, ...]
        out = jnp.einsum("shcd,shde->shce", q_decayed, state, precision=HIGHEST)
        update = jnp.einsum("shcd,shce->shde", k_decayed, v, precision=HIGHEST)
        return state * chunk_decay + update, out

    out_like = jax.ShapeDtypeStruct(q.shape[1:], jnp.float32)  # [heads, C, d]
    inter, state = scan_chunks(step, state, (q_decayed, k_decayed, v, chunk_decay), out_like, chunks, num_tokens)
    return from_chunks((inter + intra).transpose(0, 2, 1, 3), chunks, meta, num_tokens), state

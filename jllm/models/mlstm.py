"""xLSTM's mLSTM layer (transformers' ``xLSTMLayer``): a matrix memory per head in place of attention, its
per-sequence state (the memory, its normalizer and the running maximum of the log gates) in a state pool
(``jllm.models.recurrent_state``).

From the normed input, q and k (``qk_dim`` wide), v and the output gate's pre-activation (``v_dim``), and one input and
one forget gate pre-activation per head, both soft-capped (``gate_soft_cap * tanh(x / gate_soft_cap)``). Per head,
with ``log f = logsigmoid(f)`` and the stabilizer ``m``:

    m' = max(log f + m, i)                          C' = e^(log f + m - m') C + e^(i - m') k v^T
    n' = e^(log f + m - m') n + e^(i - m') k        h = (q C') / (max(|q n'|, e^(-m')) + eps),  q scaled by dk^-0.5

as transformers' ``mlstm_recurrent_step_native`` steps it (its chunkwise prefill is the same sums regrouped), the
state in float32; then a LayerNorm per head (``multihead_norm``), times ``sigmoid`` of the output gate, and
``out_proj``. The recurrence steps token by token in every bucket (``scan_rows``): no chunked form yet (a prefill of
T tokens is T dependent iterations of a ``[rows, heads, dk, dv]`` update per layer).

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

from jllm.models.layers import LayerNorm, Linear, param
from jllm.models.recurrent_state import StatePool, StateSpec, gather_states, scan_rows, scatter_states
from jllm.parallel import RECURRENT_HEADS

if TYPE_CHECKING:
    from jllm.attention import AttentionMetadata
    from jllm.models.model_args import LayerSpec, ModelArgs


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
    token: tuple[jax.Array, ...],  # q, k [R, H, dk], v [R, H, dv], i, f [R, H]: float32
    eps: float,
) -> tuple[tuple[jax.Array, jax.Array, jax.Array], jax.Array]:
    """One token of R rows through the recurrence: (the new state, ``h [R, H, dv]`` float32)."""
    memory, normalizer, top = state
    q, k, v, i, f = token
    log_f = jax.nn.log_sigmoid(f)
    new_top = jnp.maximum(log_f + top, i)
    decay, gain = jnp.exp(log_f + top - new_top), jnp.exp(i - new_top)
    memory = decay[..., None, None] * memory + gain[..., None, None] * (k[..., :, None] * v[..., None, :])
    normalizer = decay[..., None] * normalizer + gain[..., None] * k
    q = q * q.shape[-1] ** -0.5
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

        inputs = (
            heads(self.q(h)),
            heads(self.k(h)),
            heads(self.v(h)),
            gate(self.igate_preact),
            gate(self.fgate_preact),
        )

        def step(state: tuple[jax.Array, ...], token: tuple[jax.Array, ...]) -> tuple[tuple, jax.Array]:
            return mlstm_step(state, token, s.eps)

        out_like = jax.ShapeDtypeStruct((s.heads, s.v_dim // s.heads), jnp.float32)
        out, new_states = scan_rows(step, gather_states(states, meta), inputs, out_like, meta)
        normed = self.multihead_norm(out.astype(x.dtype))
        y = jax.nn.sigmoid(self.ogate_preact(h)) * normed
        return self.out_proj(y), scatter_states(states, new_states, meta)

"""The Mamba2 mixer (Bamba, Granite-4.0-H, Nemotron-H): a selective state-space layer in place of attention, its
per-sequence state in a state pool (``jllm.models.recurrent_state``) instead of KV pages.

One projection gives the gate ``z``, the conv input ``xBC`` and the time step ``dt`` per head; ``xBC`` runs through a
causal depthwise conv1d (kernel K: each row keeps its last K - 1 inputs as its conv state) and SiLU, then splits into
the heads' inputs ``x [heads, head_dim]`` and the groups' ``B`` and ``C`` (``[n_groups, state]``, each shared by
``heads / n_groups`` heads). Per head the SSD recurrence, with ``A = -exp(A_log)`` and ``dt = softplus(dt +
dt_bias)`` clamped to ``time_step_limit``:

    state = exp(dt A) state + dt x B^T    # [head_dim, state]
    y = state C + D x

then a gated RMSNorm (times SiLU(z), then RMS-normed over each group's channels: transformers' ``RMSNormGated``
with ``norm_before_gate`` off, as Bamba, Granite-4.0-H and Nemotron-H have it) and ``out_proj``.

Prefill runs the recurrence token by token (the rows of a step side by side): exact and simple, but a long prompt
takes as many sequential steps as its chunk has tokens. The chunked SSD algorithm (a prompt's chunk as matmuls, the
state carried between chunks: transformers' ``mamba2_chunk_scan``) is the GPU session's work.

Tensor parallelism is refused for every hybrid model (``jllm.build``); here the heads, the groups' B and C and the
conv's channels would each split their own way.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.models.layers import ACTIVATIONS, Linear, normed_linear, param
from jllm.models.recurrent_state import (
    DepthwiseConv1d,
    StatePool,
    StateSpec,
    gather_states,
    scan_rows,
    scatter_states,
)

if TYPE_CHECKING:
    from jllm.attention import AttentionMetadata
    from jllm.models.model_args import LayerSpec, ModelArgs


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

    def __post_init__(self) -> None:
        if self.num_heads % self.n_groups:
            raise ValueError(f"Mamba2 n_groups={self.n_groups} must divide its {self.num_heads} heads")
        if self.conv_kernel < 2:
            raise ValueError(f"Mamba2 conv kernel {self.conv_kernel} is not supported (supported: 2 or more)")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"Mamba2 activation {self.act!r} is not one of {', '.join(ACTIVATIONS)}")

    @property
    def inner(self) -> int:
        """The heads' channels: ``x``'s, ``z``'s and the output's width."""
        return self.num_heads * self.head_dim

    @property
    def conv_dim(self) -> int:
        """The conv's channels: ``x``, then B, then C."""
        return self.inner + 2 * self.n_groups * self.state_size

    def state_spec(self, dtype: jnp.dtype) -> StateSpec:
        """A sequence's state in this layer: its last K - 1 conv inputs ``[conv_dim, K - 1]`` (``dtype``, the
        model's) and the SSM state ``[heads, head_dim, state]`` (float32 whatever the model's dtype: the
        recurrence's carry, decayed and added to at every token; Nemotron-H's configs ask the same of vLLM,
        ``mamba_ssm_cache_dtype: float32``)."""
        shapes = ((self.conv_dim, self.conv_kernel - 1), (self.num_heads, self.head_dim, self.state_size))
        return StateSpec(shapes, (dtype, jnp.float32))


class GatedRMSNorm(nnx.Module):
    """transformers' ``RMSNormGated`` (Bamba's): ``x`` times SiLU(gate), then RMS-normed over each of ``groups``
    equal slices of the channels, in float32; the weight multiplies in the input dtype."""

    def __init__(self, dim: int, groups: int, eps: float, dtype: jnp.dtype):
        self.weight = param((dim,), dtype, (None,))
        self.groups, self.eps = groups, eps

    def __call__(self, x: jax.Array, gate: jax.Array) -> jax.Array:
        """``x``, ``gate`` ``[T, dim]``."""
        y = x.astype(jnp.float32) * jax.nn.silu(gate.astype(jnp.float32))
        grouped = y.reshape(*y.shape[:-1], self.groups, -1)
        grouped = grouped * jax.lax.rsqrt(jnp.mean(grouped * grouped, axis=-1, keepdims=True) + self.eps)
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


class Mamba2Mixer(nnx.Module):
    """transformers' ``BambaMixer`` / ``GraniteMoeHybridMambaLayer`` / ``NemotronHMamba2Mixer`` (module names as
    the checkpoint's but the gated norm's, ``gated_norm`` here: a family renames its final ``norm``), with the
    attention module's call shape: ``(x, norm, positions, state pool, meta) -> (y, state pool)``."""

    def __init__(self, args: ModelArgs, spec: LayerSpec):
        m, d, dt = args.mamba2, args.hidden_size, args.dtype
        self.in_proj = Linear(
            d, m.inner + m.conv_dim + m.num_heads, ("embed", None), dt, bias=m.proj_bias
        )  # z, xBC, dt
        self.conv1d = DepthwiseConv1d(m.conv_dim, m.conv_kernel, dt, m.conv_bias)
        # per head, kept in float32 whatever the model's dtype (as vLLM keeps A): the recurrence runs in float32
        self.dt_bias = param((m.num_heads,), jnp.float32, (None,))
        self.A_log = param((m.num_heads,), jnp.float32, (None,))
        self.D = param((m.num_heads,), jnp.float32, (None,))
        self.gated_norm = GatedRMSNorm(m.inner, m.n_groups, m.norm_eps, dt)
        self.out_proj = Linear(m.inner, d, (None, "embed"), dt, bias=m.proj_bias)
        self.mamba = m

    def __call__(
        self, x: jax.Array, norm: nnx.Module | None, positions: jax.Array, states: StatePool, meta: AttentionMetadata
    ) -> tuple[jax.Array, StatePool]:
        """The mixer over ``norm(x)`` (``x [T, hidden]``); ``states``: the layer's pool (conv, SSM), each row's
        read from and written back to its slot (``meta.state_slots``). ``positions`` are unused: order is the
        recurrence's."""
        m, t = self.mamba, x.shape[0]
        inner, bc = m.inner, m.n_groups * m.state_size
        proj = normed_linear(norm, self.in_proj, x)  # [T, inner + conv_dim + heads]
        z, xbc, dt = jnp.split(proj, [inner, inner + m.conv_dim], axis=-1)
        conv_state, ssm_state = gather_states(states, meta)
        xbc, conv_state = self.conv1d(xbc, conv_state, meta)  # float32
        xbc = ACTIVATIONS[m.act](xbc).astype(x.dtype)
        xs, b, c = jnp.split(xbc, [inner, inner + bc], axis=-1)
        dt = jax.nn.softplus(dt.astype(jnp.float32) + self.dt_bias[...])
        dt = jnp.clip(dt, *m.time_step_limit)  # [T, heads]
        a = -jnp.exp(self.A_log[...])
        d = self.D[...]

        def step(state: jax.Array, token: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
            xs, dt, b, c = token
            y, state = ssd_step(state, xs, dt, a, b, c, d)
            return state, y

        per_token = (
            xs.reshape(t, m.num_heads, m.head_dim),
            dt,
            b.reshape(t, m.n_groups, m.state_size),
            c.reshape(t, m.n_groups, m.state_size),
        )
        out_like = jax.ShapeDtypeStruct((m.num_heads, m.head_dim), jnp.float32)
        y, ssm_state = scan_rows(step, ssm_state, per_token, out_like, meta)  # [T, heads, head_dim] float32
        y = self.gated_norm(y.reshape(t, inner), z)
        return self.out_proj(y.astype(x.dtype)), scatter_states(states, (conv_state, ssm_state), meta)

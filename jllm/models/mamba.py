"""The Mamba (v1) mixer (Mamba, FalconMamba, Jamba): a selective state-space layer in place of attention, its
per-sequence state (the conv window and the SSM state) in a state pool (``jllm.models.recurrent_state``).

One projection gives the conv input ``x`` and the gate ``z`` (``[T, inner]`` each); ``x`` runs through a causal
depthwise conv1d (kernel K: each row keeps its last K - 1 inputs as its conv state) and the activation, then
``x_proj`` gives the time step's low-rank input and ``B``, ``C`` (``[T, state]``, shared by every channel),
FalconMamba's weightless or Jamba's RMSNorms on each of the three where the family has them, and ``dt_proj`` the
per-channel time step ``dt = softplus(dt_proj(.))``. Per channel, with ``A = -exp(A_log)`` (``[inner, state]``):

    state = exp(dt A) state + dt x B     # [inner, state]
    y = state C + D x

then ``y * silu(z)`` and ``out_proj``. A's decay differs per state channel, so unlike Mamba2's scalar one per head
there is no cheap chunked form (its matmuls would carry ``[chunk, chunk, inner, state]``): the recurrence steps token
by token in every bucket, every row at once over the offset within its row (``scan_rows``: as many iterations as the
step's longest row; a decode step one). A prefill of T tokens is T dependent iterations of a few small kernels per
layer on a GPU, and rows beside it are stepped (masked) at each: unmeasured on a GPU, where vLLM runs a fused
selective-scan kernel. ``scan_segments``' stages (the longest rows alone past the first iterations) cut the masked
work but took 3.4x the compile time on the CPU (a two-layer model's greedy test, 11.7 s against 3.4 s).

Tensor parallelism splits the inner channels (``parallel.RECURRENT_HEADS``), as vLLM does: ``in_proj``'s x and z kept
per channel (``[hidden, inner, 2]``, read from the checkpoint's x rows and z rows: ``layers.StoredParts``), the conv
and both states with them, ``x_proj`` row-parallel (its small output all-reduced and replicated, with its norms),
``dt_proj`` column-parallel, A and D split, ``out_proj`` row-parallel: two all-reduces a layer.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.models.layers import ACTIVATIONS, Linear, RMSNorm, StoredParts, normed_linear, param
from jllm.models.recurrent_state import (
    DepthwiseConv1d,
    StatePool,
    StateSpec,
    gather_states,
    scan_rows,
    scatter_states,
)
from jllm.parallel import RECURRENT_HEADS

if TYPE_CHECKING:
    from jllm.attention import AttentionMetadata
    from jllm.models.model_args import LayerSpec, ModelArgs

# the norms on the time step's input, B and C: none (Mamba), weightless RMSNorms (FalconMamba), RMSNorms with a
# weight each (Jamba)
SSM_NORMS = (None, "rms_no_affine", "rms")


@dataclasses.dataclass(frozen=True)
class MambaSpec:
    """The mixer's sizes and settings (MambaConfig's ``intermediate_size``, ``state_size``, ``conv_kernel``,
    ``time_step_rank``, ``use_conv_bias``, ``use_bias``; Jamba's ``mamba_*`` keys)."""

    inner: int
    state_size: int
    conv_kernel: int
    dt_rank: int
    conv_bias: bool = True
    proj_bias: bool = False  # in_proj's and out_proj's
    act: str = "silu"  # after the conv (one of layers.ACTIVATIONS)
    ssm_norm: str | None = None  # one of SSM_NORMS
    ssm_norm_eps: float = 1e-6
    # > 1: Zamba v1's multi-head mixer (``jllm.models.zamba``): the channels in this many heads, each its own x_proj,
    # dt_proj, B and C
    heads: int = 1

    def __post_init__(self) -> None:
        if self.conv_kernel < 2:
            raise ValueError(f"Mamba conv kernel {self.conv_kernel} is not supported (supported: 2 or more)")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"Mamba activation {self.act!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.ssm_norm not in SSM_NORMS:
            raise ValueError(f"Mamba ssm_norm {self.ssm_norm!r} is not one of {SSM_NORMS}")
        for name in ("inner", "state_size", "dt_rank", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"Mamba {name}={getattr(self, name)} must be at least 1")
        if self.inner % self.heads or (self.heads > 1 and self.ssm_norm is not None):
            raise ValueError(
                f"Mamba heads={self.heads} must divide inner={self.inner}, without ssm_norm (got {self.ssm_norm!r})"
            )

    def state_spec(self, dtype: jnp.dtype) -> StateSpec:
        """A sequence's state in this layer: its last K - 1 conv inputs ``[inner, K - 1]`` in ``dtype`` (the
        model's) and the SSM state ``[inner, state]`` in float32 (the recurrence's carry, decayed and added to at
        every token), both split over tensor parallelism by channel."""
        shapes = ((self.inner, self.conv_kernel - 1), (self.inner, self.state_size))
        return StateSpec(shapes, (dtype, jnp.float32), ((RECURRENT_HEADS, None), (RECURRENT_HEADS, None)))


def selective_step(
    state: jax.Array,  # [R, inner, state] float32
    x: jax.Array,  # [R, inner] float32
    dt: jax.Array,  # [R, inner] float32, after softplus
    a: jax.Array,  # [inner, state] float32, -exp(A_log)
    b: jax.Array,  # [R, state] float32, or [R, inner, state]: each channel its own (Zamba v1's per head)
    c: jax.Array,  # as b
) -> tuple[jax.Array, jax.Array]:
    """One token of each of R rows through the recurrence: (the new state, ``y [R, inner]`` float32 without D's
    skip). The read-out is an elementwise product and sum, exact float32 on every backend (no TF32 matmul)."""
    b, c = (y if y.ndim == 3 else y[:, None, :] for y in (b, c))
    state = state * jnp.exp(dt[..., None] * a) + (dt * x)[..., None] * b
    return state, jnp.sum(state * c, axis=-1)


class MambaMixer(nnx.Module):
    """transformers' ``MambaMixer`` / ``FalconMambaMixer`` / ``JambaMambaMixer`` (module names the checkpoint's), with
    the attention module's call shape: ``(x, norm, positions, state pool, meta) -> (y, state pool)``."""

    def __init__(self, args: ModelArgs, spec: LayerSpec):
        m, d, dt = args.mamba, args.hidden_size, args.dtype
        stored = StoredParts(m.inner, ((0, 1), (m.inner, 1)), 2 * m.inner)  # x, z per channel
        self.in_proj = Linear(d, (m.inner, 2), ("embed", RECURRENT_HEADS, None), dt, bias=m.proj_bias, stored=stored)
        self.conv1d = DepthwiseConv1d(m.inner, m.conv_kernel, dt, m.conv_bias)  # tiny, replicated
        self.x_proj = Linear(m.inner, m.dt_rank + 2 * m.state_size, (RECURRENT_HEADS, None), dt)
        self.dt_proj = Linear(m.dt_rank, m.inner, (None, RECURRENT_HEADS), dt, bias=True)
        # per channel, kept in float32 whatever the model's dtype (as vLLM keeps A): the recurrence runs in float32
        self.A_log = param((m.inner, m.state_size), jnp.float32, (RECURRENT_HEADS, None))
        self.D = param((m.inner,), jnp.float32, (RECURRENT_HEADS,))
        self.out_proj = Linear(m.inner, d, (RECURRENT_HEADS, "embed"), dt, bias=m.proj_bias)
        if m.ssm_norm is None:
            self.dt_layernorm = self.b_layernorm = self.c_layernorm = None
        else:
            affine = m.ssm_norm == "rms"
            self.dt_layernorm = RMSNorm(m.dt_rank, m.ssm_norm_eps, dt, weight=affine)
            self.b_layernorm = RMSNorm(m.state_size, m.ssm_norm_eps, dt, weight=affine)
            self.c_layernorm = RMSNorm(m.state_size, m.ssm_norm_eps, dt, weight=affine)
        self.mamba = m

    def __call__(
        self, x: jax.Array, norm: nnx.Module | None, positions: jax.Array, states: StatePool, meta: AttentionMetadata
    ) -> tuple[jax.Array, StatePool]:
        """The mixer over ``norm(x)`` (``x [T, hidden]``); ``states``: the layer's pool (conv, SSM), each row's
        read from and written back to its slot (``meta.state_slots``). ``positions`` are unused: order is the
        recurrence's."""
        m = self.mamba
        proj = normed_linear(norm, self.in_proj, x)  # [T, inner, 2]
        xs, z = proj[..., 0], proj[..., 1]
        conv_state, ssm_state = gather_states(states, meta)
        xs, conv_state = self.conv1d(xs, conv_state, meta)  # float32, with the bias
        xs = ACTIVATIONS[m.act](xs).astype(x.dtype)
        dbc = self.x_proj(xs)  # [T, dt_rank + 2 state]
        dt, b, c = jnp.split(dbc, [m.dt_rank, m.dt_rank + m.state_size], axis=-1)
        if self.dt_layernorm is not None:
            dt, b, c = self.dt_layernorm(dt), self.b_layernorm(b), self.c_layernorm(c)
        dt = jax.nn.softplus(self.dt_proj(dt).astype(jnp.float32))  # [T, inner]
        a = -jnp.exp(self.A_log[...])
        x32 = xs.astype(jnp.float32)

        def step(state: jax.Array, token: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
            return selective_step(state, token[0], token[1], a, *token[2:])

        inputs = (x32, dt, b.astype(jnp.float32), c.astype(jnp.float32))
        out_like = jax.ShapeDtypeStruct((m.inner,), jnp.float32)
        y, ssm_state = scan_rows(step, ssm_state, inputs, out_like, meta)  # [T, inner] float32
        y = (y + self.D[...] * x32) * jax.nn.silu(z.astype(jnp.float32))
        return self.out_proj(y.astype(x.dtype)), scatter_states(states, (conv_state, ssm_state), meta)

"""Zamba v1's Mamba mixer (transformers' ``ZambaMambaMixer``): Mamba (v1)'s selective state space
(``jllm.models.mamba``) with its channels in ``heads`` heads, each its own ``x_proj`` (time step input, B and C from
that head's channels alone) and ``dt_proj``; ``in_proj``'s x and gate rows interleaved (row ``2 c`` channel c's x,
``2 c + 1`` its gate), read per channel into our ``[hidden, inner, 2]`` kernel (``StoredParts``). Its state and every
other step are Mamba's: the conv window and the SSM state per channel in the layer's state pool, the recurrence token
by token (``scan_rows``). Tensor parallelism splits the heads, each device its heads' channels and parameters.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.models.layers import ACTIVATIONS, Linear, StoredParts, normed_linear, param
from jllm.models.mamba import selective_step
from jllm.models.recurrent_state import DepthwiseConv1d, StatePool, gather_states, scan_rows, scatter_states
from jllm.parallel import RECURRENT_HEADS

if TYPE_CHECKING:
    from jllm.attention import AttentionMetadata
    from jllm.models.model_args import LayerSpec, ModelArgs


class MultiHeadMambaMixer(nnx.Module):
    """The mixer's parameters as the checkpoint's (``x_proj_weight [heads, dt_rank + 2 state, head_dim]``,
    ``dt_proj_weight [heads, head_dim, dt_rank]``, ``dt_proj_bias``, ``A_log``, ``D`` per head), the attention's call
    shape: ``(x, norm, positions, state pool, meta) -> (y, state pool)``."""

    def __init__(self, args: ModelArgs, spec: LayerSpec):
        m, d, dt = args.mamba, args.hidden_size, args.dtype
        h, hd, r, n = m.heads, m.inner // m.heads, m.dt_rank, m.state_size
        interleaved = StoredParts(m.inner, ((0, 2),), 2 * m.inner)  # channel c's x and gate: stored rows 2c, 2c + 1
        self.in_proj = Linear(d, (m.inner, 2), ("embed", RECURRENT_HEADS, None), dt, m.proj_bias, stored=interleaved)
        self.conv1d = DepthwiseConv1d(m.inner, m.conv_kernel, dt, m.conv_bias)  # tiny, replicated
        self.x_proj_weight = param((h, r + 2 * n, hd), dt, (RECURRENT_HEADS, None, None))
        self.dt_proj_weight = param((h, hd, r), dt, (RECURRENT_HEADS, None, None))
        self.dt_proj_bias = param((h, hd), dt, (RECURRENT_HEADS, None))
        # kept in float32 whatever the model's dtype, as Mamba's: the recurrence runs in float32
        self.A_log = param((h, hd, n), jnp.float32, (RECURRENT_HEADS, None, None))
        self.D = param((h, hd), jnp.float32, (RECURRENT_HEADS, None))
        self.out_proj = Linear(m.inner, d, (RECURRENT_HEADS, "embed"), dt, bias=m.proj_bias)
        self.mamba = m

    def __call__(
        self, x: jax.Array, norm: nnx.Module | None, positions: jax.Array, states: StatePool, meta: AttentionMetadata
    ) -> tuple[jax.Array, StatePool]:
        """The mixer over ``norm(x)`` (``x [T, hidden]``), each row's state read from and written back to its slot
        (``meta.state_slots``); ``positions`` unused."""
        m = self.mamba
        t, h, hd = x.shape[0], m.heads, m.inner // m.heads
        proj = normed_linear(norm, self.in_proj, x)  # [T, inner, 2]
        xs, z = proj[..., 0], proj[..., 1]
        conv_state, ssm_state = gather_states(states, meta)
        xs, conv_state = self.conv1d(xs, conv_state, meta)  # float32, with the bias
        xs = ACTIVATIONS[m.act](xs).astype(x.dtype)
        dbc = jnp.einsum("thd,hrd->thr", xs.reshape(t, h, hd), self.x_proj_weight[...])  # [T, heads, dt_rank + 2N]
        dt, b, c = jnp.split(dbc, [m.dt_rank, m.dt_rank + m.state_size], axis=-1)
        dt = jnp.einsum("thr,hdr->thd", dt, self.dt_proj_weight[...]).astype(jnp.float32)
        dt = jax.nn.softplus(dt + self.dt_proj_bias[...].astype(jnp.float32)).reshape(t, m.inner)
        a = -jnp.exp(self.A_log[...]).reshape(m.inner, m.state_size)
        x32 = xs.astype(jnp.float32)

        def step(state: jax.Array, token: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
            x_t, dt_t, b_t, c_t = token  # b_t, c_t [R, heads, state]: each head's, repeated over its channels
            b_t, c_t = (jnp.repeat(y, hd, axis=1) for y in (b_t, c_t))
            return selective_step(state, x_t, dt_t, a, b_t, c_t)

        inputs = (x32, dt, b.astype(jnp.float32), c.astype(jnp.float32))
        out_like = jax.ShapeDtypeStruct((m.inner,), jnp.float32)
        y, ssm_state = scan_rows(step, ssm_state, inputs, out_like, meta)  # [T, inner] float32
        y = (y + self.D[...].reshape(m.inner) * x32) * jax.nn.silu(z.astype(jnp.float32))
        return self.out_proj(y.astype(x.dtype)), scatter_states(states, (conv_state, ssm_state), meta)

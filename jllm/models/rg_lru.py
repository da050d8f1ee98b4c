"""RecurrentGemma's (Griffin's) recurrent block: a gated branch beside a causal conv1d and the Real-Gated Linear
Recurrent Unit (RG-LRU), its per-sequence state (the conv window and the LRU's state) in a state pool
(``jllm.models.recurrent_state``).

From the normed input, ``y = act(linear_y(x))`` and ``x = conv_1d(linear_x(x))`` (depthwise, ``conv1d_width`` wide,
with a bias; each row keeps its last ``width - 1`` inputs). The RG-LRU gates ``x`` per head (``lru_width`` split in
``num_attention_heads`` blocks, each gate a block-diagonal linear map with a bias):

    a = exp(-8 * sigmoid(recurrent_gate(x)) * softplus(recurrent_param))       # per channel
    h = a * h + sqrt(1 - a^2) * sigmoid(input_gate(x)) * x                     # a = 0 and no sqrt at position 0

then ``linear_out(h * y)``. The recurrence is diagonal and linear, so every bucket runs it as one associative scan
over the step's tokens (``recurrent_state.linear_scan``), in float32 as transformers accumulates it; the gates in the
model's dtype, as transformers computes them.

Tensor parallelism splits the LRU's heads (``parallel.RECURRENT_HEADS``): ``linear_x`` and ``linear_y``
column-parallel, the conv's channels, the gates' blocks and both states with them, ``linear_out`` row-parallel (the
layer's one all-reduce); the conv's tiny weight is replicated.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.models.layers import ACTIVATIONS, Linear, param
from jllm.models.recurrent_state import (
    DepthwiseConv1d,
    StatePool,
    StateSpec,
    gather_states,
    linear_scan,
    scatter_states,
)
from jllm.parallel import RECURRENT_HEADS

if TYPE_CHECKING:
    from jllm.attention import AttentionMetadata
    from jllm.models.model_args import LayerSpec, ModelArgs


@dataclasses.dataclass(frozen=True)
class RGLRUSpec:
    """The recurrent blocks' sizes (RecurrentGemmaConfig's ``lru_width``, ``num_attention_heads``,
    ``conv1d_width``) and the gated branch's activation (its ``hidden_activation``)."""

    width: int
    heads: int
    conv_width: int
    act: str = "gelu_tanh"

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(
                f"RecurrentGemma lru_width={self.width} must divide into num_attention_heads={self.heads} blocks"
            )
        if self.conv_width < 2:
            raise ValueError(f"RecurrentGemma conv1d_width={self.conv_width} is not supported (supported: 2 or more)")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"RecurrentGemma activation {self.act!r} is not one of {', '.join(ACTIVATIONS)}")

    def state_spec(self, dtype: jnp.dtype) -> StateSpec:
        """A sequence's state in one block: its last ``width - 1`` conv inputs ``[lru_width, width - 1]`` in the
        model's dtype and the LRU's state ``[lru_width]`` in float32 (transformers' cache keeps them so), both split
        by head."""
        shapes = ((self.width, self.conv_width - 1), (self.width,))
        return StateSpec(shapes, (dtype, jnp.float32), ((RECURRENT_HEADS, None), (RECURRENT_HEADS,)))


class RGLRU(nnx.Module):
    """transformers' ``RecurrentGemmaRglru``'s parameters (names the checkpoint's): the block-diagonal gates
    ``[heads, block, block]`` and their biases, the recurrence's ``recurrent_param [lru_width]``."""

    def __init__(self, spec: RGLRUSpec, dtype: jnp.dtype):
        block = spec.width // spec.heads
        self.recurrent_param = param((spec.width,), dtype, (RECURRENT_HEADS,))
        self.input_gate_weight = param((spec.heads, block, block), dtype, (RECURRENT_HEADS, None, None))
        self.input_gate_bias = param((spec.heads, block), dtype, (RECURRENT_HEADS, None))
        self.recurrent_gate_weight = param((spec.heads, block, block), dtype, (RECURRENT_HEADS, None, None))
        self.recurrent_gate_bias = param((spec.heads, block), dtype, (RECURRENT_HEADS, None))
        self.heads = spec.heads

    def gates(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Over ``x [T, lru_width]``: the recurrence's decay ``a`` and its input, ``[T, lru_width]`` float32 each; at
        position 0 (a sequence's reset) no decay and the input ungated by ``sqrt(1 - a^2)``."""
        blocks = x.reshape(x.shape[0], self.heads, -1)

        def gate(weight: nnx.Param, bias: nnx.Param) -> jax.Array:
            return jax.nn.sigmoid(jnp.einsum("thi,hij->thj", blocks, weight[...]) + bias[...]).reshape(x.shape)

        input_gate, recurrent_gate = (
            gate(self.input_gate_weight, self.input_gate_bias),
            gate(self.recurrent_gate_weight, self.recurrent_gate_bias),
        )
        log_a = -8.0 * recurrent_gate * jax.nn.softplus(self.recurrent_param[...])  # the model's dtype
        reset = (positions == 0)[:, None]
        multiplier = jnp.where(reset, jnp.ones((), x.dtype), jnp.sqrt(1 - jnp.exp(2 * log_a)))
        inputs = (x * input_gate) * multiplier
        decay = jnp.where(reset, 0.0, jnp.exp(log_a).astype(jnp.float32))
        return decay, inputs.astype(jnp.float32)


class RecurrentBlock(nnx.Module):
    """transformers' ``RecurrentGemmaRecurrentBlock`` (module names the checkpoint's), with the attention module's
    call shape: ``(x, norm, positions, state pool, meta) -> (y, state pool)``."""

    def __init__(self, args: ModelArgs, spec: LayerSpec):
        r, d, dt = args.rg_lru, args.hidden_size, args.dtype
        self.linear_y = Linear(d, r.width, ("embed", RECURRENT_HEADS), dt, bias=True)
        self.linear_x = Linear(d, r.width, ("embed", RECURRENT_HEADS), dt, bias=True)
        self.conv_1d = DepthwiseConv1d(r.width, r.conv_width, dt, bias=True)
        self.rg_lru = RGLRU(r, dt)
        self.linear_out = Linear(r.width, d, (RECURRENT_HEADS, "embed"), dt, bias=True)
        self.act = r.act

    def __call__(
        self, x: jax.Array, norm: nnx.Module | None, positions: jax.Array, states: StatePool, meta: AttentionMetadata
    ) -> tuple[jax.Array, StatePool]:
        """The block over ``norm(x)`` (``x [T, hidden]``), each row's states read from and written back to its slot;
        ``positions`` reset the recurrence at 0."""
        h = x if norm is None else norm(x)
        y = ACTIVATIONS[self.act](self.linear_y(h))
        xs = self.linear_x(h)
        conv_state, lru_state = gather_states(states, meta)
        xs, conv_state = self.conv_1d(xs, conv_state, meta)  # float32, with the bias
        decay, inputs = self.rg_lru.gates(xs.astype(x.dtype), positions)
        out, lru_state = linear_scan(decay, inputs, lru_state, meta)
        y = out.astype(x.dtype) * y
        return self.linear_out(y), scatter_states(states, (conv_state, lru_state), meta)

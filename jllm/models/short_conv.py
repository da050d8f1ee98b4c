"""LFM2's short convolution (Liquid's ``Lfm2ShortConv``): a gated causal depthwise conv1d in place of attention, its
per-sequence state the conv's last ``K - 1`` inputs alone.

One projection of the normed input gives ``B``, ``C`` and ``x`` (``[T, hidden]`` each); ``B * x`` runs through the
causal depthwise conv (no activation), its output gated by ``C`` and projected back (``out_proj``). The conv is
``recurrent_state.DepthwiseConv1d`` continued from each row's conv state, so a prompt's chunks and its decodes read
the inputs before them; there is no recurrence to scan. ``quantization`` is refused for these
models (``ModelArgs``): not yet checked.

Tensor parallelism splits the channels (``parallel.RECURRENT_HEADS``): ``in_proj`` kept per channel as
``[hidden, channels, 3]`` (B, C, x side by side, read from the checkpoint's B rows, C rows, x rows:
``layers.StoredParts``), the conv state with them, ``out_proj`` row-parallel; the conv's tiny weight is
replicated.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.models.layers import Linear, StoredParts, normed_linear
from jllm.models.recurrent_state import DepthwiseConv1d, StatePool, StateSpec, gather_states, scatter_states
from jllm.parallel import RECURRENT_HEADS

if TYPE_CHECKING:
    from jllm.attention import AttentionMetadata
    from jllm.models.model_args import LayerSpec, ModelArgs


@dataclasses.dataclass(frozen=True)
class ShortConvSpec:
    """The short-conv layers' settings (LFM2's ``conv_L_cache``, ``conv_bias``): the conv's kernel, and biases on the
    conv and both projections."""

    kernel: int
    bias: bool = False

    def __post_init__(self) -> None:
        if self.kernel < 2:
            raise ValueError(f"conv_L_cache={self.kernel} is not supported (supported: 2 or more)")

    def state_spec(self, hidden: int, dtype: jnp.dtype) -> StateSpec:
        """A sequence's state in one layer: its last ``K - 1`` conv inputs ``[hidden, K - 1]`` in the model's dtype
        (transformers' cache keeps them so)."""
        return StateSpec(((hidden, self.kernel - 1),), (dtype,), ((RECURRENT_HEADS, None),))


class ShortConv(nnx.Module):
    """transformers' ``Lfm2ShortConv`` (module names the checkpoint's, the conv ``conv``), with the attention
    module's call shape: ``(x, norm, positions, state pool, meta) -> (y, state pool)``."""

    def __init__(self, args: ModelArgs, spec: LayerSpec):
        s, d, dt = args.short_conv, args.hidden_size, args.dtype
        stored = StoredParts(d, ((0, 1), (d, 1), (2 * d, 1)), 3 * d)  # B, C, x per channel
        self.in_proj = Linear(d, (d, 3), ("embed", RECURRENT_HEADS, None), dt, bias=s.bias, stored=stored)
        self.conv = DepthwiseConv1d(d, s.kernel, dt, s.bias)
        self.out_proj = Linear(d, d, (RECURRENT_HEADS, "embed"), dt, bias=s.bias)

    def __call__(
        self, x: jax.Array, norm: nnx.Module | None, positions: jax.Array, states: StatePool, meta: AttentionMetadata
    ) -> tuple[jax.Array, StatePool]:
        """The layer over ``norm(x)`` (``x [T, hidden]``); ``states``: its pool (the conv state alone), each row's
        read from and written back to its slot. ``positions`` are unused: the conv's order is the tokens'."""
        proj = normed_linear(norm, self.in_proj, x)  # [T, hidden, 3]
        b, c, xs = proj[..., 0], proj[..., 1], proj[..., 2]  # [T, hidden] each
        (conv_state,) = gather_states(states, meta)
        y, conv_state = self.conv(b * xs, conv_state, meta)  # float32
        y = c * y.astype(x.dtype)
        return self.out_proj(y), scatter_states(states, (conv_state,), meta)

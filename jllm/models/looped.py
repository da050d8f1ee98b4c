"""Looped models: layers run more than once per token. Each run of a layer (an invocation) is a layer of jllm's own,
with KV pages of its own, as transformers' caches keep one K/V per (layer, loop) pair; the invocations of one stored
layer share its module, so its weights exist once (``CausalLM`` builds the first and reuses it). ``Looped`` runs the
invocations in their order and mixes the streams between them as the family does:

- Dory (nGPT, ``DoryLoop``): the input layers once, then ``loops`` passes over the recurrent layers, each pass
  starting from ``l2(h) + l2(input section's output)``, then the output layers once.
- HRM-Text (``HrmLoop``): a low (L) and a high (H) stack of layers; ``h_cycles`` times, ``l_cycles`` runs of the L
  stack on ``z_L + z_H``, then one of the H stack on ``z_H + z_L``, each stack's output normed (weightless RMSNorm; the
  last one is the model's final norm); ``z_L`` starts as the stored ``z_L_init``, ``z_H`` as the embeddings.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.models.layers import l2_normed, param

Run = Callable[[int, jax.Array], jax.Array]  # (invocation, its input [T, hidden]) -> its output


@dataclasses.dataclass(frozen=True)
class DoryLoop:
    """Dory's sections (its config's ``n_input_layers``, ``n_recurrent_layers``, ``n_output_layers``,
    ``n_recurrent_loops``), counted in transformers' layers (each an attention and an MLP block)."""

    input_layers: int
    recurrent_layers: int
    output_layers: int
    loops: int

    @property
    def invocations(self) -> int:
        return self.input_layers + self.loops * self.recurrent_layers + self.output_layers

    def stored_layer(self, u: int) -> int:
        """The stored layer invocation ``u`` runs."""
        start, looped = self.input_layers, self.loops * self.recurrent_layers
        if u < start:
            return u
        if u < start + looped:
            return start + (u - start) % self.recurrent_layers
        return u - looped + self.recurrent_layers

    def first_invocation(self, layer: int) -> int:
        """The invocation whose module holds stored layer ``layer``'s weights (its first)."""
        past = self.input_layers + self.recurrent_layers
        return layer if layer < past else layer + (self.loops - 1) * self.recurrent_layers

    def owner(self, u: int) -> int:
        """The invocation whose module invocation ``u`` runs."""
        return self.first_invocation(self.stored_layer(u))

    def run(self, looped: Looped, run: Run, x: jax.Array) -> jax.Array:
        u = 0
        for _ in range(self.input_layers):
            x, u = run(u, x), u + 1
        start = l2_normed(x)
        for _ in range(self.loops):
            x = l2_normed(x) + start
            for _ in range(self.recurrent_layers):
                x, u = run(u, x), u + 1
        for _ in range(self.output_layers):
            x, u = run(u, x), u + 1
        return x


@dataclasses.dataclass(frozen=True)
class HrmLoop:
    """HRM-Text's stacks: ``stack_layers`` layers each (its ``num_layers_per_stack``), ``h_cycles`` and
    ``l_cycles``; invocation order L stack ``l_cycles`` times, then the H stack, per H cycle (transformers' cache
    slots' order). ``eps``: the stacks' final norms'."""

    stack_layers: int
    h_cycles: int
    l_cycles: int
    eps: float

    @property
    def invocations(self) -> int:
        return self.stack_layers * self.h_cycles * (self.l_cycles + 1)

    def stored_layer(self, u: int) -> tuple[str, int]:
        """The stack ("L_module" or "H_module") and its layer that invocation ``u`` runs."""
        stack, layer = divmod(u, self.stack_layers)
        return ("H_module" if stack % (self.l_cycles + 1) == self.l_cycles else "L_module"), layer

    def first_invocation(self, stack: str, layer: int) -> int:
        return layer + (self.l_cycles * self.stack_layers if stack == "H_module" else 0)

    def owner(self, u: int) -> int:
        """The invocation whose module invocation ``u`` runs."""
        return self.first_invocation(*self.stored_layer(u))

    def run(self, looped: Looped, run: Run, x: jax.Array) -> jax.Array:
        n, u = self.stack_layers, 0
        high, low = x, jnp.broadcast_to(looped.z_L_init[...].astype(x.dtype), x.shape)
        for h in range(self.h_cycles):
            for _ in range(self.l_cycles):
                z = low + high
                for _ in range(n):
                    z, u = run(u, z), u + 1
                low = self._normed(z)
            z = high + low
            for _ in range(n):
                z, u = run(u, z), u + 1
            high = z if h == self.h_cycles - 1 else self._normed(z)  # the last: the model's final norm
        return high

    def _normed(self, x: jax.Array) -> jax.Array:
        """A stack's final norm: Llama 4's weightless RMSNorm, in float32."""
        x32 = x.astype(jnp.float32)
        return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)).astype(x.dtype)


Loop = DoryLoop | HrmLoop


class Looped(nnx.Module):
    """The order of a looped model's invocations and the mixing between them (HRM's stored ``z_L_init``, the low
    stack's first input, replicated)."""

    def __init__(self, loop: Loop, hidden_size: int, dtype: jnp.dtype):
        self.loop = loop
        self.z_L_init = param((hidden_size,), dtype, (None,)) if isinstance(loop, HrmLoop) else None

    def __call__(self, run: Run, x: jax.Array) -> jax.Array:
        """The last invocation's output ``[T, hidden]`` (before the model's final norm) from the embeddings ``x``;
        ``run`` runs one invocation over its pages."""
        return self.loop.run(self, run, x)

"""RWKV (v4)'s block as one recurrent mixer: time mixing (its WKV recurrence) and channel mixing, each reading the
token before through a token shift, their per-sequence state in a state pool (``jllm.models.recurrent_state``).

Time mixing interpolates each token's normed input with the one before it (``time_mix_*``), projects key, value and
receptance, and runs the WKV recurrence per channel with ``w = -exp(time_decay)`` and the bonus ``u = time_first``:

    out_t = (num + e^(u + k_t) v_t) / (den + e^(u + k_t))        num, den <- e^w num + e^k_t v_t, e^w den + e^k_t

kept as transformers' ``rwkv_linear_attention_cpu`` keeps it, scaled by the running maximum exponent (the state
``(num, den, max)`` in float32), then ``output(sigmoid(receptance) * out)``. Channel mixing shifts its own normed
input (``ln2`` of the residual after time mixing): ``sigmoid(receptance) * value(relu(key)^2)``. The state a sequence
keeps: each shift's last input (``[hidden, 1]``, the conv state of ``recurrent_state.causal_conv1d`` with the kernel
(1, 0)) and the WKV triple. The decay differs per channel and the running maximum is not linear, so the recurrence
steps token by token in every bucket (``scan_rows``), as Mamba (v1)'s does.

transformers' eval mode divides each block's ``attention.output`` and ``feed_forward.value`` weights by ``2 **
(i // rescale_every)`` (and halves the residual after every ``rescale_every`` blocks, ``LayerSpec.output_scale``):
here both outputs are times ``LayerSpec.block_scale``, a power of two, so the products are the same floats.

The mixer returns both blocks' sum: the layer adds it to its residual (the time mixing's own residual add is inside,
for ``ln2``), one rounding off transformers' two adds. Tensor parallelism splits the WKV's channels
(``parallel.RECURRENT_HEADS``: key, value, receptance column-parallel, ``output`` row-parallel, the triple with them)
and channel mixing's width (``mlp``); the shifts' states and channel mixing's ``receptance`` are replicated.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.models.layers import Linear, param, scaled
from jllm.models.recurrent_state import (
    StatePool,
    StateSpec,
    causal_conv1d,
    fresh_rows,
    gather_states,
    scan_rows,
    scatter_states,
)
from jllm.parallel import RECURRENT_HEADS

if TYPE_CHECKING:
    from jllm.attention import AttentionMetadata
    from jllm.models.model_args import LayerSpec, ModelArgs

# a fresh sequence's running maximum exponent: below any key, so its empty num and den weigh nothing
# (transformers' CPU recurrence starts from -1e38)
EMPTY_MAX = -1e38


@dataclasses.dataclass(frozen=True)
class RwkvSpec:
    """The block's widths (RwkvConfig's ``attention_hidden_size``, ``intermediate_size``)."""

    attention_size: int
    ffn_size: int

    def state_spec(self, hidden: int, dtype: jnp.dtype) -> StateSpec:
        """A sequence's state in one block: time mixing's last input ``[hidden, 1]`` (the model's dtype), the WKV
        numerator, denominator and running maximum ``[attention_size]`` (float32), channel mixing's last input
        ``[hidden, 1]``; the triple split with the WKV's channels, the shifts replicated."""
        shift, wkv = ((hidden, 1), dtype, (None, None)), ((self.attention_size,), jnp.float32, (RECURRENT_HEADS,))
        parts = (shift, wkv, wkv, wkv, shift)
        return StateSpec(tuple(p[0] for p in parts), tuple(p[1] for p in parts), tuple(p[2] for p in parts))


def token_shift(x: jax.Array, state: jax.Array, meta: AttentionMetadata) -> tuple[jax.Array, jax.Array]:
    """Each token's previous one (``x [T, C]``; a row's first token reads its stored one, ``state [S, C, 1]``) and
    each row's new state, its last token: the causal conv of kernel (1, 0)."""
    kernel = jnp.broadcast_to(jnp.asarray([1.0, 0.0], x.dtype), (x.shape[-1], 2))
    shifted, state = causal_conv1d(x, kernel, state, meta)
    return shifted.astype(x.dtype), state


def mix(x: jax.Array, shifted: jax.Array, weight: nnx.Param) -> jax.Array:
    """``x * w + shifted * (1 - w)`` (``w [1, 1, C]`` as stored), in ``x``'s dtype as transformers mixes."""
    w = weight[0, 0]
    return x * w + shifted * (1 - w)


def wkv_step(
    state: tuple[jax.Array, jax.Array, jax.Array],  # num, den, max: [R, C] float32 each
    key: jax.Array,  # [R, C] float32
    value: jax.Array,  # [R, C] float32
    decay: jax.Array,  # [C] float32, -exp(time_decay)
    first: jax.Array,  # [C] float32, time_first
) -> tuple[tuple[jax.Array, jax.Array, jax.Array], jax.Array]:
    """One token of R rows through the WKV recurrence: (the new state, the output ``[R, C]`` float32), every
    exponent taken against a running maximum as transformers' ``rwkv_linear_attention_cpu`` takes it."""
    num, den, top = state
    out_top = jnp.maximum(top, key + first)
    e1, e2 = jnp.exp(top - out_top), jnp.exp(key + first - out_top)
    out = (e1 * num + e2 * value) / (e1 * den + e2)
    new_top = jnp.maximum(top + decay, key)
    e1, e2 = jnp.exp(top + decay - new_top), jnp.exp(key - new_top)
    return (e1 * num + e2 * value, e1 * den + e2, new_top), out


class RwkvSelfAttention(nnx.Module):
    """transformers' ``RwkvSelfAttention`` (time mixing; module names the checkpoint's)."""

    def __init__(self, args: ModelArgs):
        d, a, dt = args.hidden_size, args.rwkv.attention_size, args.dtype
        self.time_decay = param((a,), jnp.float32, (RECURRENT_HEADS,))  # float32 (transformers keeps both so)
        self.time_first = param((a,), jnp.float32, (RECURRENT_HEADS,))
        self.time_mix_key = param((1, 1, d), dt, (None, None, None))
        self.time_mix_value = param((1, 1, d), dt, (None, None, None))
        self.time_mix_receptance = param((1, 1, d), dt, (None, None, None))
        self.key = Linear(d, a, ("embed", RECURRENT_HEADS), dt)
        self.value = Linear(d, a, ("embed", RECURRENT_HEADS), dt)
        self.receptance = Linear(d, a, ("embed", RECURRENT_HEADS), dt)
        self.output = Linear(a, d, (RECURRENT_HEADS, "embed"), dt)

    def __call__(
        self, x: jax.Array, shift: jax.Array, wkv: tuple[jax.Array, ...], meta: AttentionMetadata
    ) -> tuple[jax.Array, jax.Array, tuple[jax.Array, ...]]:
        """Over the normed ``x [T, hidden]``: (the output ``[T, hidden]``, the new shift state, the new WKV state)."""
        shifted, shift = token_shift(x, shift, meta)
        key = self.key(mix(x, shifted, self.time_mix_key)).astype(jnp.float32)
        value = self.value(mix(x, shifted, self.time_mix_value)).astype(jnp.float32)
        receptance = jax.nn.sigmoid(self.receptance(mix(x, shifted, self.time_mix_receptance)))
        decay, first = -jnp.exp(self.time_decay[...]), self.time_first[...]

        def step(state: tuple[jax.Array, ...], token: tuple[jax.Array, jax.Array]) -> tuple[tuple, jax.Array]:
            return wkv_step(state, *token, decay, first)

        out_like = jax.ShapeDtypeStruct(decay.shape, jnp.float32)
        out, wkv = scan_rows(step, wkv, (key, value), out_like, meta)  # [T, attention_size]
        return self.output(receptance * out.astype(x.dtype)), shift, wkv


class RwkvFeedForward(nnx.Module):
    """transformers' ``RwkvFeedForward`` (channel mixing; module names the checkpoint's)."""

    def __init__(self, args: ModelArgs):
        d, f, dt = args.hidden_size, args.rwkv.ffn_size, args.dtype
        self.time_mix_key = param((1, 1, d), dt, (None, None, None))
        self.time_mix_receptance = param((1, 1, d), dt, (None, None, None))
        self.key = Linear(d, f, ("embed", "mlp"), dt)
        self.receptance = Linear(d, d, ("embed", None), dt)
        self.value = Linear(f, d, ("mlp", "embed"), dt)

    def __call__(self, x: jax.Array, shift: jax.Array, meta: AttentionMetadata) -> tuple[jax.Array, jax.Array]:
        """Over the normed ``x [T, hidden]``: (the output ``[T, hidden]``, the new shift state)."""
        shifted, shift = token_shift(x, shift, meta)
        key = jnp.square(jax.nn.relu(self.key(mix(x, shifted, self.time_mix_key))))
        receptance = jax.nn.sigmoid(self.receptance(mix(x, shifted, self.time_mix_receptance)))
        return receptance * self.value(key), shift


class RwkvBlock(nnx.Module):
    """An RWKV block past its ``ln1`` (the layer's input norm), with the attention module's call shape: ``(x, norm,
    positions, state pool, meta) -> (both blocks' outputs, state pool)``."""

    def __init__(self, args: ModelArgs, spec: LayerSpec):
        self.attention = RwkvSelfAttention(args)
        self.ln2 = args.make_norm()
        self.feed_forward = RwkvFeedForward(args)
        self.block_scale = spec.block_scale

    def __call__(
        self, x: jax.Array, norm: nnx.Module, positions: jax.Array, states: StatePool, meta: AttentionMetadata
    ) -> tuple[jax.Array, StatePool]:
        """Time mixing over ``norm(x)`` (``x [T, hidden]``), then channel mixing over ``ln2`` of the residual after
        it; ``positions`` are unused: order is the recurrence's."""
        att_shift, num, den, top, ffn_shift = gather_states(states, meta)
        top = jnp.where(fresh_rows(meta)[:, None], EMPTY_MAX, top)  # gathered as zeros for a fresh row
        att, att_shift, wkv = self.attention(norm(x), att_shift, (num, den, top), meta)
        att = scaled(att, self.block_scale)
        ffn, ffn_shift = self.feed_forward(self.ln2(x + att), ffn_shift, meta)
        new_states = (att_shift, *wkv, ffn_shift)
        return att + scaled(ffn, self.block_scale), scatter_states(states, new_states, meta)

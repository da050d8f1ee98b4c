"""Gemma 4's and Gemma 3n's per-layer inputs (PLE): besides the residual stream, each decoder layer reads a small
vector of its own per token, made once before the first layer from a second embedding table (one slice per layer) and
a projection of the token's input embedding; each layer adds a gated projection of its slice to its output. As
transformers' ``Gemma4TextModel.get_per_layer_inputs`` / ``project_per_layer_inputs`` and ``Gemma4TextDecoderLayer``
(Gemma 3n's alike).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.models.layers import ACTIVATIONS, Embedding, Linear


class PerLayerInputs(nnx.Module):
    """Every layer's input ``[T, layers, width]``: the token's row of ``embed_tokens_per_layer`` (times
    ``sqrt(width)``) and the input embedding's projection (times ``hidden ** -0.5``, RMS-normed per layer), summed
    and scaled by ``2 ** -0.5``. Ids past the table (a ``vocab_size_per_layer_input`` below the vocabulary) read row 0,
    as vLLM reads them. Tensors named as the checkpoint's, under the model."""

    def __init__(self, args: Any):
        layers, width, dt = args.num_layers, args.per_layer_input_size, args.dtype
        self.embed_tokens_per_layer = Embedding(
            args.per_layer_vocab_size, layers * width, dt, width**0.5, axes=("vocab", None)
        )
        self.per_layer_model_projection = Linear(args.hidden_size, layers * width, ("embed", None), dt)
        self.per_layer_projection_norm = args.make_norm(width)
        self.layers, self.width = layers, width
        self.vocab_size, self.hidden_scale = args.per_layer_vocab_size, args.hidden_size**-0.5

    def __call__(self, input_ids: jax.Array, embeds: jax.Array) -> jax.Array:
        """``input_ids [T]`` and their scaled embeddings ``[T, hidden]`` -> ``[T, layers, width]``."""
        shape = (input_ids.shape[0], self.layers, self.width)
        ids = jnp.where(input_ids < self.vocab_size, input_ids, 0)
        tokens = self.embed_tokens_per_layer(ids).reshape(shape)
        projected = self.per_layer_model_projection(embeds) * jnp.asarray(self.hidden_scale, embeds.dtype)
        return (self.per_layer_projection_norm(projected.reshape(shape)) + tokens) * jnp.asarray(2**-0.5, embeds.dtype)


class LayerInput(nnx.Module):
    """One layer's use of its input: ``x + norm(up(act(gate(x)) * input))`` after the layer's blocks (Gemma 4); Gemma
    3n adds the ``delta`` to its AltUp streams but the active one, gated by the active one."""

    def __init__(self, args: Any):
        d, width, dt = args.hidden_size, args.per_layer_input_size, args.dtype
        self.per_layer_input_gate = Linear(d, width, ("embed", None), dt)
        self.per_layer_projection = Linear(width, d, (None, "embed"), dt)
        self.post_per_layer_input_norm = args.make_norm()
        self.act = args.mlp_act

    def __call__(self, x: jax.Array, per_layer_input: jax.Array) -> jax.Array:
        """``x [T, hidden]``, this layer's ``per_layer_input [T, width]``."""
        return x + self.delta(x, per_layer_input)

    def delta(self, x: jax.Array, per_layer_input: jax.Array) -> jax.Array:
        """``norm(up(act(gate(x)) * input))``, ``[T, hidden]``."""
        h = ACTIVATIONS[self.act](self.per_layer_input_gate(x)) * per_layer_input
        return self.post_per_layer_input_norm(self.per_layer_projection(h))

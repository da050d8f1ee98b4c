"""The two pure functions a step compiles to: the model's forward pass over the packed inputs, and the sampler.

Both are pure functions of (graphdef, static settings, state, packed step buffers), so ``jax.jit`` of a
``functools.partial`` is the whole program: ``jllm.runner`` lowers, compiles and calls them, and owns their cache.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jllm import parallel, sampler
from jllm.sampler import PromptLogprobsOutput, SamplerOutput
from jllm.step_inputs import InputLayout, Variant, unpack_inputs


def forward(
    graphdef: nnx.GraphDef,
    kv_sharding: jax.sharding.Sharding,
    layout: InputLayout,
    state: nnx.State,
    kv_caches: list[jax.Array],
    buffers: list[jax.Array],
    last_tokens: jax.Array,
) -> tuple[jax.Array, list[jax.Array]]:
    """The model over the step's tokens: final hidden states [T, hidden], and the pool with their K/V written.

    ``last_tokens`` [R] are the previous step's sampled tokens, still on the device: the inputs still pending there.
    """
    inputs = unpack_inputs(layout, buffers)
    pending = inputs.pending_rows >= 0
    input_ids = jnp.where(pending, last_tokens[jnp.where(pending, inputs.pending_rows, 0)], inputs.input_ids)
    model = nnx.merge(graphdef, state)
    hidden, kv_caches = model(input_ids, inputs.positions, kv_caches, inputs.attn)
    # Pin the outputs' shardings: one XLA picks itself would change the next call's cache key, and the sampler
    # program is lowered for a replicated ``hidden`` before the forward has run.
    hidden = jax.lax.with_sharding_constraint(hidden, parallel.replicated(kv_sharding.mesh))
    return hidden, [jax.lax.with_sharding_constraint(kv, kv_sharding) for kv in kv_caches]


def sample(
    graphdef: nnx.GraphDef,
    variant: Variant,
    layout: InputLayout,
    sampler_layout: InputLayout,
    state: nnx.State,
    hidden: jax.Array,
    buffers: list[jax.Array],
    sampler_buffers: list[jax.Array],
    num_rows: int,
) -> tuple[SamplerOutput, PromptLogprobsOutput | None, jax.Array]:
    """Logits of the rows that sample (all rows for prompt logprobs), then the sampler: a program of its own, so a
    new sampling variant compiles in a fraction of the model's time. Only the LM head's parameters are used.

    ``sampler_buffers`` hold the packed ``(SamplingMetadata, TokenConstraints)``: the per-row settings and the mask
    and logit bias (zero-width without them), apart from the forward's ``buffers`` so their widths never change it.
    Also returns the sampled tokens padded to ``num_rows`` (every bucket's rows fit): the next step's
    ``last_tokens``, one shape whatever this step's bucket.
    """
    num_top_logprobs, num_prompt_logprobs, mode = variant
    inputs = unpack_inputs(layout, buffers)
    model = nnx.merge(graphdef, state)
    logits = model.compute_logits(hidden[inputs.logits_indices])  # [S, vocab] f32
    prompt = None
    if num_prompt_logprobs is not None:
        all_logits = model.compute_logits(hidden)  # [T, vocab]
        prompt = sampler.prompt_logprobs(all_logits, inputs.prompt_targets, num_top_logprobs=num_prompt_logprobs)
    sampling, constraints = unpack_inputs(sampler_layout, sampler_buffers)
    out = sampler.sample(logits, sampling, constraints, num_top_logprobs=num_top_logprobs, mode=mode)
    return out, prompt, jnp.zeros(num_rows, jnp.int32).at[: out.token_ids.shape[0]].set(out.token_ids)

"""The pure functions a step compiles to: the model's forward pass over the packed inputs, the sampler, and the
prompt logprobs when a row asks for them.

Each is a pure function of (graphdef, static settings, state, a packed step buffer), so ``jax.jit`` of a
``functools.partial`` is the whole program: ``jllm.runner`` lowers, compiles and calls them, and owns their cache.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jllm import parallel, sampler, spec_verify
from jllm.models.lora import LoRABatch, LoRAWeights
from jllm.sampler import PromptLogprobsOutput, SamplerOutput, SamplingMode
from jllm.sampling import MAX_LOGPROBS
from jllm.step_inputs import InputLayout, unpack_inputs


def forward(
    graphdef: nnx.GraphDef,
    pool_shardings: tuple[Any, ...],
    layout: InputLayout,
    state: nnx.State,
    kv_caches: list[jax.Array],
    buffer: jax.Array,
    last_tokens: jax.Array,
    lora_weights: list[LoRAWeights] | None = None,
) -> tuple[jax.Array, jax.Array, list[jax.Array]]:
    """The model over the step's tokens: final hidden states [T, hidden], those of each sequence's last new token
    [R, hidden] (what the sampler reads, so its program depends on its row count R alone, not on T: the bucket's
    sequences rounded up, ``jllm.buckets.sampler_rows``), and the pool with their K/V written.

    ``last_tokens`` [R] are the previous step's sampled tokens, still on the device: the inputs still pending there.
    ``lora_weights``: every layer's stacked adapter slots (``jllm.lora.manager``), an argument like the pool, so
    loading an adapter never recompiles; each token takes its slot's (``StepInputs.lora_slots``).
    ``pool_shardings``: each layer's pool placement as allocated (a recurrent layer's state pool: a tuple of them).
    """
    inputs = unpack_inputs(layout, buffer)
    pending = inputs.pending_rows >= 0
    input_ids = jnp.where(pending, last_tokens[jnp.where(pending, inputs.pending_rows, 0)], inputs.input_ids)
    model = nnx.merge(graphdef, state)
    lora = None if lora_weights is None else LoRABatch(lora_weights, inputs.lora_slots)
    hidden, kv_caches = model(input_ids, inputs.positions, kv_caches, inputs.attn, lora)
    # Pin the outputs' shardings: one XLA picks itself would change the next call's cache key, and the sampler
    # program is lowered for a replicated ``hidden`` before the forward has run.
    replicated = parallel.replicated(jax.tree.leaves(pool_shardings)[0].mesh)
    hidden = jax.lax.with_sharding_constraint(hidden, replicated)
    rows = jax.lax.with_sharding_constraint(hidden[inputs.logits_indices], replicated)
    pinned = [jax.lax.with_sharding_constraint(kv, s) for kv, s in zip(kv_caches, pool_shardings, strict=True)]
    return hidden, rows, pinned


def sample(
    head_graphdef: nnx.GraphDef,
    variant: tuple[int, SamplingMode],
    sampler_layout: InputLayout,
    head_state: nnx.State,
    rows: jax.Array,
    sampler_buffer: jax.Array,
    num_rows: int,
) -> tuple[SamplerOutput, jax.Array]:
    """Logits of the sampling rows ``rows`` [R * (K + 1), hidden], then the sampler (or, with K drafts a row,
    ``jllm.spec_verify``): a program of its own, so a sampling
    variant compiles in a fraction of the model's time, once per row count R (not per bucket). It takes only the LM
    head's parameters (``decoder.LogitsHead``). ``variant``: (num_top_logprobs, mode), static.

    ``sampler_buffer`` holds the packed ``(SamplingMetadata, TokenConstraints)``: the per-row settings and the mask
    and logit bias, apart from the forward's buffer so their widths never change it. Also returns the sampled
    tokens padded to ``num_rows`` (every bucket's rows fit): the next step's ``last_tokens``, one shape whatever this
    step's bucket.
    """
    num_top_logprobs, mode = variant
    logits = nnx.merge(head_graphdef, head_state)(rows)  # [R * (K + 1), vocab] f32
    sampling, constraints = unpack_inputs(sampler_layout, sampler_buffer)
    width = sampling.draft_ids.shape[1] + 1  # K + 1 positions a row (1 without speculation)
    if width > 1:  # speculative decoding: the requests' checks leave no mask, bias, penalty or ban to apply
        out = spec_verify.verify(logits.reshape(-1, width, logits.shape[-1]), sampling, mode=mode)
        last = out.token_ids[:, 0]  # the next step never reads it: speculative steps run one at a time
    else:
        out = sampler.sample(logits, sampling, constraints, num_top_logprobs=num_top_logprobs, mode=mode)
        last = out.token_ids
    return out, jnp.zeros(num_rows, jnp.int32).at[: last.shape[0]].set(last)


def prompt_logprobs(
    head_graphdef: nnx.GraphDef, layout: InputLayout, head_state: nnx.State, hidden: jax.Array, buffer: jax.Array
) -> PromptLogprobsOutput:
    """The logprobs of each prompt token's successor and the top ``MAX_LOGPROBS`` [T]: a program of its own per
    bucket, run beside whichever sampler the step takes when some row asks for prompt logprobs."""
    inputs = unpack_inputs(layout, buffer)
    logits = nnx.merge(head_graphdef, head_state)(hidden)  # [T, vocab]
    return sampler.prompt_logprobs(logits, inputs.prompt_targets, num_top_logprobs=MAX_LOGPROBS)

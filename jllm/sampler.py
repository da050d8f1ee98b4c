"""The on-device sampler: a pure function of (logits, SamplingMetadata) that runs inside the engine's jit step.

vLLM V1's order: min-tokens ban -> penalties -> argmax for greedy rows; for random rows temperature -> min-p ->
top-k -> top-p -> draw. Logprobs come from the raw logits (vLLM's default ``raw_logprobs``).

Two choices keep it cheap on a GPU:
- Every truncation keeps a prefix of the tokens sorted by logit, so one sort of the batch plus one cumulative sum
  gives each row's kept count ``n``; the draw is an inverse-CDF lookup in that prefix. One uniform per row instead
  of ``V`` Gumbel draws, and nothing is scattered back to vocabulary order.
- The sort runs only when some row asks for top-k or top-p (``lax.cond``), and nothing random runs for an
  all-greedy batch.

Reproducibility: a row's uniform comes from ``fold_in(fold_in(key(seed), sample_index), step)``, so a seeded sample
draws the same tokens whatever else is in the batch, wherever its row sits, and after preemption and recompute.

The host half, ``build_sampling_metadata`` and its width helpers, turns ``Sequence``s into padded NumPy arrays; the
static widths (penalty width, banned width, top logprobs) pick the compiled variant.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jllm.sampling import MAX_LOGPROBS, SAMPLING_EPS

if TYPE_CHECKING:
    from jllm.sequence import Sequence

Array = jax.Array | np.ndarray  # NumPy when built on the host, jax.Array inside the step


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class SamplingMetadata:
    """Per-row sampling settings for one step. Padding rows are greedy with nothing banned."""

    temperature: Array  # [S] f32; < SAMPLING_EPS means greedy
    top_k: Array  # [S] i32; 0 = off
    top_p: Array  # [S] f32; 1 = off
    min_p: Array  # [S] f32; 0 = off
    presence_penalty: Array  # [S] f32; 0 = off
    frequency_penalty: Array  # [S] f32; 0 = off
    repetition_penalty: Array  # [S] f32; 1 = off
    seeds: Array  # [S] u32
    sample_index: Array  # [S] i32; which of the request's n samples
    step: Array  # [S] i32; output tokens so far
    banned_ids: Array  # [S, B] i32, -1 padded; EOS + stop_token_ids while output < min_tokens
    prompt_ids: Array  # [S, Lp] i32, -1 padded; Lp = 0 when the batch has no penalties
    output_ids: Array  # [S, Lo] i32, -1 padded; Lo = 0 when the batch has no penalties


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class SamplerOutput:
    token_ids: jax.Array  # [S] i32
    logprobs: jax.Array  # [S] f32; log_softmax(raw logits) at token_ids
    top_ids: jax.Array  # [S, K] i32; the K most likely tokens under the raw logits, best first
    top_logprobs: jax.Array  # [S, K] f32


# ---------------------------------------------------------------- device side


def sample(logits: jax.Array, meta: SamplingMetadata, *, num_top_logprobs: int) -> SamplerOutput:
    """One token per row. ``logits`` [S, V]; ``num_top_logprobs`` is static (0 skips the top-k pass)."""
    logits = logits.astype(jnp.float32)  # [S, V]
    lse = jax.nn.logsumexp(logits, axis=-1)  # [S]
    if num_top_logprobs:
        top_values, top_ids = lax.top_k(logits, num_top_logprobs)  # [S, K]
        top_logprobs = top_values - lse[:, None]
    else:
        top_ids = jnp.zeros((logits.shape[0], 0), jnp.int32)
        top_logprobs = jnp.zeros((logits.shape[0], 0), jnp.float32)

    x = apply_penalties(ban_tokens(logits, meta.banned_ids), meta)  # [S, V]
    greedy_ids = jnp.argmax(x, axis=-1).astype(jnp.int32)  # [S]
    is_greedy = meta.temperature < SAMPLING_EPS  # [S]
    token_ids = lax.cond(
        jnp.all(is_greedy),
        lambda: greedy_ids,
        lambda: jnp.where(is_greedy, greedy_ids, _sample_random(x, meta, is_greedy)),
    )
    logprobs = jnp.take_along_axis(logits, token_ids[:, None], axis=-1)[:, 0] - lse
    return SamplerOutput(token_ids, logprobs, top_ids.astype(jnp.int32), top_logprobs)


def ban_tokens(logits: jax.Array, banned_ids: jax.Array) -> jax.Array:
    """Set ``banned_ids`` [S, B] (-1 padded) to -inf; B = 0 compiles to nothing."""
    num_rows, vocab = logits.shape
    if banned_ids.shape[1] == 0:
        return logits
    ids = jnp.where(banned_ids < 0, vocab, banned_ids)  # out of range: dropped
    return logits.at[jnp.arange(num_rows)[:, None], ids].set(-jnp.inf, mode="drop")


def apply_penalties(logits: jax.Array, meta: SamplingMetadata) -> jax.Array:
    """vLLM's penalties: repetition over prompt+output tokens, then frequency and presence over output tokens."""
    num_rows, vocab = logits.shape
    if meta.prompt_ids.shape[1] == 0 and meta.output_ids.shape[1] == 0:
        return logits
    rows = jnp.arange(num_rows)[:, None]
    output_ids = jnp.where(meta.output_ids < 0, vocab, meta.output_ids)
    prompt_ids = jnp.where(meta.prompt_ids < 0, vocab, meta.prompt_ids)
    counts = jnp.zeros((num_rows, vocab), jnp.int32).at[rows, output_ids].add(1, mode="drop")  # [S, V]
    in_prompt = jnp.zeros((num_rows, vocab), jnp.bool_).at[rows, prompt_ids].set(True, mode="drop")  # [S, V]
    in_output = counts > 0
    rep = jnp.where(in_prompt | in_output, meta.repetition_penalty[:, None], 1.0)  # [S, V]
    logits = jnp.where(logits > 0, logits / rep, logits * rep)
    logits = logits - meta.frequency_penalty[:, None] * counts
    return logits - meta.presence_penalty[:, None] * in_output


def _sample_random(x: jax.Array, meta: SamplingMetadata, is_greedy: jax.Array) -> jax.Array:
    """Temperature, then min-p/top-k/top-p, then an inverse-CDF draw. ``x`` [S, V] -> token ids [S]."""
    vocab = x.shape[1]
    x = x / jnp.where(is_greedy, 1.0, meta.temperature)[:, None]
    uniforms = jax.vmap(_row_uniform)(meta.seeds, meta.sample_index, meta.step)  # [S] in [0, 1)
    truncates = ~is_greedy & (((meta.top_k > 0) & (meta.top_k < vocab)) | (meta.top_p < 1.0))
    return lax.cond(
        jnp.any(truncates),
        lambda: _draw_sorted(x, uniforms, meta.top_k, meta.top_p, meta.min_p),
        lambda: _draw_unsorted(x, uniforms, meta.min_p),
    )


def _row_uniform(seed: jax.Array, sample_index: jax.Array, step: jax.Array) -> jax.Array:
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), sample_index), step)
    return jax.random.uniform(key, (), jnp.float32)


def _draw_sorted(x: jax.Array, u: jax.Array, top_k: jax.Array, top_p: jax.Array, min_p: jax.Array) -> jax.Array:
    """Sort once; min-p, top-k and top-p each keep a prefix, so each row only needs its kept count."""
    num_rows, vocab = x.shape
    iota = lax.broadcasted_iota(jnp.int32, x.shape, 1)
    neg_sorted, order = lax.sort((-x, iota), dimension=1, num_keys=1)  # ascending -x = descending x
    s = -neg_sorted  # [S, V] descending
    e = jnp.exp(s - s[:, :1])  # [S, V] probabilities / p_max, descending; e[:, 0] = 1
    cs = jnp.cumsum(e, axis=1)  # [S, V]

    def at(a: jax.Array, pos: jax.Array) -> jax.Array:  # a[row, pos[row]]
        return jnp.take_along_axis(a, pos[:, None], axis=1)[:, 0]

    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    n = jnp.sum(s >= at(s, k - 1)[:, None], axis=1)  # top-k, ties at the k-th value kept (as vLLM)
    n = jnp.minimum(n, jnp.sum(e >= min_p[:, None], axis=1))  # min-p: p >= min_p * p_max
    kept_mass = at(cs, n - 1)
    # top-p over the renormalised survivors: keep while the mass strictly before a token is below top_p
    n = jnp.minimum(n, jnp.sum(cs - e < (top_p * kept_mass)[:, None], axis=1))
    target = u * at(cs, n - 1)
    pos = jnp.minimum(jnp.sum(cs <= target[:, None], axis=1), n - 1)  # first position with cs > target
    return at(order, pos)


def _draw_unsorted(x: jax.Array, u: jax.Array, min_p: jax.Array) -> jax.Array:
    """Inverse-CDF draw in vocabulary order: min-p needs no sort."""
    vocab = x.shape[1]
    e = jnp.exp(x - jnp.max(x, axis=1, keepdims=True))  # [S, V] probabilities / p_max
    cs = jnp.cumsum(jnp.where(e >= min_p[:, None], e, 0.0), axis=1)  # [S, V]
    pos = jnp.sum(cs <= (u * cs[:, -1])[:, None], axis=1)  # first position with cs > target
    # pos == vocab only when u * total rounds up to total (odds ~2^-24): fall back to the argmax, always kept.
    return jnp.where(pos < vocab, pos, jnp.argmax(x, axis=1)).astype(jnp.int32)


# ---------------------------------------------------------------- host side


def needs_penalties(seqs: Iterable[Sequence]) -> bool:
    """Whether the batch needs the penalties variant (prompt/output id arrays and a scatter over [S, V])."""
    return any(s.sampling_params.uses_penalties for s in seqs)


def penalty_width(seqs: Iterable[Sequence], *, minimum: int = 16) -> int:
    """The id-array width for the penalties variant: the longest list a penalised row needs, to a power of two.

    Only rows with a repetition penalty need their prompt; presence/frequency only look at the output.
    """
    needs = [
        max(s.num_output_tokens, s.num_prompt_tokens if s.sampling_params.repetition_penalty != 1.0 else 0)
        for s in seqs
        if s.sampling_params.uses_penalties
    ]
    return _bucket(max(needs), minimum) if needs else 0


def banned_width(seqs: Iterable[Sequence], eos_token_ids: set[int], *, minimum: int = 8) -> int:
    """The banned-id width: 0 when no row is inside its min_tokens window, else a power of two."""
    need = max((len(_banned(s, eos_token_ids)) for s in seqs), default=0)
    return _bucket(need, minimum) if need else 0


def num_top_logprobs(seqs: Iterable[Sequence]) -> int:
    """0, or MAX_LOGPROBS when any row asks for top logprobs (the host slices each row's own count)."""
    return MAX_LOGPROBS if any(s.sampling_params.logprobs for s in seqs) else 0


def build_sampling_metadata(
    seqs: Seq[Sequence],
    num_rows: int,
    *,
    with_penalties: bool,
    penalty_width: int,
    max_banned: int,
    eos_token_ids: set[int],
) -> SamplingMetadata:
    """Row i samples for ``seqs[i]``; rows past ``len(seqs)`` are greedy padding. Returns NumPy arrays."""
    if len(seqs) > num_rows:
        raise ValueError(f"{len(seqs)} sequences do not fit num_rows={num_rows}")
    width = penalty_width if with_penalties else 0
    temperature = np.zeros(num_rows, np.float32)
    top_k = np.zeros(num_rows, np.int32)
    top_p = np.ones(num_rows, np.float32)
    min_p = np.zeros(num_rows, np.float32)
    presence = np.zeros(num_rows, np.float32)
    frequency = np.zeros(num_rows, np.float32)
    repetition = np.ones(num_rows, np.float32)
    seeds = np.zeros(num_rows, np.uint32)
    sample_index = np.zeros(num_rows, np.int32)
    step = np.zeros(num_rows, np.int32)
    banned_ids = np.full((num_rows, max_banned), -1, np.int32)
    prompt_ids = np.full((num_rows, width), -1, np.int32)
    output_ids = np.full((num_rows, width), -1, np.int32)
    for i, s in enumerate(seqs):
        p = s.sampling_params
        temperature[i], top_k[i], top_p[i], min_p[i] = p.temperature, p.top_k, p.top_p, p.min_p
        seeds[i], sample_index[i], step[i] = s.sampling_seed % 2**32, s.sample_index, s.num_output_tokens
        banned = _banned(s, eos_token_ids)
        if len(banned) > max_banned:
            raise ValueError(f"seq {s.seq_id} bans {len(banned)} ids, over max_banned={max_banned}: use banned_width")
        banned_ids[i, : len(banned)] = banned
        if not p.uses_penalties:
            continue
        if not with_penalties:
            raise ValueError(f"seq {s.seq_id} uses penalties but with_penalties=False: use needs_penalties")
        presence[i], frequency[i], repetition[i] = p.presence_penalty, p.frequency_penalty, p.repetition_penalty
        prompt = s.prompt_token_ids if p.repetition_penalty != 1.0 else []
        if max(len(prompt), s.num_output_tokens) > width:
            raise ValueError(
                f"seq {s.seq_id} needs penalty width {max(len(prompt), s.num_output_tokens)}, "
                f"over penalty_width={width}: use penalty_width(seqs)"
            )
        prompt_ids[i, : len(prompt)] = prompt
        output_ids[i, : s.num_output_tokens] = s.output_token_ids
    return SamplingMetadata(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        presence_penalty=presence,
        frequency_penalty=frequency,
        repetition_penalty=repetition,
        seeds=seeds,
        sample_index=sample_index,
        step=step,
        banned_ids=banned_ids,
        prompt_ids=prompt_ids,
        output_ids=output_ids,
    )


def _banned(seq: Sequence, eos_token_ids: set[int]) -> list[int]:
    """vLLM's min_tokens: EOS (even with ignore_eos) and stop_token_ids are banned until min_tokens are out."""
    p = seq.sampling_params
    if seq.num_output_tokens >= p.min_tokens:
        return []
    return sorted(set(eos_token_ids) | set(p.stop_token_ids))


def _bucket(n: int, minimum: int) -> int:
    return max(minimum, 1 << max(n - 1, 0).bit_length())

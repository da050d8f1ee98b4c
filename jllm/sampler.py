"""The on-device sampler: a pure function of (logits, SamplingMetadata) that runs inside the engine's jit step.

vLLM V1's order: the token mask (structured output, ``allowed_token_ids``) -> min-tokens ban -> logit bias ->
penalties -> argmax for greedy rows; for random rows temperature -> min-p -> top-k -> top-p -> draw. Logprobs come
from the logits after the mask (vLLM applies the grammar's bitmask before its sampler and returns ``raw_logprobs``),
and so does the chosen token's rank over the whole vocabulary (``token_ranks``: one int32 a row, vLLM's).

Three choices keep it cheap on a GPU:
- The host knows every row's settings, so it picks the program: ``SamplingMode.GREEDY`` (argmax only), ``RANDOM``
  (temperature and min-p, no sort) or ``TRUNCATED`` (top-k / top-p too). The step never branches on device values:
  an XLA conditional makes the host wait for the GPU to reach it, which stalls the launch of every later step.
- min-p, top-k and top-p each keep a prefix of the tokens sorted by probability, so together they reduce to one
  threshold per row: one sort of the batch (values only) and one cumulative sum find it, and nothing is scattered
  back to vocabulary order.
- The draw is an inverse-CDF lookup in vocabulary order with one uniform per row, instead of ``V`` Gumbel draws.
  Its result depends only on the row's logits, settings and key, never on the mode the batch ran in.

Reproducibility: a row's uniform comes from ``fold_in(fold_in(key(seed), sample_index), step)``, so a seeded sample
draws the same tokens whatever else is in the batch, wherever its row sits, and after preemption and recompute.

The host half, ``build_sampling_metadata`` and its width helpers, turns ``Sequence``s into padded NumPy arrays; the
static widths (penalty width, banned width, top logprobs) pick the compiled variant. ``TokenConstraints`` (the
bitmask and the logit bias) travel apart from the step's other inputs, so the forward program never sees their
shapes: a batch without them has zero-width arrays, and the sampler compiles to exactly what it was before.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jllm import bad_words
from jllm.sampling import MAX_LOGIT_BIAS, MAX_LOGPROBS, SAMPLING_EPS
from jllm.structured_output import allowed_bitmask, fill_bitmask

if TYPE_CHECKING:
    from jllm.sequence import ScheduledSequence, Sequence

Array = jax.Array | np.ndarray  # NumPy when built on the host, jax.Array inside the step
SHORT_PENALTY_WIDTH = 128  # penalised rows whose lists fit this use it; longer ones the whole context


class SamplingMode(enum.StrEnum):
    """What the batch's rows need, decided on the host; a static argument of the sampler program."""

    GREEDY = "greedy"  # every row takes the argmax
    RANDOM = "random"  # some row draws; none truncates by top-k or top-p (min-p needs no sort)
    TRUNCATED = "truncated"  # some drawing row truncates by top-k or top-p: one sort of the batch


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
    draft_ids: Array  # [S, K] i32, -1 padded: the drafts to verify (jllm.spec_verify); K = 0 without speculation


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class TokenConstraints:
    """Per-row limits on the next token; zero-width arrays when no row of the batch has them (a separate compiled
    sampler, so unconstrained batches pay nothing)."""

    bitmask: Array  # [S, W] i32; W = ceil(V / 32) or 0; bit t % 32 of word t // 32 set: token t allowed
    bias_ids: Array  # [S, B] i32, -1 padded; B = 0 when no row has a logit bias
    bias_values: Array  # [S, B] f32; added to the logits of bias_ids


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class SamplerOutput:
    token_ids: jax.Array  # [S] i32; verifying K drafts a row: [S, K + 1], -1 after its tokens (jllm.spec_verify)
    logprobs: jax.Array  # [S] f32; log_softmax(raw logits) at token_ids
    ranks: jax.Array  # [S] i32 (as token_ids); token_ids' rank under those logprobs, 1 = best (token_ranks)
    top_ids: jax.Array  # [S, K] i32; the K most likely tokens under the raw logits, best first
    top_logprobs: jax.Array  # [S, K] f32


# ---------------------------------------------------------------- device side


def sample(
    logits: jax.Array,
    meta: SamplingMetadata,
    constraints: TokenConstraints | None = None,
    *,
    num_top_logprobs: int,
    mode: SamplingMode,
) -> SamplerOutput:
    """One token per row. ``logits`` [S, V]; ``num_top_logprobs`` and ``mode`` are static (0 skips the top-k pass);
    ``constraints`` None: no mask, no bias."""
    constraints = constraints or no_constraints(logits.shape[0])
    logits = apply_bitmask(logits.astype(jnp.float32), constraints.bitmask)  # [S, V]
    lse = jax.nn.logsumexp(logits, axis=-1)  # [S]
    if num_top_logprobs:
        top_values, top_ids = _top_k(logits, num_top_logprobs)  # [S, K]
        top_logprobs = top_values - lse[:, None]
    else:
        top_ids = jnp.zeros((logits.shape[0], 0), jnp.int32)
        top_logprobs = jnp.zeros((logits.shape[0], 0), jnp.float32)

    x = ban_tokens(logits, meta.banned_ids)
    x = apply_penalties(add_bias(x, constraints.bias_ids, constraints.bias_values), meta)  # [S, V]
    token_ids = jnp.argmax(x, axis=-1).astype(jnp.int32)  # [S]
    if mode is not SamplingMode.GREEDY:
        is_greedy = meta.temperature < SAMPLING_EPS  # [S]
        drawn = _sample_random(x, meta, is_greedy, token_ids, truncate=mode is SamplingMode.TRUNCATED)
        token_ids = jnp.where(is_greedy, token_ids, drawn)
    logprobs = jnp.take_along_axis(logits, token_ids[:, None], axis=-1)[:, 0] - lse
    ranks = token_ranks(logits - lse[:, None], logprobs)
    return SamplerOutput(token_ids, logprobs, ranks, top_ids.astype(jnp.int32), top_logprobs)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class PromptLogprobsOutput:
    target_logprobs: jax.Array  # [T] f32; log_softmax at each row's target (the next prompt token)
    target_ranks: jax.Array  # [T] i32; the target's rank under those logprobs, 1 = best (token_ranks)
    top_ids: jax.Array  # [T, K] i32
    top_logprobs: jax.Array  # [T, K] f32


def prompt_logprobs(logits: jax.Array, targets: jax.Array, *, num_top_logprobs: int) -> PromptLogprobsOutput:
    """Logprobs of the prompt's own next tokens, for every row; ``targets`` [T] (-1 rows are computed, then unused)."""
    logits = logits.astype(jnp.float32)  # [T, V]
    lse = jax.nn.logsumexp(logits, axis=-1)  # [T]
    target = jnp.take_along_axis(logits, jnp.maximum(targets, 0)[:, None], axis=-1)[:, 0] - lse
    ranks = token_ranks(logits - lse[:, None], target)
    top_values, top_ids = _top_k(logits, num_top_logprobs)  # [T, K]
    return PromptLogprobsOutput(target, ranks, top_ids.astype(jnp.int32), top_values - lse[:, None])


def token_ranks(logprobs: jax.Array, chosen: jax.Array) -> jax.Array:
    """vLLM's rank of each row's chosen token over the whole vocabulary (its ``batched_count_greater_than``): how
    many tokens have a logprob at least the chosen one's, itself included, so 1 = the most likely and a tie counts
    against it. A chosen token outside the top k therefore ranks past k. ``logprobs`` [N, V] (the logits less their
    logsumexp, for XLA to fuse into the count) and ``chosen`` [N] must be the same floats the reported values are."""
    return jnp.sum(logprobs >= chosen[:, None], axis=-1, dtype=jnp.int32)  # [N]


def num_prompt_logprobs(scheduled: Iterable[ScheduledSequence]) -> int | None:
    """None when no row this step needs prompt logprobs, else MAX_LOGPROBS (one compiled variant)."""
    wanted = any(
        s.seq.sampling_params.prompt_logprobs is not None and s.start < s.seq.num_prompt_tokens - 1 for s in scheduled
    )
    return MAX_LOGPROBS if wanted else None


def _top_k(x: jax.Array, k: int, chunk: int = 256) -> tuple[jax.Array, jax.Array]:
    """``lax.top_k`` in two stages: per chunk of the vocabulary, then over the chunks' winners. Same result and the
    same tie order (lower id first); on an H200 with V=152k it takes 0.2 ms instead of 0.55 at S=8, 1.9 ms instead
    of 2.8 at S=256, because one long row per thread block leaves most of the GPU idle."""
    num_rows, vocab = x.shape
    if vocab <= 16 * chunk or k > chunk:
        return lax.top_k(x, k)
    x = jnp.pad(x, ((0, 0), (0, -vocab % chunk)), constant_values=-jnp.inf).reshape(num_rows, -1, chunk)
    values, ids = lax.top_k(x, k)  # [S, V / chunk, k]
    ids = ids + (jnp.arange(x.shape[1], dtype=ids.dtype) * chunk)[None, :, None]
    values, pick = lax.top_k(values.reshape(num_rows, -1), k)  # [S, k]
    return values, jnp.take_along_axis(ids.reshape(num_rows, -1), pick, axis=1)


def ban_tokens(logits: jax.Array, banned_ids: jax.Array) -> jax.Array:
    """Set ``banned_ids`` [S, B] (-1 padded) to -inf; B = 0 compiles to nothing."""
    num_rows, vocab = logits.shape
    if banned_ids.shape[1] == 0:
        return logits
    ids = jnp.where(banned_ids < 0, vocab, banned_ids)  # out of range: dropped
    return logits.at[jnp.arange(num_rows)[:, None], ids].set(-jnp.inf, mode="drop")


def apply_bitmask(logits: jax.Array, bitmask: jax.Array) -> jax.Array:
    """-inf where the row's bit is 0; ``bitmask`` [S, ceil(V / 32)] packed int32, width 0 compiles to nothing."""
    num_rows, vocab = logits.shape
    if bitmask.shape[1] == 0:
        return logits
    bits = (bitmask[:, :, None] >> jnp.arange(32, dtype=jnp.int32)) & 1  # [S, W, 32]
    allowed = bits.reshape(num_rows, -1)[:, :vocab] != 0  # [S, V]
    return jnp.where(allowed, logits, -jnp.inf)


def add_bias(logits: jax.Array, bias_ids: jax.Array, bias_values: jax.Array) -> jax.Array:
    """OpenAI's ``logit_bias``: ``bias_values`` [S, B] added at ``bias_ids`` [S, B] (-1 padded); B = 0 is a no-op."""
    num_rows, vocab = logits.shape
    if bias_ids.shape[1] == 0:
        return logits
    ids = jnp.where(bias_ids < 0, vocab, bias_ids)  # out of range: dropped
    return logits.at[jnp.arange(num_rows)[:, None], ids].add(bias_values, mode="drop")


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


def _sample_random(
    x: jax.Array, meta: SamplingMetadata, is_greedy: jax.Array, greedy_ids: jax.Array, *, truncate: bool
) -> jax.Array:
    """Temperature, then min-p/top-k/top-p as one threshold per row, then an inverse-CDF draw. -> token ids [S]."""
    x = x / jnp.where(is_greedy, 1.0, meta.temperature)[:, None]
    e = jnp.exp(x - jnp.max(x, axis=1, keepdims=True))  # [S, V] p / p_max
    # Without top-k / top-p, min-p alone needs no sort and gives the same kept set as the sorted path.
    threshold = truncation_threshold(e, meta.top_k, meta.top_p, meta.min_p) if truncate else meta.min_p
    uniforms = jax.vmap(_row_uniform)(meta.seeds, meta.sample_index, meta.step)  # [S] in [0, 1)
    w = jnp.where(e >= threshold[:, None], e, 0.0)  # [S, V] unnormalised kept probabilities
    cs = jnp.cumsum(w, axis=1)  # [S, V], in vocabulary order: the draw never depends on the mode
    pos = jnp.sum(cs <= (uniforms * cs[:, -1])[:, None], axis=1)  # first position with cs > target
    # pos == V only if u * total rounds up to total (odds ~2^-24): take the argmax, which is always kept.
    return jnp.where(pos < x.shape[1], pos, greedy_ids).astype(jnp.int32)


def _row_uniform(seed: jax.Array, sample_index: jax.Array, step: jax.Array) -> jax.Array:
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), sample_index), step)
    return jax.random.uniform(key, (), jnp.float32)


def truncation_threshold(e: jax.Array, top_k: jax.Array, top_p: jax.Array, min_p: jax.Array) -> jax.Array:
    """The smallest kept ``e`` [S, V] (probability / p_max) per row after min-p, top-k, then top-p -> [S].

    Each truncation keeps a prefix of the descending order, so one sort and one cumulative sum give the kept count
    ``n`` and the threshold is the n-th largest value. Tokens tied with it are kept, as vLLM's top-k keeps ties.
    """
    vocab = e.shape[1]
    # e >= 0, so its bits sort like its values; integer keys take XLA's radix sort (H200, V=152k, S=256: 1.6 ms
    # against 3.0 ms for f32 keys). Sorting ~bits ascending gives descending values.
    bits = lax.bitcast_convert_type(e, jnp.uint32)
    desc = lax.bitcast_convert_type(~jnp.sort(~bits, axis=1), jnp.float32)  # [S, V]; desc[:, 0] = 1
    cs = jnp.cumsum(desc, axis=1)  # [S, V]

    def at(a: jax.Array, pos: jax.Array) -> jax.Array:  # a[row, pos[row]]
        return jnp.take_along_axis(a, pos[:, None], axis=1)[:, 0]

    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    threshold = jnp.maximum(at(desc, k - 1), min_p)  # top-k and min-p (p >= min_p * p_max)
    n = jnp.sum(desc >= threshold[:, None], axis=1)  # >= 1: desc[:, 0] = 1 >= threshold
    kept_mass = at(cs, n - 1)
    # top-p over the renormalised survivors: keep while the mass strictly before a token is below top_p
    n = jnp.minimum(n, jnp.sum(cs - desc < (top_p * kept_mass)[:, None], axis=1))
    return at(desc, n - 1)


# ---------------------------------------------------------------- host side


def needs_penalties(seqs: Iterable[Sequence]) -> bool:
    """Whether the batch needs the penalties variant (prompt/output id arrays and a scatter over [S, V])."""
    return any(s.sampling_params.uses_penalties for s in seqs)


def penalty_width(seqs: Iterable[Sequence], max_model_len: int) -> int:
    """The id-array width for the penalties variant: ``SHORT_PENALTY_WIDTH`` when every penalised row's list fits
    it, else the whole context (as a power of two). Two widths, not one per power of two: a width is part of the
    step's shapes, so a client choosing prompt lengths must not choose what gets compiled.

    Only rows with a repetition penalty need their prompt; presence/frequency only look at the output.
    """
    needs = [
        max(s.num_output_tokens, s.num_prompt_tokens if s.sampling_params.repetition_penalty != 1.0 else 0)
        for s in seqs
        if s.sampling_params.uses_penalties
    ]
    if not needs:
        return 0
    return SHORT_PENALTY_WIDTH if max(needs) <= SHORT_PENALTY_WIDTH else long_penalty_width(max_model_len)


def long_penalty_width(max_model_len: int) -> int:
    """The penalty width of a row whose lists outgrow ``SHORT_PENALTY_WIDTH``: the whole context's."""
    return _bucket(max_model_len, SHORT_PENALTY_WIDTH)


def banned_width(seqs: Iterable[Sequence], eos_token_ids: set[int], *, minimum: int = 8) -> int:
    """The banned-id width: 0 when no row is inside its min_tokens window, else a power of two (a few: the input
    door caps ``stop_token_ids`` at ``max_stop_token_ids``)."""
    need = max((len(_banned(s, eos_token_ids)) for s in seqs), default=0)
    return _bucket(need, minimum) if need else 0


def banned_cap(max_stop_token_ids: int, eos_token_ids: set[int]) -> int:
    """The banned-id width every row fits once the input door caps ``stop_token_ids`` at ``max_stop_token_ids``: the
    general sampler's, so no stop-id count a client picks is a new shape."""
    return _bucket(max_stop_token_ids + len(eos_token_ids), 8)


def needs_general(seqs: Iterable[Sequence], vocab_size: int, eos_token_ids: set[int], *, base_banned: int) -> bool:
    """Whether some row needs more than the base samplers (greedy / untruncated draws, no logprobs, penalties,
    mask or bias, and at most ``base_banned`` banned ids): then the step takes the general sampler."""
    for s in seqs:
        p = s.sampling_params
        truncates = not p.is_greedy and (0 < p.top_k < vocab_size or p.top_p < 1.0)
        constrained = (
            s.grammar is not None
            or p.allowed_token_ids is not None
            or bool(p.logit_bias or s.bad_word_ids)
            or _budgets_thinking(s)
        )
        if truncates or constrained or p.logprobs or p.uses_penalties or len(_banned(s, eos_token_ids)) > base_banned:
            return True
    return False


def sampling_mode(meta: SamplingMetadata, vocab_size: int) -> SamplingMode:
    """The cheapest program that serves every row of the host-built ``meta``; top-k >= the vocabulary is off."""
    drawing = np.asarray(meta.temperature) >= SAMPLING_EPS
    if not drawing.any():
        return SamplingMode.GREEDY
    top_k, top_p = np.asarray(meta.top_k)[drawing], np.asarray(meta.top_p)[drawing]
    if (((top_k > 0) & (top_k < vocab_size)) | (top_p < 1.0)).any():
        return SamplingMode.TRUNCATED
    return SamplingMode.RANDOM


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
    drafts: Seq[Seq[int]] = (),
    draft_width: int = 0,
) -> SamplingMetadata:
    """Row i samples for ``seqs[i]`` (verifying ``drafts[i]``, if given, in ``draft_width`` columns); rows past
    ``len(seqs)`` are greedy padding. Returns NumPy arrays."""
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
    draft_ids = np.full((num_rows, draft_width), -1, np.int32)
    for i, row in enumerate(drafts):
        draft_ids[i, : len(row)] = row
    for i, s in enumerate(seqs):
        p = s.sampling_params
        temperature[i], top_k[i], top_p[i], min_p[i] = p.temperature, p.top_k, p.top_p, p.min_p
        # A token still sampled on the device counts: the key and min_tokens follow the output's true length.
        num_output = s.num_output_tokens + s.num_pending_tokens
        seeds[i], sample_index[i], step[i] = s.sampling_seed % 2**32, s.sample_index, num_output
        banned = _banned(s, eos_token_ids)
        if len(banned) > max_banned:
            raise ValueError(f"seq {s.seq_id} bans {len(banned)} ids, over max_banned={max_banned}: use banned_width")
        banned_ids[i, : len(banned)] = banned
        if not p.uses_penalties:
            continue
        if not with_penalties:
            raise ValueError(f"seq {s.seq_id} uses penalties but with_penalties=False: use needs_penalties")
        if s.num_pending_tokens:
            raise ValueError(f"seq {s.seq_id} uses penalties, which count every output token: finish its pending step")
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
        draft_ids=draft_ids,
    )


def build_constraints(seqs: Seq[Sequence], num_rows: int, vocab_size: int) -> TokenConstraints:
    """Row i's mask and logit bias for ``seqs[i]``, always full widths (a mask word per 32 tokens, ``MAX_LOGIT_BIAS``
    biases), so which rows have them never changes a shape; a row without either allows every token. A row with a
    grammar, bad words of several tokens or a thinking budget must have its last token appended (the engine
    processes such a step before it fills the next one's mask)."""
    masked = [
        (i, s.grammar if _follows_grammar(s) else None, s.sampling_params.allowed_token_ids)
        for i, s in enumerate(seqs)
        if _is_masked(s)
    ]
    for s in seqs:
        if mask_follows_tokens(s) and s.num_pending_tokens:
            raise ValueError(f"seq {s.seq_id}'s mask needs its pending token (a grammar, bad words): finish that step")
    bitmask = fill_bitmask(masked, num_rows, vocab_size)
    for i, s in enumerate(seqs):
        if banned := bad_words.banned_next(s.bad_word_ids, s.output_token_ids):
            bitmask[i] &= ~allowed_bitmask(banned, vocab_size)
        if _budgets_thinking(s) and (forced := s.thinking.forced()) is not None:
            bitmask[i] = allowed_bitmask([forced], vocab_size)  # the reasoning's end wins over every other mask
    biases = [s.sampling_params.logit_bias or {} for s in seqs]
    bias_ids = np.full((num_rows, MAX_LOGIT_BIAS), -1, np.int32)
    bias_values = np.zeros((num_rows, MAX_LOGIT_BIAS), np.float32)
    for i, bias in enumerate(biases):
        bias_ids[i, : len(bias)] = list(bias)
        bias_values[i, : len(bias)] = list(bias.values())
    return TokenConstraints(bitmask, bias_ids, bias_values)


def no_constraints(num_rows: int) -> TokenConstraints:
    """What a batch without masks or biases carries (warm-up's and the base variants' shapes)."""
    return TokenConstraints(
        np.zeros((num_rows, 0), np.int32), np.full((num_rows, 0), -1, np.int32), np.zeros((num_rows, 0), np.float32)
    )


def _is_masked(seq: Sequence) -> bool:
    return _follows_grammar(seq) or seq.sampling_params.allowed_token_ids is not None


def mask_follows_tokens(seq: Sequence) -> bool:
    """Whether the row's next mask depends on its last token: a grammar's, a bad word of several tokens', or an
    open reasoning's under a thinking budget."""
    return _follows_grammar(seq) or bad_words.waits_for_tokens(seq.bad_word_ids) or _budgets_thinking(seq)


def _budgets_thinking(seq: Sequence) -> bool:
    return seq.thinking is not None and seq.thinking.holds and not seq.is_finished


def _follows_grammar(seq: Sequence) -> bool:
    """A finished sequence's token is dropped: its grammar, maybe complete, masks nothing."""
    return seq.grammar is not None and not seq.is_finished


def _banned(seq: Sequence, eos_token_ids: set[int]) -> list[int]:
    """vLLM's min_tokens: EOS (even with ignore_eos) and stop_token_ids are banned until min_tokens are out."""
    p = seq.sampling_params
    if seq.num_output_tokens + seq.num_pending_tokens >= p.min_tokens:
        return []
    return sorted(set(eos_token_ids) | set(p.stop_token_ids))


def _bucket(n: int, minimum: int) -> int:
    return max(minimum, 1 << max(n - 1, 0).bit_length())

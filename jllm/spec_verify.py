"""Speculative decoding's verification on the device: a row's drafts checked against the model's own choice at each
of its 1 + K positions, in one pure function of the logits (run inside the sampler program).

Greedy rows accept drafts while each equals the argmax, then emit the argmax at the first mismatch (or the bonus token
after K accepted ones): exactly the tokens decoding one at a time gives. Drawing rows use rejection sampling with the
draft's distribution one-hot (the n-gram proposer is deterministic): draft ``d`` is accepted with probability ``p(d)``
under the row's processed distribution (temperature, then min-p / top-k / top-p as ``jllm.sampler`` applies them); at
the first rejection the token is drawn from ``p`` with ``d`` removed and renormalised, which makes every emitted token
distributed as ``p`` (Leviathan et al. 2023). A row without drafts draws its one token with the very uniform, and so
gives the very token, the plain sampler would.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jllm.sampler import SamplerOutput, SamplingMetadata, SamplingMode, token_ranks, truncation_threshold
from jllm.sampling import SAMPLING_EPS


def verify(logits: jax.Array, meta: SamplingMetadata, *, mode: SamplingMode) -> SamplerOutput:
    """``logits`` [S, K + 1, V] at each row's last token and its K draft slots; ``meta.draft_ids`` [S, K] (-1 past a
    row's drafts). Returns ``token_ids`` [S, K + 1]: the accepted drafts, then the token after them, -1 after that;
    ``logprobs`` [S, K + 1] of those tokens under the raw logits and their ``ranks``; no top logprobs (refused with
    speculation)."""
    num_rows, width, vocab = logits.shape
    drafts = meta.draft_ids  # [S, K]
    has_draft = drafts >= 0
    flat = logits.astype(jnp.float32).reshape(num_rows * width, vocab)  # [N, V], N = S * (K + 1)
    greedy = jnp.argmax(flat, axis=-1).astype(jnp.int32).reshape(num_rows, width)  # [S, K + 1]
    accepts = has_draft & (drafts == greedy[:, :-1])  # [S, K]
    tokens = greedy
    if mode is not SamplingMode.GREEDY:
        is_greedy = meta.temperature < SAMPLING_EPS  # [S]
        drawn, accepted = _rejection_sample(flat, meta, drafts, truncate=mode is SamplingMode.TRUNCATED)
        accepts = jnp.where(is_greedy[:, None], accepts, accepted)
        tokens = jnp.where(is_greedy[:, None], greedy, drawn)
    num_accepted = jnp.sum(jnp.cumprod(accepts, axis=1), axis=1)  # [S]: the leading run of accepted drafts
    position = jnp.arange(width)[None, :]
    tokens = jnp.where(position <= num_accepted[:, None], tokens, -1)  # drafts before it, then its own token
    lse = jax.nn.logsumexp(flat, axis=-1).reshape(num_rows, width)
    picked = jnp.take_along_axis(flat, jnp.maximum(tokens, 0).reshape(-1, 1), axis=-1).reshape(num_rows, width)
    logprobs = picked - lse
    ranks = token_ranks(flat - lse.reshape(-1, 1), logprobs.reshape(-1)).reshape(num_rows, width)
    empty = jnp.zeros((num_rows, 0), jnp.int32)
    return SamplerOutput(tokens, logprobs, ranks, empty, empty.astype(jnp.float32))


def _rejection_sample(
    flat: jax.Array, meta: SamplingMetadata, drafts: jax.Array, *, truncate: bool
) -> tuple[jax.Array, jax.Array]:
    """(tokens [S, K + 1], accepted [S, K]): at position j, the draft where it is accepted (probability p(draft)),
    else a draw from p without the draft (p itself past the drafts: the bonus token)."""
    num_rows, num_drafts = drafts.shape
    width, vocab = num_drafts + 1, flat.shape[1]
    # each row's settings at each of its positions, [N]
    temperature, top_k, top_p, min_p = (
        jnp.repeat(a, width) for a in (meta.temperature, meta.top_k, meta.top_p, meta.min_p)
    )
    x = flat / jnp.maximum(temperature, SAMPLING_EPS)[:, None]
    e = jnp.exp(x - jnp.max(x, axis=1, keepdims=True))  # [N, V] p / p_max
    threshold = truncation_threshold(e, top_k, top_p, min_p) if truncate else min_p
    w = jnp.where(e >= threshold[:, None], e, 0.0).reshape(num_rows, width, vocab)  # unnormalised kept p
    draft_col = jnp.concatenate([drafts, jnp.full((num_rows, 1), -1, drafts.dtype)], axis=1)  # [S, K + 1]
    p_draft = jnp.take_along_axis(w, jnp.maximum(draft_col, 0)[..., None], axis=-1)[..., 0] / jnp.sum(w, axis=-1)
    draw_u, accept_u = _uniforms(meta, width)  # [S, K + 1] each
    accepted = (drafts >= 0) & (accept_u[:, :-1] < p_draft[:, :-1])  # [S, K]
    # the residual distribution max(p - onehot(draft), 0) ∝ p without the draft, where a draft stands
    vocab_ids = jnp.arange(vocab)[None, None, :]
    residual = jnp.where(vocab_ids == draft_col[..., None], 0.0, w)  # [S, K + 1, V]
    cs = jnp.cumsum(residual, axis=-1)
    pos = jnp.sum(cs <= (draw_u * cs[..., -1])[..., None], axis=-1)  # first position with cs > target
    fallback = jnp.argmax(w, axis=-1)  # pos == V: rounding, or nothing left but the draft
    drawn = jnp.where(pos < vocab, pos, fallback)
    tokens = jnp.where(jnp.pad(accepted, ((0, 0), (0, 1))), draft_col, drawn)  # the last position: always drawn
    return tokens.astype(jnp.int32), accepted


def _uniforms(meta: SamplingMetadata, width: int) -> tuple[jax.Array, jax.Array]:
    """Per row and position j: the draw's uniform, the plain sampler's for output token ``step + j`` (so a row
    without drafts draws what it would without speculation), and the acceptance test's, from the same key folded
    once more."""

    def row(seed: jax.Array, sample_index: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
        base = jax.random.fold_in(jax.random.key(seed), sample_index)
        keys = jax.vmap(lambda j: jax.random.fold_in(base, step + j))(jnp.arange(width))
        draw = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys)
        accept = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 1), (), jnp.float32))(keys)
        return draw, accept

    return jax.vmap(row)(meta.seeds, meta.sample_index, meta.step)

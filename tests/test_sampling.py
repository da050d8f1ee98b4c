"""SamplingParams validation and the device sampler against NumPy references (vLLM V1 semantics), on the CPU."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
from scipy.special import log_softmax, softmax

from jllm.sampler import (
    SamplingMetadata,
    SamplingMode,
    _top_k,
    apply_penalties,
    banned_width,
    build_constraints,
    build_sampling_metadata,
    needs_penalties,
    num_top_logprobs,
    penalty_width,
    prompt_logprobs,
    sample,
    sampling_mode,
    truncation_threshold,
)
from jllm.sampling import MAX_LOGPROBS, SamplingParams, generation_defaults
from jllm.sequence import Sequence

_SAMPLE_IN_MODE = jax.jit(sample, static_argnames=("num_top_logprobs", "mode"))


def SAMPLE(logits: np.ndarray, meta: SamplingMetadata, *, num_top_logprobs: int, mode: SamplingMode | None = None):
    """The sampler in the mode the runner would pick for ``meta`` (or the one given)."""
    mode = mode or sampling_mode(meta, np.shape(logits)[1])
    return _SAMPLE_IN_MODE(logits, meta, num_top_logprobs=num_top_logprobs, mode=mode)


EOS = 2


def _seq(params: SamplingParams, *, prompt=(5, 6, 7), output=(), seed=0, sample_index=0, seq_id=0) -> Sequence:
    return Sequence(
        seq_id=seq_id,
        request_id=f"r{seq_id}",
        sample_index=sample_index,
        prompt_token_ids=list(prompt),
        sampling_params=params,
        arrival_time=0.0,
        sampling_seed=seed,
        output_token_ids=list(output),
    )


def _metadata(seqs: list[Sequence], num_rows: int | None = None) -> SamplingMetadata:
    """What the runner does: static widths from the helpers, then the padded arrays."""
    return build_sampling_metadata(
        seqs,
        num_rows or len(seqs),
        with_penalties=needs_penalties(seqs),
        penalty_width=penalty_width(seqs, 4096),
        max_banned=banned_width(seqs, {EOS}),
        eos_token_ids={EOS},
    )


def _raw_metadata(num_rows: int, **fields: object) -> SamplingMetadata:
    """Metadata for many rows without building Sequences; scalars broadcast over rows."""
    base = dict(
        temperature=np.ones(num_rows, np.float32),
        top_k=np.zeros(num_rows, np.int32),
        top_p=np.ones(num_rows, np.float32),
        min_p=np.zeros(num_rows, np.float32),
        presence_penalty=np.zeros(num_rows, np.float32),
        frequency_penalty=np.zeros(num_rows, np.float32),
        repetition_penalty=np.ones(num_rows, np.float32),
        seeds=np.arange(num_rows, dtype=np.uint32),
        sample_index=np.zeros(num_rows, np.int32),
        step=np.zeros(num_rows, np.int32),
        banned_ids=np.full((num_rows, 0), -1, np.int32),
        prompt_ids=np.full((num_rows, 0), -1, np.int32),
        output_ids=np.full((num_rows, 0), -1, np.int32),
        draft_ids=np.full((num_rows, 0), -1, np.int32),
    )
    for name, value in fields.items():
        base[name] = np.broadcast_to(np.asarray(value, base[name].dtype), base[name].shape).copy()
    return SamplingMetadata(**base)


def _logits(rng: np.random.Generator, rows: int, vocab: int, scale: float = 2.0) -> np.ndarray:
    return (rng.standard_normal((rows, vocab)) * scale).astype(np.float32)


def _ref_truncate(logits: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """vLLM V1 literally: temperature -> min-p -> top-k (ties kept) -> top-p on an ascending sort. -inf = dropped."""
    x = logits.astype(np.float64) / temperature
    p = softmax(x)
    x = np.where(p < min_p * p.max(), -np.inf, x)
    if top_k > 0:
        x = np.where(x < np.sort(x)[::-1][min(top_k, x.size) - 1], -np.inf, x)
    if top_p < 1.0:
        order = np.argsort(x, kind="stable")
        drop = np.cumsum(softmax(x[order])) <= 1 - top_p
        drop[-1] = False
        x[order[drop]] = -np.inf
    return x


def _ref_penalties(logits, prompt, output, presence, frequency, repetition) -> np.ndarray:
    vocab = logits.shape[0]
    counts = np.bincount(np.asarray(output, np.int64), minlength=vocab)[:vocab]
    seen = (counts > 0) | np.isin(np.arange(vocab), prompt)
    rep = np.where(seen, repetition, 1.0)
    out = np.where(logits > 0, logits / rep, logits * rep)
    return out - frequency * counts - presence * (counts > 0)


# ---------------------------------------------------------------- SamplingParams


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("temperature", -1.0, "[0, 3.4e+38]"),
        ("temperature", float("nan"), "[0, 3.4e+38]"),
        ("top_p", 0.0, "[1.18e-38, 1]"),
        ("top_p", 1.5, "[1.18e-38, 1]"),
        ("top_k", -2, "0 or -1"),
        ("top_k", 2.5, "0 or -1"),
        ("min_p", 1.5, "[0, 1]"),
        ("presence_penalty", 2.5, "[-2, 2]"),
        ("frequency_penalty", -3.0, "[-2, 2]"),
        ("repetition_penalty", 0.0, "[1.18e-38, 3.4e+38]"),
        ("n", 0, ">= 1"),
        ("max_tokens", 0, "at least 1"),
        ("min_tokens", -1, ">= 0"),
        ("logprobs", MAX_LOGPROBS + 1, f"[0, {MAX_LOGPROBS}]"),
        ("prompt_logprobs", -1, f"[0, {MAX_LOGPROBS}]"),
        ("stop", [""], "non-empty"),
        ("stop_token_ids", [-1], "non-negative"),
    ],
)
def test_invalid_sampling_params_name_field_value_and_allowed_range(field, value, allowed):
    with pytest.raises(ValueError) as info:
        SamplingParams(**{field: value})
    message = str(info.value)
    assert message.startswith(field) and repr(value) in message and allowed in message, message


def test_min_tokens_above_max_tokens_is_rejected_and_greedy_n_accepted():
    with pytest.raises(ValueError, match=r"min_tokens must be <= max_tokens=4, got 5"):
        SamplingParams(max_tokens=4, min_tokens=5)
    SamplingParams(max_tokens=None, min_tokens=10_000)  # no limit: fine
    assert SamplingParams(n=3, temperature=0.0).n == 3  # equal samples, as OpenAI and vLLM return them


@pytest.mark.parametrize(
    "field, value",
    [
        ("guided_decoding", {"regex": "a+"}),
        ("logits_processors", [lambda ids, logits: logits]),
        ("logprob_token_ids", [3]),
        ("extra_args", {"plugin_key": 1}),
        ("flat_logprobs", True),
        ("skip_reading_prefix_cache", True),
    ],
)
def test_vllm_arguments_jllm_cannot_honour_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=rf"^{field} is not supported by jllm yet"):
        SamplingParams(**{field: value})
    SamplingParams(**{field: None})  # asking for nothing is fine
    assert SamplingParams(flat_logprobs=False).flat_logprobs is False  # vLLM's default: nothing asked


def test_best_of_is_vllm_s_and_only_n_itself_is_taken():
    """vLLM's best_of had been an unexpected keyword argument; the server takes it equal to n, so does this."""
    assert SamplingParams(n=2, best_of=2).n == 2
    assert SamplingParams(best_of=None).best_of is None
    with pytest.raises(ValueError, match=r"^best_of=3 is not supported: it must equal n=2 or be left out"):
        SamplingParams(n=2, best_of=3)
    with pytest.raises(ValueError, match=r"^best_of must be an integer >= n=2, got 1"):
        SamplingParams(n=2, best_of=1)
    with pytest.raises(ValueError, match=r"^best_of must be an integer >= n=1, got '2'"):
        SamplingParams(best_of="2")


def test_truncate_prompt_tokens_and_special_token_spacing_are_checked():
    assert SamplingParams(truncate_prompt_tokens=-1).truncate_prompt_tokens == -1
    with pytest.raises(ValueError, match=r"^truncate_prompt_tokens must be at least 1, or -1"):
        SamplingParams(truncate_prompt_tokens=0)
    with pytest.raises(ValueError, match=r"^spaces_between_special_tokens must be true"):
        SamplingParams(spaces_between_special_tokens=False)


def test_sampling_params_normalise_like_vllm():
    p = SamplingParams(stop="###", stop_token_ids=[7, 7, 3], top_k=-1, seed=-1)
    assert p.stop == ["###"] and p.stop_token_ids == [7, 3] and p.top_k == 0 and p.seed is None
    assert SamplingParams().stop == [] and SamplingParams().stop_token_ids == []
    greedy = SamplingParams(temperature=1e-6, top_p=0.5, top_k=3, min_p=0.2)
    assert greedy.is_greedy and (greedy.top_p, greedy.top_k, greedy.min_p) == (1.0, 0, 0.0)
    assert not SamplingParams(temperature=1e-5).is_greedy
    assert SamplingParams(temperature=1e-3).temperature == pytest.approx(1e-2)  # raised: logits / 1e-3 overflow


# ---------------------------------------------------------------- truncation masks


TRUNCATIONS = [  # (temperature, top_k, top_p, min_p)
    (1.0, 5, 1.0, 0.0),
    (1.0, 1, 1.0, 0.0),
    (0.7, 0, 0.5, 0.0),
    (1.3, 0, 0.9, 0.0),
    (1.0, 0, 1.0, 0.1),
    (0.8, 10, 0.8, 0.05),
    (1.0, 64, 1.0, 0.0),
    (1.0, 100, 0.95, 0.0),
    (1.0, 0, 1.0, 0.0),
    (0.5, 3, 0.3, 0.2),
    (2.0, 20, 0.6, 0.3),
]


def test_truncation_keeps_the_same_tokens_as_vllm():
    rng = np.random.default_rng(0)
    vocab = 64
    logits = _logits(rng, len(TRUNCATIONS), vocab)
    temperature, top_k, top_p, min_p = (np.array(c) for c in zip(*TRUNCATIONS, strict=True))
    x = logits / temperature[:, None]
    e = np.exp(x - x.max(axis=1, keepdims=True)).astype(np.float32)
    threshold = np.asarray(
        jax.jit(truncation_threshold)(e, top_k.astype(np.int32), top_p.astype(np.float32), min_p.astype(np.float32))
    )
    for row, params in enumerate(TRUNCATIONS):
        expected = np.flatnonzero(np.isfinite(_ref_truncate(logits[row], *params)))
        np.testing.assert_array_equal(np.flatnonzero(e[row] >= threshold[row]), expected, err_msg=str(params))


@pytest.mark.parametrize("params", [(0.7, 0, 1.0, 0.0), (1.0, 5, 0.8, 0.0), (1.0, 0, 1.0, 0.15), (0.9, 0, 0.7, 0.0)])
def test_sampling_frequencies_match_the_truncated_softmax(params):
    """20,000 seeds on a 16-token vocabulary: each frequency within 0.015 (over 4 sigma) of vLLM's distribution."""
    rng = np.random.default_rng(1)
    vocab, draws = 16, 20_000
    row = _logits(rng, 1, vocab, scale=1.0)[0]
    temperature, top_k, top_p, min_p = params
    expected = softmax(_ref_truncate(row, *params))
    meta = _raw_metadata(draws, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    tokens = np.asarray(SAMPLE(np.broadcast_to(row, (draws, vocab)), meta, num_top_logprobs=0).token_ids)
    freq = np.bincount(tokens, minlength=vocab) / draws
    assert np.all(freq[expected == 0] == 0), "sampled a truncated token"
    np.testing.assert_allclose(freq, expected, atol=0.015)


def test_top_k_1_and_temperature_0_are_argmax():
    rng = np.random.default_rng(2)
    rows, vocab = 32, 1000
    logits = _logits(rng, rows, vocab)
    argmax = logits.argmax(axis=1)
    top1 = SAMPLE(logits, _raw_metadata(rows, temperature=1.5, top_k=1), num_top_logprobs=0)
    greedy = SAMPLE(logits, _raw_metadata(rows, temperature=0.0), num_top_logprobs=0)
    tiny = SAMPLE(logits, _raw_metadata(rows, temperature=1e-6, top_p=0.5), num_top_logprobs=0)
    for out in (top1, greedy, tiny):
        np.testing.assert_array_equal(np.asarray(out.token_ids), argmax)


# ---------------------------------------------------------------- penalties and bans


def test_penalties_match_vllm():
    rng = np.random.default_rng(3)
    vocab = 50
    cases = [  # (presence, frequency, repetition, prompt, output)
        (0.5, 0.3, 1.3, [1, 4, 4, 9], [4, 7, 7, 7, 11]),
        (0.0, 0.0, 0.7, [3, 8], [8, 20, 21]),
        (-1.0, 0.0, 1.0, list(range(30)), [0, 0, 5]),  # presence only: the prompt is not sent
        (0.0, 1.5, 1.0, [2], [49, 49, 1, 1, 1]),
        (0.0, 0.0, 1.0, [1, 2, 3], [4, 5]),  # no penalties in a penalties batch
    ]
    seqs = [
        _seq(
            SamplingParams(presence_penalty=a, frequency_penalty=b, repetition_penalty=c), prompt=p, output=o, seq_id=i
        )
        for i, (a, b, c, p, o) in enumerate(cases)
    ]
    meta = _metadata(seqs, num_rows=8)
    logits = _logits(rng, 8, vocab)
    got = np.asarray(jax.jit(apply_penalties)(logits, meta))
    for row, (a, b, c, p, o) in enumerate(cases):
        np.testing.assert_allclose(got[row], _ref_penalties(logits[row], p, o, a, b, c), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got[len(cases) :], logits[len(cases) :])  # padding rows untouched


def test_greedy_with_penalties_picks_the_penalised_argmax():
    rng = np.random.default_rng(4)
    vocab = 20
    logits = _logits(rng, 1, vocab)
    top = int(logits[0].argmax())
    params = SamplingParams(temperature=0.0, repetition_penalty=1.5, frequency_penalty=2.0, presence_penalty=2.0)
    seq = _seq(params, output=[top, top])
    expected = _ref_penalties(logits[0], seq.prompt_token_ids, [top, top], 2.0, 2.0, 1.5).argmax()
    assert expected != top
    assert int(SAMPLE(logits, _metadata([seq]), num_top_logprobs=0).token_ids[0]) == expected


def test_min_tokens_bans_eos_and_stop_tokens_until_reached():
    rng = np.random.default_rng(5)
    vocab, rows = 32, 64
    logits = _logits(rng, rows, vocab, scale=1.0)
    logits[:, EOS] += 8.0  # EOS and the stop token would win almost every draw
    logits[:, 9] += 8.0
    params = [SamplingParams(temperature=t, min_tokens=3, stop_token_ids=[9], ignore_eos=True) for t in (0.0, 1.0)]
    seqs = [_seq(params[i % 2], output=[1, 1], seed=i, seq_id=i) for i in range(rows)]
    tokens = np.asarray(SAMPLE(logits, _metadata(seqs), num_top_logprobs=0).token_ids)
    assert not np.isin(tokens, [EOS, 9]).any()
    assert banned_width(seqs, {EOS}) == 8
    done = [_seq(params[i % 2], output=[1, 1, 1], seed=i, seq_id=i) for i in range(rows)]
    assert banned_width(done, {EOS}) == 0
    tokens = np.asarray(SAMPLE(logits, _metadata(done), num_top_logprobs=0).token_ids)
    assert np.isin(tokens, [EOS, 9]).mean() > 0.9


# ---------------------------------------------------------------- logprobs


def test_logprobs_are_raw_log_softmax_at_the_sampled_token_and_top_k():
    rng = np.random.default_rng(6)
    vocab, k = 5000, 5  # over 16 chunks of 256: the two-stage top-k runs
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.6, top_p=0.9, logprobs=3),
        SamplingParams(temperature=1.2, repetition_penalty=1.4, presence_penalty=0.5, min_tokens=4),
        SamplingParams(temperature=1.0, top_k=7, min_p=0.1, logprobs=5),
    ]
    seqs = [_seq(p, output=[3, 4], seed=10 + i, seq_id=i) for i, p in enumerate(params)]
    logits = _logits(rng, 6, vocab)
    assert num_top_logprobs(seqs) == MAX_LOGPROBS and num_top_logprobs(seqs[:1]) == 0
    out = SAMPLE(logits, _metadata(seqs, num_rows=6), num_top_logprobs=k)
    ref = log_softmax(logits.astype(np.float64), axis=1)
    tokens = np.asarray(out.token_ids)
    np.testing.assert_allclose(np.asarray(out.logprobs), ref[np.arange(6), tokens], atol=1e-5)
    top = np.argsort(-ref, axis=1)[:, :k]
    np.testing.assert_array_equal(np.asarray(out.top_ids), top)
    np.testing.assert_allclose(np.asarray(out.top_logprobs), np.take_along_axis(ref, top, axis=1), atol=1e-5)
    assert out.top_ids.dtype == np.int32 and out.token_ids.dtype == np.int32
    empty = SAMPLE(logits, _metadata(seqs, num_rows=6), num_top_logprobs=0)
    assert empty.top_ids.shape == (6, 0) and empty.top_logprobs.shape == (6, 0)


@pytest.mark.parametrize("vocab", [4097 * 2, 128 * 256])
def test_two_stage_top_k_matches_lax_top_k_with_ties(vocab):
    rng = np.random.default_rng(9)
    x = np.round(_logits(rng, 3, vocab), 1)  # many ties
    x[1, :] = -np.inf
    x[1, [7, vocab - 1]] = 1.0
    values, ids = jax.jit(_top_k, static_argnums=1)(x, 20)
    ref_values, ref_ids = jax.lax.top_k(x, 20)
    np.testing.assert_array_equal(np.asarray(values), np.asarray(ref_values))
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(ref_ids))


def _ref_ranks(logits: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """vLLM's rank of ``chosen`` [N] in each row of ``logits`` [N, V] by a float32 log-softmax: the tokens whose
    logprob is at least the chosen one's, itself included (its ``batched_count_greater_than``, ``>=``)."""
    x = logits.astype(np.float32)
    top = x.max(axis=1, keepdims=True)
    logprobs = x - (top + np.log(np.exp(x - top).sum(axis=1, keepdims=True, dtype=np.float32)))
    return (logprobs >= logprobs[np.arange(len(x)), chosen][:, None]).sum(axis=1)


def test_the_sampled_token_s_rank_is_over_the_whole_vocabulary_under_the_reported_logprobs():
    """Drawn tokens land far outside the top k; a logit bias or a penalty moves the token the raw logprobs rank
    low, and the rank stays the raw one, as the logprob reported beside it; a mask's -inf tokens rank nowhere."""
    rng = np.random.default_rng(12)
    vocab, k = 5000, 5
    drawing = [SamplingParams(temperature=2.0, logprobs=k) for _ in range(8)]
    params = drawing + [
        SamplingParams(temperature=0.0, logprobs=k),
        SamplingParams(temperature=0.0, logprobs=k, logit_bias={77: 100.0}),
        SamplingParams(temperature=0.0, logprobs=0, repetition_penalty=3.0),
        SamplingParams(temperature=1.0, top_k=50, logprobs=k),
        SamplingParams(temperature=0.0, logprobs=k, allowed_token_ids=[11, 12, 13]),
    ]
    logits = _logits(rng, len(params), vocab)
    penalised = int(logits[10].argmax())
    seqs = [_seq(p, output=[penalised] if i == 10 else [], seed=i, seq_id=i) for i, p in enumerate(params)]
    constraints = build_constraints(seqs, len(seqs), vocab)
    meta = _metadata(seqs)
    out = _SAMPLE_IN_MODE(logits, meta, constraints, num_top_logprobs=k, mode=sampling_mode(meta, vocab))
    tokens, ranks = np.asarray(out.token_ids), np.asarray(out.ranks)
    masked = logits.copy()
    masked[-1, [t for t in range(vocab) if t not in (11, 12, 13)]] = -np.inf
    assert ranks.dtype == np.int32 and ranks.shape == (len(params),)
    np.testing.assert_array_equal(ranks, _ref_ranks(masked, tokens))
    assert (ranks[:8] > k).sum() >= 4  # most drawn tokens are past the top 5 at this temperature
    assert tokens[9] == 77 and ranks[9] > 100  # the bias picked it; its raw rank is far down
    assert tokens[10] != penalised and ranks[10] >= 2  # the penalty moved the argmax off the raw best
    assert ranks[-1] <= 3  # three tokens allowed
    np.testing.assert_allclose(
        np.asarray(out.logprobs), log_softmax(masked, axis=1)[np.arange(len(params)), tokens], atol=1e-5
    )


def test_a_tie_counts_against_the_sampled_token_s_rank_as_vllm_s():
    """vLLM counts the tokens at least as likely (``>=``): an argmax tied with two others ranks 3, not 1."""
    rng = np.random.default_rng(13)
    logits = np.round(_logits(rng, 6, 3000) * 2) / 2  # a grid of 0.5: many ties
    logits[0, [10, 20, 30]] = logits[0].max() + 1.0
    meta = _raw_metadata(6, temperature=[0.0, 1.5, 1.5, 0.0, 1.5, 1.5])
    out = SAMPLE(logits, meta, num_top_logprobs=3)
    tokens, ranks = np.asarray(out.token_ids), np.asarray(out.ranks)
    assert tokens[0] == 10 and ranks[0] == 3 and np.asarray(out.top_ids)[0].tolist() == [10, 20, 30]
    np.testing.assert_array_equal(ranks, _ref_ranks(logits, tokens))


def test_prompt_tokens_rank_over_the_whole_vocabulary_ties_included():
    rng = np.random.default_rng(14)
    rows, vocab, k = 12, 5000, MAX_LOGPROBS
    logits = _logits(rng, rows, vocab)
    logits[:4] = np.round(logits[:4] * 2) / 2  # ties
    targets = rng.integers(0, vocab, rows).astype(np.int32)
    targets[0] = int(logits[0].argmax())  # the best, maybe tied
    targets[-1] = -1  # a padding row: computed, never read
    out = jax.jit(prompt_logprobs, static_argnames="num_top_logprobs")(logits, targets, num_top_logprobs=k)
    ranks = np.asarray(out.target_ranks)
    assert ranks.dtype == np.int32 and ranks.shape == (rows,)
    np.testing.assert_array_equal(ranks[:-1], _ref_ranks(logits[:-1], targets[:-1]))
    assert (ranks[4:-1] > k).all()  # random targets in 5000 tokens: past the top 20
    assert ranks[0] == (logits[0] == logits[0].max()).sum()
    np.testing.assert_allclose(
        np.asarray(out.target_logprobs)[:-1], log_softmax(logits, axis=1)[np.arange(rows - 1), targets[:-1]], atol=1e-5
    )


# ---------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("target", [SamplingParams(temperature=0.9, top_p=0.9), SamplingParams(temperature=1.0)])
def test_seeded_row_reproduces_whatever_the_batch_and_row(target):
    """The target row draws the same tokens alone-ish, moved, next to greedy rows, or next to rows that force a sort."""
    rng = np.random.default_rng(7)
    vocab = 500
    row = _logits(rng, 1, vocab, scale=0.5)[0]  # flat enough that draws vary
    others = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.1, top_k=40), SamplingParams()]

    def draws(position: int, batch: int, other: SamplingParams) -> list[int]:
        tokens = []
        for step in range(6):
            seqs = [_seq(other, output=[1] * step, seed=1000 + i, seq_id=i) for i in range(batch)]
            seqs[position] = _seq(target, output=[1] * step, seed=42, sample_index=1, seq_id=99)
            logits = _logits(rng, batch + 2, vocab)
            logits[position] = row
            out = SAMPLE(logits, _metadata(seqs, num_rows=batch + 2), num_top_logprobs=0)
            tokens.append(int(out.token_ids[position]))
        return tokens

    reference = draws(0, 1, others[0])
    assert len(set(reference)) > 1
    for (position, batch), other in itertools.product([(0, 3), (2, 3), (5, 8)], others):
        assert draws(position, batch, other) == reference, (position, batch, other)


def test_sample_index_and_seed_change_the_draws():
    rng = np.random.default_rng(8)
    rows, vocab = 4, 1000
    logits = np.broadcast_to(_logits(rng, 1, vocab, scale=0.3), (rows, vocab))
    meta = _raw_metadata(rows, seeds=[5, 5, 5, 6], sample_index=[0, 0, 1, 0])
    draws = np.stack(
        [
            np.asarray(
                SAMPLE(logits, _raw_metadata(rows, **{**vars(meta), "step": step}), num_top_logprobs=0).token_ids
            )
            for step in range(8)
        ]
    )  # [steps, rows]
    np.testing.assert_array_equal(draws[:, 0], draws[:, 1])  # same seed, index and step: same tokens
    assert (draws[:, 0] != draws[:, 2]).sum() >= 6  # another sample of the same request
    assert (draws[:, 0] != draws[:, 3]).sum() >= 6  # another seed
    assert len(set(draws[:, 0])) > 1  # and the step moves the key


def test_mode_is_the_cheapest_that_serves_every_row_and_never_changes_a_token():
    """Greedy rows, min-p rows and top-k >= vocab rows need no sort; any mode that serves a batch gives its tokens."""
    rng = np.random.default_rng(10)
    rows, vocab = 6, 300
    logits = _logits(rng, rows, vocab, scale=0.5)
    cases = [
        (_raw_metadata(rows, temperature=0.0), SamplingMode.GREEDY),
        (_raw_metadata(rows, temperature=[0.0, 0.8, 1.0, 0.0, 1.2, 0.7], min_p=0.05), SamplingMode.RANDOM),
        (_raw_metadata(rows, temperature=0.9, top_k=vocab), SamplingMode.RANDOM),
        (_raw_metadata(rows, temperature=[0.0, 0.0, 0.0, 0.0, 0.0, 1.0], top_p=0.9), SamplingMode.TRUNCATED),
        (
            _raw_metadata(rows, temperature=[0.0, 0.0, 0.0, 0.0, 0.0, 1.0], top_k=[5, 0, 0, 0, 0, 0]),
            SamplingMode.RANDOM,
        ),
    ]
    order = list(SamplingMode)
    for meta, expected in cases:
        assert sampling_mode(meta, vocab) is expected
        tokens = [
            np.asarray(SAMPLE(logits, meta, num_top_logprobs=0, mode=mode).token_ids)
            for mode in order[order.index(expected) :]
        ]
        for other in tokens[1:]:
            np.testing.assert_array_equal(other, tokens[0])


# ---------------------------------------------------------------- host helpers


def test_static_widths_and_metadata_checks():
    rep = SamplingParams(repetition_penalty=1.2)
    pres = SamplingParams(presence_penalty=0.4)
    plain = SamplingParams()
    assert not needs_penalties([_seq(plain)]) and penalty_width([_seq(plain)], 1000) == 0
    assert penalty_width([_seq(rep, prompt=range(200))], 1000) == 1024  # the prompt counts for repetition
    assert penalty_width([_seq(pres, prompt=range(200), output=[1, 2, 3])], 1000) == 128  # the output for presence
    assert penalty_width([_seq(pres, output=range(40)), _seq(plain, prompt=range(500))], 1000) == 128
    with pytest.raises(ValueError, match="with_penalties=False"):
        build_sampling_metadata(
            [_seq(rep)], 2, with_penalties=False, penalty_width=0, max_banned=0, eos_token_ids={EOS}
        )
    with pytest.raises(ValueError, match="penalty_width=16"):
        build_sampling_metadata(
            [_seq(rep, prompt=range(20))], 2, with_penalties=True, penalty_width=16, max_banned=0, eos_token_ids=set()
        )
    with pytest.raises(ValueError, match="max_banned=0"):
        build_sampling_metadata(
            [_seq(SamplingParams(min_tokens=2))],
            1,
            with_penalties=False,
            penalty_width=0,
            max_banned=0,
            eos_token_ids={EOS},
        )
    meta = _metadata([_seq(SamplingParams(temperature=0.5, top_k=3), seed=2**40 + 7, sample_index=2, output=[1])], 4)
    assert meta.seeds.dtype == np.uint32 and meta.seeds[0] == 7 and meta.step[0] == 1 and meta.sample_index[0] == 2
    np.testing.assert_array_equal(meta.temperature, [0.5, 0, 0, 0])  # padding rows are greedy
    assert meta.prompt_ids.shape == (4, 0) and meta.banned_ids.shape == (4, 0)


@pytest.mark.parametrize("mode", list(SamplingMode))
def test_sampler_has_no_device_control_flow_on_gpu(mode):
    """Lowered for CUDA, no mode holds an XLA conditional or loop: each makes the host wait for the GPU before it can
    launch what follows, which would stall the launch of the next step."""
    rows, vocab = 4, 1000
    logits = _logits(np.random.default_rng(11), rows, vocab)
    meta = _raw_metadata(rows, temperature=0.8, top_p=0.9)
    text = _SAMPLE_IN_MODE.trace(logits, meta, num_top_logprobs=5, mode=mode).lower(lowering_platforms=("cuda",))
    text = text.as_text()
    assert not [op for op in ("stablehlo.while", "stablehlo.case", "stablehlo.if") if op in text]


def test_generation_config_defaults_are_vllm_s_keys_with_max_new_tokens_as_max_tokens():
    config = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": None, "max_new_tokens": 512, "do_sample": True}
    config |= {"bos_token_id": 1, "eos_token_id": [2, 3], "repetition_penalty": 1.05}
    assert generation_defaults(config) == {
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
        "repetition_penalty": 1.05,
        "max_tokens": 512,
    }
    assert generation_defaults({"eos_token_id": 2}) == {}


def test_a_bad_generation_config_value_is_refused_naming_the_file():
    with pytest.raises(ValueError, match=r"generation_config.json: top_p must be in .*, got 1.5"):
        generation_defaults({"top_p": 1.5})

"""Speculative decoding's plain parts: the n-gram proposer, ``speculative_config``'s checks, the requests refused, the
scheduler's drafts and their rollback, and the device verification (greedy exactness, the rejection sampler's
distribution). No model: the engine runs are tests/test_speculative_engine.py."""

from __future__ import annotations

import argparse
import dataclasses
import itertools

import jax
import numpy as np
import pytest
from fake_runner import fake_engine
from server_utils import RunningServer, http

from jllm.block_manager import BlockManager
from jllm.cli import add_engine_options
from jllm.config import ConfigError, load_config
from jllm.errors import InputError
from jllm.sampler import SamplingMode, sample
from jllm.sampling import SamplingParams
from jllm.scheduler import Scheduler
from jllm.sequence import ScheduledSequence, SchedulerOutput, Sequence, SequenceStatus
from jllm.spec_verify import verify as verify_eagerly
from jllm.speculative import NgramProposer, NgramSpec, check_request, propose

EOS = 2
verify = jax.jit(verify_eagerly, static_argnames="mode")  # one compile, not one per operation
SPEC = NgramSpec(num_speculative_tokens=3, prompt_lookup_min=1, prompt_lookup_max=3)
_ids = itertools.count()


# ---------------------------------------------------------------- the proposer


def test_propose_takes_the_longest_ngram_then_its_earliest_occurrence():
    # the last 2 tokens (7, 8) occur twice before; the last 3 (6, 7, 8) only at the second: the longest n wins
    tokens = [7, 8, 1, 1, 6, 7, 8, 2, 3, 9, 6, 7, 8]
    assert propose(tokens, SPEC) == [2, 3, 9]
    # only n = 1 matches (token 5): its earliest occurrence's followers
    assert propose([5, 10, 11, 12, 5, 20, 21, 5], SPEC) == [10, 11, 12]


def test_propose_gives_fewer_drafts_near_the_end_and_none_without_a_match():
    assert propose([1, 2, 3, 1, 2], SPEC) == [3, 1, 2]
    assert propose([4, 4], SPEC) == [4]  # the suffix itself is never a match: the earlier 4 is followed by one token
    assert propose([1, 2, 3, 4], SPEC) == []
    assert propose([], SPEC) == [] and propose([7], SPEC) == []
    assert propose([1, 2, 3, 1], SPEC, k=1) == [2]
    assert propose([1, 2, 3, 1], NgramSpec(3, 2, 3)) == []  # only a 1-gram matches, under prompt_lookup_min=2


# ---------------------------------------------------------------- settings and requests


def _propose_by_windows(tokens: list[int], spec: NgramSpec, k: int) -> list[int]:
    """The proposer's rule read literally: every window of n tokens before the last token, n from max down to min."""
    for n in range(min(spec.prompt_lookup_max, len(tokens) - 1), spec.prompt_lookup_min - 1, -1):
        for start in range(len(tokens) - n):
            if tokens[start : start + n] == tokens[len(tokens) - n :]:
                return tokens[start + n : start + n + k]
    return []


@pytest.mark.parametrize("vocab", [2, 3, 8])
def test_propose_matches_the_window_by_window_rule_on_random_tokens(vocab):
    rng = np.random.default_rng(vocab)
    for _ in range(300):
        tokens = rng.integers(0, vocab, rng.integers(1, 40)).tolist()
        low = int(rng.integers(1, 4))
        spec, k = NgramSpec(4, low, low + int(rng.integers(0, 4))), int(rng.integers(0, 6))
        assert propose(tokens, spec, k) == _propose_by_windows(tokens, spec, k), (tokens, spec, k)


def test_the_scheduler_proposer_keeps_each_sequence_s_tokens_between_steps_and_drops_finished_ones():
    rng = np.random.default_rng(7)
    proposer, seqs = NgramProposer(NgramSpec(3, 1, 4)), [_seq(rng.integers(0, 4, 20).tolist()) for _ in range(3)]
    for _ in range(40):  # tokens arrive one or several at a time (accepted drafts), 64-token buffers grow
        for seq in seqs:
            seq.output_token_ids += rng.integers(0, 4, rng.integers(1, 4)).tolist()
            assert proposer.propose(seq, 3) == propose(seq.token_ids, proposer.spec, 3)
    del seqs[0].output_token_ids[5:]  # tokens taken back (a stop string's cut): the array is rebuilt
    assert proposer.propose(seqs[0], 3) == propose(seqs[0].token_ids, proposer.spec, 3)
    proposer.forget(seqs[1])
    assert len(proposer) == 2

    sched = _scheduler()
    done = [_seq([3, 4, 5, 3], max_tokens=3), _seq([6, 7, 6], max_tokens=3)]
    for seq in done:
        sched.add([seq])
    _step(sched, [4, 7])
    out = sched.schedule()
    assert len(sched.proposer) == 2  # both decodes proposed
    sched.on_step_launched(out)
    sched.update_from_output(out, [[5, 3], [6, 7]])
    assert all(seq.is_finished for seq in done) and len(sched.proposer) == 0


def test_speculative_config_takes_vllm_keys_and_defaults():
    config = load_config(speculative_config={"method": "ngram", "num_speculative_tokens": 4})
    assert config.scheduler.ngram == NgramSpec(4, 5, 5)
    one = {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3}
    assert load_config(speculative_config=one).scheduler.ngram == NgramSpec(2, 3, 3)
    assert load_config().scheduler.ngram is None
    parser = argparse.ArgumentParser()
    add_engine_options(parser, ("scheduler",))
    args = parser.parse_args(["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 2}'])
    assert args.speculative_config == {"method": "ngram", "num_speculative_tokens": 2}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"method": "eagle", "num_speculative_tokens": 2}, 'serves method "ngram" alone'),
        ({"method": "draft_model", "num_speculative_tokens": 2}, 'serves method "ngram" alone'),
        ({"method": "mtp", "num_speculative_tokens": 2}, 'serves method "ngram" alone'),
        ({"method": "ngram", "model": "x", "num_speculative_tokens": 2}, "model='x' is not served"),
        ({"method": "ngram"}, "num_speculative_tokens=None must be an integer >= 1"),
        ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens=0 must be"),
        ({"method": "ngram", "num_speculative_tokens": 1, "prompt_lookup_min": 0}, "prompt_lookup_min=0 must be"),
        ({"method": "ngram", "num_speculative_tokens": 1, "prompt_lookup_min": 4, "prompt_lookup_max": 2}, "<="),
        ({"method": "ngram", "num_speculative_tokens": 1, "lookahead": 2}, r"unknown keys \['lookahead'\]"),
        ("ngram", "expected dict"),
    ],
)
def test_speculative_config_refuses_other_methods_and_bad_values(value, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(speculative_config=value)
    assert error.value.key == "speculative_config"


@pytest.mark.parametrize(
    "field",
    [
        dict(logprobs=1),
        dict(prompt_logprobs=0),
        dict(presence_penalty=0.5),
        dict(frequency_penalty=0.5),
        dict(repetition_penalty=1.1),
        dict(min_tokens=2),
        dict(logit_bias={5: 1.0}),
        dict(allowed_token_ids=[1, 2]),
        dict(structured_outputs={"regex": "a+"}),
        dict(bad_words=["word"]),
    ],
)
def test_requests_the_verifier_cannot_make_exact_are_refused_by_field(field):
    with pytest.raises(InputError, match="not supported with speculative decoding: .* may use temperature") as error:
        check_request(SamplingParams(**field))
    assert error.value.param == next(iter(field))


def test_the_server_refuses_what_it_cannot_verify_with_a_400_and_reports_the_drafts():
    engine = fake_engine()
    engine.inputs.speculative = True  # the input door of an engine built with speculative_config
    engine.scheduler.num_draft_tokens, engine.scheduler.num_accepted_tokens = 7, 5  # the scheduler's counters
    body = {"model": "scripted", "prompt": "hi", "max_tokens": 4, "logprobs": 2}
    with RunningServer(engine, load_config(None, served_model_name="scripted")) as server:
        reply = http("POST", f"{server.url}/v1/completions", json_body=body)
        plain = http("POST", f"{server.url}/v1/completions", json_body={**body, "logprobs": None})
        beam = http("POST", f"{server.url}/v1/completions", json_body={**plain_body(body), "use_beam_search": True})
        metrics = http("GET", f"{server.url}/metrics").body.decode()
    error = reply.json()["error"]
    assert reply.status == 400 and error["param"] == "logprobs"
    assert "logprobs is not supported with speculative decoding" in error["message"]
    assert plain.status == 200
    assert beam.status == 400 and beam.json()["error"]["param"] == "use_beam_search"
    assert "beam search is not supported with speculative decoding" in beam.json()["error"]["message"]
    assert 'jllm:spec_decode_num_draft_tokens_total{model_name="scripted"} 7.0' in metrics
    assert 'jllm:spec_decode_num_accepted_tokens_total{model_name="scripted"} 5.0' in metrics


def plain_body(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "logprobs"}


def test_plain_sampling_passes_the_request_check():
    check_request(SamplingParams(temperature=0.7, top_k=5, top_p=0.9, min_p=0.1, seed=1, n=2, stop=["x"]))


# ---------------------------------------------------------------- the scheduler


def _seq(prompt: list[int], max_tokens: int | None = 32) -> Sequence:
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    return Sequence(next(_ids), f"r{next(_ids)}", 0, list(prompt), params, 0.0, 0)


def _scheduler(page_size: int = 4, spec: NgramSpec = SPEC, max_model_len: int = 64) -> Scheduler:
    bm = BlockManager(64, page_size, enable_prefix_caching=True)
    limits = dict(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=max_model_len)
    return Scheduler(bm, **limits, eos_token_ids={EOS}, speculative=spec)


def _step(sched: Scheduler, sampled: list):
    out = sched.schedule()
    sched.on_step_launched(out)
    return out, sched.update_from_output(out, sampled)


def test_a_decode_runs_its_drafts_and_keeps_the_accepted_ones_alone():
    sched, seq = _scheduler(), _seq([5, 6, 7, 8, 5, 6])
    sched.add([seq])
    out, _ = _step(sched, [7])  # the prefill samples 7: tokens end "5 6 7", which occurred before followed by 8 5 6
    assert out.scheduled[0].draft_token_ids == []
    out = sched.schedule()
    (s,) = out.scheduled
    assert s.draft_token_ids == [8, 5, 6] and s.num_new_tokens == 4 and s.samples_token
    sched.on_step_launched(out)
    assert seq.num_computed_tokens == 10
    # the step accepted 8 and 5, rejected 6 and emitted 9 in its place
    assert sched.update_from_output(out, [[8, 5, 9]]) == [0, 0, 0]
    assert seq.output_token_ids == [7, 8, 5, 9]
    assert seq.num_computed_tokens == 9 and seq.num_tokens == 10  # the rejected draft's row is not counted
    assert (sched.num_draft_tokens, sched.num_accepted_tokens) == (3, 2)
    sched.block_manager.check_invariants(sched.running)


def test_no_page_holding_a_rejected_draft_is_hashed_for_the_prefix_cache():
    sched, seq = _scheduler(page_size=4), _seq([1, 2, 3, 1, 2])
    bm = sched.block_manager
    sched.add([seq])
    _step(sched, [3])  # tokens 1 2 3 1 2 3: 6 computed of 6 known; drafts next: 1 2 3 (after the first "2 3")
    out = sched.schedule()
    assert out.scheduled[0].draft_token_ids == [1, 2, 3]
    sched.on_step_launched(out)
    sched.update_from_output(out, [[4]])  # every draft rejected: position 6 computed a draft 1, now replaced by 4
    assert seq.num_computed_tokens == 6
    # page 1 (positions 4..7) held drafts: it is not full of real tokens, so not hashed; page 0 is
    assert bm.num_cached_pages == 1
    out, _ = _step(sched, [[5]])  # no match for "... 3 4": a plain decode of 4
    assert out.scheduled[0].num_new_tokens == 1 and out.scheduled[0].draft_token_ids == []
    assert seq.token_ids == [1, 2, 3, 1, 2, 3, 4, 5] and seq.num_computed_tokens == 7
    assert bm.num_cached_pages == 1  # page 1 fills with real tokens only once position 7 is computed


def test_an_accepted_run_is_cut_at_eos_and_drafts_respect_max_tokens():
    sched, seq = _scheduler(), _seq([3, 4, 5, 3], max_tokens=3)
    sched.add([seq])
    _step(sched, [4])
    out = sched.schedule()
    assert out.scheduled[0].draft_token_ids == [5]  # 2 output tokens left: one draft and the token after it
    sched.on_step_launched(out)
    assert sched.update_from_output(out, [[5, 3]]) == [0, 0]
    assert seq.status is SequenceStatus.FINISHED_LENGTH and seq.output_token_ids == [4, 5, 3]

    sched, seq = _scheduler(), _seq([3, 4, 5, 3])
    sched.add([seq])
    _step(sched, [4])
    out = sched.schedule()
    sched.on_step_launched(out)
    assert sched.update_from_output(out, [[5, EOS, 9]]) == [0, 0]  # EOS ends it: the token after is dropped
    assert seq.status is SequenceStatus.FINISHED_STOPPED and seq.output_token_ids == [4, 5, EOS]


def test_a_stop_string_inside_a_run_keeps_the_tokens_up_to_it():
    sched, seq = _scheduler(), _seq([3, 4, 5, 3])
    sched.add([seq])
    _step(sched, [4])
    out = sched.schedule()
    sched.on_step_launched(out)
    sched.update_from_output(out, [[5, 3, 4]])
    sched.finish(seq, SequenceStatus.FINISHED_STOPPED, num_output_tokens=2)
    assert seq.output_token_ids == [4, 5] and sched.num_generation_tokens == 2


def test_a_step_ending_on_a_step_size_cuts_prefill_chunks_never_drafts():
    sched = Scheduler(
        BlockManager(64, 4), max_num_seqs=4, max_num_batched_tokens=64, max_model_len=64, step_sizes=(8, 16)
    )
    prefill, decode = _seq(list(range(10, 16))), _seq([3, 4, 5, 3])
    decode.output_token_ids = [4]
    out = SchedulerOutput([ScheduledSequence(prefill, 6), ScheduledSequence(decode, 4, [5, 3, 4])])
    sched._end_on_step_size(out)  # 10 tokens, 2 past the size 8: the prefill gives up 2, the drafts none
    assert [(s.num_new_tokens, s.draft_token_ids) for s in out.scheduled] == [(4, []), (4, [5, 3, 4])]


def test_drafts_never_pass_the_context():
    sched, seq = _scheduler(max_model_len=7), _seq([3, 4, 5, 3], max_tokens=None)
    sched.add([seq])
    _step(sched, [4])  # 5 tokens of 7: one more draft fits beside the token after it
    assert sched.schedule().scheduled[0].draft_token_ids == [5]


# ---------------------------------------------------------------- the verification on the device


def _meta(num_rows: int, drafts: np.ndarray, **fields: object):
    from test_sampling import _raw_metadata

    meta = _raw_metadata(num_rows, **fields)
    return dataclasses.replace(meta, draft_ids=np.asarray(drafts, np.int32))


def test_greedy_verification_accepts_while_drafts_match_the_argmax():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 4, 10)).astype(np.float32)
    best = logits.argmax(-1)  # [3, 4]
    drafts = np.array(
        [
            best[0, :3],  # every draft right: three tokens and the bonus
            [best[1, 0], (best[1, 1] + 1) % 10, best[1, 2]],  # the second wrong: one accepted, then the argmax
            [-1, -1, -1],  # no drafts: the plain argmax
        ]
    )
    out = verify(logits, _meta(3, drafts, temperature=0.0), mode=SamplingMode.GREEDY)
    ids = np.asarray(out.token_ids)
    np.testing.assert_array_equal(ids[0], best[0])
    np.testing.assert_array_equal(ids[1], [best[1, 0], best[1, 1], -1, -1])
    np.testing.assert_array_equal(ids[2], [best[2, 0], -1, -1, -1])
    logp = jax.nn.log_softmax(logits, axis=-1)
    expected = np.take_along_axis(logp[0], best[0][:, None], 1)[:, 0]
    np.testing.assert_allclose(np.asarray(out.logprobs)[0], expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("mode", "settings"),
    [
        (SamplingMode.RANDOM, dict(temperature=0.9, min_p=0.05)),
        (SamplingMode.TRUNCATED, dict(temperature=0.7, top_k=20, top_p=0.8)),
    ],
)
def test_a_row_without_drafts_draws_the_token_the_plain_sampler_draws(mode, settings):
    """The same uniform on the same processed distribution: speculation changes nothing for prefills' first tokens
    or sequences whose text never repeats."""
    rows, vocab = 64, 300
    logits = jax.numpy.asarray(np.random.default_rng(2).standard_normal((rows, vocab)).astype(np.float32) * 3)
    steps = np.arange(rows) % 5
    meta = _meta(rows, np.full((rows, 0), -1), step=steps, **settings)
    meta = dataclasses.replace(meta, banned_ids=np.full((rows, 8), -1, np.int32))  # a base sampler's ban width
    plain = jax.jit(sample, static_argnames=("num_top_logprobs", "mode"))(logits, meta, num_top_logprobs=0, mode=mode)
    two_drafts_none_given = _meta(rows, np.full((rows, 2), -1), step=steps, **settings)
    verified = verify(jax.numpy.repeat(logits[:, None], 3, axis=1), two_drafts_none_given, mode=mode)
    np.testing.assert_array_equal(np.asarray(verified.token_ids)[:, 0], np.asarray(plain.token_ids))
    np.testing.assert_array_equal(np.asarray(verified.ranks)[:, 0], np.asarray(plain.ranks))  # over the vocabulary
    assert (np.asarray(verified.token_ids)[:, 1:] == -1).all()


def _target(logits: np.ndarray, temperature: float, top_k: int) -> np.ndarray:
    """The processed distribution in NumPy: temperature, then the top-k kept and renormalised."""
    z = logits / temperature
    p = np.exp(z - z.max())
    p[np.argsort(-p)[top_k:]] = 0.0
    return p / p.sum()


def test_rejection_sampling_emits_each_token_from_the_target_distribution():
    """Whatever the draft, each emitted token is distributed as the processed target p: the first token over every
    row, the second over the rows that accepted the first draft. 40,000 rows of a 6-token vocabulary: the total
    variation distance of an empirical distribution from p is below 0.015 with overwhelming odds (its standard
    error is ~0.003 at this count)."""
    rows, vocab = 40_000, 6
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, vocab)).astype(np.float32) * 1.5  # position 0's and 1's logits
    drafts = np.tile([[int(np.argsort(logits[0])[-2]), int(logits[1].argmax())]], (rows, 1))  # a likely-ish draft
    meta = _meta(rows, drafts, temperature=0.8, top_k=4, seeds=np.arange(rows, dtype=np.uint32), step=np.full(rows, 5))
    full = np.broadcast_to(np.concatenate([logits, logits[:1]])[None], (rows, 3, vocab))
    out = np.asarray(verify(full, meta, mode=SamplingMode.TRUNCATED).token_ids)
    p0, p1 = _target(logits[0], 0.8, 4), _target(logits[1], 0.8, 4)
    first = np.bincount(out[:, 0], minlength=vocab) / rows
    assert 0.5 * np.abs(first - p0).sum() < 0.015
    took = out[:, 0] == drafts[0, 0]
    assert abs(took.mean() - p0[drafts[0, 0]]) < 0.015  # a draft is accepted with its target probability
    second = np.bincount(out[took, 1], minlength=vocab) / took.sum()
    assert 0.5 * np.abs(second - p1).sum() < 0.02
    assert (out[:, 0] >= 0).all() and (p0[out[:, 0]] > 0).all()  # never a token top-k removed

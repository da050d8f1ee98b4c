"""Requests that come and go at random moments over a pool too small for them all: every one ends, and the pool
is whole again.

The engine loop over the scripted runner (real scheduler, block manager, grammars, detokenizer): a random mix of
n > 1 samples, grammars (one that breaks mid-generation among them), stop strings and long prompts is added, aborted
at random steps (before its first step, mid-prefill, mid-decode, twice), and preempted for want of pages; the pool's
bookkeeping is checked after every step. At the end no request, sequence or page is left.
"""

from __future__ import annotations

import collections
import random
import time
from dataclasses import dataclass, field

import pytest
from fake_runner import fake_engine

from jllm.inputs import Prompt
from jllm.outputs import RequestOutput
from jllm.sampling import RequestOutputKind, SamplingParams
from jllm.sequence import Sequence

GRAMMARS = [{"regex": "[0-9]{5}"}, {"choice": ["hello world", "bye"]}, {"regex": "[0-9]{2}a{1000000}"}]


def _params(rng: random.Random) -> SamplingParams:
    fields: dict = {"max_tokens": rng.randint(1, 40), "n": rng.choice([1, 1, 2, 3]), "temperature": 1.0}
    if rng.random() < 0.25:
        fields["structured_outputs"] = rng.choice(GRAMMARS)
    if rng.random() < 0.2:
        fields["stop"] = [rng.choice(["e", "ll", "x"])]
    return SamplingParams(**fields)


@pytest.mark.parametrize("seed", range(3))
def test_random_adds_and_aborts_under_preemption_leave_nothing_behind(seed: int) -> None:
    rng = random.Random(seed)
    engine = fake_engine(num_pages=24, page_size=4, max_num_seqs=6, max_num_batched_tokens=16, max_model_len=64)
    ended: dict[str, str] = {}
    added: list[str] = []
    for _ in range(3000):  # steps
        for _ in range(rng.choice([0, 0, 1, 2])):
            if len(added) < 120:
                request_id = f"r{len(added)}"
                prompt = [rng.randrange(3, 500) for _ in range(rng.randint(1, 20))]
                engine.add_request(request_id, Prompt(prompt), _params(rng))
                added.append(request_id)
        for request_id in rng.sample(added, k=min(len(added), rng.choice([0, 0, 0, 1, 2]))):
            if (output := engine.abort_request(request_id)) is not None:  # a second abort finds nothing
                assert output.finished
                ended[request_id] = "abort"
        for output in engine.step():
            if output.finished:
                assert output.request_id not in ended, f"{output.request_id} finished twice"
                ended[output.request_id] = ",".join(str(c.finish_reason) for c in output.outputs)
        engine.block_manager.check_invariants(engine.scheduler.running)
        if len(added) >= 120 and not engine.has_unfinished_requests():
            break
    missing = sorted(set(added) - set(ended))
    assert not missing, f"requests that never ended: {missing}"
    assert engine.scheduler.num_preemptions > 0
    assert not engine.requests and engine.scheduler.num_running == engine.scheduler.num_waiting == 0
    assert engine.block_manager.num_allocated_pages == 0


def test_aborting_the_last_request_waits_out_the_step_in_flight() -> None:
    """The step the device still runs when the last request is aborted is waited for, not dropped from under it:
    a server stopping right after a drain's aborts had exited beside a running XLA step (SIGABRT)."""
    engine = fake_engine(step_seconds=0.3)
    engine.add_request("a", Prompt([5, 6, 7]), SamplingParams(max_tokens=50))
    engine.step()  # launches the prefill; the scripted device runs it for 0.3 s
    device_done = engine.runner.device_free_at
    assert time.monotonic() < device_done
    engine.abort_request("a")
    assert time.monotonic() >= device_done and not engine.has_unfinished_requests()
    assert engine.block_manager.num_allocated_pages == 0


def _logprob_request(rng: random.Random, shared: list[int]) -> tuple[list[int], SamplingParams, str | None]:
    """A prompt (a shared prefix or not), DELTA params asking for prompt logprobs or logprobs or neither, a salt."""
    prompt = shared[: rng.choice([0, 4, 12])] + [rng.randrange(3, 500) for _ in range(rng.randint(1, 30))]
    max_tokens = rng.randint(1, 15)
    params = SamplingParams(
        max_tokens=max_tokens,
        min_tokens=rng.choice([0, max_tokens]),
        n=rng.choice([1, 2]),
        prompt_logprobs=rng.choice([None, 0, 2]),
        logprobs=rng.choice([None, 1]),
        output_kind=RequestOutputKind.DELTA,
    )
    return prompt, params, rng.choice([None, None, "a", "b"])


@dataclass
class _Received:
    """What a request's DELTA outputs carried, summed: prompt logprob entries, and per sample tokens and logprobs."""

    prompt_entries: int = 0
    tokens: dict[int, int] = field(default_factory=dict)
    logprobs: dict[int, int] = field(default_factory=dict)
    finished: bool = False

    def add(self, output: RequestOutput) -> None:
        self.prompt_entries += len(output.prompt_logprobs or [])
        for c in output.outputs:
            self.tokens[c.index] = self.tokens.get(c.index, 0) + len(c.token_ids)
            self.logprobs[c.index] = self.logprobs.get(c.index, 0) + len(c.logprobs or [])
        self.finished |= output.finished

    def check(self, prompt: list[int], params: SamplingParams) -> None:
        assert self.finished
        if params.prompt_logprobs is not None:  # vLLM's: None for the first token, then one entry each
            assert self.prompt_entries == len(prompt)
        assert self.tokens == dict.fromkeys(range(params.n), params.max_tokens)
        assert self.logprobs == dict.fromkeys(range(params.n), params.max_tokens if params.logprobs is not None else 0)


@pytest.mark.parametrize("seed", range(2))
def test_priority_preemption_mid_prefill_delivers_each_logprob_once(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the priority policy (the least urgent running sequence preempted first), with shared prefixes, cache
    salts, n > 1, min_tokens and aborts: each finished request's DELTA outputs carry one prompt logprob entry per
    prompt token and one logprob per sampled token, however often its prefill was preempted and computed again."""
    rng = random.Random(seed)
    engine = fake_engine(
        num_pages=16,
        page_size=4,
        max_num_seqs=4,
        max_num_batched_tokens=8,
        max_model_len=64,
        scheduling_policy="priority",
    )
    preempted_mid_prefill: set[str] = set()
    preempt = engine.scheduler._preempt

    def spy(seq: Sequence) -> None:
        if seq.sampling_params.prompt_logprobs is not None and seq.num_computed_tokens < seq.num_prompt_tokens:
            preempted_mid_prefill.add(seq.request_id)
        preempt(seq)

    monkeypatch.setattr(engine.scheduler, "_preempt", spy)
    shared = [rng.randrange(3, 500) for _ in range(12)]
    requests: dict[str, tuple[list[int], SamplingParams]] = {}  # the ones not aborted
    received: dict[str, _Received] = collections.defaultdict(_Received)
    for request_id in (f"r{i}" for i in range(60)):
        prompt, params, salt = _logprob_request(rng, shared)
        requests[request_id] = (prompt, params)
        engine.add_request(request_id, Prompt(prompt, cache_salt=salt), params, priority=rng.randint(-2, 2))
        for _ in range(rng.randint(0, 3)):
            if rng.random() < 0.03 and (output := engine.abort_request(rng.choice(list(requests)))):
                requests.pop(output.request_id)
            for output in engine.step():
                received[output.request_id].add(output)
            engine.block_manager.check_invariants(engine.scheduler.running)
    while engine.has_unfinished_requests():
        for output in engine.step():
            received[output.request_id].add(output)
    assert preempted_mid_prefill & set(requests), "no prompt-logprobs request was preempted mid-prefill"
    for request_id, (prompt, params) in requests.items():
        received[request_id].check(prompt, params)
    assert not engine.requests and engine.block_manager.num_allocated_pages == 0

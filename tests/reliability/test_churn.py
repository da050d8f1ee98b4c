"""Requests that come and go at random moments over a pool too small for them all: every one ends, and the pool
is whole again.

The engine loop over the scripted runner (real scheduler, block manager, grammars, detokenizer): a random mix of
n > 1 samples, grammars (one that breaks mid-generation among them), stop strings and long prompts is added, aborted
at random steps (before its first step, mid-prefill, mid-decode, twice), and preempted for want of pages; the pool's
bookkeeping is checked after every step. At the end no request, sequence or page is left.
"""

from __future__ import annotations

import random
import time

import pytest
from fake_runner import fake_engine

from jllm.inputs import Prompt
from jllm.sampling import SamplingParams

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

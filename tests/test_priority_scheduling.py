"""vLLM's priority scheduling end to end over the scripted engine: a request's ``priority`` reaches its sequences
through the offline API and the server under ``scheduling_policy: priority``, runs the most urgent first, and is
refused by name where the engine schedules first come, first served. The queue order itself: tests/test_scheduler.py."""

from __future__ import annotations

import itertools

import pytest
from fake_runner import fake_engine
from server_utils import RunningServer, http

from jllm.config import load_config
from jllm.errors import InputError
from jllm.inputs import Prompt
from jllm.llm import LLM
from jllm.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=3)


def _llm(policy: str, **engine_args) -> LLM:
    llm = LLM.__new__(LLM)  # the constructor builds a real engine; the scripted one stands in
    llm.engine = fake_engine(scheduling_policy=policy, **engine_args)
    llm._ids = itertools.count()
    return llm


def test_a_first_come_first_served_engine_refuses_a_priority_by_name() -> None:
    engine = fake_engine()
    with pytest.raises(InputError, match=r"priority=2: the engine schedules first come, first served") as refused:
        engine.add_request("r", Prompt([5]), GREEDY, priority=2)
    assert refused.value.param == "priority" and not engine.has_unfinished_requests()
    engine.add_request("zero", Prompt([5]), GREEDY, priority=0)  # asks for nothing
    with pytest.raises(InputError, match="priority must be an integer, got True"):
        fake_engine(scheduling_policy="priority").add_request("b", Prompt([5]), GREEDY, priority=True)
    with pytest.raises(InputError, match="priority=1"):
        _llm("fcfs").generate(["a", "b"], GREEDY, use_tqdm=False, priority=[0, 1])


def test_offline_priorities_run_the_most_urgent_prompt_first() -> None:
    llm = _llm("priority", max_num_seqs=1)
    started: list[str] = []
    schedule = llm.engine.scheduler.schedule

    def spy():  # noqa: ANN202 - the scheduler's own signature
        out = schedule()
        started.extend(s.seq.request_id for s in out.scheduled if s.seq.request_id not in started)
        return out

    llm.engine.scheduler.schedule = spy
    outputs = llm.generate(["first", "second", "third"], GREEDY, use_tqdm=False, priority=[2, 0, 1])
    assert [o.prompt for o in outputs] == ["first", "second", "third"]  # outputs in input order
    ids = [o.request_id for o in outputs]
    assert started == [ids[1], ids[2], ids[0]]
    with pytest.raises(ValueError, match="priority has 1 entries for 2 prompts"):
        llm.generate(["a", "b"], GREEDY, use_tqdm=False, priority=[0])


def test_the_server_hands_a_requests_priority_to_its_sequences() -> None:
    engine = fake_engine(scheduling_policy="priority")
    seen: list[int] = []
    add = engine.scheduler.add
    engine.scheduler.add = lambda seqs: (seen.extend(s.priority for s in seqs), add(seqs))[1]
    with RunningServer(engine, load_config(None, served_model_name="m")) as server:
        for path, body in [
            ("/v1/completions", {"prompt": "hi"}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ]:
            reply = http(
                "POST", f"{server.url}{path}", json_body={"model": "m", "max_tokens": 2, "priority": -3, **body}
            )
            assert reply.status == 200, reply.body
        refused = http("POST", f"{server.url}/v1/responses", json_body={"model": "m", "input": "hi", "priority": 1})
    assert seen == [-3, -3]
    assert refused.status == 400 and refused.json()["error"]["param"] == "priority"

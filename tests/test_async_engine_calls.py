"""``AsyncEngine.call`` (the pooling routes' forwards) beside running requests: one call between two steps.

A burst of 300 reranks once held a stream's first token 7.6 s on a tiny model (fuzz run, 2026-12-05): the engine
thread ran every queued call before each step. The scripted runner counts steps, so the tests see where each call ran.
"""

from __future__ import annotations

import asyncio

from fake_runner import fake_engine

from jllm.async_engine import AsyncEngine
from jllm.errors import EngineUnavailableError
from jllm.inputs import Prompt
from jllm.sampling import SamplingParams


def steps_at_each_call(num_calls: int, *, with_request: bool) -> list[int]:
    """The number of steps launched when each of ``num_calls`` calls, queued at once, ran."""
    engine = fake_engine(max_model_len=128, step_seconds=0.002)

    async def main() -> list[int]:
        served = AsyncEngine(engine)
        served.start()
        if with_request:
            params = SamplingParams(max_tokens=60, ignore_eos=True, temperature=0.0)
            stream = await served.add_request("r", Prompt([5, 6, 7]), params)
        seen = await asyncio.gather(*(served.call(lambda e: len(e.runner.launched)) for _ in range(num_calls)))
        if with_request:
            async for _ in stream:
                pass
        await served.shutdown()
        return list(seen)

    return asyncio.run(main())


def test_queued_calls_take_turns_with_the_steps_of_running_requests() -> None:
    seen = steps_at_each_call(8, with_request=True)
    assert seen == sorted(seen) and len(set(seen)) == 8, seen  # each call after a step of its own, in order


def test_calls_with_nothing_running_all_go_at_once() -> None:
    assert steps_at_each_call(8, with_request=False) == [0] * 8


def test_a_call_still_waiting_when_the_engine_stops_fails_instead_of_hanging() -> None:
    engine = fake_engine(max_model_len=128, step_seconds=0.05)

    async def main() -> list[object]:
        served = AsyncEngine(engine)
        served.start()
        params = SamplingParams(max_tokens=100, ignore_eos=True, temperature=0.0)
        await served.add_request("r", Prompt([5, 6, 7]), params)
        calls = [asyncio.ensure_future(served.call(lambda e: "ran")) for _ in range(4)]
        await asyncio.sleep(0.01)  # queued behind the first step
        await served.shutdown()
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=5)

    results = asyncio.run(main())
    assert "ran" in results and any(isinstance(r, EngineUnavailableError) for r in results), results

"""A large structured-output constraint is checked off the event loop, its matcher built off the engine thread, and
its refusal stays short.

llguidance checks a grammar in time that grows with it: 100,000 choices (a 2.3 MB body) took 3.6 s, on the event
loop, so every stream and health check waited that long; its error quoted the grammar's source line, so the 400
carried the whole 2.3 MB grammar back. Now a constraint of more than ``INLINE_CHARS`` characters is checked on the
``HostWork`` threads (llguidance releases the GIL while it works), and llguidance's errors are cut to a few short
lines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import aiohttp
import pytest
from fake_runner import fake_engine
from server_utils import RunningServer, http

from jllm.config import load_config

CHOICES = [f"choice number {i}" for i in range(100_000)]  # past llguidance's lexer limit: refused after 1-4 s


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with RunningServer(fake_engine(), load_config(None, served_model_name="scripted")) as running:
        yield running


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_huge_grammar_is_refused_briefly_while_health_checks_go_on(server: RunningServer, path: str) -> None:
    body = {"model": "scripted", "max_tokens": 4, "guided_choice": CHOICES}
    body |= {"prompt": "hi"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "hi"}]}

    async def run() -> tuple[int, dict, float]:
        async with aiohttp.ClientSession() as session:
            hostile = asyncio.ensure_future(session.post(f"{server.url}{path}", json=body))
            slowest = 0.0
            while not hostile.done():
                start = time.monotonic()
                async with session.get(f"{server.url}/health") as health:
                    assert health.status == 200
                slowest = max(slowest, time.monotonic() - start)
                await asyncio.sleep(0.02)
            async with await hostile as response:
                return response.status, await response.json(), slowest

    status, answer, slowest = asyncio.run(run())
    assert status == 400
    error = answer["error"]
    assert error["param"] == "guided_choice" and "too big" in error["message"]
    assert len(error["message"]) < 1000, len(error["message"])
    assert slowest < 1.0, f"/health waited {slowest:.2f} s behind the grammar check"


def test_building_a_large_grammars_matcher_does_not_stall_other_streams() -> None:
    """llguidance's matcher for 20,000 alternatives took 0.6 s here (1.5 s on the default model's tokenizer), and
    the first structured request builds llguidance's tokenizer (1.1 s; 5 s for the default model): both ran on the
    engine thread, so every stream stopped meanwhile. They are built on a worker thread now."""
    grammar = "start: " + " | ".join(f'"w{i}"' for i in range(20_000))
    hostile_body = {"model": "scripted", "prompt": "hi", "max_tokens": 2, "guided_grammar": grammar}
    victim_body = {"model": "scripted", "prompt": "victim", "max_tokens": 120, "stream": True}
    engine = fake_engine(step_seconds=0.01)

    async def run(url: str) -> tuple[int, float]:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/v1/completions", json=victim_body) as victim:
                times = []
                hostile = None
                async for line in victim.content:
                    if line.startswith(b"data: {"):
                        times.append(time.monotonic())
                    if len(times) == 10:
                        hostile = asyncio.ensure_future(session.post(f"{url}/v1/completions", json=hostile_body))
            assert hostile is not None
            async with await hostile as response:
                status = response.status
        return status, max(b - a for a, b in zip(times, times[1:], strict=False))

    with RunningServer(engine, load_config(None, served_model_name="scripted")) as running:
        status, gap = asyncio.run(run(running.url))
    assert gap < 0.5, f"the victim stream stopped for {gap:.2f} s while the grammar was built"
    assert status == 400  # llguidance's parser then fails on the first token: a row of 20,001 items (its limit 2,000)


def test_the_prompts_of_one_request_share_one_grammar_build(server: RunningServer) -> None:
    """Each prompt used to build its own matcher (1,024 prompts of one request: 1,024 builds); now one is built and
    forked, before any prompt is admitted (a matcher the engine has advanced would fork its state)."""
    compiler = server.engine.grammars
    builds = []
    build = compiler.matcher

    def counted(params):  # noqa: ANN001, ANN202 - GrammarCompiler.matcher's own signature
        builds.append(params)
        return build(params)

    compiler.matcher = counted
    try:
        body = {"model": "scripted", "prompt": ["a", "bb", "ccc"], "n": 2, "temperature": 1.0, "max_tokens": 8}
        reply = http("POST", f"{server.url}/v1/completions", json_body=body | {"guided_regex": "[0-9]{5}"})
    finally:
        del compiler.matcher
    assert reply.status == 200, reply.body
    choices = reply.json()["choices"]
    assert len(choices) == 6 and len(builds) == 1
    assert all(c["finish_reason"] == "stop" and len(c["text"]) == 5 and c["text"].isdigit() for c in choices)

"""A large structured-output constraint is checked off the event loop, and its refusal stays short.

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
from server_utils import RunningServer

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

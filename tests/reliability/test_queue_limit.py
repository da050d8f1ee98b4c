"""The queue limit counts sequences (prompts x n), not requests (issue 23, finding 6): one request of 1,024 prompts
x n=128 used to queue 131,072 sequences under a limit of 1,024 requests (and 500 x n=16 held the engine 106 s)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest
from fake_runner import fake_engine
from server_utils import RunningServer, http
from victim import assert_victim_unharmed, printable_script, victim_gap

from jllm.config import load_config

MAX_QUEUED = 4


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    engine = fake_engine(step_seconds=0.05, max_num_seqs=2)
    config = load_config(None, served_model_name="scripted")
    with RunningServer(engine, config, max_queued_requests=MAX_QUEUED) as running:
        yield running


@pytest.mark.parametrize(("prompts", "n", "param"), [(5, 1, "prompt"), (1, 5, "n"), (3, 2, "n")])
def test_one_request_with_more_sequences_than_the_queue_holds_is_a_400(
    server: RunningServer, prompts: int, n: int, param: str
) -> None:
    body = {"model": "scripted", "prompt": ["hi"] * prompts, "n": n, "max_tokens": 2, "temperature": 1.0}
    reply = http("POST", f"{server.url}/v1/completions", json_body=body)
    assert reply.status == 400, reply.body
    error = reply.json()["error"]
    assert error["param"] == param and f"max_queued_requests={MAX_QUEUED}" in error["message"]
    assert f"= {prompts * n} sequences" in error["message"]


def test_a_request_that_fits_the_queue_exactly_runs(server: RunningServer) -> None:
    body = {"model": "scripted", "prompt": ["hi", "yo"], "n": 2, "max_tokens": 2, "temperature": 1.0}
    reply = http("POST", f"{server.url}/v1/completions", json_body=body)
    assert reply.status == 200, reply.body
    assert len(reply.json()["choices"]) == 4


def test_waiting_samples_fill_the_queue_and_the_next_request_gets_429(server: RunningServer) -> None:
    long = {"model": "scripted", "max_tokens": 60, "temperature": 1.0, "stream": True}

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            url = f"{server.url}/v1/completions"
            running = await session.post(url, json={**long, "prompt": "a", "n": 2})  # both slots
            await running.content.readline()
            waiting = await session.post(url, json={**long, "prompt": "b", "n": MAX_QUEUED})  # the whole queue
            assert (running.status, waiting.status) == (200, 200)
            async with session.post(url, json={**long, "prompt": "c", "stream": False}) as rejected:
                assert rejected.status == 429, await rejected.text()
                assert "4 sequences are already waiting" in (await rejected.json())["error"]["message"]
            running.close()
            waiting.close()

    asyncio.run(run())


@pytest.mark.parametrize(("prompts", "n"), [(1024, 128), (500, 16)])
def test_one_request_of_many_prompts_times_n_does_not_slow_a_victim_stream(prompts: int, n: int) -> None:
    """The issue's hostile requests, sent back to back while a victim streams, under the default limit of 1,024
    queued sequences: each is refused whole (before, they queued 131,072 and 8,000 sequences ahead of everyone)."""
    statuses: list[int] = []

    async def hostile(session: aiohttp.ClientSession, url: str) -> None:
        body = {"model": "scripted", "prompt": ["hostile"] * prompts, "n": n, "max_tokens": 16, "temperature": 1.0}
        while True:
            async with session.post(f"{url}/v1/completions", json=body) as response:
                statuses.append(response.status)

    engine = fake_engine(script=printable_script, step_seconds=0.02, max_num_seqs=16, num_pages=256)
    config = load_config(None, served_model_name="scripted")
    with RunningServer(engine, config, max_queued_requests=1024) as running:
        idle = victim_gap(running.url)
        loaded = victim_gap(running.url, hostile)
    assert statuses and set(statuses) == {400}
    assert_victim_unharmed(idle, loaded, f"{prompts} prompts x n={n}, {len(statuses)} times")

"""A victim stream: one ordinary streamed completion whose inter-token gaps show whether another client's request
slows everybody down (issue 23). A test measures the gaps alone, then beside a hostile request, and bounds the ratio.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence

import aiohttp

Hostile = Callable[[aiohttp.ClientSession, str], Awaitable[object]]
VICTIM_BODY = {"model": "scripted", "prompt": "victim", "max_tokens": 24, "stream": True}


def printable_script(prompt: Sequence[int], position: int) -> int:
    """Ids 40..119 of the tiny tokenizer: each decodes to one printable character, so the text grows per token."""
    return 40 + (prompt[0] + position) % 80


async def stream_times(session: aiohttp.ClientSession, url: str, body: dict = VICTIM_BODY) -> list[float]:
    """When each chunk of the stream arrived, the first entry being when the request was sent."""
    times = [time.monotonic()]
    async with session.post(f"{url}/v1/completions", json=body) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            if line.startswith(b"data: {"):
                times.append(time.monotonic())
    return times


def victim_gap(
    url: str, hostile: Hostile | None = None, head_start: float = 0.3, headers: dict[str, str] | None = None
) -> float:
    """The victim's median inter-token gap, alone or while ``hostile`` runs (started ``head_start`` s earlier);
    ``headers`` go with every request of the session (an API key)."""
    times = victim_times(url, hostile, head_start, headers)[1:]
    return statistics.median(b - a for a, b in zip(times, times[1:], strict=False))


def victim_ttft(url: str, hostile: Hostile | None = None, head_start: float = 0.3) -> float:
    """The victim's time to its first chunk, alone or while ``hostile`` runs."""
    times = victim_times(url, hostile, head_start)
    return times[1] - times[0]


def victim_times(
    url: str, hostile: Hostile | None, head_start: float, headers: dict[str, str] | None = None
) -> list[float]:
    async def go() -> list[float]:
        async with aiohttp.ClientSession(headers=headers) as session:
            attack = asyncio.ensure_future(hostile(session, url)) if hostile is not None else None
            if attack is not None:
                await asyncio.sleep(head_start)
            times = await stream_times(session, url)
            if attack is not None:
                if attack.done():
                    attack.result()  # a hostile request that failed measured nothing
                attack.cancel()
                await asyncio.gather(attack, return_exceptions=True)
        return times

    return asyncio.run(go())


def assert_victim_unharmed(idle: float, loaded: float, what: str, slack: float = 0.02) -> None:
    """The issue's bound (within 2x the idle value), with ``slack`` seconds for a shared, busy CPU."""
    print(f"{what}: idle {idle * 1e3:.1f} ms, loaded {loaded * 1e3:.1f} ms")
    assert loaded <= 2 * idle + slack, f"{what}: the victim's time grew from {idle * 1e3:.1f} to {loaded * 1e3:.1f} ms"

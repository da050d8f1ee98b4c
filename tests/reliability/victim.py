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


async def stream_gaps(session: aiohttp.ClientSession, url: str, body: dict = VICTIM_BODY) -> list[float]:
    """Seconds between the stream's consecutive chunks."""
    times = []
    async with session.post(f"{url}/v1/completions", json=body) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            if line.startswith(b"data: {"):
                times.append(time.monotonic())
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def victim_gap(url: str, hostile: Hostile | None = None, head_start: float = 0.3) -> float:
    """The victim's median inter-token gap, alone or while ``hostile`` runs (started ``head_start`` s earlier)."""

    async def go() -> float:
        async with aiohttp.ClientSession() as session:
            attack = asyncio.ensure_future(hostile(session, url)) if hostile is not None else None
            if attack is not None:
                await asyncio.sleep(head_start)
            gaps = await stream_gaps(session, url)
            if attack is not None:
                if attack.done():
                    attack.result()  # a hostile request that failed measured nothing
                attack.cancel()
                await asyncio.gather(attack, return_exceptions=True)
        return statistics.median(gaps)

    return asyncio.run(go())


def assert_victim_unharmed(idle: float, loaded: float, what: str) -> None:
    """The issue's bound (within 2x the idle gap), with 20 ms of slack for a shared, busy CPU."""
    print(f"{what}: idle {idle * 1e3:.1f} ms, loaded {loaded * 1e3:.1f} ms")
    assert loaded <= 2 * idle + 0.02, (
        f"{what}: the victim's token gap grew from {idle * 1e3:.1f} to {loaded * 1e3:.1f} ms"
    )

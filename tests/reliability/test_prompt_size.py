"""Tokenization is bounded and off the shared path (issue 23, finding 5): a prompt-size limit checked before any
tokenizing (a 400 naming ``prompt`` / ``messages``), long prompts on a bounded pool with the GIL released, and a
rejected 10 MB body leaves no memory behind."""

from __future__ import annotations

import asyncio
import random
import resource
from collections.abc import Iterator

import aiohttp
import pytest
from fake_runner import TINY_TOKENIZER, fake_engine
from server_utils import RunningServer, http
from victim import assert_victim_unharmed, printable_script, victim_ttft

from jllm.config import LimitsConfig, load_config
from jllm.tokenizer import GIL_FREE_ENCODE_CHARS, Tokenizer

LIMIT = 200_000


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    engine = fake_engine(
        script=printable_script, step_seconds=0.02, max_model_len=128, limits=LimitsConfig(max_prompt_chars=LIMIT)
    )
    with RunningServer(engine, load_config(None, served_model_name="scripted")) as running:
        yield running


def too_long_bodies() -> list[tuple[str, dict, str]]:
    text = "x" * (LIMIT + 1)
    messages = [{"role": "user", "content": text}]
    return [
        ("/v1/completions", {"prompt": text}, "prompt"),
        ("/v1/completions", {"prompt": ["a", text]}, "prompt"),
        ("/v1/chat/completions", {"messages": messages}, "messages"),
        ("/tokenize", {"prompt": text}, "prompt"),
        ("/tokenize", {"messages": messages}, "messages"),
    ]


@pytest.mark.parametrize(("route", "body", "param"), too_long_bodies())
def test_a_prompt_over_the_limit_is_a_400_naming_the_field(
    server: RunningServer, route: str, body: dict, param: str
) -> None:
    reply = http("POST", f"{server.url}{route}", json_body={"model": "scripted", **body})
    assert reply.status == 400, reply.body
    error = reply.json()["error"]
    assert error["param"] == param and f"max_prompt_chars={LIMIT}" in error["message"]


def test_rejected_ten_megabyte_prompts_leave_no_memory_behind(server: RunningServer) -> None:
    """Ten bodies of 10 MB each, refused before tokenizing: peak RSS grows by a few bodies at most (the old path
    tokenized each one, seconds and gigabytes)."""
    body = b'{"model": "scripted", "prompt": "' + b"y" * (10 << 20) + b'"}'
    http("POST", f"{server.url}/v1/completions", data=body, headers={"Content-Type": "application/json"})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, peak: one rejected body included
    for _ in range(10):
        reply = http("POST", f"{server.url}/v1/completions", data=body, headers={"Content-Type": "application/json"})
        assert reply.status == 400 and reply.json()["error"]["param"] == "prompt"
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"peak RSS grew {grown_mib:.0f} MiB over ten rejected 10 MB prompts")
    assert grown_mib < 100


def test_long_tokenize_calls_do_not_delay_a_victim_stream(server: RunningServer) -> None:
    """Eight /tokenize calls of the most text allowed at once (the issue's eight 2 MB calls, scaled to the limit):
    the victim's time to first token stays within 2x (+50 ms) of its idle value."""
    text = "the quick brown fox jumps over a lazy dog " * (LIMIT // 44)

    async def hostile(session: aiohttp.ClientSession, url: str) -> None:
        async def one() -> None:
            async with session.post(f"{url}/tokenize", json={"model": "scripted", "prompt": text}) as response:
                assert response.status == 200, await response.text()

        await asyncio.gather(*(one() for _ in range(8)))

    idle = victim_ttft(server.url)
    loaded = victim_ttft(server.url, hostile, head_start=0.1)
    assert_victim_unharmed(idle, loaded, "8 x /tokenize of 200,000 characters", slack=0.05)


@pytest.mark.parametrize("seed", range(3))
def test_long_texts_encode_to_the_same_ids_with_the_gil_released(seed: int) -> None:
    """Texts past GIL_FREE_ENCODE_CHARS go through encode_batch: the ids must be the backend's plain encode's."""
    rng = random.Random(seed)
    tokenizer = Tokenizer.from_pretrained(TINY_TOKENIZER)
    words = ["héllo", "world", "naïve", "日本", "\n", "  ", "code()", "x" * 30]
    text = " ".join(rng.choice(words) for _ in range(GIL_FREE_ENCODE_CHARS // 3))
    assert len(text) > GIL_FREE_ENCODE_CHARS
    for special in (True, False):
        assert tokenizer.encode(text, special) == tokenizer.backend.encode(text, add_special_tokens=special).ids


@pytest.mark.slow  # 3-4 s: the body's validation, on its thread or not
def test_a_body_of_many_small_values_is_validated_off_the_event_loop(server: RunningServer) -> None:
    """60,000 short chat messages (2 MB of JSON, refused by ``max_prompt_chars`` once read): validating them held the
    event loop 2.0-2.9 s on this loaded CPU (16 MiB of them: 9 s; every stream and /health stopped meanwhile), the
    victim's first token with it; on the HostWork threads it came 0.14-0.28 s after it was asked for (the loop waits
    for the GIL while pydantic parses the JSON)."""
    body = {"model": "scripted", "messages": [{"role": "user", "content": "abcd"}] * 60_000}

    async def hostile(session: aiohttp.ClientSession, url: str) -> None:
        async with session.post(f"{url}/v1/chat/completions", json=body) as response:
            assert response.status == 400 and (await response.json())["error"]["param"] == "messages"

    idle = victim_ttft(server.url)
    loaded = victim_ttft(server.url, hostile, head_start=0.05)
    assert_victim_unharmed(idle, loaded, "a body of 60,000 chat messages", slack=0.5)

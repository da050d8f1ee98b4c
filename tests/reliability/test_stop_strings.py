"""Stop strings cost bounded work per token (issue 23, finding 1): limits on count and length, incremental matching.

The matcher is checked against a naive search of the whole text on fresh random inputs; its cost per token is
measured after the output outgrew the stops (the old matcher's cost grew with the square of the text).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import aiohttp
import pytest
from fake_runner import TINY_TOKENIZER, fake_engine
from server_utils import RunningServer, http
from victim import assert_victim_unharmed, printable_script, victim_gap

from jllm.config import LimitsConfig, load_config
from jllm.tokenizer import IncrementalDetokenizer, StopStrings, Tokenizer


def naive_first_match(text: str, stops: list[str], checked: int) -> tuple[int, str] | None:
    """Every occurrence of every stop that ends after ``checked``: the earliest start, the longest there."""
    hits = [
        (i, s) for s in stops for i in range(len(text) - len(s) + 1) if text.startswith(s, i) and i + len(s) > checked
    ]
    return min(hits, key=lambda hit: (hit[0], -len(hit[1])), default=None)


def naive_partial_len(text: str, stops: list[str]) -> int:
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


@pytest.mark.parametrize("seed", range(5))
def test_incremental_matching_agrees_with_a_naive_search(seed: int) -> None:
    rng = random.Random(seed)
    stops = ["".join(rng.choices("abc", k=rng.randint(1, 6))) for _ in range(rng.randint(1, 8))]
    matcher = StopStrings(stops)
    text = ""
    for _ in range(60):
        checked, text = len(text), text + "".join(rng.choices("abcd", k=rng.randint(1, 3)))
        assert matcher.first_match(text, checked) == naive_first_match(text, stops, checked), (stops, text)
        assert matcher.partial_len(text) == naive_partial_len(text, stops), (stops, text)


def test_cost_per_token_does_not_grow_with_the_output() -> None:
    """1,000 stops of 1,000 characters: the old matcher took ~1 s per token of 8 samples at 300 characters of
    text (scripts/bench_stop_strings.py); bounded here at 20 ms for one sample after 1,200 characters."""
    rng = random.Random(0)
    tokenizer = Tokenizer.from_pretrained(TINY_TOKENIZER)
    stops = ["".join(rng.choices("xyz", k=999)) + "q" for _ in range(1000)]
    detok = IncrementalDetokenizer(tokenizer, [1], stop=stops)
    tokens = [printable_script([0], p) for p in range(1300)]
    for token in tokens[:1200]:
        detok.add_tokens([token])
    start = time.perf_counter()
    for token in tokens[1200:]:
        detok.add_tokens([token])
    per_token = (time.perf_counter() - start) / 100
    print(
        f"stop strings: {per_token * 1e3:.3f} ms per token with 1000 stops x 1000 chars after {len(detok.text)} chars"
    )
    assert len(detok.text) >= 1200 and not detok.finished
    assert per_token < 0.02


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    engine = fake_engine(script=printable_script, step_seconds=0.02, max_num_seqs=16, num_pages=256)
    with RunningServer(engine, load_config(None, served_model_name="scripted")) as running:
        yield running


@pytest.mark.parametrize(
    ("stop", "limit"), [(["x"] * 65, "max_stop_strings=64"), (["y" * 513], "max_stop_string_chars=512")]
)
@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_too_many_or_too_long_stops_are_a_400_naming_the_limit(
    server: RunningServer, stop: list[str], limit: str, route: str
) -> None:
    body = {"model": "scripted", "max_tokens": 2, "stop": stop}
    body |= {"prompt": "hi"} if route == "/v1/completions" else {"messages": [{"role": "user", "content": "hi"}]}
    reply = http("POST", f"{server.url}{route}", json_body=body)
    assert reply.status == 400, reply.body
    error = reply.json()["error"]
    assert limit in error["message"] and error["param"] == "stop"


def test_a_request_with_a_thousand_long_stops_does_not_slow_a_victim_stream() -> None:
    """Limits raised to let the issue's hostile request in: 1,000 stops of 1,000 characters, n=8 (the old matcher
    spent ~1 s per step on it)."""
    stops = ["".join(random.Random(i).choices("xyz", k=999)) + "q" for i in range(1000)]

    async def hostile(session: aiohttp.ClientSession, url: str) -> None:
        body = {"model": "scripted", "prompt": "hostile", "max_tokens": 100, "n": 8, "stop": stops}
        async with session.post(f"{url}/v1/completions", json=body) as response:
            assert response.status == 200, await response.text()

    limits = LimitsConfig(max_stop_strings=1000, max_stop_string_chars=1000)
    engine = fake_engine(script=printable_script, step_seconds=0.02, max_num_seqs=16, num_pages=256, limits=limits)
    with RunningServer(engine, load_config(None, served_model_name="scripted")) as server:
        idle = victim_gap(server.url)
        loaded = victim_gap(server.url, hostile, head_start=0.5)
    assert_victim_unharmed(idle, loaded, "1000 stops of 1000 characters, n=8")

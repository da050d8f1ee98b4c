"""``use_beam_search`` on the completion and chat routes, over the scripted engine (two candidates a step: the
script's token at -0.5 and the next id at -1.5): the choices are ``LLM.beam_search``'s beams, whole, streamed or
not; what a search cannot honour is a 400 naming the field. The search's maths against transformers' is in
tests/test_beam_search.py."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fake_runner import fake_engine
from server_utils import RunningServer, assert_engine_left_empty, http

from jllm.beam_search import BeamSearchParams
from jllm.config import load_config
from jllm.engine import LLMEngine
from jllm.llm import LLM

MODEL = "scripted"


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    return fake_engine()


@pytest.fixture(scope="module")
def server(engine: LLMEngine) -> Iterator[RunningServer]:
    with RunningServer(engine, load_config(None, served_model_name=MODEL)) as running:
        yield running


@pytest.fixture(autouse=True)
def engine_is_left_empty(engine: LLMEngine) -> Iterator[None]:
    yield
    assert_engine_left_empty(engine)


def offline_beams(prompts: list[list[int]], width: int, max_tokens: int, **fields: Any) -> list[list[list[int]]]:
    """Each prompt's beams' generated tokens from ``LLM.beam_search`` over another scripted engine."""
    llm = LLM.__new__(LLM)  # the constructor builds a real engine; the scripted one stands in
    llm.engine, llm._ids = fake_engine(), itertools.count()
    outputs = llm.beam_search(prompts, BeamSearchParams(beam_width=width, max_tokens=max_tokens, **fields))
    return [[s.tokens[len(p) :] for s in out.sequences] for p, out in zip(prompts, outputs, strict=True)]


def completion(server: RunningServer, **body: Any) -> Any:
    reply = http("POST", f"{server.url}/v1/completions", json_body={"model": MODEL, **body})
    assert reply.status == 200, reply.body[:500]
    return reply.json()


def test_completion_choices_are_the_offline_beams_of_each_prompt(server: RunningServer, engine: LLMEngine) -> None:
    prompts = [[7, 8], [20, 21, 22]]
    reply = completion(server, prompt=prompts, use_beam_search=True, n=3, max_tokens=4, length_penalty=0.5)
    expected = offline_beams(prompts, 3, 4, length_penalty=0.5)
    assert [c["index"] for c in reply["choices"]] == list(range(6))
    decode = engine.tokenizer.decode
    assert [c["text"] for c in reply["choices"]] == [decode(beam) for beams in expected for beam in beams]
    assert {c["finish_reason"] for c in reply["choices"]} == {"length"}
    usage = reply["usage"]
    assert usage["prompt_tokens"] == 5 and usage["completion_tokens"] == 6 * 4


def test_streamed_chat_sends_each_beam_whole(server: RunningServer) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "use_beam_search": True,
        "n": 2,
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    reply = http("POST", f"{server.url}/v1/chat/completions", json_body=body)
    assert reply.status == 200 and reply.body.endswith(b"data: [DONE]\n\n")
    events = [json.loads(line[6:]) for line in reply.body.decode().splitlines() if line.startswith("data: {")]
    choices = [choice for event in events for choice in event["choices"]]
    assert [(c["index"], c["delta"].get("role")) for c in choices[:2]] == [(0, "assistant"), (1, "assistant")]
    # then each beam in one chunk, with its finish reason (the chat prompt's scripted tokens decode to no text)
    assert [(c["index"], c["finish_reason"]) for c in choices[2:]] == [(0, "length"), (1, "length")]
    assert events[-1]["usage"]["completion_tokens"] == 2 * 3


@pytest.mark.parametrize(
    "fields, param, message",
    [
        ({"top_p": 0.5}, "top_p", "not supported with use_beam_search"),
        ({"logprobs": 1}, "logprobs", "without logprobs"),
        ({"stop": ["x"]}, "stop", "not supported with use_beam_search"),
        ({"n": 11}, "n", r"n must be an integer in \[1, 10\]"),
        ({"max_tokens": 0}, "max_tokens", "max_tokens must be at least 1"),
        # a beam's score divides by its length to this power: -Infinity or 1e6 were a 500 (division by zero,
        # overflow) once the search ranked its first candidates, NaN a 200 of beams in no order
        *[
            ({"length_penalty": v}, "length_penalty", r"length_penalty must be a number in \[-32, 32\]")
            for v in (float("-inf"), float("nan"), 1e6)
        ],
    ],
)
def test_what_a_search_cannot_honour_is_a_400_naming_it(
    server: RunningServer, fields: dict, param: str, message: str
) -> None:
    body = {"model": MODEL, "prompt": "hello", "use_beam_search": True, "max_tokens": 2, **fields}
    reply = http("POST", f"{server.url}/v1/completions", json_body=body)
    error = reply.json()["error"]
    assert reply.status == 400 and error["param"] == param, error
    assert re.search(message, error["message"]), error


def test_neutral_sampling_values_pass_with_a_search(server: RunningServer) -> None:
    """Clients that send every field at its neutral value (top_p 1, no stop, zero penalties) still get beams."""
    neutral = {"top_p": 1.0, "stop": [], "presence_penalty": 0, "frequency_penalty": 0.0, "seed": None}
    reply = completion(server, prompt=[7], use_beam_search=True, n=2, max_tokens=2, **neutral)
    assert len(reply["choices"]) == 2
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "use_beam_search": True, "max_tokens": 2}
    reply = http("POST", f"{server.url}/v1/chat/completions", json_body={**chat, "response_format": {"type": "text"}})
    assert reply.status == 200 and len(reply.json()["choices"]) == 1, reply.body[:300]

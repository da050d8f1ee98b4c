"""A structured-output grammar that breaks mid-generation reaches the client as an error.

`a{1000000}` passes llguidance's check at the door, then builds too many lexer expressions on the first `a` it
consumes. The request used to end with finish reason "stop" and text that does not follow the constraint, the
failure only an ERROR line in the server's log. Now (as vLLM's finish reason "error"): a whole response is a 400 in
OpenAI's error JSON (code ``structured_output_failed``), a stream ends with an error event before ``[DONE]``, and the
request's other samples are aborted with their pages freed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fake_runner import fake_engine
from server_utils import RunningServer, assert_engine_left_empty, http, metrics

from jllm.config import load_config
from jllm.engine import LLMEngine

BROKEN = {"model": "scripted", "prompt": "hi", "max_tokens": 8, "guided_regex": "[0-9]{3}a{1000000}"}


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    return fake_engine(step_seconds=0.002)


@pytest.fixture(scope="module")
def server(engine: LLMEngine) -> Iterator[RunningServer]:
    with RunningServer(engine, load_config(None, served_model_name="scripted")) as running:
        yield running


@pytest.fixture(autouse=True)
def _engine_left_empty(engine: LLMEngine) -> Iterator[None]:
    yield
    assert_engine_left_empty(engine)


def _events(raw: bytes) -> list[dict]:
    events = raw.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    return [json.loads(e.removeprefix("data: ")) for e in events[:-2]]


def _check_error(error: dict) -> None:
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["code"] == "structured_output_failed"
    assert "too many expressions constructed" in error["message"] and "after 3 tokens" in error["message"]


@pytest.mark.parametrize("n", [1, 2])
def test_a_whole_response_whose_grammar_breaks_is_a_400(server: RunningServer, n: int) -> None:
    reply = http("POST", f"{server.url}/v1/completions", json_body={**BROKEN, "n": n, "temperature": 1.0})
    assert reply.status == 400, reply.body
    _check_error(reply.json()["error"])


def test_a_chat_response_whose_grammar_breaks_is_a_400(server: RunningServer) -> None:
    body = {k: v for k, v in BROKEN.items() if k != "prompt"} | {"messages": [{"role": "user", "content": "hi"}]}
    reply = http("POST", f"{server.url}/v1/chat/completions", json_body=body)
    assert reply.status == 400, reply.body
    _check_error(reply.json()["error"])


@pytest.mark.parametrize("n", [1, 2])
def test_a_stream_whose_grammar_breaks_ends_with_an_error_event(server: RunningServer, n: int) -> None:
    before = metrics(server.url).get("jllm:request_success_total{error}", 0)
    reply = http("POST", f"{server.url}/v1/completions", json_body={**BROKEN, "n": n, "stream": True})
    assert reply.status == 200
    *chunks, last = _events(reply.body)
    _check_error(last["error"])
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)  # no choice claims it stopped
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"][0]["index"] == 0) == "000"
    assert metrics(server.url)["jllm:request_success_total{error}"] == before + 1


def test_the_server_serves_a_grammar_that_works_afterwards(server: RunningServer) -> None:
    reply = http("POST", f"{server.url}/v1/completions", json_body={**BROKEN, "guided_regex": "[0-9]{3}x"})
    assert reply.status == 200, reply.body
    choice = reply.json()["choices"][0]
    assert choice["text"] == "000x" and choice["finish_reason"] == "stop"

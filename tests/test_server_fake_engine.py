"""The server's streaming, choices and disconnect handling over the scripted engine: no model, milliseconds a step.

The scripted runner's tokens are known in advance, so what a client receives is checked against the script.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
from collections.abc import Iterator

import aiohttp
import pytest
from fake_runner import counting_script, fake_engine
from server_utils import RunningServer, assert_engine_left_empty, http

from jllm.config import load_config
from jllm.engine import LLMEngine

MODEL = "scripted"


@pytest.fixture
def engine() -> LLMEngine:
    return fake_engine(step_seconds=0.002)


@pytest.fixture
def server(engine: LLMEngine) -> Iterator[RunningServer]:
    with RunningServer(engine, load_config(None, served_model_name=MODEL)) as running:
        yield running
    assert_engine_left_empty(engine)


def expected_text(engine: LLMEngine, prompt: str, count: int) -> str:
    ids = engine.inputs.encode(prompt).token_ids
    return engine.tokenizer.decode([counting_script(ids, len(ids) + k) for k in range(count)])


def stream(url: str, body: dict) -> list[dict]:
    """The SSE events of one streamed request, [DONE] checked and dropped."""
    raw = http("POST", url, json_body={**body, "stream": True}).body
    events = raw.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    return [json.loads(e.removeprefix("data: ")) for e in events[:-2]]


def test_streamed_and_whole_completions_carry_the_scripted_text(server: RunningServer, engine: LLMEngine) -> None:
    body = {"model": MODEL, "prompt": ["hello", "world"], "max_tokens": 7, "n": 2, "temperature": 1.0}
    whole = http("POST", f"{server.url}/v1/completions", json_body=body).json()
    texts = {c["index"]: c["text"] for c in whole["choices"]}
    expected = {i: expected_text(engine, ["hello", "world"][i // 2], 7) for i in range(4)}
    assert texts == expected and {c["finish_reason"] for c in whole["choices"]} == {"length"}
    assert whole["usage"]["completion_tokens"] == 28

    chunks = stream(f"{server.url}/v1/completions", body)
    streamed: dict[int, str] = {}
    finishes: dict[int, list] = {}
    for chunk in chunks:
        [choice] = chunk["choices"]
        streamed[choice["index"]] = streamed.get(choice["index"], "") + choice["text"]
        finishes.setdefault(choice["index"], []).append(choice["finish_reason"])
    assert streamed == expected
    for reasons in finishes.values():  # each choice reports its finish once, in its last chunk
        assert reasons[-1] == "length" and reasons[:-1] == [None] * (len(reasons) - 1)


def test_chat_stream_sends_the_role_then_the_scripted_content(server: RunningServer, engine: LLMEngine) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    chunks = stream(f"{server.url}/v1/chat/completions", body)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(c["choices"][0]["delta"]["content"] for c in chunks[1:])
    prompt = engine.inputs.render_chat([{"role": "user", "content": "hi"}])
    ids = prompt.token_ids
    assert content == engine.tokenizer.decode([counting_script(ids, len(ids) + k) for k in range(5)])
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_a_streaming_client_that_hangs_up_frees_its_pages(server: RunningServer, engine: LLMEngine) -> None:
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 100, "stream": True}

    async def read_two_chunks_and_leave() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{server.url}/v1/completions", json=body) as response:
                assert response.status == 200
                await response.content.readuntil(b"\n\n")
                await response.content.readuntil(b"\n\n")

    asyncio.run(read_two_chunks_and_leave())
    assert_engine_left_empty(engine, wait=5)
    assert engine.scheduler.num_generation_tokens < 100


def test_a_prompt_over_the_context_is_a_400_before_the_engine_sees_it(server: RunningServer) -> None:
    reply = http("POST", f"{server.url}/v1/completions", json_body={"prompt": [5] * 200, "max_tokens": 1})
    error = reply.json()["error"]
    assert reply.status == 400 and error["code"] == "context_length_exceeded" and error["param"] == "prompt"


def _prompt_rows(engine: LLMEngine, prompt_ids: list[int], k: int) -> list[tuple[str, float | None, dict | None]]:
    """(token, logprob, top_logprobs) of each prompt token as the scripted runner computes them: the first has none;
    token t has logprob -1.0 behind id (t + 1) % 512 at -0.5 (``fake_runner.scripted_prompt_logprobs``)."""

    def text(token_id: int) -> str:
        return engine.tokenizer.decode([token_id], skip_special_tokens=False)

    rows: list[tuple[str, float | None, dict | None]] = [(text(prompt_ids[0]), None, None)]
    for t in prompt_ids[1:]:
        top = {text((t + 1) % 512): -0.5, text(t): -1.0} if k else {text(t): -1.0}  # the top k, and the token
        rows.append((text(t), -1.0, top))
    return rows


def _rows(logprobs: dict) -> list[tuple[str, float | None, dict | None]]:
    return list(zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True))


def test_echo_with_logprobs_returns_the_prompts_tokens_and_logprobs(server: RunningServer, engine: LLMEngine) -> None:
    prompt_ids = [40, 41, 42, 43]
    body = {"model": MODEL, "prompt": prompt_ids, "max_tokens": 3, "echo": True, "logprobs": 1}
    [choice] = http("POST", f"{server.url}/v1/completions", json_body=body).json()["choices"]
    logprobs = choice["logprobs"]
    assert _rows(logprobs)[:4] == _prompt_rows(engine, prompt_ids, 1)
    generated = [counting_script(prompt_ids, len(prompt_ids) + k) for k in range(3)]
    assert logprobs["tokens"][4:] == [engine.tokenizer.decode([t]) for t in generated]
    assert logprobs["token_logprobs"][4:] == [-0.5] * 3  # the scripted sampler's logprob
    assert choice["text"] == engine.tokenizer.decode(prompt_ids) + engine.tokenizer.decode(generated)
    assert logprobs["text_offset"] == [sum(len(t) for t in logprobs["tokens"][:i]) for i in range(7)]
    assert choice["prompt_logprobs"][0] is None and len(choice["prompt_logprobs"]) == 4  # vLLM's field too

    chunks = stream(f"{server.url}/v1/completions", body)
    streamed = [row for chunk in chunks for row in _rows(chunk["choices"][0]["logprobs"])]
    assert streamed == _rows(logprobs)
    assert "prompt_logprobs" not in chunks[0]["choices"][0]  # not streamed, as vLLM
    offsets = [o for chunk in chunks for o in chunk["choices"][0]["logprobs"]["text_offset"]]
    assert offsets == logprobs["text_offset"]


def test_echo_with_max_tokens_zero_returns_the_prompt_alone(server: RunningServer, engine: LLMEngine) -> None:
    """lm-eval's loglikelihood request: the prompt's logprobs and nothing generated."""
    body = {"model": MODEL, "prompt": "hello there", "max_tokens": 0, "echo": True, "logprobs": 0}
    [choice] = http("POST", f"{server.url}/v1/completions", json_body=body).json()["choices"]
    ids = engine.inputs.encode("hello there").token_ids
    assert choice["text"] == "hello there"
    assert _rows(choice["logprobs"]) == _prompt_rows(engine, ids, 0)
    refused = http("POST", f"{server.url}/v1/completions", json_body={**body, "echo": False})
    assert refused.status == 400 and refused.json()["error"]["param"] == "max_tokens"


def test_a_model_card_by_id_and_the_version(server: RunningServer, engine: LLMEngine) -> None:
    card = http("GET", f"{server.url}/v1/models/{MODEL}").json()
    assert card == {**card, "id": MODEL, "object": "model", "owned_by": "jllm", "max_model_len": engine.max_model_len}
    unknown = http("GET", f"{server.url}/v1/models/org/other-model")
    error = unknown.json()["error"]
    assert unknown.status == 404 and error["code"] == "model_not_found" and error["param"] == "model"
    assert "org/other-model" in error["message"] and set(error) == {"message", "type", "param", "code"}
    assert http("GET", f"{server.url}/version").json() == {"version": importlib.metadata.version("jllm")}


def test_client_request_ids_are_echoed_but_never_the_engines(server: RunningServer, engine: LLMEngine) -> None:
    """Two concurrent requests with one X-Request-Id both succeed (the engine's ids are the server's own), and the
    client's id comes back in the header and the response id; a malformed id is a 400 naming the header."""
    body = {"model": MODEL, "prompt": ["a", "b"], "max_tokens": 20, "temperature": 0.0}

    async def both() -> list[tuple[int, str, dict]]:
        async with aiohttp.ClientSession() as session:

            async def one() -> tuple[int, str, dict]:
                headers = {"X-Request-Id": "foo"}
                async with session.post(f"{server.url}/v1/completions", json=body, headers=headers) as r:
                    return r.status, r.headers["X-Request-Id"], await r.json()

            return await asyncio.gather(one(), one())

    for status, echoed, reply in asyncio.run(both()):
        assert (status, echoed, reply["id"]) == (200, "foo", "cmpl-foo")
        assert len(reply["choices"]) == 2
    assert http("POST", f"{server.url}/v1/completions", json_body=body, headers={"X-Request-Id": "foo-1"}).status == 200
    bad = http("POST", f"{server.url}/v1/completions", json_body=body, headers={"X-Request-Id": "x" * 300})
    assert bad.status == 400 and bad.json()["error"]["param"] == "X-Request-Id"
    plain = http("POST", f"{server.url}/v1/completions", json_body=body)
    ours = {k.lower(): v for k, v in plain.headers.items()}["x-request-id"]  # header names are case-insensitive
    assert plain.status == 200 and plain.json()["id"] == f"cmpl-{ours}"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": "hi", "max_tokens": 2}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}),
        ("/v1/embeddings", {"input": "hi"}),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_a_body_request_id_follows_the_headers_rule(server: RunningServer, path: str, body: dict) -> None:
    """vLLM's body ``request_id`` names the response and the log lines: a newline in it forged log lines and
    100,000 characters went into every one; it now takes X-Request-Id's rule, or a 400 naming it."""
    for bad in ("a\nb", "x" * 300, ""):
        reply = http("POST", f"{server.url}{path}", json_body={**body, "model": MODEL, "request_id": bad})
        assert reply.status == 400 and reply.json()["error"]["param"] == "request_id", reply.body
    if path != "/v1/embeddings":  # the scripted engine has no encoder
        reply = http("POST", f"{server.url}{path}", json_body={**body, "model": MODEL, "request_id": "mine-1"})
        assert reply.status == 200 and reply.json()["id"].endswith("-mine-1")

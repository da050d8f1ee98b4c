"""The server under bad input, disconnects, overload, slow or dying engine steps, and a graceful stop.

One engine for the module; each test starts its own server (an ``AsyncEngine`` thread and a listener, cheap) over
it, and every test ends with the engine holding no request and no KV page.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from server_utils import (
    API_KEY,
    RunningServer,
    assert_engine_left_empty,
    engine_config,
    http,
    metrics,
    tiny_chat_model,
)

from jllm.build import build_engine
from jllm.engine import LLMEngine
from jllm.outputs import RequestOutput

pytestmark = pytest.mark.slow  # every test serves over an engine of the tiny model

MODEL = "tiny-chat"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
COMPLETION = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
LONG = {"max_tokens": 200, "ignore_eos": True, "temperature": 1.0}  # outlives every test step below
DROP = object()


@pytest.fixture(scope="module")
def model_dir(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_chat_model(tmp_path_factory.getbasetemp(), default_model_dir)


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> LLMEngine:
    return build_engine(engine_config(model_dir), show_progress=False)


@pytest.fixture
def serve(engine: LLMEngine, model_dir: Path) -> Iterator[Callable[..., RunningServer]]:
    """Starts servers over the module's engine; afterwards the engine must be empty again."""
    started: list[RunningServer] = []

    def start(**async_engine_args: Any) -> RunningServer:
        config = engine_config(model_dir, api_key=API_KEY, served_model_name=MODEL)
        started.append(RunningServer(engine, config, **async_engine_args).__enter__())
        return started[-1]

    yield start
    for server in started:
        server.__exit__(None, None, None)
    assert_engine_left_empty(engine)
    assert engine.scheduler.num_running == engine.scheduler.num_waiting == 0


@pytest.fixture
def slow_steps(engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Makes every engine step take at least ``seconds`` (a big model on a busy device)."""
    step = engine.step

    def slow_down(seconds: float) -> None:
        def slow_step() -> list[RequestOutput]:
            time.sleep(seconds)
            return step()

        monkeypatch.setattr(engine, "step", slow_step)

    return slow_down


def _with(base: dict, **changes: Any) -> dict:
    body = {**base, **changes}
    return {k: v for k, v in body.items() if v is not DROP}


@dataclass
class Case:
    name: str
    body: dict | bytes
    status: int
    param: str | None = None
    code: str | None = None
    path: str = "/v1/completions"
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=lambda: AUTH)
    message_start: str = ""


def _message(role: str = "user", content: Any = "hi") -> dict:
    return _with(CHAT, messages=[{"role": role, "content": content}])


CHAT_PATH = "/v1/chat/completions"
TOO_LONG = "This model's maximum context length is 256 tokens"
BAD_INPUTS = [
    Case("malformed JSON", b'{"prompt": "hi",', 400, message_start="the request body is not valid JSON"),
    Case("empty body", b"", 400, message_start="the request body is not valid JSON"),
    Case("body is a list", b"[1, 2]", 400),
    Case("missing prompt", _with(COMPLETION, prompt=DROP), 400, "prompt"),
    Case("prompt is a number", _with(COMPLETION, prompt=5), 400, "prompt"),
    Case("prompt list is empty", _with(COMPLETION, prompt=[]), 400, "prompt"),
    Case("prompt is an empty string", _with(COMPLETION, prompt=""), 400, "prompt"),
    Case("one of the prompts is empty", _with(COMPLETION, prompt=["hi", ""]), 400, "prompt"),
    Case("prompt token outside the vocabulary", _with(COMPLETION, prompt=[1, 10**6]), 400, "prompt"),
    Case("negative prompt token", _with(COMPLETION, prompt=[[5], [-1]]), 400, "prompt"),
    Case("prompt token beyond 64 bits", _with(COMPLETION, prompt=[2**70], echo=True), 400, "prompt"),
    Case("max_tokens is a string", _with(COMPLETION, max_tokens="10"), 400, "max_tokens"),
    Case("max_tokens is negative", _with(COMPLETION, max_tokens=-1), 400, "max_tokens"),
    Case("max_tokens is zero", _with(COMPLETION, max_tokens=0), 400, "max_tokens"),
    Case("max_tokens is huge", _with(COMPLETION, max_tokens=10**9), 400, code="context_length_exceeded"),
    Case("n is zero", _with(COMPLETION, n=0, temperature=1.0), 400, "n"),
    Case("n is over 128", _with(COMPLETION, n=129, temperature=1.0), 400, "n"),
    Case("temperature is negative", _with(COMPLETION, temperature=-0.5), 400, "temperature"),
    Case("temperature is a string", _with(COMPLETION, temperature="hot"), 400, "temperature"),
    Case("top_p is zero", _with(COMPLETION, top_p=0), 400, "top_p"),
    Case("presence_penalty is out of range", _with(COMPLETION, presence_penalty=3), 400, "presence_penalty"),
    Case("logprobs is over 20", _with(COMPLETION, logprobs=21), 400, "logprobs"),
    Case("stop is an empty string", _with(COMPLETION, stop=[""]), 400, "stop"),
    Case("min_tokens above max_tokens", _with(COMPLETION, min_tokens=5), 400, "min_tokens"),
    Case("stream is a string", _with(COMPLETION, stream="yes"), 400, "stream"),
    Case("stream_options without stream", _with(COMPLETION, stream_options={"include_usage": True}), 400,
         "stream_options", message_start="stream_options: is only allowed when stream is true"),
    Case("seed beyond 64 bits", _with(COMPLETION, seed=2**63), 400, "seed"),
    Case("top_k beyond 32 bits", _with(COMPLETION, top_k=2**31), 400, "top_k"),
    Case("stop_token_ids beyond 32 bits", _with(COMPLETION, stop_token_ids=[2**31]), 400, "stop_token_ids"),
    Case("best_of above n", _with(COMPLETION, best_of=2), 400, "best_of"),
    Case("best_of is zero", _with(COMPLETION, best_of=0), 400, "best_of"),
    Case("logit_bias out of range", _with(COMPLETION, logit_bias={"5": 101}), 400, "logit_bias"),
    Case("logit_bias key not a token id", _with(COMPLETION, logit_bias={"five": 1}), 400, "logit_bias"),
    Case("suffix is given", _with(COMPLETION, suffix="def f():"), 400, "suffix"),
    Case("response_format json_schema without its schema", _with(COMPLETION, response_format={"type": "json_schema"}),
         400, "response_format"),
    Case("guided_json schema is not a schema", _with(COMPLETION, guided_json={"type": 3}), 400, "guided_json"),
    Case("prompt over the context", _with(COMPLETION, prompt="hello " * 300), 400, None, "context_length_exceeded",
         message_start=TOO_LONG),
    Case("unknown model", _with(COMPLETION, model="gpt-5"), 404, "model", "model_not_found"),
    Case("empty messages", _with(CHAT, messages=[]), 400, "messages", path=CHAT_PATH),
    Case("missing messages", _with(CHAT, messages=DROP), 400, "messages", path=CHAT_PATH),
    Case("bad role", _message(role="robot"), 400, "messages", path=CHAT_PATH),
    Case("content is a number", _message(content=5), 400, "messages", path=CHAT_PATH),
    Case("image content part", _message(content=[{"type": "image_url", "image_url": {"url": "x"}}]), 400, "messages",
         path=CHAT_PATH, message_start="messages.0.content: part 0 has type 'image_url': the served models take text"),
    Case("top_logprobs without logprobs", _with(CHAT, top_logprobs=2), 400, "top_logprobs", path=CHAT_PATH),
    Case("top_logprobs over 20", _with(CHAT, logprobs=True, top_logprobs=21), 400, "top_logprobs", path=CHAT_PATH),
    Case("max_completion_tokens is zero", _with(CHAT, max_completion_tokens=0), 400, "max_completion_tokens",
         path=CHAT_PATH),
    Case("tool without its function", _with(CHAT, tools=[{"type": "function"}]), 400, "tools", path=CHAT_PATH),
    Case("tools with auto but no parser", _with(CHAT, tools=[{"type": "function", "function": {"name": "f"}}]), 400,
         "tool_choice", path=CHAT_PATH),
    Case("user content is null", _message(content=None), 400, "messages", path=CHAT_PATH),
    Case("chat echo not a boolean", _with(CHAT, echo="yes"), 400, "echo", path=CHAT_PATH),
    Case("continue_final_message beside a generation prompt", _with(CHAT, continue_final_message=True), 400,
         "continue_final_message", path=CHAT_PATH),
    Case("more prompts than the queue can hold", _with(COMPLETION, prompt=["hi"] * 1025), 400, "prompt"),
    Case("unknown response_format", _with(CHAT, response_format={"type": "yaml"}), 400, "response_format",
         path=CHAT_PATH),
    Case("chat over the context", _message(content="hello " * 300), 400, None, "context_length_exceeded",
         path=CHAT_PATH, message_start=TOO_LONG),
    Case("unknown chat model", _with(CHAT, model="gpt-5"), 404, "model", "model_not_found", path=CHAT_PATH),
    Case("missing API key", CHAT, 401, code="invalid_api_key", path=CHAT_PATH, headers={}),
    Case("wrong API key", CHAT, 401, code="invalid_api_key", path=CHAT_PATH, headers={"Authorization": "Bearer x"}),
    Case("API key without Bearer", CHAT, 401, code="invalid_api_key", path=CHAT_PATH,
         headers={"Authorization": API_KEY}),
    Case("unknown route", COMPLETION, 404, code="not_found", path="/v1/audio/transcriptions"),
    Case("GET on a POST route", b"", 405, method="GET"),
    Case("oversized body", _with(COMPLETION, prompt="x" * (17 << 20)), 413),
    Case("tokenize without prompt or messages", {}, 400, path="/tokenize"),
    Case("tokenize continuing a message beside a generation prompt",
         {"messages": CHAT["messages"], "continue_final_message": True}, 400, "continue_final_message",
         path="/tokenize"),
    Case("detokenize outside the vocabulary", {"tokens": [-1]}, 400, "tokens", path="/detokenize"),
    Case("detokenize beyond 64 bits", {"tokens": [2**70]}, 400, "tokens", path="/detokenize"),
]  # fmt: skip


@pytest.fixture(scope="module")
def shared_server(engine: LLMEngine, model_dir: Path) -> Iterator[RunningServer]:
    with RunningServer(engine, engine_config(model_dir, api_key=API_KEY, served_model_name=MODEL)) as server:
        yield server


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda case: case.name)
def test_bad_input_gets_its_status_and_openai_error_json(shared_server: RunningServer, case: Case) -> None:
    data = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
    headers = {"Content-Type": "application/json", **case.headers}
    reply = http(case.method, f"{shared_server.url}{case.path}", data=data, headers=headers)
    assert reply.status == case.status, reply.body[:500]
    assert reply.headers["Content-Type"].startswith("application/json")
    error = reply.json()["error"]
    assert set(reply.json()) == {"error"} and set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"].startswith(case.message_start)
    assert error["type"] == "invalid_request_error"
    if case.param is not None:
        assert error["param"] == case.param and case.param in error["message"], error
    if case.code is not None:
        assert error["code"] == case.code, error


def test_server_still_answers_after_bad_inputs(shared_server: RunningServer, engine: LLMEngine) -> None:
    for case in BAD_INPUTS[:10]:  # again, in case the table ran in another order
        data = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
        http(case.method, f"{shared_server.url}{case.path}", data=data, headers=case.headers)
    reply = http("POST", f"{shared_server.url}/v1/chat/completions", json_body=CHAT, headers=AUTH)
    assert reply.status == 200 and reply.json()["usage"]["completion_tokens"] == 2
    assert http("GET", f"{shared_server.url}/health").status == 200
    assert not engine.requests


@pytest.mark.parametrize(
    "changes", [{"top_k": 2**40}, {"seed": 2**64}, {"stop_token_ids": [2**40], "min_tokens": 1}], ids=str
)
def test_integers_too_wide_for_the_device_are_refused_before_they_reach_the_engine(
    shared_server: RunningServer, engine: LLMEngine, changes: dict
) -> None:
    """A top_k beyond int32 used to reach the step's NumPy arrays and kill the engine loop for every client."""
    body = {**COMPLETION, "temperature": 1.0, **changes}
    refused = http("POST", f"{shared_server.url}/v1/completions", json_body=body, headers=AUTH)
    assert refused.status == 400 and refused.json()["error"]["param"] == next(iter(changes))
    reply = http("POST", f"{shared_server.url}/v1/completions", json_body=COMPLETION, headers=AUTH)
    assert reply.status == 200 and not engine.requests


async def _read_until_content(response: aiohttp.ClientResponse) -> None:
    """Reads SSE lines until one carries generated text (past the chat role chunk)."""
    async for line in response.content:
        if line.startswith(b"data: {") and b'"role"' not in line:
            return
    raise AssertionError("the stream ended before any content")


def test_64_clients_that_hang_up_mid_stream_free_every_page(
    serve: Callable[..., RunningServer], engine: LLMEngine
) -> None:
    server = serve()
    before = metrics(server.url)

    async def hang_up_after_first_token(session: aiohttp.ClientSession, i: int) -> None:
        path, base = ("/v1/chat/completions", CHAT) if i % 2 else ("/v1/completions", COMPLETION)
        body = {**base, **LONG, "stream": True, "seed": i}
        async with session.post(f"{server.url}{path}", json=body) as response:
            assert response.status == 200
            await _read_until_content(response)
            response.close()  # drops the connection mid-stream

    async def run() -> None:
        async with aiohttp.ClientSession(headers=AUTH) as session:
            await asyncio.gather(*(hang_up_after_first_token(session, i) for i in range(64)))

    asyncio.run(run())
    after = _wait_for_idle(server.url)
    assert after["jllm:num_requests_running"] == after["jllm:num_requests_waiting"] == 0
    assert after["jllm:kv_cache_pages_in_use"] == after["jllm:kv_cache_usage_perc"] == 0
    assert after["jllm:request_success_total{abort}"] - before.get("jllm:request_success_total{abort}", 0) == 64
    generated = after["jllm:generation_tokens_total"] - before["jllm:generation_tokens_total"]
    assert generated < 64 * 20  # aborted within a few steps of hanging up, not run to 200 tokens


def _wait_for_idle(url: str, timeout: float = 20) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        current = metrics(url)
        idle = current["jllm:num_requests_running"] + current["jllm:num_requests_waiting"] == 0
        if (idle and current["jllm:kv_cache_pages_in_use"] == 0) or time.monotonic() > deadline:
            return current
        time.sleep(0.05)


def test_a_new_server_over_a_used_engine_reports_its_token_counts_before_its_first_step(
    serve: Callable[..., RunningServer], engine: LLMEngine
) -> None:
    """The counters are cumulative: a fresh server's first scrape must not read 0 for an engine that has worked."""
    first = serve()
    assert http("POST", f"{first.url}/v1/completions", json_body=COMPLETION, headers=AUTH).status == 200
    first.stop(drain_timeout=0)  # one engine thread at a time
    counted = metrics(serve().url)
    assert counted["jllm:generation_tokens_total"] == engine.scheduler.num_generation_tokens >= 2
    assert counted["jllm:prompt_tokens_total"] == engine.scheduler.num_prompt_tokens >= 1


def test_a_non_streaming_client_that_hangs_up_aborts_its_request(
    serve: Callable[..., RunningServer], engine: LLMEngine, slow_steps: Callable[[float], None]
) -> None:
    slow_steps(0.02)
    server = serve()
    before = metrics(server.url)

    async def give_up() -> None:
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(headers=AUTH, timeout=timeout) as session:
            with pytest.raises(TimeoutError):
                await session.post(f"{server.url}/v1/completions", json={**COMPLETION, **LONG})

    asyncio.run(give_up())
    after = _wait_for_idle(server.url, timeout=2)
    assert after["jllm:kv_cache_pages_in_use"] == 0
    assert after["jllm:request_success_total{abort}"] - before.get("jllm:request_success_total{abort}", 0) == 1
    assert 0 < after["jllm:generation_tokens_total"] - before["jllm:generation_tokens_total"] < LONG["max_tokens"]


def test_a_full_queue_answers_429_with_retry_after(
    serve: Callable[..., RunningServer], engine: LLMEngine, slow_steps: Callable[[float], None]
) -> None:
    slow_steps(0.05)
    server = serve(max_queued_requests=2)
    body = {**CHAT, **LONG, "stream": True}

    async def run() -> None:
        async with aiohttp.ClientSession(headers=AUTH) as session:
            url = f"{server.url}/v1/chat/completions"
            running = [await session.post(url, json=body) for _ in range(engine.scheduler.max_num_seqs)]
            for response in running:
                await _read_until_content(response)  # every slot is busy
            waiting = [await session.post(url, json=body) for _ in range(2)]
            assert [r.status for r in running + waiting] == [200] * (len(running) + 2)
            async with session.post(url, json=CHAT) as rejected:
                assert rejected.status == 429
                assert rejected.headers["Retry-After"] == "1"
                assert (await rejected.json())["error"]["code"] == "queue_full"
            for response in running + waiting:
                response.close()

    asyncio.run(run())
    _wait_for_idle(server.url)
    reply = http("POST", f"{server.url}/v1/chat/completions", json_body=CHAT, headers=AUTH)
    assert reply.status == 200


def test_a_slow_step_does_not_delay_other_connections(
    serve: Callable[..., RunningServer], slow_steps: Callable[[float], None]
) -> None:
    slow_steps(1.0)
    server = serve()

    async def run() -> list[float]:
        async with aiohttp.ClientSession(headers=AUTH) as session:
            stream = await session.post(f"{server.url}/v1/completions", json={**COMPLETION, **LONG, "stream": True})
            await asyncio.sleep(0.2)  # the engine thread is inside a one-second step now
            latencies = []
            for _ in range(5):
                start = time.perf_counter()
                async with session.get(f"{server.url}/v1/models") as response:
                    assert response.status == 200
                latencies.append(time.perf_counter() - start)
            stream.close()
            return latencies

    latencies = asyncio.run(run())
    assert max(latencies) < 0.25, latencies  # a blocked event loop would take the rest of the 1 s step


def test_a_stalled_engine_fails_health_until_it_moves_again(
    serve: Callable[..., RunningServer], slow_steps: Callable[[float], None]
) -> None:
    slow_steps(1.5)
    server = serve(stall_timeout=0.5)

    async def run() -> None:
        async with aiohttp.ClientSession(headers=AUTH) as session:
            stream = await session.post(f"{server.url}/v1/completions", json={**COMPLETION, "stream": True})
            await asyncio.sleep(1.0)  # 0.5 s past the stall timeout, inside the first step
            async with session.get(f"{server.url}/health") as health:
                assert health.status == 503
                error = (await health.json())["error"]
                assert error["code"] == "engine_unhealthy" and "no progress" in error["message"]
            async with session.get(f"{server.url}/ready") as ready:
                assert ready.status == 503
            await stream.read()  # two tokens: the stall ends
            async with session.get(f"{server.url}/health") as health:
                assert health.status == 200

    asyncio.run(run())


def test_a_dead_engine_loop_is_reported_in_stream_health_and_new_requests(
    serve: Callable[..., RunningServer], engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve()
    step = engine.step
    calls = 0

    def dying_step() -> list[RequestOutput]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("device lost")
        return step()

    monkeypatch.setattr(engine, "step", dying_step)
    try:
        reply = http("POST", f"{server.url}/v1/completions", json_body={**COMPLETION, **LONG, "stream": True},
                     headers=AUTH)  # fmt: skip
        events = reply.body.split(b"\n\n")
        assert reply.status == 200 and events[-2:] == [b"data: [DONE]", b""]
        error = json.loads(events[-3].removeprefix(b"data: "))["error"]
        assert error["code"] == "engine_unavailable" and "device lost" in error["message"]
        assert all(b'"choices"' in e for e in events[:-3])  # tokens before the failure came through

        health = http("GET", f"{server.url}/health")
        assert health.status == 503 and "device lost" in health.json()["error"]["message"]
        refused = http("POST", f"{server.url}/v1/chat/completions", json_body=CHAT, headers=AUTH)
        assert refused.status == 503 and refused.json()["error"]["type"] == "server_error"
    finally:
        for request_id in list(engine.requests):  # the dead loop left its request behind
            engine.abort_request(request_id)


def test_graceful_stop_finishes_short_requests_and_aborts_the_rest(
    serve: Callable[..., RunningServer], slow_steps: Callable[[float], None]
) -> None:
    slow_steps(0.05)
    server = serve()
    url = f"{server.url}/v1/completions"

    async def finish_reason(response: aiohttp.ClientResponse) -> str:
        events = (await response.read()).split(b"\n\n")
        assert events[-2:] == [b"data: [DONE]", b""]
        return json.loads(events[-3].removeprefix(b"data: "))["choices"][0]["finish_reason"]

    async def run() -> None:
        async with aiohttp.ClientSession(headers=AUTH) as session:
            short = await session.post(url, json={**COMPLETION, "max_tokens": 10, "stream": True})
            long = await session.post(url, json={**COMPLETION, **LONG, "stream": True})
            await _read_until_content(long)
            stopping = asyncio.ensure_future(asyncio.to_thread(server.stop, 2.0))
            await asyncio.sleep(0.2)
            async with session.get(f"{server.url}/ready") as ready:
                assert ready.status == 503 and (await ready.json())["error"]["code"] == "server_draining"
            async with session.post(url, json=COMPLETION) as refused:
                assert refused.status == 503
            assert await finish_reason(short) == "length"
            assert await finish_reason(long) == "abort"
            await stopping

    asyncio.run(run())

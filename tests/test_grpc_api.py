"""The gRPC API (``jllm.v1.Generation`` and health) with a real grpc client from the checked-in stubs, against the
server over the scripted engine: streamed text, ids and logprobs against the script, routing by model name, 64
concurrent and 32 cancelled streams, each bad input's status and the HTTP API's message for it, the API key, the
queue limit, health while draining, and the metrics.
"""

from __future__ import annotations

import asyncio
import filecmp
import importlib
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from fake_runner import fake_engine
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from server_utils import RunningServer, assert_engine_left_empty, http, wait_until

from jllm.config import load_config
from jllm.engine import LLMEngine
from jllm.serve_config import ModelEntry
from jllm.v1 import generate_pb2 as pb
from jllm.v1 import generate_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-grpc-test"
AUTH = (("authorization", f"Bearer {API_KEY}"),)
MODEL, OTHER = "scripted", "other"
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def letters_script(prompt: Sequence[int], position: int) -> int:
    """Ids 40..99, each one printable character in the tiny tokenizer (so texts are compared, not only ids)."""
    return 40 + (prompt[0] + position) % 60


def other_script(prompt: Sequence[int], position: int) -> int:
    """The second model's tokens: another run of printable ids, so a reply shows which model made it."""
    return 100 - (prompt[0] + position) % 50


@pytest.fixture(scope="module")
def engines() -> dict[str, LLMEngine]:
    return {
        MODEL: fake_engine(script=letters_script, step_seconds=0.002, max_num_seqs=16, num_pages=256),
        OTHER: fake_engine(script=other_script, step_seconds=0.002),
    }


def _serve(engines: dict[str, LLMEngine], **async_engine_args: Any) -> RunningServer:
    """Every engine under its name, with the HTTP API and the gRPC API, behind ``API_KEY``."""
    models = [(ModelEntry((name,), load_config(None, served_model_name=name)), e, None) for name, e in engines.items()]
    config = load_config(None, api_key=API_KEY)
    return RunningServer(None, config, models=models, grpc=True, **async_engine_args)


@pytest.fixture(scope="module")
def server(engines: dict[str, LLMEngine]) -> Iterator[RunningServer]:
    with _serve(engines) as running:
        yield running


@pytest.fixture(autouse=True)
def _nothing_left_running(engines: dict[str, LLMEngine]) -> Iterator[None]:
    """After each test every request has ended and every page is free (aborts land within a few steps)."""
    yield
    for engine in engines.values():
        assert_engine_left_empty(engine, wait=10)


def run(target: str, client: Any) -> Any:
    """``await client(stub)`` on a fresh channel to ``target``."""

    async def go() -> Any:
        async with grpc.aio.insecure_channel(target) as channel:
            return await client(generate_pb2_grpc.GenerationStub(channel))

    return asyncio.run(go())


async def collect(stub: generate_pb2_grpc.GenerationStub, request: pb.GenerateRequest) -> list[pb.GenerateResponse]:
    return [message async for message in stub.Generate(request, metadata=AUTH)]


def choices(messages: list[pb.GenerateResponse]) -> dict[int, pb.TokenDelta]:
    """Each choice's deltas merged (text and ids joined, logprobs concatenated, the last finish kept)."""
    merged: dict[int, pb.TokenDelta] = {}
    for m in messages:
        if m.WhichOneof("event") == "delta":
            merged.setdefault(m.delta.index, pb.TokenDelta(index=m.delta.index)).MergeFrom(m.delta)
    for index in merged:  # MergeFrom joins repeated fields but keeps only the last string: rebuild the text
        merged[index].text = "".join(m.delta.text for m in messages if m.HasField("delta") and m.delta.index == index)
    return merged


async def read_to_end(stream: Any) -> list[pb.GenerateResponse]:
    """The rest of a stream already read with ``read()`` (grpc forbids switching to ``async for``)."""
    messages = []
    while (message := await stream.read()) is not grpc.aio.EOF:
        messages.append(message)
    return messages


def scripted(engine: LLMEngine, prompt_ids: list[int], count: int, script: Any = letters_script) -> list[int]:
    return [script(prompt_ids, len(prompt_ids) + k) for k in range(count)]


def finished_count(url: str, model: str) -> float:
    """``jllm:request_success_total`` of ``model``, every finish reason together."""
    text = http("GET", f"{url}/metrics").body.decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "jllm:request_success_total" and s.labels["model_name"] == model
    )


# ------------------------------------------------------------------------------------------------- the stubs


def test_checked_in_stubs_are_what_the_proto_generates(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    generate = importlib.import_module("generate_grpc_stubs").generate
    written = generate(tmp_path)
    assert [p.name for p in written] == ["generate_pb2.py", "generate_pb2.pyi", "generate_pb2_grpc.py"]
    for path in written:
        assert filecmp.cmp(path, ROOT / "jllm" / "v1" / path.name, shallow=False), f"regenerate {path.name}"


# ------------------------------------------------------------------------------------------------ generation


def test_streamed_deltas_carry_the_scripted_text_ids_logprobs_then_usage(
    server: RunningServer, engines: dict[str, LLMEngine]
) -> None:
    engine = engines[MODEL]
    sampling = pb.SamplingParameters(max_tokens=6, n=2, temperature=1.0, logprobs=1)
    request = pb.GenerateRequest(model=MODEL, text="hello", sampling=sampling, request_id="mine")
    before = finished_count(server.url, MODEL)

    async def call(stub: generate_pb2_grpc.GenerationStub) -> tuple[list[pb.GenerateResponse], Any]:
        stream = stub.Generate(request, metadata=AUTH)
        return [m async for m in stream], await stream.initial_metadata()

    messages, metadata = run(server.grpc_target, call)
    assert dict(metadata)["x-request-id"] == "mine"
    prompt_ids = engine.inputs.encode("hello").token_ids
    ids = scripted(engine, prompt_ids, 6)
    got = choices(messages)
    assert sorted(got) == [0, 1]
    for c in got.values():
        assert list(c.token_ids) == ids and c.text == engine.tokenizer.decode(ids) != ""
        assert c.finish_reason == "length"
        # The scripted sampler: the token at -0.5, the next id at -1.5 (fake_runner.ScriptedRunner.launch).
        assert [(lp.token_id, lp.logprob, lp.rank) for lp in c.logprobs] == [(t, -0.5, 1) for t in ids]
        assert [[(t.token_id, t.logprob, t.rank) for t in lp.top_logprobs] for lp in c.logprobs] == [
            [(t, -0.5, 1)] for t in ids
        ]
        assert [lp.token for lp in c.logprobs] == [engine.tokenizer.decode([t]) for t in ids]
    finishes = [m.delta.finish_reason for m in messages if m.HasField("delta")]
    assert finishes.count("length") == 2 and set(finishes) <= {"", "length"}  # only each choice's last has one
    assert messages[-1].WhichOneof("event") == "usage"
    assert messages[-1].usage == pb.Usage(
        prompt_tokens=len(prompt_ids), completion_tokens=12, total_tokens=len(prompt_ids) + 12
    )
    assert finished_count(server.url, MODEL) == before + 1  # the same metrics as the HTTP API, under model_name


def test_text_token_and_chat_prompts_stream_what_the_http_api_returns(
    server: RunningServer, engines: dict[str, LLMEngine]
) -> None:
    """Each prompt kind, greedy, against the HTTP API on the same server and against the script; the model name
    routes to its engine (the other model's script)."""
    sampling = pb.SamplingParameters(max_tokens=5, temperature=0.0, stop_token_ids=[7])
    chat = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="hi")])
    cases = [
        (pb.GenerateRequest(model=MODEL, text="hello", sampling=sampling), "/v1/completions", {"prompt": "hello"}),
        (pb.GenerateRequest(token_ids=pb.TokenIds(ids=[40, 41]), sampling=sampling), "/v1/completions",
         {"prompt": [40, 41]}),
        (pb.GenerateRequest(model=OTHER, text="hello", sampling=sampling), "/v1/completions",
         {"model": OTHER, "prompt": "hello"}),
        (pb.GenerateRequest(model=MODEL, chat=chat, sampling=sampling), "/v1/chat/completions",
         {"messages": [{"role": "user", "content": "hi"}]}),
    ]  # fmt: skip
    for request, path, body in cases:
        http_body = {"max_tokens": 5, "temperature": 0.0, "stop_token_ids": [7], **body}
        reply = http("POST", f"{server.url}{path}", json_body=http_body, headers={"Authorization": AUTH[0][1]}).json()
        choice = reply["choices"][0]
        expected = choice["text"] if "text" in choice else choice["message"]["content"]
        [got] = choices(run(server.grpc_target, lambda stub, r=request: collect(stub, r))).values()
        assert got.text == expected != "" and got.finish_reason == choice["finish_reason"] == "length"
    engine = engines[OTHER]
    [other] = choices(run(server.grpc_target, lambda stub: collect(stub, cases[2][0]))).values()
    assert list(other.token_ids) == scripted(engine, engine.inputs.encode("hello").token_ids, 5, other_script)


def test_structured_output_and_stop_strings_end_as_over_http(server: RunningServer) -> None:
    """A choice constraint (the output is one of the choices) and a stop string (named in the stop reason), each
    against the same request over HTTP."""
    long_text = http("POST", f"{server.url}/v1/completions", json_body={"prompt": "hello", "max_tokens": 8},
                     headers={"Authorization": AUTH[0][1]}).json()["choices"][0]["text"]  # fmt: skip
    stop = long_text[len(long_text) // 2 :][:2]
    assert stop.strip()
    choice = pb.StructuredOutput(choice=pb.StructuredOutput.Choices(choices=["yes", "no"]))
    cases = [
        (pb.GenerateRequest(text="hello", structured_output=choice, sampling=pb.SamplingParameters(max_tokens=8)),
         {"structured_outputs": {"choice": ["yes", "no"]}}),
        (pb.GenerateRequest(text="hello", sampling=pb.SamplingParameters(max_tokens=8, stop=[stop])),
         {"stop": [stop]}),
    ]  # fmt: skip
    results = []
    for request, fields in cases:
        body = {"prompt": "hello", "max_tokens": 8, **fields}
        want = http("POST", f"{server.url}/v1/completions", json_body=body, headers={"Authorization": AUTH[0][1]})
        want_choice = want.json()["choices"][0]
        [got] = choices(run(server.grpc_target, lambda stub, r=request: collect(stub, r))).values()
        stop_reason = got.stop_string if got.WhichOneof("stop_reason") == "stop_string" else None
        assert (got.text, got.finish_reason, stop_reason) == (
            want_choice["text"],
            want_choice["finish_reason"],
            want_choice["stop_reason"],
        )
        results.append(got)
    assert results[0].text in ("yes", "no") and results[0].finish_reason == "stop"
    assert results[1].stop_string == stop and stop not in results[1].text and results[1].finish_reason == "stop"


def test_64_concurrent_streams_each_get_their_scripted_text(
    server: RunningServer, engines: dict[str, LLMEngine]
) -> None:
    engine = engines[MODEL]
    prompts = [f"prompt number {i}" for i in range(64)]

    async def all_at_once(stub: generate_pb2_grpc.GenerationStub) -> list[list[pb.GenerateResponse]]:
        requests = [pb.GenerateRequest(text=p, sampling=pb.SamplingParameters(max_tokens=12)) for p in prompts]
        return await asyncio.gather(*(collect(stub, r) for r in requests))

    for prompt, messages in zip(prompts, run(server.grpc_target, all_at_once), strict=True):
        [got] = choices(messages).values()
        ids = scripted(engine, engine.inputs.encode(prompt).token_ids, 12)
        assert list(got.token_ids) == ids and got.text == engine.tokenizer.decode(ids)
        assert got.finish_reason == "length" and messages[-1].usage.completion_tokens == 12


def test_cancelling_32_of_64_streams_mid_way_frees_their_requests_and_pages(
    server: RunningServer, engines: dict[str, LLMEngine]
) -> None:
    engine = engines[MODEL]
    before, tokens_before = finished_count(server.url, MODEL), engine.scheduler.num_generation_tokens

    async def half_cancelled(stub: generate_pb2_grpc.GenerationStub) -> list[str]:
        async def one(i: int) -> str:
            sampling = pb.SamplingParameters(max_tokens=100 if i % 2 else 10, ignore_eos=True)
            stream = stub.Generate(pb.GenerateRequest(text=f"p{i}", sampling=sampling), metadata=AUTH)
            if i % 2:
                await stream.read()
                await stream.read()  # running now, two deltas in
                stream.cancel()
                return "cancelled"
            return choices([m async for m in stream])[0].finish_reason

        return await asyncio.gather(*(one(i) for i in range(64)))

    outcomes = run(server.grpc_target, half_cancelled)
    assert outcomes == ["length", "cancelled"] * 32
    assert_engine_left_empty(engine, wait=10)
    assert engine.scheduler.num_generation_tokens - tokens_before < 32 * 10 + 32 * 100  # stopped mid-way
    wait_until(lambda: finished_count(server.url, MODEL) == before + 64)
    assert finished_count(server.url, MODEL) == before + 64  # 32 by length, 32 by abort


# ------------------------------------------------------------------------------------------- errors and keys


def _http_error(server: RunningServer, path: str, body: dict) -> tuple[int, str]:
    reply = http("POST", f"{server.url}{path}", json_body=body, headers={"Authorization": AUTH[0][1]})
    return reply.status, reply.json()["error"]["message"]


def _grpc_error(server: RunningServer, method: str, request: Any, metadata: Any = AUTH) -> grpc.aio.AioRpcError:
    async def call(stub: generate_pb2_grpc.GenerationStub) -> None:
        if method == "Generate":
            [_ async for _ in stub.Generate(request, metadata=metadata)]
        else:
            await getattr(stub, method)(request, metadata=metadata)

    with pytest.raises(grpc.aio.AioRpcError) as error:
        run(server.grpc_target, call)
    return error.value


CHAT = pb.ChatMessages(messages=[pb.ChatMessage(role="robot", content="hi")])
BAD_INPUTS = [
    # (gRPC method, request, HTTP path, the same request as JSON, gRPC code, HTTP status)
    ("Generate", pb.GenerateRequest(text="a", sampling=pb.SamplingParameters(temperature=-1.0)), "/v1/completions",
     {"prompt": "a", "temperature": -1.0}, grpc.StatusCode.INVALID_ARGUMENT, 400),
    ("Generate", pb.GenerateRequest(text="a", sampling=pb.SamplingParameters(n=200)), "/v1/completions",
     {"prompt": "a", "n": 200}, grpc.StatusCode.INVALID_ARGUMENT, 400),
    ("Generate", pb.GenerateRequest(text="a", sampling=pb.SamplingParameters(logit_bias={5: 500.0})),
     "/v1/completions", {"prompt": "a", "logit_bias": {"5": 500.0}}, grpc.StatusCode.INVALID_ARGUMENT, 400),
    ("Generate", pb.GenerateRequest(token_ids=pb.TokenIds(ids=[5] * 200)), "/v1/completions",
     {"prompt": [5] * 200}, grpc.StatusCode.INVALID_ARGUMENT, 400),
    ("Generate", pb.GenerateRequest(token_ids=pb.TokenIds(ids=[99999])), "/v1/completions",
     {"prompt": [99999]}, grpc.StatusCode.INVALID_ARGUMENT, 400),
    ("Generate", pb.GenerateRequest(), "/v1/completions", {"prompt": []}, grpc.StatusCode.INVALID_ARGUMENT, 400),
    ("Generate", pb.GenerateRequest(text="a", structured_output=pb.StructuredOutput(json="{not json")),
     "/v1/completions", {"prompt": "a", "structured_outputs": {"json": "{not json"}},
     grpc.StatusCode.INVALID_ARGUMENT, 400),
    ("Generate", pb.GenerateRequest(chat=CHAT, sampling=pb.SamplingParameters(logprobs=50)),
     "/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}], "logprobs": True, "top_logprobs": 50},
     grpc.StatusCode.INVALID_ARGUMENT, 400),
    ("Generate", pb.GenerateRequest(model="nope", text="a"), "/v1/completions", {"model": "nope", "prompt": "a"},
     grpc.StatusCode.NOT_FOUND, 404),
    ("Generate", pb.GenerateRequest(text="a", request_id="a\nb"), "/v1/completions",
     {"prompt": "a", "request_id": "a\nb"}, grpc.StatusCode.INVALID_ARGUMENT, 400),  # it names the log lines
    ("Tokenize", pb.TokenizeRequest(), "/tokenize", {}, grpc.StatusCode.INVALID_ARGUMENT, 400),
    ("Tokenize", pb.TokenizeRequest(model="nope", text="a"), "/tokenize", {"model": "nope", "prompt": "a"},
     grpc.StatusCode.NOT_FOUND, 404),
    ("Detokenize", pb.DetokenizeRequest(tokens=[99999]), "/detokenize", {"tokens": [99999]},
     grpc.StatusCode.INVALID_ARGUMENT, 400),
]  # fmt: skip


@pytest.mark.parametrize(("method", "request_", "path", "body", "code", "status"), BAD_INPUTS)
def test_each_bad_input_gets_its_status_and_the_http_apis_message(
    server: RunningServer, method: str, request_: Any, path: str, body: dict, code: grpc.StatusCode, status: int
) -> None:
    http_status, message = _http_error(server, path, body)
    error = _grpc_error(server, method, request_)
    assert (error.code(), error.details(), http_status) == (code, message, status)


def test_a_wrong_or_missing_key_is_unauthenticated_on_every_method(server: RunningServer) -> None:
    requests = {
        "Generate": pb.GenerateRequest(text="a"),
        "Tokenize": pb.TokenizeRequest(text="a"),
        "Detokenize": pb.DetokenizeRequest(tokens=[5]),
        "ListModels": pb.ListModelsRequest(),
    }
    for method, request in requests.items():
        for metadata in [(), (("authorization", "Bearer wrong"),), (("authorization", API_KEY),)]:
            error = _grpc_error(server, method, request, metadata)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "Authorization: Bearer" in error.details()


def test_tokenize_detokenize_and_list_models_answer_as_the_http_api(server: RunningServer) -> None:
    headers = {"Authorization": AUTH[0][1]}
    chat = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="hi there")])

    async def calls(stub: generate_pb2_grpc.GenerationStub) -> tuple[Any, ...]:
        return (
            await stub.Tokenize(pb.TokenizeRequest(text="hello world"), metadata=AUTH),
            await stub.Tokenize(pb.TokenizeRequest(model=OTHER, chat=chat), metadata=AUTH),
            await stub.Detokenize(pb.DetokenizeRequest(tokens=[40, 41, 42]), metadata=AUTH),
            await stub.ListModels(pb.ListModelsRequest(), metadata=AUTH),
        )

    text, chat_tokens, detok, models = run(server.grpc_target, calls)
    for got, body in [(text, {"prompt": "hello world"}), (chat_tokens, {"model": OTHER, "messages": [
            {"role": "user", "content": "hi there"}]})]:  # fmt: skip
        want = http("POST", f"{server.url}/tokenize", json_body=body, headers=headers).json()
        assert (list(got.tokens), got.count, got.max_model_len) == (
            want["tokens"],
            want["count"],
            want["max_model_len"],
        )
    want_text = http("POST", f"{server.url}/detokenize", json_body={"tokens": [40, 41, 42]}, headers=headers).json()
    assert detok.text == want_text["prompt"] != ""
    cards = http("GET", f"{server.url}/v1/models", headers=headers).json()["data"]
    assert [(m.id, m.max_model_len, m.owned_by) for m in models.models] == [
        (c["id"], c["max_model_len"], c["owned_by"]) for c in cards
    ]
    assert [m.id for m in models.models] == [MODEL, OTHER]


def test_a_full_queue_is_resource_exhausted(engines: dict[str, LLMEngine]) -> None:
    """One running and one queued request fill a queue of one (max_queued_requests=1); a third is refused."""
    engine = fake_engine(step_seconds=0.01, max_num_seqs=1)
    with _serve({MODEL: engine}, max_queued_requests=1) as server:

        async def three(stub: generate_pb2_grpc.GenerationStub) -> grpc.aio.AioRpcError:
            sampling = pb.SamplingParameters(max_tokens=50, ignore_eos=True)
            running = stub.Generate(pb.GenerateRequest(text="a", sampling=sampling), metadata=AUTH)
            await running.read()  # running: the snapshot counts it
            queued = stub.Generate(pb.GenerateRequest(text="b", sampling=sampling), metadata=AUTH)
            await queued.initial_metadata()  # sent once admitted
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await collect(stub, pb.GenerateRequest(text="c", sampling=sampling))
            running.cancel()
            queued.cancel()
            return refused.value

        error = run(server.grpc_target, three)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_queued_requests=1" in error.details()
        wait_until(lambda: not engine.requests)
    assert_engine_left_empty(engine)


# ----------------------------------------------------------------------------------------------------- health


def _health(target: str, service: str = "") -> int:
    async def check() -> int:
        async with grpc.aio.insecure_channel(target) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
            return reply.status

    return asyncio.run(check())


def test_health_serves_then_not_serving_while_draining_as_running_streams_finish() -> None:
    """Health needs no key. While the server drains, health says NOT_SERVING, a new call is UNAVAILABLE with the
    HTTP API's 503 message, and the stream that was running finishes in full."""
    engine = fake_engine(step_seconds=0.01)
    server = _serve({MODEL: engine}).__enter__()
    try:
        serving = health_pb2.HealthCheckResponse.SERVING
        assert _health(server.grpc_target) == _health(server.grpc_target, "jllm.v1.Generation") == serving
        stopping = threading.Thread(target=server.stop, args=(30.0,))

        async def drain(stub: generate_pb2_grpc.GenerationStub) -> tuple[list[pb.GenerateResponse], Any]:
            sampling = pb.SamplingParameters(max_tokens=60, ignore_eos=True)
            stream = stub.Generate(pb.GenerateRequest(text="a", sampling=sampling), metadata=AUTH)
            first = [await stream.read()]
            stopping.start()
            while await asyncio.to_thread(_health, server.grpc_target) == serving:
                await asyncio.sleep(0.005)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await collect(stub, pb.GenerateRequest(text="b"))
            assert (await asyncio.to_thread(http, "GET", f"{server.url}/ready")).status == 503  # draining too
            return first + await read_to_end(stream), refused.value

        messages, refused = run(server.grpc_target, drain)
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        assert refused.details() == "the server is shutting down and admits no new requests"
        [got] = choices(messages).values()
        assert got.finish_reason == "length" and len(got.token_ids) == 60  # finished in full, not aborted
        stopping.join(60)
        assert not stopping.is_alive()
    finally:
        server.__exit__(None, None, None)
    assert_engine_left_empty(engine)


def test_health_is_not_serving_while_an_engine_stalls() -> None:
    """A step longer than the stall timeout: NOT_SERVING inside it (as /ready's 503), SERVING once it moves on."""
    engine = fake_engine(step_seconds=1.2)
    with _serve({MODEL: engine}, stall_timeout=0.2) as server:

        async def stall(stub: generate_pb2_grpc.GenerationStub) -> list[int]:
            sampling = pb.SamplingParameters(max_tokens=1)
            stream = stub.Generate(pb.GenerateRequest(text="a", sampling=sampling), metadata=AUTH)
            await stream.initial_metadata()  # admitted: the engine is inside its first step
            seen = []
            for _ in range(20):  # within the step's 1.2 s
                seen.append(await asyncio.to_thread(_health, server.grpc_target))
                if seen[-1] == NOT_SERVING:
                    break
                await asyncio.sleep(0.03)
            await read_to_end(stream)
            return [seen[-1], await asyncio.to_thread(_health, server.grpc_target)]

        assert run(server.grpc_target, stall) == [NOT_SERVING, health_pb2.HealthCheckResponse.SERVING]

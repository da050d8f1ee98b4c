"""The gRPC API on a real model (the tests' tiny chat model: random weights, the default model's tokenizer and chat
template): greedy text streamed over gRPC equals the HTTP API's streamed text and ``LLM.generate`` / ``LLM.chat``'s
for the same prompts, all from one engine. Random weights emit any token, multi-byte pieces included."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from server_utils import ENGINE_ARGS, RunningServer, engine_config, http, tiny_chat_model

from jllm.llm import LLM
from jllm.sampling import SamplingParams
from jllm.v1 import generate_pb2 as pb
from jllm.v1 import generate_pb2_grpc

pytestmark = pytest.mark.slow  # builds a real engine and two servers

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, a small robot"]
CHAT = [{"role": "user", "content": "Name three colours."}]
MAX_TOKENS = 16


def grpc_texts(target: str, requests: list[pb.GenerateRequest]) -> list[str]:
    """Each request's streamed text, all streams at once."""

    async def one(stub: generate_pb2_grpc.GenerationStub, request: pb.GenerateRequest) -> str:
        return "".join([m.delta.text async for m in stub.Generate(request) if m.HasField("delta")])

    async def all_of_them() -> list[str]:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = generate_pb2_grpc.GenerationStub(channel)
            return await asyncio.gather(*(one(stub, r) for r in requests))

    return asyncio.run(all_of_them())


def sse_text(url: str, body: dict) -> str:
    """The streamed text of one HTTP request (completion text or chat content deltas)."""
    events = http("POST", url, json_body={**body, "stream": True}).body.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    choices = [json.loads(e.removeprefix("data: "))["choices"][0] for e in events[:-2]]
    return "".join(c["text"] if "text" in c else c["delta"].get("content", "") for c in choices)


def test_greedy_grpc_stream_equals_http_stream_and_llm_generate(
    default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    model_dir = tiny_chat_model(tmp_path_factory.getbasetemp(), default_model_dir)
    llm = LLM(str(model_dir), **ENGINE_ARGS)
    greedy = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    offline = [o.outputs[0].text for o in llm.generate(PROMPTS, greedy, use_tqdm=False)]
    offline.append(llm.chat(CHAT, greedy, use_tqdm=False)[0].outputs[0].text)
    assert all(offline)

    sampling = pb.SamplingParameters(temperature=0.0, max_tokens=MAX_TOKENS)
    chat = pb.ChatMessages(messages=[pb.ChatMessage(**m) for m in CHAT])
    requests = [pb.GenerateRequest(text=p, sampling=sampling) for p in PROMPTS]
    requests.append(pb.GenerateRequest(chat=chat, sampling=sampling))
    with RunningServer(llm.engine, engine_config(model_dir), grpc=True) as server:
        over_grpc = grpc_texts(server.grpc_target, requests)
        greedy_body = {"temperature": 0, "max_tokens": MAX_TOKENS}
        over_http = [sse_text(f"{server.url}/v1/completions", {**greedy_body, "prompt": p}) for p in PROMPTS]
        over_http.append(sse_text(f"{server.url}/v1/chat/completions", {**greedy_body, "messages": CHAT}))
    assert over_grpc == over_http == offline

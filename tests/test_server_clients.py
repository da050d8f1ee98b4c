"""What third-party clients send and read, over the scripted engine: each test reproduces a client's request
shape (named in it) with the ``openai`` package or raw HTTP, so CI needs neither LangChain, LiteLLM nor Node.

The engine here has a byte-level BPE tokenizer (GPT-2's byte alphabet, one token per byte, as the default model's
rarer characters are) and a script that generates ``TEXT``: every multi-byte character comes as tokens holding part
of it, the case OpenAI's logprob ``bytes`` exist for.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import pytest
from fake_runner import byte_level_tokenizer, repeating_text_engine
from server_utils import RunningServer, assert_engine_left_empty, http, metrics, spy_prompts, wait_until

from jllm.config import load_config
from jllm.engine import LLMEngine

MODEL = "scripted"
TEXT = "猫 😺, é!"  # 3-, 4- and 2-byte characters
CHAT = [{"role": "user", "content": "hi"}]
NODE_PROBE = Path(__file__).parent / "clients" / "openai_node.cjs"
NODE_MODULES = Path(__file__).parents[1] / ".node" / "node_modules"  # where scripts/setup.sh test puts the SDK


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> LLMEngine:
    tokenizer_dir = byte_level_tokenizer(tmp_path_factory.mktemp("byte_level"))
    return repeating_text_engine(TEXT, tokenizer_dir, step_seconds=0.002)


@pytest.fixture(scope="module")
def server(engine: LLMEngine) -> Iterator[RunningServer]:
    with RunningServer(engine, load_config(None, served_model_name=MODEL)) as running:
        yield running


@pytest.fixture(autouse=True)
def engine_is_left_empty(engine: LLMEngine) -> Iterator[None]:
    yield
    assert_engine_left_empty(engine)


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_chat_logprob_bytes_are_each_tokens_own_and_concatenate_to_the_text(client: openai.OpenAI) -> None:
    """A token holding part of a character had ``bytes`` of U+FFFD (its decoded text re-encoded): the bytes of
    "😺" came out as four replacement characters. Now they are the token's bytes, and ``token`` shows them as
    OpenAI does (``"\\xf0"``)."""
    n = len(TEXT.encode())
    args = dict(model=MODEL, messages=CHAT, max_tokens=n, logprobs=True, top_logprobs=2)
    whole = client.chat.completions.create(**args)
    entries = whole.choices[0].logprobs.content
    assert whole.choices[0].message.content == TEXT
    assert b"".join(bytes(e.bytes) for e in entries) == TEXT.encode()
    assert [e.token for e in entries[:2]] == ["\\xe7", "\\x8c"]  # the first bytes of 猫
    for e in entries:
        assert e.token == bytes(e.bytes).decode(errors="backslashreplace")
        assert [bytes(t.bytes) for t in e.top_logprobs][:1] == [bytes(e.bytes)]  # the scripted token is the top one

    chunks = list(client.chat.completions.create(**args, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.bytes) for e in streamed] == [(e.token, e.bytes) for e in entries]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT


TOOL = {
    "type": "function",
    "function": {
        "name": "pick",
        "parameters": {
            "type": "object",
            "properties": {"x": {"enum": [1]}},
            "required": ["x"],
            "additionalProperties": False,
        },
    },
}
PREFIX = TEXT.encode()[:12].decode()  # the first 12 tokens' text: "猫 😺, é"


def test_the_openai_node_sdk_shapes_through_the_python_client(client: openai.OpenAI, engine: LLMEngine) -> None:
    """What tests/clients/openai_node.cjs does, with the Python SDK: the server-side half of that test, on CI
    without Node."""
    chat = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=12, seed=7, logprobs=True, top_logprobs=2
    )
    assert chat.choices[0].message.content == PREFIX
    assert b"".join(bytes(e.bytes) for e in chat.choices[0].logprobs.content) == PREFIX.encode()
    texts, usage = ["", ""], None
    options = {"include_usage": True}
    for chunk in client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=5, n=2, stream=True, stream_options=options
    ):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
        usage = chunk.usage or usage
    assert texts == ["猫 \ufffd"] * 2 and usage.completion_tokens == 10  # cut inside 😺: its bytes so far as U+FFFD
    for tool_choice in ({"type": "function", "function": {"name": "pick"}}, "required"):
        # one call: the scripted runner would take "," over "]" after it and call again until max_tokens
        args = dict(model=MODEL, messages=CHAT, tools=[TOOL], tool_choice=tool_choice, max_tokens=40)
        args["parallel_tool_calls"] = False
        whole = client.chat.completions.create(**args)
        with client.chat.completions.stream(**args) as stream:
            streamed = stream.get_final_completion()
        for reply in (whole, streamed):
            (call,) = reply.choices[0].message.tool_calls
            assert reply.choices[0].finish_reason == ("tool_calls" if tool_choice == "required" else "stop")
            assert (call.function.name, json.loads(call.function.arguments)) == ("pick", {"x": 1})
    schema = {"name": "s", "strict": True, "schema": {"enum": ["a"]}}
    parsed = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=8, response_format={"type": "json_schema", "json_schema": schema}
    )
    assert json.loads(parsed.choices[0].message.content) == "a"
    with client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=100, stream=True, extra_body={"ignore_eos": True}
    ) as stream:
        for i, _ in enumerate(stream):
            if i == 2:
                break  # leaving the block closes the connection, as the Node SDK's AbortController does
    wait_until(lambda: not engine.requests, 5)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="absent", messages=CHAT)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=CHAT, stream=True, temperature=-1)
    assert (missing.value.code, bad.value.param) == ("model_not_found", "temperature")


def _node_with_openai() -> str | None:
    """Why the Node SDK test cannot run here, or None (``NODE_PATH`` may name where ``npm install openai`` put it)."""
    if shutil.which("node") is None:
        return "node is not installed"
    found = subprocess.run(["node", "-e", "require.resolve('openai')"], capture_output=True, env=_node_env())
    if found.returncode != 0:
        return "the openai npm package is not installed (npm install --prefix DIR openai; NODE_PATH=DIR/node_modules)"
    return None


def _node_env() -> dict[str, str]:
    paths = [p for p in (os.environ.get("NODE_PATH"), str(NODE_MODULES)) if p]
    return {**os.environ, "NODE_PATH": os.pathsep.join(paths)}


def test_the_openai_node_sdk(server: RunningServer, engine: LLMEngine) -> None:
    """The OpenAI Node SDK as users run it: chat and completions, streamed (n=2, include_usage) and not, logprob
    bytes, a named and a required tool call (streamed deltas assembled by the SDK's stream helper), json_schema
    parsed, an AbortController mid-stream, and errors as its APIError with status, param and code."""
    missing = _node_with_openai()
    if missing is not None:
        pytest.skip(missing)
    aborted = metrics(server.url).get("jllm:request_success_total{abort}", 0)
    run = subprocess.run(
        ["node", str(NODE_PROBE), f"{server.url}/v1", MODEL],
        capture_output=True,
        text=True,
        timeout=60,
        env=_node_env(),
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["chat"]["content"] == PREFIX and bytes(out["chat"]["bytes"]) == PREFIX.encode()
    assert out["chatStream"] == {
        "texts": ["猫 \ufffd"] * 2,
        "usage": {"prompt_tokens": out["chat"]["usage"]["prompt_tokens"], "completion_tokens": 10, "total_tokens": 10
                  + out["chat"]["usage"]["prompt_tokens"]},
    }  # fmt: skip
    assert out["completion"] == {"text": "猫 ", "tokens": 4}
    for name, finish in (("named", "stop"), ("required", "tool_calls")):  # a named call ends by "stop" (OpenAI's)
        for reply in out["tools"][name]:  # unstreamed, then streamed
            assert reply["finish"] == finish
            assert [(n, json.loads(a)) for n, a in reply["calls"]] == [("pick", {"x": 1})]
    assert out["parsed"] == "a" and 3 <= out["abortedAfter"] < 100  # chunks already read may follow the abort
    wait_until(lambda: not engine.requests, 5)
    assert metrics(server.url)["jllm:request_success_total{abort}"] == aborted + 1
    errors = out["errors"]
    assert errors["model"] == {"isAPIError": True, "status": 404, "param": "model", "code": "model_not_found"}
    assert errors["streamed"] == {"isAPIError": True, "status": 400, "param": "temperature", "code": None}
    assert errors["type"] == {"isAPIError": True, "status": 400, "param": "max_tokens", "code": None}


# Bodies as langchain-openai 1.8 (ChatOpenAI) sends them, captured from its HTTP client against `jllm serve`.
LANGCHAIN_BODIES = {
    "bind_tools(tool_choice='pick')": {  # ("required" would call again and again: the script takes "," over "]")
        "stream": False, "messages": [{"content": "hi", "role": "user"}], "max_completion_tokens": 40,
        "tool_choice": {"type": "function", "function": {"name": "pick"}}, "tools": [TOOL],
    },
    "with_structured_output(method='function_calling')": {
        "stream": False, "messages": [{"content": "hi", "role": "user"}], "max_completion_tokens": 40,
        "parallel_tool_calls": False, "tool_choice": {"type": "function", "function": {"name": "pick"}},
        "tools": [TOOL],
    },
    "with_structured_output(method='json_schema')": {
        "stream": False, "messages": [{"content": "hi", "role": "user"}], "max_completion_tokens": 40,
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "pick", "description": "", "strict": True, "schema": TOOL["function"]["parameters"]}},
    },
}  # fmt: skip


def test_langchain_request_shapes(server: RunningServer) -> None:
    """langchain-openai's ``bind_tools`` and ``with_structured_output`` bodies, and its multimodal message, whose
    image part is refused by name (pydantic's message listed every member of the content union)."""
    for name, body in LANGCHAIN_BODIES.items():
        reply = http("POST", f"{server.url}/v1/chat/completions", json_body={"model": MODEL, **body})
        assert reply.status == 200, (name, reply.body)
        message = reply.json()["choices"][0]["message"]
        if "tools" in body:
            arguments = [json.loads(c["function"]["arguments"]) for c in message["tool_calls"]]
            assert arguments[:1] == [{"x": 1}], (name, message)
        else:
            assert json.loads(message["content"]) == {"x": 1}
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    parts = [{"type": "text", "text": "what is this"}, image]
    body = {"model": MODEL, "messages": [{"role": "user", "content": parts}]}
    reply = http("POST", f"{server.url}/v1/chat/completions", json_body=body)
    assert reply.status == 400 and reply.json()["error"]["message"] == (
        "messages.0.content: part 1 has type 'image_url': the served models take text parts only"
    )


def test_responses_style_and_refusal_parts_read_as_text(
    server: RunningServer, engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chat content parts of type ``input_text`` / ``output_text`` (what clients moving between the Responses and
    Chat APIs send) and an assistant's ``refusal`` part are text, as vLLM reads them: they had been a 400 saying
    "part 0 has type 'input_text': the served models take text parts only". The prompt is the plain strings'."""
    prompts = spy_prompts(engine, monkeypatch)
    as_parts = [
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "no"}, {"type": "refusal", "refusal": "!"}]},
        {"role": "user", "content": [{"type": "text", "text": "again"}]},
    ]
    as_strings = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "no\n!"}]
    as_strings.append({"role": "user", "content": "again"})
    for messages in (as_parts, as_strings):
        body = {"model": MODEL, "messages": messages, "max_tokens": 1}
        reply = http("POST", f"{server.url}/v1/chat/completions", json_body=body)
        assert reply.status == 200, reply.body
    assert prompts[0] == prompts[1] and "no\n!" in prompts[0]


def test_null_text_parts_are_skipped_and_thinking_parts_read_as_text(
    server: RunningServer, engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM's chat parser skips a text (or refusal) part whose text is null and reads a "thinking" part as its text;
    both had been 400s. A media key without a type, and vLLM's tool_reference (a deferred tool jllm has none of),
    are 400s naming the part."""
    prompts = spy_prompts(engine, monkeypatch)
    parts = [{"type": "text", "text": None}, {"type": "thinking", "thinking": "hm", "signature": "s"}]
    as_parts = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": parts}]
    as_parts.append(
        {"role": "user", "content": [{"type": "text", "text": "again"}, {"type": "refusal", "refusal": None}]}
    )
    as_strings = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hm"}]
    as_strings.append({"role": "user", "content": "again"})
    for messages in (as_parts, as_strings):
        body = {"model": MODEL, "messages": messages, "max_tokens": 1}
        reply = http("POST", f"{server.url}/v1/chat/completions", json_body=body)
        assert reply.status == 200, reply.body
    assert prompts[0] == prompts[1] and "hm" in prompts[0]
    for part, words in (
        ({"image_url": {"url": "data:image/png;base64,AAAA"}}, "part 0 has 'image_url': the served models take text"),
        ({"type": "tool_reference", "name": "f"}, "part 0 has type 'tool_reference'"),
        ({"text": "hi"}, "part 0 has no type"),
    ):
        body = {"model": MODEL, "messages": [{"role": "user", "content": [part]}]}
        error = http("POST", f"{server.url}/v1/chat/completions", json_body=body).json()["error"]
        assert error["param"] == "messages" and words in error["message"], error


def test_tokenize_returns_each_ids_vocabulary_string_when_asked(server: RunningServer) -> None:
    """vLLM's ``return_token_strs``: the ids' vocabulary strings (transformers' convert_ids_to_tokens: GPT-2's
    byte alphabet here, a space as "Ġ"), for a prompt and for messages; it had been a 400 ("not supported yet")."""
    body = {"model": MODEL, "prompt": "a é", "return_token_strs": True}
    reply = http("POST", f"{server.url}/tokenize", json_body=body).json()
    assert reply["token_strs"] == ["a", "Ġ", "Ã", "©"] and len(reply["tokens"]) == 4
    chat = {"model": MODEL, "messages": CHAT, "return_token_strs": True}
    reply = http("POST", f"{server.url}/tokenize", json_body=chat).json()
    assert len(reply["token_strs"]) == reply["count"] > 0
    assert (
        "token_strs"
        not in http("POST", f"{server.url}/tokenize", json_body={**body, "return_token_strs": False}).json()
    )


def test_vllm_benchmark_client_shape(server: RunningServer) -> None:
    """vLLM's benchmark client (``backend_request_func.async_request_openai_completions``): raw aiohttp, ignore_eos,
    logprobs null, a Bearer "None" header on a server without a key, ``data:`` lines read until ``[DONE]``; a
    chunk per token, then the usage chunk it takes the output length from."""

    async def run() -> tuple[str, int, int]:
        payload = {
            "model": MODEL, "prompt": "hello", "temperature": 0.0, "repetition_penalty": 1.0, "max_tokens": 13,
            "logprobs": None, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True,
        }  # fmt: skip
        text, chunks, output_len = "", 0, 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            headers = {"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY')}"}
            async with session.post(f"{server.url}/v1/completions", json=payload, headers=headers) as response:
                assert response.status == 200
                async for line in response.content:
                    chunk = line.strip().decode().removeprefix("data: ")
                    if not chunk or chunk == "[DONE]":
                        continue
                    data = json.loads(chunk)
                    if choices := data.get("choices"):
                        text += choices[0]["text"]
                        chunks += 1
                    elif usage := data.get("usage"):
                        output_len = usage["completion_tokens"]
        return text, chunks, output_len

    assert asyncio.run(run()) == (TEXT, 13, 13)


def test_completion_logprob_tokens_of_partial_characters_stay_apart(client: openai.OpenAI) -> None:
    """The legacy layout's tokens of part of a character were all U+FFFD: ``top_logprobs`` (keyed by token) merged
    them, and ``text_offset`` (summed token lengths) ran past the text. Now each shows its bytes (``"\\xe7"``) and
    its offset is the character its first byte is in."""
    for stream in (False, True):
        reply = client.completions.create(model=MODEL, prompt="hi", max_tokens=13, logprobs=2, stream=stream)
        chunks = list(reply) if stream else [reply]
        tokens = [t for c in chunks for t in c.choices[0].logprobs.tokens]
        offsets = [o for c in chunks for o in c.choices[0].logprobs.text_offset]
        tops = [t for c in chunks for t in c.choices[0].logprobs.top_logprobs]
        assert "".join(c.choices[0].text for c in chunks) == TEXT
        assert tokens[:5] == ["\\xe7", "\\x8c", "\\xab", " ", "\\xf0"]
        assert offsets == [0, 0, 0, 1, 2, 2, 2, 2, 3, 4, 5, 5, 6]  # 猫 ␠ 😺 , ␠ é !
        assert all(len(top) == 2 for top in tops)  # the scripted token and the next id: two keys


def test_a_chat_streams_role_chunk_comes_with_the_first_token(server: RunningServer, engine: LLMEngine) -> None:
    """vLLM's chat benchmark client (``async_request_openai_chat_completions``) times the first chunk with a choice
    as the first token. The role chunk went out before the engine had run a step, so a chat's TTFT read as ~0 s
    (here, with 0.4 s steps, it read 0.009 s); OpenAI and vLLM send it with the first output."""

    async def ttft() -> float:
        payload = {
            "model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "temperature": 0.0, "max_completion_tokens": 2, "stream": True, "stream_options": {"include_usage": True},
        }  # fmt: skip
        async with aiohttp.ClientSession() as session:
            start = time.perf_counter()
            async with session.post(f"{server.url}/v1/chat/completions", json=payload) as response:
                first = 0.0
                async for line in response.content:
                    chunk = line.strip().decode().removeprefix("data: ")
                    if chunk and chunk != "[DONE]" and json.loads(chunk).get("choices") and not first:
                        first = time.perf_counter() - start
                return first

    http("POST", f"{server.url}/v1/chat/completions", json_body={"model": MODEL, "messages": CHAT, "max_tokens": 1})
    runner = engine.runner  # the chat renderer loaded (~1 s the first time), each step now takes 0.4 s
    runner.step_seconds = 0.4
    try:
        assert asyncio.run(ttft()) >= 0.35
    finally:
        runner.step_seconds = 0.002


@pytest.mark.parametrize("tool_choice", [{"type": "function", "function": {"name": "pick"}}, "required"])
def test_a_streamed_calls_chunk_names_each_call_once(client: openai.OpenAI, tool_choice: object) -> None:
    """A chunk held a call's first entry (id and name) and its first arguments as two entries of index 0, which
    OpenAI never sends: clients reading ``delta.tool_calls[0]`` per chunk (a common hand-written loop) lost the
    arguments' first fragment. Each chunk now has one entry per call: the naming one goes alone, then the arguments."""
    args = dict(model=MODEL, messages=CHAT, tools=[TOOL], tool_choice=tool_choice, max_tokens=40)
    arguments = ""
    for chunk in client.chat.completions.create(**args, parallel_tool_calls=False, stream=True):
        calls = chunk.choices[0].delta.tool_calls or []
        assert len({c.index for c in calls}) == len(calls)
        arguments += calls[0].function.arguments if calls else ""
    assert json.loads(arguments) == {"x": 1}

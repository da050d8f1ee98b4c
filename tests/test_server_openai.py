"""The server through the unmodified ``openai`` client and a raw HTTP client: what an OpenAI user sees.

One engine for the module (an ``LLM`` on a tiny random-weight chat model); the offline API's greedy answers are
taken first, then the real server takes the same engine over on a free loopback port.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from server_utils import API_KEY, ENGINE_ARGS, RunningServer, engine_config, metrics, tiny_chat_model

from jllm.llm import LLM
from jllm.sampling import SamplingParams

pytestmark = pytest.mark.slow  # every test talks to a server over an engine of the tiny model and compares it offline

MODEL = "tiny-chat"
PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": "Say hi in French."}]
SAMPLED = dict(temperature=1.0, seed=7)  # seeded sampling: diverse text, the same on every run
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def llm(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LLM:
    return LLM(str(tiny_chat_model(tmp_path_factory.getbasetemp(), default_model_dir)), **ENGINE_ARGS)


@pytest.fixture(scope="module")
def offline(llm: LLM) -> dict[str, Any]:
    """``LLM.generate`` / ``LLM.chat`` greedy texts and the prompt's logprobs, taken before the server drives the
    same engine."""
    greedy = SamplingParams(temperature=0, max_tokens=24)
    return {
        "completion": llm.generate(PROMPT, greedy, use_tqdm=False)[0].outputs[0].text,
        "chat": llm.chat(CHAT, greedy, use_tqdm=False)[0].outputs[0].text,
        "prompt_logprobs": llm.generate(
            PROMPT, SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=2), use_tqdm=False
        )[0],
    }


@pytest.fixture(scope="module")
def server(llm: LLM, offline: dict[str, Any]) -> Iterator[RunningServer]:
    config = engine_config(Path(llm.config.model.model), api_key=API_KEY, served_model_name=MODEL)
    with RunningServer(llm.engine, config) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


def test_greedy_completion_matches_offline_generate(client: openai.OpenAI, offline: dict[str, Any]) -> None:
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0)
    assert whole.choices[0].text == offline["completion"]
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 24

    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == offline["completion"]
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["length"]
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1


def test_greedy_chat_matches_offline_chat(client: openai.OpenAI, offline: dict[str, Any]) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, temperature=0)
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == offline["chat"]

    chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert all(c.choices[0].delta.role is None for c in chunks[1:])
    assert "".join(c.choices[0].delta.content for c in chunks) == offline["chat"]
    assert chunks[-1].choices[0].finish_reason == "length"


def test_two_seeded_samples_stream_the_same_text_as_unstreamed(client: openai.OpenAI) -> None:
    args = dict(model=MODEL, messages=CHAT, max_completion_tokens=12, n=2, **SAMPLED)
    whole = client.chat.completions.create(**args)
    texts = [c.message.content for c in sorted(whole.choices, key=lambda c: c.index)]
    assert [c.index for c in whole.choices] == [0, 1] and texts[0] != texts[1]
    assert whole.usage.completion_tokens == 24

    streamed = ["", ""]
    finishes: dict[int, list[str | None]] = {0: [], 1: []}
    for chunk in client.chat.completions.create(**args, stream=True):
        (choice,) = chunk.choices
        streamed[choice.index] += choice.delta.content
        finishes[choice.index].append(choice.finish_reason)
    assert streamed == texts
    for reasons in finishes.values():  # the role chunk, content chunks, and the finish reason only on the last
        assert reasons[-1] == "length" and set(reasons[:-1]) == {None}


def test_completion_n2_and_list_and_token_prompts(client: openai.OpenAI, llm: LLM) -> None:
    single = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, n=2, **SAMPLED)
    assert [c.index for c in single.choices] == [0, 1]
    token_ids = llm.get_tokenizer().encode(PROMPT)
    both = client.completions.create(model=MODEL, prompt=[PROMPT, "Hello"], max_tokens=8, n=2, **SAMPLED)
    assert [c.index for c in both.choices] == [0, 1, 2, 3]
    assert [c.text for c in both.choices[:2]] == [c.text for c in single.choices]
    by_ids = client.completions.create(model=MODEL, prompt=token_ids, max_tokens=8, n=2, **SAMPLED)
    assert [c.text for c in by_ids.choices] == [c.text for c in single.choices]
    assert by_ids.usage.prompt_tokens == len(token_ids) and both.usage.completion_tokens == 32

    echoed = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, echo=True, **SAMPLED)
    assert (
        echoed.choices[0].text
        == PROMPT + client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, **SAMPLED).choices[0].text
    )


def test_chat_logprobs(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=10, temperature=0, logprobs=True, top_logprobs=3
    )
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens == 10
    assert "".join(entry.token for entry in content) == whole.choices[0].message.content
    for entry in content:
        assert len(entry.top_logprobs) == 3
        top = [t.logprob for t in entry.top_logprobs]
        assert top == sorted(top, reverse=True)
        assert (entry.token, entry.logprob) == (entry.top_logprobs[0].token, top[0])  # greedy picks the top
        assert entry.token == bytes(entry.bytes).decode(errors="backslashreplace")
    assert b"".join(bytes(e.bytes) for e in content).decode(errors="replace") == whole.choices[0].message.content

    streamed = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=10, temperature=0, logprobs=True, top_logprobs=3, stream=True
    )
    streamed_entries = [e for chunk in streamed if chunk.choices[0].logprobs for e in chunk.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed_entries] == [(e.token, e.logprob) for e in content]


def test_return_tokens_as_token_ids_names_each_logprob_token_by_its_id(client: openai.OpenAI, llm: LLM) -> None:
    """vLLM's ``return_tokens_as_token_ids``: every token of the logprobs (chosen and top) as ``"token_id:<id>"``,
    the chosen ones the reply's tokens; the same reply's logprobs otherwise."""
    ids_please = {"return_tokens_as_token_ids": True}
    tokenizer = llm.get_tokenizer()

    def ids(tokens: list[str]) -> list[int]:
        assert all(t.startswith("token_id:") for t in tokens), tokens
        return [int(t.removeprefix("token_id:")) for t in tokens]

    chat = dict(model=MODEL, messages=CHAT, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2)
    named = client.chat.completions.create(**chat, extra_body=ids_please).choices[0]
    plain = client.chat.completions.create(**chat).choices[0]
    content = named.logprobs.content
    assert tokenizer.decode(ids([e.token for e in content])) == named.message.content == plain.message.content
    assert [e.logprob for e in content] == [e.logprob for e in plain.logprobs.content]
    for entry in content:
        assert ids([t.token for t in entry.top_logprobs])[0] == ids([entry.token])[0]  # greedy: the top one
        assert bytes(entry.bytes).decode() == entry.token
    streamed = client.chat.completions.create(**chat, stream=True, extra_body=ids_please)
    assert [e.token for c in streamed if c.choices[0].logprobs for e in c.choices[0].logprobs.content] == [
        e.token for e in content
    ]

    completion = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2, extra_body=ids_please
    ).choices[0]
    assert tokenizer.decode(ids(completion.logprobs.tokens)) == completion.text
    assert all(len(ids(list(top))) == len(top) for top in completion.logprobs.top_logprobs)


def test_return_token_ids_gives_the_prompts_and_each_choices_token_ids(client: openai.OpenAI, llm: LLM) -> None:
    """vLLM's ``return_token_ids``: the prompt's ids (a chat response's, each completion choice's) and each choice's
    generated ids, which decode to its text; streamed, a chunk's new ids (the chat's role chunks: the prompt's)."""
    ids_please = {"return_token_ids": True, "ignore_eos": True}
    tokenizer = llm.get_tokenizer()
    prompt_ids = tokenizer.encode(PROMPT)

    completion = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, n=2, extra_body=ids_please
    ).model_dump()
    for choice in completion["choices"]:
        assert choice["prompt_token_ids"] == prompt_ids and len(choice["token_ids"]) == 6
        assert tokenizer.decode(choice["token_ids"]) == choice["text"]
    chunks = [
        c.model_dump()
        for c in client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, stream=True, extra_body=ids_please
        )
    ]
    assert chunks[0]["choices"][0]["prompt_token_ids"] == prompt_ids
    assert all(c["choices"][0].get("prompt_token_ids") is None for c in chunks[1:])
    assert [t for c in chunks for t in c["choices"][0]["token_ids"]] == completion["choices"][0]["token_ids"]

    chat = dict(model=MODEL, messages=CHAT, max_tokens=6, temperature=0)
    whole = client.chat.completions.create(**chat, extra_body=ids_please).model_dump()
    rendered = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert whole["prompt_token_ids"] == list(rendered) and len(rendered) == whole["usage"]["prompt_tokens"]
    assert tokenizer.decode(whole["choices"][0]["token_ids"]) == whole["choices"][0]["message"]["content"]
    streamed = [c.model_dump() for c in client.chat.completions.create(**chat, stream=True, extra_body=ids_please)]
    assert (
        streamed[0]["prompt_token_ids"] == whole["prompt_token_ids"]
        and streamed[0]["choices"][0].get("token_ids") is None
    )
    assert [t for c in streamed[1:] for t in c["choices"][0]["token_ids"]] == whole["choices"][0]["token_ids"]
    plain = client.chat.completions.create(**chat).model_dump()  # not asked: no such keys
    assert "prompt_token_ids" not in plain and "token_ids" not in plain["choices"][0]


def test_chat_logprob_bytes_of_multi_byte_characters_on_the_default_tokenizer(client: openai.OpenAI) -> None:
    """The default model's byte-level BPE splits "😺" and CJK characters over tokens: each token's ``bytes`` are its
    own, so they concatenate to the reply's UTF-8 (they were the U+FFFD of its decoded text)."""
    reply = client.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_tokens=40,
        logprobs=True,
        top_logprobs=2,
        extra_body={"structured_outputs": {"choice": ["猫 😺 ねこ", "🐈‍⬛ 黑猫"]}},
        **SAMPLED,
    )
    content = reply.choices[0].message.content
    entries = reply.choices[0].logprobs.content
    assert content in ("猫 😺 ねこ", "🐈‍⬛ 黑猫")
    assert b"".join(bytes(e.bytes) for e in entries) == content.encode()
    assert any(e.token.startswith("\\x") for e in entries)  # some token holds part of a character


def test_completion_logprobs(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, logprobs=2, **SAMPLED)
    choice = whole.choices[0]
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 10
    assert "".join(logprobs.tokens) == choice.text
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(10)]
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert top[token] == logprob and 2 <= len(top) <= 3  # the top 2, plus the sampled token when outside them

    chunks = list(
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, logprobs=2, stream=True, **SAMPLED)
    )
    assert [t for c in chunks for t in c.choices[0].logprobs.tokens] == logprobs.tokens
    assert [o for c in chunks for o in c.choices[0].logprobs.text_offset] == logprobs.text_offset


def test_echo_with_logprobs_matches_offline_prompt_logprobs(client: openai.OpenAI, offline: dict[str, Any]) -> None:
    """lm-eval's loglikelihood request: echo, logprobs and one generated token."""
    reference = offline["prompt_logprobs"]
    n = len(reference.prompt_token_ids)
    for stream in (False, True):
        reply = client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=1, temperature=0, echo=True, logprobs=2, stream=stream
        )
        chunks = list(reply) if stream else [reply]
        logprobs = {key: [v for c in chunks for v in getattr(c.choices[0].logprobs, key)] for key in
                    ("tokens", "token_logprobs", "top_logprobs")}  # fmt: skip
        assert len(logprobs["tokens"]) == n + 1 and logprobs["token_logprobs"][0] is None
        assert logprobs["top_logprobs"][0] is None
        rows = zip(reference.prompt_token_ids[1:], reference.prompt_logprobs[1:], strict=True)
        for i, (token_id, entry) in enumerate(rows, 1):
            assert logprobs["tokens"][i] == entry[token_id].decoded_token
            assert logprobs["token_logprobs"][i] == pytest.approx(entry[token_id].logprob, abs=1e-4)
            expected_top = {lp.decoded_token: lp.logprob for lp in entry.values()}
            assert logprobs["top_logprobs"][i] == pytest.approx(expected_top, abs=1e-4)
        assert "".join(c.choices[0].text for c in chunks).startswith(PROMPT)


def test_include_usage_sends_one_usage_chunk_last(client: openai.OpenAI) -> None:
    options = {"include_usage": True}
    chat = list(
        client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=6, stream=True, stream_options=options)
    )
    completion = list(
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, stream=True, stream_options=options)
    )
    for chunks in (chat, completion):
        with_usage = [c for c in chunks if c.usage is not None]
        assert with_usage == [chunks[-1]] and chunks[-1].choices == []
        assert chunks[-1].usage.completion_tokens == 6
        assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 6
        assert all(c.choices for c in chunks[:-1])
    whole_chat = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=6)
    assert chat[-1].usage.prompt_tokens == whole_chat.usage.prompt_tokens


def test_continuous_usage_stats_puts_each_choices_running_count_in_every_chunk(client: openai.OpenAI) -> None:
    """vLLM's ``stream_options.continuous_usage_stats``: every chunk's usage is the prompt's tokens and its choice's
    tokens so far (a chat's role chunk: none yet); the last chunk keeps the whole request's."""
    options, full = {"include_usage": True, "continuous_usage_stats": True}, {"ignore_eos": True}
    chat = list(
        client.chat.completions.create(
            model=MODEL,
            messages=CHAT,
            max_tokens=5,
            n=2,
            stream=True,
            stream_options=options,
            extra_body=full,
            **SAMPLED,
        )
    )
    completion = list(
        client.completions.create(
            model=MODEL,
            prompt=[PROMPT, "Two"],
            max_tokens=5,
            stream=True,
            stream_options=options,
            extra_body=full,
            **SAMPLED,
        )
    )
    for chunks in (chat, completion):
        *streamed, last = chunks
        assert last.choices == [] and last.usage.completion_tokens == 10
        prompt_tokens = {c.choices[0].index: c.usage.prompt_tokens for c in streamed}
        assert sum(set(prompt_tokens.values())) == last.usage.prompt_tokens  # the chat's one prompt, or two
        for index in (0, 1):
            counts = [c.usage.completion_tokens for c in streamed if c.choices[0].index == index]
            assert counts == sorted(counts) and counts[-1] == 5
            assert all(c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens for c in streamed)
    roles = [c for c in chat if c.choices and c.choices[0].delta.role == "assistant"]
    assert len(roles) == 2 and all(c.usage.completion_tokens == 0 for c in roles)


def test_stop_strings_cut_the_text(client: openai.OpenAI) -> None:
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, **SAMPLED).choices[0].text
    words = full.split()
    stop = f" {words[len(words) // 2]}"
    expected = full[: full.index(stop)]

    cut = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, stop=[stop, "never-seen"], **SAMPLED)
    assert (cut.choices[0].text, cut.choices[0].finish_reason) == (expected, "stop")
    chunks = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, stop=stop, stream=True, **SAMPLED)
    assert "".join(c.choices[0].text for c in chunks) == expected
    kept = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=16, stop=stop, extra_body={"include_stop_str_in_output": True}, **SAMPLED
    )
    assert kept.choices[0].text == expected + stop


def test_omitted_max_tokens_is_16_for_a_completion_and_the_context_limit_for_a_chat(client: openai.OpenAI) -> None:
    out = client.completions.create(model=MODEL, prompt=PROMPT, temperature=0, extra_body={"ignore_eos": True})
    assert (out.choices[0].finish_reason, out.usage.completion_tokens) == ("length", 16)  # as OpenAI and vLLM
    chat = client.chat.completions.create(model=MODEL, messages=CHAT, temperature=0, extra_body={"ignore_eos": True})
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage.total_tokens == ENGINE_ARGS["max_model_len"]


def test_models_tokenize_and_detokenize(client: openai.OpenAI, server: RunningServer, llm: LLM) -> None:
    (card,) = client.models.list().data
    assert (card.id, card.owned_by) == (MODEL, "jllm")

    async def post(path: str, body: dict) -> dict:
        async with aiohttp.ClientSession(headers=AUTH) as session:
            async with session.post(f"{server.url}{path}", json=body) as response:
                assert response.status == 200
                return await response.json()

    tokens = asyncio.run(post("/tokenize", {"prompt": PROMPT}))
    expected = llm.get_tokenizer().encode(PROMPT)
    assert tokens == {"count": len(expected), "max_model_len": 256, "tokens": expected}
    assert asyncio.run(post("/detokenize", {"tokens": tokens["tokens"]})) == {"prompt": PROMPT}
    chat_tokens = asyncio.run(post("/tokenize", {"messages": CHAT}))
    usage = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=1).usage
    assert chat_tokens["count"] == usage.prompt_tokens


def test_neutral_values_of_unsupported_fields_are_accepted(client: openai.OpenAI) -> None:
    """Clients that always send these fields, at values asking for nothing this server lacks, keep working."""
    chat = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=2, tool_choice="none", response_format={"type": "text"}
    )
    assert chat.usage.completion_tokens == 2
    completion = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, best_of=1, logit_bias={})
    assert completion.usage.completion_tokens == 2


def test_chat_without_generation_prompt_renders_like_tokenize(client: openai.OpenAI, server: RunningServer) -> None:
    async def tokenize(add_generation_prompt: bool) -> int:
        body = {"messages": CHAT, "add_generation_prompt": add_generation_prompt}
        async with aiohttp.ClientSession(headers=AUTH) as session:
            async with session.post(f"{server.url}/tokenize", json=body) as response:
                return (await response.json())["count"]

    usage = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=1, extra_body={"add_generation_prompt": False}
    ).usage
    assert usage.prompt_tokens == asyncio.run(tokenize(False)) < asyncio.run(tokenize(True))


def test_request_switches_win_over_chat_template_kwargs_as_vllm_s(client: openai.OpenAI) -> None:
    """vLLM's build_chat_params merges add_generation_prompt (and continue_final_message, documents,
    reasoning_effort) over chat_template_kwargs (the kwargs had won); left out, the kwargs' key holds."""

    def prompt_tokens(**extra: Any) -> int:
        return client.chat.completions.create(
            model=MODEL, messages=CHAT, max_tokens=1, extra_body=extra
        ).usage.prompt_tokens

    off = {"add_generation_prompt": False}
    given = prompt_tokens(add_generation_prompt=True, chat_template_kwargs=off)
    assert given == prompt_tokens() > prompt_tokens(chat_template_kwargs=off) == prompt_tokens(**off)


def test_continue_final_message_leaves_the_last_message_open(client: openai.OpenAI, server: RunningServer) -> None:
    opened = [*CHAT, {"role": "assistant", "content": "Bonjour"}]

    async def tokenize(**options: bool) -> int:
        async with aiohttp.ClientSession(headers=AUTH) as session:
            async with session.post(f"{server.url}/tokenize", json={"messages": opened, **options}) as response:
                return (await response.json())["count"]

    extra = {"add_generation_prompt": False, "continue_final_message": True}
    usage = client.chat.completions.create(model=MODEL, messages=opened, max_tokens=1, extra_body=extra).usage
    closed = asyncio.run(tokenize(add_generation_prompt=False))  # the assistant's turn ends after "Bonjour"
    assert 0 < usage.prompt_tokens < closed  # the same messages, less the end-of-turn tokens
    assert asyncio.run(tokenize(**extra)) == usage.prompt_tokens  # /tokenize renders it the same way


def test_an_assistant_message_may_have_null_content(client: openai.OpenAI) -> None:
    messages = [*CHAT, {"role": "assistant", "content": None}, {"role": "user", "content": "Again."}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert reply.usage.completion_tokens == 2


def test_text_parts_read_like_one_string(client: openai.OpenAI) -> None:
    """Text parts join on a newline, as vLLM gives them to a template that reads content as one string (they had
    been glued together, a part's last word running into the next's first)."""
    parts = [{"type": "text", "text": "Say hi"}, {"type": "text", "text": "in French."}]
    as_parts = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": parts}], max_tokens=6, temperature=0
    )
    one_string = [{"role": "user", "content": "Say hi\nin French."}]
    as_string = client.chat.completions.create(model=MODEL, messages=one_string, max_tokens=6, temperature=0)
    assert as_parts.choices[0].message.content == as_string.choices[0].message.content


def test_sse_framing_byte_for_byte(server: RunningServer) -> None:
    body = {
        "model": MODEL,
        "messages": CHAT,
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    async def fetch() -> tuple[aiohttp.ClientResponse, bytes]:
        headers = {**AUTH, "X-Request-Id": "framing-1"}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{server.url}/v1/chat/completions", json=body, headers=headers) as response:
                return response, await response.read()

    response, raw = asyncio.run(fetch())
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["X-Request-Id"] == "framing-1"
    assert raw.endswith(b"\n\ndata: [DONE]\n\n")
    events = raw.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]  # nothing after [DONE]
    payloads = [json.loads(e.removeprefix(b"data: ")) for e in events[:-2]]
    # Every event is exactly "data: " + compact JSON + a blank line: no comments, no event names, no spaces.
    rebuilt = b"".join(
        b"data: " + json.dumps(p, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n" for p in payloads
    )
    assert rebuilt + b"data: [DONE]\n\n" == raw
    assert {p["id"] for p in payloads} == {"chatcmpl-framing-1"} and len({p["created"] for p in payloads}) == 1
    assert {p["object"] for p in payloads} == {"chat.completion.chunk"}
    assert payloads[0]["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    content = payloads[1:-1]
    assert all(list(p["choices"][0]["delta"]) == ["content"] for p in content)
    assert [p["choices"][0]["finish_reason"] for p in content] == [None] * (len(content) - 1) + ["length"]
    assert all(p["usage"] is None for p in payloads[:-1])
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens"] == 5


def test_metrics_use_vllm_names_and_count_the_work(client: openai.OpenAI, server: RunningServer) -> None:
    before = metrics(server.url)
    for _ in range(2):  # the second chat finds the first's full prompt pages in the prefix cache
        usage = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=3).usage
    after = metrics(server.url)
    assert after["jllm:prompt_tokens_total"] - before["jllm:prompt_tokens_total"] == 2 * usage.prompt_tokens
    assert after["jllm:generation_tokens_total"] - before["jllm:generation_tokens_total"] == 6
    assert after["jllm:prefix_cache_hits_total"] > before["jllm:prefix_cache_hits_total"]
    assert after["jllm:prefix_cache_queries_total"] >= after["jllm:prefix_cache_hits_total"]
    assert after["jllm:time_to_first_token_seconds_count"] - before["jllm:time_to_first_token_seconds_count"] == 2
    assert after["jllm:inter_token_latency_seconds_count"] - before["jllm:inter_token_latency_seconds_count"] == 4
    assert after["jllm:e2e_request_latency_seconds_count"] - before["jllm:e2e_request_latency_seconds_count"] == 2
    assert after["jllm:request_success_total{length}"] - before["jllm:request_success_total{length}"] == 2
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "num_preemptions_total"):
        assert after[f"jllm:{name}"] == 0

"""Tool calls: each family's parser on whole and streamed text, and the chat endpoint over the scripted engine
through the ``openai`` client (auto calls parsed from the script's Hermes text, streamed as OpenAI's deltas; tools
and tool history reaching the template; the refusals)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from fake_runner import fake_engine
from server_utils import RunningServer, http

from jllm.config import load_config
from jllm.engine import LLMEngine
from jllm.inputs import Prompt
from jllm.sampling import SamplingParams
from jllm.tool_calls import ToolCallStream, forced_call_schema, forced_calls, make_parser, parse_tool_calls

MODEL = "scripted"
WEATHER = {"city": "Paris", "days": [1, 2]}
OUTPUTS = {  # (output, content, [(name, arguments)])
    "hermes": (
        'Let me check.\n<tool_call>\n{"name": "weather", "arguments": {"city": "Paris", "days": [1, 2]}}\n</tool_call>'
        '\n<tool_call>{"name": "time", "arguments": {}}</tool_call>',
        "Let me check.",
        [("weather", WEATHER), ("time", {})],
    ),
    "llama3_json": (
        '{"name": "weather", "parameters": {"city": "Paris", "days": [1, 2]}}; {"name": "time", "parameters": {}}',
        None,
        [("weather", WEATHER), ("time", {})],
    ),
    "mistral": (
        '[TOOL_CALLS][{"name": "weather", "arguments": {"city": "Paris", "days": [1, 2]}}, '
        '{"name": "time", "arguments": {}}]',
        None,
        [("weather", WEATHER), ("time", {})],
    ),
}
NOT_CALLS = ["Just text, no calls.", '<tool_call>{"name": broken</tool_call>', '{"no_name": 1}', "[TOOL_CALLS]nope"]


def _pairs(calls: list) -> list[tuple[str, Any]]:
    return [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize("family", sorted(OUTPUTS))
def test_parser_reads_its_familys_calls_whole_and_streamed(family: str) -> None:
    text, content, expected = OUTPUTS[family]
    parser = make_parser(family)
    got_content, calls = parse_tool_calls(parser, text)
    assert got_content == content and _pairs(calls) == expected
    assert all(c.id.startswith("call_") and len(c.id) > 20 for c in calls) and len({c.id for c in calls}) == 2
    rng = random.Random(family)
    for _ in range(5):  # random chunkings: the same calls, the content before them
        stream, streamed, sent = ToolCallStream(parser), [], ""
        cuts = sorted(rng.sample(range(1, len(text)), 12))
        for piece in [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]:
            delta, new = stream.feed(piece)
            sent, streamed = sent + delta, streamed + new
        delta, new = stream.finish()
        sent, streamed = sent + delta, streamed + new
        assert _pairs(streamed) == expected and sent.strip() == (content or "")


@pytest.mark.parametrize("text", NOT_CALLS)
@pytest.mark.parametrize("family", sorted(OUTPUTS))
def test_text_that_is_not_calls_stays_content(family: str, text: str) -> None:
    parser = make_parser(family)
    assert parse_tool_calls(parser, text) == (text, [])
    stream = ToolCallStream(parser)
    sent, calls = stream.feed(text)
    rest, more = stream.finish()
    assert sent + rest == text and calls == more == []


def test_forced_calls_read_the_forced_schemas_layout() -> None:
    tools = [{"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}}]
    schema = forced_call_schema(tools, None, parallel=False)
    assert schema["maxItems"] == 1 and schema["items"]["anyOf"][0]["properties"]["name"] == {"const": "a"}
    assert forced_call_schema(tools, "a", parallel=True) == {"type": "object"}
    assert _pairs(forced_calls('[{"name": "a", "parameters": {"k": 1}}]', None)) == [("a", {"k": 1})]
    assert _pairs(forced_calls('{"k": 1}', "a")) == [("a", {"k": 1})]
    assert forced_calls('{"k": 1', "a") is None  # cut short by max_tokens


# ---------------------------------------------------------------------------------------------------- the server

TEMPLATE = (  # shows what reaches the template: the tools, earlier calls (arguments as a mapping), tool results
    "{% for t in tools or [] %}[{{ t.function.name }}]{% endfor %}"
    "{% for m in messages %}{{ m.role }}: {{ m.content }}"
    "{% for c in m.tool_calls or [] %}<{{ c.function.name }} city={{ c.function.arguments.city }}>{% endfor %}"
    "{% if m.tool_call_id %}({{ m.tool_call_id }}){% endif %}|{% endfor %}assistant:"
)
TOOLS = [
    {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "time"}},
]
MESSAGES = [{"role": "user", "content": "Weather?"}]


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    """Every reply is the Hermes output above, then EOS."""
    engine = fake_engine(max_model_len=256, num_pages=192)
    ids = engine.tokenizer.encode(OUTPUTS["hermes"][0], add_special_tokens=False)
    engine.runner.script = lambda prompt, position: (ids + [2])[min(position - len(prompt), len(ids))]
    engine.tokenizer.hf.chat_template = TEMPLATE
    return engine


@pytest.fixture(scope="module")
def server(engine: LLMEngine) -> Iterator[RunningServer]:
    config = load_config(None, served_model_name=MODEL, tool_call_parser="hermes", enable_auto_tool_choice=True)
    with RunningServer(engine, config) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def test_auto_calls_come_as_tool_calls_whole_and_streamed(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=200)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    calls = choice.message.tool_calls
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("function", "weather", WEATHER),
        ("function", "time", {}),
    ]
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=200, stream=True)
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    firsts = [d for d in deltas if d.id is not None]
    assert [(d.index, d.type, d.function.name) for d in firsts] == [(0, "function", "weather"), (1, "function", "time")]
    assert all(d.id.startswith("call_") for d in firsts)
    arguments = ["".join(d.function.arguments or "" for d in deltas if d.index == i) for i in (0, 1)]
    assert [json.loads(a) for a in arguments] == [WEATHER, {}]
    assert content.strip() == "Let me check." and chunks[-1].choices[0].finish_reason == "tool_calls"


def test_one_call_without_parallel_tool_calls(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=200, parallel_tool_calls=False
    )
    assert [c.function.name for c in reply.choices[0].message.tool_calls] == ["weather"]


def test_tools_and_tool_history_reach_the_template(
    server: RunningServer, engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Prompt] = []
    add = engine.add_request

    def spy(request_id: str, prompt: Prompt, params: SamplingParams, grammar: object = None) -> None:
        seen.append(prompt)
        add(request_id, prompt, params, grammar)

    monkeypatch.setattr(engine, "add_request", spy)
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    history = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
    ]
    body = {"model": MODEL, "messages": history, "tools": TOOLS, "tool_choice": "none", "max_tokens": 2}
    reply = http("POST", f"{server.url}/v1/chat/completions", json_body=body)
    assert reply.status == 200, reply.body
    assert seen[0].text == "[weather][time]user: Weather?|assistant: <weather city=Oslo>|tool: rain(call_1)|assistant:"
    assert reply.json()["choices"][0]["message"]["tool_calls"] == []  # "none": the text is not parsed


@pytest.mark.parametrize(
    "change, param, words",
    [
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages", "tool_call_id"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages", "assistant"),
        ({"tool_choice": "required", "tools": None}, "tool_choice", "needs at least one tool"),
        ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice", "one structured"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
         "messages", "not JSON"),
    ],
)  # fmt: skip
def test_bad_tool_requests_are_400s_naming_the_field(
    server: RunningServer, change: dict, param: str, words: str
) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "tools": TOOLS, "max_tokens": 2, **change}
    reply = http("POST", f"{server.url}/v1/chat/completions", json_body=body)
    error = reply.json()["error"]
    assert reply.status == 400 and error["param"] == param and words in error["message"], error


def test_auto_without_a_parser_is_a_400_naming_the_flag(engine: LLMEngine) -> None:
    with RunningServer(engine, load_config(None, served_model_name=MODEL)) as plain:
        body = {"model": MODEL, "messages": MESSAGES, "tools": TOOLS}
        reply = http("POST", f"{plain.url}/v1/chat/completions", json_body=body)
    error = reply.json()["error"]
    assert reply.status == 400 and error["param"] == "tool_choice" and "--enable-auto-tool-choice" in error["message"]


ONE_X = {"type": "object", "properties": {"x": {"enum": [1]}}, "required": ["x"], "additionalProperties": False}
PICK = {"type": "function", "function": {"name": "pick", "parameters": ONE_X}}


def test_a_named_call_streams_its_arguments_as_generated(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "pick"}}
    ask = dict(model=MODEL, messages=MESSAGES, tools=[PICK, *TOOLS], tool_choice=named, max_tokens=30)
    whole = client.chat.completions.create(**ask)
    [call] = whole.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("pick", {"x": 1})
    chunks = list(client.chat.completions.create(**ask, stream=True))
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id.startswith("call_") and deltas[0].function.name == "pick"
    assert len(deltas) > 2 and all(d.id is None and d.function.name is None for d in deltas[1:])  # fragments
    assert "".join(d.function.arguments for d in deltas) == call.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls" == whole.choices[0].finish_reason


def test_a_forced_call_cut_short_comes_back_as_text(client: openai.OpenAI) -> None:
    ask = dict(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required", max_tokens=3)
    whole = client.chat.completions.create(**ask)
    assert whole.choices[0].finish_reason == "length" and not whole.choices[0].message.tool_calls
    chunks = list(client.chat.completions.create(**ask, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content != ""


def test_tokenize_renders_the_tools_as_the_chat_route_does(server: RunningServer) -> None:
    """/tokenize ignored ``tools`` (vLLM's tokenize takes them), so its count was not the chat prompt's; the fields
    it cannot honour are a 400 naming them."""
    body = {"model": MODEL, "messages": MESSAGES, "tools": TOOLS}
    tokens = http("POST", f"{server.url}/tokenize", json_body=body).json()["tokens"]
    chat = {**body, "tool_choice": "none", "max_tokens": 1}
    usage = http("POST", f"{server.url}/v1/chat/completions", json_body=chat).json()["usage"]
    without = http("POST", f"{server.url}/tokenize", json_body={**body, "tools": None}).json()["count"]
    assert len(tokens) == usage["prompt_tokens"] > without
    for field, value in [("return_token_strs", True), ("chat_template", "{{ messages }}")]:
        refused = http("POST", f"{server.url}/tokenize", json_body={**body, field: value})
        assert refused.status == 400 and refused.json()["error"]["param"] == field

"""The OpenAI Codex CLI against ``POST /v1/responses``: the request body Codex builds, and the event stream read the
way Codex's parser reads it, replayed over the scripted engine (a thinking model that calls a tool, then answers
once the tool's output is passed back).

Codex's side, read from github.com/openai/codex (codex-rs):
- ``codex-api/src/common.rs``: ``ResponsesApiRequest`` and its serializer (model, instructions unless empty, input,
  tools, tool_choice "auto", parallel_tool_calls, reasoning, store, stream, include, then service_tier,
  prompt_cache_key, text and client_metadata when set); ``core/src/client.rs`` ``build_responses_request`` fills it:
  reasoning {effort, summary "auto" by default} with ``include: ["reasoning.encrypted_content"]`` for a model with
  reasoning summaries, store false, stream true, the thread id as prompt_cache_key, the installation id in
  client_metadata on every request; ``core/src/tools/spec.rs`` adds a ``web_search`` tool unless configured off.
- ``protocol/src/models.rs``: ``ResponseItem``, which output items must deserialize as (``_codex_item``) and which
  Codex serializes back as the next request's input, ids left out (``_codex_input``).
- ``codex-api/src/sse/responses.rs``: ``process_sse`` (``_codex_process_sse``): each event's data as an ``SseEvent``
  (one that does not parse is skipped), the ``ResponseEvent``s it maps to, and ``response.completed`` (its id and
  usage) as the end of a turn; a stream closed without it is an error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import openai
import pytest
from fake_runner import fake_engine
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter
from server_utils import RunningServer, assert_engine_left_empty, http, spy_prompts

from jllm.config import load_config
from jllm.engine import LLMEngine

MODEL = "coder"
THOUGHT, ANSWER_THOUGHT = "List the files first.", "Two files."
CALL = '<tool_call>\n{"name": "shell", "arguments": {"command": ["ls"]}}\n</tool_call>'
FIRST = f"<think>{THOUGHT}</think>I will look.\n{CALL}"
SECOND = f"<think>{ANSWER_THOUGHT}</think>There are two files."
TEMPLATE = (  # an earlier turn's reasoning in brackets (as Qwen3's shows it), its calls by name; reads enable_thinking
    "{% for m in messages %}{{ m.role }}: {{ m.content }}{% if m.reasoning_content %}[{{ m.reasoning_content }}]"
    "{% endif %}{% for c in m.tool_calls or [] %}<call {{ c.function.name }}>{% endfor %}|{% endfor %}assistant:"
    "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}"
)
SHELL = {  # Codex's shell tool for a model it has no settings for
    "type": "function",
    "name": "shell",
    "description": "Runs a shell command and returns its output.",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {"command": {"type": "array", "items": {"type": "string"}}, "workdir": {"type": "string"}},
        "required": ["command"],
        "additionalProperties": False,
    },
}
FIRST_INPUT = [  # Codex's opening turn: its developer instructions, the environment, then the user's message
    {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Ask before writing."}]},
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<cwd>/src</cwd>"}]},
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list the files"}]},
]


def _codex_request(items: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    """The body ``build_responses_request`` sends for a model configured with reasoning summaries and effort."""
    return {
        "model": MODEL,
        "instructions": "You are Codex, a coding agent.",
        "input": items,
        "tools": [SHELL],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0199a1b2-thread",
        "client_metadata": {"x-codex-installation-id": "5f0c-installation"},
        **changes,
    }


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    """Replies FIRST, or SECOND once a tool's output is in the prompt."""
    engine = fake_engine(max_model_len=512, num_pages=192)
    replies = [engine.tokenizer.encode(text, add_special_tokens=False) + [2] for text in (FIRST, SECOND)]
    chosen: dict[tuple[int, ...], list[int]] = {}

    def script(prompt: Sequence[int], position: int) -> int:
        ids = chosen.setdefault(tuple(prompt), replies["tool: " in engine.tokenizer.decode(list(prompt))])
        return ids[min(position - len(prompt), len(ids) - 1)]

    engine.runner.script = script
    engine.tokenizer.hf.chat_template = TEMPLATE
    return engine


@pytest.fixture(scope="module")
def server(engine: LLMEngine) -> Iterator[RunningServer]:
    config = load_config(
        None, served_model_name=MODEL, reasoning_parser="qwen3", tool_call_parser="hermes", enable_auto_tool_choice=True
    )
    with RunningServer(engine, config) as running:
        yield running
    assert_engine_left_empty(engine)


@pytest.fixture
def prompts(engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return spy_prompts(engine, monkeypatch)


def _parses(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    assert isinstance(value, kind) and not isinstance(value, bool), f"Codex cannot parse {what}: {value!r}"
    return value


def _codex_item(item: dict[str, Any]) -> dict[str, Any]:
    """``serde_json::from_value::<ResponseItem>``: the fields Codex requires, typed as it reads them (an item that
    fails is dropped by Codex, so here it fails the test); types it does not know are its ``Other``."""
    kind = _parses(item.get("type"), str, "an item's type")
    if kind == "message":
        _parses(item.get("role"), str, "a message's role")
        for part in _parses(item.get("content"), list, "a message's content"):
            assert part.get("type") in ("input_text", "output_text", "input_image"), part
            _parses(part.get("text", part.get("image_url")), str, "a content part")
    elif kind == "reasoning":
        for part in _parses(item.get("summary"), list, "a reasoning item's summary"):
            assert part.get("type") == "summary_text" and isinstance(part.get("text"), str), part
        for part in item.get("content") or []:
            assert part.get("type") in ("reasoning_text", "text") and isinstance(part.get("text"), str), part
        assert item.get("encrypted_content") is None or isinstance(item["encrypted_content"], str)
    elif kind == "function_call":
        for name in ("name", "arguments", "call_id"):
            _parses(item.get(name), str, f"a function call's {name}")
    return item


def _codex_input(item: dict[str, Any]) -> dict[str, Any]:
    """A finished output item as Codex sends it back (``ResponseItem``'s ``Serialize``: its id skipped, a status
    never kept; a reasoning item's ``encrypted_content`` null)."""
    if item["type"] == "message":
        content = [{"type": part["type"], "text": part["text"]} for part in item["content"]]
        return {"type": "message", "role": item["role"], "content": content}
    if item["type"] == "reasoning":
        return {
            "type": "reasoning",
            "summary": item["summary"],
            "content": item["content"],
            "encrypted_content": None,
        }
    return {k: item[k] for k in ("type", "name", "arguments", "call_id")}


_CODEX_EVENTS = {  # an event's type -> the ResponseEvent Codex makes of it
    "response.created": lambda e: ("created", _parses(e.get("response"), dict, "response.created's response")),
    "response.output_item.added": lambda e: ("added", _codex_item(e["item"])),
    "response.output_item.done": lambda e: ("done", _codex_item(e["item"])),
    "response.output_text.delta": lambda e: ("text", e["delta"]),
    "response.reasoning_summary_part.added": lambda e: ("summary_part", e["summary_index"]),
    "response.reasoning_summary_text.delta": lambda e: ("summary", (e["delta"], e["summary_index"])),
    "response.reasoning_text.delta": lambda e: ("reasoning", (e["delta"], e["content_index"])),
}


def _codex_process_sse(body: bytes) -> list[tuple[str, Any]]:
    """``process_sse``: every event's data must parse as an ``SseEvent`` (type; delta a string; summary_index and
    content_index integers), else Codex skips it; the ``ResponseEvent``s it maps to, then ``completed`` with
    ``ResponseCompleted``'s id and usage once the stream ends, which it must not do before ``response.completed``."""
    events: list[tuple[str, Any]] = []
    completed = None
    for block in body.decode().strip().split("\n\n"):
        data = json.loads(next(line[6:] for line in block.splitlines() if line.startswith("data: ")))
        kind = _parses(data.get("type"), str, "an event's type")
        assert data.get("delta") is None or isinstance(data["delta"], str), data
        assert all(data.get(i) is None or type(data[i]) is int for i in ("summary_index", "content_index")), data
        assert kind != "response.failed", f"Codex reads a failed response: {data}"
        if kind == "response.completed":
            completed = _completed(data["response"])
        elif kind in _CODEX_EVENTS:
            events.append(_CODEX_EVENTS[kind](data))
    assert completed is not None, "Codex: stream closed before response.completed"
    return [*events, ("completed", completed)]


def _completed(response: dict[str, Any]) -> tuple[str, dict[str, int]]:
    """``ResponseCompleted`` and its usage as Codex's ``TokenUsage``."""
    usage = response["usage"]
    counts = {name: _parses(usage[name], int, name) for name in ("input_tokens", "output_tokens", "total_tokens")}
    counts["cached_input_tokens"] = _parses(usage["input_tokens_details"]["cached_tokens"], int, "cached_tokens")
    counts["reasoning_output_tokens"] = _parses(usage["output_tokens_details"]["reasoning_tokens"], int, "reasoning")
    return _parses(response.get("id"), str, "the response's id"), counts


def _of(events: list[tuple[str, Any]], kind: str) -> list[Any]:
    return [value for k, value in events if k == kind]


def test_a_codex_turn_streams_reasoning_summary_text_and_a_call_then_continues_with_its_output(
    server: RunningServer, prompts: list[str]
) -> None:
    """Codex's first request as it builds it (reasoning summary "auto", client_metadata, include, prompt_cache_key:
    reasoning.summary and client_metadata were each a 400), then its second with the items it kept and the call's
    output. Each item parses as Codex's ``ResponseItem``, the reasoning comes as summary and content deltas, the
    call with its call id, and ``response.completed`` carries the usage Codex counts."""
    reply = http("POST", f"{server.url}/v1/responses", json_body=_codex_request(FIRST_INPUT))
    assert reply.status == 200, reply.body
    events = _codex_process_sse(reply.body)
    assert events[0][0] == "created" and events[-1][0] == "completed"
    items = [(k, item["type"]) for k, item in events if k in ("added", "done")]
    kinds = ["reasoning", "message", "function_call"]
    assert items == [(k, kind) for kind in kinds for k in ("added", "done")]
    reasoning, message, call = _of(events, "done")
    order = [kind for kind, _ in events]
    assert _of(events, "summary_part") == [0]
    assert order.index("summary_part") < order.index("summary") < order.index("text")
    assert "".join(d for d, i in _of(events, "summary") if i == 0) == THOUGHT
    assert "".join(d for d, i in _of(events, "reasoning") if i == 0) == THOUGHT
    assert reasoning["summary"] == [{"type": "summary_text", "text": THOUGHT}]
    assert reasoning["content"] == [{"type": "reasoning_text", "text": THOUGHT}]
    text = message["content"][0]["text"]
    assert text.startswith("I will look.") and "".join(_of(events, "text")) == text and message["role"] == "assistant"
    assert (call["name"], json.loads(call["arguments"]), call["call_id"][:5]) == ("shell", {"command": ["ls"]}, "call_")
    response_id, usage = _of(events, "completed")[0]
    assert response_id.startswith("resp_") and usage["reasoning_output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]

    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "a.txt\nb.txt"}
    history = [*FIRST_INPUT, *(_codex_input(item) for item in (reasoning, message, call)), output]
    reply = http("POST", f"{server.url}/v1/responses", json_body=_codex_request(history))
    assert reply.status == 200, reply.body
    events = _codex_process_sse(reply.body)
    assert prompts[1] == (  # the developer message as a system one, as chat takes it
        "system: You are Codex, a coding agent.|system: Ask before writing.|user: <cwd>/src</cwd>|user: list the files|"
        f"assistant: {text}[{THOUGHT}]<call shell>|tool: a.txt\nb.txt|assistant:"
    )
    assert [item["type"] for item in _of(events, "done")] == ["reasoning", "message"]
    assert "".join(_of(events, "text")) == "There are two files."


def test_a_summary_is_the_reasoning_whole_and_its_events_are_openais(server: RunningServer) -> None:
    """Whole and streamed alike, each event valid as the SDK's type; the SDK's stream helper assembles it; the
    response echoes the summary asked for."""
    body = _codex_request(FIRST_INPUT, stream=False)
    whole = Response.model_validate(http("POST", f"{server.url}/v1/responses", json_body=body).json())
    assert [(s.type, s.text) for s in whole.output[0].summary] == [("summary_text", THOUGHT)]
    assert (whole.reasoning.effort, whole.reasoning.summary) == ("medium", "auto")
    raw = http("POST", f"{server.url}/v1/responses", json_body={**body, "stream": True}).body.decode()
    adapter = TypeAdapter(ResponseStreamEvent)
    kinds = [adapter.validate_json(block.partition("\ndata: ")[2]).type for block in raw.strip().split("\n\n")]
    start = kinds.index("response.reasoning_summary_part.added")
    assert kinds[start - 2 : start] == ["response.output_item.added", "response.content_part.added"]
    end = kinds.index("response.reasoning_summary_part.done")
    assert kinds[end - 2 : end + 3] == [
        "response.content_part.done", "response.reasoning_summary_text.done", "response.reasoning_summary_part.done",
        "response.output_item.done", "response.output_item.added",
    ]  # fmt: skip
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    fields = {k: v for k, v in body.items() if k not in ("stream", "client_metadata")}
    with client.responses.stream(**fields, extra_body={"client_metadata": body["client_metadata"]}) as stream:
        final = stream.get_final_response()
    assert final.output[0].summary[0].text == THOUGHT and final.output[2].name == "shell"


@pytest.mark.parametrize(
    "changes, param, words",
    [
        ({"tools": [SHELL, {"type": "web_search", "external_web_access": False}]}, "tools", 'web_search = "disabled"'),
        ({"reasoning": {"effort": "medium", "summary": "concise"}}, "reasoning", "summary 'concise'"),
        ({"reasoning": {"summary": "brief"}}, "reasoning", "'auto', 'concise' or 'detailed'"),
        ({"client_metadata": {"k": "v" * 513}}, "client_metadata", "512"),
        ({"text": {"verbosity": "low"}}, "text", "verbosity"),  # for models Codex knows to take it
        ({"service_tier": "priority"}, "service_tier", "service_tier"),  # Codex's "fast" mode
    ],
    ids=["web_search", "concise", "unknown summary", "long client_metadata", "verbosity", "priority tier"],
)
def test_what_cannot_be_honoured_is_a_400_naming_it(
    server: RunningServer, changes: dict[str, Any], param: str, words: str
) -> None:
    """Codex's default web_search tool (a hosted tool: no search runs here) says how to turn it off in Codex; the
    fields Codex sends only for OpenAI's own models are refused as for any client."""
    reply = http("POST", f"{server.url}/v1/responses", json_body=_codex_request(FIRST_INPUT, **changes))
    error = reply.json()["error"]
    assert reply.status == 400 and error["param"] == param and words in error["message"], error

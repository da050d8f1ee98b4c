"""``POST /v1/messages`` (Anthropic's Messages API) through the ``anthropic`` SDK over the scripted engine: text with a
system prompt and stop sequences, the stop reasons, the event stream (and the SDK's stream helper assembling it), a
tool round-trip, ``output_config.format``, ``count_tokens``, the ``x-api-key`` header, and Anthropic's error JSON
naming this route's fields.

The engine generates ``TEXT`` again and again over a byte-level tokenizer (as in tests/test_server_responses.py);
its chat template shows the calls and call ids that reach it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import pytest
from fake_runner import REPEATED_TEXT, repeating_calls_engine
from server_utils import RunningServer, assert_engine_left_empty, http, spy_prompts

from jllm.config import load_config
from jllm.engine import LLMEngine

MODEL = "scripted"
KEY = "sk-test"
TEXT = REPEATED_TEXT
STOPPED = TEXT[:-1]  # with stop "!"
PICK = {
    "name": "pick",
    "description": "picks",
    "input_schema": {
        "type": "object",
        "properties": {"x": {"enum": [1]}},
        "required": ["x"],
        "additionalProperties": False,
    },
}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> LLMEngine:
    return repeating_calls_engine(tmp_path_factory.mktemp("byte_level"))


@pytest.fixture(scope="module")
def server(engine: LLMEngine) -> Iterator[RunningServer]:
    with RunningServer(engine, load_config(None, served_model_name=MODEL, api_key=KEY)) as running:
        yield running


@pytest.fixture(autouse=True)
def engine_is_left_empty(engine: LLMEngine) -> Iterator[None]:
    yield
    assert_engine_left_empty(engine, wait=5)


@pytest.fixture(scope="module")
def client(server: RunningServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0)  # the key goes as x-api-key


@pytest.fixture
def prompts(engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return spy_prompts(engine, monkeypatch)


def test_text_with_a_system_prompt_and_its_stop_reasons(client: anthropic.Anthropic, prompts: list[str]) -> None:
    message = client.messages.create(
        model=MODEL, max_tokens=50, system="be brief", messages=HI, stop_sequences=["!"], metadata={"user_id": "u"}
    )
    assert prompts == ["system: be brief\nuser: hi\nassistant:"]
    assert (message.type, message.role, message.model, message.id[:4]) == ("message", "assistant", MODEL, "msg_")
    assert [(b.type, b.text) for b in message.content] == [("text", STOPPED)]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "!")
    usage = message.usage
    assert usage.output_tokens == len(STOPPED.encode()) + 1  # the stop sequence's token too
    assert usage.input_tokens + usage.cache_read_input_tokens == len(prompts[0].encode())
    cut = client.messages.create(model=MODEL, max_tokens=3, messages=HI, system=[{"type": "text", "text": "x"}])
    assert (cut.stop_reason, cut.stop_sequence, cut.usage.output_tokens) == ("max_tokens", None, 3)
    assert prompts[-1] == "system: x\nuser: hi\nassistant:"


def test_text_blocks_join_on_a_newline_as_vllm_joins_them(client: anthropic.Anthropic, prompts: list[str]) -> None:
    """Claude Code sends a turn as several text blocks (a reminder, then the prompt) and a tool result as several;
    they had been glued together ("ab"), words of one block running into the next's; vLLM joins them on a newline."""
    call = {"type": "tool_use", "id": "c1", "name": "pick", "input": {"x": 1}}
    result = {
        "type": "tool_result",
        "tool_use_id": "c1",
        "content": [{"type": "text", "text": "r1"}, {"type": "text", "text": "r2"}],
    }
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [result]},
    ]
    client.messages.create(model=MODEL, max_tokens=1, messages=messages, tools=[PICK], tool_choice={"type": "none"})  # type: ignore[arg-type]
    assert prompts == ['user: a\nb\nassistant: [c1 pick({"x": 1})]\ntool: r1\nr2 <- c1\nassistant:']


def test_claude_codes_ctx_and_msg_roles_are_the_users(client: anthropic.Anthropic, prompts: list[str]) -> None:
    """Claude Code (2.1.154 on) sends messages of role "ctx" and "msg"; vLLM reads them as the user's. They had been
    a 400 (role: Input should be 'user' or 'assistant')."""
    messages = [{"role": "ctx", "content": "a"}, {"role": "msg", "content": [{"type": "text", "text": "b"}]}]
    client.messages.create(model=MODEL, max_tokens=1, messages=messages)  # type: ignore[arg-type]
    assert prompts == ["user: a\nuser: b\nassistant:"]


@pytest.mark.parametrize("system", ["", [], [{"type": "text", "text": ""}]])
def test_an_empty_system_prompt_is_no_system_message(
    client: anthropic.Anthropic, prompts: list[str], system: object
) -> None:
    """Clients that always send ``system`` send it empty when there is none: it had become an empty system message,
    which replaces a template's default system prompt (SmolLM2's); vLLM renders no system message, nor does this."""
    client.messages.create(model=MODEL, max_tokens=1, messages=HI, system=system)  # type: ignore[arg-type]
    client.messages.create(model=MODEL, max_tokens=1, messages=HI)
    assert prompts == ["user: hi\nassistant:"] * 2
    counted = client.messages.count_tokens(model=MODEL, messages=HI, system=system)  # type: ignore[arg-type]
    assert counted.input_tokens == client.messages.count_tokens(model=MODEL, messages=HI).input_tokens


def test_the_stream_is_anthropics_events_and_assembles_to_the_whole_message(client: anthropic.Anthropic) -> None:
    args = dict(model=MODEL, max_tokens=50, messages=HI, stop_sequences=["!"])
    whole = client.messages.create(**args)
    with client.messages.stream(**args) as stream:
        text = "".join(stream.text_stream)
        streamed = stream.get_final_message()
    assert text == STOPPED and [(b.type, b.text) for b in streamed.content] == [(b.type, b.text) for b in whole.content]
    assert (streamed.stop_reason, streamed.stop_sequence, streamed.usage.output_tokens) == (
        "stop_sequence",
        "!",
        whole.usage.output_tokens,
    )
    kinds = [event.type for event in client.messages.create(**args, stream=True)]
    assert kinds[:2] == ["message_start", "content_block_start"] and kinds[-3:] == [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert set(kinds[2:-3]) == {"content_block_delta"}


def test_message_start_counts_the_prompts_input_tokens(client: anthropic.Anthropic) -> None:
    """Anthropic's message_start carries the prompt's input_tokens (Claude Code reads its context size there; vLLM
    sends them too): it had said 0, the prompt being counted only once its first token came."""
    counted = client.messages.count_tokens(model=MODEL, messages=HI).input_tokens
    events = list(client.messages.create(model=MODEL, max_tokens=3, messages=HI, stream=True))
    start, end = events[0], [e for e in events if e.type == "message_delta"][0]
    assert start.type == "message_start" and start.message.usage.input_tokens == counted > 0
    assert end.usage.input_tokens + end.usage.cache_read_input_tokens == counted


def test_a_tool_round_trip(client: anthropic.Anthropic, prompts: list[str]) -> None:
    """A named tool is called (its input under the tool's schema), whole and streamed; the call and its result go
    back as blocks, reach the template as chat's ``tool_calls`` and tool message, and the reply is text."""
    args = dict(model=MODEL, max_tokens=40, messages=HI, tools=[PICK], tool_choice={"type": "tool", "name": "pick"})
    whole = client.messages.create(**args)
    with client.messages.stream(**args) as stream:
        streamed = stream.get_final_message()
    for message in (whole, streamed):
        (call,) = message.content
        assert (call.type, call.name, call.input, message.stop_reason) == ("tool_use", "pick", {"x": 1}, "tool_use")
    call = whole.content[0]
    history = [
        *HI,
        {"role": "assistant", "content": [call.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "42"}, "ok?"]},
    ]
    history[2]["content"][1] = {"type": "text", "text": "ok?"}
    reply = client.messages.create(
        model=MODEL, max_tokens=40, messages=history, tools=[PICK], tool_choice={"type": "none"}, stop_sequences=["!"]
    )
    assert [(b.type, b.text) for b in reply.content] == [("text", STOPPED)] and reply.stop_reason == "stop_sequence"
    assert prompts[-1] == (
        f'user: hi\nassistant: [{call.id} pick({{"x": 1}})]\ntool: 42 <- {call.id}\nuser: ok?\nassistant:'
    )
    failed = [
        {"type": "tool_result", "tool_use_id": call.id, "content": [{"type": "text", "text": "no"}], "is_error": True}
    ]
    history[2] = {"role": "user", "content": failed}
    client.messages.create(model=MODEL, max_tokens=2, messages=history)
    assert prompts[-1].endswith(f"tool: Error: no <- {call.id}\nassistant:")


def test_a_last_assistant_message_is_the_start_the_reply_continues(
    client: anthropic.Anthropic, prompts: list[str]
) -> None:
    """Anthropic's prefill: the reply continues the assistant's text, which the response leaves out, as Anthropic
    does; the token count renders the same open prompt."""
    messages = [*HI, {"role": "assistant", "content": [{"type": "text", "text": "Sure:"}]}]
    message = client.messages.create(model=MODEL, max_tokens=50, messages=messages, stop_sequences=["!"])
    assert prompts[-1] == "user: hi\nassistant: Sure:" and message.content[0].text == STOPPED
    counted = client.messages.count_tokens(model=MODEL, messages=messages)
    assert counted.input_tokens == message.usage.input_tokens + message.usage.cache_read_input_tokens


def test_output_config_format_holds_the_reply_to_its_schema(client: anthropic.Anthropic) -> None:
    config = {"format": {"type": "json_schema", "schema": PICK["input_schema"]}}
    message = client.messages.create(model=MODEL, max_tokens=20, messages=HI, output_config=config)
    assert json.loads(message.content[0].text) == {"x": 1} and message.stop_reason == "end_turn"


def test_output_format_the_older_name_of_output_config_format_holds_the_reply_too(client: anthropic.Anthropic) -> None:
    """Anthropic's beta ``output_format`` (what ``client.beta.messages`` sends), now ``output_config.format``: it had
    been ignored, so the reply broke the schema it asked for."""
    output_format = {"type": "json_schema", "schema": PICK["input_schema"]}
    message = client.messages.create(
        model=MODEL, max_tokens=20, messages=HI, extra_body={"output_format": output_format}
    )
    assert json.loads(message.content[0].text) == {"x": 1} and message.stop_reason == "end_turn"


def test_count_tokens_is_the_prompt_a_message_request_would_have(client: anthropic.Anthropic) -> None:
    args = dict(model=MODEL, messages=HI, system="be brief", tools=[PICK], tool_choice={"type": "none"})
    counted = client.messages.count_tokens(**args)
    usage = client.messages.create(**args, max_tokens=1).usage
    assert counted.input_tokens == usage.input_tokens + usage.cache_read_input_tokens > 0


def test_every_field_the_sdk_sends_is_taken_and_an_unknown_one_refused_by_name(
    server: RunningServer, client: anthropic.Anthropic
) -> None:
    """anthropic-sdk-python 2.17's request fields (``src/anthropic/types/message_create_params.py``,
    ``message_count_tokens_params.py``) are each taken, on both routes; one it does not send (its beta's
    ``compaction``, ``types/beta/message_create_params.py``, or a misspelling) is a 400 naming it, as Anthropic
    answers an extra input. The route had dropped an unknown field and answered 200 as if it had not been sent."""
    hints = dict(speed="standard", user_profile_id="u1", workspace_id="w1", cache_control={"type": "ephemeral"})
    config = {"format": {"type": "json_schema", "schema": PICK["input_schema"]}}
    message = client.messages.create(
        model=MODEL, max_tokens=20, messages=HI, output_config=config, metadata={"user_id": "u1"},
        service_tier="standard_only", inference_geo="us", diagnostics={"previous_message_id": None}, **hints,
    )  # fmt: skip
    assert json.loads(message.content[0].text) == {"x": 1}
    counted = client.messages.count_tokens(model=MODEL, messages=HI, output_config=config, **hints)
    assert counted.input_tokens == client.messages.count_tokens(model=MODEL, messages=HI).input_tokens > 0
    for route, base in (("messages", {"max_tokens": 5}), ("messages/count_tokens", {})):
        for field, value in (("compaction", {"type": "auto"}), ("systems", "be brief")):
            body = {**base, "model": MODEL, "messages": HI, field: value}
            reply = http("POST", f"{server.url}/v1/{route}", json_body=body, headers={"x-api-key": KEY})
            error = reply.json()["error"]
            assert reply.status == 400 and error["type"] == "invalid_request_error", reply.body
            assert f"Unrecognized request argument supplied: {field}" in error["message"], error
    body = {"model": MODEL, "messages": HI, "max_tokens": 5}  # count_tokens takes no max_tokens: refused too
    reply = http("POST", f"{server.url}/v1/messages/count_tokens", json_body=body, headers={"x-api-key": KEY})
    assert reply.status == 400 and "max_tokens" in reply.json()["error"]["message"]


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "messages"),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {}}]}]},
            "messages",
        ),
        ({"messages": []}, "messages"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools"),
        ({"tools": [PICK]}, "tool_choice"),  # "auto" needs --enable-auto-tool-choice, as on chat
        ({"tool_choice": {"type": "tool"}}, "tool_choice"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),  # no tools to call: chat's rule (vLLM's)
        ({"container": "c1"}, "container"),
        ({"mcp_servers": [{"url": "x"}]}, "mcp_servers"),
        ({"thinking": {"type": "enabled", "budget_tokens": 64}}, "thinking"),  # no reasoning parser in force
        ({"thinking": {"type": "enabled"}}, "thinking"),
        ({"stop_sequences": [""]}, "stop_sequences"),
        ({"output_config": {"format": {"type": "json_schema", "schema": {"type": "nonsense"}}}}, "output_config"),
        ({"output_format": 5}, "output_format"),
        ({"output_format": {"type": "json_schema", "schema": float("nan")}}, "output_format"),
        (  # both names at once, as the SDK refuses them
            {
                "output_format": {"type": "json_schema", "schema": {}},
                "output_config": {"format": {"type": "json_schema", "schema": {}}},
            },
            "output_format",
        ),
        ({"messages": [{"role": "user", "content": "x" * 300}]}, "messages"),  # longer than the 256-token context
        ({"fallbacks": [{"model": "other"}]}, "fallbacks"),  # the beta's, not taken: no longer dropped
        ({"stop_sequence": ["!"]}, "stop_sequence"),  # a misspelt stop_sequences: no longer dropped
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_a_bad_request_is_anthropics_error_naming_the_field(server: RunningServer, changes: dict, field: str) -> None:
    body = {k: v for k, v in {"model": MODEL, "max_tokens": 5, "messages": HI, **changes}.items() if v is not None}
    reply = http("POST", f"{server.url}/v1/messages", json_body=body, headers={"x-api-key": KEY})
    error = reply.json()
    assert reply.status == 400 and error["type"] == "error", reply.body
    assert error["error"]["type"] == "invalid_request_error" and field in error["error"]["message"], error


def test_a_forced_tool_cut_short_stops_at_max_tokens_whole_and_streamed(client: anthropic.Anthropic) -> None:
    """A named tool's call cut short by max_tokens: its tool_use block and stop reason "max_tokens", whole as
    streamed (the whole reply's block had been a text block of the partial JSON; the stream's a tool_use)."""
    args = dict(model=MODEL, max_tokens=3, messages=HI, tools=[PICK], tool_choice={"type": "tool", "name": "pick"})
    whole = client.messages.create(**args)
    with client.messages.stream(**args) as stream:
        streamed = stream.get_final_message()
    for message in (whole, streamed):
        assert ([b.type for b in message.content], message.stop_reason) == (["tool_use"], "max_tokens"), message


def test_tool_choice_auto_without_tools_is_answered(server: RunningServer) -> None:
    """Anthropic's default choice with no tools asks for nothing: not passed on as chat's "auto", which chat now
    refuses without tools (vLLM's Messages route leaves it out too)."""
    body = {"model": MODEL, "max_tokens": 2, "messages": HI, "tool_choice": {"type": "auto"}}
    reply = http("POST", f"{server.url}/v1/messages", json_body=body, headers={"x-api-key": KEY})
    assert reply.status == 200 and reply.json()["stop_reason"] == "max_tokens", reply.body


def test_keys_models_and_routes_fail_in_anthropics_shape(server: RunningServer, client: anthropic.Anthropic) -> None:
    wrong = anthropic.Anthropic(base_url=server.url, api_key="nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        wrong.messages.create(model=MODEL, max_tokens=5, messages=HI)
    assert refused.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="absent", max_tokens=5, messages=HI)
    assert missing.value.body["error"]["type"] == "not_found_error"
    bearer = http("POST", f"{server.url}/v1/messages", json_body={"model": MODEL, "max_tokens": 2, "messages": HI},
                  headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
    assert bearer.status == 200 and bearer.json()["usage"]["output_tokens"] == 2
    openai_route = http(
        "POST", f"{server.url}/v1/completions", json_body={"prompt": "hi", "n": 0}, headers={"x-api-key": KEY}
    )
    assert openai_route.status == 400 and "error" in openai_route.json() and "type" not in openai_route.json()

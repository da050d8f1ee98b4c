"""``POST /v1/responses`` through the ``openai`` SDK's ``client.responses`` over the scripted engine: string and item
inputs, instructions, the event stream (and the SDK's stream helper assembling it), a function call round-trip,
``text.format``, ``max_output_tokens`` as an incomplete response, and every field of OpenAI's and vLLM's request
honoured or refused with a 400 naming it.

The engine generates ``TEXT`` again and again over a byte-level tokenizer (as in tests/test_server_clients.py); its
chat template shows the calls and call ids that reach it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any, Literal, get_type_hints

import openai
import pytest
from fake_runner import REPEATED_TEXT, byte_level_tokenizer, fake_engine, repeating_calls_engine
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.responses.response_create_params import ResponseCreateParamsBase
from pydantic import BaseModel, TypeAdapter
from server_utils import RunningServer, assert_engine_left_empty, http, metrics, spy_prompts, wait_until
from tokenizers import Tokenizer as BackendTokenizer

from jllm.config import load_config
from jllm.engine import LLMEngine
from jllm.sampling import SamplingParams
from jllm.server.errors import APIError
from jllm.server.generation import Delta
from jllm.server.reasoning import ReplyPlan
from jllm.server.response_store import ResponseStore
from jllm.server.responses import _ResponseView, _stores
from jllm.server.responses_output import OutputMessage, OutputText, ResponseObject
from jllm.server.responses_schemas import RESPONSES_UNSUPPORTED_FIELDS, ResponsesRequest
from jllm.server.tools import ToolPlan

MODEL = "scripted"
TEXT = REPEATED_TEXT
STOPPED = TEXT[:-1]  # with stop "!": a completed response
PICK = {
    "type": "function",
    "name": "pick",
    "parameters": {
        "type": "object",
        "properties": {"x": {"enum": [1]}},
        "required": ["x"],
        "additionalProperties": False,
    },
    "strict": True,
}
STOP = {"extra_body": {"stop": ["!"]}}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> LLMEngine:
    return repeating_calls_engine(tmp_path_factory.mktemp("byte_level"))


@pytest.fixture(scope="module")
def server(engine: LLMEngine) -> Iterator[RunningServer]:
    with RunningServer(engine, load_config(None, served_model_name=MODEL)) as running:
        yield running


@pytest.fixture(autouse=True)
def engine_is_left_empty(engine: LLMEngine) -> Iterator[None]:
    yield
    assert_engine_left_empty(engine, wait=5)


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def prompts(engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return spy_prompts(engine, monkeypatch)


def test_string_input_with_instructions(client: openai.OpenAI, prompts: list[str]) -> None:
    response = client.responses.create(model=MODEL, input="hi", instructions="be brief", metadata={"k": "v"}, **STOP)
    assert prompts == ["system: be brief\nuser: hi\nassistant:"]
    assert (response.status, response.output_text, response.error) == ("completed", STOPPED, None)
    assert response.id.startswith("resp_") and response.object == "response" and response.model == MODEL
    (message,) = response.output
    assert (message.type, message.role, message.status, message.id[:4]) == ("message", "assistant", "completed", "msg_")
    assert [part.type for part in message.content] == ["output_text"]
    assert (response.instructions, response.metadata, response.store, response.incomplete_details) == (
        "be brief", {"k": "v"}, True, None,
    )  # fmt: skip
    usage = response.usage
    assert usage.output_tokens == len(STOPPED.encode()) + 1  # the stop string's token too
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens > usage.output_tokens
    assert (usage.input_tokens_details.cached_tokens, usage.output_tokens_details.reasoning_tokens) == (0, 0)


def test_message_items_with_text_parts_render_in_order(client: openai.OpenAI, prompts: list[str]) -> None:
    """Easy messages (no ``type``), typed ones with ``input_text`` parts, and an earlier reply passed back as its
    output item (``output_text`` parts, ``id``, ``status``, ``annotations``)."""
    previous = client.responses.create(model=MODEL, input="hi", **STOP)
    parts = [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]
    items = [
        {"role": "developer", "content": "rules"},
        {"type": "message", "role": "user", "content": parts},
        *previous.output,
        {"role": "user", "content": "again"},
    ]
    response = client.responses.create(model=MODEL, input=items, max_output_tokens=3)
    assert prompts[1] == f"system: rules\nuser: a\nb\nassistant: {STOPPED}\nuser: again\nassistant:"
    assert response.output_text == "猫"


def test_max_output_tokens_ends_an_incomplete_response(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="hi", max_output_tokens=4)
    assert (response.status, response.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    assert (response.output_text, response.output[0].status, response.usage.output_tokens) == ("猫 ", "incomplete", 4)
    streamed = list(client.responses.create(model=MODEL, input="hi", max_output_tokens=4, stream=True))
    assert streamed[-1].type == "response.incomplete" and streamed[-1].response.output_text == "猫 "


def test_a_stream_sends_openais_events_in_order_and_assembles_the_same_response(client: openai.OpenAI) -> None:
    whole = client.responses.create(model=MODEL, input="hi", **STOP)
    with client.responses.stream(model=MODEL, input="hi", **STOP) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed",
    ]  # fmt: skip
    assert len(deltas) > 1 and "".join(deltas) == final.output_text == whole.output_text == STOPPED
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.status == "completed" and final.usage.output_tokens == whole.usage.output_tokens


def test_raw_stream_names_each_event_and_ends_without_done(server: RunningServer) -> None:
    body = {"model": MODEL, "input": "hi", "max_output_tokens": 2, "stream": True}
    reply = http("POST", f"{server.url}/v1/responses", json_body=body)
    blocks = reply.body.decode().strip().split("\n\n")
    assert reply.headers["Content-Type"].startswith("text/event-stream") and "[DONE]" not in reply.body.decode()
    for block in blocks:
        name, data = block.split("\n")
        assert name.removeprefix("event: ") == json.loads(data.removeprefix("data: "))["type"]


def test_a_client_that_leaves_mid_stream_aborts_the_request(
    client: openai.OpenAI, server: RunningServer, engine: LLMEngine
) -> None:
    aborted = metrics(server.url).get("jllm:request_success_total{abort}", 0)
    engine.runner.step_seconds = 0.05  # 200 tokens would take 10 s: only an abort ends the request in time
    try:
        with client.responses.create(
            model=MODEL, input="hi", max_output_tokens=200, stream=True, extra_body={"ignore_eos": True}
        ) as stream:
            for i, _ in enumerate(stream):
                if i == 4:
                    break
        wait_until(lambda: not engine.requests, 5)
    finally:
        engine.runner.step_seconds = 0.002
    assert metrics(server.url)["jllm:request_success_total{abort}"] == aborted + 1


def test_a_function_call_cut_short_is_an_incomplete_call_whole_and_streamed(client: openai.OpenAI) -> None:
    """A named function's call cut short by max_output_tokens: an incomplete function_call item with the arguments
    generated so far, whole as streamed (the whole response's item had been a message of the partial JSON)."""
    args = dict(model=MODEL, input="hi", tools=[PICK], tool_choice={"type": "function", "name": "pick"})
    whole = client.responses.create(**args, max_output_tokens=3)
    events = list(client.responses.create(**args, max_output_tokens=3, stream=True))
    streamed = events[-1].response  # response.incomplete's
    for response in (whole, streamed):
        (call,) = response.output
        assert (call.type, call.status, response.status) == ("function_call", "incomplete", "incomplete"), response
    assert whole.output[0].arguments == streamed.output[0].arguments != ""


def test_a_function_call_round_trip(client: openai.OpenAI, prompts: list[str]) -> None:
    """A named function is called (its arguments under the tool's schema), whole and streamed; the call and its
    output go back as items, reach the template as chat's ``tool_calls`` and tool message, and the reply is text."""
    args = dict(model=MODEL, input="hi", tools=[PICK], tool_choice={"type": "function", "name": "pick"})
    whole = client.responses.create(**args, parallel_tool_calls=False, max_output_tokens=40)
    with client.responses.stream(**args, parallel_tool_calls=False, max_output_tokens=40) as stream:
        events = [e.type for e in stream]
        streamed = stream.get_final_response()
    for response in (whole, streamed):
        (call,) = response.output
        assert (call.type, call.name, json.loads(call.arguments), call.status) == (
            "function_call",
            "pick",
            {"x": 1},
            "completed",
        )
        assert call.call_id.startswith("call_") and response.status == "completed"
    assert "response.function_call_arguments.delta" in events and "response.function_call_arguments.done" in events
    assert response.tool_choice.name == "pick" and response.tools[0].name == "pick"
    call = whole.output[0]
    items = ["hi", *whole.output, {"type": "function_call_output", "call_id": call.call_id, "output": "42"}]
    items[0] = {"role": "user", "content": "hi"}
    reply = client.responses.create(model=MODEL, input=items, tools=[PICK], tool_choice="none", **STOP)
    assert reply.output_text == STOPPED
    assert prompts[-1] == (
        f'user: hi\nassistant: [{call.call_id} pick({{"x": 1}})]\ntool: 42 <- {call.call_id}\nassistant:'
    )


def test_logprobs_come_with_the_output_text_when_included(client: openai.OpenAI) -> None:
    """``include: ["message.output_text.logprobs"]`` with ``top_logprobs``: chat's entries (each token's own bytes),
    whole and with each streamed delta."""
    args = dict(model=MODEL, input="hi", include=["message.output_text.logprobs"], top_logprobs=2, **STOP)
    whole = client.responses.create(**args)
    entries = whole.output[0].content[0].logprobs
    assert b"".join(bytes(e.bytes) for e in entries) == STOPPED.encode() + b"!"  # the stop string's token too
    assert all(len(e.top_logprobs) == 2 for e in entries) and whole.top_logprobs == 2
    events = list(client.responses.create(**args, stream=True))
    streamed = [e for ev in events if ev.type == "response.output_text.delta" for e in ev.logprobs]
    done = next(ev for ev in events if ev.type == "response.output_text.done")
    assert b"".join(bytes(e.bytes) for e in streamed) == STOPPED.encode()  # each with the delta its bytes end in
    assert [(e.token, e.logprob) for e in done.logprobs] == [(e.token, e.logprob) for e in entries]


class Pick(BaseModel):
    x: Literal[1]


def test_text_format_json_schema_and_the_sdks_parse(client: openai.OpenAI) -> None:
    schema = {"type": "json_schema", "name": "s", "schema": {"enum": ["a"]}, "strict": True}
    response = client.responses.create(model=MODEL, input="hi", text={"format": schema}, max_output_tokens=8)
    assert (response.output_text, response.status, response.text.format.name) == ('"a"', "completed", "s")
    parsed = client.responses.parse(model=MODEL, input="hi", text_format=Pick, max_output_tokens=20)
    assert parsed.output_parsed == Pick(x=1)
    as_object = client.responses.create(
        model=MODEL, input="hi", text={"format": {"type": "json_object"}}, max_output_tokens=20
    )
    assert as_object.output_text.startswith("{")


def test_chats_rules_and_errors_name_this_routes_fields(server: RunningServer) -> None:
    """The chat route checks the converted request; its messages name ``input``, ``max_output_tokens``, ``text``."""
    cases = [
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x" * 300}, "input"),  # longer than the 256-token context
        ({"text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "nonsense"}}}}, "text"),
        ({"tools": [PICK]}, "tool_choice"),  # "auto" needs --enable-auto-tool-choice, as on chat
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}]}, "input"),
    ]
    for changes, param in cases:
        reply = http("POST", f"{server.url}/v1/responses", json_body={"model": MODEL, "input": "hi", **changes})
        error = reply.json()["error"]
        assert reply.status == 400 and error["param"] == param, (changes, error)
        assert not error["message"].startswith(("messages", "max_completion_tokens", "response_format")), error


# Fields of vLLM's ResponsesRequest (vllm/entrypoints/openai/responses/protocol.py)
VLLM_RESPONSES_FIELDS = """
    background include input instructions max_output_tokens max_tool_calls metadata model logit_bias
    parallel_tool_calls previous_response_id prompt reasoning service_tier store stream temperature text tool_choice
    tools top_logprobs top_p top_k truncation user skip_special_tokens include_stop_str_in_output prompt_cache_key
    request_id mm_processor_kwargs priority cache_salt enable_response_messages previous_input_messages
    previous_response structured_outputs repetition_penalty seed stop ignore_eos vllm_xargs
""".split()
REFUSED_VALUES = {  # a value asking for something, per RESPONSES_UNSUPPORTED_FIELDS entry
    "conversation": "conv_1",
    "background_options": {"x": 1}, "prompt": {"id": "pmpt_1"}, "service_tier": "priority",
    "context_management": [{"type": "compaction"}], "moderation": {"x": 1}, "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "explicit"}, "access_programs": {"cyber": "standard"}, "image": {"x": 1},
    "previous_response": {"id": "resp_1"}, "previous_input_messages": [{"role": "user"}],
    "enable_response_messages": True, "priority": 1, "cache_salt": "salt", "mm_processor_kwargs": {"x": 1},
    "vllm_xargs": {"x": 1}, "structural_tag": "{}",
}  # fmt: skip
REFUSED_ELSEWHERE = {  # refused values of honoured fields
    "include": ["file_search_call.results"],
    "top_logprobs": 2,  # without include's message.output_text.logprobs
    "reasoning": {"effort": "low"},
    "tools": [{"type": "web_search"}],
    "tool_choice": {"type": "function", "name": "absent"},
    "input": [{"type": "reasoning", "summary": [], "encrypted_content": "gAAAA"}],
    "text": {"verbosity": "low"},
}
NOTHING = {  # the values of refused or partly honoured fields that ask for nothing, all in one request
    "store": False, "background": False, "truncation": "disabled", "top_logprobs": 0, "previous_response_id": None,
    "include": ["reasoning.encrypted_content"], "reasoning": {"effort": None, "summary": None},
    "prompt_cache_retention": "in_memory", "text": {"format": {"type": "text"}, "verbosity": "medium"},
    "max_tool_calls": 3, "service_tier": "auto", "prompt_cache_key": "k", "safety_identifier": "u",
    "user": "u", "stream_options": {"include_obfuscation": False}, "parallel_tool_calls": None,
}  # fmt: skip


def test_every_openai_and_vllm_field_is_honoured_or_refused() -> None:
    """The SDK's create parameters and vLLM's request fields: each a field of the request (honoured, or accepted
    where it asks nothing of a server without built-in tools, storage or obfuscation) or refused by name."""
    sdk = set(get_type_hints(ResponseCreateParamsBase, include_extras=False)) | {"stream"}
    known = set(ResponsesRequest.model_fields) | set(RESPONSES_UNSUPPORTED_FIELDS)
    assert sdk | set(VLLM_RESPONSES_FIELDS) <= known, sorted((sdk | set(VLLM_RESPONSES_FIELDS)) - known)
    assert set(REFUSED_VALUES) == set(RESPONSES_UNSUPPORTED_FIELDS)


@pytest.mark.parametrize("field, value", [*REFUSED_VALUES.items(), *REFUSED_ELSEWHERE.items()], ids=str)
def test_refused_field_is_a_400_naming_it(server: RunningServer, field: str, value: Any) -> None:
    reply = http("POST", f"{server.url}/v1/responses", json_body={"model": MODEL, "input": "hi", field: value})
    error = reply.json()["error"]
    assert reply.status == 400 and error["param"] == field and field in error["message"], error


def test_a_truncation_that_is_neither_value_is_refused_for_what_it_is(server: RunningServer) -> None:
    """A truncation of "bogus" was refused as "truncation 'auto' is not supported", naming a value never sent."""
    body = {"model": MODEL, "input": "hi", "truncation": "bogus"}
    error = http("POST", f"{server.url}/v1/responses", json_body=body).json()["error"]
    assert error["param"] == "truncation" and "'auto' or 'disabled'" in error["message"], error


def test_truncation_auto_keeps_the_inputs_last_tokens_as_vllm_does(server: RunningServer, engine: LLMEngine) -> None:
    """vLLM's "auto": the rendered input loses its first tokens to fit the context (truncate_prompt_tokens -1),
    where "disabled" (the default) refuses it; the response says which it ran with. It was refused."""
    body = {"model": MODEL, "input": "hi " * engine.inputs.max_model_len, "max_output_tokens": 2}
    refused = http("POST", f"{server.url}/v1/responses", json_body=body)
    assert refused.status == 400 and refused.json()["error"]["param"] == "input", refused.body
    reply = http("POST", f"{server.url}/v1/responses", json_body={**body, "truncation": "auto"})
    assert reply.status == 200, reply.body
    response = reply.json()
    assert response["truncation"] == "auto" and response["usage"]["output_tokens"] == 2
    assert response["usage"]["input_tokens"] == engine.inputs.max_model_len - 2


def test_a_field_the_route_does_not_know_is_a_400_naming_it(server: RunningServer) -> None:
    """OpenAI's answer; vLLM logs it and answers as if it had not been sent. ``stream_options`` holds OpenAI's one
    option, obfuscation, which this server does not send."""
    for changes, param, words in [
        ({"max_tokens": 5}, "max_tokens", "Unrecognized request argument supplied: max_tokens"),
        ({"stream": True, "stream_options": {"include_obfuscation": True}}, "stream_options", "obfuscation"),
        ({"stream": True, "stream_options": {"include_usage": True}}, "stream_options", "include_usage"),
    ]:
        reply = http("POST", f"{server.url}/v1/responses", json_body={"model": MODEL, "input": "hi", **changes})
        error = reply.json()["error"]
        assert reply.status == 400 and error["param"] == param and words in error["message"], error


def test_fields_at_their_nothing_values_are_accepted(server: RunningServer) -> None:
    body = {"model": MODEL, "input": "hi", "max_output_tokens": 2, **NOTHING}
    reply = http("POST", f"{server.url}/v1/responses", json_body=body)
    assert reply.status == 200 and reply.json()["usage"]["output_tokens"] == 2, reply.body


def test_the_openai_agents_sdks_default_body_is_accepted(server: RunningServer) -> None:
    """openai-agents-python's ``OpenAIResponsesModel`` sends ``include`` and ``tools`` on every request, empty when
    nothing is asked (src/agents/models/openai_responses.py, ``_build_response_create_kwargs``)."""
    items = [{"role": "user", "content": "hi"}]
    body = {"model": MODEL, "input": items, "include": [], "tools": [], "stream": True, "max_output_tokens": 2}
    reply = http("POST", f"{server.url}/v1/responses", json_body=body)
    assert reply.status == 200 and b"event: response.incomplete" in reply.body, reply.body


def test_previous_response_id_continues_a_stored_conversation(client: openai.OpenAI, prompts: list[str]) -> None:
    """Each response is stored; a continuation follows its predecessor's conversation (its input and output, a call
    and the call's output included), its instructions not carried over (OpenAI's rule); whole or streamed."""
    first = client.responses.create(model=MODEL, input="hi", instructions="be brief", **STOP)
    args = dict(model=MODEL, tools=[PICK], tool_choice={"type": "function", "name": "pick"}, parallel_tool_calls=False)
    with client.responses.stream(**args, input="call", previous_response_id=first.id, max_output_tokens=40) as stream:
        second = stream.get_final_response()
    (call,) = second.output
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "42"}
    third = client.responses.create(
        model=MODEL, input=[output], previous_response_id=second.id, tools=[PICK], tool_choice="none", **STOP
    )
    assert (first.store, second.store, third.store) == (True, True, True)
    assert (second.previous_response_id, third.previous_response_id) == (first.id, second.id)
    assert prompts[-1] == (
        f'user: hi\nassistant: {STOPPED}\nuser: call\nassistant: [{call.call_id} pick({{"x": 1}})]\n'
        f"tool: 42 <- {call.call_id}\nassistant:"
    )
    assert client.responses.retrieve(third.id).model_dump() == third.model_dump()
    assert client.responses.retrieve(second.id).output[0].call_id == call.call_id  # the streamed one, stored


def test_a_response_made_with_store_false_or_deleted_is_not_found(client: openai.OpenAI) -> None:
    unstored = client.responses.create(model=MODEL, input="hi", store=False, **STOP)
    stored = client.responses.create(model=MODEL, input="hi", **STOP)
    assert (unstored.store, stored.store) == (False, True)
    deleted = client.responses.delete(stored.id)
    assert deleted is None  # the SDK returns nothing for a 200 (its body: {"id", "object", "deleted": true})
    calls = (
        client.responses.retrieve,
        client.responses.delete,
        client.responses.cancel,
        client.responses.input_items.list,
    )
    for response_id in (unstored.id, stored.id):
        for call in calls:
            with pytest.raises(openai.NotFoundError) as missing:
                call(response_id)
            assert missing.value.code == "not_found" and response_id in missing.value.message
        with pytest.raises(openai.NotFoundError) as missing:
            client.responses.create(model=MODEL, input="hi", previous_response_id=response_id)
        assert (missing.value.code, missing.value.body["param"]) == (
            "previous_response_not_found",
            "previous_response_id",
        )


def test_input_items_list_a_responses_own_input_in_pages(client: openai.OpenAI, server: RunningServer) -> None:
    first = client.responses.create(model=MODEL, input="hi", **STOP)
    items = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    response = client.responses.create(model=MODEL, input=items, previous_response_id=first.id, **STOP)
    newest_first = client.responses.input_items.list(response.id)
    assert [item.content[0].text for item in newest_first.data] == ["c", "b", "a"]  # not the first response's "hi"
    assert [item.content[0].type for item in newest_first.data] == ["input_text", "output_text", "input_text"]
    page = client.responses.input_items.list(response.id, order="asc", limit=2)
    assert [item.content[0].text for item in page.data] == ["a", "b"] and page.has_more
    rest = client.responses.input_items.list(response.id, order="asc", after=page.last_id)
    assert [item.content[0].text for item in rest.data] == ["c"] and not rest.has_more
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.cancel(response.id)
    assert "only background responses can be cancelled" in refused.value.message
    for query, param in (("limit=0", "limit"), ("after=nope", "after"), ("before=x", "before")):
        reply = http("GET", f"{server.url}/v1/responses/{response.id}/input_items?{query}")
        assert reply.status == 400 and reply.json()["error"]["param"] == param, reply.body
    reply = http("GET", f"{server.url}/v1/responses/{response.id}?stream=true")
    assert reply.status == 400 and reply.json()["error"]["param"] == "stream"
    deleted = http("DELETE", f"{server.url}/v1/responses/{response.id}")
    assert deleted.json() == {"id": response.id, "object": "response", "deleted": True}


def test_a_background_response_is_polled_to_its_end_or_cancelled(client: openai.OpenAI, server: RunningServer) -> None:
    """``background``: the POST answers at once, in progress; GET polls it to the end; cancel stops one still
    generating (its request aborted: the engine is left empty) and stores it cancelled."""
    started = client.responses.create(model=MODEL, input="hi", background=True, **STOP)
    assert (started.status, started.background, started.output) == ("in_progress", True, [])
    polled = started
    for _ in range(500):
        polled = client.responses.retrieve(started.id)
        if polled.status != "in_progress":
            break
        time.sleep(0.01)
    assert (polled.status, polled.output_text, polled.background) == ("completed", STOPPED, True)
    long = client.responses.create(model=MODEL, input="hi", background=True, max_output_tokens=200)
    # continued while generating, it was answered (200) as if it had said nothing: its stored output was still empty
    early = http("POST", f"{server.url}/v1/responses", json_body={"model": MODEL, "input": "and?",
                                                                    "previous_response_id": long.id})  # fmt: skip
    assert early.status == 400 and early.json()["error"]["param"] == "previous_response_id", early.body
    assert "still in progress" in early.json()["error"]["message"]
    cancelled = client.responses.cancel(long.id)
    assert cancelled.status == "cancelled" and client.responses.retrieve(long.id).status == "cancelled"
    assert client.responses.cancel(long.id).status == "cancelled"  # one that has ended: answered as it is
    for refused_body in ({"stream": True}, {"store": False}):
        body = {"model": MODEL, "input": "hi", "background": True, **refused_body}
        reply = http("POST", f"{server.url}/v1/responses", json_body=body)
        assert reply.status == 400 and reply.json()["error"]["param"] == "background", reply.body


def test_the_store_drops_the_least_recently_used_and_keeps_nothing_over_its_bound() -> None:
    """Sizes count a response's whole conversation (earlier turns included); reading a response makes it recent."""
    store = ResponseStore(capacity_bytes=7_000)
    made = {}
    for name in ("a", "b", "c"):
        made[name] = _response(name)
        assert store.put(made[name], [], None, body_bytes=1_000)
    size = store.get("a").size
    assert 1_000 < size < 2_000 and store.get("a").conversation[-1].content[0].text == "a"
    assert store.put(_response("d"), [], store.get("b"), body_bytes=1_000)  # b's conversation and its own: ~2 sizes
    assert store.get("c") is None and store.get("b") is not None  # c was the least recently used
    assert [item.content[0].text for item in store.get("d").conversation] == ["b", "d"]
    assert not store.put(_response("e"), [], None, body_bytes=7_000)  # alone over the bound: not kept
    assert store.get("e") is None and store.get("a") is not None


def _response(text: str) -> ResponseObject:
    message = OutputMessage(id=f"msg_{text}", status="completed", content=[OutputText(text=text)])
    common = dict(instructions=None, max_output_tokens=None, max_tool_calls=None, metadata={}, temperature=None)
    common |= dict(parallel_tool_calls=True, text={}, tool_choice="auto", tools=[], top_p=None, top_logprobs=0)
    return ResponseObject(id=text, created_at=0, status="completed", model=MODEL, output=[message], user=None, **common)


def test_store_true_without_a_store_is_refused_by_name() -> None:
    body = ResponsesRequest.model_validate({"input": "hi", "store": True})
    with pytest.raises(APIError) as refused:
        _stores(ResponseStore(capacity_bytes=0), body)
    assert refused.value.param == "store" and "responses_store_mb" in refused.value.message
    assert not _stores(ResponseStore(capacity_bytes=0), ResponsesRequest.model_validate({"input": "hi"}))
    background = ResponsesRequest.model_validate({"input": "hi", "background": True})
    with pytest.raises(APIError) as refused:
        _stores(ResponseStore(capacity_bytes=0), background)  # its result could never be read
    assert refused.value.param == "background"


class _Scripted:
    """A ``Generation`` handing out ``deltas``, then raising ``error`` if one is given."""

    params = SamplingParams()
    cached_tokens = 0

    def __init__(self, deltas: list[Delta], error: Exception | None = None) -> None:
        self._deltas, self._error = deltas, error

    async def deltas(self) -> Any:
        for delta in self._deltas:
            yield delta
        if self._error is not None:
            raise self._error

    def usage(self) -> Any:
        return SimpleNamespace(prompt_tokens=1, completion_tokens=1, total_tokens=2)


def _events(generation: _Scripted) -> list[dict]:
    view = _ResponseView(ResponsesRequest.model_validate({"input": "hi"}), "resp_x", MODEL, generation, None, None)  # type: ignore[arg-type]

    async def collect() -> list[dict]:
        plan = ReplyPlan(ToolPlan(None, None, False, None, True), None, True)
        return [json.loads(data) async for _, data in view.events(plan)]

    return asyncio.run(collect())


def test_a_failure_mid_stream_is_an_error_event() -> None:
    """After the headers the status cannot change: the stream ends with OpenAI's ``error`` event."""
    events = _events(_Scripted([Delta(0, 0, "猫", [1], None, None)], ValueError("the engine failed")))
    assert [e["type"] for e in events][-2:] == ["response.output_text.delta", "error"]
    assert events[-1] == {"type": "error", "sequence_number": len(events) - 1, "code": None,
                          "message": "the engine failed", "param": None}  # fmt: skip


def test_a_request_the_server_aborts_ends_failed() -> None:
    """A drain ends a request with finish reason "abort": the response failed (a server error), not completed."""
    events = _events(_Scripted([Delta(0, 0, "猫", [1], None, None), Delta(0, 0, "", [2], None, "abort")]))
    last = events[-1]
    assert (last["type"], last["response"]["status"], last["response"]["error"]["code"]) == (
        "response.failed", "failed", "server_error",
    )  # fmt: skip
    assert last["response"]["output"][0]["status"] == "incomplete"


CALL = '<tool_call>{"name": "pick", "arguments": {"x": 1}}</tool_call>'
AUTO_REPLY = f"Sure.{CALL}{CALL}"  # then EOS


@pytest.fixture(scope="module")
def auto_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    """A server parsing hermes calls from free text (tool_choice "auto"), its engine replying ``AUTO_REPLY``."""
    tokenizer_dir = byte_level_tokenizer(tmp_path_factory.mktemp("byte_level_auto"))
    ids = BackendTokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).encode(AUTO_REPLY).ids

    def script(prompt: Sequence[int], position: int) -> int:
        k = position - len(prompt)
        return ids[k] if k < len(ids) else 2

    engine = fake_engine(script=script, tokenizer_dir=tokenizer_dir, max_model_len=256, num_pages=80)
    config = load_config(None, served_model_name=MODEL, enable_auto_tool_choice=True, tool_call_parser="hermes")
    with RunningServer(engine, config) as running:
        yield openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0)
    assert_engine_left_empty(engine)


@pytest.mark.parametrize("parallel", [True, False])
def test_auto_calls_follow_the_text_as_items_whole_and_streamed(auto_client: openai.OpenAI, parallel: bool) -> None:
    """Text, then parsed calls: a message item and a function_call item per call (one without parallel calls),
    each streamed as its own item with its own done events."""
    args = dict(model=MODEL, input="hi", tools=[PICK], parallel_tool_calls=parallel)
    whole = auto_client.responses.create(**args)
    with auto_client.responses.stream(**args) as stream:
        events = list(stream)
        streamed = stream.get_final_response()
    calls = 2 if parallel else 1
    for response in (whole, streamed):
        assert [item.type for item in response.output] == ["message"] + ["function_call"] * calls
        assert response.output_text == "Sure." and response.status == "completed"
        assert [(c.name, json.loads(c.arguments)) for c in response.output[1:]] == [("pick", {"x": 1})] * calls
    added = [(e.output_index, e.item.type) for e in events if e.type == "response.output_item.added"]
    done = [(e.output_index, e.item.type, e.item.status) for e in events if e.type == "response.output_item.done"]
    assert added == [(i, item.type) for i, item in enumerate(streamed.output)]
    assert done == [(i, item.type, "completed") for i, item in enumerate(streamed.output)]
    kinds = [e.type for e in events]
    assert kinds.index("response.output_item.done") < kinds.index("response.function_call_arguments.delta")
    assert kinds.count("response.function_call_arguments.done") == calls and kinds[-1] == "response.completed"


def test_a_message_before_calls_is_completed_whole_as_streamed(auto_client: openai.OpenAI) -> None:
    """Cut short by max_output_tokens after text and a call: the message item is "completed" and only the last item
    takes the response's "incomplete", whole as streamed (the whole response's message had been "incomplete")."""
    cut = len(AUTO_REPLY) - len(CALL)  # after the first call (a token a character)
    args = dict(model=MODEL, input="hi", tools=[PICK], parallel_tool_calls=False, max_output_tokens=cut)
    whole = auto_client.responses.create(**args)
    streamed = list(auto_client.responses.create(**args, stream=True))[-1].response  # response.incomplete's
    for response in (whole, streamed):
        statuses = [(item.type, item.status) for item in response.output]
        assert statuses == [("message", "completed"), ("function_call", "incomplete")], response
        assert response.status == "incomplete"


def test_bodies_and_events_validate_against_the_sdks_types(server: RunningServer) -> None:
    """The SDK builds its objects without validating them; here each body and event is validated strictly against
    its pydantic types, so a missing or mistyped field fails (text, a named call, logprobs, incomplete)."""
    events = TypeAdapter(ResponseStreamEvent)
    include = {"include": ["message.output_text.logprobs"], "top_logprobs": 1}
    named = {"tools": [PICK], "tool_choice": {"type": "function", "name": "pick"}, "max_output_tokens": 40}
    for changes in ({"max_output_tokens": 3}, {"stop": ["!"], **include}, named):
        body = {"model": MODEL, "input": "hi", **changes}
        Response.model_validate(http("POST", f"{server.url}/v1/responses", json_body=body).json())
        raw = http("POST", f"{server.url}/v1/responses", json_body={**body, "stream": True}).body.decode()
        for block in raw.strip().split("\n\n"):
            events.validate_json(block.partition("\ndata: ")[2])

"""A thinking model's reasoning on the server (``reasoning_parser``): chat's ``reasoning`` / ``reasoning_content``
whole and streamed, tool calls read after the reasoning, ``include_reasoning``, the template's thinking switch, the
combinations refused, and the Responses API's ``reasoning`` item and events; over the scripted engine, each reply
chosen by the user's message."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import openai
import pytest
from fake_runner import fake_engine
from server_utils import RunningServer, http, spy_prompts

from jllm import cli
from jllm.config import ConfigError, ServerConfig, load_config
from jllm.engine import LLMEngine
from jllm.serve_config import load_serve_config
from jllm.server.chat_schemas import ChatCompletionRequest
from jllm.server.errors import APIError
from jllm.server.reasoning import ReplyPlan

MODEL = "thinker"
TEMPLATE = (  # an earlier turn's reasoning shown in brackets, as Qwen3's template shows it
    "{% for m in messages %}{{ m.role }}: {{ m.content }}{% if m.reasoning_content %}[{{ m.reasoning_content }}]"
    "{% endif %}|{% endfor %}assistant:"
)
CALL = '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
REPLIES = {  # the user's message -> the model's reply (Qwen3's: <think> opened by the template, or written)
    "sum": "<think>Two and two.</think>\n\nFour.",
    "call": f"I could write <tool_call> here.</think>Let me check.\n{CALL}",
    "long": "Still thinking about it, and more, and more",
    "number": "<think>A number.</think>42",
    "city": '<think>Where?</think>{"city":"Oslo"}',  # compact, as the grammar's JSON is
}
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]


def _messages(key: str) -> list[dict]:
    return [{"role": "user", "content": key}]


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    return _thinker()


def _thinker() -> LLMEngine:
    """An engine whose reply follows the user's message (REPLIES)."""
    engine = fake_engine(max_model_len=512, num_pages=192)
    replies = {key: engine.tokenizer.encode(text, add_special_tokens=False) + [2] for key, text in REPLIES.items()}
    chosen: dict[tuple[int, ...], list[int]] = {}

    def script(prompt: Sequence[int], position: int) -> int:
        if tuple(prompt) not in chosen:
            text = engine.tokenizer.decode(list(prompt))
            chosen[tuple(prompt)] = next(ids for key, ids in replies.items() if f"user: {key}|" in text)
        ids = chosen[tuple(prompt)]
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


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def _streamed(client: openai.OpenAI, **body: object) -> tuple[str, str, list]:
    chunks = list(client.chat.completions.create(model=MODEL, max_tokens=400, stream=True, **body))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    assert reasoning == "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas)
    return reasoning, "".join(d.content or "" for d in deltas), chunks


def test_reasoning_comes_apart_from_the_content_whole_and_streamed(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=_messages("sum"), max_tokens=400)
    message = reply.choices[0].message
    assert message.model_extra["reasoning_content"] == message.model_extra["reasoning"] == "Two and two."
    assert message.content == "\n\nFour." and reply.choices[0].finish_reason == "stop"
    reasoning, content, chunks = _streamed(client, messages=_messages("sum"))
    assert (reasoning, content) == ("Two and two.", "\n\nFour.")
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_reply_cut_short_while_reasoning_is_all_reasoning(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=_messages("long"), max_tokens=5)
    message = reply.choices[0].message
    assert message.content is None and REPLIES["long"].startswith(message.model_extra["reasoning_content"])
    assert reply.choices[0].finish_reason == "length"


def test_tool_calls_are_read_after_the_reasoning_only(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=_messages("call"), tools=TOOLS, max_tokens=400)
    choice = reply.choices[0]
    assert choice.message.model_extra["reasoning_content"] == "I could write <tool_call> here."
    assert choice.message.content == "Let me check."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == [
        ("weather", {"city": "Oslo"})
    ]
    assert choice.finish_reason == "tool_calls"
    reasoning, content, chunks = _streamed(client, messages=_messages("call"), tools=TOOLS)
    assert reasoning == "I could write <tool_call> here." and content.strip() == "Let me check."
    calls = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert calls[0].function.name == "weather"
    assert json.loads("".join(d.function.arguments or "" for d in calls)) == {"city": "Oslo"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_include_reasoning_false_leaves_the_reasoning_out(server: RunningServer) -> None:
    body = {"model": MODEL, "messages": _messages("sum"), "max_tokens": 400, "include_reasoning": False}
    message = http("POST", f"{server.url}/v1/chat/completions", json_body=body).json()["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "\n\nFour.", "tool_calls": []}
    raw = http("POST", f"{server.url}/v1/chat/completions", json_body={**body, "stream": True}).body.decode()
    deltas = [json.loads(e.removeprefix("data: "))["choices"][0]["delta"] for e in raw.split("\n\n")[:-2]]
    assert {key for d in deltas for key in d} == {"role", "content"}
    assert "".join(d["content"] for d in deltas) == "\n\nFour."


def test_thinking_switched_off_in_the_template_reads_no_reasoning(client: openai.OpenAI) -> None:
    off = {"enable_thinking": False}
    reply = client.chat.completions.create(
        model=MODEL, messages=_messages("sum"), max_tokens=400, extra_body={"chat_template_kwargs": off}
    )
    message = reply.choices[0].message
    assert message.content == REPLIES["sum"] and "reasoning_content" not in (message.model_extra or {})


def test_default_chat_template_kwargs_apply_unless_the_request_sets_them() -> None:
    """vLLM's --default-chat-template-kwargs: thinking off for every request that does not switch it on itself."""
    engine = _thinker()
    engine.inputs.default_template_kwargs = {"enable_thinking": False}  # default_chat_template_kwargs, as built
    with RunningServer(engine, load_config(None, served_model_name=MODEL, reasoning_parser="qwen3")) as running:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="none", max_retries=0)
        off = client.chat.completions.create(model=MODEL, messages=_messages("sum"), max_tokens=400).choices[0]
        assert off.message.content == REPLIES["sum"] and "reasoning_content" not in (off.message.model_extra or {})
        on = {"chat_template_kwargs": {"enable_thinking": True}}
        asked = client.chat.completions.create(model=MODEL, messages=_messages("sum"), max_tokens=400, extra_body=on)
        assert asked.choices[0].message.model_extra["reasoning_content"] == "Two and two."


def test_a_reasoning_effort_switches_a_templates_enable_thinking_as_vllm_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """vLLM's rule: an effort sets ``enable_thinking`` (off for "none") unless chat_template_kwargs set it, so it
    reaches Qwen3's template, which reads only the switch, and the reasoning format reads the same switch. It was a
    400 (the template does not read reasoning_effort); a template reading neither still refuses it."""
    engine = _thinker()
    engine.tokenizer.hf.chat_template = TEMPLATE + "{% if enable_thinking is false %}<think></think>{% endif %}"
    seen = spy_prompts(engine, monkeypatch)
    with RunningServer(engine, load_config(None, served_model_name=MODEL, reasoning_parser="qwen3")) as running:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="none", max_retries=0)
        ask = dict(model=MODEL, messages=_messages("sum"), max_tokens=400)
        off = client.chat.completions.create(**ask, reasoning_effort="none").choices[0].message
        assert seen[-1].endswith("assistant:<think></think>") and off.content == REPLIES["sum"]
        assert "reasoning_content" not in (off.model_extra or {})
        on = client.chat.completions.create(**ask, reasoning_effort="low").choices[0].message
        assert not seen[-1].endswith("</think>") and on.model_extra["reasoning_content"] == "Two and two."
        kwargs = {"chat_template_kwargs": {"enable_thinking": True}}  # the request's own switch wins
        mine = client.chat.completions.create(**ask, reasoning_effort="none", extra_body=kwargs).choices[0].message
        assert mine.model_extra["reasoning_content"] == "Two and two."
        response = client.responses.create(model=MODEL, input="sum", reasoning={"effort": "none"})
        assert seen[-1].endswith("<think></think>") and [item.type for item in response.output] == ["message"]
        tokenized = http("POST", f"{running.url}/tokenize", json_body={**ask, "reasoning_effort": "none"}).json()
        assert engine.tokenizer.decode(tokenized["tokens"]).endswith("<think></think>")
    neither = {"model": MODEL, "messages": _messages("sum"), "reasoning_effort": "low"}
    with RunningServer(_thinker(), load_config(None, served_model_name=MODEL, reasoning_parser="qwen3")) as running:
        error = http("POST", f"{running.url}/v1/chat/completions", json_body=neither).json()["error"]
        assert error["param"] == "reasoning_effort" and "enable_thinking" in error["message"], error


def test_structured_output_holds_the_answer_after_the_reasoning(client: openai.OpenAI) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "integer"}}}
    reply = client.chat.completions.create(
        model=MODEL, messages=_messages("number"), max_tokens=400, response_format=schema
    )
    message = reply.choices[0].message
    assert (message.model_extra["reasoning_content"], message.content) == ("A number.", "42")
    assert reply.choices[0].finish_reason == "stop"
    reasoning, content, _ = _streamed(client, messages=_messages("number"), response_format=schema)
    assert (reasoning, content) == ("A number.", "42")
    several = client.chat.completions.create(
        model=MODEL, messages=_messages("number"), max_tokens=400, response_format=schema, n=2
    )  # each sample's grammar waits behind its own gate
    assert [(c.message.model_extra["reasoning_content"], c.message.content) for c in several.choices] == [
        ("A number.", "42")
    ] * 2


def test_a_forced_call_is_generated_after_the_reasoning(client: openai.OpenAI) -> None:
    forced = {"type": "function", "function": {"name": "weather"}}
    reply = client.chat.completions.create(
        model=MODEL, messages=_messages("city"), tools=TOOLS, tool_choice=forced, max_tokens=400
    )
    message = reply.choices[0].message
    assert message.model_extra["reasoning_content"] == "Where?"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("weather", {"city": "Oslo"})
    ]
    reasoning, content, chunks = _streamed(client, messages=_messages("city"), tools=TOOLS, tool_choice=forced)
    calls = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert (reasoning, content, calls[0].function.name) == ("Where?", "", "weather")
    assert json.loads("".join(d.function.arguments or "" for d in calls)) == {"city": "Oslo"}


def test_structured_output_beside_a_reasoning_that_may_not_open_is_refused_naming_both() -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "integer"}}}
    body = ChatCompletionRequest.model_validate({"messages": _messages("sum"), "response_format": schema})
    with pytest.raises(APIError) as refused:
        ReplyPlan.of(body, ServerConfig(), "glm45")
    assert refused.value.param == "response_format" and "reasoning_parser 'glm45'" in refused.value.message
    assert '{"enable_thinking": false}' in refused.value.message
    off = body.model_copy(update={"chat_template_kwargs": {"enable_thinking": False}})
    assert ReplyPlan.of(off, ServerConfig(), "glm45").reasoning is None


def test_mistral_markers_are_special_tokens_kept_in_the_text() -> None:
    body = ChatCompletionRequest.model_validate({"messages": _messages("sum")})
    assert ReplyPlan.of(body, ServerConfig(), "mistral").keep_special_tokens
    assert not ReplyPlan.of(body, ServerConfig(), "qwen3").keep_special_tokens


def test_logprobs_without_the_reasoning_are_refused(server: RunningServer) -> None:
    body = {"model": MODEL, "messages": _messages("sum"), "logprobs": True, "include_reasoning": False}
    reply = http("POST", f"{server.url}/v1/chat/completions", json_body=body)
    assert reply.status == 400 and reply.json()["error"]["param"] == "logprobs"


def test_responses_put_the_reasoning_in_a_reasoning_item(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="sum", max_output_tokens=400)
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_") and reasoning.status == "completed"
    assert [(c.type, c.text) for c in reasoning.content] == [("reasoning_text", "Two and two.")]
    assert message.type == "message" and response.output_text == "\n\nFour."
    events = list(client.responses.create(model=MODEL, input="sum", max_output_tokens=400, stream=True))
    kinds = [e.type for e in events]
    first, last = kinds.index("response.reasoning_text.delta"), kinds.index("response.reasoning_text.done")
    assert kinds[first - 2 : first] == ["response.output_item.added", "response.content_part.added"]
    assert kinds[last : last + 3] == [
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == "Two and two."
    done = events[-1].response
    assert done.status == "completed" and [i.type for i in done.output] == ["reasoning", "message"]
    assert done.output[0].content[0].text == "Two and two." and done.output_text == "\n\nFour."


def test_responses_reasoning_only_still_ends_with_a_message(client: openai.OpenAI) -> None:
    whole = client.responses.create(model=MODEL, input="long", max_output_tokens=5)
    events = list(client.responses.create(model=MODEL, input="long", max_output_tokens=5, stream=True))
    assert [i.type for i in whole.output] == [i.type for i in events[-1].response.output] == ["reasoning", "message"]


def test_responses_refuse_text_logprobs_beside_reasoning(server: RunningServer) -> None:
    body = {"model": MODEL, "input": "sum", "include": ["message.output_text.logprobs"]}
    reply = http("POST", f"{server.url}/v1/responses", json_body=body)
    assert reply.status == 400 and reply.json()["error"]["param"] == "include"


def test_an_unknown_reasoning_parser_is_refused_at_start_naming_the_known_ones(
    capsys: pytest.CaptureFixture,
) -> None:
    with pytest.raises(ConfigError, match=r"^reasoning_parser='r1' is not allowed: must be one of deepseek_r1, "):
        load_config(None, reasoning_parser="r1")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--reasoning-parser", "r1"])
    assert exit_info.value.code == 2
    assert (
        "reasoning_parser='r1' is not allowed: must be one of deepseek_r1, deepseek_v3, qwen3"
        in capsys.readouterr().err
    )


def test_each_model_entry_may_name_its_own_reasoning_parser(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("reasoning_parser: deepseek_r1\nmodels:\n  - model: a\n  - model: b\n    reasoning_parser: qwen3\n")
    served = load_serve_config(path)
    assert [m.config.server.reasoning_parser for m in served.models] == ["deepseek_r1", "qwen3"]


@pytest.fixture
def prompts(engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return spy_prompts(engine, monkeypatch)


def test_an_earlier_turns_reasoning_reaches_the_template(client: openai.OpenAI, prompts: list[str]) -> None:
    history = [
        {"role": "user", "content": "sum"},
        {"role": "assistant", "content": "Four.", "reasoning_content": "Two and two."},
        {"role": "user", "content": "sum"},
    ]
    client.chat.completions.create(model=MODEL, messages=history, max_tokens=1)
    assert prompts[-1] == "user: sum|assistant: Four.[Two and two.]|user: sum|assistant:"


def test_a_reasoning_item_passed_back_reaches_the_template(client: openai.OpenAI, prompts: list[str]) -> None:
    first = client.responses.create(model=MODEL, input="sum", max_output_tokens=400)
    turn = [{"role": "user", "content": "sum"}]
    client.responses.create(
        model=MODEL, input=turn + [item.model_dump() for item in first.output] + turn, max_output_tokens=1
    )
    assert prompts[-1] == "user: sum|assistant: \n\nFour.[Two and two.]|user: sum|assistant:"


def test_anthropic_messages_carry_thinking_text_and_tool_use_blocks(server: RunningServer, prompts: list[str]) -> None:
    """The Messages API: the reasoning a ``thinking`` block, then the text, then each call a ``tool_use`` block
    (stop reason ``tool_use``), whole and streamed; a thinking block passed back reaches the template."""
    import anthropic  # here: its import took 1.7 CPU s of every xdist worker's collection

    client = anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0)
    tools = [{"name": "weather", "input_schema": {"type": "object"}}]
    args = dict(model=MODEL, max_tokens=400, messages=_messages("call"), tools=tools)
    whole = client.messages.create(**args)
    with client.messages.stream(**args) as stream:
        streamed = stream.get_final_message()
    for message in (whole, streamed):
        thinking, text, call = message.content
        assert (thinking.type, thinking.thinking) == ("thinking", "I could write <tool_call> here.")
        assert (text.type, text.text.rstrip("\n")) == ("text", "Let me check.")  # a stream keeps the newline
        assert (call.type, call.name, call.input, message.stop_reason) == (
            "tool_use",
            "weather",
            {"city": "Oslo"},
            "tool_use",
        )
    first = client.messages.create(model=MODEL, max_tokens=400, messages=_messages("sum"))
    history = [*_messages("sum"), {"role": "assistant", "content": [b.model_dump() for b in first.content]}]
    client.messages.create(model=MODEL, max_tokens=1, messages=[*history, *_messages("sum")])
    assert prompts[-1] == "user: sum|assistant: \n\nFour.[Two and two.]|user: sum|assistant:"


def test_usage_counts_the_reasoning_tokens(client: openai.OpenAI, engine: LLMEngine) -> None:
    ids = engine.tokenizer.encode(REPLIES["sum"], add_special_tokens=False)
    expected = next(k for k in range(len(ids)) if "</think>" in engine.tokenizer.decode(ids[:k]))
    reply = client.chat.completions.create(model=MODEL, messages=_messages("sum"), max_tokens=400)
    assert reply.usage.completion_tokens_details.reasoning_tokens == expected
    _, _, chunks = _streamed(client, messages=_messages("sum"), stream_options={"include_usage": True})
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == expected
    response = client.responses.create(model=MODEL, input="sum", max_output_tokens=400)
    assert response.usage.output_tokens_details.reasoning_tokens == expected
    events = list(client.responses.create(model=MODEL, input="sum", max_output_tokens=400, stream=True))
    assert events[-1].response.usage.output_tokens_details.reasoning_tokens == expected
    off = client.chat.completions.create(
        model=MODEL,
        messages=_messages("sum"),
        max_tokens=400,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    assert off.usage.completion_tokens_details is None  # no format in force: nothing told apart


def test_a_thinking_budget_forces_the_reasoning_to_close_and_the_reply_answers(
    client: openai.OpenAI, engine: LLMEngine
) -> None:
    """vLLM's thinking_token_budget: the "long" reply never closes its reasoning; with a budget of 5 the sixth token
    on is Qwen3's ``</think>`` (forced a token at a time through the mask), and the script's own tokens follow it
    as the answer. Each of n samples is forced on its own."""
    tok = engine.tokenizer
    ids = tok.encode(REPLIES["long"], add_special_tokens=False)
    end = tok.encode("</think>", add_special_tokens=False)
    budget = {"thinking_token_budget": 5}
    reply = client.chat.completions.create(model=MODEL, messages=_messages("long"), max_tokens=400, extra_body=budget)
    message = reply.choices[0].message
    assert message.model_extra["reasoning_content"] == tok.decode(ids[:5])
    assert message.content == tok.decode(ids[5 + len(end) :])  # the script goes on from its own position, to EOS
    assert reply.usage.completion_tokens_details.reasoning_tokens == 5 + len(end)
    reasoning, content, _ = _streamed(client, messages=_messages("long"), extra_body=budget)
    assert (reasoning, content) == (message.model_extra["reasoning_content"], message.content)
    several = client.chat.completions.create(
        model=MODEL, messages=_messages("long"), max_tokens=400, n=2, extra_body=budget
    )
    assert [c.message.content for c in several.choices] == [message.content] * 2
    closed = client.chat.completions.create(  # a reasoning that closes within its budget is left alone
        model=MODEL, messages=_messages("sum"), max_tokens=400, extra_body={"thinking_token_budget": 100}
    )
    assert (closed.choices[0].message.model_extra["reasoning_content"], closed.choices[0].message.content) == (
        "Two and two.",
        "\n\nFour.",
    )
    unlimited = client.chat.completions.create(
        model=MODEL, messages=_messages("long"), max_tokens=5, extra_body={"thinking_token_budget": -1}
    )
    assert unlimited.choices[0].message.content is None  # -1: no budget


@pytest.mark.parametrize(
    "parser, kwargs, message",
    [
        (None, {}, "served without a reasoning_parser"),
        ("qwen3", {"enable_thinking": False}, "has its thinking switched off"),
        ("openai_gptoss", {}, "ends reasoning by opening a final message"),
    ],
)
def test_a_thinking_budget_without_a_reasoning_to_budget_is_refused(parser, kwargs, message: str) -> None:
    body = ChatCompletionRequest.model_validate(
        {"messages": _messages("sum"), "thinking_token_budget": 5, "chat_template_kwargs": kwargs}
    )
    with pytest.raises(APIError) as refused:
        ReplyPlan.of(body, ServerConfig(), parser)
    assert refused.value.param == "thinking_token_budget" and message in refused.value.message

"""gpt-oss's harmony replies: headers read as openai-harmony reads them, the ``openai_gptoss`` reasoning format
(analysis is reasoning; final messages and preambles are content) and the ``openai`` tool parser, whole and streamed
at any chunking, the gate a grammar waits behind, and the server setting that pairs the two parsers."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from jllm.config import ConfigError, ServerConfig
from jllm.harmony import Header, read_header
from jllm.reasoning_parsers import HarmonyFormat, ReasoningGate, reasoning_format
from jllm.tool_calls import ToolCallStream, make_parser, parse_tool_calls

GPT_OSS = reasoning_format("openai_gptoss")
assert isinstance(GPT_OSS, HarmonyFormat)
WITH_CALLS = dataclasses.replace(GPT_OSS, calls=True)
THOUGHT = "User asks for the weather. Need to call get_weather."
ANALYSIS = f"<|channel|>analysis<|message|>{THOUGHT}<|end|>"
PREAMBLE = "<|start|>assistant<|channel|>commentary<|message|>Let me check.<|end|>"
CALL = (
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
    '{"city": "Paris", "days": [1, 2]}<|call|>'
)
SECOND_CALL = '<|start|>assistant to=functions.get_time<|channel|>commentary json<|message|>{"zone": "CET"}<|call|>'
FINAL = "<|start|>assistant<|channel|>final<|message|>It is sunny in Paris.<|return|>"
BROWSE = '<|start|>assistant<|channel|>analysis to=browser.search<|message|>{"query": "Paris"}<|call|>'


@pytest.mark.parametrize(
    ("text", "header"),
    [
        ("<|channel|>analysis", Header("analysis")),
        ("<|start|>assistant<|channel|>final", Header("final")),
        ("<|channel|>commentary to=functions.f <|constrain|>json", Header("commentary", "functions.f", "json")),
        ("<|start|>assistant to=functions.f<|channel|>commentary json", Header("commentary", "functions.f", "json")),
        ("<|channel|>commentary to=functions.f<|constrain|>json", Header("commentary", "functions.f", "json")),
        ("<|channel|>analysis to=python code", Header("analysis", "python", "code")),
        ("<|channel|>commentary to=functions.f", Header("commentary", "functions.f")),
    ],
)
def test_a_header_reads_as_openai_harmony_reads_it(text: str, header: Header) -> None:
    assert read_header(text) == header


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (ANALYSIS + FINAL, (THOUGHT, "It is sunny in Paris.")),
        ("<|channel|>final<|message|>Hi.", (None, "Hi.")),  # stop token left out of the text
        (ANALYSIS[:40], ("User asks ", None)),  # cut short while reasoning: all reasoning
        ("<|channel|>analysis<|message|>A<|end|><|start|>assistant<|channel|>analysis<|message|>B", ("A\nB", None)),
        (ANALYSIS + PREAMBLE + FINAL, (THOUGHT, "Let me check.\nIt is sunny in Paris.")),  # preambles: content
        (ANALYSIS + BROWSE, (THOUGHT + '\n{"query": "Paris"}', None)),  # a built-in tool's call: reasoning
        (ANALYSIS + CALL, (THOUGHT, '{"city": "Paris", "days": [1, 2]}')),  # no tool parser: vLLM's content
        ("", (None, None)),
    ],
)
def test_openai_gptoss_reads_analysis_as_reasoning_and_final_and_preambles_as_content(
    text: str, expected: tuple[str | None, str | None]
) -> None:
    assert GPT_OSS.split(text) == expected


def _streamed(fmt: HarmonyFormat, pieces: list[str]) -> tuple[str | None, str | None]:
    stream, reasoning, content = fmt.stream(), "", ""
    for piece in pieces:
        r, c = stream.feed(piece)
        reasoning, content = reasoning + r, content + c
    r, c = stream.finish()
    return (reasoning + r) or None, (content + c) or None


def _chunks(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 12)))) if len(text) > 1 else []
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def test_any_chunking_streams_to_the_whole_split() -> None:
    rng = random.Random(0)
    messages = [ANALYSIS, PREAMBLE, CALL, SECOND_CALL, FINAL, BROWSE, "<|start|>", "<|", "<|end|>", "text", "\n"]
    for _ in range(300):
        text = "".join(rng.choice(messages) for _ in range(rng.randint(0, 6)))
        text = text[: rng.randint(0, len(text))]  # cut anywhere, as max_tokens does
        for fmt in (GPT_OSS, WITH_CALLS):
            assert _streamed(fmt, _chunks(text, rng)) == fmt.split(text), text
            assert _streamed(fmt, list(text)) == fmt.split(text), text


def _answer_calls(text: str, pieces: list[str]) -> tuple[str, list[tuple[str, str]], int]:
    """The content and calls a client assembles from ``pieces`` through both parsers, and how many argument
    fragments came."""
    reasoning_stream, calls_stream = WITH_CALLS.stream(), ToolCallStream(make_parser("openai"))
    content, names, arguments, fragments = "", {}, {}, 0
    for piece in [*pieces, None]:
        _, answer = reasoning_stream.feed(piece) if piece is not None else reasoning_stream.finish()
        more, parts = calls_stream.feed(answer) if piece is not None else calls_stream.finish()
        content += more
        for index, call, fragment in parts:
            if call is not None:
                names[index] = call.name
            elif fragment:
                arguments[index], fragments = arguments.get(index, "") + fragment, fragments + 1
    return content, [(names[i], arguments.get(i, "")) for i in sorted(names)], fragments


def test_calls_stream_their_arguments_as_written_and_equal_the_whole_reply() -> None:
    text = ANALYSIS + PREAMBLE + CALL + SECOND_CALL
    reasoning, answer = WITH_CALLS.split(text)
    content, calls = parse_tool_calls(make_parser("openai"), answer or "")
    assert reasoning == THOUGHT and content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris", "days": [1, 2]}),
        ("get_time", {"zone": "CET"}),
    ]
    whole = [(c.name, c.arguments) for c in calls]
    streamed_content, streamed, fragments = _answer_calls(text, list(text))
    assert (streamed_content, streamed) == ("Let me check.", whole)
    assert fragments > 2  # char by char: each call's arguments in pieces, not whole
    rng = random.Random(1)
    for _ in range(50):
        assert _answer_calls(text, _chunks(text, rng))[:2] == ("Let me check.", whole)


def test_a_call_cut_short_is_no_call_and_shows_no_markers() -> None:
    text = ANALYSIS + PREAMBLE + CALL[:-20]
    _, answer = WITH_CALLS.split(text)
    assert parse_tool_calls(make_parser("openai"), answer or "") == ("Let me check.", [])
    content, _, _ = _answer_calls(text, list(text))
    assert content == "Let me check."


def test_the_gate_opens_on_the_final_messages_header_and_counts_the_analysis_tokens() -> None:
    tokens = ["<|channel|>", "analysis", "<|message|>", "Think", "ing.", "<|end|>", "<|start|>", "assistant"]
    tokens += ["<|channel|>", "commentary", "<|message|>", "Hi", "<|end|>", "<|start|>", "assistant", "<|channel|>"]
    tokens += ["final", "<|message|>", "{", "}"]
    gate = ReasoningGate(GPT_OSS, lambda token_id: tokens[token_id].encode())
    opened = [gate.opens_after(i) for i in range(len(tokens))]
    assert opened.index(True) == tokens.index("final") + 1  # the grammar holds the final message's body
    assert gate.tokens == 6  # the analysis message's header, body and end; not the preamble's, not the final's
    twin = ReasoningGate(GPT_OSS, lambda token_id: tokens[token_id].encode())
    twin.count(range(3))
    assert twin.fork().count(range(3, len(tokens))) == 6


def test_the_openai_tool_parser_needs_the_openai_gptoss_reasoning_parser() -> None:
    with pytest.raises(ConfigError, match="tool_call_parser.*openai_gptoss"):
        ServerConfig(tool_call_parser="openai", enable_auto_tool_choice=True).validate()
    ServerConfig(tool_call_parser="openai", enable_auto_tool_choice=True, reasoning_parser="openai_gptoss").validate()

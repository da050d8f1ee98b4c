"""Reasoning told apart from the answer (jllm.reasoning_parsers): each format whole, and streamed in random chunkings
to the same parts."""

from __future__ import annotations

import random

import pytest

from jllm.reasoning_parsers import (
    REASONING_PARSERS,
    ReasoningFormat,
    ReasoningGate,
    ReasoningStream,
    reasoning_format,
)

R1 = reasoning_format("deepseek_r1")
GRANITE = reasoning_format("granite", {"thinking": True})

# (parser, chat_template_kwargs, output, (reasoning, content))
CASES = [
    ("deepseek_r1", None, "<think>Add them.</think>\n\n4", ("Add them.", "\n\n4")),
    ("deepseek_r1", None, "Add them.\n</think>\n\n4", ("Add them.\n", "\n\n4")),  # <think> was in the prompt
    ("deepseek_r1", None, "Still thinking", ("Still thinking", None)),  # cut short: all reasoning
    ("deepseek_r1", None, "\n<think></think>4", (None, "4")),
    ("deepseek_r1", None, "a < b </thin k> </think>x</think>y", ("a < b </thin k> ", "x</think>y")),
    ("qwen3", None, "<think>\nhmm\n</think>\n\nHi", ("\nhmm\n", "\n\nHi")),
    ("qwen3", None, "hmm</think>Hi", ("hmm", "Hi")),
    ("qwen3", {"enable_thinking": False}, "Hi </think> there", (None, "Hi </think> there")),
    ("qwen3", None, "plan<tool_call>\n<function=f>", ("plan", "<tool_call>\n<function=f>")),  # a call, unclosed
    ("qwen3", None, "may use <tool_call> later</think>ok", ("may use <tool_call> later", "ok")),
    ("deepseek_v3", {"thinking": True}, "plan</think>answer", ("plan", "answer")),
    ("deepseek_v3", None, "plan</think>answer", (None, "plan</think>answer")),
    ("glm45", None, "<think>plan</think>answer", ("plan", "answer")),
    ("glm45", None, "answer</think>", (None, "answer</think>")),  # no <think>: no reasoning
    ("glm45", {"enable_thinking": False}, "<think>x</think>y", (None, "<think>x</think>y")),
    ("granite", {"thinking": True}, "Here is my thought process: a\nHere is my response: b", (" a\n", " b")),
    ("granite", {"thinking": True}, "Here's my thought process:a Here is my resp", ("a Here is my resp", None)),
    ("granite", {"thinking": True}, "Here is the answer: 4", (None, "Here is the answer: 4")),
    (
        "granite",
        None,
        "Here is my thought process: a Here is my response: b",
        (None, "Here is my thought process: a Here is my response: b"),
    ),
    ("mistral", None, "[THINK]x[/THINK]y", ("x", "y")),
    ("mistral", None, "y", (None, "y")),
    ("seed_oss", None, "<seed:think>x</seed:think>y", ("x", "y")),
    ("seed_oss", None, "x</seed:think>y", ("x", "y")),
    ("gemma4", {"enable_thinking": True}, "<|channel>thought\nPlan it.<channel|>Answer.", ("Plan it.", "Answer.")),
    ("gemma4", {"enable_thinking": True}, "<|channel>Plan<channel|>A", ("Plan", "A")),  # no channel name
    ("gemma4", {"enable_thinking": True}, "<|channel>thoughtful<channel|>A", ("thoughtful", "A")),
    ("gemma4", {"enable_thinking": True}, "<|channel>thought\nStill", ("Still", None)),  # cut short
    ("gemma4", {"enable_thinking": True}, "Answer only", (None, "Answer only")),
    ("gemma4", None, "<|channel>thought\nx<channel|>y", (None, "<|channel>thought\nx<channel|>y")),  # off
    ("minimax_m2", None, "Plan.</think>\n\nAnswer", ("Plan.", "\n\nAnswer")),  # the template opened <think>
    ("minimax_m2", None, "<think>Plan.</think>A", ("Plan.", "A")),
    ("olmo3", None, "<think>Plan.</think>Answer", ("Plan.", "Answer")),
    ("olmo3", None, "Plan</think>A", ("Plan", "A")),
    ("olmo3", None, "Still thinking", ("Still thinking", None)),
    ("ernie45", None, "abc\n</think>\n\n<response>\ndef\n</response>\n", ("abc\n", "\ndef\n")),  # vLLM's
    ("ernie45", None, "abc\n</think>\ndef", ("abc\n", "\ndef")),
    ("ernie45", None, "<think>abc</think> <response>cut sh", ("abc", "cut sh")),
    ("ernie45", None, "abc</think>\n\n<tool_call>\n{}", ("abc", "\n\n<tool_call>\n{}")),
    ("ernie45", None, "abc</think><response></response>", ("abc", None)),
    ("ernie45", None, "abc</think>The <response> tag", ("abc", "The <response> tag")),
]


def _streamed(fmt: ReasoningFormat, text: str, rng: random.Random) -> tuple[str | None, str | None]:
    stream, reasoning, content, pos = fmt.stream(), "", "", 0
    while pos < len(text):
        step = rng.randint(1, 6)
        r, c = stream.feed(text[pos : pos + step])
        reasoning, content, pos = reasoning + r, content + c, pos + step
    r, c = stream.finish()
    return (reasoning + r) or None, (content + c) or None


@pytest.mark.parametrize(("name", "kwargs", "text", "expected"), CASES)
def test_each_format_splits_reasoning_from_content_whole_and_streamed(
    name: str, kwargs: dict | None, text: str, expected: tuple[str | None, str | None]
) -> None:
    fmt = reasoning_format(name, kwargs)
    if fmt is None:  # thinking switched off: the reply is all content
        assert expected == (None, text)
        return
    assert fmt.split(text) == expected
    rng = random.Random(text)
    for _ in range(20):
        assert _streamed(fmt, text, rng) == expected


def test_a_partial_end_marker_is_held_back_until_it_tells() -> None:
    assert R1 is not None
    stream = ReasoningStream(R1)
    assert stream.feed("so 1 </th") == ("so 1 ", "")
    assert not stream.ended
    assert stream.feed("ink>\n4") == ("", "\n4")
    assert stream.ended and stream.finish() == ("", "")
    other = ReasoningStream(R1)
    assert other.feed("a </th") == ("a ", "")
    assert other.feed("em") == ("</them", "")  # not the marker after all: reasoning


def test_gemma4s_channel_name_split_across_tokens_is_held_until_it_tells() -> None:
    """Gemma 4 opens ``<|channel>`` and names it ``thought``: the name stays out of the reasoning however the
    tokens cut it, and a word that only begins like it is reasoning."""
    gemma = reasoning_format("gemma4", {"enable_thinking": True})
    assert gemma is not None
    stream = gemma.stream()
    assert [stream.feed(t) for t in ["<|channel>", "thought", "\nPlan", " it<chan", "nel|>Hi"]] == [
        ("", ""),
        ("", ""),
        ("Plan", ""),
        (" it", ""),
        ("", "Hi"),
    ]
    other = gemma.stream()
    assert other.feed("<|channel>thou") == ("", "") and other.feed("ghtful") == ("thoughtful", "")


def test_an_opening_marker_and_leading_whitespace_are_held_until_known() -> None:
    assert GRANITE is not None
    stream = ReasoningStream(GRANITE)
    assert stream.feed("\nHere is my") == ("", "")
    assert stream.feed(" thought process: x") == (" x", "")
    plain = ReasoningStream(GRANITE)
    assert plain.feed("Here is") == ("", "")
    assert plain.feed(" the answer") == ("", "Here is the answer")
    assert plain.finish() == ("", "")


def test_random_texts_stream_to_their_whole_split() -> None:
    rng = random.Random(0)
    pieces = ["<think>", "</think>", "<th", "</", "ink>", "a", " ", "\n", "Here is my response:", "[THINK]", "[/THINK]"]
    pieces += ["<tool_call>", "<function=", "<|channel>", "thought\n", "thought", "<channel|>", "<|chan"]
    pieces += ["<response>", "</response>", "</resp", "<resp"]
    formats = [reasoning_format(n, {"enable_thinking": True, "thinking": True}) for n in REASONING_PARSERS]
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        for fmt in formats:
            assert fmt is not None
            assert _streamed(fmt, text, rng) == fmt.split(text), (fmt.name, text)


def test_an_unknown_parser_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"reasoning_parser must be one of deepseek_r1, deepseek_v3, qwen3.*'r1'"):
        reasoning_format("r1")


def test_the_gate_opens_on_the_token_that_ends_the_reasoning() -> None:
    assert R1 is not None
    pieces = ["Hmm", " </", "think", ">", "{", "}"]
    gate = ReasoningGate(R1, lambda token_id: pieces[token_id].encode())
    assert [gate.opens_after(i) for i in range(3)] == [False, False, False]
    twin = gate.fork()
    assert gate.opens_after(3) and twin.opens_after(3)  # a fork carries the text read so far
    assert gate.tokens == twin.tokens == 4  # the one that ends the reasoning included
    glm = reasoning_format("glm45")
    assert glm is not None
    assert ReasoningGate(glm, lambda token_id: pieces[token_id].encode()).count([4, 5]) == 0  # no reasoning at all

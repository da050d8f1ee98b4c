"""Reasoning in generated text: a thinking model's reasoning told apart from its answer, by vLLM's
``--reasoning-parser`` names, whole (``ReasoningFormat.split``) or as a stream (``ReasoningStream``).

Every format here is a pair of markers read in the text (so a marker that is several tokens reads the same as one
special token): the reasoning runs from an opening marker at the output's start (after whitespace) to the first
closing marker, and the answer is what follows. Formats whose chat template opens the reasoning in the prompt
(``implicit``: DeepSeek-R1's distills, Qwen3's thinking models) read reasoning from the first character even without
the opening marker. Output that never closes its reasoning (cut short by ``max_tokens``) is all reasoning, as vLLM
returns it. A family that wraps its answer in tags (ERNIE 4.5's ``<response>``) has them left out (``wraps``). A
request whose template switch turns thinking off (``chat_template_kwargs``: Qwen3's and GLM-4.5's
``enable_thinking: false``, DeepSeek-V3's ``thinking``, Granite's ``thinking`` and Gemma 4's ``enable_thinking`` left
unset) reads no reasoning at all: its reply is parsed as without a reasoning parser.

``ReasoningGate`` holds a structured-output grammar back until the reasoning ends (vLLM constrains only the answer).

Plain Python: the server renders what this finds.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from jllm.harmony import CALL, CHANNEL, CONSTRAIN, MESSAGE, START, Header, MessageReader, Piece
from jllm.markers import first_marker, held_back


@dataclass(frozen=True)
class ReasoningFormat:
    """One family's markers, and how its chat template switches thinking on (``switch``: the template variable)."""

    name: str
    starts: tuple[str, ...]  # markers that open the reasoning, at the output's start (the longest that matches first)
    ends: tuple[str, ...]  # markers that close it
    implicit: bool  # reasoning from the first character even without an opening marker (the template opened it)
    switch: str | None = None  # the chat_template_kwargs key that turns thinking on or off, if the family has one
    keep_special_tokens: bool = False  # the markers are special tokens, which decoding would otherwise drop
    answers: tuple[str, ...] = ()  # markers that end the reasoning unclosed and begin the answer (kept in it)
    wraps: tuple[str, str] | None = None  # tags the family may put around its answer (left out; after them, nothing)

    def close(self, text: str) -> tuple[int, int] | None:
        """Where the first closing marker (or answer marker) in ``text`` begins, and where the answer after it does."""
        found = first_marker(text, self.ends + self.answers)
        if found is None:
            return None
        at, marker = found
        return at, at + (0 if marker in self.answers else len(marker))

    def split(self, text: str) -> tuple[str | None, str | None]:
        """A whole reply as (reasoning, content); None for an empty part."""
        body = text.lstrip()
        start = next((m for m in self.starts if body.startswith(m)), None)
        if start is not None:
            body = body[len(start) :]
        elif self.implicit:
            body = text
        else:
            return None, text or None
        found = self.close(body)
        if found is None:
            return body or None, None
        at, answer = found
        return body[:at] or None, unwrap(body[answer:], self.wraps) or None

    def stream(self) -> ReasoningStream | HarmonyStream:
        """A stream of one choice's output in this format."""
        return ReasoningStream(self)


class ReasoningStream:
    """One choice's output as it streams: each delta's (reasoning, content), holding back text that may begin a
    marker until it tells; the parts joined equal ``ReasoningFormat.split`` of the whole text."""

    def __init__(self, fmt: ReasoningFormat) -> None:
        self.format = fmt
        self._rest = ""  # the text not sent yet (held back): a stream keeps no more, however long the reply
        self._state = "start"  # then "reasoning", then "content"
        self._answer = AnswerStream(fmt.wraps) if fmt.wraps is not None else None

    @property
    def ended(self) -> bool:
        """Whether the reasoning is over (its closing marker seen, or the reply had none)."""
        return self._state == "content"

    @property
    def reasoning(self) -> bool:
        """Whether the reply is inside its reasoning: opened by its marker, or by the template (``implicit``)."""
        return self._state == "reasoning" or (self._state == "start" and self.format.implicit)

    def count_token(self, text: str) -> int:
        """Feeds one token's text: 1 if it is the reasoning's (a token that ends the reasoning counts too), else 0."""
        reasoning = self._state == "reasoning"
        self.feed(text)
        return int(reasoning or not self.ended)

    def feed(self, delta: str) -> tuple[str, str]:
        """The reasoning and content ``delta`` settles."""
        self._rest += delta
        return self._advance(final=False)

    def finish(self) -> tuple[str, str]:
        """At the end: what was held back, as the whole text reads it."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> tuple[str, str]:
        fmt, reasoning = self.format, ""
        if self._state == "start":
            body = self._rest.lstrip()
            if not final and any(len(m) > len(body) and m.startswith(body) for m in fmt.starts):
                return "", ""  # whitespace, or the start of a marker (perhaps a longer one): not yet known
            start = next((m for m in fmt.starts if body.startswith(m)), None)
            if start is not None:
                self._rest, self._state = body[len(start) :], "reasoning"
            else:
                self._state = "reasoning" if fmt.implicit else "content"
        if self._state == "reasoning":
            found = fmt.close(self._rest)
            if found is None:
                size = len(self._rest) - (0 if final else held_back(self._rest, fmt.ends + fmt.answers))
                reasoning, self._rest = self._rest[:size], self._rest[size:]
                return reasoning, ""
            at, answer = found
            reasoning, self._rest, self._state = self._rest[:at], self._rest[answer:], "content"
        content, self._rest = self._rest, ""
        return reasoning, content if self._answer is None else self._answer.feed(content, final)


def unwrap(answer: str, wraps: tuple[str, str] | None) -> str:
    """The answer inside ``wraps`` where it opens with the first (after whitespace); else the answer as it is."""
    body = answer.lstrip()
    if wraps is None or not body.startswith(wraps[0]):
        return answer
    return body[len(wraps[0]) :].partition(wraps[1])[0]


class AnswerStream:
    """An answer as it streams, read as ``unwrap`` reads it whole: whitespace and what may begin the opening tag held
    until they tell, then the text inside, what may begin the closing tag held back, and nothing after it."""

    def __init__(self, wraps: tuple[str, str]) -> None:
        self.wraps = wraps
        self._rest = ""
        self._state = "start"  # then "inside" or "plain"; "after" once the closing tag has come

    def feed(self, delta: str, final: bool) -> str:
        """The content ``delta`` settles (``final``: the reply has ended)."""
        opening, closing = self.wraps
        self._rest += delta
        if self._state == "start":
            body = self._rest.lstrip()
            if not final and opening.startswith(body):
                return ""
            self._state = "inside" if body.startswith(opening) else "plain"
            self._rest = body[len(opening) :] if self._state == "inside" else self._rest
        out, self._rest = ("", "") if self._state == "after" else (self._rest, "")
        if self._state == "inside":
            at = out.find(closing)
            if at >= 0:
                out, self._state = out[:at], "after"
            elif not final:
                keep = held_back(out, (closing,))
                out, self._rest = out[: len(out) - keep], out[len(out) - keep :]
        return out


@dataclass(frozen=True)
class HarmonyFormat(ReasoningFormat):
    """gpt-oss's harmony messages (``openai_gptoss``, read by ``jllm.harmony``), as vLLM's harmony path reads them:
    analysis messages (and calls to built-in tools) are the reasoning; final messages and commentary messages without
    a recipient (preambles, shown to the user) are the content; the messages of one part are joined by a newline. A
    call to a request's tool (``to=functions.NAME``) is content too: its arguments, as vLLM's reply without a tool
    parser has them, or, with ``calls`` (the ``openai`` tool parser reads them), the call as a harmony message.
    Its reasoning ends where a final message begins: a grammar holds the final message's body alone."""

    calls: bool = False

    def split(self, text: str) -> tuple[str | None, str | None]:
        stream = self.stream()
        reasoning, content = stream.feed(text)
        more_reasoning, more_content = stream.finish()
        return (reasoning + more_reasoning) or None, (content + more_content) or None

    def stream(self) -> HarmonyStream:
        return HarmonyStream(self)


def _part(header: Header) -> str:
    """Which part of the reply a message is: "call" (to a request's tool), "content" or "reasoning"."""
    if header.function is not None:
        return "call"
    if header.channel == "final" or (header.channel != "analysis" and header.recipient is None):
        return "content"
    return "reasoning"


class HarmonyStream:
    """One choice's harmony messages as they stream: each delta's (reasoning, content), the parts joined equal to
    ``HarmonyFormat.split`` of the whole text; ``ended`` once a final message's body begins."""

    def __init__(self, fmt: HarmonyFormat) -> None:
        self.format = fmt
        self.ended = False
        self._reader = MessageReader()
        self._opened = 0  # messages whose first piece was read
        self._said: dict[str, int] = {}  # part -> the last message that added to it (the next one adds a newline)
        self._header_tokens = 0  # tokens of the header being read: the reasoning's if it opens an analysis message

    def feed(self, delta: str) -> tuple[str, str]:
        """The reasoning and content ``delta`` settles."""
        return self._parts(self._reader.feed(delta))

    def finish(self) -> tuple[str, str]:
        """At the end: what was held back, as the whole text reads it."""
        return self._parts(self._reader.finish())

    def count_token(self, text: str) -> int:
        """Feeds one token's text: how many tokens of the reasoning it settles (a message's header tokens count once
        the header says it is reasoning; a body's tokens and its end marker as they come)."""
        reading, opened = self._reader.reading, self._reader.count
        pieces = self._reader.feed(text)
        self._parts(pieces)
        if reading is not None:
            return int(_part(reading) == "reasoning")
        self._header_tokens += 1
        headers = [header for index, header, _, _ in pieces if index >= opened]
        if not headers:
            return 0
        count, self._header_tokens = self._header_tokens, 0
        return count if _part(headers[0]) == "reasoning" else 0

    def _parts(self, pieces: list[Piece]) -> tuple[str, str]:
        out = {"reasoning": "", "content": ""}
        for index, header, text, ended in pieces:
            part, opening = _part(header), index >= self._opened
            self._opened = max(self._opened, index + 1)
            if part == "call" and self.format.calls:
                kind = f" {CONSTRAIN}{header.content_type}" if header.content_type else ""
                head = f"{START}assistant{CHANNEL}{header.channel} to={header.recipient}{kind}{MESSAGE}"
                out["content"] += (head if opening else "") + text + (CALL if ended else "")
                continue
            part = "content" if part == "call" else part
            self.ended = self.ended or (opening and header.channel == "final" and part == "content")
            if text:
                if self._said.get(part, index) != index:
                    text = "\n" + text
                self._said[part] = index
                out[part] += text
        return out["reasoning"], out["content"]


class ReasoningGate:
    """Token by token, whether the reasoning is over: a structured-output grammar holds from the next token on
    (``structured_output.GrammarGate``); and how many tokens the reasoning took (``tokens``: vLLM's
    ``reasoning_tokens``, its markers included). Reads each token's bytes (``Tokenizer.token_bytes``), special ones
    too."""

    def __init__(self, fmt: ReasoningFormat, token_bytes: Callable[[int], bytes]) -> None:
        self.format = fmt
        self.tokens = 0
        self._token_bytes = token_bytes
        self._stream = fmt.stream()

    @property
    def ended(self) -> bool:
        """Whether the reasoning is over (a grammar's gate opens, a thinking budget has nothing left to force)."""
        return self._stream.ended

    @property
    def reasoning(self) -> bool:
        """Whether the reply is inside its reasoning now (a thinking budget forces its end only there); harmony's
        messages are never budgeted."""
        return isinstance(self._stream, ReasoningStream) and self._stream.reasoning

    def opens_after(self, token_id: int) -> bool:
        if not self._stream.ended:  # markers are whole characters
            self.tokens += self._stream.count_token(self._token_bytes(token_id).decode(errors="replace"))
        return self._stream.ended

    def count(self, token_ids: Iterable[int]) -> int:
        """Reads ``token_ids`` (the reply's next ones); the reasoning's tokens so far."""
        for token_id in token_ids:
            if self.opens_after(token_id):
                break
        return self.tokens

    def fork(self) -> ReasoningGate:
        twin = copy.copy(self)
        twin._stream = copy.deepcopy(self._stream)  # its state is strings and small records
        return twin


def _think(
    name: str, implicit: bool, switch: str | None = None, answers: tuple[str, ...] = ()
) -> Callable[[dict[str, Any]], ReasoningFormat | None]:
    """``<think>``/``</think>`` families: the format, or None where the request's template switch (on unless sent
    false) turns thinking off."""
    fmt = ReasoningFormat(name, ("<think>",), ("</think>",), implicit, switch, answers=answers)
    return lambda kwargs: fmt if switch is None or bool(kwargs.get(switch, True)) else None


_QWEN3_CALLS = ("<tool_call>\n<function=", "<tool_call><function=")
_GRANITE = ReasoningFormat(
    "granite",
    ("Here is my thought process:", "Here's my thought process:"),  # "Here's": seen from quantized Granite models
    ("Here is my response:", "Here's my response:"),
    implicit=False,
    switch="thinking",
)
_MISTRAL = ReasoningFormat("mistral", ("[THINK]",), ("[/THINK]",), implicit=False, keep_special_tokens=True)
_SEED_OSS = ReasoningFormat("seed_oss", ("<seed:think>",), ("</seed:think>",), implicit=True)
_ERNIE45 = ReasoningFormat(
    "ernie45", ("<think>",), ("</think>",), True, keep_special_tokens=True, wraps=("<response>", "</response>")
)
# Gemma 4 opens a channel and names it ("thought\n", left out of the reasoning, as vLLM leaves it out)
_GEMMA4 = ReasoningFormat(
    "gemma4", ("<|channel>thought\n", "<|channel>"), ("<channel|>",), False, "enable_thinking", keep_special_tokens=True
)
# the template opens every reply's first header: a grammar can wait for the final message (``implicit``)
_GPT_OSS = HarmonyFormat("openai_gptoss", (), (), implicit=True, keep_special_tokens=True)


def _deepseek_v3(kwargs: dict[str, Any]) -> ReasoningFormat | None:
    """DeepSeek-V3.1's template thinks with ``thinking`` (or ``enable_thinking``) true, and only then (vLLM's)."""
    on = bool(kwargs.get("thinking", False)) or bool(kwargs.get("enable_thinking", False))
    return ReasoningFormat("deepseek_v3", ("<think>",), ("</think>",), True, "thinking") if on else None


_FORMATS: dict[str, Callable[[dict[str, Any]], ReasoningFormat | None]] = {
    "deepseek_r1": _think("deepseek_r1", implicit=True),
    "deepseek_v3": _deepseek_v3,
    # Qwen3.5 may call a tool from inside its thinking, unclosed: a qwen3_coder call ends the reasoning (vLLM's)
    "qwen3": _think("qwen3", implicit=True, switch="enable_thinking", answers=_QWEN3_CALLS),
    "glm45": _think("glm45", implicit=False, switch="enable_thinking"),
    "granite": lambda kwargs: _GRANITE if kwargs.get("thinking") else None,
    "mistral": lambda kwargs: _MISTRAL,
    "seed_oss": lambda kwargs: _SEED_OSS,
    # Gemma 4 thinks only with enable_thinking true (its template's default is off, the prompt then closes the channel)
    "gemma4": lambda kwargs: _GEMMA4 if kwargs.get("enable_thinking") else None,
    # MiniMax-M2's template opens <think> in the prompt: all before </think> is reasoning
    "minimax_m2": _think("minimax_m2", implicit=True),
    # OLMo 3 writes <think> as text, or its template opened it
    "olmo3": _think("olmo3", implicit=True),
    # ERNIE 4.5's template opens <think>; its answer may come as <response>...</response>
    "ernie45": lambda kwargs: _ERNIE45,
    "openai_gptoss": lambda kwargs: _GPT_OSS,
}
REASONING_PARSERS = tuple(_FORMATS)


def reasoning_format(name: str, chat_template_kwargs: dict[str, Any] | None = None) -> ReasoningFormat | None:
    """The named parser's format for one request (None: its template switch turned thinking off)."""
    if name not in _FORMATS:
        raise ValueError(f"reasoning_parser must be one of {', '.join(REASONING_PARSERS)}, got {name!r}")
    return _FORMATS[name](chat_template_kwargs or {})

"""Tool calls in generated text: the formats model families emit (``jllm.tool_parsers``, chosen by vLLM's
``--tool-call-parser`` names) parsed into OpenAI's calls, whole or as a stream, and the JSON schemas that force a
call through structured output.

A forced call (``tool_choice`` "required" or a named function) is generated under a JSON schema instead
(``forced_call_schema``): vLLM's layout, the named function's arguments alone, or a list of ``{"name",
"parameters"}`` objects, whose arguments ``ForcedCallStream`` streams as they are generated; cut short by
``max_tokens``, the whole reply has the calls its stream sent (``cut_short_calls``). Output that does not parse as
the family's calls stays the message's content.

Plain Python: the server renders what this finds.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jllm.tool_parsers import PARSERS, make_parser
from jllm.tool_parsers.base import ToolCall, ToolParser, json_call, json_values, value_end

__all__ = ["PARSERS", "CallPart", "ForcedCallStream", "ToolCall", "ToolCallStream", "ToolParser", "make_parser"]


def parse_tool_calls(parser: ToolParser, text: str) -> tuple[str | None, list[ToolCall]]:
    """The whole output: its content (text before the calls; None when empty) and its calls. Output that is not
    the family's calls is all content, as vLLM returns it; but output that ends inside a call after calls began
    (``cut_short_inside``) has the calls its stream sent: the complete ones and the one cut off, its arguments as
    generated so far (vLLM's hermes parser returns such a reply as content, though its stream sent the calls)."""
    start = parser.starts_calls(text)
    calls = None if start is None else parser.calls(text[start:], final=True)
    if not calls and start is not None and cut_short_inside(parser, text):
        calls = _begun(parser, text[start:])
    if not calls:
        return text if start is None else (text[:start] + parser.as_content(text[start:])) or None, []
    return text[:start].strip() or None, calls


def cut_short_inside(parser: ToolParser, text: str) -> bool:
    """Whether the whole output ended inside a call after calls had begun (max_tokens, a stop string): its last
    call is unfinished, so the reply keeps the finish reason it ended with rather than "tool_calls"."""
    start = parser.starts_calls(text)
    if start is None or parser.calls(text[start:], final=True) or not parser.cut_short(text[start:]):
        return False
    return bool(_begun(parser, text[start:]))


def _begun(parser: ToolParser, text: str) -> list[ToolCall]:
    """The calls a stream of ``text`` (from where the calls start) has begun: the complete ones and the one being
    generated, its arguments as far as they are settled."""
    partial = parser.partial(text)
    return (parser.calls(text, final=False) or []) + ([] if partial is None else [ToolCall(*partial)])


CallPart = tuple[int, ToolCall | None, str]  # (call index, the call when it begins here, more of its arguments)


class ToolCallStream:
    """One choice's output as it streams: content deltas until calls start (holding back what may begin the
    marker), then each call as parts: its id and name, then its arguments, whole once the call is complete, or
    piece by piece where the format says how much of an unfinished call is settled (``ToolParser.partial``)."""

    def __init__(self, parser: ToolParser) -> None:
        self.parser = parser
        self.text = ""
        self._released = 0  # characters of text sent as content
        self._start: int | None = None  # where the calls begin
        self._sent = 0  # the parser's calls sent
        self._index = 0  # the next call's index in the stream
        self._begun: ToolCall | None = None  # the unfinished call whose id and name are sent
        self._arguments = ""  # its arguments sent
        self.broken = False  # at the end: calls had begun, but the text was not the family's calls after all
        self.cut_short = False  # at the end: calls had begun, and the text ended inside one (``cut_short_inside``)
        self.not_calls = False  # the parser said, mid-stream, that the text cannot be its calls (all content)

    def feed(self, delta: str) -> tuple[str, list[CallPart]]:
        """Content to send now, and the call parts ``delta`` settles."""
        self.text += delta
        if self._start is None:
            self._start = self.parser.starts_calls(self.text)
        if self._start is None:
            end = len(self.text) - self.parser.may_start(self.text)
            return self._release(end), []
        calls = None if self.not_calls else self.parser.calls(self.text[self._start :], final=False)
        if calls is None and not self.num_calls:  # the format says this cannot be its calls: content after all
            self.not_calls = True
            return self._release(len(self.text)), []
        content = self._release(self._start)
        parts = self._new(calls or [])
        partial = self.parser.partial(self.text[self._start :])
        return content, parts + (self._more(*partial) if partial is not None else [])

    def finish(self) -> tuple[str, list[CallPart]]:
        """At the end: the call parts not sent yet, or, when the text is not the family's calls after all, the rest
        of the text as content."""
        calls = None if self._start is None or self.not_calls else self.parser.calls(self.text[self._start :], True)
        if not calls and self.num_calls and self.parser.cut_short(self.text[self._start :]):
            self.cut_short = True  # the calls sent are the reply's, the last unfinished, as the whole reply reads it
            return self._release(self._start), []
        if not calls:  # all content, as the whole reply has it (calls begun stay unfinished: ``broken``)
            self.broken = self.num_calls > 0
            if self._start is None or self.not_calls:
                return self._release(len(self.text)), []
            content = self._release(self._start)
            self._released = len(self.text)
            return content + self.parser.as_content(self.text[self._start :]), []
        return "", self._new(calls)  # a call begun after these stays unfinished, as cut short

    @property
    def num_calls(self) -> int:
        return self._index + (self._begun is not None)

    def _release(self, end: int) -> str:
        out = self.text[self._released : max(end, self._released)]
        self._released += len(out)
        return out

    def _new(self, calls: list[ToolCall]) -> list[CallPart]:
        """Parts of the calls completed since the last: the rest of a begun call's arguments, or a call whole."""
        out: list[CallPart] = []
        for call in calls[self._sent :]:
            begun = self._begun
            if begun is not None and (begun.name != call.name or not call.arguments.startswith(self._arguments)):
                begun, self._index = None, self._index + 1  # the parser dropped it: it stays unfinished
            if begun is None:
                out += [(self._index, ToolCall(call.name, "", call.id), ""), (self._index, None, call.arguments)]
            elif len(call.arguments) > len(self._arguments):
                out.append((self._index, None, call.arguments[len(self._arguments) :]))
            self._begun, self._arguments, self._sent, self._index = None, "", self._sent + 1, self._index + 1
        return out

    def _more(self, name: str, arguments: str) -> list[CallPart]:
        """Parts of the unfinished call: its id and name once, then what its settled arguments add."""
        out: list[CallPart] = []
        if self._begun is None:
            self._begun = ToolCall(name, "")
            out.append((self._index, self._begun, ""))
        if len(arguments) > len(self._arguments) and arguments.startswith(self._arguments):
            out.append((self._index, None, arguments[len(self._arguments) :]))
            self._arguments = arguments
        return out


def forced_call_schema(tools: list[dict[str, Any]], name: str | None, parallel: bool) -> dict[str, Any]:
    """vLLM's schema for a forced call: the named function's parameters, or (``tool_choice`` "required") a list of
    one or more ``{"name", "parameters"}`` objects, one item only without ``parallel``."""
    functions = {t["function"]["name"]: t["function"].get("parameters") or {"type": "object"} for t in tools}
    if name is not None:
        return functions[name]
    item = {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": fn}, "parameters": params},
                "required": ["name", "parameters"],
                "additionalProperties": False,
            }
            for fn, params in functions.items()
        ]
    }
    schema: dict[str, Any] = {"type": "array", "items": item, "minItems": 1}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def forced_calls(text: str, name: str | None) -> list[ToolCall] | None:
    """The calls in output generated under ``forced_call_schema`` (None if it was cut short: not valid JSON)."""
    if name is not None:
        values, clean = json_values(text)
        return [ToolCall(name, text.strip())] if len(values) == 1 and clean else None  # as generated (and streamed)
    values, clean = json_values(text)
    if len(values) != 1 or not clean or not isinstance(values[0], list):
        return None
    calls = [json_call(v, "parameters") for v in values[0]]
    return None if any(c is None for c in calls) else calls  # type: ignore[return-value]


def cut_short_calls(text: str, name: str | None) -> tuple[str | None, list[ToolCall]]:
    """A forced call's output cut short by ``max_tokens`` (``forced_calls`` found none), read as its stream sent it:
    (content, calls). The named function's call with the arguments generated so far, as vLLM returns it whole and
    streamed; for "required" the calls ``ForcedCallStream`` had begun, the last with its partial arguments, or the
    text as content where none had begun."""
    if name is not None:
        return None, [ToolCall(name, text)]
    stream = ForcedCallStream()
    parts = stream.feed(text)
    content, _ = stream.finish()
    begun = [call for _, call, _ in parts if call is not None]
    arguments = ["".join(more for i, call, more in parts if i == index and call is None) for index in range(len(begun))]
    return content, [ToolCall(call.name, args, call.id) for call, args in zip(begun, arguments, strict=True)]


_FORCED_ITEM = re.compile(r'\s*[\[,]\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"parameters"\s*:\s*(?=\S)')
_ITEM_END = re.compile(r"\s*\}")


class ForcedCallStream:
    """``tool_choice`` "required" as it streams: the forced list ``[{"name": ..., "parameters": {...}}, ...]`` read
    as it is generated (the schema puts ``name`` first), so each call's name goes out once its string closes and its
    parameters' text as it comes, as OpenAI streams a call's arguments."""

    def __init__(self) -> None:
        self.text = ""
        self.calls: list[ToolCall] = []  # begun: their ids and names sent
        self._sent: list[int] = []  # characters of each call's arguments sent
        self._scan = 0  # where the next call's item begins
        self._open: int | None = None  # where the arguments of the call being generated begin
        self.complete = False  # at the end: the text was the whole list (not cut short)

    def feed(self, delta: str) -> list[CallPart]:
        """The call parts ``delta`` adds."""
        self.text += delta
        out: list[CallPart] = []
        while True:
            if self._open is None:
                match = _FORCED_ITEM.match(self.text, self._scan)
                if match is None:
                    return out
                self.calls.append(ToolCall(json.loads(match.group(1)), ""))
                self._sent.append(0)
                self._open = match.end()
                out.append((len(self.calls) - 1, self.calls[-1], ""))
            end = value_end(self.text, self._open)
            arguments = self.text[self._open : end]
            if len(arguments) > self._sent[-1]:
                out.append((len(self.calls) - 1, None, arguments[self._sent[-1] :]))
                self._sent[-1] = len(arguments)
            item_end = _ITEM_END.match(self.text, end) if end is not None else None
            if item_end is None:
                return out
            self._open, self._scan = None, item_end.end()

    def finish(self) -> tuple[str | None, list[CallPart]]:
        """At the end: the text as content if it was cut short before any call began (else None), and the calls
        not streamed (whole: generated in a layout this stream did not follow)."""
        calls = forced_calls(self.text, None)
        self.complete = calls is not None
        if calls is None:
            return (self.text if not self.calls else None), []
        out: list[CallPart] = []
        for index, call in enumerate(calls[len(self.calls) :], start=len(self.calls)):
            out += [(index, ToolCall(call.name, "", call.id), ""), (index, None, call.arguments)]
        return None, out

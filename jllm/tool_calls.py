"""Tool calls in generated text: the formats model families emit, parsed into OpenAI's calls, whole or as a stream,
and the JSON schemas that force a call through structured output.

Parsers follow vLLM's (``vllm/entrypoints/openai/tool_parsers/``), chosen by ``--tool-call-parser``:
- ``hermes`` (Hermes, Qwen 2.5/3): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one block per call,
  text before the first block is the message's content (special tokens kept: some models mark the tags special);
- ``llama3_json`` (Llama 3.1-3.3): the whole output is ``{"name": ..., "parameters": {...}}`` (``<|python_tag|>``
  first, which decoding drops as a special token), several separated by ``;``;
- ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`` (the marker is a special token, so requests
  with tools decode with special tokens kept).
A forced call (``tool_choice`` "required" or a named function) is generated under a JSON schema instead
(``forced_call_schema``): vLLM's layout, the named function's arguments alone, or a list of ``{"name",
"parameters"}`` objects. Output that does not parse as the family's calls stays the message's content.

Plain Python: the server renders what this finds.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

PARSERS = ("hermes", "llama3_json", "mistral")


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON text, as OpenAI returns it
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


def _call(obj: Any, arguments_key: str = "arguments") -> ToolCall | None:
    """``{"name": ..., "arguments" (or "parameters"): {...}}`` as a call; None for anything else."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get(arguments_key, obj.get("parameters", obj.get("arguments", {})))
    if isinstance(args, str):  # some models send the arguments already as JSON text
        return ToolCall(obj["name"], args)
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def _json_values(text: str, separator: str = "") -> tuple[list[Any], bool]:
    """The JSON values at the start of ``text``, one after another (with ``separator`` between them); and whether
    nothing but whitespace follows the last."""
    decoder = json.JSONDecoder()
    values, pos = [], 0
    while True:
        while pos < len(text) and (text[pos].isspace() or (separator and text[pos] == separator and values)):
            pos += 1
        if pos == len(text):
            return values, True
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return values, False
        values.append(value)


class ToolParser:
    """One family's format: where calls start in the text, and the calls in a piece of text that starts there."""

    start = ""  # the text that opens the calls ("" for a parser that decides from the output's first characters)
    keep_special_tokens = False  # the start marker is a special token, which decoding must keep

    def starts_calls(self, text: str) -> int | None:
        """Where the calls begin in ``text``, or None when they have not (yet)."""
        index = text.find(self.start)
        return None if index < 0 else index

    def may_start(self, text: str) -> int:
        """How many trailing characters of ``text`` could be the start of the marker: held back while streaming."""
        return max((k for k in range(1, len(self.start)) if text.endswith(self.start[:k])), default=0)

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        """The complete calls in ``text`` (from the start marker on); at the end (``final``), None when it is not
        the family's calls after all."""
        raise NotImplementedError


class HermesParser(ToolParser):
    start = "<tool_call>"
    keep_special_tokens = True  # some models mark <tool_call> special (vLLM's hermes parser keeps them too)
    _block = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        bodies = self._block.findall(text)
        if final:
            tail = text[text.rfind("</tool_call>") + len("</tool_call>") :] if bodies else text
            if tail.strip().startswith("<tool_call>"):  # an unclosed last block, as vLLM accepts
                bodies.append(tail.strip()[len("<tool_call>") :])
        out = []
        for body in bodies:
            values, clean = _json_values(body)
            call = _call(values[0]) if len(values) == 1 and clean else None
            if call is None:
                return None if final else out
            out.append(call)
        return out


class Llama3JsonParser(ToolParser):
    """Llama 3's JSON calls: the output starts with ``{`` (after optional whitespace)."""

    def starts_calls(self, text: str) -> int | None:
        stripped = text.lstrip()
        if stripped.startswith("<|python_tag|>") or stripped.startswith("{"):
            return 0
        return None

    def may_start(self, text: str) -> int:
        return len(text) if not text.strip() else 0  # only leading whitespace is undecided

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        values, clean = _json_values(text.lstrip().removeprefix("<|python_tag|>"), separator=";")
        calls = [_call(v, "parameters") for v in values]
        if final:
            return calls if calls and clean and None not in calls else None
        return list(itertools.takewhile(lambda c: c is not None, calls))  # type: ignore[arg-type]


class MistralParser(ToolParser):
    start = "[TOOL_CALLS]"
    keep_special_tokens = True

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        values, clean = _json_values(text[len(self.start) :])
        if len(values) == 1 and isinstance(values[0], list):
            calls = [_call(v) for v in values[0]]
            if all(c is not None for c in calls) and (clean or not final):
                return calls  # type: ignore[return-value]
        return None if final else []


def make_parser(name: str) -> ToolParser:
    parsers = {"hermes": HermesParser, "llama3_json": Llama3JsonParser, "mistral": MistralParser}
    if name not in parsers:
        raise ValueError(f"tool_call_parser must be one of {', '.join(PARSERS)}, got {name!r}")
    return parsers[name]()


def parse_tool_calls(parser: ToolParser, text: str) -> tuple[str | None, list[ToolCall]]:
    """The whole output: its content (text before the calls; None when empty) and its calls. Output that is not
    the family's calls is all content, as vLLM returns it."""
    start = parser.starts_calls(text)
    calls = None if start is None else parser.calls(text[start:], final=True)
    if not calls:
        return text, []
    return text[:start].strip() or None, calls


class ToolCallStream:
    """One choice's output as it streams: content deltas until calls start (holding back what may begin the
    marker), then each call once it is complete."""

    def __init__(self, parser: ToolParser) -> None:
        self.parser = parser
        self.text = ""
        self._released = 0  # characters of text sent as content
        self._start: int | None = None  # where the calls begin
        self._sent = 0  # calls sent

    def feed(self, delta: str) -> tuple[str, list[ToolCall]]:
        """Content to send now, and calls completed by ``delta``."""
        self.text += delta
        if self._start is None:
            self._start = self.parser.starts_calls(self.text)
        if self._start is None:
            end = len(self.text) - self.parser.may_start(self.text)
            return self._release(end), []
        content = self._release(self._start)
        calls = self.parser.calls(self.text[self._start :], final=False) or []
        return content, self._new(calls)

    def finish(self) -> tuple[str, list[ToolCall]]:
        """At the end: the calls not sent yet, or, when the text is not the family's calls after all, the rest of
        the text as content."""
        calls = None if self._start is None else self.parser.calls(self.text[self._start :], final=True)
        if not calls:
            return self._release(len(self.text)), []
        return "", self._new(calls)

    @property
    def num_calls(self) -> int:
        return self._sent

    def _release(self, end: int) -> str:
        out = self.text[self._released : max(end, self._released)]
        self._released += len(out)
        return out

    def _new(self, calls: list[ToolCall]) -> list[ToolCall]:
        new = calls[self._sent :]
        self._sent = len(calls)
        return new


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
        values, clean = _json_values(text)
        return [ToolCall(name, text.strip())] if len(values) == 1 and clean else None  # as generated (and streamed)
    values, clean = _json_values(text)
    if len(values) != 1 or not clean or not isinstance(values[0], list):
        return None
    calls = [_call(v, "parameters") for v in values[0]]
    return None if any(c is None for c in calls) else calls  # type: ignore[return-value]

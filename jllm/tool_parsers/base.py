"""What every tool-call format shares: a call (``ToolCall``), a format's parser (``ToolParser``: where its calls
start in the text and the calls in a piece of text from there), and the JSON helpers the JSON formats read bodies
with.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

# What reading generated text as JSON may raise: not JSON, or JSON nested past the parser's recursion limit (~1,500
# levels in CPython 3.12; output held to "[[" by a logit_bias gets there): either way the text holds no value here
NOT_JSON = (json.JSONDecodeError, RecursionError)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON text, as OpenAI returns it
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


def arguments_json(args: Any) -> str | None:
    """Arguments as OpenAI's JSON text; None for a value JSON cannot hold (``inf``, bytes)."""
    if isinstance(args, str):  # some models send the arguments already as JSON text: an object's, or no call
        try:
            return args if isinstance(json.loads(args), dict) else None
        except NOT_JSON:
            return None
    try:
        return json.dumps(args, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None


def json_call(obj: Any, arguments_key: str = "arguments") -> ToolCall | None:
    """``{"name": ..., "arguments" (or "parameters"): {...}}`` as a call; None for anything else."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = arguments_json(obj.get(arguments_key, obj.get("parameters", obj.get("arguments", {}))))
    return None if args is None else ToolCall(obj["name"], args)


def json_values(text: str, separator: str = "") -> tuple[list[Any], bool]:
    """The JSON values at the start of ``text``, one after another (with ``separator`` between them); and whether
    nothing but whitespace follows the last."""
    spans, clean, _ = json_spans(text, separator)
    return [value for value, _ in spans], clean


def json_spans(text: str, separator: str = "") -> tuple[list[tuple[Any, str]], bool, int]:
    """``json_values`` with each value's text, and where the text that is not (yet) a value begins."""
    decoder = json.JSONDecoder()
    spans, pos = [], 0
    while True:
        while pos < len(text) and (text[pos].isspace() or (separator and text[pos] == separator and spans)):
            pos += 1
        if pos == len(text):
            return spans, True, pos
        try:
            value, end = decoder.raw_decode(text, pos)
        except NOT_JSON:
            return spans, False, pos
        spans.append((value, text[pos:end]))
        pos = end


def json_list_calls(text: str, final: bool, arguments_key: str = "arguments") -> list[ToolCall] | None:
    """A JSON list of ``{"name", "arguments"}`` objects at the start of ``text`` (the text after a marker): all its
    calls at the end (None unless it is one list of calls, only whitespace after); while streaming, the items
    complete so far. An item written name first keeps its arguments as written (what ``list_partial`` streamed)."""
    body = text.lstrip()
    items, closed, _ = _list_items(body)
    calls = [item_call(value, raw, arguments_key) for value, raw in items]
    if not final:
        return list(itertools.takewhile(lambda c: c is not None, calls))  # type: ignore[arg-type]
    if closed is None or body[closed:].strip() or not calls or None in calls:
        return None
    return calls  # type: ignore[return-value]


def list_partial(text: str) -> tuple[str, str] | None:
    """The unfinished item of the JSON list ``text`` starts with: its name and its arguments as written so far."""
    body = text.lstrip()
    _, closed, pos = _list_items(body)
    named = None if closed is not None or pos is None else name_first(body[pos:])
    return None if named is None else (named[0], named[1])


def item_call(value: Any, raw: str, arguments_key: str = "arguments") -> ToolCall | None:
    """A decoded call object (``raw``: its text) as a call, its arguments as written where it names the call first
    (what ``partial`` streamed)."""
    call = json_call(value, arguments_key)
    named = name_first(raw) if call is not None else None
    return ToolCall(call.name, named[1], call.id) if call is not None and named is not None and named[2] else call


def _list_items(body: str) -> tuple[list[tuple[Any, str]], int | None, int | None]:
    """A JSON list's complete items (each value and its text), where the list closed (the index after its ``]``;
    None while open or when malformed), and where its next item begins (None when malformed)."""
    if not body.startswith("["):
        return [], None, None
    decoder, pos, items = json.JSONDecoder(), 1, []
    while True:
        pos = _skip_space(body, pos)
        if body.startswith("]", pos):
            return items, pos + 1, None
        if items:
            if not body.startswith(",", pos):
                return items, None, None if pos < len(body) else pos
            pos = _skip_space(body, pos + 1)
        try:
            value, end = decoder.raw_decode(body, pos)
        except NOT_JSON:
            return items, None, pos
        items.append((value, body[pos:end]))
        pos = end


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def value_end(text: str, start: int) -> int | None:
    """Where the JSON object or list starting at ``start`` ends (the index after it), or None while it is open."""
    depth, in_string, i = 0, False, start
    while i < len(text):
        c = text[i]
        if in_string:
            if c == "\\":
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


_NAME_FIRST = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\{)')


def name_first(body: str) -> tuple[str, str, bool] | None:
    """A call object written name first (``{"name": ..., "arguments": {``...): its name, its arguments' text so
    far as written, and whether they have closed; None for any other layout, or before the arguments begin."""
    match = _NAME_FIRST.match(body)
    if match is None:
        return None
    end = value_end(body, match.end())
    return json.loads(match.group(1)), body[match.end() : end], end is not None


class ToolParser:
    """One family's format: where calls start in the text, and the calls in a piece of text that starts there."""

    starts: tuple[str, ...] = ()  # the texts that open the calls (none: the parser decides from the first characters)
    keep_special_tokens = False  # the start marker is a special token, which decoding must keep

    def __init__(self, tools: list[dict[str, Any]] | None = None) -> None:
        self.tools = tools or []  # OpenAI's tool objects: the formats that type arguments by schema read them

    def starts_calls(self, text: str) -> int | None:
        """Where the calls begin in ``text``, or None when they have not (yet)."""
        found = [i for i in (text.find(s) for s in self.starts) if i >= 0]
        return min(found) if found else None

    def may_start(self, text: str) -> int:
        """How many trailing characters of ``text`` could be the start of a marker: held back while streaming."""
        return max((k for s in self.starts for k in range(1, len(s)) if text.endswith(s[:k])), default=0)

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        """The complete calls in ``text`` (from the start marker on); None when it is not the family's calls after
        all (at the end, ``final``; or before, where the format can tell early, so the text streams as content)."""
        raise NotImplementedError

    def as_content(self, text: str) -> str:
        """What ``text`` (from where the calls start) shows as content when it turns out not to be calls: itself, as
        vLLM returns it; a format of special tokens may leave its markers out."""
        return text

    def cut_short(self, text: str) -> bool:
        """Whether ``text`` (from where the calls start; not the family's calls whole) ends inside a call: the calls
        complete before it and the one begun (``partial``) are then the reply's, as its stream sent them. False
        (the default): such text is all content."""
        return False

    def partial(self, text: str) -> tuple[str, str] | None:
        """The call being generated after the complete ones in ``text``: its name and the part of its arguments'
        JSON text that can no longer change (a prefix of the call's arguments once complete); None when not known
        yet, or for a format that sends each call whole."""
        return None

    def properties(self, name: str) -> dict[str, Any]:
        """The JSON schema properties of the tool named ``name`` ({} for an unknown tool)."""
        for tool in self.tools:
            function = tool.get("function", tool)
            if function.get("name") == name:
                return (function.get("parameters") or {}).get("properties") or {}
        return {}

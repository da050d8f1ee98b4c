"""``gemma4`` (Gemma 4): ``<|tool_call>call:NAME{key:<|"|>text<|"|>,n:42,nested:{...},list:[...]}<tool_call|>``, as
vLLM's parser of that name reads it (``vllm/tool_parsers/gemma4_tool_parser.py``). Gemma 4 writes its arguments in
its own syntax, not JSON: keys bare (or between ``<|"|>``), strings between ``<|"|>`` tokens, other values bare
(``true`` / ``false``, ``null`` (or ``none``, ``nil``), numbers; any other bare text stays text), objects and lists
nested. Calls follow one another with no separator; the markers are special tokens, kept in the decoded text.

A call counts once its end marker has come; one that is not the syntax above is dropped, its siblings kept. While
streaming, the arguments go out pair by pair, each once its value is whole (a bare value once the comma or brace
after it has come: ``4`` may become ``42``), and the text of a string argument as it is written (what may begin its
closing ``<|"|>`` held back).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from jllm.markers import held_back
from jllm.tool_parsers.base import ToolCall, ToolParser, arguments_json

_START, _END, _QUOTE = "<|tool_call>", "<tool_call|>", '<|"|>'
_HEAD = re.compile(r"\s*call:([\w.\-]+)\s*\{")
_KEY = re.compile(r"\s*([^\s:,{}\[\]<>]+)\s*:")
_INT = re.compile(r"-?\d+")
_FLOAT = re.compile(r"-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")
_OPEN_STRING = re.compile(r'\s*,?\s*(?:<\|"\|>(.*?)<\|"\|>|([^\s:,{}\[\]<>]+))\s*:\s*<\|"\|>(.*)\Z', re.DOTALL)


class _Unfinished(Exception):
    """The text ends inside a value: more may come."""


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _bare(raw: str) -> Any:
    """A value written without delimiters, typed as vLLM types it (a number is JSON's; other text stays text)."""
    if raw in ("true", "false"):
        return raw == "true"
    if raw.lower() in ("null", "none", "nil"):
        return None
    try:
        if _INT.fullmatch(raw):
            return int(raw)
        if _FLOAT.fullmatch(raw) and math.isfinite(number := float(raw)):
            return number
    except ValueError:  # an integer past Python's digit limit
        pass
    return raw


class _Reader:
    """One call's arguments read from ``text``: ``settled`` is where the last whole top-level pair ended."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.settled = 0

    def members(self, i: int, out: dict[str, Any], top: bool = False) -> int:
        """The ``key:value`` pairs from ``i`` (just inside a ``{``) into ``out`` (a key given twice keeps its first
        value, so what streamed stays a prefix); the index after the closing ``}``."""
        text = self.text
        while True:
            i = _skip(text, i)
            if text.startswith("}", i):
                return i + 1
            key, i = self._key(i)
            value, i = self.value(_skip(text, i))
            out.setdefault(key, value)
            i = _skip(text, i)
            if i == len(text):
                raise _Unfinished
            if text[i] not in ",}":
                raise ValueError(f"expected ',' or '}}' at {i}")
            if top:
                self.settled = i
            i += text[i] == ","

    def value(self, i: int) -> tuple[Any, int]:
        """The value starting at ``i`` and the index after it."""
        text = self.text
        if i == len(text) or _QUOTE.startswith(text[i:]):
            raise _Unfinished
        if text.startswith(_QUOTE, i):
            end = text.find(_QUOTE, i + len(_QUOTE))
            if end < 0:
                raise _Unfinished
            return text[i + len(_QUOTE) : end], end + len(_QUOTE)
        if text[i] == "{":
            out: dict[str, Any] = {}
            return out, self.members(i + 1, out)
        if text[i] == "[":
            return self._items(i + 1)
        end = i
        while end < len(text) and text[end] not in ",}]":
            end += 1
        if end == len(text):
            raise _Unfinished  # a bare value ends only at the delimiter after it
        raw = text[i:end].strip()
        if not raw:
            raise ValueError(f"no value at {i}")
        return _bare(raw), end

    def _items(self, i: int) -> tuple[list[Any], int]:
        text, items = self.text, []
        while True:
            i = _skip(text, i)
            if text.startswith("]", i):
                return items, i + 1
            item, i = self.value(i)
            items.append(item)
            i = _skip(text, i)
            if i == len(text):
                raise _Unfinished
            if text[i] not in ",]":
                raise ValueError(f"expected ',' or ']' at {i}")
            i += text[i] == ","

    def _key(self, i: int) -> tuple[str, int]:
        text = self.text
        if text.startswith(_QUOTE, i):
            end = text.find(_QUOTE, i + len(_QUOTE))
            colon = _skip(text, end + len(_QUOTE)) if end >= 0 else len(text)
            if colon == len(text):
                raise _Unfinished
            if text[colon] != ":":
                raise ValueError(f"expected ':' at {colon}")
            return text[i + len(_QUOTE) : end], colon + 1
        match = _KEY.match(text, i)
        if match is None:
            if re.fullmatch(r"\s*[^\s:,{}\[\]<>]*\s*", text[i:]) or _QUOTE.startswith(text[i:]):
                raise _Unfinished
            raise ValueError(f"no key at {i}")
        return match.group(1), match.end()


def _read(text: str) -> tuple[list[ToolCall], tuple[str, str] | None]:
    """The complete calls in ``text`` (from the first start marker) and the unfinished last one, if any: its name and
    the text of its arguments after the ``{``."""
    calls, pos = [], 0
    while (start := text.find(_START, pos)) >= 0:
        pos = start + len(_START)
        head = _HEAD.match(text, pos)
        if head is None:
            if re.fullmatch(r"\s*(?:c(?:a(?:l(?:l(?::[\w.\-]*)?)?)?)?)?", text[pos:]):
                return calls, None  # the head is still coming
            continue
        reader, arguments = _Reader(text), {}
        try:
            end = _skip(text, reader.members(head.end(), arguments))
        except _Unfinished:
            return calls, (head.group(1), text[head.end() :])
        except (ValueError, RecursionError):
            continue
        if len(text) - end < len(_END) and _END.startswith(text[end:]):
            return calls, (head.group(1), text[head.end() :])  # its end marker is still coming
        json_text = arguments_json(arguments)
        if text.startswith(_END, end) and json_text is not None:
            calls.append(ToolCall(head.group(1), json_text))
            pos = end + len(_END)
    return calls, None


class Gemma4Parser(ToolParser):
    starts = (_START,)
    keep_special_tokens = True

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        calls, _ = _read(text)
        return calls if calls or not final else None

    def partial(self, text: str) -> tuple[str, str] | None:
        """The unfinished call once its ``{`` has come: its whole pairs, then the text of a string argument being
        written (a prefix of the call's arguments, which keep their first-written order)."""
        _, unfinished = _read(text)
        if unfinished is None:
            return None
        name, body = unfinished
        reader, arguments = _Reader(body), {}
        try:
            reader.members(0, arguments, top=True)
        except _Unfinished:
            pass
        except (ValueError, RecursionError):
            return None  # malformed: the call will be dropped
        settled = arguments_json(arguments)
        if settled is None:
            return None
        settled = settled[:-1]
        string = _OPEN_STRING.match(body, reader.settled)
        if string is None:
            return name, settled
        key, written = string.group(1) if string.group(1) is not None else string.group(2), string.group(3)
        if key in arguments:
            return name, settled
        if _QUOTE in written:
            written = written[: written.index(_QUOTE)]
        else:
            written = written[: len(written) - held_back(written, (_QUOTE,))]
        opened = json.dumps(key, ensure_ascii=False) + ": " + json.dumps(written, ensure_ascii=False)[:-1]
        return name, settled + (", " if arguments else "") + opened

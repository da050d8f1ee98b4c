"""``pythonic`` (Llama 3.2, Llama 4, ToolACE): the whole output is a Python list of calls,
``[get_weather(city='Paris', days=[1, 2]), get_time()]``, as vLLM's parser reads it: keyword arguments only, their
values literals (strings, numbers, True / False / None, lists and dicts of them). Read with ``ast``, never run.
``olmo3`` (OLMo 3): the calls one per line between ``<function_calls>`` and ``</function_calls>``, JSON's ``null``,
``true`` and ``false`` read as Python's (the model saw the tools as JSON; read so in every pythonic format here).

A call whose arguments are not JSON values (bytes, ``1e999``) is dropped and its siblings kept; a list where no call
is left stays content. While streaming, a call's arguments go out one keyword argument at a time, each once the
comma after it (or the call's closing parenthesis) has come.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from jllm.tool_parsers.base import ToolCall, ToolParser, arguments_json

_OPEN, _CLOSE = "([{", ")]}"
_HEAD = re.compile(r"\s*([A-Za-z_]\w*)\(")
_OPENING = re.compile(r"\[\s*(?:[A-Za-z_]\w*(?:\(|\Z)|\Z)")  # what a list of calls can begin with


_JSON_NAMES = {"null": None, "true": True, "false": False}


def _value(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant) and not isinstance(node.value, bytes | complex):
        return node.value
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:  # OLMo 3's; a name is no value in Python's calls
        return _JSON_NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return -node.operand.value  # -1 is an operator on a constant in Python's grammar
    if isinstance(node, ast.Dict) and all(isinstance(k, ast.Constant) for k in node.keys):
        return {k.value: _value(v) for k, v in zip(node.keys, node.values, strict=True)}  # type: ignore[union-attr]
    if isinstance(node, ast.List | ast.Tuple):
        return [_value(v) for v in node.elts]
    raise ValueError(f"not a literal: {ast.dump(node)}")


def _call(source: str) -> ToolCall | None:
    """One ``name(key=value, ...)`` as a call; None if it is anything else."""
    try:
        node = ast.parse(source.strip(), mode="eval").body
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
            return None
        args = arguments_json({k.arg: _value(k.value) for k in node.keywords if k.arg is not None})
    except (SyntaxError, ValueError, TypeError, RecursionError):
        return None
    return None if args is None else ToolCall(node.func.id, args)


def _string_end(text: str, i: int) -> int:
    """Where the string literal opening at ``i`` ends (the index after it; ``len(text)`` while it is open)."""
    quote = text[i] * 3 if text.startswith(text[i] * 3, i) else text[i]
    i += len(quote)
    while i < len(text) and not text.startswith(quote, i):
        i += 2 if text[i] == "\\" else 1
    return min(i + len(quote), len(text))


def _items(text: str) -> tuple[list[str], bool, int | None]:
    """The complete top-level items of the list ``text`` starts with (brackets and quotes tracked), whether the
    list closed with nothing but whitespace after it, and where the unfinished item begins (None if none)."""
    items, depth, start, i = [], 0, 1, 0
    while i < len(text):
        c = text[i]
        if c in "'\"":
            i = _string_end(text, i)
            continue
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
            if depth == 1 and c == ")" and start is not None:
                items.append(text[start : i + 1])
                start = None
            elif depth <= 0:
                return items, depth == 0 and c == "]" and not text[i + 1 :].strip(), None
        elif c == "," and depth == 1:
            start = i + 1
        i += 1
    return items, False, start


def _last_comma(text: str, start: int) -> int | None:
    """The last comma between a call's arguments (``start``: just inside its parenthesis), before the text ends."""
    depth, i, comma = 0, start, None
    while i < len(text):
        c = text[i]
        if c in "'\"":
            i = _string_end(text, i)
            continue
        depth += (c in _OPEN) - (c in _CLOSE)
        if depth < 0:
            return None  # the call closed: not unfinished
        if c == "," and depth == 0:
            comma = i
        i += 1
    return comma


class PythonicParser(ToolParser):
    def starts_calls(self, text: str) -> int | None:
        return 0 if text.lstrip().startswith("[") else None

    def may_start(self, text: str) -> int:
        return len(text) if not text.strip() else 0

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        if not final and not _OPENING.match(text.lstrip()):
            return None  # "[1]", "[Note: ...]", "[a link](...)": a list that opens with no call is text
        items, closed, _ = _items(text.strip())
        calls = [c for c in map(_call, items) if c is not None]
        if final and (not closed or not calls):
            return None
        return calls

    def partial(self, text: str) -> tuple[str, str] | None:
        """The unfinished call once a comma follows its first keyword argument: its arguments up to the last comma
        between them (a prefix of the call's arguments, which keep their order). Not sooner: a call whose arguments
        are not JSON values is dropped, and one begun stays unfinished in the stream."""
        body = text.strip()
        _, _, start = _items(body)
        head = _HEAD.match(body, start) if start is not None else None
        if head is None:
            return None
        comma = _last_comma(body, head.end())
        call = _call(body[start:comma] + ")") if comma is not None else None
        return None if call is None else (call.name, call.arguments[:-1])


class Llama4PythonicParser(PythonicParser):
    """Llama 4's pythonic calls, which may come between ``<|python_start|>`` and ``<|python_end|>``."""

    keep_special_tokens = True

    def starts_calls(self, text: str) -> int | None:
        return super().starts_calls(text.replace("<|python_start|>", "", 1))

    def may_start(self, text: str) -> int:
        stripped = text.lstrip()
        return len(text) if not stripped or "<|python_start|>".startswith(stripped) else 0

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        return super().calls(self._body(text), final)

    def partial(self, text: str) -> tuple[str, str] | None:
        return super().partial(self._body(text))

    @staticmethod
    def _body(text: str) -> str:
        return text.replace("<|python_start|>", "", 1).replace("<|python_end|>", "", 1)


class Olmo3Parser(PythonicParser):
    """OLMo 3's calls, one per line inside ``<function_calls>`` (text in its vocabulary): read as the list of those
    lines."""

    _start, _end = "<function_calls>", "</function_calls>"

    def starts_calls(self, text: str) -> int | None:
        return 0 if text.lstrip().startswith(self._start) else None

    def may_start(self, text: str) -> int:
        return len(text) if self._start.startswith(text.lstrip()) else 0

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        if final and self._end not in text:
            return None  # cut short: no calls, as vLLM reads it
        return super().calls(self._as_list(text), final)

    def partial(self, text: str) -> tuple[str, str] | None:
        return super().partial(self._as_list(text))

    def _as_list(self, text: str) -> str:
        """The calls inside the tags as a Python list (closed once the end tag has come)."""
        body, closed, _ = text.lstrip()[len(self._start) :].partition(self._end)
        return "[" + ", ".join(line.strip() for line in body.splitlines() if line.strip()) + ("]" if closed else "")

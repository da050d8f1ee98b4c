"""The formats whose calls are tags around each argument's text, typed by the tool's JSON schema as vLLM's parsers
of the same names type them (``vllm/tool_parsers/``):

- ``qwen3_coder`` (Qwen3-Coder, Qwen3.5; ``qwen3_xml``, vLLM's second reader of it, the same):
  ``<tool_call>\\n<function=NAME>\\n<parameter=P>\\nVALUE\\n</parameter>\\n</function>\\n</tool_call>`` (a bare
  ``<function=...>`` too); a value is text, converted by its schema type (integer, number, boolean, object / array as
  JSON or a Python literal, null for "null"), a parameter the schema does not name stays text;
- ``glm45`` (GLM-4.5 / 4.6): ``<tool_call>NAME\\n<arg_key>K</arg_key>\\n<arg_value>V</arg_value>...</tool_call>``;
  a value stays text where the schema says string, else it is read as JSON or a Python literal if it is one;
- ``minimax_m2`` (MiniMax-M2): ``<minimax:tool_call>\\n<invoke name="NAME">\\n<parameter name="P">VALUE</parameter>
  ...</invoke>...</minimax:tool_call>``, several invokes per block; a value (stripped) is typed as qwen3_coder's;
- ``deepseek_v32`` (DeepSeek-V3.2): ``<｜DSML｜function_calls>\\n<｜DSML｜invoke name="NAME">\\n<｜DSML｜parameter
  name="P" string="true|false">VALUE</｜DSML｜parameter>...</｜DSML｜invoke>...</｜DSML｜function_calls>``; a parameter
  the schema names is typed as qwen3_coder's, another stays text where ``string="true"``, else is read as JSON if it
  is JSON.
An invoke counts once closed (its block's end need not come, as vLLM streams them). Calls stream argument by argument
(``partial``: a qwen3_coder parameter once a tag after it has come, a glm45 value or an invoke's parameter once
closed; an argument given twice keeps its first value, so what was sent stays a prefix of the call).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Iterator
from typing import Any

from jllm.tool_parsers.base import NOT_JSON, ToolCall, ToolParser, arguments_json

_STRING_TYPES = ("string", "str", "text", "varchar", "char", "enum")


def _schema_type(schema: Any) -> tuple[str, bool]:
    """(the first non-null type the schema names, "string" if none; whether it admits null)."""
    if not isinstance(schema, dict):
        return "string", False
    options = schema.get("type")
    if options is None and isinstance(schema.get("anyOf"), list):
        options = [o.get("type") for o in schema["anyOf"] if isinstance(o, dict) and "type" in o]
    if not isinstance(options, list):
        options = [options] if options is not None else []
    names = [str(o).strip().lower() for o in options]
    typed = [n for n in names if n != "null"]
    return (typed[0] if typed else "null" if names else "string"), "null" in names


def _literal(value: str) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def _number(value: str, integer: bool) -> Any:
    """An integer or number parameter's value (a whole number as an int, as vLLM sends it); else its text."""
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        return value
    if isinstance(number, float) and not math.isfinite(number):
        return value
    return int(number) if isinstance(number, float) and number.is_integer() else number


def typed_value(value: str, schema: Any) -> Any:
    """A parameter's text as its schema's type, vLLM's ``qwen3_coder`` rules: text that does not convert stays
    text (a boolean that is not ``true`` is false)."""
    kind, nullable = _schema_type(schema)
    if value.lower() in ("null", "none") and (nullable or kind not in _STRING_TYPES):
        return None
    if kind in _STRING_TYPES:
        return value
    if kind.startswith(("int", "uint", "long", "short", "unsigned", "num", "float")):
        return _number(value, integer=not kind.startswith(("num", "float")))
    if kind in ("boolean", "bool", "binary"):
        return value.lower() == "true"
    if kind in ("object", "array", "arr") or kind.startswith(("dict", "list")):
        try:
            return json.loads(value)
        except NOT_JSON:
            pass
    return _literal(value)


class Qwen3CoderParser(ToolParser):
    starts = ("<tool_call>", "<function=")
    keep_special_tokens = True
    _blocks = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*?)$", re.DOTALL)
    _closed = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
    _functions = re.compile(r"<function=(.*?)</function>|<function=(.*)$", re.DOTALL)
    _parameters = re.compile(r"<parameter=(.*?)(?:</parameter>|(?=<parameter=)|(?=</function>)|\Z)", re.DOTALL)

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        if text.startswith("<tool_call>"):  # at the end an unclosed block counts, as vLLM reads it
            complete = [a or b for a, b in self._blocks.findall(text)] if final else self._closed.findall(text)
        else:  # a bare <function=...>, vLLM's fallback
            complete = [text] if final else re.findall(r"<function=.*?</function>", text, re.DOTALL)
        calls = []
        for body in complete:
            for closed, unclosed in self._functions.findall(body):
                call = self._call(closed or unclosed)
                if call is not None:
                    calls.append(call)
        return calls if calls or not final else None

    def partial(self, text: str) -> tuple[str, str] | None:
        """The unfinished call: its name once ``<function=NAME>`` is whole, its arguments up to the last parameter
        something has ended (a parameter's value is settled once a tag after it has come)."""
        end_tag = "</tool_call>" if text.startswith("<tool_call>") else "</function>"
        tail = text[text.rfind(end_tag) + len(end_tag) :] if end_tag in text else text
        if end_tag == "</tool_call>" and "<tool_call>" not in tail:
            return None
        head = re.search(r"<function=([^>]*)>", tail)
        if head is None or not head.group(1).strip():
            return None
        body = tail[head.end() :]
        if "</function>" in body:
            body = body[: body.index("</function>") + len("</function>")]
        settled = [
            m.group(1)
            for m in self._parameters.finditer(body)
            if m.group(0).endswith("</parameter>") or m.end() < len(body)  # not ended by the text's end alone
        ]
        arguments = arguments_json(self._arguments(head.group(1).strip(), settled))
        return None if arguments is None else (head.group(1).strip(), arguments[:-1])

    def _call(self, function: str) -> ToolCall | None:
        name, sep, body = function.partition(">")
        if not sep or not name.strip():
            return None
        arguments = arguments_json(self._arguments(name.strip(), self._parameters.findall(body)))
        return None if arguments is None else ToolCall(name.strip(), arguments)

    def _arguments(self, name: str, parameters: list[str]) -> dict[str, Any]:
        """Each ``P>\\nVALUE\\n`` typed by the tool's schema (a parameter given twice keeps its first value, so the
        arguments streamed so far stay a prefix of the whole call's)."""
        properties, args = self.properties(name), {}
        for parameter in parameters:
            key, sep, value = parameter.partition(">")
            key, value = key.strip(), value.removeprefix("\n").removesuffix("\n")
            if sep and key not in args:
                args[key] = typed_value(value, properties[key]) if key in properties else value
        return args


class Glm45Parser(ToolParser):
    starts = ("<tool_call>",)
    keep_special_tokens = True
    _block = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
    _detail = re.compile(r"(.*?)(?:\\n|\n)(.*)", re.DOTALL)
    _arg = re.compile(r"<arg_key>(.*?)</arg_key>(?:\\n|\s)*<arg_value>(.*?)</arg_value>", re.DOTALL)

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        calls = []
        for block in self._block.findall(text):
            detail = self._detail.fullmatch(block)
            name, body = (detail.group(1).strip(), detail.group(2)) if detail else (block.strip(), "")
            arguments = arguments_json(self._arguments(name, body))
            if name and arguments is not None:
                calls.append(ToolCall(name, arguments))
        return calls if calls or not final else None

    def partial(self, text: str) -> tuple[str, str] | None:
        """The open block's call once its name's line has ended, its arguments up to the last whole value."""
        tail = text[text.rfind("</tool_call>") + len("</tool_call>") :] if "</tool_call>" in text else text
        detail = self._detail.fullmatch(tail[tail.index("<tool_call>") + 11 :]) if "<tool_call>" in tail else None
        if detail is None or not detail.group(1).strip():
            return None
        arguments = arguments_json(self._arguments(detail.group(1).strip(), detail.group(2)))
        return None if arguments is None else (detail.group(1).strip(), arguments[:-1])

    def _arguments(self, name: str, body: str) -> dict[str, Any]:
        """Each whole key and value: text where the tool's schema says string, else JSON or a Python literal if it
        is one (a key given twice keeps its first value, so what was streamed stays a prefix of the call)."""
        properties, args = self.properties(name), {}
        for key, value in self._arg.findall(body):
            schema, key, value = properties.get(key.strip()), key.strip(), value.strip()
            if key not in args:
                is_string = isinstance(schema, dict) and schema.get("type") == "string"
                args[key] = value if is_string else self._value(value)
        return args

    @staticmethod
    def _value(value: str) -> Any:
        try:
            return json.loads(value)
        except NOT_JSON:
            return _literal(value)


class _InvokeParser(ToolParser):
    """Calls as ``invoke`` tags holding ``parameter`` tags (MiniMax-M2's and DeepSeek-V3.2's markup)."""

    keep_special_tokens = True
    _head: re.Pattern[str]  # an invoke's opening tag: group "name"
    _end: str  # an invoke's closing tag
    _parameter: re.Pattern[str]  # a whole parameter: groups "key" and "value"

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        calls = []
        for name, body, closed in self._invokes(text):
            arguments = arguments_json(self._arguments(name, body)) if closed else None
            if arguments is not None:
                calls.append(ToolCall(name, arguments))
        return calls if calls or not final else None

    def partial(self, text: str) -> tuple[str, str] | None:
        """The open invoke once its opening tag is whole: its arguments up to its last closed parameter."""
        name, body, closed = next(reversed(list(self._invokes(text))), ("", "", True))
        arguments = None if closed else arguments_json(self._arguments(name, body))
        return None if arguments is None else (name, arguments[:-1])

    def _invokes(self, text: str) -> Iterator[tuple[str, str, bool]]:
        """Each invoke with a name: (name, body, whether it has closed); only the last may be open."""
        pos = 0
        while (head := self._head.search(text, pos)) is not None:
            end = text.find(self._end, head.end())
            body = text[head.end() : end] if end >= 0 else text[head.end() :]
            if head["name"].strip():
                yield head["name"].strip(), body, end >= 0
            if end < 0:
                return
            pos = end + len(self._end)

    def _arguments(self, name: str, body: str) -> dict[str, Any]:
        """Each closed parameter, typed (a parameter given twice keeps its first value)."""
        properties, args = self.properties(name), {}
        for match in self._parameter.finditer(body):
            key = match["key"].strip()
            if key not in args:
                args[key] = self._value(match, properties.get(key))
        return args

    def _value(self, match: re.Match[str], schema: Any) -> Any:
        raise NotImplementedError


class MinimaxM2Parser(_InvokeParser):
    starts = ("<minimax:tool_call>",)
    _head = re.compile(r"<invoke name=[\"']?(?P<name>[^\"'>]*)[\"']?\s*>")
    _end = "</invoke>"
    _parameter = re.compile(r"<parameter name=[\"']?(?P<key>[^\"'>]*)[\"']?\s*>(?P<value>.*?)</parameter>", re.DOTALL)

    def _value(self, match: re.Match[str], schema: Any) -> Any:
        value = match["value"].strip()
        return value if schema is None else typed_value(value, schema)


class DeepSeekV32Parser(_InvokeParser):
    starts = ("<｜DSML｜function_calls>",)
    _head = re.compile(r'<｜DSML｜invoke\s+name="(?P<name>[^"]*)"\s*>')
    _end = "</｜DSML｜invoke>"
    _parameter = re.compile(
        r'<｜DSML｜parameter\s+name="(?P<key>[^"]*)"\s+string="(?P<string>true|false)"\s*>(?P<value>.*?)'
        r"</｜DSML｜parameter>",
        re.DOTALL,
    )

    def _value(self, match: re.Match[str], schema: Any) -> Any:
        value = match["value"]
        if schema is not None:
            return typed_value(value, schema)
        if match["string"] == "true":
            return value
        try:
            return json.loads(value)
        except NOT_JSON:
            return value
